"""Intervals of one figure: the Wilson interval of a proportion, a percentile bootstrap for any other statistic,
and the spread of a figure over seeds.

>>> [round(b, 4) for b in wilson_interval(81, 100)]
[0.7222, 0.8749]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


@dataclass(frozen=True)
class Interval:
    """A figure with its confidence interval."""

    estimate: float  # the statistic on the data as given
    low: float  # lower end of the interval
    high: float  # upper end of the interval
    level: float = 0.95  # confidence level
    method: str = ""  # how the interval was made: "wilson", "percentile bootstrap (B=2000, seed 0)"

    def to_dict(self) -> dict:
        """Plain JSON-able fields (for run records and ``--json`` outputs)."""
        return asdict(self)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (default 95 %); (0, 1) when ``n`` is 0.

    >>> lo, hi = wilson_interval(0, 10); round(lo, 3), round(hi, 3)
    (0.0, 0.278)
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 or n successes the interval ends exactly on the bound (rounding would leave it a hair inside)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    return lo, 1.0 if successes == n else min(1.0, centre + half)


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion: its coverage is at least ``level`` for every true
    proportion; (0, 1) when ``n`` is 0.

    >>> lo, hi = clopper_pearson(25, 25); round(lo, 4), hi
    (0.8628, 1.0)
    """
    _check_level(level)
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    from scipy.stats import beta

    tail = (1 - level) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return lo, hi


def proportion_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """A proportion (an accuracy) with its Wilson interval; the estimate is NaN when ``n`` is 0.

    >>> proportion_interval(9, 10).method
    'wilson'
    """
    lo, hi = wilson_interval(successes, n, _z(level))
    return Interval(successes / n if n > 0 else math.nan, lo, hi, level, "wilson")


def bootstrap_interval(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(*arrays)``, resampling rows (the same rows of every array).

    For a figure that is not a proportion (log-loss, ECE, balanced accuracy, macro-F1); a proportion has
    :func:`wilson_interval`. Seeded: the same call gives the same interval.

    >>> y = np.arange(100) % 2
    >>> iv = bootstrap_interval(lambda a: float(a.mean()), y, n_boot=500)
    >>> iv.estimate, iv.low < 0.5 < iv.high
    (0.5, True)
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    if not arrays:
        raise ValueError("bootstrap_interval needs at least one array to resample")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"the arrays to resample have different lengths: {[len(a) for a in arrays]}")
    if n == 0:
        raise ValueError("bootstrap_interval needs at least one row")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    _check_level(level)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        draws[b] = statistic(*(a[idx] for a in arrays))
    lo, hi = percentile_bounds(draws, level)
    return Interval(float(statistic(*arrays)), lo, hi, level, f"percentile bootstrap (B={n_boot}, seed {seed})")


def percentile_bounds(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of bootstrap draws (NaN draws are an error: the statistic failed on a resample)."""
    draws = np.asarray(draws, dtype=float)
    if np.isnan(draws).any():
        raise ValueError("the statistic gave NaN on a bootstrap resample; it is undefined on some resamples")
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_sd needs at least one value")
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def mean_tolerance(sd: float, n: int, floor: float = 0.011, k: float = 4.0) -> float:
    """How far a mean over ``n`` seeds may move when the whole experiment is re-run on another machine.

    Training on CPUs is chaotic: another CPU's kernels (oneDNN, AVX-512 against AVX2) change the float
    rounding and with it the whole trajectory, so a re-run on another machine behaves like ``n`` fresh
    seeds. The difference of two such means has standard deviation ``sd * sqrt(2 / n)``; ``k`` of those
    (4: about 6 in 100,000 per figure) or ``floor`` (one image in a hundred) when the figure does not vary.
    """
    return max(floor, k * sd * math.sqrt(2.0 / max(n, 1)))


def _check_level(level: float) -> None:
    """ValueError unless 0 < level < 1."""
    if not 0 < level < 1:
        raise ValueError(f"a confidence level lies strictly between 0 and 1 (0.95 for 95 %), got {level}")


def _z(level: float) -> float:
    """Two-sided normal quantile of a confidence level (Z95 for 0.95, without importing scipy)."""
    _check_level(level)
    if level == 0.95:
        return Z95
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)
