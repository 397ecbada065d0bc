"""Repeated draws for the recipes: parse ``--seeds``, and format a figure over seeds as mean ± sd with the 95 % interval
of the mean (Student t over the seeds), or one draw's accuracy with its Wilson interval.

>>> parse_seeds("0,1,2")
[0, 1, 2]
>>> mean_sd_text([0.88, 0.90, 0.89])
'0.8900 ± 0.0100'
>>> wilson_text(0.9, 1000)
'0.9000 [0.8798, 0.9171]'
"""

from __future__ import annotations

from featstore.experiments.fewshot import mean_interval
from featstore.stats import mean_sd, proportion_interval


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct, in the order given); a clear exit on anything else."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds needs distinct seeds, e.g. 0,1,2; got {text!r}")
    return seeds


def mean_sd_text(values: list[float], digits: int = 4) -> str:
    """``mean ± sd`` (sample sd; 0 for one value)."""
    m, sd = mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def mean_ci_text(values: list[float], digits: int = 4) -> str:
    """The 95 % interval of the mean over seeds (Student t), or ``-`` for one seed."""
    ci = mean_interval(values)
    return f"[{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]" if ci else "-"


def wilson_text(accuracy: float, n: int, digits: int = 4) -> str:
    """One draw's accuracy on ``n`` rows with its 95 % Wilson interval."""
    iv = proportion_interval(round(accuracy * n), n)
    return f"{accuracy:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def judge(name: str, target: float | None, values: list[float], shared_test: int | None = None) -> str | None:
    """A sentence judging a target on the mean over seeds (None without a target). ``shared_test``: the number of
    test images when every seed scores the same ones; the interval over seeds then measures the training carve only,
    so the test set's own 95 % interval (Wilson, at the mean) is judged too.

    >>> judge("(x)", 0.93, [0.9321, 0.9311, 0.9313], shared_test=10000).split("; ")[-1]
    'but every seed scores the same 10000 test images, whose own 95 % interval at the mean, [0.9264, 0.9363], contains it: the test set cannot tell'
    """
    if target is None:
        return None
    m, sd = mean_sd(values)
    ci = mean_interval(values)
    verdict = "reached" if m >= target else "missed"
    where = ""
    if ci:
        where = (
            "; the whole 95 % interval of the mean is above it"
            if ci["low"] >= target
            else "; the whole 95 % interval of the mean is below it"
            if ci["high"] < target
            else "; the 95 % interval of the mean contains it, so the seeds cannot tell"
        )
    if shared_test and len(values) > 1:
        iv = proportion_interval(round(m * shared_test), shared_test)
        if iv.low <= target <= iv.high:
            where += (
                f"; but every seed scores the same {shared_test} test images, whose own 95 % interval at the mean, "
                f"[{iv.low:.4f}, {iv.high:.4f}], contains it: the test set cannot tell"
            )
    per = ", ".join(f"{v:.4f}" for v in values)
    return (
        f"target {name} ≥ {target:g}: {verdict} on the mean ({m:.4f} ± {sd:.4f} over {len(values)} seeds: {per}){where}"
    )
