"""Interval arithmetic of featstore.stats against known values (scipy's Wilson interval)."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from featstore.stats import mean_sd, mean_tolerance, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (81, 100), (1, 3), (500, 1000), (999, 1000), (7, 2000)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_sd_and_tolerance():
    assert mean_sd([0.7, 0.8, 0.9]) == (pytest.approx(0.8), pytest.approx(0.1))
    assert mean_sd([0.5]) == (0.5, 0.0)
    assert mean_tolerance(0.0, 5) == 0.011
    assert mean_tolerance(0.05, 5) == pytest.approx(4 * 0.05 * math.sqrt(2 / 5))
