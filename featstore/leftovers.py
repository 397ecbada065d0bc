"""Temporary files of featstore's single-file writes, named so that one left by a killed process can be proven so.

:func:`featstore.outputs.write_atomic` and :func:`featstore.caches.write_cached` write into a hidden temporary file
beside the name, then rename it; a SIGKILL in between left ``.x.csv.XXXXXXXX.tmp`` (up to the whole output's size)
for ever. The temporary name now carries its writer: ``.<name>.fs<pid>-<host>-<random>.tmp`` (``host``: 16 hex digits of
a digest of this machine's name, so that a large cluster's nodes do not share one). :func:`sweep` removes, once per
folder and process, only the files that are provably such leftovers: that pattern, this machine's tag, a process id
that no longer runs here, not modified for STALE_AGE_S (a writer in another PID namespace on this host, a container,
has a pid that does not run here; writing keeps its file's mtime fresh), a regular file (not a link) owned by this
user. Anything else (another machine's, a live writer's, a file merely named alike by someone else, one with the
6-digit tag of earlier versions) is left alone. Outputs and compactions write in a private folder instead
(:mod:`featstore.renames`, :func:`private_name`): a killed one's goes alike, when it is this user's, no one else may
write it and it holds only its temporary (:func:`remove_private`).

>>> bool(TEMP.fullmatch(temp_prefix("x.csv") + "abc_12.tmp"))
True
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import socket
import stat
import time

TEMP = re.compile(r"\.(?P<name>.+)\.fs(?P<pid>[0-9]{1,10})-(?P<host>[0-9a-f]{6}|[0-9a-f]{16})-[0-9a-z_]{1,32}\.tmp")
# the private folder of one write (:mod:`featstore.renames`): 0700, holding only ``.<name>`` + one of PRIVATE_FILES
PRIVATE = re.compile(r"\.(?P<name>.+)\.fs(?P<pid>[0-9]{1,10})-(?P<host>[0-9a-f]{16})-[0-9a-f]{6}\.featstore-tmp")
PRIVATE_FILES = (".tmp", ".compact.tmp")  # a write's temporary in its private folder, a compaction's
STALE_AGE_S = 600  # a gone process's temporary file is removed only once unmodified this long (another PID namespace)
_swept: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the folders swept by this process


@functools.cache
def host_tag() -> str:
    """16 hex digits naming this machine in temporary names (process ids are per machine). Earlier versions wrote 6,
    which TEMP still matches: such a file is never this machine's, so never removed. Computed once per process (it
    was a digest per temporary file and per folder entry a sweep looked at)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:16]


NAME_MAX = 255  # bytes in one file name (Linux's and macOS's file systems)
_RANDOM_ROOM = 16 + len(".tmp")  # what follows the prefix: a random part (up to 16 characters here) and ".tmp", or
# 6 hex digits and ".featstore-tmp" (a private folder's name: :func:`private_name`)
_TAIL_ROOM = len(".fs--") + 10 + 16  # the longest pid and the host tag: a name is cut alike by every process


def temp_prefix(name: str) -> str:
    """The start of a temporary file's name for ``name`` written by this process; a random part and ``.tmp`` follow.
    A name too long to take the ~40 bytes this adds is cut (:func:`temp_stem`): any name the file system takes can be
    written, and the writer's pid and host tag stay in the name.

    >>> len(os.fsencode(temp_prefix("b" * 250))) + 16 + 4 <= NAME_MAX
    True
    """
    return f".{temp_stem(name)}{_tail()}"


def temp_stem(name: str) -> str:
    """``name`` as temporary names carry it: whole where it leaves room for the rest, else cut (at a character) and
    given ``~`` and 8 hex digits of its digest, so two long names still differ.

    >>> temp_stem("train.csv")
    'train.csv'
    >>> stem = temp_stem("é" * 200)  # 400 bytes
    >>> stem[-9:-8], len(os.fsencode(stem)) + _TAIL_ROOM + _RANDOM_ROOM + 1 <= NAME_MAX
    ('~', True)
    """
    raw = os.fsencode(name)
    room = NAME_MAX - _RANDOM_ROOM - _TAIL_ROOM - 1  # 1: the leading dot
    if len(raw) <= room:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:8]
    keep = room - 1 - len(digest)
    while keep > 0 and raw[keep] & 0xC0 == 0x80:  # not inside a UTF-8 character
        keep -= 1
    return os.fsdecode(raw[:keep]) + "~" + digest


def private_name(name: str) -> str:
    """A new name for the private folder of one write of ``name`` (:data:`PRIVATE`): :func:`temp_prefix`, 6 random hex
    digits and ``.featstore-tmp``, in NAME_MAX bytes whatever ``name`` is.

    >>> bool(PRIVATE.fullmatch(private_name("x" * 255)))
    True
    """
    return f"{temp_prefix(name)}{secrets.token_hex(3)}.featstore-tmp"


def _tail() -> str:
    return f".fs{os.getpid()}-{host_tag()}-"


def sweep(folder: str | os.PathLike | int) -> list[tuple[str, int]]:
    """Remove the temporary files that killed featstore writes left in ``folder`` (a path, or a folder's descriptor);
    ``[(name, bytes)]`` of those removed. Each folder is looked at once per process; nothing else is ever removed."""
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in _swept:
            return []
        _swept.add((st.st_dev, st.st_ino))
        removed = []
        with os.scandir(folder) as entries:
            for entry in entries:
                size = abandoned(entry)
                if size is None and PRIVATE.fullmatch(entry.name):
                    size = remove_private(folder, entry.name)  # removed there and then, when a killed write's
                    if size is not None:
                        removed.append((entry.name, size))
                    continue
                if size is not None:
                    try:
                        os.unlink(entry.name, dir_fd=folder) if isinstance(folder, int) else os.unlink(entry.path)
                    except FileNotFoundError:
                        continue  # removed meanwhile (another featstore sweeping)
                    removed.append((entry.name, size))
        return removed
    except OSError:
        return []  # a folder that cannot be listed or written: the write itself says what is wrong


def abandoned(entry: os.DirEntry) -> int | None:
    """The size of ``entry`` when it is a temporary file of a featstore write on this machine whose process is gone,
    unmodified for STALE_AGE_S, a regular file of this user; else None. What :func:`sweep` removes, and what
    ``runs evaluate`` leaves out of a run's new version."""
    match = TEMP.fullmatch(entry.name)
    if match is None or match["host"] != host_tag() or int(match["pid"]) == os.getpid():
        return None
    st = entry.stat(follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or time.time() - st.st_mtime < STALE_AGE_S:
        return None
    if not writer_gone(int(match["pid"]), match["host"]):
        return None
    return st.st_size


def remove_private(folder: str | os.PathLike | int, name: str, fresh: bool = False) -> int | None:
    """Remove the private folder ``name`` (:data:`PRIVATE`) of a killed featstore write from ``folder`` (a path or a
    folder's descriptor); the bytes it held, or None when it is left alone: unless it is this machine's, its writer is
    gone (:func:`writer_gone`), it is a folder (not a link) of this user that no one else may write, holding only its
    temporary (regular files of this user named after it: :data:`PRIVATE_FILES`), unmodified for STALE_AGE_S
    (``fresh``: at any age, for a compaction that holds its store's writer lock)."""
    match = PRIVATE.fullmatch(name)
    if match is None or writer_gone(int(match["pid"]), match["host"]) is not True:
        return None
    at, where = (folder, name) if isinstance(folder, int) else (None, os.path.join(folder, name))
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(where, flags, dir_fd=at)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        inside, size, newest = os.listdir(fd), 0, st.st_mtime
        for file in inside:
            fst = os.stat(file, dir_fd=fd, follow_symlinks=False)
            if file not in [f".{match['name']}{s}" for s in PRIVATE_FILES] or not stat.S_ISREG(fst.st_mode):
                return None
            if fst.st_uid != os.geteuid():
                return None
            size, newest = size + fst.st_size, max(newest, fst.st_mtime)
        if not fresh and time.time() - newest < STALE_AGE_S:
            return None
        for file in inside:
            os.unlink(file, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:  # by name: a folder swapped in meanwhile is removed only if empty (rmdir), and is nobody's loss
        os.rmdir(where, dir_fd=at)
    except OSError:
        pass
    return size


def writer_gone(pid: object, host: object) -> bool | None:
    """Whether the featstore process ``pid`` of the machine tagged ``host`` (:func:`host_tag`), which wrote something
    left behind, is provably gone: True (this machine's, and no process ``pid`` runs here), None (it runs here: its
    leftover is its own business), False (it cannot be told: another machine's, or no pid recorded). Every remover of
    featstore's leftovers (temporary files, scratch folders, export shards, a run moved aside) asks this, and removes
    only what is also unmodified for STALE_AGE_S: a writer in another PID namespace looks gone here."""
    if host != host_tag() or isinstance(pid, bool) or not isinstance(pid, int):
        return False
    return None if pid == os.getpid() or running(pid) else True


def last_touched(path: str | os.PathLike) -> float:
    """The newest modification time of the folder ``path`` and of its direct entries: a folder's own time changes only
    when an entry is made or removed, not while its owner writes into one (a shard, a report's thumbnails)."""
    newest = os.lstat(path).st_mtime
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return newest


def running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one we may not signal runs too; a pid os.kill cannot even take
    is never called gone): what removes featstore's own leftovers (temporary files, scratch folders) asks this."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True
    return True


def replace_with_new(path: str | os.PathLike, text: str, mode: int = 0o666) -> None:
    """``text`` as the file ``path``: written into a new temporary file beside it (O_EXCL, O_NOFOLLOW; named by
    :func:`temp_prefix`, so a kill leaves one :func:`sweep` can prove abandoned) and renamed onto the name. A link,
    hard link or FIFO planted at ``path`` is replaced, never written through, truncated or blocked on."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f"{temp_prefix(name)}{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # renamed: nothing left (or never made)
