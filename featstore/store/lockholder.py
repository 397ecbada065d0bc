"""Who writes a store now: the process holding its writer lock ``<store>.lock``, and the split (and extractor groups)
it records writing.

A writer records its pid, the split it writes and the groups it writes it in, in ``<store>.lock.pid``
(:func:`pid_text`; a live extract of ``resnet50/train`` hid a killed ``vgg16/train`` while only the split was
recorded, attack 71 #2). That file alone never
says a writer is live: a SIGKILLed extract leaves it, and its pid is soon any other process's (``check`` then took a
killed, incomplete split for a live extract's work, attack 70 #2). The lock itself says it: :func:`lock_held` tries it
without waiting, as the writer takes it, and lets it go at once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import dataclass

PID_FILE_BYTES = 64 << 10  # a pid, one split name and the extractor names it writes (featstore writes no more there)


def lock_name(path: str | os.PathLike) -> str:
    """``<store>.lock`` beside the store itself: a store reached through a symbolic link has one lock, whichever name
    a writer gives (``--store link.h5`` and ``--store real.h5`` both took a lock of their own and wrote together)."""
    return f"{os.path.realpath(path)}.lock"


@dataclass(frozen=True)
class Holder:
    """The process holding a store's writer lock: its ``pid``, the ``split`` it records writing and the extractor
    groups (``names``) it writes that split in (None: not recorded, as by a writer that writes no split, an older
    featstore's record without the groups, or a pid file that cannot be read)."""

    pid: int | None
    split: str | None
    names: tuple[str, ...] | None = None
    copies: bool | None = None  # whether it writes the split's augmented copies too (None: not recorded)
    stranger: str | None = None  # the user whose lock and pid file are not a writer's of this store (its record unread)

    def writes(self, name: str, split: str, copies: bool = False) -> bool:
        """Whether this writer records writing ``split`` (its augmented copies, for ``copies``) of extractor group
        ``name`` (groups, copies not recorded: any)."""
        return (
            self.split == split
            and (self.names is None or name in self.names)
            and (not copies or self.copies is not False)
        )


def pid_text(split: str | None, names=None, copies: bool = False) -> str:
    """What a writer records in ``<store>.lock.pid``: its pid, then the split it writes (a JSON string) when it has one,
    then the extractor groups it writes it in (a JSON list) when given, then whether it writes the split's augmented
    copies too (a live extract without --augment hid a killed one's copies, attack 73 #3).

    >>> pid_text("train", ["vgg16"]).splitlines()[1:]
    ['"train"', '["vgg16"]', 'false']
    """
    text = f"{os.getpid()}" + (f"\n{json.dumps(split)}" if split is not None else "")
    if split is None or names is None:
        return text
    return f"{text}\n{json.dumps(list(names))}\n{json.dumps(bool(copies))}"


def holder(path: str | os.PathLike) -> Holder | None:
    """The process holding the store's writer lock now (None: none holds it), with what its pid file records: read
    only where the lock file and the pid file are one user's, who may write the store (a colleague's planted lock and
    pid file in a shared folder hid a killed split for as long as he held it, attack 73 #4); else ``stranger``."""
    lock_path = lock_name(path)
    if not lock_held(lock_path):
        return None
    try:
        text, pid_uid = read_small(f"{lock_path}.pid", PID_FILE_BYTES, owner=True)
        lines = text.decode().splitlines()
        pid = int(lines[0].strip())
        split = json.loads(lines[1]) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return Holder(None, None)
    if (stranger := _stranger(path, lock_path, pid_uid)) is not None:
        return Holder(None, None, stranger=stranger)
    names, copies = _line(lines, 2), _line(lines, 3)  # unreadable: the split in any group, copies or not (older)
    names = tuple(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None
    return Holder(
        pid if pid > 0 else None,
        split if isinstance(split, str) else None,
        names,
        copies if isinstance(copies, bool) else None,
    )


def _line(lines: list[str], i: int):
    """The JSON value of line ``i`` of a pid file, or None (no such line, or one that cannot be read)."""
    try:
        return json.loads(lines[i]) if len(lines) > i else None
    except (ValueError, RecursionError):
        return None


def _stranger(path, lock_path: str, pid_uid: int) -> str | None:
    """The owner of the lock's record when it cannot be a writer's of the store ``path``: the pid file and the lock
    file are two users' (a writer that could not replace a colleague's pid file left his there), or their user may
    not write the store (neither its owner nor admitted by its group or other write bits); None when it can."""
    from featstore.sticky import owner_name

    try:
        lock_uid, store = os.stat(lock_path).st_uid, os.stat(path)
    except OSError:
        return None
    shared = store.st_mode & (stat.S_IWGRP | stat.S_IWOTH)  # a team's store: any of them may write it
    if pid_uid == lock_uid and (pid_uid == store.st_uid or shared):
        return None
    return owner_name(pid_uid)


def lock_holder(path: str | os.PathLike) -> int | None:
    """Pid of the process writing the store now: recorded in ``<store>.lock.pid`` by the process that holds the lock
    (None when none holds it, or its pid cannot be read)."""
    h = holder(path)
    return None if h is None else h.pid


def lock_held(lock_path: str) -> bool:
    """Whether a process holds the lock file ``lock_path`` now: locked without waiting, as the writer locks it (flock;
    filelock's own lock where there is no fcntl), and unlocked at once. No file there (or none this process may open),
    or a lock this filesystem cannot take: not held. Nothing is created or removed."""
    flags = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fcntl = __import__("fcntl")
    except ImportError:
        return _held_without_fcntl(lock_path)
    fd = -1
    for mode in (os.O_RDWR, os.O_RDONLY):  # read-write as the writer (NFS's emulated flock); else another user's
        with contextlib.suppress(OSError):
            fd = os.open(lock_path, mode | flags)
            break
    if fd < 0:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _held_without_fcntl(lock_path: str) -> bool:
    """:func:`lock_held` where there is no fcntl (Windows): filelock's own lock, tried without waiting."""
    from filelock import FileLock, Timeout

    if not os.path.isfile(lock_path):
        return False
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def read_small(path: str, limit: int = 64, owner: bool = False):
    """At most ``limit`` bytes of the regular file ``path``: a FIFO there (``info`` waited forever for a writer), a
    device, a link or a huge file (read whole: a MemoryError traceback) raises OSError instead. ``owner``: the bytes
    and the file's owner (its uid), of the file read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise OSError(f"{path} is not a writer's pid file")
        return (fh.read(limit), st.st_uid) if owner else fh.read(limit)
