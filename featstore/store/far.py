"""The far-row rule: each column's usual size, taken from the training split, and the rows with a feature far over it.

A row of train, of its augmented copies, of validation or of test is *far* when one of its features is over
:data:`FAR_FACTOR` times its column's usual size in the training split and over :data:`FAR_FLOOR`. A column's usual
size is the median of its magnitudes in train from 2^-10 up (zeros, a ReLU's, and tinier values are left out: a usual
size under 1e-3 gives the bound FAR_FLOOR anyway), raised to :data:`LAYER_SHARE` of the split's usual size over all
columns (the median of all its magnitudes from 2^-10 up) where it is smaller: a column that is zero or tiny in train
(a unit that rarely fires) is not held to 1e6 x almost nothing, and a few large channels do not raise the bar of the
others. Judged per column, a channel large in every row (a ViT's "massive activations") no longer raises the bar of
the others (attack 72 #2); judged against train, copies or an evaluation split all ~1e12 x train are far (attack 72
#1), where each split's own median of its rows' largest features called none of them far.

The medians come from per-column histograms of the magnitudes' binary exponents (bins of 3 octaves: integer steps on
the float32 bits, then one bincount), about ``(NBINS + 1) x columns`` int64 (4 MB at 25,088 columns) whatever the
rows; each usual size is the upper edge of its median's bin (at most 8 x the exact median: the rule never refuses
what the exact median would not). No row can be far while every feature is at most FAR_FLOOR, so the histograms are
made (one more pass over train, cached per command) only when a split checked has a larger feature.
"""

from __future__ import annotations

import numpy as np

# a row this many times a column's usual size in train, and over FAR_FLOOR, is an overflow: one train row of 1e14 among
# rows near 1 set the scaler's spread as 1e20 did (attack 66 #4: fitted at chance, exit 0), and so did a whole class of
# them (attack 69 #2), copies or a test split all 1e12 x train (attack 72 #1), or a row 5e8 x the others in every
# column but one large channel (attack 72 #2). Backbones' rows differ by tens at most; the floor keeps tiny features apart
FAR_FACTOR, FAR_FLOOR = 1e6, 1e3
LAYER_SHARE = 1e-3  # a column's usual size is at least this share of the layer's (all columns' median)
_LO, _WIDTH, NBINS = -13, 3, 22  # bins of 3 octaves counted from 2^-10 up to 2^53 (LARGE_FEATURE refuses more)
_EDGES = 2.0 ** (_LO + _WIDTH * np.arange(1, NBINS + 1))  # each bin's upper edge
_CHUNK = 1 << 20  # features binned at once: about 16 MB of temporaries


class ColumnSizes:
    """Per-column histograms of a split's magnitudes, fed block by block (``add``); ``bounds()`` gives the far rule's
    bound of each column.

    >>> cs = ColumnSizes(); cs.add(np.array([[1.0, 1e3, 0.0]] * 9 + [[1e12, 1e3, 0.0]], np.float32))
    >>> [f"{b:.3g}" for b in cs.bounds()[0]]
    ['4e+06', '2.05e+09', '2.05e+06']
    """

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # (NBINS + 1) x columns: bin-major, so a row's columns are adjacent

    def add(self, X: np.ndarray) -> None:
        rows = np.asarray(X).reshape(len(X), -1)
        if not rows.size:
            return
        d = rows.shape[1]
        if self.counts is None:
            self.counts = np.zeros((NBINS + 1) * d, np.int64)
        cols, step = np.arange(d, dtype=np.int64), max(1, _CHUNK // d)
        for i in range(0, len(rows), step):
            part = np.ascontiguousarray(rows[i : i + step], np.float32)  # float16/float64 binned as float32
            b = part.view(np.int32) >> 23  # the biased exponent (and the sign): integer steps only, no lookup
            b &= 0xFF
            b -= 127 + _LO
            np.clip(b, 0, _WIDTH * NBINS, out=b)  # zeros, subnormals, under 2^-10: bin 0; inf, NaN, 2^53 up: NBINS
            b *= 21846  # // 3 for 0..255: 21846 / 65536
            b >>= 16
            idx = b.astype(np.int64)
            idx *= d
            idx += cols
            self.counts += np.bincount(idx.ravel(), minlength=len(self.counts))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(bound, usual size) of each column; a column with no magnitude from 2^-10 (about 1e-3) up in the split: usual
        size :data:`LAYER_SHARE` x the split's, and every bound FAR_FLOOR when the split has none at all."""
        if self.counts is None:
            return np.full(0, np.inf), np.zeros(0)
        h = self.counts.reshape(NBINS + 1, -1)[:NBINS].copy()
        h[0] = 0  # zeros and magnitudes under 2^-10 are left out (a column of them: usual size 0, bound FAR_FLOOR)
        pooled = h.sum(axis=1)
        whole = _EDGES[_median_bin(pooled[:, None])[0]] if pooled.sum() else 0.0
        column = np.where(h.sum(axis=0) > 0, _EDGES[_median_bin(h)], 0.0)
        usual = np.maximum(column, LAYER_SHARE * whole)
        return np.maximum(FAR_FACTOR * usual, FAR_FLOOR), usual


def _median_bin(h: np.ndarray) -> np.ndarray:
    """Each column's bin holding its upper median (the element at n // 2 of the sorted non-zero magnitudes)."""
    return np.argmax(np.cumsum(h, axis=0) > h.sum(axis=0) // 2, axis=0)


def column_peaks(X: np.ndarray) -> np.ndarray:
    """Each column's largest magnitude in ``X`` (NaN where a column holds one): two reductions, no copy of ``X``."""
    rows = np.asarray(X).reshape(len(X), -1)
    with np.errstate(invalid="ignore"):
        return np.maximum(rows.max(axis=0, initial=0), -rows.min(axis=0, initial=0)).astype(np.float64)


def far_mask(X: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The rows of ``X`` with a feature over its column's bound (one block: a copy of its magnitudes)."""
    rows = np.asarray(X).reshape(len(X), -1)
    if not rows.size:
        return np.zeros(len(X), bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(rows) > bounds).any(axis=1)
