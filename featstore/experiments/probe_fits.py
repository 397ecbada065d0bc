"""The arithmetic of the two probes on standardised vectors: the logistic-regression C path and cosine kNN votes.

- :class:`RowSpace`: when a vector has more values than train has rows, an L2-regularised linear model's weights lie
  in the span of the training rows (the representer theorem; the intercept is not penalised), so fitting on each
  row's coordinates in that span gives the same model with ``n`` instead of ``d`` values per row.
- :func:`c_path`: logistic regression (Newton-CG, as the ``logreg`` classifier) over a coarse grid of C, one value
  per decade, then a finer one around the best, each fit warm-started from the previous; scored on validation.
- :func:`knn_predict`: cosine distance, votes weighted by 1/distance (scikit-learn's ``weights="distance"``), for
  several k from one neighbour search.

>>> [f"{c:g}" for c in fine_grid(1e-3)]
['0.000177828', '0.000316228', '0.000562341', '0.00177828', '0.00316228', '0.00562341']
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

COARSE = tuple(10.0**k for k in range(-6, 6))  # 1e-6 ... 1e5: one C per decade
FINE = (-0.75, -0.5, -0.25, 0.25, 0.5, 0.75)  # steps, in decades, around the best coarse C
_BLOCK_BYTES = 128 << 20  # float64 working memory of one block of a product


def fine_grid(best: float, coarse: tuple[float, ...] = COARSE, steps: tuple[float, ...] = FINE) -> list[float]:
    """The fine Cs around ``best``: ``best * 10**step``, kept inside the coarse grid's range."""
    lo, hi = min(coarse), max(coarse)
    return [c for c in (best * 10.0**s for s in steps) if lo * (1 - 1e-9) <= c <= hi * (1 + 1e-9)]


def _products(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B.T`` in float64, a block of columns at a time (float32 inputs are never copied whole)."""
    out = np.zeros((len(A), len(B)))
    step = max(1, _BLOCK_BYTES // (8 * max(len(A) + len(B), 1)))
    for s in range(0, A.shape[1], step):
        out += A[:, s : s + step].astype(np.float64) @ B[:, s : s + step].astype(np.float64).T
    return out


class RowSpace:
    """Coordinates in the span of the training rows (when ``d > n``; otherwise the vectors as they are).

    ``coords(X)`` of train are ``U S`` from the eigendecomposition of its Gram matrix ``X X^T = U S^2 U^T``; another
    row ``o`` gets ``o X^T U S^-1``. Inner products (hence a linear model's scores and its L2 penalty) are those of
    the original vectors; directions with a singular value below 1e-6 of the largest are dropped (numerically null).

    >>> X = np.random.default_rng(0).normal(size=(5, 40)); rs = RowSpace(X)
    >>> rs.active, rs.coords(X).shape, bool(np.allclose(rs.coords(X) @ rs.coords(X).T, X @ X.T))
    (True, (5, 5), True)
    """

    def __init__(self, X: np.ndarray):
        self.active = X.shape[1] > X.shape[0]
        if not self.active:
            return
        self._X = X
        ev, U = np.linalg.eigh(_products(X, X))
        keep = ev > max(float(ev[-1]), 0.0) * 1e-12
        s = np.sqrt(ev[keep])
        self._U, self._s = U[:, keep], s
        self.rank = int(keep.sum())

    def coords(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (train itself included) in the basis; unchanged when inactive."""
        if not self.active:
            return rows
        if rows is self._X:
            return self._U * self._s
        return _products(rows, self._X) @ (self._U / self._s)


@dataclass(frozen=True)
class GridPoint:
    """One C of the path, scored on validation."""

    C: float  # inverse L2 strength
    stage: str  # "coarse" or "fine"
    validation: float  # accuracy on validation
    log_loss: float  # validation log-loss (the tie-breaker)
    iterations: int  # Newton-CG iterations (warm-started from the previous C)
    converged: bool  # False when it stopped at max_iter


def full_proba(est, Z: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over every store class (a class absent from the fit gets 0)."""
    out = np.zeros((len(Z), n_classes))
    out[:, est.classes_] = est.predict_proba(Z)
    return out


def _log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y)), y], np.finfo(np.float64).eps, 1.0)
    return float(-np.mean(np.log(p)))


def _fit(est, Z, y) -> tuple[int, bool]:
    """Fit in place; (iterations, converged)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(Z, y)
    it = int(np.max(est.n_iter_))
    return it, it < est.max_iter


def logistic(C: float, max_iter: int = 1000, warm_start: bool = False):
    """The probe's logistic regression: multinomial, Newton-CG (the ``logreg`` classifier's solver), tol 1e-4."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, solver="newton-cg", max_iter=max_iter, warm_start=warm_start)


def c_path(
    Z: np.ndarray,
    y: np.ndarray,
    Zv: np.ndarray,
    yv: np.ndarray,
    n_classes: int,
    coarse: tuple[float, ...] = COARSE,
    steps: tuple[float, ...] = FINE,
    max_iter: int = 1000,
) -> tuple[list[GridPoint], int, object]:
    """Fit every coarse C (ascending, warm-started), then the fine Cs around the best; choose on validation.

    The choice: highest validation accuracy; ties go to the lower validation log-loss, then to the smaller C.
    Returns the points (coarse, then fine), the chosen index and the chosen fitted estimator.
    """
    import copy

    if len(coarse) < 2 or any(c <= 0 for c in coarse):
        raise ValueError(f"the coarse grid needs at least two positive Cs, got {coarse}")
    est = logistic(1.0, max_iter, warm_start=True)
    points: list[GridPoint] = []
    models: list[object] = []

    def score(C: float, stage: str) -> None:
        est.set_params(C=C)
        it, ok = _fit(est, Z, y)
        proba = full_proba(est, Zv, n_classes)
        acc = float(np.mean(proba.argmax(axis=1) == yv))
        points.append(GridPoint(float(C), stage, acc, _log_loss(yv, proba), it, ok))
        models.append(copy.deepcopy(est))

    for C in sorted(coarse):
        score(C, "coarse")
    best_coarse = points[_choose(points)].C
    fine = [c for c in fine_grid(best_coarse, coarse, steps) if all(not math.isclose(c, p.C) for p in points)]
    if fine:
        below = [i for i, p in enumerate(points) if p.C < min(fine)]
        start = models[below[-1]] if below else None  # warm start from the coarse solution just below
        est = copy.deepcopy(start) if start is not None else logistic(1.0, max_iter, warm_start=True)
        for C in sorted(fine):
            score(C, "fine")
    best = _choose(points)
    return points, best, models[best]


def _choose(points: list[GridPoint]) -> int:
    """Index of the best point: accuracy, then lower log-loss, then smaller C."""
    return min(range(len(points)), key=lambda i: (-points[i].validation, points[i].log_loss, points[i].C))


def cap_ks(ks: tuple[int, ...] | list[int], n_ref: int) -> tuple[list[int], list[str]]:
    """The ks, each at most ``n_ref`` (deduplicated, ascending), and a note for each one capped."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    notes = [
        f"k={k} is more than the {n_ref} reference rows: capped at k={n_ref}" for k in sorted(set(ks)) if k > n_ref
    ]
    return sorted({min(int(k), n_ref) for k in ks}), notes


def _unit(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32; zero rows stay zero, as scikit-learn's ``normalize``)."""
    norms = np.linalg.norm(X.astype(np.float64, copy=False), axis=1, keepdims=True)
    return (X / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def knn_predict(
    R: np.ndarray, yr: np.ndarray, Q: np.ndarray, ks: list[int], n_classes: int, block: int = 512
) -> dict[int, np.ndarray]:
    """Predictions of cosine kNN with 1/distance votes for each k, from one search of the ``max(ks)`` nearest rows.

    As scikit-learn's ``KNeighborsClassifier(k, metric="cosine", weights="distance")``: distance 1 - cosine
    similarity; a query at distance 0 from some reference rows is decided by those rows alone; a tie of votes goes
    to the lower class index.
    """
    kmax = max(ks)
    if kmax > len(R):
        raise ValueError(f"k={kmax} is more than the {len(R)} reference rows")
    Ru = _unit(R)
    out = {k: np.empty(len(Q), dtype=np.int64) for k in ks}
    rows = np.arange(block)
    for s in range(0, len(Q), block):
        Qu = _unit(Q[s : s + block])
        dist = np.clip(1.0 - (Qu @ Ru.T).astype(np.float64), 0.0, 2.0)
        m = len(Qu)
        near = (
            np.argpartition(dist, kmax - 1, axis=1)[:, :kmax] if kmax < len(R) else np.tile(np.arange(len(R)), (m, 1))
        )
        d = dist[rows[:m, None], near]
        order = np.argsort(d, axis=1, kind="stable")
        near, d = np.take_along_axis(near, order, 1), np.take_along_axis(d, order, 1)
        labels = yr[near]
        for k in ks:
            dk = d[:, :k]
            with np.errstate(divide="ignore"):
                w = 1.0 / dk
            exact = np.isinf(w).any(axis=1)
            w[exact] = np.isinf(w[exact])
            votes = np.zeros((m, n_classes))
            np.add.at(votes, (rows[:m, None], labels[:, :k]), w)
            out[k][s : s + m] = votes.argmax(axis=1)
    return out
