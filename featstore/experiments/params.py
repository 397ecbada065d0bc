"""A classifier's parameters: their type, default, choices and valid range, and the check of one value.

Every number a classifier takes is finite and in its range (``C > 0``, ``max_iter >= 1``, ``dropout`` in [0, 1)):
``C=inf`` or ``max_iter=0`` is refused before any data is read, with the valid range. Every value is of its parameter's
type first: a count is a whole number, never a bool (``pca=True`` fitted on one component) nor a float (``epochs=2.5``
was recorded as it is, or a traceback in Keras); a number is never a bool or a str; a switch is a bool; a choice is one
of its choices (attack 57 #11).

>>> Param(float, 1.0, low=0.0, open_low=True).range_text()
'a finite number > 0'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from featstore.errors import ConfigError

_NUMBER_OR = {"gamma": ("scale", "auto"), "max_features": ("sqrt", "log2")}  # str parameters that may also be numbers
_NUMBER_OR_RANGE = {"gamma": (0.0, math.inf, True), "max_features": (0.0, 1.0, False)}  # (low, high, open high)


@dataclass(frozen=True)
class Param:
    """One user-settable parameter of a classifier."""

    type: type  # int, float, str or bool; --param values are converted to it
    default: object  # value when not given
    choices: tuple = ()  # allowed values for a str parameter (empty = any)
    help: str = ""  # one line for `featstore fit --help-clf`
    low: float | None = None  # smallest valid number (None: no bound); a number is always finite
    high: float | None = None  # largest valid number
    open_low: bool = False  # the number must be above ``low``, not equal to it
    open_high: bool = False  # the number must be below ``high``
    range_help: str = ""  # the valid range in words, when the bounds alone do not say it

    def range_text(self) -> str:
        """The valid range in words: "a finite number > 0", "an integer >= 1", "a number in [0, 1)"."""
        if self.range_help:
            return self.range_help
        what = "an integer" if self.type is int else "a finite number"
        low, high = _num(self.low), _num(self.high)
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {low}"
        if self.high is not None:
            return f"{what} {'<' if self.open_high else '<='} {high}"
        return what

    def in_range(self, value) -> bool:
        """Whether a number lies in the valid range (and is finite)."""
        try:
            v = float(value)
        except OverflowError:  # an int of 400 digits: out of range, not an OverflowError traceback (attack 54 #5)
            return False
        return (
            math.isfinite(v)
            and (self.low is None or (v > self.low if self.open_low else v >= self.low))
            and (self.high is None or (v < self.high if self.open_high else v <= self.high))
        )


def _num(x: float | None) -> str:
    """A bound as printed: 0, 1, 4294967295, 1e-05."""
    if x is None:
        return ""
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


_TYPES = {  # a parameter's type -> (whether a value is of it, the type in words)
    int: (_is_int, "a whole number (an int)"),
    float: (_is_number, "a number"),
    bool: (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    str: (lambda v: isinstance(v, str), "a str"),
}


def check_type(clf: str, key: str, p: Param, value) -> None:
    """ConfigError unless ``value`` is of ``p``'s type (a str parameter that may be a number takes a number too) and,
    for a str parameter with choices, one of them; one line naming the classifier and the parameter."""
    is_it, words = _TYPES.get(p.type, (lambda v: True, ""))
    if key in _NUMBER_OR and _is_number(value):
        return  # gamma=0.1, max_features=0.5: range-checked below
    if not is_it(value):
        hint = f"; give {int(value)}" if p.type is int and isinstance(value, float) and value.is_integer() else ""
        raise ConfigError(
            f"parameter {key}={value!r} for {clf} must be {words}{' or a number' if key in _NUMBER_OR else ''}, "
            f"not {type(value).__name__}{hint}"
        )
    if p.choices and value not in p.choices:
        raise ConfigError(f"parameter {key}={value!r} for {clf}: choose one of: {', '.join(map(str, p.choices))}")


def check_value(clf: str, key: str, p: Param, value) -> None:
    """ConfigError unless ``value`` is a valid value of parameter ``key`` (``p``) of classifier ``clf``: of its type
    (:func:`check_type`), then in its range."""
    check_type(clf, key, p, value)
    if key in _NUMBER_OR and value not in _NUMBER_OR[key]:  # a number, given as text (--param) or as a number
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = math.nan
        low, high, open_high = _NUMBER_OR_RANGE[key]
        if not (math.isfinite(number) and low < number and (number < high if open_high else number <= high)):
            raise ConfigError(
                f"parameter {key}={value!r} for {clf} is out of range: {key} is "
                f"{' or '.join(_NUMBER_OR[key])}, or a number in ({_num(low)}, {_num(high)}{')' if open_high else ']'}"
            )
    if p.type in (int, float) and _is_number(value):
        if not p.in_range(value):
            raise ConfigError(f"parameter {key}={value!r} for {clf} is out of range: {key} must be {p.range_text()}")


MAX_SETTINGS = 10_000  # settings one fit may try: 6 parameters of 20 values each were 64 million dicts, then fits


def refuse_huge_grid(clf: str, counts: list[int], grid: bool = False) -> None:
    """ConfigError when the product of ``counts`` (values per parameter) is over :data:`MAX_SETTINGS`; ``grid``: the
    classifier's default grid (--search) is in it (its line said "the values given" where none were: attack 61 #5)."""
    if math.prod(counts) > MAX_SETTINGS:
        what = "its search grid (--search) and the values given" if grid else "the values given"
        raise ConfigError(
            f"{clf}: {what} make {math.prod(counts):,} settings to try ({' x '.join(map(str, counts))}), over "
            f"{MAX_SETTINGS:,}; give fewer values per parameter{', or leave out --search' if grid else ''}"
        )


def refuse_repeated(clf: str, key: str, values: list, texts: list[str] | None = None) -> None:
    """ConfigError when two of ``values`` (of parameter ``key`` of ``clf``, as converted) are one setting: ``--param
    C=1 --param C=1.0`` fitted C=1.0 twice and recorded a choice on validation that was never made (attack 68 #10).
    ``texts``: the values as typed (``--param``), named in the line; else (Python's ``params=``) the value.

    >>> refuse_repeated("logreg", "C", [1.0, 1.0], ["1", "1.0"])
    Traceback (most recent call last):
    featstore.errors.ConfigError: --param gives logreg's C the value 1.0 twice (C=1, C=1.0); give each value once
    """
    seen: dict = {}
    for i, value in enumerate(values):
        same = value
        if key in _NUMBER_OR and value not in _NUMBER_OR[key]:  # gamma=0.1 and gamma=0.10: one number, kept as text
            try:
                same = float(value)
            except (TypeError, ValueError, OverflowError):
                same = value
        try:
            hash(same)
        except TypeError:  # a registered list or dict parameter (an MLP's layers): one key per value (attack 70 #3)
            same = ("unhashable", json.dumps(same, sort_keys=True, default=repr))
        if same in seen:
            if texts is None:
                raise ConfigError(f"parameter {key} for {clf} lists {value!r} twice; give each value once")
            raise ConfigError(
                f"--param gives {clf}'s {key} the value {value!r} twice ({key}={texts[seen[same]]}, {key}={texts[i]}); "
                f"give each value once"
            )
        seen[same] = i
