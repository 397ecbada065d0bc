"""Intervals of a figure whose bootstrap is degenerate: every resample gives the same value (every row right or
wrong, every top-5 a hit), so its percentile interval has no width and would read as certainty. Such a figure gets
conservative exact bounds instead where it has them (Clopper-Pearson bounds of the proportions it is made of, at a
Bonferroni level so that all of them hold at once), else its whole range; ``featstore.stats.figures`` uses them.

>>> degenerate_interval(1.0, 2000, 0.95, exact=exact_balanced([25, 25], [25, 25]))["low"] > 0.8
True
"""

from __future__ import annotations

import numpy as np

from featstore.stats.intervals import Interval, clopper_pearson

NO_WIDTH = 1e-12  # a percentile interval narrower than this is a degenerate bootstrap's


def degenerate_interval(estimate: float, n_boot: int, level: float, whole=(0.0, 1.0), exact=None) -> dict:
    """The interval of a figure whose bootstrap is degenerate (its percentile interval has no width: every resample
    of all-right rows is all right): ``exact`` (``(low, high, how)`` of the figure's conservative exact bounds) when
    given, else the figure's ``whole`` range; the method says which and why.

    >>> iv = degenerate_interval(1.0, 2000, 0.95)
    >>> (iv["low"], iv["high"]), iv["method"].startswith("none: the bootstrap is degenerate")
    ((0.0, 1.0), True)
    """
    why = (
        f"the bootstrap is degenerate (its {n_boot} resamples leave a {level * 100:g} % range of no width, which "
        f"would read as certainty)"
    )
    if exact is not None:
        lo, hi, how = exact
        return Interval(float(estimate), float(lo), float(hi), level, f"exact: {how}; {why}").to_dict()
    method = f"none: {why}; the figure's whole range"
    return Interval(float(estimate), float(whole[0]), float(whole[1]), level, method).to_dict()


def unseen_rows_interval(
    iv: dict, lo: float, hi: float, n: int, right: bool, worst: float, cancels: bool = False
) -> dict:
    """The interval of a mean figure (log-loss, ECE) on a split where every row is right (``right``) or every row is
    wrong: a bootstrap cannot see the kind of row it never drew, however its resamples vary (the rows' tiny losses
    gave "log-loss 0.001 [0.001, 0.001]" on 36 right rows). The unseen kind's share is at most ``u``, the
    Clopper-Pearson upper bound of 0 of ``n`` at ``iv``'s level (1 - ((1 - level) / 2) ** (1 / n), the "rule of
    three"); such a row costs at least 0 and at most ``worst`` (the log-loss's clip, a whole ECE bin), so the figure
    lies within [(1 - u) lo, (1 - u) hi + u worst] of the seen rows' percentile bounds ``lo``, ``hi`` (``cancels``:
    an unseen row can also lower the figure by up to ``worst``, as a wrong row's gap can cancel a right row's in
    the ECE's bin sums, so the lower end is (1 - u) lo - u worst).

    >>> iv = unseen_rows_interval({"estimate": 0.001, "level": 0.95}, 0.001, 0.0014, 36, True, 36.04)
    >>> round(iv["high"], 2), iv["method"].startswith("bounded: ")
    (3.51, True)
    """
    level = float(iv["level"])
    u = clopper_pearson(0, n, level)[1]
    kind = ("right", "wrong") if right else ("wrong", "right")
    how = (
        f"bounded: every one of the {n} rows is {kind[0]}, so a bootstrap cannot see a {kind[1]} row; their share is at "
        f"most {u:.4g} (Clopper-Pearson upper bound of 0 of {n}), each {'moving it by' if cancels else 'costing'} 0 to {worst:.4g}, around the seen "
        f"rows' percentile bounds"
    )
    low, high = (
        max(0.0, (1 - u) * lo - (u * worst if cancels else 0.0)),
        min(float(worst), max(hi, (1 - u) * hi + u * worst)),
    )
    return Interval(float(iv["estimate"]), low, high, level, how).to_dict()


def _bonferroni(level: float, m: int) -> float:
    """The level of each of ``m`` intervals that all hold at once with probability ``level`` or more."""
    return 1 - (1 - level) / max(m, 1)


def _harmonic(x: float, y: float) -> float:
    return 0.0 if x + y == 0 else 2 * x * y / (x + y)


def exact_balanced(tp, true_n, level: float = 0.95) -> tuple[float, float, str]:
    """Conservative bounds of balanced accuracy: the mean of each present class's recall Clopper-Pearson bounds,
    each at the Bonferroni level over the classes (all hold at once, so their mean's bounds do).

    >>> lo, hi, how = exact_balanced([25, 25], [25, 25]); round(lo, 3), hi
    (0.839, 1.0)
    """
    present = [(int(t), int(m)) for t, m in zip(tp, true_n) if m > 0]
    lv = _bonferroni(level, len(present))
    bounds = np.array([clopper_pearson(t, m, lv) for t, m in present])
    how = f"mean of each class recall's Clopper-Pearson bounds at {lv:.4g} (Bonferroni over {len(present)} classes)"
    return float(bounds[:, 0].mean()), float(bounds[:, 1].mean()), how


def exact_macro_f1(tp, true_n, pred_n, level: float = 0.95) -> tuple[float, float, str]:
    """Conservative bounds of macro-F1: each class's F1 is the harmonic mean of its precision and recall, which grows
    with both, so the harmonic means of their Clopper-Pearson lower (upper) bounds bound it; every bound at the
    Bonferroni level over the 2 m proportions of the m classes present in labels or predictions.

    >>> lo, hi, how = exact_macro_f1([25, 25], [25, 25], [25, 25]); round(lo, 3), hi
    (0.816, 1.0)
    """
    classes = [(int(t), int(m), int(p)) for t, m, p in zip(tp, true_n, pred_n) if m + p > 0]
    lv = _bonferroni(level, 2 * len(classes))
    lows, highs = [], []
    for t, m, p in classes:
        (pl, ph), (rl, rh) = clopper_pearson(t, p, lv), clopper_pearson(t, m, lv)
        lows.append(_harmonic(pl, rl))
        highs.append(_harmonic(ph, rh))
    how = (
        f"mean of each class F1's bounds from its precision's and recall's Clopper-Pearson bounds at {lv:.4g} "
        f"(Bonferroni over {2 * len(classes)} proportions)"
    )
    return float(np.mean(lows)), float(np.mean(highs)), how


def exact_top(top: np.ndarray, level: float) -> tuple[float, float, str] | None:
    """Clopper-Pearson bounds of top-5 accuracy when every row is a whole hit or miss (a proportion), else None."""
    if not np.all((top == 0) | (top == 1)):
        return None
    return (*clopper_pearson(int(top.sum()), len(top), level), "Clopper-Pearson interval of the top-5 hits")
