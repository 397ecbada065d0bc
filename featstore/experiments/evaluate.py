"""Recorded runs applied and shown: the figures of a split, evaluating a run on a split of the store (and recording
it), showing a run. Comparing runs is in ``featstore.experiments.compare``.

Every kind of run is evaluated the same way: the run is found and verified (``featstore.runs.folder``), and its
kind (``featstore.runs.kinds``) gives its labels, predictions and probabilities on the split, refused when the
store's features are not the ones the run was made on (fingerprint, classes); the run's calibration turns the
model's probabilities into the run's.

>>> metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["cat", "dog"])["accuracy"]   # doctest: +ELLIPSIS
0.666...
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from pathlib import Path

import numpy as np

from featstore import sticky
from featstore.errors import ConfigError, OutputError, StoreError, check_names
from featstore.experiments.compare import (
    compare_runs,  # noqa: F401 (featstore.compare_runs: its public home)
    split_rows,
)
from featstore.experiments.evaluate_rows import refuse_chosen_rows
from featstore.experiments.protocol import check_has_rows, check_not_reserved
from featstore.experiments.run_store import refuse_other_store
from featstore.outputs import write_atomic
from featstore.runs.apply import ApplyOptions
from featstore.runs.evalrows import RowsRefused
from featstore.runs.files import output_path
from featstore.runs.fittedrows import fitted_members
from featstore.runs.folder import calibrated_predictions, find_run, get_run, runs_root
from featstore.runs.kinds import calibrated, kind_of, parse_record, rebuild_advice
from featstore.runs.record import RunRecord, digest_paths, thaw
from featstore.runs.refusals import closed_folders, not_written
from featstore.runs.versions import run_lock
from featstore.runs.write import add_split
from featstore.stats.calibration import apply_calibration
from featstore.stats.figures import RowFigures, completed, confusion_of, macro_f1_of
from featstore.stats.intervals import proportion_interval
from featstore.stats.metrics import expected_calibration_error, log_loss, reliability_of
from featstore.store.digests import identifies_rows, split_listing
from featstore.store.names import names_text
from featstore.store.reader import FeatureStore
from featstore.store.versions import Rewritten, refuse_rewritten, split_versions


def metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], proba: np.ndarray | None = None, raw=None
) -> dict:
    """Every figure a run records for one split, each with its 95 % interval: accuracy (Wilson), balanced accuracy and
    macro-F1 (bootstrap), per-class precision/recall/F1/support and the confusion matrix; with ``proba`` (the run's
    calibrated probabilities) log-loss, ECE with its reliability bins and top-5 (with at least 6 classes), each with
    a bootstrap interval (``featstore.stats.figures``). ``raw``: the probabilities before calibration, whose
    log-loss and ECE are kept as ``before_calibration``."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_of(y_true, y_pred, len(labels))  # packed beyond 100 classes, never dense
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1_of(cm),  # over the classes in the labels or predictions, as its interval
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": cm,
    }
    out = completed(out, y_true, proba)
    if raw is not None and len(y_true):
        if isinstance(raw, RowFigures):
            before = {"log_loss": float(raw.loss.mean()), "ece": reliability_of(raw.conf, raw.right).ece}
        else:
            before = {"log_loss": log_loss(y_true, raw), "ece": expected_calibration_error(y_true, raw)}
        out["before_calibration"] = before
    return out


def run_metrics(y, pred, class_names: list[str], raw: np.ndarray, calibration) -> dict:
    """A split's figures as a run records them: from its calibrated probabilities, and (when a temperature was
    fitted) the log-loss and ECE of the model's own probabilities as ``before_calibration``."""
    if calibration["method"] == "none":
        return metrics(y, pred, class_names, raw)
    return metrics(y, pred, class_names, apply_calibration(thaw(calibration), raw), raw=raw)


def run_metrics_blocks(blocks, class_names: list[str], calibration) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(labels, predictions, figures)`` of a split given as ``(labels, predictions, raw probabilities)`` blocks:
    the figures :func:`run_metrics` gives on the whole split, while only O(N) numbers per row are kept (a streamed
    fit's train split of 10⁶ rows and 1,000 classes would otherwise hold 8 GB of probabilities, twice)."""
    ys, preds, raw_rows, cal_rows = [], [], [], []
    plain = calibration["method"] == "none"
    for y, pred, proba in blocks:
        ys.append(np.asarray(y))
        preds.append(np.asarray(pred))
        raw_rows.append(RowFigures.of(y, proba))
        if not plain:
            cal_rows.append(RowFigures.of(y, apply_calibration(thaw(calibration), proba)))
    y, pred, raw = np.concatenate(ys), np.concatenate(preds), RowFigures.join(raw_rows)
    if plain:
        return y, pred, metrics(y, pred, class_names, raw)
    return y, pred, metrics(y, pred, class_names, RowFigures.join(cal_rows), raw=raw)


SCORE_BLOCK_BYTES = 64 << 20  # probabilities calibrated and scored at a time (8,192 rows of 1,000 classes)


def split_run_metrics(y, pred, class_names: list[str], raw: np.ndarray, calibration) -> dict:
    """:func:`run_metrics` of a split whose raw probabilities are held, calibrated and scored a block of rows at a time:
    the same figures, without the calibrated ``(N, K)`` copy and its temporaries beside the raw ones."""
    rows = max(1, SCORE_BLOCK_BYTES // (8 * max(len(class_names), 1)))
    blocks = ((y[a : a + rows], pred[a : a + rows], raw[a : a + rows]) for a in range(0, len(y), rows))
    return (
        run_metrics_blocks(blocks, class_names, calibration)[2]
        if len(y)
        else run_metrics(y, pred, class_names, raw, calibration)
    )


def apply_run(
    run_id: str,
    split: str,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
    raw: bool = False,
):
    """``(record, folder, labels, predictions, probabilities)`` of a run applied to a split of the store; the
    probabilities are the run's calibrated ones (``raw=True``: the model's own, as predictions.npz keeps them).

    Refused when the store's features are not the ones the run was fitted on (fingerprint, classes), and for an
    ensemble (its members are evaluated instead). Example::

        rec, folder, y, pred, proba = apply_run("logreg-1a2b3c", "test")
    """
    rec, folder = get_run(run_id, store, runs)
    if not kind_of(rec).one_group:  # an ensemble: what gives it figures there, or why nothing does (71 #1)
        raise ConfigError(
            f"{rec.id} is an ensemble; {rebuild_advice(rec, split, '', fitted_members(rec, split, folder.parent))}"
        )
    _check_split(FeatureStore(store), rec, split)
    y, pred, proba = kind_of(rec).split_predictions(rec, folder, store, split, ApplyOptions())
    return rec, folder, y, pred, (proba if raw else calibrated(rec, proba))


def evaluate_run(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> dict:
    """Apply a run to a split of the store and return its figures (as ``run.json`` records them); refused when the
    store's fingerprint is not the run's. Nothing is written (``featstore runs evaluate`` records them).

    Example::

        evaluate_run("logreg-1a2b3c", "test")["accuracy_ci"]
    """
    rec, folder = get_run(run_id, store, runs)
    return run_metrics_blocks(_blocks(rec, folder, store, split), list(rec.class_names), rec.calibration)[2]


def _check_split(fs: FeatureStore, rec: RunRecord, split: str) -> None:
    """StoreError for a split the run's extractor does not have in ``fs`` (said before h5py sees the name: one with a
    non-UTF-8 byte was a UnicodeEncodeError traceback) or that holds no rows (it was blamed on an altered model)."""
    check_names("split", required=True, split=split)
    if rec.extractor in fs.extractors():
        if split not in fs.splits(rec.extractor):
            raise StoreError(
                f"extractor {rec.extractor!r} in {fs.path} has no split {split!r}; it has: "
                f"{names_text(fs.splits(rec.extractor))}. Name one of them with --split"
            )
        check_has_rows(fs, rec.extractor, split, "--split")


def _blocks(rec: RunRecord, folder: Path, store, split: str):
    """The run's ``(labels, predictions, raw probabilities)`` on ``split``, block by block (a fit streams within its
    memory budget: ``RunKind.split_blocks``); an empty split refused first."""
    _check_split(FeatureStore(store), rec, split)
    return kind_of(rec).split_blocks(rec, folder, store, split, ApplyOptions())


def record_split(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> RunRecord:
    """Evaluate a run on one more split and add it to the run's record and stored predictions; returns the record.

    Used to evaluate the test split once, after a choice made on validation (``featstore sweep``). Example::

        record_split("logreg-1a2b3c", "test")
    """
    return evaluate_and_record(run_id, split, store, runs)[0]


def evaluate_and_record(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> tuple[RunRecord, dict, str]:
    """``(record, figures, what happened)``: a run evaluated on a split of the store, its figures added to the run
    when it has none for that split (``featstore runs evaluate``), or why they were not (already recorded on the
    same images, recorded on other images, the runs folder cannot be written: the words start with "not recorded").
    Refused first: a split named like a run's out-of-fold figures, and a new split of a store that is not the run's
    (another store's images recorded as the run's own split). Two processes recording into one run take turns
    (``featstore.runs.versions.run_lock``). Example::

        rec, m, said = evaluate_and_record("logreg-1a2b3c", "validation")
    """
    check_not_reserved(split)
    root = runs_root(store, runs)
    found, _ = find_run(run_id, root, verify=False)  # the id a prefix names: the lock is the run's
    with run_lock(root, found.id):
        return _evaluate_and_record(found.id, split, store, root)


def _evaluate_and_record(run_id: str, split: str, store, root: Path) -> tuple[RunRecord, dict, str]:
    """:func:`evaluate_and_record` with the run's lock held: the record read now is the one a new version replaces."""
    rec, folder = find_run(run_id, root, exact=True)
    if not kind_of(rec).one_group:  # an ensemble, first: its extractor (a+b) is no group of the store (64 #4b)
        where = (f" --store {shlex.quote(str(store))}" if str(store) != "features.h5" else "") + (
            f" --runs {shlex.quote(str(root))}"
        )
        advice = rebuild_advice(
            rec, split, where, fitted_members(rec, split, root)
        )  # what works (67 #1), or not (71 #1)
        raise ConfigError(f"{rec.id} is an ensemble; {advice}")
    fs = FeatureStore(store)
    if split not in rec.metrics:
        refuse_other_store(rec, fs, split)
        refuse_chosen_rows(fs, rec, split)  # its rows against those the run chose on, before scoring (attack 82 #1)
    blocks, names = _blocks(rec, folder, store, split), list(rec.class_names)  # the split checked; read when iterated
    versions = split_versions(fs, rec.extractor, [split])  # before any is read: one state of the split is recorded
    paths, listing = digest_paths(fs.paths(split, rec.extractor)), fs.split_info(split, rec.extractor)
    listing = split_listing(listing)
    if split in rec.metrics:
        m = run_metrics_blocks(blocks, names, rec.calibration)[2]
        stored = rec.predictions.get(split)
        same = stored.paths_sha256 == paths and stored.listing_sha256 in (None, listing) if stored else None
        if same and not identifies_rows(listing) and rec.get("store") != str(fs.path.resolve()):
            return (
                rec,
                m,
                (  # rows written from arrays name no image files: only the run's own store is known the same
                    f"not recorded: run {rec.id} already holds {split!r} of its own store; {fs.path} is another store "
                    f"written from arrays (no image files to compare)"
                ),
            )
        if same is False:
            return (
                rec,
                m,
                (
                    f"not recorded: run {rec.id} already holds {split!r} evaluated on other images "
                    f"(recorded {stored.n} rows, here {m['n']} of {fs.path})"
                ),
            )
        return rec, m, f"already recorded in run {rec.id}" + (" (the same images)" if same else "")
    n = int(fs.split_info(split, rec.extractor)["committed_rows"])
    seen: dict = {}

    def figures(written) -> dict:  # each block's probabilities written to the new predictions.npz as it is scored
        m = run_metrics_blocks(written, names, rec.calibration)[2]
        refuse_rewritten(fs, rec.extractor, versions, "evaluation", f"Run `featstore runs evaluate {rec.id}`")
        seen["m"] = m  # labels, probabilities, paths and listing of one version of the split (attack 54 #2)
        return m

    try:
        if sticky.ahead(folder) is not None:  # a colleague's run in a sticky runs folder: said before any work
            raise not_written(PermissionError(errno.EPERM, "Operation not permitted"), root, rec.id, update=True)
        if closed_folders(root, rec.id):  # a colleague's run or runs folder closed to the user's writes: the same
            raise not_written(PermissionError(errno.EACCES, "Permission denied"), root, rec.id, update=True)
        rec = add_split(root, rec, folder, split, figures, (blocks, n, paths, listing))
    except (Rewritten, RowsRefused):
        raise  # the figures would be of the new version, the paths of the old; or the split's rows are refused (its
        # one read said so: scoring it again would read it twice to say the same)
    except (OutputError, StoreError) as exc:
        # refused before the split was scored (a runs folder that cannot be written): scored on its own; a refusal
        # of the store's rows raises again from there, as before anything is written
        m = seen.get("m") or run_metrics_blocks(_blocks(rec, folder, store, split), names, rec.calibration)[2]
        return rec, m, f"not recorded: {exc}"
    return rec, rec["metrics"][split], f"recorded in run {rec.id}"


def figures_of(rec: RunRecord, folder: Path) -> tuple[RunRecord, list[str]]:
    """The record with every split's figures, those it lacks (a run recorded before featstore recorded them)
    computed from its confusion matrices and stored predictions; and the splits computed so (nothing is written).
    A split's stored predictions are read only when its probability figures are missing, a block at a time
    (``featstore.experiments.compare.split_rows``): `runs show` loaded every split's (N, K) array whole."""
    stored, obj, now = None, rec.to_json(), []
    for split, m in obj["metrics"].items():
        rows = None
        if "log_loss" not in m and split in rec.predictions:
            stored = calibrated_predictions(folder, rec) if stored is None else stored  # verified once
            rows = split_rows(stored, split)[1]  # O(N) numbers a row, the whole array's figures
        full = completed(m, None, rows)
        if full != m:
            obj["metrics"][split], now = full, [*now, split]
    if not now:
        return rec, now
    obj["notes"] = [*obj.get("notes", []), f"figures of {', '.join(now)} computed now from the stored predictions"]
    return parse_record(obj, folder), now


def _png(folder: Path, name: str, draw, run_id: str) -> Path:
    """A PNG written into a run's folder: a plain name, never through a link or out of the folder, replaced whole; a
    folder, FIFO or device at that fixed name is refused in one line naming it and the fix."""
    path = output_path(folder, name)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket (not a regular file)"
        raise OutputError(
            f"cannot write PNG {path}: {what} of that name is in the way; featstore draws this run's figure under that "
            f"name only. "
            f"Move it out of the run folder and run `featstore runs show {run_id}` again"
        )
    return write_atomic(path, draw, "PNG")


def show_run(
    run_id: str,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
    *,
    unsaved: list[str] | None = None,
) -> tuple[RunRecord, list[Path]]:
    """A run's record (with the figures an older run lacks computed from its stored predictions), after writing its
    PNGs into its folder: per split a confusion matrix and a reliability diagram, and training curves. With
    ``unsaved`` (a list), each PNG that cannot be written (a read-only runs folder, a full disk, a folder or FIFO at its
    name) adds its error there instead of raising, and the others are still written: the record is still returned.

    Example::

        rec, pngs = show_run("dense-1a2b3c")
    """
    root = runs_root(store, runs)
    found, _ = find_run(run_id, root, verify=False)  # the id a prefix names: the lock is the run's
    with run_lock(root, found.id):  # a `runs evaluate` meanwhile would find this drawing's temporary files
        rec, folder = find_run(found.id, root, exact=True)
        rec, _ = figures_of(rec, folder)
        names = list(rec.class_names)
        pngs: list[Path] = []
        for name, draw in _figures(rec, names):
            try:
                pngs.append(_png(folder, name, draw, rec.id))
            except (OutputError, StoreError) as exc:  # a link, folder or FIFO at one name: the others are still drawn
                if unsaved is None:
                    raise
                unsaved.append(str(exc))
    return rec, pngs


def _figures(rec: RunRecord, names: list[str]) -> list[tuple[str, object]]:
    """:func:`show_run`'s PNGs: (file name, ``draw(tmp)``) per split's confusion matrix and reliability diagram, and
    the training curves."""
    from featstore.plots import DRAWN_CLASSES, confusion_png, curves_png, reliability_png

    figures: list[tuple[str, object]] = []
    for split, m in rec.metrics.items():
        title = f"{rec.id} on {split} (acc {accuracy_text(m)})"
        if len(names) <= DRAWN_CLASSES:  # beyond, a K x K picture of sub-pixel cells (30,000 classes: 7 GB of counts)
            figures.append(
                (
                    f"confusion_{split}.png",
                    lambda t, m=m, title=title: confusion_png(m.confusion_matrix, names, title, t),
                )
            )
        bins = m.figure("reliability")
        if bins:
            cal = rec.calibration
            what = f"calibrated (T = {cal['T']:.3g})" if cal["method"] == "temperature" else "not calibrated"
            figures.append(
                (
                    f"reliability_{split}.png",
                    lambda t, m=m, split=split, what=what: reliability_png(
                        m.figure("reliability"), f"{rec.id} on {split}: {what}, ECE {m.figure('ece'):.3f}", t
                    ),
                )
            )
    curves = kind_of(rec).curves(rec)
    if curves is not None:
        history, title, then = curves
        extra = {"kept": kind_of(rec).kept_epoch(rec)} | ({} if then is None else {"then": then})
        figures.append(("curves.png", lambda t: curves_png(history, title, t, **extra)))
    return figures


def accuracy_text(m) -> str:
    """ "0.810 [0.722, 0.874]": an accuracy with its 95 % Wilson interval (from the record, or computed from n)."""
    ci = m.figure("accuracy_ci") if hasattr(m, "figure") else m.get("accuracy_ci")
    acc, n = (m.accuracy, m.n) if hasattr(m, "figure") else (m["accuracy"], m["n"])
    if ci is None:
        ci = proportion_interval(round(acc * n), n).to_dict()
    return f"{acc:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
