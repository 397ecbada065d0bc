"""Counts of a block's rows that nothing can be fitted on (``featstore check``): NaN/inf, squared norms that overflow."""

from __future__ import annotations

import numpy as np

_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}
_EXPONENT[np.dtype(np.float64)] = (np.uint64, 0x7FF0000000000000)


def nonfinite_count(block: np.ndarray) -> int:
    """Rows of ``block`` holding NaN or inf. A float's exponent bits are all set exactly for NaN and inf, so one masked
    maximum over the bits tells whether any is there (float16's own isfinite is several times slower); rows are counted
    only then."""
    kind = _EXPONENT.get(block.dtype)
    if kind is not None and block.flags.c_contiguous:
        uint, mask = kind
        if np.bitwise_and(block.view(uint), uint(mask)).max(initial=0) != mask:
            return 0
    return int(np.count_nonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1)))


_NORM_LIMIT = float(np.finfo(np.float32).max)


def overflow_count(block: np.ndarray) -> int:
    """Rows of ``block`` whose values are all finite but whose squared norm overflows float32, as leaks and similar
    compute it (3e38 in one column). None can when the largest magnitude squared times the row's length stays under
    float32's maximum (every float16 row): two reductions, no copy of the block; rows are summed only otherwise."""
    R = block.reshape(len(block), -1)
    if not R.size or R.dtype == np.float16:
        return 0
    top = max(float(np.fmax.reduce(R, axis=None)), -float(np.fmin.reduce(R, axis=None)))  # NaN ignored unless all
    if top * top * R.shape[1] < _NORM_LIMIT:
        return 0
    with np.errstate(over="ignore", invalid="ignore"):
        R32 = R.astype(np.float32, copy=False)
        sq = np.einsum("ij,ij->i", R32, R32)
        finite = np.isfinite(R32).all(axis=1)
    return int(np.count_nonzero(finite & ~np.isfinite(sq)))
