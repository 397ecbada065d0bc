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

    def writes(self, name: str, split: str) -> bool:
        """Whether this writer records writing ``split`` of extractor group ``name`` (groups not recorded: any)."""
        return self.split == split and (self.names is None or name in self.names)


def pid_text(split: str | None, names=None) -> str:
    """What a writer records in ``<store>.lock.pid``: its pid, then the split it writes (a JSON string) when it has one,
    then the extractor groups it writes it in (a JSON list) when given.

    >>> pid_text("train", ["vgg16"]).splitlines()[1:]
    ['"train"', '["vgg16"]']
    """
    text = f"{os.getpid()}" + (f"\n{json.dumps(split)}" if split is not None else "")
    return text + (f"\n{json.dumps(list(names))}" if split is not None and names is not None else "")


def holder(path: str | os.PathLike) -> Holder | None:
    """The process holding the store's writer lock now (None: none holds it), with what its pid file records."""
    lock_path = lock_name(path)
    if not lock_held(lock_path):
        return None
    try:
        lines = read_small(f"{lock_path}.pid", PID_FILE_BYTES).decode().splitlines()
        pid = int(lines[0].strip())
        split = json.loads(lines[1]) if len(lines) > 1 else None
    except (OSError, ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return Holder(None, None)
    try:  # a groups line that cannot be read: the split in any group (as an older featstore's record)
        names = json.loads(lines[2]) if len(lines) > 2 else None
    except (ValueError, RecursionError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        names = None
    return Holder(
        pid if pid > 0 else None, split if isinstance(split, str) else None, None if names is None else tuple(names)
    )


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


def read_small(path: str, limit: int = 64) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``: a FIFO there (``info`` waited forever for a writer), a
    device, a link or a huge file (read whole: a MemoryError traceback) raises OSError instead."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise OSError(f"{path} is not a writer's pid file")
        return fh.read(limit)
