"""The files of a run folder, treated as untrusted: plain names, regular files, recorded sha256, sane zips, bounded reads.

A run folder ``<runs>/<id>/`` holds ``run.json``, the fitted model and ``predictions.npz``; ``run.json`` records
the sha256 of the other files. Everything named by a folder is checked before it is read: names must be plain
names (no separators, not starting with a dot), files regular files inside the folder (not links, FIFOs or
devices), ``run.json`` no larger than ``MAX_RECORD_BYTES`` (checked with ``fstat`` before it is read) nor holding
more than ``MAX_RECORD_CONTAINERS`` objects and lists or ``MAX_RECORD_VALUES`` values (counted before it is parsed), other
files of the recorded sha256 (each opened once and bounded before it is hashed: its recorded size, a cap, no holes),
and zips of sane declared sizes (``featstore.safezip``). Every refusal is a ``BrokenRunError`` that names the file
and the fix.

>>> valid_name("logreg-1a2b3c"), valid_name("../x"), valid_name(".")
(True, False, False)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from featstore.errors import OutputError, StoreError
from featstore.output_images import regular_fd
from featstore.safetext import terminal_safe
from featstore.safezip import check_zip
from featstore.sticky import ahead, owner_name, share_fix, theirs
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


# featstore writes every file of a run folder front to back, never seeking past its end: none is sparse. A file of
# more than SPARSE_MIN_BYTES with under 1/SPARSE_RATIO of its size allocated on disk (st_blocks * 512) is a hole
# someone made (`truncate -s 1T`), refused before it is hashed. The ratio is conservative on purpose: a compressing
# file system (btrfs, ZFS) reports the compressed blocks, and a model's floats compress 1.1-3x, its int arrays maybe
# 10x; no file featstore writes compresses 64x. Below 64 MiB a hole costs under 0.1 s of hashing: not looked at.
SPARSE_MIN_BYTES = 64 << 20
SPARSE_RATIO = 64


class BrokenRunError(StoreError):
    """A run folder that cannot be used (damaged, incomplete or crafted); the message names the file and the fix.

    Given as ``BrokenRunError(problem, fix)`` (every refusal of a record's contents), ``problem`` keeps the line without
    its fix: a record featstore refuses while writing it has no folder to remove (runs/write.py says the problem alone).

    >>> BrokenRunError("r/run.json: kind 'x' is unknown", "remove the folder r").problem
    "r/run.json: kind 'x' is unknown"
    """

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem if fix is None else f"{problem}; {fix}")
        self.problem = problem


class UnreadableRun(BrokenRunError):
    """A run of another user's that this user may not read: intact for its owner, and not this user's to remove."""


def not_opened(exc: OSError, path: Path, what: str, folder: Path) -> BrokenRunError:
    """The line for a run's file ``path`` that cannot be opened: another user's file (or run folder) this user may not
    read is said as theirs, with sharing as the fix (attack 36 #10: "remove <his run folder>", of his intact run, which
    a group-writable runs folder let her do); else the reason, with removal."""
    if exc.errno == errno.EACCES:
        for seen in (path, folder):
            st = theirs(seen)
            if st is not None:
                owner = owner_name(st.st_uid)
                return UnreadableRun(
                    f"{what} {path} is {owner}'s and not readable by you ({seen}: mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"ask {owner} to share the run ({share_fix(os.lstat(folder), folder, 'rX')}), or use runs of yours"
                )
    return BrokenRunError(f"{what} {path} cannot be opened ({exc.strerror or exc}); remove {folder}")


def valid_name(name: object) -> bool:
    """True for a plain name usable in a file name: letters, digits, ``._-``, not starting with a dot."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file (one featstore just wrote; a run folder's files are verified by :func:`verify_file`)."""
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


def open_regular(path: Path, what: str, folder: Path) -> int:
    """A read-only descriptor of the regular file at ``path``, opened once: a link, FIFO, device or folder renamed onto
    the name since :func:`regular_file` looked is refused (never followed, waited on, nor a device's driver opened:
    ``O_PATH`` first where there is one, :func:`featstore.output_images.regular_fd`)."""
    try:
        fd = regular_fd(path)  # never through a link at the name, never waited on
    except FileNotFoundError:
        raise BrokenRunError(
            f"{what} {path} is missing; the run folder is incomplete. Remove {folder} and fit again."
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise not_opened(exc, path, what, folder) from None
        fd = None
    if fd is None:
        raise BrokenRunError(
            f"{what} {path} is not a regular file (a link, folder, FIFO or device put there since featstore looked at "
            f"it); refusing to read it. Remove {folder}."
        )
    return fd


def check_size(
    st: os.stat_result, path: Path, what: str, folder: Path, size: int | None = None, cap: int | None = None
) -> None:
    """BrokenRunError unless the file of ``st`` has the recorded ``size`` (when one is), is at most ``cap`` bytes (when
    given) and is not sparse (see SPARSE_RATIO): what bounds hashing it, looked at before a byte is read."""
    fix = f"Remove the folder {folder} and fit again."
    if size is not None and st.st_size != size:
        raise BrokenRunError(
            f"{what} {path} is {st.st_size:,} bytes, the run recorded {size:,}: it was changed after the fit. "
            f"Refusing to read it. {fix}"
        )
    if cap is not None and st.st_size > cap:
        raise BrokenRunError(
            f"{what} {path} is {format_bytes(st.st_size)}, more than the {format_bytes(cap)} featstore ever writes; "
            f"refusing to read it. {fix}"
        )
    allocated = getattr(st, "st_blocks", None)
    if allocated is not None and st.st_size > SPARSE_MIN_BYTES and allocated * 512 * SPARSE_RATIO < st.st_size:
        raise BrokenRunError(
            f"{what} {path} is a sparse file ({format_bytes(st.st_size)} with {format_bytes(allocated * 512)} on "
            f"disk), which featstore never writes: it was altered after the fit. Refusing to read it. {fix}"
        )


def verify_file(
    folder: Path,
    name: object,
    expected: object,
    what: str,
    size: int | None = None,
    cap: int | None = None,
    held: Path | None = None,
) -> Path:
    """``folder/name`` after checking that it is a regular file whose sha256 is the recorded one.

    Opened once (never through a link, never waited on: a FIFO renamed onto the name after :func:`regular_file` looked
    is refused, not read) and bounded from its ``fstat`` before a byte is hashed (:func:`check_size`): ``size``, the
    recorded size if any; ``cap``, the most bytes a file of its kind may hold; a sparse file is refused. Then hashed
    from that descriptor (attack 35 #3: a sparse 1 TiB model file was hashed for ~17 min). ``held``: a name of the file
    the caller holds open to load it (:func:`featstore.models.held_input.held_input`): refused unless the file hashed
    is that very file (attack 35 #4: a file renamed onto the name between the check and the load was loaded)."""
    path = regular_file(folder, name, what)
    fd = open_regular(path, what, folder)
    try:
        st = os.fstat(fd)
        if held is not None and not _same_file(st, held):
            raise BrokenRunError(
                f"{what} {path} was replaced while featstore read it (someone can rename entries in the run folder); "
                f"nothing was loaded. Run again, or keep the runs folder where only you can write"
            )
        check_size(st, path, what, folder, size, cap)
        with open(fd, "rb", closefd=False) as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
    finally:
        os.close(fd)
    if got != expected:
        raise BrokenRunError(
            f"{what} {path} has sha256 {got[:12]}, the run recorded {str(expected)[:12]}: it was changed "
            f"after the fit. Refusing to load it; fit the classifier again."
        )
    return path


def _same_file(st: os.stat_result, other: Path) -> bool:
    """Whether ``st`` is the file ``other`` leads to."""
    try:
        now = os.stat(other)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


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
        raise not_opened(exc, path, "run record", folder) from None
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
        return loads_bounded(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8, an integer over 308 digits (_json_int)
        raise BrokenRunError(
            f"{folder / RECORD} is not valid JSON ({exc}); remove the folder {folder} or restore it"
        ) from None


def _json_int(text: str) -> int:
    """json's parse_int hook for run.json: an integer a float can hold (every figure featstore writes; attack 80 #2: a
    401-digit one passed the schema's checks and ended `featstore runs` in an OverflowError).

    >>> _json_int("-12"), len(str(_json_int("9" * 308)))
    (-12, 308)
    """
    if len(text.lstrip("-")) > 308:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits, more than any float holds")
    return int(text)


def loads_bounded(text: str | bytes) -> object:
    """``json.loads`` with integers a float holds (:func:`_json_int`: ValueError past 308 digits), for every JSON file
    of a runs folder (run.json, sweep summaries)."""
    return json.loads(text, parse_int=_json_int)


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


def output_path(folder: Path, name: str, elsewhere: str | None = None) -> Path:
    """Where to write ``name`` inside ``folder``: a plain name, not through a link, resolved inside the folder. A link
    there is an OutputError (the caller's figures are still shown; only this file is not written) whose fix is one
    the user can take: in a shared folder with the sticky bit, a colleague's link cannot be removed by the user, so it
    names its owner and ``elsewhere`` (the option that writes the file at another path, e.g. ``--out``), never
    "Remove it" (attack 68 #8)."""
    if not valid_name(name):
        raise BrokenRunError(f"refusing to write {name!r} into {folder}: not a plain file name")
    path = folder / name
    if not path.is_symlink() and path.resolve().parent == folder.resolve():
        return path
    other = f"pass {elsewhere} PATH (a path of yours) to write it elsewhere" if elsewhere else None
    stuck = ahead(path) if path.is_symlink() else None
    if stuck is not None:
        how = f"{other}, or ask {stuck.owner} to remove it" if other else f"ask {stuck.owner} to remove it"
        raise OutputError(stuck.line(f"it is a link, and featstore never writes through one: {how}"))
    mine = theirs(path) is None
    whose_link = "" if mine else f" ({owner_name(os.lstat(path).st_uid)}'s)"
    raise OutputError(
        f"{terminal_safe(str(path))} is a link{whose_link} or leads outside {terminal_safe(str(folder))}; refusing to "
        f"write through it. Remove it and retry{', or ' + other if other else ''}"
    )


def json_default(o):
    """numpy scalars and arrays as plain JSON values (``json.dumps(..., default=json_default)``)."""
    if isinstance(o, np.generic):
        plain = o.item()  # a longdouble's item() is a longdouble again: json recursed to a RecursionError (60 #6)
        return (
            float(plain) if isinstance(plain, np.floating) else plain if not isinstance(plain, np.generic) else str(o)
        )
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
