"""How a store file is opened and locked: one process-wide setting, one store object a command opens through.

Two kinds of lock guard a store. HDF5's own file lock (h5py's ``locking=``) makes a reader wait while a writer has
the file open and the other way round; featstore's ``<store>.lock`` (the ``filelock`` package) keeps a second
*writer* out for a whole extraction. ``featstore --no-locking`` (:func:`set_locking` ``(False)``) turns both off for
filesystems whose locks do not work (some NFS and Lustre mounts); ``HDF5_USE_FILE_LOCKING=FALSE`` does the same.

A command opens its store once as a :class:`StoreFile`: the path with the locking resolved (the process setting, or
the command's own ``locking=``), which every step of the command opens the file through. It never holds the HDF5
file open between steps, so a fit can read one split while another process appends another.

>>> store = StoreFile("features.h5")                 # doctest: +SKIP
>>> with store.lock(), store.open("a") as f: ...     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import h5py

from featstore.apiargs import check_type
from featstore.errors import ConfigError, StoreBusyError, StoreError, check_paths
from featstore.leftovers import replace_with_new
from featstore.outputs import hdf5_signed, resolved, terminal_safe
from featstore.store.links import (  # noqa: F401 (links_on, refuse_hard_linked: re-exported for tests)
    full_path,
    links_on,
    named,
    open_checked,
    refuse_foreign_link,
    refuse_hard_linked,
    side_name,
    swapped,
    too_long,
    user,
)
from featstore.store.lockholder import lock_holder, pid_text
from featstore.store.lockholder import lock_name as _lock_name

_SETTING: dict = {"locking": None}  # None = HDF5's default (honours HDF5_USE_FILE_LOCKING)


def set_locking(value: bool | None) -> None:
    """Process-wide file locking for featstore: False for filesystems without working locks (some NFS/Lustre).

    Also turns off featstore's own ``<store>.lock`` writer lock, so two writers on one store are then
    the user's responsibility.
    """
    _SETTING["locking"] = value


def locking_default() -> bool | None:
    """The locking value set by :func:`set_locking` (None = HDF5's default)."""
    return _SETTING["locking"]


def lock_timeout() -> float:
    """Seconds to wait for a store another process holds: ``FEATSTORE_LOCK_TIMEOUT`` (default 120), checked when used."""
    text = os.environ.get("FEATSTORE_LOCK_TIMEOUT", "120")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(
            f"FEATSTORE_LOCK_TIMEOUT={text!r} is not a number of seconds; set it to e.g. 120, or unset it"
        )
    return value


def _is_lock_error(exc: OSError) -> bool:
    text = str(exc).lower()
    return (
        "unable to lock" in text
        or "resource temporarily unavailable" in text
        or getattr(exc, "errno", None) == errno.EAGAIN
    )


# The formats of HDF5 1.8 (readable by every HDF5 since 2008), for a split whose attributes may exceed 64 KiB (dense
# attribute storage): with the earliest format, objects' header messages are capped at 64 KiB, and a split's class_names
# over ~4,090 names (16-byte heap IDs) failed: "object header message is too large" (iNaturalist has 10,000 classes,
# ImageNet-21k 21,841; attack 21). Other stores keep the earliest format.
DENSE_ATTRS_LIBVER = ("v108", "latest")
DENSE_ATTRS_NAMES = 1_000  # a split of more class names is created with them


@contextlib.contextmanager
def open_h5(
    path: str | os.PathLike, mode: str = "r", *, locking=None, timeout: float | None = None, libver=None, expect=None
) -> Iterator[h5py.File]:
    """Open an HDF5 file, waiting up to ``timeout`` s (FEATSTORE_LOCK_TIMEOUT) while another process writes it.

    ``locking`` None: the process setting (:func:`set_locking`). ``libver``: h5py's bounds of the formats of the
    objects created (None: the earliest; :data:`DENSE_ATTRS_LIBVER` for attributes over 64 KiB). ``expect``: for a
    write, the ``stat`` of the file the writer's lock checked, which the name must still reach (else refused unopened).
    """
    locking = locking_default() if locking is None else locking
    kwargs = {} if locking is None else {"locking": locking}
    timeout = lock_timeout() if timeout is None else timeout
    if libver is not None:
        kwargs["libver"] = libver
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:  # the very file the name reaches through this user's own links: checked on what was opened (attack 28 #1)
            f, alias, fd = open_checked(path, mode, kwargs, expect)
            break
        except FileNotFoundError:
            raise StoreError(
                f"store {path} does not exist; create it with `featstore extract ... --store {path}`"
            ) from None
        except OSError as exc:
            if not _is_lock_error(exc):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            if time.monotonic() > deadline:
                raise StoreBusyError(
                    f"store {path} stayed locked by another process for {timeout:.0f} s; wait for it to finish "
                    f"(or set FEATSTORE_LOCK_TIMEOUT). On a filesystem without working locks use locking=False "
                    f"(HDF5_USE_FILE_LOCKING=FALSE)."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        yield f
    except Exception as exc:
        if alias:
            named(exc, path)  # messages quote f.filename: the user's name for the store, not /proc/self/fd/N
        raise
    finally:
        f.close()
        if fd >= 0:
            os.close(fd)  # held while HDF5 has the file: f.filename names it (os.path.getsize(f.filename))


class StoreFile:
    """One store as a command sees it: its path and its locking, resolved once; every opening goes through it.

    ``locking`` None takes the process setting at construction (:func:`set_locking`); True/False override it for
    this store only. Example::

        store = StoreFile("features.h5")
        with store.lock():                 # the writer's lock, for the whole command
            with store.open("a") as f: ...  # one step of it
    """

    def __init__(self, path: str | os.PathLike, locking: bool | None = None):
        check_paths(required=True, store=path)  # before Path(): Path("") is the current folder
        check_type("", "store", path, "str | os.PathLike")  # FeatureStore(5): pathlib's TypeError (attack 54 #5)
        self.path = Path(path)
        full_path(self.path)  # a relative name from a removed working folder: said so (it names nothing)
        for _ in range(3):
            try:
                resolved(self.path, "store", StoreError)  # a symbolic-link loop: said so, not "does not exist"
                break
            except OSError as exc:  # EINVAL: a link on the way renamed over between its lstat and its readlink
                if exc.errno != errno.EINVAL:
                    raise
        else:
            raise swapped(self.path, wrote=False)
        self.locking = locking_default() if locking is None else locking
        self.checked: os.stat_result | None = None  # the file the writer's lock checked (:meth:`lock`)
        self.locked = False  # within :meth:`lock`

    def __repr__(self) -> str:
        return f"StoreFile({str(self.path)!r}, locking={self.locking!r})"

    def exists(self) -> bool:
        """Whether the file is there yet."""
        return self.path.exists()

    def refuse_unreadable(self) -> None:
        """Refuse, in one line with the fix, a store that is missing, not a regular file, or not HDF5: what every reader
        says before it opens the file (``check`` says it before listing what it finds inside)."""
        if self.path.exists() and not self.path.is_file():  # a FIFO, folder or device: it exists, extract won't help
            raise StoreError(
                f"store {self.path} is not a regular file (a folder, FIFO or device); pass the .h5 store written by "
                f"`featstore extract`"
            )
        if not self.path.is_file():
            raise StoreError(
                f"store {self.path} does not exist; create it with `featstore extract --store {self.path}`"
            )
        try:  # (h5py.is_hdf5 answers False for a path the system refuses: a store in a 4 KB-deep folder, attack 28 #10)
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            why = too_long(self.path) if exc.errno == errno.ENAMETOOLONG else f"{exc.strerror}: fix what it names"
            raise StoreError(f"store {self.path} cannot be opened: {why}") from None
        try:
            if not hdf5_signed(fd):  # (a FIFO swapped in since the check above: not read, not waited on)
                raise StoreError(f"{self.path} is not an HDF5 file; pass the .h5 store written by `featstore extract`")
        except OSError as exc:
            raise StoreError(f"store {self.path} cannot be read ({exc.strerror}): fix what it names") from None
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open(self, mode: str = "r", *, timeout: float | None = None, libver=None) -> Iterator[h5py.File]:
        """The HDF5 file, open for one step (a context manager); waits while another process holds it. While the
        writer's lock is held, a write opens only the file the lock checked (or, with no store then, the one this run
        made first): a colleague's own file renamed onto the name mid-run got the run's rows (attack 28)."""
        held = self.locked and mode != "r"
        with open_h5(
            self.path, mode, locking=self.locking, timeout=timeout, libver=libver, expect=self.checked if held else None
        ) as f:
            if held and self.checked is None:
                self.checked = os.fstat(f.id.get_vfd_handle())  # the store this run made: every later write opens it
            yield f

    @contextlib.contextmanager
    def read_if_exists(self) -> Iterator[h5py.File | None]:
        """The file open for reading, or None when there is no store yet (a first extraction)."""
        if not self.exists():
            yield None
            return
        with self.open("r") as f:
            yield f

    @contextlib.contextmanager
    def lock(self, writing: str | None = None, names=None, copies: bool = False) -> Iterator[None]:
        """The writer's lock, ``<store>.lock`` (see :func:`writer_lock`; ``writing``: the split it writes, and ``names``
        the extractor groups it writes it in, ``copies`` whether its augmented copies too, recorded for ``check``); :attr:`checked` is the ``lstat`` of the file the name reached when the lock checked it (None: no
        store yet), which a resume's compaction reads."""
        with writer_lock(self.path, self.locking, writing, names, copies) as self.checked:
            self.locked = True
            try:
                yield
            finally:
                self.checked, self.locked = None, False

    def h5py_kwargs(self) -> dict:
        """Keyword arguments for an ``h5py.File`` of this store's kind (a temporary file beside it)."""
        return {} if self.locking is None else {"locking": self.locking}


# seconds a writer waits for a held lock: far past the instant `check` holds it to probe it (lockholder.lock_held)
LOCK_PROBE_GRACE = 0.2
LOCK_FILES = {".lock": "lock file", ".lock.pid": "lock's pid file"}  # the side files a writer makes beside a store


@contextlib.contextmanager
def writer_lock(
    path: str | os.PathLike, locking=None, writing: str | None = None, names=None, copies: bool = False
) -> Iterator[os.stat_result | None]:
    """Hold ``<store>.lock`` for a whole extraction: a second writer gets a clear error, not a corrupt file.

    Uses the ``filelock`` package (flock on POSIX, msvcrt on Windows). The lock file is empty (the writer's pid goes
    to ``<store>.lock.pid``, with ``writing``, the split it writes, and ``names``, its extractor groups, which ``check``
    reads) and is removed when the lock
    is released, also after a failure; a SIGKILLed writer leaves it behind, unlocked and harmless (the next run takes
    it over). Anything else at that name (a link, FIFO, folder, a file with bytes or a second name) is refused, named,
    never locked nor removed; so is a store file with a second name (:func:`refuse_hard_linked`). Gives the ``lstat``
    of the store file the name reached (None: no store yet).
    """
    from filelock import FileLock, Timeout

    locking = locking_default() if locking is None else locking
    checked = refuse_foreign_link(path)  # before any work: nothing is written through another user's link
    refuse_hard_linked(path)  # before any work: every writing opening (open_h5) refuses it too
    if locking is False or os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        yield checked  # --no-locking: the filesystem's locks are not trusted; one writer per store is up to the user
        return
    lock_path = _lock_name(path)
    too_long_name = side_name(path, LOCK_FILES)  # (before any work: the lock is taken before the extraction)
    if too_long_name is not None:
        raise StoreError(f"cannot lock store {terminal_safe(str(path))}: {too_long_name}")
    _refuse_foreign_lock(lock_path)
    lock = FileLock(lock_path, timeout=0)
    try:  # (a moment's wait: `check` and `info` lock it for an instant to see whether a writer holds it)
        lock.acquire(timeout=LOCK_PROBE_GRACE, poll_interval=LOCK_PROBE_GRACE / 10)
    except Timeout:
        raise StoreBusyError(
            f"another featstore process (pid {lock_holder(path) or 'unknown'}) is writing to {path}; wait for "
            f"it to finish, or write to another --store"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link planted since the check above
            _refuse_foreign_lock(lock_path)
        if exc.errno == errno.ENAMETOOLONG:  # the message would quote a 4 KB path twice (attack 28 #10)
            raise StoreError(f"cannot lock store {path}: {too_long(lock_path)}") from None
        raise StoreError(f"cannot lock {lock_path} ({exc}); {_lock_fix(exc, lock_path)}") from exc
    if not held_plain_file(lock):  # a FIFO or device planted between the check above and the lock's open
        lock.release()
        _refuse_foreign_lock(lock_path)
        raise StoreError(f"{terminal_safe(lock_path)} was replaced while it was being locked; run again")
    pid_path = f"{lock_path}.pid"
    try:
        _write_pid(pid_path, writing, names, copies)
        yield checked
    finally:
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        with contextlib.suppress(OSError):
            if not os.path.islink(pid_path):
                os.unlink(pid_path)
            if fd is not None and os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                os.unlink(
                    lock_path
                )  # still ours and still locked: a process that opens it now finds it gone and makes its own
        lock.release()


# errnos of a lock call that mean the filesystem's locks do not work (some NFS and Lustre mounts): only these are
# answered with --no-locking; a folder the user cannot write (EACCES, EPERM, EROFS) is not one (attack 23 #12)
NO_LOCKS_ERRNOS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


def _lock_fix(exc: OSError, lock_path: str) -> str:
    """What to do when ``<store>.lock`` cannot be made or locked, by the lock call's errno."""
    folder = terminal_safe(os.path.dirname(lock_path) or ".")
    if exc.errno in NO_LOCKS_ERRNOS:
        return (
            "this filesystem's locks do not work (some NFS and Lustre mounts): run `featstore --no-locking ...` "
            "(one writer per store is then up to you)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        owner = _other_users_file(lock_path)
        if owner is not None:  # the folder is writable: the lock file is someone else's (attack 26 #4)
            sticky = os.stat(os.path.dirname(lock_path) or ".").st_mode & stat.S_ISVTX
            how = (  # in a sticky folder only its owner (or the folder's) may remove it (attack 27 #7)
                f"ask {owner} to remove it" if sticky else f"remove it (rm {shlex.quote(lock_path)})"
            )
            return (
                f"that lock file is {owner}'s and you may not write it: a featstore run of {owner} may be writing "
                f"this store (or was killed and left it); once none runs, {how}, then run again"
            )
        return (
            f"you cannot write in the folder {folder}, where the store's lock and its resumes' copies go: make it "
            f"writable by you, or copy the store to a folder you can write and pass that --store"
        )
    if exc.errno == errno.EROFS:
        return f"{folder} is on a read-only filesystem: copy the store to a folder you can write and pass that --store"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk (or your quota) of {folder} is full: free some space, then run again"
    return "fix what the error names, then run again"


def _other_users_file(path: str) -> str | None:
    """The owner (name, else uid) of ``path`` when it is a file of another user in a folder this user can write; else
    None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if st.st_uid == os.geteuid() or not os.access(os.path.dirname(path) or ".", os.W_OK):
        return None
    return user(st.st_uid)


def held_plain_file(lock) -> bool:
    """Whether the file a held ``lock`` (filelock) has open is a regular file of one name: what was checked at its name
    may have been replaced by a FIFO or device before filelock opened it, or be a hard link to another file (a
    colleague's link to the store at a run's lock name: the lock held the store's inode, and the store's own HDF5 lock
    then waited on it, attack 38 #4)."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    try:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and st.st_nlink <= 1
    except (OSError, TypeError):
        return True  # no descriptor to look at (a soft lock): its file was made by filelock itself


def _refuse_foreign_lock(lock_path: str) -> None:
    """Refuse a ``<store>.lock`` that featstore did not make: a link (filelock's O_NOFOLLOW open failed with ELOOP,
    told as "make the folder writable, or run --no-locking"), a FIFO, folder or device (locked, then deleted on
    release), or a file with bytes or a second name (featstore's is empty, and it deletes its own on release)."""
    try:
        st = os.lstat(lock_path)
    except FileNotFoundError:
        return
    except OSError:
        return  # filelock's own open says what is wrong
    if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_nlink == 1:
        return  # featstore's (a killed writer's leftover, or a live writer's: the lock itself tells them apart)
    what = (
        "a symbolic link"
        if stat.S_ISLNK(st.st_mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(st.st_mode)
        else "a folder"
        if stat.S_ISDIR(st.st_mode)
        else f"a file with {st.st_nlink} names"
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1
        else f"a file of {st.st_size} bytes"
        if stat.S_ISREG(st.st_mode)
        else "a device or socket"
    )
    raise StoreError(
        f"{terminal_safe(lock_path)} is {what}, not featstore's lock file (an empty file it makes and removes); "
        f"featstore keeps one writer per store with a file of that name: move it away or remove it "
        f"(rm {shlex.quote(lock_path)}), then run again"
    )


def _write_pid(pid_path: str, writing: str | None = None, names=None, copies: bool = False) -> None:
    """Record the writer's pid (and the split it is ``writing``) beside the lock; never through a link planted there: a new file renamed onto the name
    (:func:`featstore.leftovers.replace_with_new`), so a hard link planted there keeps its own bytes (O_TRUNC wrote the
    pid into it)."""
    with contextlib.suppress(OSError):
        if os.path.islink(pid_path) or (os.path.exists(pid_path) and not os.path.isfile(pid_path)):
            return  # not ours: leave it; `info` then cannot name the writer, nothing else changes
        replace_with_new(pid_path, pid_text(writing, names, copies), 0o644)
