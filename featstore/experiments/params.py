"""A classifier's parameters: their type, default, choices and valid range, and the check of one value.

Every number a classifier takes is finite and in its range (``C > 0``, ``max_iter >= 1``, ``dropout`` in [0, 1)):
``C=inf`` or ``max_iter=0`` is refused before any data is read, with the valid range. Every value is of its parameter's
type first: a count is a whole number, never a bool (``pca=True`` fitted on one component) nor a float (``epochs=2.5``
was recorded as it is, or a traceback in Keras); a number is never a bool or a str; a switch is a bool; a choice is one
of its choices (attack 57 #11).

A parameter is of one of :data:`PARAM_TYPES`: int, float, str, bool, list or dict (``register_classifier`` refuses
any other). A list or dict value holds JSON values only (str, a finite number, True/False, None, lists, dicts with str
keys), which is what a run records; on the command line it is given as JSON (``--param 'layers=[16, 8]'``):
``steps=scale`` was ``list("scale")``, the five letters, and a builder testing ``"scale" in steps`` left the scaler
out (attack 71 #6).

>>> Param(float, 1.0, low=0.0, open_low=True).range_text()
'a finite number > 0'
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from featstore.errors import ConfigError

_NUMBER_OR = {"gamma": ("scale", "auto"), "max_features": ("sqrt", "log2")}  # str parameters that may also be numbers
_NUMBER_OR_RANGE = {"gamma": (0.0, math.inf, True), "max_features": (0.0, 1.0, False)}  # (low, high, open high)


@dataclass(frozen=True)
class Param:
    """One user-settable parameter of a classifier."""

    type: type  # int, float, str, bool, list or dict (PARAM_TYPES); --param text is converted to it (a list's: JSON)
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


def _is_json(value) -> bool:
    """Whether ``value`` is a JSON value a run records as it is: str, a finite number, True/False, None, a list of them,
    a dict of str keys to them (``{0: 1}`` would be recorded as ``{"0": 1}``, a NaN as no JSON at all)."""
    if value is None or isinstance(value, (str, bool, np.bool_)):
        return True
    if _is_number(value):
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an int of 400 digits
            return False
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


_JSON_ITEMS = "JSON values (str, finite numbers, True/False, None, lists, dicts with str keys)"
_TYPES = {  # a parameter's type -> (whether a value is of it, the type in words)
    int: (_is_int, "a whole number (an int)"),
    float: (_is_number, "a number"),
    bool: (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    str: (lambda v: isinstance(v, str), "a str"),
    list: (lambda v: isinstance(v, list) and _is_json(v), f"a list of {_JSON_ITEMS}"),
    dict: (lambda v: isinstance(v, dict) and _is_json(v), f"a dict of str keys to {_JSON_ITEMS}"),
}
PARAM_TYPES = tuple(_TYPES)  # the types a classifier's parameter may have


def refuse_param_types(clf: str, params: dict) -> None:
    """ConfigError unless every parameter of classifier ``clf`` is a :class:`Param` of one of :data:`PARAM_TYPES`
    whose default is a valid value of it; one line naming the parameter (a ``Param(tuple, ...)`` or ``Param(set,
    ...)`` took any value, and its ``--param`` text was ``tuple(text)``, its characters: attack 71 #6).

    >>> refuse_param_types("mine", {"steps": Param(tuple, ())})
    Traceback (most recent call last):
    featstore.errors.ConfigError: classifier 'mine': parameter steps is of type tuple; a parameter is int, float, bool, str, list or dict, e.g. Param(list, []) (given as JSON: --param 'steps=[1, 2]')
    """
    names = ", ".join(t.__name__ for t in PARAM_TYPES[:-1]) + f" or {PARAM_TYPES[-1].__name__}"
    for key, p in params.items():
        if not isinstance(p, Param):
            raise ConfigError(f"classifier {clf!r}: parameter {key} is {p!r}, not a Param; give e.g. Param(int, 1)")
        if p.type not in PARAM_TYPES:
            raise ConfigError(
                f"classifier {clf!r}: parameter {key} is of type {getattr(p.type, '__name__', p.type)}; a parameter "
                f"is {names}, e.g. Param(list, []) (given as JSON: --param '{key}=[1, 2]')"
            )
        try:
            check_value(clf, key, p, p.default)
        except ConfigError as exc:
            raise ConfigError(f"the default of {exc}; give a default of the parameter's type and range") from None


def check_type(clf: str, key: str, p: Param, value) -> None:
    """ConfigError unless ``value`` is of ``p``'s type (a str parameter that may be a number takes a number too) and,
    for a str parameter with choices, one of them; one line naming the classifier and the parameter."""
    is_it, words = _TYPES.get(p.type, (lambda v: True, ""))
    if key in _NUMBER_OR and _is_number(value):
        return  # gamma=0.1, max_features=0.5: range-checked below
    if not is_it(value):
        if isinstance(value, (list, dict)) and isinstance(value, p.type):  # of the type, not of JSON values alone
            raise ConfigError(f"parameter {key}={value!r} for {clf} must be {words}: a run records it as JSON")
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


def _setting(value):
    """A hashable key of a JSON value under which two values that are one setting meet: numbers by value (``8`` and
    ``8.0``; ``True`` is not ``1``), lists item by item, dicts by their items in any order (no sorting: keys of two
    types were a TypeError traceback from ``json.dumps(sort_keys=True)``).

    >>> _setting([8, {"a": 1, "b": 2.0}]) == _setting([8.0, {"b": 2, "a": 1.0}])
    True
    """
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_setting(v) for v in value))
    if isinstance(value, dict):
        return ("dict", frozenset((_setting(k), _setting(v)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        return ("repr", repr(value))
    return value


def convert_value(spec, key: str, text: str):
    """Convert a ``--param key=value`` string to the parameter's type, with a clear error."""
    if key not in spec.params:
        raise ConfigError(f"unknown parameter {key!r} for {spec.name}; valid: {', '.join(spec.params)}")
    p = spec.params[key]
    if key in _NUMBER_OR and text not in _NUMBER_OR[key]:
        try:
            float(text)
        except ValueError:
            raise ConfigError(
                f"parameter {key}={text!r} for {spec.name} must be one of {', '.join(_NUMBER_OR[key])} or a number"
            ) from None
    if p.type in (list, dict):  # JSON: "steps=scale" was list("scale"), five letters, and no scaler (attack 71 #6)
        value = _json_value(spec.name, key, p, text)
        spec.check_value(key, value)  # JSON values a run records as they are (no NaN)
        return value
    try:
        if p.type is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            value = text.lower() in ("true", "1", "yes")
        else:
            value = p.type(text)
    except ValueError:
        raise ConfigError(
            f"parameter {key}={text!r} for {spec.name} must be of type {p.type.__name__} (default {p.default!r})"
        ) from None
    spec.check_value(key, value)  # its choices and range
    return value


def _json_value(clf: str, key: str, p: Param, text: str):
    """A list or dict parameter's ``--param`` text read as JSON (``[16, 8]``, ``{"a": 1}``); ConfigError naming the
    parameter and an example when it is not JSON of that type."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, p.type):
        return value
    word = re.fullmatch(r"[A-Za-z_][\w.-]*", text)  # steps=scale: '["scale"]'
    example = (f'["{text}"]' if word else "[1, 2]") if p.type is list else (f'{{"{text}": 1}}' if word else '{"a": 1}')
    raise ConfigError(
        f"parameter {key}={text!r} for {clf} is a {p.type.__name__}, given as JSON: e.g. --param '{key}={example}'"
    )


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
        if isinstance(same, (list, dict)):  # a registered list or dict parameter (an MLP's layers): attack 70 #3
            same = _setting(same)  # [8] and [8.0] are one setting; dict keys in any order (attack 71 #6)
        if same in seen:
            if texts is None:
                raise ConfigError(f"parameter {key} for {clf} lists {value!r} twice; give each value once")
            raise ConfigError(
                f"--param gives {clf}'s {key} the value {value!r} twice ({key}={texts[seen[same]]}, {key}={texts[i]}); "
                f"give each value once"
            )
        seen[same] = i
