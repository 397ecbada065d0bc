"""The Python API's argument check: every public function of ``featstore`` refuses a wrong type in one line.

``import featstore`` hands out each public function wrapped by :func:`checked`, which reads the function's own
annotations (``str | os.PathLike``, ``list[str]``, ``dict[str, list]``, ``int``, ``bool`` ...) and, before the function
runs, refuses an argument that is not one of them with an :class:`ArgumentError` naming the function, the argument
and what it takes: ``fit(5)``, ``fit(test=5)``, ``fit(params={"C": 1})`` or ``fewshot(shots=[2.5])`` were tracebacks
from deep inside, or silently changed (attack 54 #5, #6). The size arguments (``memory_budget``, ``max_bytes``) take
bytes or a size string ("512MB") and are checked as the command line checks ``--memory-budget``
(:func:`featstore.units.parse_bytes`), before any work. One string where a list belongs is one item
(``sweep(clfs="logreg")``, ``ensemble("id")``), never its characters. Annotations it does not know (a class such
as ``FinetuneConfig``) are left to the function.

>>> def f(store: str | os.PathLike, clfs: list[str] = ()):
...     return clfs
>>> checked(f)("s.h5", "logreg")
['logreg']
>>> checked(f)(5)
Traceback (most recent call last):
featstore.apiargs.ArgumentError: f(): store=5 is an int; give a path (a str or a pathlib.Path)
"""

from __future__ import annotations

import functools
import inspect
import operator
import os
import re
from collections.abc import Iterable, Mapping

from featstore.errors import ConfigError, check_seed
from featstore.units import parse_bytes

SIZES = frozenset({"memory_budget", "max_bytes"})  # bytes or a size string, as --memory-budget takes
_SIMPLE = {"str", "int", "float", "bool", "None", "os.PathLike", "dict", "list", "tuple"}
_WORDS = {
    "str": "a str",
    "int": "a whole number (an int)",
    "float": "a number",
    "bool": "True or False",
    "None": "None",
    "dict": "a dict",
}


class ArgumentError(ConfigError, TypeError):
    """A public function's argument of the wrong type (a ConfigError, and a TypeError as Python's own would be)."""


def checked(fn, name: str | None = None, types_only: bool = False):
    """``fn`` with its arguments checked against its annotations first (see the module); the same function otherwise.
    ``name``: what errors call it (a class's ``__init__``: the class), else the function's name; ``types_only``: the
    types alone, a seed's range being the function's own (ExtractorConfig: the command line's "--seed -1" line)."""
    sig, where = inspect.signature(fn), name or fn.__name__
    kinds = {p.name: _parse(p.annotation) for p in sig.parameters.values() if isinstance(p.annotation, str)}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:  # a missing or unknown argument: Python's own line, with the function named
            raise ArgumentError(f"{where}(): {exc}") from None
        for arg, value in bound.arguments.items():
            bound.arguments[arg] = check_argument(where, arg, value, kinds.get(arg), types_only)
        return fn(*bound.args, **bound.kwargs)

    return wrapper


def check_argument(where: str, name: str, value, kind: list | None, types_only: bool = False):
    """``value`` as ``where()``'s argument ``name`` takes it (a size parsed, one str as a one-item list), else an
    :class:`ArgumentError` naming it and what it takes; ``kind``: its parsed annotation (None: not checked)."""
    if name in SIZES and value is not None:
        ok, whole = _simple(value, "int", where, name)
        if not ok and not isinstance(value, str):
            raise _wrong(where, name, value, "bytes (an int) or a size such as '512MB'")
        size = parse_bytes(value if isinstance(value, str) else whole, f"{_at(where)}{name}")
        if size <= 0:
            raise ArgumentError(f"{_at(where)}{name}={value!r} must be more than 0 bytes; give e.g. '512MB'")
        return value if kind and "str" in kind else size  # parsed by the function itself: its own words keep the text
    if (
        name == "seed" and value is not None and not types_only
    ):  # (augment_seed has its own bound, 2**31 - 1, checked by extract)
        try:  # numpy and scikit-learn take 0 ... 2**32 - 1 (iter_batches(seed=-1) was numpy's ValueError: 54 #5)
            check_seed(value, f"{_at(where)}{name}")
        except ConfigError as exc:
            raise ArgumentError(str(exc)) from None
    if kind is None:
        return value
    ok, fixed = _match(value, kind, where, name)
    if not ok:
        raise _wrong(where, name, value, _describe(kind))
    return fixed


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_type(where: str, name: str, value, annotation: str):
    """:func:`check_argument` with the annotation as written (``"str | os.PathLike"``), for a class's argument;
    ``where``: the function's name, or "" to name the argument alone."""
    return check_argument(where, name, value, _parse(annotation))


def _wrong(where: str, name: str, value, takes: str) -> ArgumentError:
    what = "None" if value is None else _a(type(value).__name__)
    return ArgumentError(f"{_at(where)}{name}={_shown(value)} is {what}; give {takes}")


def _at(where: str) -> str:
    return f"{where}(): " if where else ""


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiouAEIOU' else 'a'} {word}"


def _split(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` outside brackets."""
    parts, depth, at = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[at:i].strip())
            at = i + 1
    return [*parts, text[at:].strip()]


def _parse(text: str) -> list | None:
    """An annotation as a list of alternatives: ``"str"``, ``("list", item)``, ``("dict", value)``; None when any
    alternative is a name this module does not check (a class), so the function checks it itself."""
    out = []
    for alt in _split(text, "|"):
        m = re.fullmatch(r"(list|tuple|Sequence|dict)\[(.*)\]", alt)
        if m and m.group(1) == "dict":
            key_value = _split(m.group(2), ",")
            value = _parse(key_value[1]) if len(key_value) == 2 and key_value[0] == "str" else None
            if value is None and len(key_value) == 2 and key_value[1] != "list":
                return None
            out.append(("dict", value if value is not None else [("list", None)]))
        elif m:
            item = _split(m.group(2), ",")[0]
            parsed = _parse(item)
            if parsed is None:
                return None
            out.append(("list", parsed))
        elif alt in _SIMPLE:
            out.append(("list", None) if alt in ("list", "tuple") else alt)
        else:
            return None
    return out


def _describe(kind: list) -> str:
    words = []
    for alt in kind:
        if alt == "os.PathLike":
            words = [w for w in words if w != "a str"]
            words.append("a path (a str or a pathlib.Path)")
        elif alt == "str" and any(a == "os.PathLike" for a in kind):
            continue
        elif isinstance(alt, tuple) and alt[0] == "list":
            words.append("a list" + (f" of {_plural(alt[1])}" if alt[1] else ""))
        elif isinstance(alt, tuple):
            words.append("a dict of names to lists of values, e.g. {'C': [0.1, 1.0]}" if _listy(alt[1]) else "a dict")
        else:
            words.append(_WORDS[alt])
    return " or ".join(dict.fromkeys(words))


def _plural(kind: list) -> str:
    """The items of a list in words: "str items", "whole numbers", "paths"."""
    plural = {"str": "str items", "int": "whole numbers", "float": "numbers", "os.PathLike": "paths", "None": "None"}
    return " or ".join(
        dict.fromkeys(plural.get(a, "values") for a in kind if not (a == "str" and "os.PathLike" in kind))
    )


def _listy(kind) -> bool:
    return bool(kind) and all(isinstance(a, tuple) and a[0] == "list" for a in kind)


def _match(value, kind: list, where: str, name: str) -> tuple[bool, object]:
    """``(whether value is one of kind's alternatives, the value to pass)``; an item of a list or dict that is wrong
    raises, naming it (``shots[0]``, ``params['C']``)."""
    for alt in kind:
        if isinstance(alt, str):
            ok, plain = _simple(value, alt, where, name)
            if ok:
                return True, plain
        elif alt[0] == "dict" and isinstance(value, Mapping):
            fixed = {}  # each value as it was checked: a generator read by the check is passed on as its list (55 #3)
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _wrong(where, f"{name} key {key!r}", key, "names (str keys)")
                value_kind = alt[1]
                ok, fixed[key] = _match(item, value_kind, where, f"{name}[{key!r}]")
                if not ok:
                    example = f", e.g. [{item!r}]" if _listy(value_kind) else ""
                    raise _wrong(where, f"{name}[{key!r}]", item, _describe(value_kind) + example)
            return True, value if all(fixed[k] is v for k, v in value.items()) else fixed
        elif alt[0] == "list":
            items = _items(value, alt[1])
            if items is None:
                continue
            if alt[1] is None:  # items of any kind (a parameter's values): numpy's scalars as Python's (60 #6)
                plain = [_python(v) for v in items]
                return True, value if items is value and all(a is b for a, b in zip(plain, items)) else plain
            fixed = []
            for i, item in enumerate(items):
                ok, one = _match(item, alt[1], where, f"{name}[{i}]")
                if not ok:
                    raise _wrong(where, f"{name}[{i}]", item, _describe(alt[1]))
                fixed.append(one)
            if items is value and all(a is b for a, b in zip(fixed, items)):  # the caller's own list: an out-parameter
                return True, value  # (show_run's unsaved) filled in a copy was lost (attack 57 #10)
            return True, fixed if isinstance(items, list) else tuple(fixed)
    return False, value


def _items(value, item_kind) -> list | tuple | None:
    """``value`` as a list's items: a list or tuple as it is, another iterable (a generator) as a list, one str (or
    path, where items are paths) as a one-item list; None for anything else (a number, a dict, bytes)."""
    if isinstance(value, (list, tuple)):
        return value
    one = item_kind is not None and any(a in ("str", "os.PathLike") for a in item_kind)
    if isinstance(value, (str, os.PathLike)):
        return [value] if one else None
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        return None
    return list(value)


def _simple(value, alt: str, where: str, name: str) -> tuple[bool, object]:
    """``(whether value is alt, the value to pass)``: a numpy whole number or float is passed on as Python's int or
    float (``json.dumps`` and ``isinstance(x, int)`` behind the check refused ``np.int64``: attack 57 #1, #2, #4), and
    an array is never a number (``np.array([2.5])`` has ``__index__``: 57 #3)."""
    if alt == "None":
        return value is None, value
    if alt in ("str", "dict"):
        return isinstance(value, str if alt == "str" else Mapping), value
    if alt == "os.PathLike":
        return isinstance(value, os.PathLike) and isinstance(os.fspath(value), str), value
    if alt == "bool":
        return isinstance(value, bool) or _numpy_bool(value), bool(value) if _numpy_bool(value) else value
    if isinstance(value, (bool, str, bytes, bytearray)) or _numpy_bool(value) or getattr(value, "ndim", 0) != 0:
        return False, value
    if alt == "int":
        try:
            whole = operator.index(value)
        except TypeError:
            return False, value
        return True, value if type(value) is int else whole
    if alt == "float":
        try:
            number = float(value)  # inf and NaN are the function's to refuse, in its own words
        except OverflowError:
            raise ArgumentError(
                f"{_at(where)}{name}={_shown(value)} is too large for a number; give a finite number"
            ) from None
        except (TypeError, ValueError):  # not a number at all: "is a ndarray; give a number" (57 #5)
            return False, value
        return True, value if type(value) in (int, float) else number
    return False, value


def _numpy_bool(value) -> bool:
    """numpy's bool (``np.bool_``; its class is named ``bool`` since numpy 2, so ``np.False_`` was refused as "a bool;
    give True or False")."""
    return type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")


def _python(value):
    """A numpy scalar as Python's value (a longdouble as a float), anything else as it is."""
    if type(value).__module__ != "numpy" or not hasattr(value, "item") or getattr(value, "ndim", 1) != 0:
        return value
    plain = value.item()
    return float(plain) if type(plain).__module__ == "numpy" else plain
