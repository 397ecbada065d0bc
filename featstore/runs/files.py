"""The files of a run folder, treated as untrusted: plain names, regular files, recorded sha256, sane zips, bounded reads.

A run folder ``<runs>/<id>/`` holds ``run.json``, the fitted model and ``predictions.npz``; ``run.json`` records
the sha256 of the other files. Everything named by a folder is checked before it is read: names must be plain
names (no separators, not starting with a dot), files regular files inside the folder (not links, FIFOs or
devices), ``run.json`` no larger than ``MAX_RECORD_BYTES`` (checked with ``fstat`` before it is read) nor holding
more than ``MAX_RECORD_CONTAINERS`` objects and lists or ``MAX_RECORD_VALUES`` values (counted before it is parsed), other
files of the recorded sha256, and zips of sane declared sizes (``featstore.safezip``). Every refusal is a
``BrokenRunError`` that names the file and the fix.

>>> valid_name("logreg-1a2b3c"), valid_name("../x"), valid_name(".")
(True, False, False)
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.safezip import check_zip
from featstore.units import format_bytes

RECORD = "run.json"
PREDICTIONS = "predictions.npz"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # run ids and split names: no separators, not "." or ".."
# A run.json of 1,000 classes (three confusion matrices of 10^6 counts, one per line) is about 25 MB; larger is crafted.
MAX_RECORD_BYTES = 64 << 20
# What a run.json parses into is bounded too: a compact "[{},{},...]" of 64 MiB is 21 M dicts (1.8 GB). featstore
# writes run.json with one value per line (indent=1), so a record within MAX_RECORD_BYTES holds at most ~1.6 M
# containers ({ or [, a packed confusion cell is one) and ~8 M values; brackets and commas inside strings count too.
MAX_RECORD_CONTAINERS = 2_000_000
MAX_RECORD_VALUES = 8_000_000


class BrokenRunError(StoreError):
    """A run folder that cannot be used (damaged, incomplete or crafted); the message names the file and the fix."""


def valid_name(name: object) -> bool:
    """True for a plain name usable in a file name: letters, digits, ``._-``, not starting with a dot."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    from featstore.models.weights import sha256_file

    return sha256_file(path)


def regular_file(folder: Path, name: object, what: str) -> Path:
    """``folder/name`` after checking that ``name`` is a plain name and the file a regular file (not a link, FIFO or device)."""
    if not valid_name(name):
        raise BrokenRunError(
            f"{folder / RECORD} names {what} {name!r}, which is not a plain file name; refusing to read it. "
            f"Remove the run folder {folder}."
        )
    path = folder / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BrokenRunError(
            f"{what} {path} is missing; the run folder is incomplete. Remove {folder} and fit again."
        ) from None
    if not stat.S_ISREG(mode):
        raise BrokenRunError(
            f"{what} {path} is not a regular file (a link, folder or device); refusing to read it. Remove {folder}."
        )
    return path


def verify_file(folder: Path, name: object, expected: object, what: str) -> Path:
    """``folder/name`` after checking that it is a regular file whose sha256 is the recorded one."""
    path = regular_file(folder, name, what)
    got = sha256_of(path)
    if got != expected:
        raise BrokenRunError(
            f"{what} {path} has sha256 {got[:12]}, the run recorded {str(expected)[:12]}: it was changed "
            f"after the fit. Refusing to load it; fit the classifier again."
        )
    return path


def read_record_json(folder: Path) -> object:
    """The parsed ``run.json`` of a run folder: a real folder, a regular file, at most MAX_RECORD_BYTES (fstat, before reading)."""
    try:
        is_folder = stat.S_ISDIR(os.lstat(folder).st_mode)  # a link to a folder is no run folder
    except OSError:
        is_folder = False
    if not is_folder:
        raise BrokenRunError(
            f"{folder} is a link or not a folder; run folders must be real folders inside the runs folder. Remove it."
        )
    path = folder / RECORD
    try:  # O_NOFOLLOW: a link is refused by the open itself; O_NONBLOCK: a FIFO cannot block it
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise BrokenRunError(
            f"run record {path} is missing; the run folder is incomplete. Remove {folder} and fit again."
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            regular_file(folder, RECORD, "run record")  # raises: not a regular file
        raise BrokenRunError(f"run record {path} cannot be opened ({exc.strerror or exc}); remove {folder}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BrokenRunError(
                f"run record {path} is not a regular file (a link, folder or device); refusing to read it. Remove {folder}."
            )
        if st.st_size > MAX_RECORD_BYTES:
            raise BrokenRunError(
                f"run record {path} is {format_bytes(st.st_size)}, more than the {format_bytes(MAX_RECORD_BYTES)} "
                f"featstore ever writes; refusing to read it. Remove the folder {folder} or restore its run.json."
            )
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_RECORD_BYTES:  # grew after the fstat
        raise BrokenRunError(f"run record {path} is larger than {format_bytes(MAX_RECORD_BYTES)}; remove {folder}")
    _check_parse_size(data, path, folder)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8, an integer over Python's 4,300 digits
        if "integer string conversion" in str(exc):
            exc = "an integer longer than 4,300 digits"
        raise BrokenRunError(
            f"{folder / RECORD} is not valid JSON ({exc}); remove the folder {folder} or restore it"
        ) from None


def _check_parse_size(data: bytes, path: Path, folder: Path) -> None:
    """BrokenRunError when ``data`` would parse into more objects than any run.json featstore writes (counted over the
    bytes before parsing: ``{``/``[`` open a container, ``,`` separates values), whatever its size in bytes."""
    containers, values = data.count(b"{") + data.count(b"["), data.count(b",")
    if containers > MAX_RECORD_CONTAINERS or values > MAX_RECORD_VALUES:
        raise BrokenRunError(
            f"run record {path} holds {containers:,} JSON objects and lists and {values:,} values, more than the "
            f"{MAX_RECORD_CONTAINERS:,} and {MAX_RECORD_VALUES:,} featstore ever writes; refusing to parse it. Remove "
            f"the folder {folder} or restore its run.json."
        )


def check_zip_file(path: Path, what: str, folder: Path, kind: str, any_size: bool = False) -> None:
    """BrokenRunError unless ``path`` is a zip whose declared sizes are sane (``safezip.check_zip``: no zip bombs);
    ``any_size``: no cap on one member's size (a file read in blocks), the ratio rules kept."""
    try:
        check_zip(path, None) if any_size else check_zip(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BrokenRunError(
            f"{what} {path} cannot be read: it is not a readable {kind} ({exc}); refusing to load it. "
            f"Remove the folder {folder} and fit again."
        ) from None
    except ValueError as exc:
        raise BrokenRunError(f"{what} {path} is refused: {exc}. Remove the folder {folder} and fit again.") from None


def output_path(folder: Path, name: str) -> Path:
    """Where to write ``name`` inside ``folder``: a plain name, not through a link, resolved inside the folder."""
    if not valid_name(name):
        raise BrokenRunError(f"refusing to write {name!r} into {folder}: not a plain file name")
    path = folder / name
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise BrokenRunError(
            f"{path} is a link or leads outside {folder}; refusing to write through it. Remove it and retry."
        )
    return path


def json_default(o):
    """numpy scalars and arrays as plain JSON values (``json.dumps(..., default=json_default)``)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
