"""finetune's rows rule (attack 79 #2): its test split against the rows it is fitted on and the rows it chose on.

Fine-tuning trains on the store's ``train`` images, starts from phase A's head (fitted on that run's training split),
and chooses its epoch (early stopping) and its temperature on ``validation``, then scores ``test``. Its images are the
rows of the run's extractor group in the store (checked by their listing before training), and extracting an image
again in the same batch layout gives the same row, so test is compared there, before any training (before any cache
is extracted), with the rule of fit, sweep, probe and fewshot
(:func:`featstore.experiments.training_rows.refuse_training_rows`): most of test's rows being rows of those splits is
refused, a few are said (a note), and a comparison that cannot be made (over the rule's caps, phase A's training split
in no store that can be read) is said too, never passed silently. Those splits are judged together, on test's rows
that are rows of any of them, each counted once (attack 80 #1: 3 of 8 train's and 3 of 8 validation's were two
notes, each "a few"). Only bit-identical rows are matched (:mod:`featstore.runs.fittedrows`): an image in another
batch layout may give other bits, and is then not found.
"""

from __future__ import annotations

import logging

from featstore.errors import ConfigError
from featstore.experiments import training_rows
from featstore.experiments.training_rows import refuse_training_rows, unknown
from featstore.runs.fittedrows import fitted_on, fitted_rows_said, not_compared, optimistic_by
from featstore.runs.trainstore import same_file, training_store

logger = logging.getLogger(__name__)

FIX = (
    "extract a test split of other images first (featstore extract --split test --overwrite, from a test folder "
    "without them): finetune scores the store's test split whenever it is complete"
)


def rows_of_test(fs, name: str, rec, scored, from_scratch_head: bool) -> list[str] | None:
    """The notes on the rows of ``test`` (one of ``scored``, the splits finetune scores) of extractor ``name`` of
    store ``fs``: a few of them being rows of ``train`` (fine-tuned on), of phase A's training split (its head, unless
    ``from_scratch_head``) or of ``validation`` (the epoch and the temperature chosen there), or that they were not
    compared; ConfigError (before any training) where most are. None where test is not scored."""
    if "test" not in scored:
        return None
    trains, notes = ["train"], []
    phase_a = None if from_scratch_head else fitted_on(rec)
    if phase_a == "test":
        raise ConfigError(
            f"finetune: phase A's run {rec.id} was fitted on 'test', so its head has seen the rows finetune would "
            f"score; fit the dense head on train (featstore fit --clf dense --train train), or give --from-scratch-head"
        )
    elsewhere = None
    if phase_a:
        where, why = training_store(rec, fs.path, name, phase_a)
        if where is not None and same_file(where, fs):
            trains.append(phase_a)
        elif where is not None:
            said, shared = _elsewhere(fs, name, where, phase_a)
            notes += said
            elsewhere = (where, phase_a) if shared else None  # some of test's rows are phase A's
        else:
            notes.append(f"{not_compared('test', phase_a, why)} (phase A's head, {rec.id})")
    trains = tuple(dict.fromkeys(trains))  # with validation: judged together (attack 80 #1: 3 + 3 of 8 was two notes)
    said = refuse_training_rows(fs, [name], trains, "test", "finetune", "score", FIX, chosen_on="validation")
    if elsewhere is not None:  # phase A's rows in another store, in the same union (attack 82 #3: judged alone)
        _refuse_together(fs, name, [*trains, "validation", elsewhere], elsewhere)
    for line in notes:
        logger.warning("finetune: %s", line)
    return said + notes


def _refuse_together(fs, name: str, places: list, elsewhere: tuple) -> None:
    """ConfigError where most of test's rows are rows of ``places`` together (train, validation and phase A's
    training split in another store ``elsewhere``), each row counted once (:func:`training_rows._union`)."""
    got = training_rows._union(fs, name, places, "test")
    k, n = got["shared"], got["rows"]
    if k and 2 * k > n:
        raise ConfigError(
            f"finetune: {k} of the {n} rows of 'test' ({name}) are rows of 'train', 'validation' (the rows the epoch "
            f"and temperature are chosen on) or {elsewhere[1]!r} of {elsewhere[0].path} (phase A's head), a row of "
            f"several counted once, so it would score on rows it fits on or chose on, not held-out rows; {FIX}"
        )


def _elsewhere(fs, name: str, where, phase_a: str) -> tuple[list[str], int]:
    """Test's rows against phase A's training split ``phase_a`` in another store ``where`` (a copy of the features):
    the notes, and how many of test's rows are rows of it."""
    got, skipped = fitted_rows_said(where, name, phase_a, ["test"], scored=fs)
    label = f"{phase_a!r} of {where.path} (phase A's head)"
    if "test" in skipped:
        return [unknown("test", label, skipped["test"])], 0
    k, n = got.get("test", (0, 0))
    if k and 2 * k > n:
        raise ConfigError(
            f"finetune: {k} of the {n} rows of 'test' ({name}) are rows of {label}, which it fits on, so it would "
            f"score on training rows; {FIX}"
        )
    if not k:
        return [], 0
    return [
        f"{k} of the {n} rows of 'test' ({name}) are rows of {label} (duplicate images?): its figures there are {optimistic_by(k)}"
    ], k
