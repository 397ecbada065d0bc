"""Every figure a run records for one split, each with its 95 % interval (what ``runs``, ``runs show``, ``runs
compare`` and ``sweep`` print).

- :func:`confusion_figures`, from the confusion matrix alone, so that runs recorded before these figures existed
  get them too: the accuracy with its Wilson interval, balanced accuracy and macro-F1 with percentile bootstrap
  intervals (rows resampled; drawn as one multinomial draw over the matrix's cells, the same distribution);
- :func:`probability_figures`, from the probabilities: log-loss, the top-label ECE with its reliability bins and,
  with at least 6 classes, top-5 accuracy, each with a percentile bootstrap interval (rows resampled). The ECE is a
  sum of absolute gaps, so every resample's noise inflates it and its plain percentile interval can lie above the
  estimate itself: its interval is the percentile interval moved back by the bootstrap's bias (mean of the
  resamples minus the estimate), never below 0.

On :data:`NORMAL_ROWS` rows or more (a train split of 10⁵–10⁶ rows: 2,000 resamples of 800,000 rows took 43 s a
split), the probability figures' resamples are drawn from the normal distribution with the row bootstrap's exact mean
and covariance (a mean's, and the ECE's vector of bin sums) instead of resampling rows: at that size the bootstrap's
distribution of these sums is normal to well within its own Monte Carlo error (tested against the row bootstrap),
and the work is O(N) instead of O(N x B). The interval's method says which was used.

On fewer than :data:`MIN_BOOT_ROWS` rows no bootstrap is drawn: a bootstrap of one row is a single point ("balanced
accuracy 0.000 [0.000, 0.000]" read as certainty), so such an interval is the figure's whole range ([0, 1], or
[0, 36.04] nats for the log-loss, whose probabilities are clipped at float64's epsilon) and its method says why.
The accuracy's Wilson interval needs no such floor.

A bootstrap is degenerate when its percentile interval has no width: every row right (or wrong), every top-5 a hit,
at any number of rows, gives every resample the same figure, which would read as certainty. Such an interval is
instead an exact, conservative one where the figure has one: balanced accuracy the
mean of each present class's recall bounds, macro-F1 the mean of each class's F1 bounds from its precision's and
recall's bounds (F1 grows with both), each bound a Clopper-Pearson interval at level 1 - (1 - 0.95) / m over the m
proportions (Bonferroni: all of them hold at once with 95 % probability, so their mean's interval does too); top-5
the Clopper-Pearson interval of its hits when every row is a whole hit or miss. Otherwise (log-loss, ECE, a top-5 of
tied shares) it is the figure's whole range (``featstore.stats.exact``). Its ``method`` says which, and why.
Log-loss and ECE are judged by the rows' correctness, not their interval's width: when every row is right (or
every row wrong) a bootstrap never draws the other kind, however the rows' losses differ (36 right rows gave
"log-loss 0.001 [0.001, 0.001]"), so their interval allows the unseen kind's Clopper-Pearson share at its worst
cost (:func:`~featstore.stats.exact.unseen_rows_interval`, ``method`` ``bounded: ...``).

Macro-F1 is averaged over the classes present in the labels or the predictions (scikit-learn's ``f1_score(
average="macro", zero_division=0)`` without ``labels=``, and :func:`featstore.stats.metrics.macro_f1`): a store
class with neither rows nor predictions in the split is left out, not counted 0. Runs recorded before keep the
macro-F1 they recorded (over every store class, which differs only on a split that lacks a store class entirely).
Balanced accuracy is the mean recall over the classes present in the labels (scikit-learn's
``balanced_accuracy_score``). Bootstraps are seeded, so the same predictions always give the same intervals.

>>> f = confusion_figures([[8, 2], [1, 9]])
>>> f["accuracy_ci"]["method"], round(f["accuracy_ci"]["low"], 3), round(f["balanced_accuracy"], 4)
('wilson', 0.64, 0.85)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featstore.stats.exact import (
    NO_WIDTH,
    degenerate_interval,
    exact_balanced,
    exact_macro_f1,
    exact_top,
    unseen_rows_interval,
)
from featstore.stats.intervals import Interval, percentile_bounds, proportion_interval
from featstore.stats.metrics import _labels_proba, reliability_of

N_BOOT = 2000  # bootstrap resamples of every recorded interval
SEED = 0  # their seed: the same predictions give the same intervals
N_BINS = 15  # reliability bins (equal width over [0, 1])
TOP_K = 5  # top-k accuracy is recorded with at least TOP_K + 1 classes
MIN_BOOT_ROWS = 20  # below this many rows a percentile bootstrap is far too narrow (one row: a single point)
_CELLS_PER_CHUNK = 1_000_000  # resampled rows held at once by the bootstraps (25 MB of work arrays, same draws)
NORMAL_ROWS = 100_000  # from this many rows the probability figures' bootstrap is drawn from its normal limit


def _method(n_boot: int, seed: int, n: int = 0, shift: str = "") -> str:
    """The interval's method: ``n`` given (the normal limit's rows) says the resamples were drawn from the normal limit."""
    how = f"resamples drawn from its normal limit, {n} rows; " if n else ""
    return f"percentile bootstrap{shift} ({how}B={n_boot}, seed {seed})"


def _interval(
    estimate: float,
    draws: np.ndarray,
    n_boot: int,
    seed: int,
    level: float,
    n: int,
    whole=(0.0, 1.0),
    normal: bool = False,
    exact=None,
) -> dict:
    """The percentile interval of ``draws``; on fewer than :data:`MIN_BOOT_ROWS` rows the figure's ``whole`` range
    instead, saying so (a bootstrap of one row is a single point, which would read as certainty); when the percentile
    interval has no width, :func:`~featstore.stats.exact.degenerate_interval` (``exact``: a callable giving the
    figure's exact bounds, or None, called only then)."""
    if n < MIN_BOOT_ROWS:
        return _too_few(estimate, n, level, whole)
    lo, hi = percentile_bounds(draws, level)
    if hi - lo <= NO_WIDTH:
        return degenerate_interval(estimate, n_boot, level, whole, exact() if exact is not None else None)
    return Interval(float(estimate), lo, hi, level, _method(n_boot, seed, n if normal else 0)).to_dict()


def _too_few(estimate: float, n: int, level: float, whole) -> dict:
    method = f"none: {n} rows, under {MIN_BOOT_ROWS}, are too few for a bootstrap; the figure's whole range"
    return Interval(float(estimate), float(whole[0]), float(whole[1]), level, method).to_dict()


def _shifted_interval(
    estimate: float, draws: np.ndarray, n_boot: int, seed: int, level: float, n: int, normal: bool = False
) -> dict:
    """The percentile interval of ``draws`` moved by the bootstrap's own bias (mean of the draws minus the estimate),
    never below 0: for the ECE, a sum of absolute gaps that every resample's extra noise inflates, whose plain
    percentile interval can lie wholly above the estimate. On too few rows, [0, 1] (see :func:`_interval`)."""
    if n < MIN_BOOT_ROWS:
        return _too_few(estimate, n, level, (0.0, 1.0))
    bias = float(np.mean(draws)) - float(estimate)
    lo, hi = percentile_bounds(draws - bias, level)
    if hi - lo <= NO_WIDTH:
        return degenerate_interval(estimate, n_boot, level)
    method = _method(n_boot, seed, n if normal else 0, f" moved by its bias {bias:+.3g}")
    return Interval(float(estimate), max(0.0, lo), max(0.0, hi), level, method).to_dict()


def _balanced(tp: np.ndarray, true_n: np.ndarray) -> np.ndarray:
    """Mean recall over the classes with rows, along the last axis."""
    present = true_n > 0
    recall = np.divide(tp, true_n, out=np.zeros(tp.shape), where=present)
    return recall.sum(axis=-1) / present.sum(axis=-1)


def _macro_f1(tp: np.ndarray, true_n: np.ndarray, pred_n: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes present in the labels or the predictions, along the last axis (scikit-learn's
    ``f1_score(average="macro")`` without ``labels=``; a class with neither rows nor predictions is left out)."""
    den = true_n + pred_n
    present = den > 0
    return np.divide(2 * tp, den, out=np.zeros(tp.shape), where=present).sum(axis=-1) / present.sum(axis=-1)


def macro_f1_of(cm) -> float:
    """Macro-F1 of a confusion matrix (rows, or run.json's packed cells), over the classes present in the labels or
    the predictions: the one definition every recorded figure uses.

    >>> macro_f1_of([[0, 0], [0, 30]])   # no row of class 0, none predicted: left out
    1.0
    """
    k, true_of, pred_of, counts = confusion_cells(cm)
    if int(counts.sum()) == 0:
        return 0.0
    diag = true_of == pred_of
    tp = np.bincount(true_of[diag], weights=counts[diag], minlength=k)
    true_n, pred_n = (
        np.bincount(true_of, weights=counts, minlength=k),
        np.bincount(pred_of, weights=counts, minlength=k),
    )
    return float(_macro_f1(tp, true_n, pred_n))


def confusion_figures(cm, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95) -> dict:
    """Accuracy with its Wilson interval, balanced accuracy and macro-F1 with bootstrap intervals, from a K x K
    confusion matrix (rows: true class, columns: predicted class).

    Keys: ``accuracy_ci``, ``balanced_accuracy``, ``balanced_accuracy_ci``, ``macro_f1_ci`` (each interval a dict:
    estimate, low, high, level, method).
    """
    k, true_of, pred_of, counts = confusion_cells(cm)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("a confusion matrix of no rows has no figures")
    rng, p = np.random.default_rng(seed), counts / n
    bal_b, f1_b = np.empty(n_boot), np.empty(n_boot)
    step = max(1, min(n_boot, _CELLS_PER_CHUNK // max(len(counts), k)))  # resamples at once: bounded work arrays
    for start in range(0, n_boot, step):  # the same draws as one call of n_boot (one generator, in order)
        c = min(step, n_boot - start)
        draws = rng.multinomial(n, p, size=c)  # (c, cells): rows resampled

        def per_class(of: np.ndarray, keep: np.ndarray | None = None, draws=draws, c=c) -> np.ndarray:
            w = draws if keep is None else draws * keep
            flat = (np.arange(c)[:, None] * k + of[None, :]).ravel()
            return np.bincount(flat, weights=w.ravel(), minlength=c * k).reshape(c, k)

        tp_b, true_b, pred_b = per_class(true_of, true_of == pred_of), per_class(true_of), per_class(pred_of)
        bal_b[start : start + c], f1_b[start : start + c] = _balanced(tp_b, true_b), _macro_f1(tp_b, true_b, pred_b)
    diag = true_of == pred_of
    tp = np.bincount(true_of[diag], weights=counts[diag], minlength=k)
    true_n, pred_n = (
        np.bincount(true_of, weights=counts, minlength=k),
        np.bincount(pred_of, weights=counts, minlength=k),
    )
    return {
        "accuracy_ci": proportion_interval(int(counts[diag].sum()), n, level).to_dict(),
        "balanced_accuracy": float(_balanced(tp, true_n)),
        "balanced_accuracy_ci": _interval(
            _balanced(tp, true_n), bal_b, n_boot, seed, level, n, exact=lambda: exact_balanced(tp, true_n, level)
        ),
        "macro_f1_ci": _interval(
            _macro_f1(tp, true_n, pred_n),
            f1_b,
            n_boot,
            seed,
            level,
            n,
            exact=lambda: exact_macro_f1(tp, true_n, pred_n, level),
        ),
    }


def _mean_draws(rng: np.random.Generator, x: np.ndarray, n_boot: int) -> np.ndarray:
    """``n_boot`` resampled means of ``x`` drawn from the row bootstrap's normal limit: mean x̄, variance (the
    population variance of x) / N, the bootstrap's exact first two moments."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean() + rng.standard_normal(n_boot) * (x.std() / np.sqrt(len(x)))


def _bin_sum_draws(rng: np.random.Generator, gap: np.ndarray, bins: np.ndarray, n_bins: int, n_boot: int) -> np.ndarray:
    """``(n_boot, n_bins)`` resampled per-bin sums of ``gap`` from the row bootstrap's normal limit. Resampling N rows
    gives the bin sums G* mean G and covariance diag(sum of gap² in each bin) - G Gᵀ / N (a multinomial's); drawn
    through that matrix's eigen-decomposition (it is positive semi-definite, so clipped at 0 against rounding)."""
    g = np.bincount(bins, weights=gap, minlength=n_bins)
    cov = np.diag(np.bincount(bins, weights=gap * gap, minlength=n_bins)) - np.outer(g, g) / len(gap)
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    return g + rng.standard_normal((n_boot, n_bins)) @ root.T


@dataclass(frozen=True)
class RowFigures:
    """What the probability figures need of each row: O(N) numbers instead of the (N, K) probabilities, so that a
    split of a million rows and a thousand classes (8 GB of probabilities) can be scored block by block.

    >>> rows = RowFigures.join([RowFigures.of([0], [[0.8, 0.2]]), RowFigures.of([1], [[0.6, 0.4]])])
    >>> len(rows), rows.right.tolist()
    (2, [True, False])
    """

    loss: np.ndarray  # -log of the true class's probability, clipped to [eps, 1 - eps] (float64's eps)
    conf: np.ndarray  # the highest probability (the predicted class's)
    right: np.ndarray  # bool: the highest probability is the true class's (the first of tied columns)
    top: np.ndarray | None  # the row's share of a top-5 hit (ties shared); None with TOP_K classes or fewer

    @classmethod
    def of(cls, y, proba) -> RowFigures:
        """The per-row figures of labels ``y`` and ``(N, K)`` probabilities ``proba``."""
        y, proba = _labels_proba(y, proba)
        n, k = proba.shape
        eps = np.finfo(np.float64).eps
        true = proba[np.arange(n), y]
        top = None
        if k > TOP_K:
            top = np.clip((TOP_K - (proba > true[:, None]).sum(axis=1)) / (proba == true[:, None]).sum(axis=1), 0, 1)
        return cls(-np.log(np.clip(true, eps, 1 - eps)), proba.max(axis=1), proba.argmax(axis=1) == y, top)

    @classmethod
    def join(cls, parts: list[RowFigures]) -> RowFigures:
        """The rows of ``parts``, in order (blocks of one split)."""
        if not parts:
            raise ValueError("a metric needs at least one row")
        tops = [p.top for p in parts]
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("loss", "conf", "right")),
            None if any(t is None for t in tops) else np.concatenate(tops),
        )

    def __len__(self) -> int:
        return len(self.loss)


def probability_figures(
    y, proba, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95, n_bins: int = N_BINS
) -> dict:
    """Log-loss, ECE (with its reliability bins) and, with at least 6 classes, top-5 accuracy, each with a bootstrap
    interval. ``proba``: ``(N, K)`` probabilities (the calibrated ones, for a run that is calibrated), or their
    :class:`RowFigures` (``y`` is then not read).

    Keys: ``log_loss``, ``log_loss_ci``, ``ece``, ``ece_ci``, ``reliability`` (the bins: low, high, count,
    confidence, accuracy; None where a bin is empty) and ``top5``, ``top5_ci``.

    >>> f = probability_figures([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], n_boot=200)
    >>> round(f["log_loss"], 4), "top5" in f
    (0.4987, False)
    """
    rows = proba if isinstance(proba, RowFigures) else RowFigures.of(y, proba)
    n, loss, conf, top = len(rows), rows.loss, rows.conf, rows.top
    eps = np.finfo(np.float64).eps
    rel = reliability_of(conf, rows.right, n_bins)
    gap = rows.right - conf  # a bin's |sum of gaps| / N is its share of the ECE
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    rng = np.random.default_rng(seed)
    ll_b, ece_b, top_b = np.empty(n_boot), np.empty(n_boot), np.empty(n_boot)
    normal = n >= NORMAL_ROWS
    if normal:
        ll_b[:], top_b[:] = _mean_draws(rng, loss, n_boot), _mean_draws(rng, top, n_boot) if top is not None else 0.0
        ece_b[:] = np.abs(_bin_sum_draws(rng, gap, bins, n_bins, n_boot)).sum(axis=1) / n
    step = max(1, min(n_boot, _CELLS_PER_CHUNK // n))
    for start in range(0, n_boot if not normal else 0, step):
        c = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(c, n))
        ll_b[start : start + c] = loss[idx].mean(axis=1)
        flat = (np.arange(c)[:, None] * n_bins + bins[idx]).ravel()
        sums = np.bincount(flat, weights=gap[idx].ravel(), minlength=c * n_bins).reshape(c, n_bins)
        ece_b[start : start + c] = np.abs(sums).sum(axis=1) / n
        if top is not None:
            top_b[start : start + c] = top[idx].mean(axis=1)
    out = {
        "log_loss": float(loss.mean()),
        "log_loss_ci": _interval(loss.mean(), ll_b, n_boot, seed, level, n, (0.0, float(-np.log(eps))), normal),
        "ece": rel.ece,
        "ece_ci": _shifted_interval(rel.ece, ece_b, n_boot, seed, level, n, normal),
        "reliability": rel.to_dict()["bins"],
    }
    if n >= MIN_BOOT_ROWS and (rows.right.all() or not rows.right.any()):  # one kind of row never drawn
        all_right = bool(rows.right.all())
        lo, hi = percentile_bounds(ll_b, level)
        out["log_loss_ci"] = unseen_rows_interval(out["log_loss_ci"], lo, hi, n, all_right, float(-np.log(eps)))
        lo, hi = percentile_bounds(ece_b - (float(np.mean(ece_b)) - rel.ece), level)
        out["ece_ci"] = unseen_rows_interval(out["ece_ci"], max(0.0, lo), max(0.0, hi), n, all_right, 1.0, True)
    if top is not None:
        out["top5"] = float(top.mean())
        out["top5_ci"] = _interval(
            top.mean(), top_b, n_boot, seed, level, n, normal=normal, exact=lambda: exact_top(top, level)
        )
    return out


HEADLINE = (  # a split's figures as JSON outputs show them (the reliability bins and per-class tables are in run.json)
    "n",
    "accuracy",
    "accuracy_ci",
    "balanced_accuracy",
    "balanced_accuracy_ci",
    "macro_f1",
    "macro_f1_ci",
    "top5",
    "top5_ci",
    "log_loss",
    "log_loss_ci",
    "ece",
    "ece_ci",
    "before_calibration",
)
PROBABILITY_KEYS = ("log_loss", "log_loss_ci", "ece", "ece_ci", "reliability", "top5", "top5_ci")
CONFUSION_KEYS = ("accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1_ci")


DENSE_CLASSES = 100  # run.json keeps a confusion matrix of up to this many classes as rows of counts


def packed_confusion(cm) -> list | dict:
    """A confusion matrix as run.json keeps it: up to :data:`DENSE_CLASSES` classes its rows of counts; beyond, only
    its non-zero cells, ``{"shape": [K, K], "cells": [[true, predicted, count], ...]}`` (a 1,000-class matrix is a
    million counts, 8 MB of JSON per split, nearly all zeros, read again by every `featstore runs`).

    >>> packed_confusion([[3, 0], [1, 2]])
    [[3, 0], [1, 2]]
    >>> dense_confusion({"shape": [2, 2], "cells": [[0, 0, 3], [1, 0, 1], [1, 1, 2]]}).tolist()
    [[3, 0], [1, 2]]
    """
    k, true, pred, counts = confusion_cells(cm)  # packed cells stay packed: never a dense K x K beyond DENSE_CLASSES
    if k <= DENSE_CLASSES:
        return dense_confusion(cm).tolist()
    return {"shape": [k, k], "cells": np.stack([true, pred, counts], axis=1).tolist()}


def confusion_of(y_true, y_pred, k: int) -> list | dict:
    """The confusion matrix of labels and predictions in 0..k-1 (others are left out, as scikit-learn's
    ``confusion_matrix(labels=range(k))`` does) as run.json keeps it (:func:`packed_confusion`), counted from its
    non-zero cells: 30,000 classes never make a 7 GB dense matrix.

    >>> confusion_of([0, 1, 1], [0, 0, 1], 2)
    [[1, 0], [1, 1]]
    """
    t, p = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    keep = (t >= 0) & (t < k) & (p >= 0) & (p < k)
    flat, counts = np.unique(t[keep] * k + p[keep], return_counts=True)
    true, pred = np.divmod(flat, k)
    return packed_confusion({"shape": [k, k], "cells": np.stack([true, pred, counts], axis=1).tolist()})


def confusion_cells(value) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(K, true, predicted, count)`` of the non-zero cells of a confusion matrix (rows of counts, or run.json's
    packed cells), in row-major order, never made dense: a K x K matrix of 30,000 classes is 7 GB.

    >>> confusion_cells({"shape": [2, 2], "cells": [[1, 0, 1], [0, 0, 3]]})[1:]
    (array([0, 1]), array([0, 0]), array([3, 1]))
    """
    if isinstance(value, dict) or (hasattr(value, "keys") and "cells" in value):
        k = int(value["shape"][0])
        cells = np.asarray(value["cells"], dtype=np.int64).reshape(-1, 3)
        flat, counts = cells[:, 0] * k + cells[:, 1], cells[:, 2]
        if len(cells) and (cells.min() < 0 or cells[:, :2].max() >= k):
            raise ValueError(
                f"the cells of a {k}-class confusion matrix are [true, predicted, count] within 0..{k - 1}"
            )
        flat, at = np.unique(flat, return_inverse=True)  # a cell listed twice counts once with both counts
        counts = np.bincount(at.ravel(), weights=counts, minlength=len(flat)).astype(np.int64)
    else:
        cm = np.asarray(value, dtype=np.int64)
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (cm < 0).any():
            raise ValueError(f"a confusion matrix is a square array of counts, got shape {cm.shape}")
        k, flat = cm.shape[0], np.flatnonzero(cm)
        counts = cm.ravel()[flat]
    keep = counts != 0
    true_of, pred_of = np.divmod(flat[keep], k)
    return k, true_of, pred_of, counts[keep]


def dense_confusion(value) -> np.ndarray:
    """The K x K counts of a confusion matrix as run.json keeps it (rows, or the non-zero cells of a large one)."""
    if isinstance(value, dict) or (hasattr(value, "keys") and "cells" in value):
        k = int(value["shape"][0])
        cm = np.zeros((k, k), dtype=np.int64)
        cells = np.asarray(value["cells"], dtype=np.int64).reshape(-1, 3)
        np.add.at(cm, (cells[:, 0], cells[:, 1]), cells[:, 2])
        return cm
    return np.asarray(value, dtype=np.int64)


def completed(m: dict, y=None, proba=None) -> dict:
    """A split's recorded metrics with the figures it lacks added: from its confusion matrix, and from ``proba``
    (with labels ``y``) when given and it has none; what is there already is kept as it is.

    >>> sorted(completed({"n": 2, "accuracy": 0.5, "confusion_matrix": [[1, 0], [1, 0]]}))[:3]
    ['accuracy', 'accuracy_ci', 'balanced_accuracy']
    """
    out = dict(m)
    if any(key not in out for key in CONFUSION_KEYS):
        cm = out["confusion_matrix"]
        if int(confusion_cells(cm)[3].sum()) > 0:
            out = {**confusion_figures(cm), **out}
    if proba is not None and "log_loss" not in out and len(proba):
        out = {**probability_figures(y, proba), **out}
    return out
