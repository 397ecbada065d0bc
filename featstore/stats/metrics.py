"""What a split's predictions say beyond accuracy: top-k, balanced accuracy, macro-F1, log-loss and calibration.

Labels are class indices ``0..K-1`` (the store's), probabilities ``(N, K)`` with one column per store class.
Checked against scikit-learn's metrics in tests/test_stats.py; nothing here imports scikit-learn.

>>> y = np.array([0, 1, 1]); proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
>>> round(log_loss(y, proba), 4), balanced_accuracy(y, proba.argmax(1))
(0.4987, 0.75)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from featstore.stats.intervals import proportion_interval


def _labels_proba(y, proba) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as int indices and ``proba`` as a float (N, K) array, checked against each other."""
    y, proba = np.asarray(y), np.asarray(proba, dtype=np.float64)
    if y.ndim != 1 or proba.ndim != 2 or len(y) != len(proba):
        raise ValueError(f"labels (N,) and probabilities (N, K) expected, got shapes {y.shape} and {proba.shape}")
    if len(y) and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= proba.shape[1]):
        raise ValueError(f"labels must be class indices 0..{proba.shape[1] - 1} (one per probability column)")
    if len(y) == 0:
        raise ValueError("a metric needs at least one row")
    return y.astype(np.intp), proba


def _labels_pred(y, pred) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and ``pred`` as 1-D arrays of one length, at least one row."""
    y, pred = np.asarray(y), np.asarray(pred)
    if y.ndim != 1 or pred.shape != y.shape:
        raise ValueError(f"labels and predictions must be 1-D of one length, got shapes {y.shape} and {pred.shape}")
    if len(y) == 0:
        raise ValueError("a metric needs at least one row")
    return y, pred


def top_k_accuracy(y, proba, k: int) -> float:
    """Share of rows whose true class is among the ``k`` most probable.

    Ties are shared fairly: a true class tied with others at the edge of the top k gets the share of the tied
    places that fall inside it (uniform probabilities over K classes give k/K, not 1 or 0). Without ties this
    is scikit-learn's ``top_k_accuracy_score``.

    >>> top_k_accuracy([0, 1], [[0.5, 0.5], [0.9, 0.1]], 1)
    0.25
    """
    y, proba = _labels_proba(y, proba)
    if not 1 <= k:
        raise ValueError(f"k must be at least 1, got {k}")
    true = proba[np.arange(len(y)), y][:, None]
    above = (proba > true).sum(axis=1)
    tied = (proba == true).sum(axis=1)  # the true class included
    return float(np.clip((k - above) / tied, 0.0, 1.0).mean())


def balanced_accuracy(y, pred) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``)."""
    y, pred = _labels_pred(y, pred)
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def macro_f1(y, pred) -> float:
    """Unweighted mean F1 over the classes in ``y`` or ``pred`` (scikit-learn's ``f1_score(average="macro")``)."""
    y, pred = _labels_pred(y, pred)
    scores = []
    for c in np.unique(np.concatenate([y, pred])):
        tp = np.sum((pred == c) & (y == c))
        scores.append(2 * tp / (np.sum(pred == c) + np.sum(y == c)))
    return float(np.mean(scores))


def log_loss(y, proba, eps: float | None = None) -> float:
    """Mean negative log-probability of the true class, clipped to ``[eps, 1 - eps]`` (default: float64's epsilon,
    as scikit-learn's ``log_loss``) so a confident mistake costs about 36 nats, not infinity."""
    y, proba = _labels_proba(y, proba)
    eps = np.finfo(np.float64).eps if eps is None else eps
    p = np.clip(proba[np.arange(len(y)), y], eps, 1 - eps)
    return float(-np.mean(np.log(p)))


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: rows whose top probability lies in (low, high]."""

    low: float  # lower edge (exclusive; the first bin includes 0)
    high: float  # upper edge (inclusive)
    count: int  # rows in the bin
    confidence: float  # their mean top probability (NaN when empty)
    accuracy: float  # share of them predicted right (NaN when empty)


@dataclass(frozen=True)
class Reliability:
    """Top-label calibration: the expected calibration error and the bins behind it."""

    ece: float  # sum over bins of count/N * |accuracy - confidence|
    bins: tuple[ReliabilityBin, ...]  # equal-width bins over [0, 1]

    def to_dict(self) -> dict:
        """JSON-able, empty bins' NaNs as None."""
        return {
            "ece": self.ece,
            "bins": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(b).items()}
                for b in self.bins
            ],
        }


def reliability(y, proba, n_bins: int = 15) -> Reliability:
    """Top-label reliability bins and expected calibration error (equal-width bins, Guo et al. 2017).

    Each row counts once, in the bin of its highest probability (the predicted class: the first of tied
    columns, as ``argmax``); a bin's gap is its accuracy minus its mean confidence.

    >>> r = reliability([0, 0, 1, 1], [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], n_bins=5)
    >>> round(r.ece, 4), [b.count for b in r.bins]
    (0.275, [0, 0, 1, 1, 2])
    """
    y, proba = _labels_proba(y, proba)
    return reliability_of(proba.max(axis=1), proba.argmax(axis=1) == y, n_bins)


def reliability_of(conf: np.ndarray, right: np.ndarray, n_bins: int = 15) -> Reliability:
    """:func:`reliability` from each row's top probability ``conf`` and whether its prediction was ``right``."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)  # bin m holds (edge m, edge m+1]
    bins, ece = [], 0.0
    for m in range(n_bins):
        rows = which == m
        count = int(rows.sum())
        if count:
            c, a = float(conf[rows].mean()), float(right[rows].mean())
            ece += count / len(conf) * abs(a - c)
        else:
            c = a = math.nan
        bins.append(ReliabilityBin(float(edges[m]), float(edges[m + 1]), count, c, a))
    return Reliability(float(ece), tuple(bins))


def expected_calibration_error(y, proba, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (see :func:`reliability`)."""
    return reliability(y, proba, n_bins).ece


def split_metrics(y, proba, pred=None, n_bins: int = 15) -> dict:
    """Every figure a run records for one split: accuracy with its Wilson interval, top-5 (with at least 6
    classes), balanced accuracy, macro-F1, log-loss, ECE and the reliability bins.

    ``pred`` defaults to the most probable class; give the model's own predictions where they are defined
    otherwise. Example::

        split_metrics(y, proba)["accuracy_ci"]   # {"estimate": 0.81, "low": 0.72, "high": 0.87, ...}
    """
    y, proba = _labels_proba(y, proba)
    pred = proba.argmax(axis=1) if pred is None else np.asarray(pred)
    _labels_pred(y, pred)
    right = int(np.sum(pred == y))
    out = {
        "n": len(y),
        "accuracy": right / len(y),
        "accuracy_ci": proportion_interval(right, len(y)).to_dict(),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "macro_f1": macro_f1(y, pred),
        "log_loss": log_loss(y, proba),
    }
    if proba.shape[1] >= 6:
        out["top5"] = top_k_accuracy(y, proba, 5)
    rel = reliability(y, proba, n_bins)
    out["ece"] = rel.ece
    out["reliability"] = rel.to_dict()["bins"]
    return out
