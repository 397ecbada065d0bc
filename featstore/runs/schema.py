"""What the values of a ``run.json`` must be: the checks :meth:`featstore.runs.record.RunRecord.from_json` runs.

Every check raises a ``BrokenRunError`` naming the key and the fix. Keys added over time (the intervals, log-loss,
ECE and reliability bins of a split, the calibration, a split's image listing digest) are optional: a run recorded
before them reads as before, and a run that has them must have them right, so that nothing that reads them later
meets a value it cannot use.

>>> check_weights([1.0, 2.0], 2), check_weights([float("nan"), 1.0], 2)
(True, False)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path

from featstore.runs.files import BrokenRunError
from featstore.stats.calibration import BOUNDS as CALIBRATION_BOUNDS
from featstore.stats.calibration import INPUTS as CALIBRATION_INPUTS
from featstore.stats.calibration import METHODS as CALIBRATION_METHODS

Types = type | tuple[type, ...]
METRIC_FIELDS: dict[str, Types] = {
    "n": int,
    "accuracy": (int, float),
    "macro_f1": (int, float),
    "per_class": dict,
    "confusion_matrix": (list, dict),  # rows of counts, or a large matrix's non-zero cells (stats.figures)
}
METRIC_NUMBERS = ("balanced_accuracy", "log_loss", "ece", "top5")  # optional: finite numbers
METRIC_INTERVALS = (  # optional: {estimate, low, high, level, method}
    "accuracy_ci",
    "balanced_accuracy_ci",
    "macro_f1_ci",
    "log_loss_ci",
    "ece_ci",
    "top5_ci",
)
PER_CLASS = ("precision", "recall", "f1", "support")
_NUMBERS = {int, float}  # JSON numbers, as json.loads types them (never bool)


def number(x: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def finite(x: object) -> bool:
    """A finite JSON number (an int too large for a float is not: attack 80 #2)."""
    try:
        return number(x) and math.isfinite(x)
    except OverflowError:
        return False


def _unit(x: object) -> bool:
    """A JSON number in [0, 1] (int or float by exact type, so no bool; NaN and inf fail the comparison)."""
    return type(x) in _NUMBERS and 0 <= x <= 1


def _type_name(t: Types) -> str:
    """``dict`` -> "dict", ``(int, float)`` -> "int or float"."""
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def check_fields(obj: dict, fields: Mapping[str, Types], where: str, folder: Path) -> None:
    """BrokenRunError unless ``obj`` has every key of ``fields`` with a value of its type (a bool is no number)."""
    missing = [k for k in fields if k not in obj]
    if missing:
        raise BrokenRunError(
            f"{where} lacks {', '.join(missing)} (damaged, or written by an older featstore)",
            f"remove the folder {folder} and fit again",
        )
    wrong = [
        f"{k} must be {_type_name(t)}"
        for k, t in fields.items()
        if not isinstance(obj[k], t) or (isinstance(obj[k], bool) and t is not bool)
    ]
    if wrong:
        raise BrokenRunError(f"{where}: {', '.join(wrong)}", f"remove the folder {folder} or restore its run.json")


def raise_bad_names(bad: list, where: str, folder: Path) -> None:
    """The BrokenRunError for split or run names that could not be file names."""
    raise BrokenRunError(
        f"{where} holds invalid split or run names {bad!r} (a split name is letters, digits and _ - @ + = , . "
        f"not first, a run id letters, digits and ._-)",
        f"remove the folder {folder}",
    )


MAX_COUNT = 1 << 53  # rows a split may count: JSON's exact integers (10**20 overflowed numpy's int64 in `runs show`)


def _confusion_counts(cm: object, k: int) -> list[int] | None:
    """The counts of a ``k``-class confusion matrix as run.json keeps it (``k`` rows of ``k`` integers, or
    ``{"shape": [k, k], "cells": [[true, predicted, count], ...]}`` with each cell once), None when it is not one."""
    if isinstance(cm, dict):
        cells = cm.get("cells")
        if set(cm) != {"shape", "cells"} or cm["shape"] != [k, k] or type(cells) is not list or len(cells) > k * k:
            return None
        if not all(type(c) is list and len(c) == 3 and set(map(type, c)) <= {int} for c in cells):
            return None
        if not all(0 <= c[0] < k and 0 <= c[1] < k for c in cells) or len({(c[0], c[1]) for c in cells}) != len(cells):
            return None
        return [c[2] for c in cells]
    if type(cm) is not list or len(cm) != k or not all(type(r) is list and len(r) == k for r in cm):
        return None
    counts = list(itertools.chain.from_iterable(cm))
    return counts if set(map(type, counts)) <= {int} else None


def check_metrics(m: object, k: int, where: str, folder: Path) -> None:
    """BrokenRunError unless ``m`` is one split's metrics of ``k`` classes (and its optional figures are usable)."""
    check_fields(m if isinstance(m, dict) else {}, METRIC_FIELDS, where, folder)
    cm, per_class = m["confusion_matrix"], m["per_class"].values()
    counts = _confusion_counts(cm, k)
    if counts is None or not all(
        isinstance(v, dict) and set(map(type, map(v.get, PER_CLASS))) <= _NUMBERS for v in per_class
    ):
        raise BrokenRunError(
            f"{where} need a {k}x{k} integer confusion matrix and per-class {', '.join(PER_CLASS)}",
            f"remove the folder {folder}",
        )
    bad = [key for key in ("accuracy", "macro_f1") if not (finite(m[key]) and 0 <= m[key] <= 1)]
    bad += ["n"] if not 0 <= m["n"] < MAX_COUNT else []
    if any(not 0 <= v < MAX_COUNT for v in counts) or sum(counts) != m["n"]:
        bad.append("confusion_matrix")
    bad += [key for key in METRIC_NUMBERS if key in m and not finite(m[key])]
    bad += [key for key in METRIC_INTERVALS if key in m and not _interval(m[key])]
    if "reliability" in m and not _bins(m["reliability"]):
        bad.append("reliability")
    before = m.get("before_calibration", {})
    if not isinstance(before, dict) or not all(finite(v) for v in before.values()):
        bad.append("before_calibration")
    if bad:
        raise BrokenRunError(
            f"{where}: {', '.join(bad)} must be finite numbers (accuracy and macro_f1 in [0, 1]; n and the "
            f"confusion matrix's counts from 0 to 2**53, the counts summing to n; an interval: estimate, low, high and level; "
            f"reliability: bins of low, high, count, confidence, accuracy)",
            f"remove the folder {folder} or restore its run.json",
        )


def _interval(v: object) -> bool:
    """An interval as recorded: finite estimate, low, high, and a level in (0, 1)."""
    return (
        isinstance(v, dict)
        and all(finite(v.get(key)) for key in ("estimate", "low", "high", "level"))
        and 0 < v["level"] < 1
        and v["low"] <= v["high"]
        and isinstance(v.get("method", ""), str)
    )


def _bins(bins: object) -> bool:
    """Reliability bins as recorded: edges in [0, 1], a count, and a confidence and accuracy (None when empty)."""
    if not isinstance(bins, list):
        return False
    for b in bins:  # a plain loop: `featstore runs` checks about 45 bins a run
        if not (
            type(b) is dict
            and _unit(b.get("low"))
            and _unit(b.get("high"))
            and type(b.get("count")) is int
            and 0 <= b["count"] <= MAX_COUNT  # as n and the confusion counts (attack 81 #5: 10**19 crashed runs show)
            and (b.get("confidence") is None or _unit(b["confidence"]))
            and (b.get("accuracy") is None or _unit(b["accuracy"]))
        ):
            return False
    return True


def check_budget(obj: dict, where: str, folder: Path) -> None:
    """BrokenRunError unless ``memory_budget`` is null or 1 byte to 2**63 (what ``--memory-budget`` gives), and a
    ``streamed`` run names it (``runs show`` prints "streamed within <budget>")."""
    budget = obj.get("memory_budget")
    if (budget is not None and not 1 <= budget < 1 << 63) or (obj.get("streamed") and budget is None):
        raise BrokenRunError(
            f"{where}: memory_budget {budget!r} is not a size (1 byte to 2**63, and a streamed run has one)",
            f"remove the folder {folder} or restore its run.json",
        )


def check_calibration(cal: object, where: str, folder: Path) -> None:
    """BrokenRunError unless ``cal`` is a calibration featstore can apply (a method it knows, a finite positive T),
    its ``model_temperature`` (where recorded) one featstore fits."""
    problem = None
    if not isinstance(cal, dict) or cal.get("method") not in CALIBRATION_METHODS:
        problem = f"its method must be one of {', '.join(CALIBRATION_METHODS)}"
    elif cal.get("input", "probabilities") not in CALIBRATION_INPUTS:
        problem = f"its input must be one of {', '.join(CALIBRATION_INPUTS)}"
    elif cal["method"] == "temperature" and not (finite(cal.get("T")) and cal["T"] > 0):
        problem = "a temperature calibration needs a finite positive T"
    elif cal.get("floor") is not None and not (finite(cal["floor"]) and 0 < cal["floor"] < 1):
        problem = "its probability floor must lie in (0, 1)"
    elif cal["method"] == "temperature" and not CALIBRATION_BOUNDS[0] <= cal["T"] <= CALIBRATION_BOUNDS[1]:
        # featstore fits T within these bounds only (a damaged or crafted record: T = 1e308 gave uniform probabilities,
        # 1e-30 one-hot ones, and 5e-324 NaN, recorded as figures); within them logits / T stays finite
        problem = (
            f"T = {cal['T']!r} lies outside [{CALIBRATION_BOUNDS[0]:g}, {CALIBRATION_BOUNDS[1]:g}], the temperatures "
            f"featstore fits within (the run record is damaged)"
        )
    if problem is None and isinstance(cal, dict) and "model_temperature" in cal:
        problem = _own_temperature_problem(cal["model_temperature"])
    if problem:
        raise BrokenRunError(f"{where}: calibration is not usable: {problem}", f"remove the folder {folder}")


def _own_temperature_problem(own: object) -> str | None:
    """What is wrong with ``calibration.model_temperature`` (the svm's out-of-fold temperature, as
    ``own_temperature`` records it), or None: checked as T is (attack 70 #6: T = 1e-300 over 2.5 folds was shown,
    "on its lower bound"). ``folds`` is 0 (none fitted, T = 1) or a whole number of at least 2, and ``at_bound`` says
    whether T is a bound of :data:`CALIBRATION_BOUNDS`."""
    t = own.get("T") if isinstance(own, dict) else None
    folds = own.get("folds") if isinstance(own, dict) else None
    low, high = CALIBRATION_BOUNDS
    if not (finite(t) and low <= t <= high):
        return f"model_temperature's T must be a number in [{low:g}, {high:g}] (the run record is damaged)"
    if not (isinstance(folds, int) and not isinstance(folds, bool) and (folds == 0 or folds >= 2)):
        return f"model_temperature's folds must be 0 or a whole number of at least 2, not {folds!r} (damaged record)"
    if folds == 0 and t != 1:
        return f"model_temperature's T is {t!r} with no folds (none fitted is T = 1; the run record is damaged)"
    at = own.get("at_bound")
    if at is not None and at is not bool(folds and t in (low, high)):
        return f"model_temperature's at_bound {at!r} does not match T = {t!r} (the run record is damaged)"
    return None


def check_weights(weights: object, n: int) -> bool:
    """Whether ``weights`` are ``n`` finite non-negative numbers, not all zero (an ensemble's; their sum may overflow:
    they are used as :func:`scaled_weights`)."""
    return (
        isinstance(weights, (list, tuple))
        and len(weights) == n
        and all(number(w) and math.isfinite(w) and w >= 0 for w in weights)
        and max(weights) > 0
    )


def scaled_weights(weights) -> list[float]:
    """Checked ensemble weights divided by the largest, so that any finite non-negative weights act as their ratios:
    ``w * p`` does not underflow (``5e-324, 0`` is ``1, 0``) and their sum does not overflow (``1e308, 1e308``).

    >>> scaled_weights([5e-324, 0.0]), scaled_weights([1e308, 1e308]), scaled_weights([1, 3])
    ([1.0, 0.0], [1.0, 1.0], [0.3333333333333333, 1.0])
    """
    top = max(float(w) for w in weights)
    return [float(w) / top for w in weights]
