"""Recorded runs applied and shown: metrics, evaluating a run on a split of the store, showing and comparing runs.

Every kind of run is evaluated the same way: the run is found and verified (``featstore.runs.folder``), and its
kind (``featstore.runs.kinds``) gives its labels, predictions and probabilities on the split, refused when the
store's features are not the ones the run was made on (fingerprint, classes).

>>> metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), ["cat", "dog"])["accuracy"]   # doctest: +ELLIPSIS
0.666...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError
from featstore.runs.apply import ApplyOptions
from featstore.runs.files import output_path
from featstore.runs.folder import get_run, list_runs, runs_root
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord, digest_paths
from featstore.runs.write import add_split, replace_file
from featstore.store.reader import FeatureStore


def metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def apply_run(run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None):
    """``(record, folder, labels, predictions, probabilities)`` of a run applied to a split of the store.

    Refused when the store's features are not the ones the run was fitted on (fingerprint, classes), and for an
    ensemble (its members are evaluated instead). Example::

        rec, folder, y, pred, proba = apply_run("logreg-1a2b3c", "test")
    """
    rec, folder = get_run(run_id, store, runs)
    y, pred, proba = kind_of(rec).split_predictions(rec, folder, store, split, ApplyOptions())
    return rec, folder, y, pred, proba


def evaluate_run(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> dict:
    """Apply a run to a split of the store; refused when the store's fingerprint is not the run's.

    Example::

        evaluate_run("logreg-1a2b3c", "test")["accuracy"]
    """
    rec, _, y, pred, _ = apply_run(run_id, split, store, runs)
    return metrics(y, pred, list(rec.class_names))


def record_split(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> RunRecord:
    """Evaluate a run on one more split and add it to the run's record and stored predictions; returns the record.

    Used to evaluate the test split once, after a choice made on validation (``featstore sweep``). Example::

        record_split("logreg-1a2b3c", "test")
    """
    rec, folder, y, pred, proba = apply_run(run_id, split, store, runs)
    if split in rec.metrics:
        return rec
    paths = digest_paths(FeatureStore(store).paths(split, rec.extractor))
    return add_split(
        runs_root(store, runs), rec, folder, split, metrics(y, pred, list(rec.class_names)), (proba, y, paths)
    )


def show_run(
    run_id: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> tuple[RunRecord, list[Path]]:
    """A run's record, after writing its PNGs into its folder: a confusion matrix per split, and training curves.

    Example::

        rec, pngs = show_run("dense-1a2b3c")
    """
    from featstore.plots import confusion_png, curves_png

    rec, folder = get_run(run_id, store, runs)
    names = list(rec.class_names)
    # split names and the id were checked when the folder was read; output_path also refuses links and paths leaving the folder,
    # and replace_file writes a new file and renames it into place (never through a hard link, a folder in the way is an error)
    pngs = [
        replace_file(
            output_path(folder, f"confusion_{split}.png"),
            lambda tmp, split=split, m=m: confusion_png(
                m.confusion_matrix, names, f"{rec.id} on {split} (acc {m.accuracy:.3f})", tmp
            ),
        )
        for split, m in rec.metrics.items()
    ]
    curves = kind_of(rec).curves(rec)
    if curves is not None:
        history, title, then = curves
        extra = {} if then is None else {"then": then}
        pngs.append(
            replace_file(output_path(folder, "curves.png"), lambda tmp: curves_png(history, title, tmp, **extra))
        )
    return rec, pngs


def compare_runs(
    run_ids: list[str] | None = None,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
) -> Path:
    """Bar chart of validation and test accuracy of the given runs (default: all); returns the PNG path.

    Example::

        compare_runs(["logreg-1a2b3c", "svm-4d5e6f"], out="compare.png")
    """
    from featstore.plots import compare_png

    recs = [get_run(r, store, runs)[0] for r in run_ids] if run_ids else list_runs(store, runs)
    if not recs:
        raise ConfigError("no runs to compare; fit some with `featstore fit`")
    out = Path(out) if out else output_path(runs_root(store, runs), "compare.png")
    scores = {s: [r.accuracy(s) for r in recs] for s in ("validation", "test")}
    return replace_file(out, lambda tmp: compare_png([r.id for r in recs], scores, tmp))
