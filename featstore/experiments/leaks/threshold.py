"""The leak threshold, calibrated per extractor from train's own nearest-neighbour similarities.

A fixed threshold means different things on different extractors: centred cosine between distinct images has a
median of 0.76 at ``block2_pool`` and 0.96 at ``block5_pool`` on the same Fashion-MNIST images, so 0.95 flagged
11 of 2,000 test rows on one and 1,256 on the other. Here the threshold is the ``quantile`` (default 0.99) of the
similarity between each train row and its nearest *other* train row (leave one out, on a seeded sample when train
is large): a query row at or above it is closer to a train image than 99 % of train's images are to their own
nearest neighbour, on every extractor alike. Train rows whose nearest other row is the same feature vector (copies
inside train) are left out; they would push the threshold to 1.
"""

from __future__ import annotations

import numbers

import numpy as np

from featstore.errors import ConfigError
from featstore.experiments.leaks.result import EXACT, Calibration
from featstore.experiments.leaks.search import Centre, nearest, query_blocks, rounded
from featstore.store.reader import FeatureStore

MIN_THRESHOLD = 1e-6  # features with no positive similarity between distinct rows (constant ones): flag nothing by them


def check_settings(threshold: object, quantile: object, sample: object, seed: object) -> None:
    """Refuse a threshold outside (0, 1], a quantile outside (0, 1), a sample below 2, a seed that is not an integer."""

    def real(x: object) -> bool:
        return not isinstance(x, bool) and isinstance(x, numbers.Real)

    def integer(x: object) -> bool:
        return not isinstance(x, bool) and isinstance(x, numbers.Integral)

    if threshold is not None and (not real(threshold) or not 0 < threshold <= 1):
        raise ConfigError(
            f"threshold {threshold!r} is not in (0, 1]; leave it out to calibrate it on train, or give e.g. 0.99 "
            f"(1 = identical features only)"
        )
    if not real(quantile) or not 0 < quantile < 1:
        raise ConfigError(f"quantile {quantile!r} is not in (0, 1); use e.g. 0.99 (higher: fewer rows flagged)")
    if not integer(sample) or sample < 2:
        raise ConfigError(f"calibration sample {sample!r} must be an integer of at least 2 train rows, e.g. 2000")
    if not integer(seed) or seed < 0:
        raise ConfigError(f"seed {seed!r} must be a non-negative integer")


def calibrate(
    fs: FeatureStore,
    name: str,
    reference: str,
    centre: Centre,
    budget: int,
    quantile: float,
    sample: int,
    seed: int,
) -> Calibration:
    """The ``quantile`` of leave-one-out nearest-neighbour similarity within ``reference`` (``sample`` rows, seeded).

    >>> cal = calibrate(FeatureStore("features.h5"), "vgg16", "train", centre, 32 << 20, 0.99, 2000, 0)  # doctest: +SKIP
    >>> cal.threshold, cal.sample                                                                   # doctest: +SKIP
    (0.9929, 2000)
    """
    n_rows = centre.rows
    m = min(int(sample), n_rows)
    pick = None if m >= n_rows else np.sort(np.random.default_rng(seed).choice(n_rows, m, replace=False))
    blocks = query_blocks(fs, name, reference, budget, pick)
    sims = rounded(nearest(fs, name, blocks, reference, centre, budget, leave_out=True)[0])
    copies = sims >= EXACT
    rest = sims[~copies]
    if len(rest) == 0:  # every sampled row has a copy inside train: only identical features can be told apart
        threshold, median = 1.0, 1.0
    else:
        threshold = float(np.clip(np.quantile(rest, quantile), MIN_THRESHOLD, 1.0))
        median = float(np.median(rest))
    return Calibration(
        "train-quantile",
        max(round(threshold, 6), MIN_THRESHOLD),
        float(quantile),
        m,
        int(seed),
        int(n_rows),
        int(copies.sum()),
        round(median, 6),
    )
