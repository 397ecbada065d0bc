"""Before a write: is there room on the store's filesystem, and can the store be written at all.

Both checks refuse *before* any work, with both figures or the fix, so a run never fails half-way for a reason
that was visible at its start (a full disk mid-write is worse than a refusal).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.leftovers import PRIVATE, TEMP, remove_private, temp_stem
from featstore.outputs import is_hdf5_file
from featstore.sticky import owner_name
from featstore.store.attr_values import MAX_ATTR_BYTES, MAX_NAME_BYTES, MAX_NAMES
from featstore.store.strings import shown
from featstore.units import format_bytes

SPACE_MARGIN = 1 << 20  # room kept for HDF5 metadata on top of the data itself
_SCAN_LIMIT = 10_000  # folder entries the disk-space message looks at for featstore's leftovers


def ensure_space(path, nbytes: int, committed: int = 0) -> None:
    """Refuse to start a write that the store's filesystem has no room for (a full disk mid-write is worse)."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    free = shutil.disk_usage(folder).free
    if free < nbytes + SPACE_MARGIN:
        raise StoreError(
            f"not enough disk space for {path}: the next write needs about {format_bytes(nbytes + SPACE_MARGIN)}, "
            f"{format_bytes(free)} are free. Free some space or choose another --store, then re-run the same command"
            + (f": the {committed} rows already committed are kept and it resumes." if committed else ".")
            + _leftovers_note(folder)
        )


def compact_temporary(path: Path) -> Path:
    """Where :func:`featstore.store.compact.compact` copies store ``path`` before renaming the copy into place."""
    return path.with_name(f".{path.name}.compact.tmp")


def remove_compactions(path: Path) -> None:
    """Remove the private folders (:mod:`featstore.renames`) that killed compactions of store ``path`` left beside it,
    at any age once their process is gone (:func:`featstore.leftovers.remove_private`): a compaction runs under the
    store's writer lock, so no other one of it runs, and a half copy's room must not count against the next one's."""
    stem = temp_stem(path.name)
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if (match := PRIVATE.fullmatch(entry.name)) and match["name"] == stem:
                remove_private(path.parent, entry.name, fresh=True)


def _leftovers_note(folder: Path) -> str:
    """For the disk-space message: featstore's own leftovers in ``folder`` (a killed compaction's copy, a killed
    write's temporary file or private folder) with their sizes, so the user frees those first; "" when there are none."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for i, entry in enumerate(entries):
                if i >= _SCAN_LIMIT:
                    break
                name = entry.name
                if (name.startswith(".") and name.endswith(".compact.tmp")) or TEMP.fullmatch(name):
                    with contextlib.suppress(OSError):
                        if entry.is_file(follow_symlinks=False):
                            found.append((entry.stat(follow_symlinks=False).st_size, name))
                elif PRIVATE.fullmatch(name):  # a private folder of a killed (or running) write: what it holds
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            found.append((_held(entry.path), name))
    except OSError:
        return ""
    if not found:
        return ""
    found.sort(reverse=True)
    listed = ", ".join(f"{folder / name} ({format_bytes(size)})" for size, name in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (
        f" featstore's own temporary files are there: {listed}{more}; left by a killed (or a still running) "
        f"featstore: once no featstore command runs on that folder, remove them to free that space."
    )


def _held(folder: str) -> int:
    """The bytes of the regular files directly in ``folder`` (a private folder holds one temporary)."""
    with os.scandir(folder) as entries:
        return sum(e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False))


def refuse_unstorable_strings(class_names, attrs: dict | None) -> None:
    """Refuse, before a store is opened (``write_arrays``), strings that HDF5 cannot store or every reader refuses as
    damage (:mod:`featstore.store.strings`' bounds): class names not str, with a NUL or a surrogate, over
    MAX_NAME_BYTES each or more than MAX_NAMES; string attributes over MAX_ATTR_BYTES. One ConfigError naming it."""
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) > MAX_NAMES:
        got = f"{len(class_names):,} names" if isinstance(class_names, Sequence) else type(class_names).__name__
        raise ConfigError(f"write_arrays needs class_names a list of at most {MAX_NAMES:,} str, not {got}")
    for what, value, limit in [("class_names", class_names, MAX_NAME_BYTES)] + [
        (f"attrs[{k!r}]", v.reshape(-1).tolist() if isinstance(v, np.ndarray) else v, MAX_ATTR_BYTES)
        for k, v in (attrs or {}).items()
    ]:
        items = value if isinstance(value, (list, tuple)) else [value]
        if len(items) > MAX_NAMES:
            raise ConfigError(f"write_arrays: {what} holds {len(items):,} items, over the {MAX_NAMES:,} readers accept")
        for v in items:
            if what == "class_names" and not isinstance(v, str):
                raise ConfigError(f"write_arrays: class_names holds {type(v).__name__} {shown(repr(v))}, not a str")
            if isinstance(v, str) and (bad := _string_problem(v, limit)):
                raise ConfigError(f"write_arrays: {what} {bad}")


def _string_problem(value: str, limit: int) -> str | None:
    """Why a string given to a writer would be refused by HDF5 or by every reader (a NUL, a surrogate, over ``limit``
    bytes, :mod:`featstore.store.strings`' bounds), as the end of a sentence naming it; None when it can be stored."""
    if "\0" in value:
        return "holds a NUL character, which HDF5 strings cannot: remove it"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return (
            f"{value!r:.80} is not UTF-8 text (a lone surrogate, as os.fsdecode gives a non-UTF-8 file name): "
            f"pass valid text"
        )
    if size > limit:
        return f"is a string of {size:,} bytes, over the {limit:,} bytes every reader of a store accepts: shorten it"
    return None


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a store in a missing or read-only folder, or a file that is not HDF5."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(
            f"folder {parent} for store {path} does not exist; create it (mkdir -p {parent}) or choose another --store"
        )
    if path.exists():
        if not os.access(path, os.W_OK):
            if read_only_fs(path):
                raise StoreError(_mounted_read_only(path))
            raise StoreError(_read_only(path))
        # as the kernel resolves it (h5py.is_hdf5 takes abspath: "disk/.." dropped lexically, attack 33 #5)
        if not is_hdf5_file(path, follow=True):
            raise StoreError(f"{path} exists and is not an HDF5 file; choose another --store (nothing was written)")
    elif not os.access(parent, os.W_OK):
        if read_only_fs(parent):
            raise StoreError(_mounted_read_only(path))
        raise StoreError(f"folder {parent} is read-only; cannot create store {path}. Choose a writable --store")
    return path


def _read_only(path: Path) -> str:
    """The line for a store this user may not write: "chmod u+w" only where it is theirs (of a colleague's store,
    only he may chmod it: attack 34 #3)."""
    st = os.stat(path)
    if not hasattr(os, "geteuid") or st.st_uid == os.geteuid():
        return f"store {path} is read-only; make it writable (chmod u+w {path}) or choose another --store"
    owner = owner_name(st.st_uid)
    return (
        f"store {path} is {owner}'s and not writable by you (mode {stat.S_IMODE(st.st_mode):04o}): ask {owner} to make "
        f"it group-writable (chmod g+w) for a group of yours, or copy it into a folder of yours and pass that --store"
    )


def read_only_fs(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on a file system mounted read-only (``os.statvfs``'s ST_RDONLY), where ``chmod`` fails too."""
    try:
        return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):  # no statvfs (Windows), or not there
        return False


def _mounted_read_only(path: Path) -> str:
    """The line for a store on a read-only file system: no chmod can help there (it said "chmod u+w")."""
    return (
        f"store {path} is on a file system mounted read-only (a read-only mount or share); nothing can be written "
        f"there, chmod included. Use a --store path on a writable file system (copy the store there to add to it)"
    )
