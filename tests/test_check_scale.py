"""`check` at scale: NaN/inf found from the exponent bits, as np.isfinite would find them, in every float width."""

import numpy as np
import pytest

from featstore.store.check import _nonfinite_rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nonfinite_rows_match_isfinite(dtype):
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((300, 2, 8)) * 1e3).astype(dtype)
    info = np.finfo(dtype)
    block[0, 0, 0] = info.max  # finite extremes are not flagged
    block[1, 1, 1] = -info.max
    block[2, 0, 3] = info.smallest_subnormal
    assert _nonfinite_rows(block) == 0
    block[5, 0, 0], block[6, 1, 7], block[7, 0, 1], block[7, 1, 1] = np.nan, np.inf, -np.inf, np.nan
    assert _nonfinite_rows(block) == 3 == np.count_nonzero(~np.isfinite(block).reshape(300, -1).all(axis=1))
    assert _nonfinite_rows(np.asfortranarray(block)) == 3  # not C-contiguous: np.isfinite itself


def test_nonfinite_rows_of_other_types():
    assert _nonfinite_rows(np.zeros((4, 3), np.int8)) == 0
    assert _nonfinite_rows(np.zeros((0, 3), np.float16)) == 0
