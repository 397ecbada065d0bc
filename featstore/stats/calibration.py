"""Temperature scaling: one scalar that makes a classifier's probabilities mean what they say.

Probabilities become ``softmax(z / T)`` of the model's logits ``z`` (for a model that gives probabilities,
``z = log(max(p, floor))``, i.e. ``p ** (1/T)`` renormalised; the floor only lifts exact zeros, see
:func:`fit_temperature`). ``T`` is the one value that minimises the
negative log-likelihood of held-out labels (Guo et al. 2017). Dividing every logit of a row by the same
positive number keeps their order, so **temperature scaling never changes which class is predicted**;
``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one.

Why only a temperature: Platt scaling per class and vector/matrix scaling fit 2K or K² parameters and can move
the argmax; isotonic regression is a step function that overfits the 100-row validation splits featstore
often has and ties probabilities. One scalar fits on a few dozen rows and cannot change a prediction.

The record is small and JSON-able, and it is all :func:`apply_calibration` needs::

    cal = fit_temperature(val_proba, val_y)          # {"method": "temperature", "T": 1.7, "input": "probabilities", ...}
    test_proba = apply_calibration(cal, test_proba)

>>> z = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]]); y = np.array([0, 1, 1, 0])
>>> cal = fit_temperature(z, y, input="logits")
>>> cal["T"] == cal["bounds"][1]   # half the rows wrong: as flat as the bounds allow
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from featstore.errors import ConfigError, choices_error

METHODS = ("temperature", "none")  # what a calibration record's "method" may be
INPUTS = ("logits", "probabilities")  # what the model gives
FLOOR = 1e-4  # the highest floor for exact zeros (k-NN and forests give them): below every vote share of 1/10,000
BOUNDS = (1e-2, 1e2)  # the temperatures searched
_NLL_CELLS = 1_000_000  # (rows x classes) cells of the log-likelihood's work arrays at a time (8 MB each)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits (``-inf`` gives 0)."""
    return _softmax_in_place(np.array(z, dtype=np.float64))  # one copy (three (N, K) temporaries before)


def _softmax_in_place(z: np.ndarray) -> np.ndarray:
    """:func:`softmax` of a float64 array, overwriting it."""
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def as_logits(values, input: str, floor: float = FLOOR) -> np.ndarray:
    """``(N, K)`` logits of probabilities (their floored logarithm) or of logits; a 1-D binary decision value
    ``d`` (positive: the second class) becomes ``[-d/2, d/2]``."""
    if input not in INPUTS:
        raise choices_error("calibration input", input, INPUTS)
    v = np.asarray(values, dtype=np.float64)
    if input == "logits" and v.ndim == 1:
        v = np.stack([-v / 2, v / 2], axis=1)
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(f"{input} of shape (N, K) with K >= 2 expected, got {v.shape}")
    if input == "probabilities":
        if not np.isfinite(v).all() or (v < 0).any():
            raise ValueError("probabilities must be finite and non-negative")
        if not 0 < floor < 1:
            raise ValueError(f"the probability floor lies in (0, 1), got {floor}")
        z = np.maximum(v, floor)
        return np.log(z, out=z)
    if not np.isfinite(v).all():
        raise ValueError("logits must be finite")
    return v


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean negative log-likelihood of ``y`` under ``softmax(z / t)`` (exact, via log-sum-exp)."""
    per_row = np.empty(len(y))
    _nll_rows(z, y, t, per_row)
    return float(np.mean(per_row))


def _nll_rows(z: np.ndarray, y: np.ndarray, t: float, out: np.ndarray) -> None:
    """Each row's negative log-likelihood under ``softmax(z / t)`` into ``out``: row by row the same numbers however
    the rows are cut into blocks (every operation is along a row), so a streamed fit's mean is the in-memory one."""
    step = max(1, _NLL_CELLS // max(z.shape[1], 1))  # rows at a time: a few (rows, K) temporaries, not (N, K) ones
    for a in range(0, len(y), step):
        s = z[a : a + step] / t
        m = s.max(axis=1)
        lse = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
        out[a : a + step] = lse - s[np.arange(len(s)), y[a : a + step]]


def fit_temperature(
    values,
    y,
    input: str = "probabilities",
    floor: float | None = None,
    bounds: tuple[float, float] = BOUNDS,
) -> dict:
    """The temperature that minimises held-out NLL, as a calibration record.

    ``values``: the held-out rows' probabilities ``(N, K)`` or logits (``(N, K)``, or ``(N,)`` binary decision
    values); ``y``: their labels ``0..K-1``. The NLL is convex in 1/T, so the bounded search finds the global
    minimum; a minimum on a bound (e.g. every held-out row right: sharper is always better) is recorded as
    ``"at_bound": true``.

    Probabilities may hold exact zeros (k-NN, forests), whose logarithm is -inf: they count as ``floor``, by
    default the smaller of ``FLOOR`` and the smallest positive probability given, so that the floor lifts the
    zeros only and never flattens a confident model's small but positive probabilities. The floor is recorded
    and :func:`apply_calibration` uses the same one.

    >>> rec = fit_temperature([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 1, 1])
    >>> sorted(rec)
    ['T', 'at_bound', 'bounds', 'floor', 'input', 'method', 'n', 'nll_after', 'nll_before']
    """
    if input == "probabilities" and floor is None:
        v = np.asarray(values, dtype=np.float64)
        floor = _floor_of([v])
    z = as_logits(values, input, FLOOR if floor is None else floor)
    y = _checked_labels(y, len(z), z.shape[1])
    return _fit(lambda t: _nll(z, y, t), len(y), input, floor, bounds)


def fit_temperature_blocks(
    blocks: Callable[[], Iterable[np.ndarray]],
    y,
    n_classes: int,
    floor: float | None = None,
    bounds: tuple[float, float] = BOUNDS,
    max_bytes: int = 0,
) -> dict:
    """:func:`fit_temperature` of probabilities given block by block: ``blocks()`` yields the held-out rows'
    ``(rows, n_classes)`` probabilities in order, and is called again for every step of the search, so no
    ``(N, K)`` array is made (a validation split of 10⁵ rows and 1,000 classes is 0.8 GB of them). When the logits
    fit in ``max_bytes`` they are kept after the first pass instead. The record is the one :func:`fit_temperature`
    gives on the whole array, exactly: every figure is computed row by row and averaged over all rows at once.

    >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> fit_temperature_blocks(lambda: (p[:2], p[2:]), [0, 1, 1], 2) == fit_temperature(p, [0, 1, 1])
    True
    """
    y = _checked_labels(y, len(np.asarray(y)), n_classes)
    if floor is None:
        floor = _floor_of(blocks())
    if len(y) * n_classes * 8 <= max_bytes:  # small enough: the logits once, as fit_temperature keeps them
        z = np.concatenate([_block_logits(b, n_classes, floor) for b in blocks()])
        if len(z) != len(y):
            raise ValueError(f"the probability blocks gave {len(z)} rows for {len(y)} labels")
        return _fit(lambda t: _nll(z, y, t), len(y), "probabilities", floor, bounds)

    def nll(t: float) -> float:
        per_row, at = np.empty(len(y)), 0
        for block in blocks():
            z = _block_logits(block, n_classes, floor)
            if at + len(z) > len(y):
                raise ValueError(f"the probability blocks gave more rows than the {len(y)} labels")
            _nll_rows(z, y[at : at + len(z)], t, per_row[at : at + len(z)])
            at += len(z)
        if at != len(y):
            raise ValueError(f"the probability blocks gave {at} rows for {len(y)} labels")
        return float(np.mean(per_row))

    return _fit(nll, len(y), "probabilities", floor, bounds)


def _block_logits(block, n_classes: int, floor: float) -> np.ndarray:
    """The floored log-probabilities of one block of ``n_classes`` columns."""
    z = as_logits(block, "probabilities", floor)
    if z.shape[1] != n_classes:
        raise ValueError(f"probability blocks of {n_classes} columns expected, got {z.shape}")
    return z


def _floor_of(blocks: Iterable[np.ndarray]) -> float:
    """The floor for exact zeros: the smaller of FLOOR and the smallest positive probability of any block."""
    least = math.inf
    for block in blocks:
        v = np.asarray(block, dtype=np.float64)
        positive = v[v > 0]
        if positive.size:
            least = min(least, float(positive.min()))
    return min(FLOOR, least)


def _checked_labels(y, n: int, k: int) -> np.ndarray:
    """``y`` as ``n`` class indices in 0..k-1, at least one (ValueError otherwise)."""
    y = np.asarray(y)
    if y.shape != (n,) or (len(y) and (y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= k)):
        raise ValueError(f"labels must be {n} class indices in 0..{k - 1}, got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("fitting a temperature needs at least one held-out row")
    return y


def _fit(nll: Callable[[float], float], n: int, input: str, floor, bounds) -> dict:
    """The calibration record of the temperature minimising ``nll`` within ``bounds``."""
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ValueError(f"temperature bounds must satisfy 0 < low < 1 < high, got {bounds}")
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda log_t: nll(math.exp(log_t)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    t = math.exp(float(res.x))
    # the bounded search never evaluates the bounds themselves: compare with them, so a monotone NLL ends on one
    t = min((lo, t, hi), key=nll)
    return {
        "method": "temperature",
        "T": t,
        "input": input,
        "floor": floor if input == "probabilities" else None,
        "n": n,
        "nll_before": nll(1.0),
        "nll_after": nll(t),
        "bounds": [lo, hi],
        "at_bound": t in (lo, hi),
    }


def identity_calibration(input: str = "probabilities") -> dict:
    """The record of no calibration (probabilities are used as the model gives them)."""
    if input not in INPUTS:
        raise choices_error("calibration input", input, INPUTS)
    return {"method": "none", "input": input}


def apply_calibration(record: dict, values) -> np.ndarray:
    """Calibrated probabilities ``(N, K)`` of a model's outputs (of the kind ``record["input"]`` names).

    The most probable class of every row is the model's own (a temperature divides a row's logits by one
    positive number). Unknown methods and malformed records are a ConfigError naming the valid choices.

    >>> apply_calibration({"method": "temperature", "T": 2.0, "input": "logits"}, np.array([[0.0, 2.0]])).round(4)
    array([[0.2689, 0.7311]])
    """
    if not isinstance(record, dict):
        raise ConfigError(f"a calibration record is a dict with a 'method', got {type(record).__name__}")
    method = record.get("method")
    if method not in METHODS:
        raise choices_error("calibration method", method, METHODS)
    input = record.get("input", "probabilities")
    if method == "none":
        z = as_logits(values, input, FLOOR) if input == "logits" else None
        return softmax(z) if z is not None else _rows(values)
    t = record.get("T")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ConfigError(f"a temperature calibration needs a finite positive 'T', got {t!r}")
    floor = record.get("floor") or FLOOR
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow gives NaN rows, which callers check and refuse
        z = as_logits(values, input, floor)
        fresh = not np.may_share_memory(z, values)  # the caller's logits stay as they were
        return _softmax_in_place(np.divide(z, t, out=z) if fresh else z / t)


def _rows(values) -> np.ndarray:
    """Probabilities ``(N, K)`` as float64, checked."""
    p = np.asarray(values, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"probabilities (N, K), finite and non-negative, expected; got shape {p.shape}")
    return p
