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

from featstore.errors import StoreError

COARSE = tuple(10.0**k for k in range(-6, 6))  # 1e-6 ... 1e5: one C per decade
FINE = (-0.75, -0.5, -0.25, 0.25, 0.5, 0.75)  # steps, in decades, around the best coarse C
_BLOCK_COLUMNS = 4096  # values per block of a Gram product (float32 products summed in float64)
_BLOCK_BYTES = 64 << 20  # float64 temporaries of a block of rows (norms, standardisation)


def _rows(X: np.ndarray) -> int:
    """Rows per block so that a float64 copy of the block stays within _BLOCK_BYTES."""
    return max(1, _BLOCK_BYTES // (8 * max(1, int(np.prod(X.shape[1:])))))


def fine_grid(best: float, coarse: tuple[float, ...] = COARSE, steps: tuple[float, ...] = FINE) -> list[float]:
    """The fine Cs around ``best``: ``best * 10**step``, kept inside the coarse grid's range."""
    lo, hi = min(coarse), max(coarse)
    return [c for c in (best * 10.0**s for s in steps) if lo * (1 - 1e-9) <= c <= hi * (1 + 1e-9)]


def _products(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B.T`` as float64: float32 products over blocks of columns, summed in float64 (single precision where the
    vectors are, without a float64 copy of them, and without one long float32 sum)."""
    out = np.zeros((len(A), len(B)))
    for s in range(0, A.shape[1], _BLOCK_COLUMNS):
        out += np.asarray(A[:, s : s + _BLOCK_COLUMNS] @ B[:, s : s + _BLOCK_COLUMNS].T, dtype=np.float64)
    return out


class RowSpace:
    """Coordinates in the span of the training rows (when ``d > n``; otherwise the vectors as they are).

    A pivoted Cholesky factorisation of the Gram matrix, ``P^T X X^T P = L L^T`` (rank r, stopping where the
    remaining variance is below 1e-7 of the largest row's squared norm, float32's resolution), gives train the
    coordinates ``P L`` and another row ``o`` the coordinates ``L_r^-1 X_r o`` (``X_r``: the first r pivot rows).
    Inner products, hence a linear model's scores and its L2 penalty, are those of the original vectors.

    >>> X = np.random.default_rng(0).normal(size=(5, 40)); rs = RowSpace(X)
    >>> Z = rs.coords(X); rs.active, Z.shape, bool(np.allclose(Z @ Z.T, X @ X.T))
    (True, (5, 5), True)
    """

    def __init__(self, X: np.ndarray):
        self.active = X.shape[1] > X.shape[0]
        if not self.active:
            return
        from scipy.linalg import lapack

        G = _products(X, X)
        tol = float(np.max(np.diag(G))) * 1e-7
        c, piv, rank, info = lapack.dpstrf(G, lower=1, tol=tol)
        if info < 0:
            raise ValueError(f"pivoted Cholesky failed (LAPACK dpstrf info {info})")
        self.rank = int(rank)
        self._pivots = piv[: self.rank] - 1  # LAPACK counts from 1
        self._L = np.tril(c)[:, : self.rank]  # rows in pivot order
        self._order = piv - 1
        self._X = X

    def coords(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (train itself included) in the basis; unchanged when inactive."""
        if not self.active:
            return rows
        if rows is self._X:
            Z = np.empty_like(self._L)
            Z[self._order] = self._L
            return Z
        from scipy.linalg import solve_triangular

        K = _products(rows, self._X)[:, self._pivots]  # all rows: no copy of the pivot rows of a large X
        return solve_triangular(self._L[: self.rank], K.T, lower=True).T


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
    """Rows scaled to unit L2 norm, as a new float32 array (zero rows stay zero, as scikit-learn's ``normalize``)."""
    out, block = np.empty(X.shape, dtype=np.float32), _rows(X)
    for s in range(0, len(X), block):
        part = X[s : s + block].astype(np.float64)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[s : s + block] = part / np.where(norms == 0, 1.0, norms)
    return out


class Standardiser:
    """Per-value mean 0 and sd 1, as scikit-learn's ``StandardScaler`` (population sd; a constant value keeps scale
    1), with the statistics summed in float64 over blocks of rows and ``transform`` working in place: a float32
    split of several GB is never copied (``StandardScaler.fit`` makes float64 temporaries of the whole split).

    >>> X = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    >>> Standardiser().fit(X).transform(X).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """

    def fit(self, X: np.ndarray, block: int | None = None) -> Standardiser:
        block = block or _rows(X)
        total = np.zeros(X.shape[1])
        for s in range(0, len(X), block):
            total += X[s : s + block].sum(axis=0, dtype=np.float64)
        self.mean_ = total / len(X)
        squares = np.zeros(X.shape[1])
        for s in range(0, len(X), block):
            squares += ((X[s : s + block] - self.mean_) ** 2).sum(axis=0)
        var = squares / len(X)
        constant = var <= 10 * np.finfo(np.float64).eps * np.maximum(self.mean_**2, np.finfo(np.float64).tiny)
        self.scale_ = np.where(constant | (var == 0), 1.0, np.sqrt(var))
        self.constant_ = not var.any()  # every row equal: standardised, every value is 0 (a row space of rank 0)
        return self

    def transform(self, X: np.ndarray, block: int | None = None) -> np.ndarray:
        """``X`` standardised in place (and returned)."""
        block = block or _rows(X)
        for s in range(0, len(X), block):
            part = X[s : s + block]
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, in one line
                part -= self.mean_.astype(X.dtype)
                part /= self.scale_.astype(X.dtype)
            if not np.isfinite(part).all():  # finite values that overflow float32 here (56 #1: a library's traceback)
                row = s + int(np.flatnonzero(~np.isfinite(part).all(axis=tuple(range(1, part.ndim))))[0])
                raise StoreError(
                    f"row {row:,} of these features overflows float32 once standardised (values near 3.4e38 are "
                    f"stored): no linear probe can be fitted or scored on it; check the extractor's weights and "
                    f"re-extract the split"
                )
        return X


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
