"""Two classifiers on the same rows: is the difference of their accuracies larger than chance?

Both tests look only at the *discordant* rows, where exactly one of the two is right: ``b`` rows where A is
right and B wrong, ``c`` rows the other way round. The exact McNemar test asks how surprising ``b`` is among
``b + c`` fair coin flips; the paired bootstrap resamples rows and gives an interval of the difference.

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

from featstore.stats.intervals import Interval, _check_level, percentile_bounds


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two classifiers on the same rows."""

    b: int  # rows where A is right and B is wrong
    c: int  # rows where A is wrong and B is right
    p: float  # two-sided exact p-value: binomial test of b among b + c at probability 1/2 (1.0 when b + c = 0)


@dataclass(frozen=True)
class PairedComparison:
    """Accuracies of A and B on the same rows, their difference with a paired bootstrap interval, and McNemar's test."""

    name_a: str  # what A is called in the sentence
    name_b: str  # what B is called
    n: int  # rows compared
    accuracy_a: float  # A's accuracy on them
    accuracy_b: float  # B's accuracy
    difference: Interval  # accuracy_a - accuracy_b with its paired bootstrap interval
    mcnemar: McNemar  # the exact test on the discordant rows
    alpha: float = 0.05  # significance level of the verdict

    @property
    def verdict(self) -> str:
        """'larger than chance', 'within noise' or 'borderline' (the test and the interval disagree)."""
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
            f"of {self.n}"
        )
        verdict = self.verdict
        if verdict == "borderline":
            verdict = "borderline (the exact test and the bootstrap interval disagree)"
        if m.b == m.c:
            return f"{self.name_a} and {self.name_b} tie ({detail}): {verdict}"
        return f"{win} beats {lose} by {_points(sign * d.estimate * 100)} points ({detail}): {verdict}"

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


def paired_bootstrap(y, pred_a, pred_b, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> Interval:
    """Paired bootstrap interval of accuracy(A) - accuracy(B) on the same rows (percentile, seeded).

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
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> PairedComparison:
    """A and B on the same rows: both accuracies, the paired bootstrap interval of the difference and McNemar's test.

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
        paired_bootstrap(y, pred_a, pred_b, n_boot, seed, level),
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
