"""Two ways of running the same cut compared on one seeded batch: the start-up check of ``--jit`` and ``--runtime``.

Both compare a candidate forward pass with the plain Keras one on the same random images and accept it when, for each
output (each ``--layer``), the largest absolute difference is within a fraction of that output's largest absolute
feature (the scale of random-weight features ranges from 1e-12 to 1e3, so an absolute tolerance would be meaningless).

>>> got, want = [np.ones((2, 3), np.float32)], [np.ones((2, 3), np.float32) * 1.5]
>>> largest_difference(got, want)
(0.5, 1.5)
"""

from __future__ import annotations

import numpy as np


def seeded_images(rows: int, size: int) -> np.ndarray:
    """``rows`` uint8 RGB images of ``size`` pixels, the same on every call (seed 0): the check batch."""
    return np.random.default_rng(0).integers(0, 256, (max(rows, 1), size, size, 3), dtype=np.uint8)


def as_list(out) -> list[np.ndarray]:
    """A forward pass's result (one array, or a list with one per output) as a list."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


def largest_difference(got, want) -> tuple[float, float]:
    """``(max |got - want|, max |want|)`` over every output (float64): :func:`differences`' largest of each."""
    each = differences(got, want)
    return max((d for d, _ in each), default=0.0), max((w for _, w in each), default=0.0)


def differences(got, want) -> list[tuple[float, float]]:
    """``(max |got - want|, max |want|)`` of each output (float64); ``got``'s rows beyond ``want``'s are ignored.

    Another number of outputs (one more entry), fewer rows or another row shape, or a NaN where ``want`` has a number,
    is an infinite difference: ``max(0.0, nan)`` is 0.0, so an all-NaN candidate (a planted ONNX cut) passed every
    check."""
    got, want = as_list(got), as_list(want)
    each = []
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        w64 = np.asarray(w, np.float64)
        scale = float(np.max(np.abs(w64[~np.isnan(w64)]), initial=0.0))
        if g.shape[1:] != w.shape[1:] or len(g) < len(w):
            each.append((float("inf"), scale))
            continue
        g, w = g[: len(w)].astype(np.float64), w64
        with np.errstate(invalid="ignore"):  # inf - inf
            diff = np.where(np.isnan(g) & np.isnan(w), 0.0, np.abs(g - w))  # NaN in both: the same (Keras's own NaN)
        d = float(np.max(diff, initial=0.0))
        each.append((float("inf") if np.isnan(d) else d, scale))
    if len(got) != len(want):
        each.append((float("inf"), 0.0))
    return each


def worst_output(got, want, tolerance: float, floor: float) -> tuple[int, float, float, float]:
    """``(index, difference, scale, limit)`` of the output furthest over (or nearest to) its own limit, ``tolerance``
    of its own largest feature (at least ``floor``). Each ``--layer``'s output is held to its own scale: one limit
    for all, of the largest feature over every output, let a layer of features about 1 differ by 100 % beside one of
    about 1e4 (attack 58, suspected)."""
    each = differences(got, want)
    ranked = [(d / (tolerance * max(w, floor)), i, d, w) for i, (d, w) in enumerate(each)]
    _, i, d, w = max(ranked, key=lambda r: r[0], default=(0.0, 0, 0.0, 0.0))
    return i, d, w, tolerance * max(w, floor)
