"""Which cells of a ``featstore sweep`` are already recorded: a re-run (after Ctrl-C, a kill, a full disk, or simply
the same command again) reuses them instead of fitting them again.

Every fit run records what it was asked and what it read (:func:`fit_inputs`, the run's ``inputs``): its candidate
settings (the parameters given and ``--search``, and each setting with the defaults filled in), ``--augmented``, the
train and validation split names, and each of those splits' identity: its version
(:func:`featstore.store.layout.same_split`: id, times and commit, drawn anew by every extraction), its paths digest
and its listing digest; the featstore, scikit-learn and numpy versions (and Keras and TensorFlow for a Keras
classifier) that fitted it are the run's own ``versions``. A sweep's cell
(extractor, classifier) reuses the newest run that is the very fit the cell would make (:func:`recorded_cells`): a fit run (not an ensemble or a fine-tuning) of that built-in classifier,
with the same parameters given, the same candidate settings (defaults filled in: a default changed by an upgrade is
another fit), ``--search`` and ``--augmented`` (the same augmented copies), made under these library versions (a ``versions``
that is not an object: refitted), the same
extractor name and fingerprint, not streamed, whose train and validation identities are the store's now, that holds
the figures the sweep chooses on (validation, or train's out-of-fold predictions), whose test split, if recorded, is
the store's test images now (one without it: a run this user may add test to, not a colleague's in a sticky or
closed runs folder), and whose files are intact (:func:`featstore.runs.folder.verify_run`). A classifier
registered in the process (``register_classifier``) is always fitted again: its builder, or a default of its
parameters, may have changed since its runs (attack 60 #3). Anything else, a run made before runs recorded
``inputs`` (or these) included, is fitted again. Another store sharing the runs folder has other split versions and
digests: its runs are never reused. ``sweep(..., reuse=False)`` (``--no-reuse``) fits every cell.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from featstore import sticky
from featstore.errors import StoreError
from featstore.experiments.evaluate import evaluate_and_record
from featstore.experiments.protocol import OOF, Splits
from featstore.experiments.training_rows import compared
from featstore.runs.folder import scan_runs, verify_run
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord, split_identity
from featstore.runs.record import versions as library_versions
from featstore.runs.refusals import closed_folders
from featstore.store.digests import identifies_rows
from featstore.store.reader import FeatureStore
from featstore.store.versions import split_versions
from featstore.version import __version__

logger = logging.getLogger(__name__)

_FIT_LIBRARIES = ("scikit-learn", "numpy")  # whose versions decide every fit (a run records them in ``versions``)
_KERAS = ("keras", "tensorflow")  # and a Keras classifier's (dense)
_AUGMENTATION = ("copies", "spec", "seed", "rows")  # what tells one set of augmented copies from another


def _plain(value) -> str:
    """A JSON value as canonical text (tuples and lists, key order: the same text)."""
    return json.dumps(value, sort_keys=True, default=str)


def _identity(fs: FeatureStore, name: str, split: str, version: tuple) -> dict:
    """What a run records of a split it read: its version, paths digest and listing digest."""
    paths, listing = split_identity(fs, name, split)
    return {"version": list(version), "paths_sha256": paths, "listing_sha256": listing}


PROBABILITIES = "lead with the prediction"  # a fit's probabilities agree with its predict (attack 63 #1): one before is
# fitted again by a sweep (the same featstore version, but a modified-Huber sgd's stored probabilities disagreed)


def fit_inputs(
    fs: FeatureStore,
    name: str,
    splits: Splits,
    versions: dict,
    given: dict,
    settings: list,
    search: bool,
    aug,
    full: list,
    memory_budget: int | None = None,
) -> dict:
    """A fit run's ``inputs``: its request (``full``: each candidate setting with the defaults filled in) and the
    identity of its train and validation splits, ``versions`` being the ones taken before the fit read them (the fit
    refuses a split re-written since, after this is read); the rows rule within the fit's ``memory_budget``."""
    read = [s for s in (splits.train, splits.validation) if s]
    return {
        "search": bool(search),
        "given": json.loads(_plain(given)),
        "settings": json.loads(_plain(settings)),
        "full_settings": json.loads(_plain(full)),
        "augmented": None if aug is None else {k: aug[k] for k in _AUGMENTATION},
        "train": splits.train,
        "validation": splits.validation,
        "splits": {s: _identity(fs, name, s, versions[s]) for s in read},
        "probabilities": PROBABILITIES,
        # what the rows rule found of validation (counted once per process: fit's note read it), read by a sweep that
        # reuses the run instead of the features (attack 76: no note text parsed)
        "training_rows": {s: compared(fs, name, splits.train, s, memory_budget) for s in read[1:]},
    }


class _Now:
    """The store's state, read once per extractor when a run could match: fingerprint, split identities, copies."""

    def __init__(self, fs: FeatureStore, train: str, validation: str | None, test: str | None, augmented: bool):
        self.fs, self.train, self.validation, self.test, self.seen = fs, train, validation, test, {}
        self.augmented = augmented  # the copies are looked at only for a sweep on them

    def __call__(self, name: str) -> dict:
        if name not in self.seen:
            fs, read = self.fs, [s for s in (self.train, self.validation) if s]
            versions = split_versions(fs, name, read)
            a = fs.augmentation(self.train, name) if self.augmented else None
            self.seen[name] = {
                "store": str(fs.path.resolve()),
                "fingerprint": fs.metadata(name)["fingerprint"],
                "splits": {s: _identity(fs, name, s, versions[s]) for s in read},
                "augmented": None if a is None else {k: a[f"augment_{k}" if k != "rows" else k] for k in _AUGMENTATION},
                "test": split_identity(fs, name, self.test) if self.test else None,
            }
        return self.seen[name]


def _why_not(rec: RunRecord, want: dict, now: dict, score: str) -> str:
    """Why ``rec``, a run of the cell's kind, classifier and extractor, is not the fit the cell would make ("" when it
    is)."""
    got = rec.get("inputs")
    if not isinstance(got, dict):
        return "recorded no inputs (made before runs recorded them)"
    fitted = rec.get("versions")  # what every run records; edited or damaged, not a mapping: refit (attack 62 #6)
    if not isinstance(fitted, dict):
        return f"its versions are {type(fitted).__name__}, not the libraries' versions"
    if rec.fingerprint != now["fingerprint"]:
        return "another extractor fingerprint"
    for key in ("search", "given", "settings", "full_settings", "train", "validation", "probabilities"):
        if _plain(got.get(key)) != _plain(want[key]):
            return f"another {key}"
    for lib, version in want["versions"].items():  # the libraries that made the fit (attack 62 #5)
        if _plain(fitted.get(lib)) != _plain(version):
            return f"another {lib}_version (fitted under {fitted.get(lib)!r}, here {version!r})"
    if bool(rec.get("streamed")):
        return "streamed (a sweep fits in memory)"
    if _plain(got.get("augmented")) != _plain(now["augmented"]):  # None: fitted on the plain rows
        return "other augmented copies"
    if _plain(got.get("splits")) != _plain(now["splits"]):
        return "other train or validation images or versions"
    here = now["splits"][want["train"]]["listing_sha256"]
    if rec.get("store") != now["store"] and not identifies_rows(here):  # runs evaluate would refuse its test
        return "another store's path, and rows written from arrays before their digest was recorded"
    if score not in rec.metrics or score not in rec.predictions:
        return f"no {score!r} figures"
    test = want["test"]
    if test and test in rec.predictions:
        stored = rec.predictions[test]
        if (stored.paths_sha256, stored.listing_sha256) != now["test"]:
            return f"{test!r} recorded on other images"
    return ""


def _closed(root: Path, run_id: str) -> bool:
    """Whether recording a split into run ``run_id`` is refused to this user (a colleague's run in a sticky runs folder,
    or a run or runs folder closed to his writes: what ``runs evaluate`` refuses before any work). A sweep reused such
    a run, then could not add test to it and said to run a command only its owner may (attack 62 #7)."""
    return sticky.ahead(root / run_id) is not None or bool(closed_folders(root, run_id))


def recorded_cells(
    fs: FeatureStore,
    root: Path,
    cells: list[tuple[str, str]],
    params: dict,
    search: bool,
    train: str,
    validation: str | None,
    test: str | None,
    augmented: bool,
) -> dict[tuple[str, str], RunRecord]:
    """``{cell: the newest recorded run that is the fit the cell would make}`` (see the module); cells absent are fitted.
    ``validation`` None: the sweep chooses on train's out-of-fold figures."""
    from featstore.experiments.classifiers import candidates, get_classifier

    if not root.is_dir():
        return {}
    listing = scan_runs(root)  # broken folders (and others' unreadable runs) are not in .records
    runs: dict[tuple[str, str], list[RunRecord]] = {}
    for r in reversed(listing.records):  # newest first
        if kind_of(r).sweep_cell:  # a fit run: not an ensemble or a fine-tuning
            runs.setdefault((r.extractor, r.clf), []).append(r)
    now, score, out = _Now(fs, train, validation, test, augmented), validation or f"{train}{OOF}", {}
    here = library_versions()  # the libraries' versions a fit made now would record
    for name, clf in cells:
        given, spec = params.get(clf) or {}, get_classifier(clf)
        if not spec.builtin:  # its builder (or a Param default) may differ from the one that made its runs
            if runs.get((name, clf)):
                logger.debug(
                    "sweep: no run of %s reused on %s: registered in the process (its builder may have changed)",
                    clf,
                    name,
                )
            continue
        settings = candidates(spec, given, search)
        libs = _FIT_LIBRARIES + (_KERAS if spec.keras else ())
        want = {
            "search": bool(search),
            "given": given,
            "settings": settings,
            "full_settings": [spec.full_params(s) for s in settings],
            "versions": {"featstore": __version__, **{lib: here.get(lib) for lib in libs}},
            "probabilities": PROBABILITIES,
            "train": train,
            "validation": validation,
            "augmented": augmented,
            "test": test,
        }
        for rec in runs.get((name, clf), []):
            why = _why_not(rec, want, now(name), score)
            if not why and test and test not in rec.predictions and _closed(root, rec.id):
                why = f"another user's run, which only they may add {test!r} to (the sweep evaluates its choice on it)"
            if not why:
                try:
                    verify_run(rec, root / rec.id)  # the model and predictions it recorded, intact
                except StoreError as exc:
                    why = f"broken: {exc}"
            if not why:
                out[(name, clf)] = rec
                break
            logger.debug("sweep: run %s not reused for %s on %s: %s", rec.id, clf, name, why)
    return out


def evaluated_once(run_id: str, test: str, store, runs, reused: dict) -> tuple[RunRecord, str]:
    """``(record, what happened)`` of the sweep's test evaluation of a run: a reused run that holds ``test`` already
    (on the store's test images now, :func:`recorded_cells` checked) as it is, without reading test again; any other
    evaluated and recorded (:func:`featstore.experiments.evaluate.evaluate_and_record`)."""
    held = next((r for r in reused.values() if r.id == run_id and test in r.metrics), None)
    if held is not None:
        return held, f"already recorded in run {run_id}"
    rec, _, said = evaluate_and_record(run_id, test, store, runs)
    return rec, said


def untested(run_id: str, test: str, said: str, reused: dict) -> str:
    """The sweep's error when ``test`` could not be recorded into its chosen run ``run_id`` (``said``: why, e.g. a full
    disk). A reused run was recorded by an earlier fit (maybe another user's): "the sweep's runs are recorded" was
    said of it with a command only its owner could run, never naming --no-reuse (attack 62 #7)."""
    again = f"once that is fixed, `featstore runs evaluate {run_id} --split {test}` adds it"
    if any(r.id == run_id for r in reused.values()):
        return (
            f"sweep: {test!r} of the chosen run {run_id} {said}. That run was reused, recorded by an earlier fit: "
            f"{again}, or run the sweep again with --no-reuse (reuse=False), which fits and records its own runs"
        )
    return f"sweep: {test!r} of the chosen run {run_id} {said}. The sweep's runs are recorded: {again}"
