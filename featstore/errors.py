"""Errors that featstore raises on purpose.

Every message names what went wrong *and* what the user can do about it. The CLI turns any
:class:`FeatstoreError` into that message and exit code 1; anything else is a bug.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import PurePath


class FeatstoreError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(FeatstoreError, ValueError):
    """An option has an unknown name or an invalid value."""


class DataError(FeatstoreError):
    """The image folders are missing or do not have the expected layout."""


class WeightsError(FeatstoreError):
    """Weights cannot be found, fetched or loaded into the chosen model."""


class StoreError(FeatstoreError):
    """The HDF5 store cannot be written or read, or does not match the request."""


class StoreBusyError(StoreError):
    """Another process holds the store."""


class OutputError(FeatstoreError, OSError):
    """An output file (CSV, Parquet, npz, PNG, JSON, a run folder) cannot be written where asked; nothing was written there."""


class NotWritten(OutputError):
    """One file's write failed and left nothing at its path: ``why`` (the file and the cause), then "Nothing was
    written there", then ``then`` (what else to do, if anything). A caller writing many files (the report site) says
    what the others are from ``why`` and ``then``, not by rewriting the line (attack 48 L2).

    >>> str(NotWritten("cannot write x.png: the disk is full"))
    'cannot write x.png: the disk is full. Nothing was written there.'
    >>> str(NotWritten("cannot write x.png: a link", "; or run with --runtime keras"))
    'cannot write x.png: a link. Nothing was written there; or run with --runtime keras'
    """

    def __init__(self, why: str, then: str = "") -> None:
        self.why, self.then = why.rstrip().rstrip("."), then
        super().__init__(f"{self.why}. Nothing was written there{then or '.'}")

    def __reduce__(self):  # pickled across processes (loky, Ray) with both parts
        return type(self), (self.why, self.then)


def choices_error(kind: str, value: object, valid: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown name that lists the valid ones.

    >>> str(choices_error("model", "vgg17", ["vgg16", "vgg19"]))
    "unknown model 'vgg17'; choose one of: vgg16, vgg19"
    """
    return ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(valid)}")


MAX_BATCH = 2**31 - 1  # --batch-size: stored as an HDF5 integer attribute, and a count itertools accepts
MAX_SEED = 2**32 - 1  # numpy's legacy seeding and scikit-learn's random_state take 32 bits
MAX_JOBS = 256  # --jobs: loky starts every worker process up front, so 100000 exhausted the machine's memory


def check_seed(value: object, option: str = "--seed") -> int:
    """``value`` as a seed numpy and scikit-learn accept (0 ... 2**32 - 1), else a ConfigError naming ``option``.

    >>> check_seed(7)
    7
    """
    if isinstance(value, bool) or not hasattr(value, "__index__") or not 0 <= value.__index__() <= MAX_SEED:
        raise ConfigError(f"{option} {value!r}: give an integer from 0 to {MAX_SEED}")
    return value.__index__()


def check_jobs(value: object, option: str = "--jobs") -> int:
    """``value`` as a count of parallel jobs (fits, or the report's layout threads; 1 ... :data:`MAX_JOBS`), else a
    ConfigError naming ``option``.

    >>> check_jobs(2)
    2
    """
    if isinstance(value, bool) or not hasattr(value, "__index__") or not 1 <= value.__index__() <= MAX_JOBS:
        raise ConfigError(f"{option} {value!r}: give a number of parallel jobs from 1 to {MAX_JOBS}")
    return value.__index__()


def check_names(what: str, required: bool = False, give: str | None = None, **names: object) -> None:
    """ConfigError naming the first argument of ``names`` that is an empty or all-space ``what`` name (a split, run,
    layer, extractor...), or a list holding one: ``fit(validation="")`` chose by cross-validation and
    ``extract(..., name="")`` took the default name, where the command line refuses the empty value. Pass each
    argument under the name the caller gave it (``layer=``, not the ``cut_layers`` it becomes: attack 22). ``required``:
    the arguments have no default to fall back on; ``give``: what to give instead (default "a/an <what> name").

    >>> check_names("split", train="train", validation=None)
    >>> check_names("split", validation="")
    Traceback (most recent call last):
    featstore.errors.ConfigError: validation='' is an empty split name (an unset variable?); give a split name, or leave validation out for its default
    """
    for argument, value in names.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            empty = "holds an empty" if isinstance(value, (list, tuple)) else "is an empty"
            default = "" if required else f", or leave {argument} out for its default"
            give = give or f"{'an' if what[:1] in 'aeiou' else 'a'} {what} name"  # "an extractor name"
            raise ConfigError(f"{argument}={value!r} {empty} {what} name (an unset variable?); give {give}{default}")


def check_paths(required: bool = False, **paths: object) -> None:
    """ConfigError naming the first argument of ``paths`` that is an empty or all-space path (a ``str``, or an
    ``os.PathLike`` whose ``os.fspath`` is one), or a list's item that is one: ``extract("", "train")`` read ``./train``,
    ``predict(run, [""])`` predicted the images of the current folder and ``fit(runs="")`` recorded into the default
    runs folder, where the command line refuses the empty value. Check the argument as given: ``Path("")`` is already
    ``Path(".")``. ``required``: the arguments have no default to fall back on.

    >>> check_paths(data="images", runs=None)
    >>> check_paths(runs="")
    Traceback (most recent call last):
    featstore.errors.ConfigError: runs='' is an empty path (an unset variable?); give a path, or omit runs= for its default
    """
    for argument, value in paths.items():
        items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            if _empty_path(v):  # a list's item by its index: the list may hold thousands
                where = argument if i is None else f"{argument}[{i}]"
                default = "" if required else f", or omit {argument}= for its default"
                raise ConfigError(f"{where}={v!r} is an empty path (an unset variable?); give a path{default}")


def _empty_path(value: object) -> bool:
    if isinstance(value, os.PathLike) and not isinstance(value, PurePath):  # a Path from "" is "." by now
        value = os.fspath(value)
    return isinstance(value, str) and not value.strip()


def renamed_argument(where: str, old: str, new: str, old_value, new_value, default=None):
    """The value of a renamed keyword argument: ``new_value``, or the old keyword's with a DeprecationWarning
    (a ConfigError when both are given).

    >>> renamed_argument("extract", "workers", "decode_threads", None, 4)
    4
    """
    if old_value is None:
        return new_value
    if new_value is not default and new_value != default:
        raise ConfigError(f"{where}(): give {new}= only ({old}= is its old name), not both")
    import warnings

    warnings.warn(f"{where}(): {old}= is now {new}=", DeprecationWarning, stacklevel=3)
    return old_value
