"""Two classifiers on the same rows: is the difference of their accuracies larger than chance?

The exact McNemar test looks only at the *discordant* rows, where exactly one of the two is right: ``b`` rows where
A is right and B wrong, ``c`` rows the other way round; it asks how surprising ``b`` is among ``b + c`` fair coin
flips. The interval of the difference of the two accuracies is Newcombe's hybrid score interval for paired
proportions (Newcombe 1998, Stat. Med. 17:2635, his method 10; the square-and-add interval of Fagerland, Lydersen
and Laake's *Statistical Analysis of Contingency Tables*, ch. 8): each accuracy's Wilson interval, combined with
the correlation of the two. Unlike a paired bootstrap it never shrinks to a point (one row, or every discordant row
going one way: a bootstrap of c = 0 can never reach below 0), and it holds its level on small splits
(``tests/test_adversarial_attack63_fixCR.py`` computes its coverage exactly). The verdict is "larger than chance"
only when the exact test and the interval agree.

>>> y = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1])
>>> a = y.copy(); a[0] = 1
>>> b = y.copy(); b[:4] = 1 - b[:4]
>>> r = compare_predictions(y, a, b, "logreg", "svm")
>>> (r.mcnemar.b, r.mcnemar.c, round(r.mcnemar.p, 3))
(3, 0, 0.25)
>>> r.sentence().startswith("logreg beats svm by 30.0 points")
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from featstore.stats.intervals import Interval, _check_level, _z, percentile_bounds, wilson_interval

MIN_ROWS = 20  # below this many rows the sentence says how few they are (the split's figures' bootstrap floor)


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two classifiers on the same rows."""

    b: int  # rows where A is right and B is wrong
    c: int  # rows where A is wrong and B is right
    p: float  # two-sided exact p-value: binomial test of b among b + c at probability 1/2 (1.0 when b + c = 0)


@dataclass(frozen=True)
class PairedComparison:
    """Accuracies of A and B on the same rows, their difference with Newcombe's paired score interval, and McNemar's
    exact test."""

    name_a: str  # what A is called in the sentence
    name_b: str  # what B is called
    n: int  # rows compared
    accuracy_a: float  # A's accuracy on them
    accuracy_b: float  # B's accuracy
    difference: Interval  # accuracy_a - accuracy_b with its paired score interval (:func:`paired_interval`)
    mcnemar: McNemar  # the exact test on the discordant rows
    alpha: float = 0.05  # significance level of the verdict

    @property
    def verdict(self) -> str:
        """'larger than chance' (the exact test and the interval both say so), 'within noise' (neither does) or
        'borderline' (one does)."""
        significant = self.mcnemar.p < self.alpha
        excludes_zero = self.difference.low > 0 or self.difference.high < 0
        if significant != excludes_zero:
            return "borderline"
        return "larger than chance" if significant else "within noise"

    def sentence(self) -> str:
        """The comparison in words, e.g. "A beats B by 1.2 points (95 % CI 0.3 to 2.1; McNemar p = 0.01 on 40
        discordant rows of 1000): larger than chance"."""
        m, d = self.mcnemar, self.difference
        if m.b + m.c == 0:
            return (
                f"{self.name_a} and {self.name_b} are right on exactly the same {self.n} rows "
                f"(no discordant rows): no difference"
            )
        win, lose, sign = (self.name_a, self.name_b, 1) if m.b >= m.c else (self.name_b, self.name_a, -1)
        lo, hi = sorted((sign * d.low * 100, sign * d.high * 100))
        detail = (
            f"{_pct(d.level)} % CI {_points(lo)} to {_points(hi)}; McNemar {_p(m.p)} on {m.b + m.c} discordant rows "
            f"of {self.n}{self.few_rows_note()}"
        )
        verdict = self.verdict
        if verdict == "borderline":
            verdict = "borderline (the exact test and the interval disagree)"
        if m.b == m.c:
            return f"{self.name_a} and {self.name_b} tie ({detail}): {verdict}"
        return f"{win} beats {lose} by {_points(sign * d.estimate * 100)} points ({detail}): {verdict}"

    def few_rows_note(self) -> str:
        """'' on :data:`MIN_ROWS` rows or more; below, how few they are, as the split's own figures say (their
        bootstrap is not drawn there): the interval and the exact test still hold, and are wide."""
        if self.n >= MIN_ROWS:
            return ""
        rows = "1 row" if self.n == 1 else f"{self.n} rows"
        return f"; only {rows}, under {MIN_ROWS}: too few to tell much apart"

    def to_dict(self) -> dict:
        """Plain JSON-able fields, the verdict and the sentence included."""
        return {**asdict(self), "verdict": self.verdict, "sentence": self.sentence()}


def _correct(y, pred_a, pred_b) -> tuple[np.ndarray, np.ndarray]:
    """Boolean 'right' arrays of A and B, after checking the three arrays are 1-D and of one length."""
    y, pred_a, pred_b = (np.asarray(a) for a in (y, pred_a, pred_b))
    if not (y.ndim == pred_a.ndim == pred_b.ndim == 1) or not (len(y) == len(pred_a) == len(pred_b)):
        raise ValueError(
            f"labels and both predictions must be 1-D and of one length (the same rows), got shapes "
            f"{y.shape}, {pred_a.shape} and {pred_b.shape}"
        )
    return pred_a == y, pred_b == y


def mcnemar(y, pred_a, pred_b) -> McNemar:
    """Exact (binomial) McNemar test of two classifiers' predictions on the same rows, two-sided.

    >>> mcnemar([0, 0, 0], [0, 0, 0], [0, 0, 0])
    McNemar(b=0, c=0, p=1.0)
    """
    right_a, right_b = _correct(y, pred_a, pred_b)
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    return McNemar(b, c, mcnemar_p(b, c))


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact p-value of ``b`` successes among ``b + c`` trials at 1/2: 2 P(X <= min(b, c)), capped at 1."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def paired_interval(both: int, a_only: int, b_only: int, neither: int, level: float = 0.95) -> Interval:
    """Newcombe's hybrid score interval of accuracy(A) - accuracy(B) from the paired counts: rows right by both, by A
    only (b), by B only (c) and by neither (Newcombe 1998, method 10).

    Each accuracy gets its Wilson interval (l1, u1) and (l2, u2); with their correlation phi,
    low = d - sqrt((p1 - l1)² - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)²) and
    high = d + sqrt((p2 - l2)² - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)²), where phi is (ad - bc - n/2) / sqrt of the
    four margins' product when ad - bc > n/2, 0 when 0 <= ad - bc <= n/2 or a margin is 0, and (ad - bc) / sqrt(...)
    when ad - bc < 0. The Wilson intervals have width on any rows, so this one never shrinks to a point.

    >>> iv = paired_interval(0, 5, 0, 0)     # 5 rows, A right on all of them, B on none
    >>> iv.estimate, round(iv.low, 3), iv.high
    (1.0, 0.386, 1.0)
    """
    counts = (both, a_only, b_only, neither)
    if any(int(x) != x or x < 0 for x in counts):
        raise ValueError(f"paired counts are non-negative whole numbers, got {counts}")
    a, b, c, d = (int(x) for x in counts)
    n = a + b + c + d
    if n == 0:
        raise ValueError("an interval of a paired difference needs at least one row")
    z = _z(level)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    phi = 0.0
    if margins > 0 and cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    elif margins > 0 and cross < 0:
        phi = cross / math.sqrt(margins)
    low = (p1 - p2) - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = (p1 - p2) + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return Interval((b - c) / n, max(-1.0, low), min(1.0, high), level, "newcombe paired score (method 10)")


def paired_bootstrap(y, pred_a, pred_b, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> Interval:
    """Paired bootstrap interval of accuracy(A) - accuracy(B) on the same rows (percentile, seeded). Comparisons do
    not use it (:func:`paired_interval` does): with c = 0 it can never reach below 0, and on a few rows it is a point.

    Resampling rows only changes how many of them are of each kind (A alone right, B alone right, neither or
    both), so each resample is one multinomial draw of those three counts: the same distribution as resampling
    the rows themselves, at a cost that does not grow with the rows.

    >>> iv = paired_bootstrap([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1])
    >>> (iv.estimate, iv.low, iv.high)
    (0.0, 0.0, 0.0)
    """
    right_a, right_b = _correct(y, pred_a, pred_b)
    n = len(right_a)
    if n == 0:
        raise ValueError("a paired bootstrap needs at least one row")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    _check_level(level)
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    counts = np.random.default_rng(seed).multinomial(n, [b / n, c / n, (n - b - c) / n], size=n_boot)
    lo, hi = percentile_bounds((counts[:, 0] - counts[:, 1]) / n, level)
    return Interval((b - c) / n, lo, hi, level, f"paired bootstrap (B={n_boot}, seed {seed})")


def compare_predictions(
    y,
    pred_a,
    pred_b,
    name_a: str = "A",
    name_b: str = "B",
    level: float = 0.95,
    alpha: float = 0.05,
) -> PairedComparison:
    """A and B on the same rows: both accuracies, the paired score interval of the difference (:func:`paired_interval`)
    and McNemar's exact test.

    ``runs compare A B`` and an ensemble against its best member print ``.sentence()``; ``.to_dict()`` is for JSON.
    """
    right_a, right_b = _correct(y, pred_a, pred_b)
    n = len(right_a)
    if n == 0:
        raise ValueError("comparing two classifiers needs at least one row both were evaluated on")
    return PairedComparison(
        name_a,
        name_b,
        n,
        float(right_a.mean()),
        float(right_b.mean()),
        paired_interval(
            int(np.sum(right_a & right_b)),
            int(np.sum(right_a & ~right_b)),
            int(np.sum(~right_a & right_b)),
            int(np.sum(~right_a & ~right_b)),
            level,
        ),
        mcnemar(y, pred_a, pred_b),
        alpha,
    )


def describe_difference(y, pred_a, pred_b, name_a: str = "A", name_b: str = "B", **kwargs) -> str:
    """In words, whether A and B differ by more than chance on the same rows (see :func:`compare_predictions`).

    >>> describe_difference([0, 1], [0, 1], [0, 1], "logreg", "svm")
    'logreg and svm are right on exactly the same 2 rows (no discordant rows): no difference'
    """
    return compare_predictions(y, pred_a, pred_b, name_a, name_b, **kwargs).sentence()


def _points(x: float) -> str:
    """Percentage points with one decimal (no '-0.0')."""
    s = f"{x:.1f}"
    return "0.0" if s == "-0.0" else s


def _pct(level: float) -> str:
    """0.95 -> '95'; 0.999 -> '99.9'."""
    return f"{level * 100:g}"


def _p(p: float) -> str:
    """A p-value as printed: 'p = 0.012', 'p < 0.001', 'p = 1'."""
    if p < 0.001:
        return "p < 0.001"
    return f"p = {float(f'{p:.2g}'):g}" if not math.isclose(p, 1.0) else "p = 1"
