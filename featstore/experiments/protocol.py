"""Which splits a fit uses, said exactly: a named split that does not exist is an error, a missing one is a note.

``--validation`` and ``--test`` default to the splits named ``validation`` and ``test``; when the store has no split
of that default name the fit goes on without it (settings chosen and probabilities calibrated by cross-validation
on train; no test figures) and the run's notes name the split that is missing. A split named on purpose that the
store lacks (``--validation val``) is an error that lists the splits there, never a silent change of protocol;
``none`` asks for no such split.

>>> no_split(None), no_split("none"), no_split("validation")
(True, True, False)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from featstore.errors import ConfigError, StoreError, check_names
from featstore.provenance import OOF  # noqa: F401 (re-exported: its home for runs)
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice

logger = logging.getLogger(__name__)

DEFAULTS = {"validation": "validation", "test": "test"}  # the names a store may lack without an error
NONE = "none"  # --validation none, --test none: no such split


def no_split(name: str | None) -> bool:
    """Whether a split option asks for no split (None or "none"; "" is refused by :func:`check_distinct`)."""
    return name is None or name.strip().lower() == NONE


def check_has_rows(fs: FeatureStore, name: str, split: str, option: str) -> None:
    """StoreError when ``split`` of ``name`` is complete and holds no rows (every image failed): nothing can be
    fitted on it or scored on it, and the classifier's own error blamed its parameters or an altered model."""
    if split not in fs.splits(name):
        return
    info = fs.split_info(split, name)
    if info.get("complete") and not int(info.get("committed_rows") or 0):
        raise StoreError(
            f"{option} {split!r}: split {split!r} of {name!r} in {fs.path} holds no rows (all "
            f"{int(info.get('n_failed') or 0)} of its images failed; `featstore info` lists why), so nothing can be "
            f"fitted or scored on it. Re-extract it from readable images, or name another split with {option}"
        )


def check_distinct(train: str, validation: str | None, test: str | None) -> None:
    """ConfigError unless the splits asked for are different, non-empty names (``validation=""`` chose by
    cross-validation, as ``None`` does)."""
    check_names("split", train=train, validation=validation, test=test)
    named = [s for s in (train, validation, test) if not no_split(s)]
    for s in named:
        check_not_reserved(s)
    if len(set(named)) < len(named):  # said of the options in play: fewshot's "got 'test', None, 'test'" (attack 53)
        given = [
            (o, s) for o, s in (("--train", train), ("--validation", validation), ("--test", test)) if not no_split(s)
        ]
        options = ", ".join(o for o, _ in given[:-1]) + f" and {given[-1][0]}"
        raise ConfigError(
            f"{options} must be {'three ' if len(given) == 3 else ''}different splits; got "
            f"{', '.join(repr(s) for _, s in given)}"
        )


def check_not_reserved(split: str) -> None:
    """ConfigError for a split whose name ends with :data:`OOF`: a run records train's out-of-fold figures under that
    name (and reports read any such split as out-of-fold figures), so a fit on it was lost at its very end."""
    if split.endswith(OOF):
        raise ConfigError(
            f"split {split!r} ends with {OOF!r}, which featstore keeps for a run's out-of-fold figures on train (e.g. "
            f"'train{OOF}'): a run cannot record it. Rename the split (its folder under --data) and extract it again"
        )


@dataclass(frozen=True)
class Splits:
    """The splits one fit uses, and why any asked for is not used."""

    train: str  # fitted on
    validation: str | None  # complete, chooses settings and calibrates; None: cross-validation on train
    test: str | None  # complete, evaluated once after the choice; None: not evaluated
    notes: tuple[str, ...] = field(default=())  # one per split asked for and not used, naming it and why
    validation_missing: str = ""  # why there is no validation split, for the selection's words ("" when there is one)

    @property
    def used(self) -> list[str]:
        """The store splits read, in the order they are read (test last)."""
        return [self.train] + [s for s in (self.validation, self.test) if s]


def resolve_splits(
    fs: FeatureStore, name: str, train: str, validation: str | None, test: str | None, *, test_later: str = ""
) -> Splits:
    """The splits of extractor ``name`` a fit uses (see the module docstring).

    ``test_later``: why test is not read now (``sweep`` evaluates it after its choice); the note says so and is
    dropped when test is recorded. Example::

        resolve_splits(FeatureStore("features.h5"), "vgg16", "train", "validation", "test")
    """
    present = fs.splits(name)
    if train not in present:
        raise StoreError(
            f"extractor {name!r} in {fs.path} has no {train!r} split; run `featstore extract --split {train}` first"
        )
    check_has_rows(fs, name, train, "--train")
    notes: list[str] = []
    val, why_no_val = _one(fs, name, validation, "validation", present, train, notes)
    if test_later:
        tst = None
        notes.append(f"not evaluated on {test!r}: {test_later}")
    else:
        tst, _ = _one(fs, name, test, "test", present, train, notes)
    return Splits(train, val, tst, tuple(notes), why_no_val)


def _one(
    fs: FeatureStore, name: str, split: str | None, role: str, present: list[str], train: str, notes: list[str]
) -> tuple[str | None, str]:
    """``(split or None, why not)`` for the validation or test option; a note is added for a split not used."""
    if no_split(split):
        return None, f"--{role} {NONE}"
    if split not in present:
        if split != DEFAULTS[role]:
            fix = (
                f"or --validation {NONE} to choose by cross-validation on {train!r}"
                if role == "validation"
                else f"or --test {NONE} to evaluate no test split"
            )
            raise ConfigError(
                f"--{role} {split!r}: extractor {name!r} in {fs.path} has no such split; splits there: "
                f"{', '.join(present)}. Name one of them, {fix}"
            )
        why = f"the store has no {split!r} split"
        if role == "test":
            notes.append(f"not evaluated on {split!r}: {why}")
        return None, why
    info = fs.split_info(split, name)
    if not info.get("complete"):
        why = (
            f"{split!r} is not complete ({info.get('committed_rows')} of {info.get('n_images')} images); "
            f"{resume_advice(split)}"
        )
        logger.warning("split %r of %r is not complete; it is not used", split, name)
        notes.append(f"not evaluated on {split!r}: {why}" if role == "test" else f"not used: {why}")
        return None, why
    check_has_rows(fs, name, split, f"--{role}")
    return split, ""
