"""A run folder's next version (``featstore.runs.write.add_split``, ``runs evaluate``): what it carries over from the
old one, and the lock two processes updating one run take turns on.

A new version holds run.json and predictions.npz written anew, plus the run's model files and the figures featstore
drew, carried over as hard links (or copies); anything else found in the folder (a user's file, a FIFO, a sparse
file, a temporary file of a featstore write not provably abandoned) is refused before anything is written, never
copied nor dropped.

>>> bool(_FIGURE.fullmatch("confusion_test.png")), bool(_FIGURE.fullmatch("notes.txt"))
(True, False)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from featstore.errors import StoreError
from featstore.leftovers import PRIVATE, STALE_AGE_S, TEMP, abandoned, remove_private, replace_with_new
from featstore.runs.files import PREDICTIONS, RECORD

logger = logging.getLogger(__name__)
TMP_MARKER = ".featstore-tmp"  # the marker file of featstore's temporary run folders (featstore.runs.write)


_FIGURE = re.compile(r"(confusion|reliability)_[^/]+\.png|curves\.png")  # the PNGs `runs show` draws into a run folder


def own_files(folder: Path, record: dict) -> list[str]:
    """The files of a run folder its new version carries over (run.json and predictions.npz are written anew): the
    model's files and the figures featstore drew, each a regular file. Anything else there is refused, before anything
    is written: it is not copied (a FIFO would block the copy, a sparse file become real data) nor dropped with the
    old version."""
    art = record.get("artifact") or {}
    model = {art[k] for k in ("file", "meta_file") if isinstance(art.get(k), str)}
    carried = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        path = folder / name
        if name == TMP_MARKER and not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            raise StoreError(
                f"{path} is not a regular file (a link, folder, FIFO or device); featstore marks the run's old version "
                f"with a file of that name while it writes the new one: remove {path} and run again"
            )
        if name in (RECORD, PREDICTIONS, TMP_MARKER) or (TEMP.fullmatch(name) and abandoned(entry) is not None):
            continue  # written anew; or a temporary file a killed featstore write left (what leftovers.sweep removes)
        if PRIVATE.fullmatch(name) and remove_private(folder, name) is not None:
            continue  # a killed featstore write's private folder (a figure's), removed as leftovers.sweep does
        if TEMP.fullmatch(name) or PRIVATE.fullmatch(name):
            raise StoreError(
                f"run folder {folder} holds {name!r}, a temporary file of a featstore write that may still be running "
                f"(another machine's, a running process's, or one modified less than "
                f"{STALE_AGE_S // 60} minutes ago); runs evaluate writes a new version of the folder with the run's "
                f"files only: wait for that write to end, or move {path} out of the folder, and run again"
            )
        if name not in model and not _FIGURE.fullmatch(name):
            raise StoreError(
                f"run folder {folder} holds {name!r}, which is not one of the run's files (run.json, predictions.npz, "
                f"its model, its figures); runs evaluate writes a new version of the folder with those only: move "
                f"{path} out of the folder and run again"
            )
        if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            raise StoreError(
                f"{path} is not a regular file (a link, folder, FIFO or device); refusing to copy it into the run's new "
                f"version. Remove it (`featstore runs show` draws the figures again) and run again"
            )
        carried.append(name)
    return carried


def write_marker(folder: Path, text: str) -> None:
    """``text`` as ``folder``'s TMP_MARKER (:func:`featstore.leftovers.replace_with_new`: a link, hard link or FIFO
    planted there is replaced, never written through, truncated or blocked on)."""
    replace_with_new(folder / TMP_MARKER, text)


def carry(src: Path, dst: Path) -> None:
    """``src`` into the new version as ``dst``: a hard link (no data copied; files in run folders are replaced by
    rename, never rewritten in place, so the two versions never share a change), else a copy of its bytes."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        shutil.copyfile(src, dst, follow_symlinks=False)


@contextlib.contextmanager
def run_lock(root: Path, run_id: str, wait: bool = True) -> Iterator[bool]:
    """A lock on one run of ``root`` (``<root>/.<id>.lock``, the ``filelock`` package, as the store's writer): held
    while a run is read, evaluated and given a new version, so two ``runs evaluate`` of one run take turns (the second
    waits, saying so, then reads the version the first wrote). No lock under ``featstore --no-locking``, nor in a
    folder where no lock file can be made (read-only: nothing can be written there either, and the write says so).
    Yields whether it is held (or needs not be); with ``wait=False`` False at once when another process holds it.
    The lock file is removed when the lock is released: left behind (a ``0644`` file of whoever ran first), it made
    every other user's lock on that run in a shared runs folder silently none (attack 34 #2)."""
    lock = root / f".{run_id}.lock"
    with file_lock(lock, f"run {run_id}", f"run {run_id} is being updated", wait, remove=True) as held:
        yield held


@contextlib.contextmanager
def file_lock(path: Path, what: str, busy: str, wait: bool = True, remove: bool = False) -> Iterator[bool]:
    """A lock (the ``filelock`` package) on ``what`` through the file ``path``, waiting (saying ``busy``) while another
    process holds it; yields True when held (or under ``featstore --no-locking``, or where no lock file can be made),
    False when ``wait`` is False and another process holds it. A link, folder or FIFO at ``path`` is refused, also one
    planted between the check and the lock's open (the held descriptor is checked). ``remove``: the lock file is removed while still held, so nothing stays beside the file it
    guards; a waiter that then holds the removed file's lock takes the new file's instead. Example::

        with file_lock(Path("f.h5.leaks.json.lock"), "leaks record f.h5.leaks.json", "it is being written"):
            ...  # read, change, write the record
    """
    from filelock import FileLock

    from featstore.store.locking import held_plain_file, locking_default

    while True:  # (checked again after a wait: a link swapped in meanwhile made the lock none, silently: attack 38 #7)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = stat.S_IFREG  # none yet (or unreadable: the lock's own open says why)
        if not stat.S_ISREG(mode):  # filelock (>= 3.30) opens with O_NOFOLLOW, without O_TRUNC; a FIFO is no lock file
            raise StoreError(
                f"{path} is not a regular file (a link, folder, FIFO or device); featstore locks {what} with a file "
                f"of that name: remove it and run again"
            )
        lock, held, shared = FileLock(str(path)), True, -1
        try:
            if locking_default() is not False:
                held = _acquire(lock, path, busy, wait, remove)
        except PermissionError as exc:
            if not os.path.lexists(path):  # a folder where no file can be made: nothing can be written there either
                logger.debug("no lock on %s (%s): %s", what, path, exc)
            else:  # another user's lock file: their command is running, or a kill left it
                shared, held = _shared(path, what, busy, wait, exc)
                if shared >= 0 and not _same(path, shared):
                    os.close(shared)  # removed by its holder while this one waited: lock the file at the name now
                    continue
        except OSError as exc:
            if exc.errno == errno.ELOOP or os.path.islink(path):
                continue  # a link put at the name since the check above: refused there, not run unlocked
            logger.debug("no lock on %s (%s): %s", what, path, exc)
        break
    second = shared >= 0 and os.fstat(shared).st_nlink > 1
    if (lock.is_locked and not held_plain_file(lock)) or second:  # planted since the lstat above, or a hard link
        lock.release()
        if shared >= 0:
            os.close(shared)
        raise StoreError(
            f"{path} is not featstore's lock file (a link, folder, FIFO or device, or a second name of another file); "
            f"featstore locks {what} with a file of that name: remove it and run again"
        )
    try:
        yield held
    finally:
        if lock.is_locked:
            if remove and _locks(lock, path):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # still held: a process opening the name now makes a new file
            lock.release()
        if shared >= 0:
            if remove and _same(path, shared):
                with contextlib.suppress(OSError):  # (in a sticky folder only its owner may: it stays, unlocked)
                    os.unlink(path)
            os.close(shared)  # which releases its lock


def _shared(path: Path, what: str, busy: str, wait: bool, exc: OSError) -> tuple[int, bool]:
    """A lock through a read-only descriptor of another user's lock file (``flock`` needs no write access: a ``0644``
    one of whoever ran first made a second user's command run unlocked beside the first, attack 36 #3): ``(fd, True)``
    once held, ``(-1, False)`` when ``wait`` is False and it is busy, ``(-1, True)`` with a warning where it cannot be
    read or locked either."""
    try:
        import fcntl

        fd = os.open(
            path,
            os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0),
        )
    except (ImportError, OSError):  # (no flock: Windows)
        _unopenable(path, what, exc)
        return -1, True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(
                f"{path} is not a regular file (a link, folder, FIFO or device); featstore locks {what} with a file "
                f"of that name: remove it and run again"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                return -1, False
            logger.warning("%s by another featstore process; waiting for it", busy)
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, True
    except OSError as again:  # (a network file system's flock may want a descriptor open for writing)
        os.close(fd)
        _unopenable(path, what, again)
        return -1, True
    except BaseException:
        os.close(fd)
        raise


def _same(path: Path, fd: int) -> bool:
    """Whether the file at ``path`` is the one open at ``fd``."""
    try:
        now, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _acquire(lock, path: Path, busy: str, wait: bool, remove: bool) -> bool:
    """Take ``lock`` (see :func:`file_lock`); False when ``wait`` is False and another process holds it."""
    from filelock import Timeout

    said = False
    while True:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                return False
            if not said:
                logger.warning("%s by another featstore process; waiting for it", busy)
                said = True
            lock.acquire()
        if not remove or _locks(lock, path):
            return True
        lock.release()  # the file it locked was removed by the holder before (filelock < 4 took it): lock the new one


def _locks(lock, path: Path) -> bool:
    """Whether the file ``lock`` holds is the one at ``path`` now."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    try:
        now, held = os.stat(path), os.fstat(fd)
    except (OSError, TypeError):
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _owner(path: Path) -> str:
    """The user name of the owner of ``path`` ("someone" where it cannot be seen)."""
    from featstore.linkrule import user

    try:
        return user(os.lstat(path).st_uid)
    except OSError:
        return "someone"


def _unopenable(path: Path, what: str, exc: OSError) -> None:
    """Warn that ``what`` goes unlocked: its lock file ``path`` is another user's, which this user may not lock."""
    logger.warning(
        "%s is not locked: %s is %s's lock file, which you may not lock (%s); two commands on it at once are not "
        "kept apart. A command of theirs on it may be running now (featstore removes the file when it ends); if none "
        "is, a killed one left it: ask them to remove it",
        what, path, _owner(path), exc.strerror,
    )  # fmt: skip
