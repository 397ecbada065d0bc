"""The far-row rule: the training split's usual feature size, the rows with a feature far over it, and the splits
whose own usual size is far from it.

A split's *usual size* is the median over its rows of each row's typical magnitude (the geometric mean of its
magnitudes from 2^-10 up: zeros, a ReLU's, and tinier values are left out; a row with none does not count). A row of
train, of its augmented copies, of validation or of test is *far* when one of its features is over
:data:`FAR_FACTOR` times train's usual size and over :data:`FAR_FLOOR`; a split whose own usual size is over
FAR_FACTOR times train's, or under train's / FAR_FACTOR (the larger over FAR_FLOOR), is refused as a whole, naming
both sizes: one of the two splits is an overflow, train itself included (attack 75 #2).

Each row weighs one in the median, whatever its zeros: far rows must be over half of the split's rows (with a
non-zero feature) to move it, also in a sparse ReLU map where they outnumbered a column's non-zero values (attack 75
#1). A row's typical size is a geometric mean over all its columns, so a channel large in every row (a ViT's "massive
activations") is one column among many and does not lift it (attack 72 #2), while a row 5e8 x the others in every
other column is far; a split all ~1e12 x train is far (attack 72 #1).

Cost: each row's mean binary exponent (integer steps on the float32 bits, in chunks of :data:`_CHUNK` features
whatever the width: about 8 MB of temporaries), then a histogram of 1-octave bins over rows (a few KB). The usual
size is its median bin's upper edge: at most 4 x the row's geometric mean, never under it, so the rule never refuses
what the exact median would not.
"""

from __future__ import annotations

import numpy as np

# a row this many times train's usual size, and over FAR_FLOOR, is an overflow: one train row of 1e14 among rows near 1
# set the scaler's spread as 1e20 did (attack 66 #4: fitted at chance, exit 0), and so did a whole class of them (attack
# 69 #2), copies or a test split all 1e12 x train (attack 72 #1), a row 5e8 x the others in every column but one large
# channel (attack 72 #2), 13 % of a sparse map's rows (75 #1), or train itself (75 #2). Backbones' rows differ by tens
# at most; the floor keeps tiny features apart
FAR_FACTOR, FAR_FLOOR = 1e6, 1e3
_LO, NBINS = -10, 150  # 1-octave bins of a row's mean exponent from 2^-10 up (float32 ends at 2^128; inf: the last)
_CHUNK = 1 << 20  # features binned at once


def row_exponents(X: np.ndarray) -> np.ndarray:
    """Each row's mean binary exponent over its magnitudes from 2^-10 up (NaN for a row with none), read from the
    float32 bits (float16/float64 rows are binned as float32), in chunks of rows of :data:`_CHUNK` features at most.

    >>> row_exponents(np.array([[1.0, 0.0, 4.0], [0.0, 0.0, 0.0], [-1e3, 1e3, 1e3]], np.float32)).tolist()
    [1.0, nan, 9.0]
    """
    rows = np.asarray(X).reshape(len(X), -1)
    total, count = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
    if rows.size:
        d = rows.shape[1]
        rstep, cstep = max(1, _CHUNK // d), min(d, _CHUNK)  # a wide row is binned a column slice at a time
        for i in range(0, len(rows), rstep):
            for j in range(0, d, cstep):
                e = np.ascontiguousarray(rows[i : i + rstep, j : j + cstep], np.float32).view(np.uint32) >> 23
                e &= 0xFF  # the biased exponent (the sign masked off)
                keep = e >= 127 + _LO
                e *= keep
                count[i : i + rstep] += np.count_nonzero(keep, axis=1)
                total[i : i + rstep] += e.sum(axis=1, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1) - 127, np.nan)


class LayerSizes:
    """A split's usual size, fed block by block (``add``): a histogram over rows of each row's mean exponent, and the
    largest finite magnitude (``top``).

    >>> s = LayerSizes(); s.add(np.array([[1.0, 0.0, 3.0]] * 9 + [[1e12, 1e12, 0.0]], np.float32))
    >>> s.usual(), s.bound(), s.top
    (2.0, 2000000.0, 999999995904.0)
    """

    def __init__(self) -> None:
        self.counts = np.zeros(NBINS, np.int64)
        self.top = 0.0

    def add(self, X: np.ndarray) -> None:
        e = row_exponents(X)
        e = e[~np.isnan(e)]
        if len(e):
            b = np.clip(np.floor(e) - _LO, 0, NBINS - 1).astype(np.int64)
            self.counts += np.bincount(b, minlength=NBINS)
        rows = np.asarray(X).reshape(len(X), -1)
        if rows.size:  # NaN left out (fmax); inf rows are refused before any far rule
            top = max(float(np.fmax.reduce(rows, axis=None)), -float(np.fmin.reduce(rows, axis=None)))
            self.top = max(self.top, top) if np.isfinite(top) else self.top

    def usual(self) -> float:
        """The median row's typical size (the upper edge of its bin; the lower median: far rows must be over half of
        the rows to move it); 0.0 for a split with no magnitude from 2^-10 up."""
        n = int(self.counts.sum())
        if not n:
            return 0.0
        return float(2.0 ** (_LO + 1 + int(np.argmax(np.cumsum(self.counts) > (n - 1) // 2))))

    def bound(self) -> float:
        """The far rule's bound: a feature over it is far."""
        return max(FAR_FACTOR * self.usual(), FAR_FLOOR)


def apart(own: float, ref: float) -> bool:
    """Whether two splits' usual sizes are over FAR_FACTOR apart either way, the larger over FAR_FLOOR (a split with no
    usual size, all zeros, is judged by its rows only)."""
    small, big = sorted((own, ref))
    return small > 0 and big > FAR_FLOOR and big > FAR_FACTOR * small


def column_peaks(X: np.ndarray) -> np.ndarray:
    """Each column's largest magnitude in ``X`` (NaN where a column holds one): two reductions, no copy of ``X``."""
    rows = np.asarray(X).reshape(len(X), -1)
    with np.errstate(invalid="ignore"):
        return np.maximum(rows.max(axis=0, initial=0), -rows.min(axis=0, initial=0)).astype(np.float64)


def far_mask(X: np.ndarray, bound: float) -> np.ndarray:
    """The rows of ``X`` with a feature over ``bound`` (in chunks of rows: no copy of the whole block)."""
    rows = np.asarray(X).reshape(len(X), -1)
    out = np.zeros(len(rows), bool)
    if not rows.size:
        return out
    step = max(1, _CHUNK // rows.shape[1])
    with np.errstate(invalid="ignore"):
        for i in range(0, len(rows), step):
            part = rows[i : i + step]
            hi, lo = (
                part.max(axis=1).astype(np.float64),
                part.min(axis=1).astype(np.float64),
            )  # float16: no cast of bound
            out[i : i + step] = (hi > bound) | (-lo > bound)
    return out
