"""Uncertainty of the figures featstore prints: intervals for accuracies, spreads over seeds.

Pure numpy; nothing here imports scikit-learn or TensorFlow.

>>> [round(b, 4) for b in wilson_interval(81, 100)]
[0.7222, 0.8749]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


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
    return max(0.0, centre - half), min(1.0, centre + half)


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
