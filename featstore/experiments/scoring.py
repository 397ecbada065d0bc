"""A fitted model evaluated split by split, a block of rows at a time: no (rows x classes) array is ever held.

A split's probabilities are ``K`` float64 numbers a row (8 KB at 1,000 classes, eight times a pooled float16 row of
512 features): a validation split of 10⁵ rows is 0.8 GB of them, 8 GB at 10⁶. So :func:`score_splits` computes them
per block and keeps only O(N) numbers a row (labels, predictions, :class:`~featstore.stats.figures.RowFigures`):

1. validation: its raw probabilities are written to the run's ``predictions.npz`` as they come
   (:class:`~featstore.runs.predictions_file.PredictionsWriter`), then read back block by block to fit the temperature
   (``featstore.stats.calibration.fit_temperature_blocks``, one pass per step of the search; the logits are kept in
   memory instead when they fit a quarter of the budget) and once more for its figures;
2. test: written and scored in one pass, the calibration being known; 3. train: scored, not stored.

Every figure, the temperature included, is the one the whole split in memory gives, exactly (tests/test_eval_stream.py).
A block is as many rows as a quarter of the memory budget holds with their features and ``PROBA_COPIES`` copies of
their probabilities, and at least one stored chunk (``featstore.store.storage.chunk_rows``); the budget is the fit's
``--memory-budget``, else :data:`EVAL_BUDGET`.

``eval_rows`` and ``EVAL_BUDGET`` live in :mod:`featstore.runs.predictions_file` (``runs evaluate`` streams with them too).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from featstore.errors import ConfigError
from featstore.experiments.calibration import calibrate_on_out_of_fold, calibrate_on_validation_blocks, not_calibrated
from featstore.experiments.evaluate import run_metrics, run_metrics_blocks
from featstore.experiments.protocol import OOF, Splits
from featstore.experiments.selection import CV_SEED, Fitted, predicted_block
from featstore.experiments.streaming import BLOCK_FRACTION
from featstore.runs.predictions_file import EVAL_BUDGET, PredictionsWriter, eval_rows  # noqa: F401 - re-exported
from featstore.runs.record import split_identity
from featstore.runs.stopping import check
from featstore.store.reader import FeatureStore
from featstore.store.versions import refuse_rewritten, split_versions


def memory_blocks(est, X: np.ndarray, y: np.ndarray, rows: int, n_classes: int, split: str) -> Iterator[tuple]:
    """``(labels, predictions, full probabilities)`` of a split already in memory, ``rows`` rows at a time."""
    for a in range(0, len(y), rows):
        yield predicted_block(est, X[a : a + rows], y[a : a + rows], n_classes, split, a)


class _Clock:
    """Seconds spent and rows given by prediction blocks (the run's ``predict_seconds_per_image``)."""

    def __init__(self, what: str, preds: PredictionsWriter):
        self.what, self.seconds, self.rows, self.preds = what, 0.0, 0, preds

    def timed(self, split: str, blocks) -> Iterator[tuple]:
        it = iter(blocks)
        while True:
            t = time.perf_counter()
            try:
                block = next(it)
            except StopIteration:
                return
            except ValueError as exc:  # e.g. knn asked for more neighbours than training rows
                raise ConfigError(f"{self.what} cannot predict {split!r}: {exc}") from exc
            self.seconds += time.perf_counter() - t
            self.rows += len(block[0])
            self.preds.keepalive()  # train is scored without a write: the draft folder is not an orphan meanwhile
            check()  # a stopped sweep's worker ends here, a block at a time (attack 54 #1)
            yield block


def _identity(fs: FeatureStore, name: str, split: str) -> tuple[str, str]:
    """``(paths digest, listing digest)`` of a split: which images its rows are (ensembles and comparisons check)."""
    return split_identity(fs, name, split)


def _written(member, blocks) -> Iterator[tuple]:
    """The blocks, each block's probabilities written to ``member`` as it passes."""
    for block in blocks:
        member.write(block[2])
        yield block


def score_splits(
    fs: FeatureStore,
    name: str,
    splits: Splits,
    fitted: Fitted,
    class_names: list[str],
    preds: PredictionsWriter,
    budget: int,
    notes: list[str],
    what: str,
    versions: dict[str, tuple] | None = None,
) -> tuple[dict, dict, _Clock]:
    """``(figures per split, calibration, clock)`` of a fitted model (see the module), its validation and test
    probabilities (and train's out-of-fold ones) written to ``preds``; ``what`` names the model in errors.
    ``versions``: the splits' versions before the fit read them (:func:`split_versions`; default: taken now), refused
    at the end if any changed (:func:`refuse_rewritten`), so labels, predictions and paths are of one state."""
    versions = split_versions(fs, name, splits.used) if versions is None else versions
    k, clock, evaluated = len(class_names), _Clock(what, preds), {}
    val, test, train = splits.validation, splits.test, splits.train
    if val:
        n = int(fs.split_info(val, name)["committed_rows"])
        ys, ps = [], []
        with preds.probabilities(val, n, k) as member:
            for y, pred, _ in _written(member, clock.timed(val, fitted.predict_blocks(val))):
                ys.append(y)
                ps.append(pred)
        val_y, val_pred = np.concatenate(ys), np.concatenate(ps)
        preds.labels(val, val_y, *_identity(fs, name, val))
        rows = eval_rows(fs.split_info(val, name), budget, k)
        cal = _calibration(splits, fitted, notes, lambda: preds.blocks(val, rows), val_y, None, k, budget)

        def stored():
            at = 0
            for block in preds.blocks(val, rows):
                yield val_y[at : at + len(block)], val_pred[at : at + len(block)], block
                at += len(block)

        evaluated[val] = run_metrics_blocks(stored(), class_names, cal)[2]
    else:
        train_y = fs.labels(train, name) if fitted.oof is not None else None
        cal = _calibration(splits, fitted, notes, None, None, train_y, k, budget)
    if test:
        n = int(fs.split_info(test, name)["committed_rows"])
        with preds.probabilities(test, n, k) as member:
            blocks = _written(member, clock.timed(test, fitted.predict_blocks(test)))
            test_y, _, evaluated[test] = run_metrics_blocks(blocks, class_names, cal)
        preds.labels(test, test_y, *_identity(fs, name, test))
    train_y, _, evaluated[train] = run_metrics_blocks(
        clock.timed(train, fitted.predict_blocks(train)), class_names, cal
    )
    evaluated = {s: evaluated[s] for s in splits.used}
    if fitted.oof is not None:  # train's out-of-fold figures: what a sweep without validation chooses on
        oof = fitted.oof.proba
        evaluated[f"{train}{OOF}"] = run_metrics(train_y, oof.argmax(axis=1), class_names, oof, cal)
        preds.add(f"{train}{OOF}", oof, train_y, *_identity(fs, name, train))
    refuse_rewritten(fs, name, versions)  # after every identity read: all of one state of each split
    return evaluated, cal, clock


def _calibration(splits: Splits, fitted: Fitted, notes: list[str], val_blocks, val_y, train_y, k: int, budget: int):
    """The run's probability calibration: a temperature fitted on validation (its probabilities read back in blocks),
    else on train's out-of-fold rows."""
    if splits.validation:
        cal = calibrate_on_validation_blocks(val_blocks, val_y, k, budget // BLOCK_FRACTION)
    elif fitted.oof is not None:
        cal = calibrate_on_out_of_fold(fitted.oof.proba, train_y, fitted.oof.folds, CV_SEED, fitted.oof.grouped)
    else:
        return not_calibrated(f"streamed without a validation split ({splits.validation_missing})")
    if cal["at_bound"] and cal["T"] < 1:  # every held-out row right: the likelihood grows without limit as T -> 0
        return not_calibrated(
            f"the temperature fitted on {cal['fitted_on']} sharpens without limit (its {cal['n']} rows were all, or "
            f"almost all, right with high confidence); the model's own probabilities are kept"
        )
    if splits.validation:
        notes.append(
            f"probabilities calibrated on {splits.validation!r} (temperature {cal['T']:.3g}): its log-loss and ECE "
            f"are optimistic; judge calibration by test"
        )
    return cal
