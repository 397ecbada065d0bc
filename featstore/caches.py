"""The caches featstore keeps beside a store (``<store>.cache/`` and its ``thumbs/``, ``maps/``, ``onnx/``): made, checked
and written through directory file descriptors, never by name.

Each level below the store's folder is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to the level above it
(``os.open(name, ..., dir_fd=parent)``), so a symbolic link at any level is refused, and one swapped in after the
check is never followed: the temporary file is made with ``O_EXCL | O_NOFOLLOW`` in the folder that was opened, and
renamed there (``os.replace(..., src_dir_fd=, dst_dir_fd=)``). A level featstore did not make itself is not trusted: one
owned by another user, or writable by the group or others (featstore makes its folders ``0700``), is refused with
:class:`CacheNotTrusted`, which the callers that fall back to a private temporary cache when no folder can be made
there (``report``, ``similar --html``, ``predict --runtime onnx``) treat the same way.

>>> CACHE_MODE
448
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from featstore import sticky
from featstore.errors import NotWritten, OutputError
from featstore.leftovers import sweep, temp_prefix
from featstore.modes import unusable
from featstore.outputs import output_fix, say_swept, terminal_safe
from featstore.renames import PARENT
from featstore.sticky import owner_name

CACHE_MODE = 0o700  # a cache folder featstore makes: this user's only (thumbnails of a private store's images were readable by all)
# Windows has no O_NOFOLLOW, O_DIRECTORY nor dir_fd: there each level is checked by name (lstat) and files are written
# with featstore.outputs.write_atomic, and folders are not checked for their owner
FD_SAFE = hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd
AGAIN = "the cache is made again"  # what removing a cache folder costs (``again=``: the similarity index says its own)
_OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_DIR |= getattr(os, "O_CLOEXEC", 0)


class CacheNotMade(OutputError):
    """A cache folder that cannot be made (no link or file in its way): a read-only folder, a full disk. ``cause``: the
    OSError, ``level``: the folder that could not be made (None when not known)."""

    cause: OSError | None = None
    level: Path | None = None


class CacheNotTrusted(CacheNotMade):
    """A cache folder featstore did not make: owned by another user, or writable by the group or others."""


class NotRegular(ValueError):
    """A cached file that is not a regular file of at most its bound (:func:`open_regular`): a link, FIFO, device,
    folder or socket at its name (``link``: a symbolic link), or more bytes than featstore writes there (``size``)."""

    link = False
    size: int | None = None


_OPEN_FILE = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN_FILE |= getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | os.PathLike, limit: int | None = None) -> tuple[int, os.stat_result] | None:
    """``(descriptor, its fstat)`` of the cached file ``path``, opened once (``O_NOFOLLOW | O_NONBLOCK``) and checked
    on that descriptor to be a regular file of at most ``limit`` bytes; None when there is none. :class:`NotRegular`
    otherwise, never a wait: a check by name (lstat, is_file) followed by a second, blocking open by name waited for
    ever on a FIFO renamed there in between (attack 22: ``similar``'s index.json, ``report``'s leak pairs). Other
    OSErrors are raised. The caller closes the descriptor; :func:`read_small` reads a small file whole."""
    path = Path(path)
    if not hasattr(os, "O_NOFOLLOW") and os.path.islink(path):  # Windows: no O_NOFOLLOW (nor FIFOs)
        raise _not_regular(path, link=True)
    try:
        fd = os.open(path, _OPEN_FILE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):  # O_NOFOLLOW met a link (ELOOP; EMLINK on BSDs)
            raise _not_regular(path, link=True) from None
        raise
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and (limit is None or st.st_size <= limit):
        return fd, st
    os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path)
    raise _not_regular(path, size=st.st_size, limit=limit)


def open_cached(path: str | os.PathLike, limit: int | None = None):
    """:func:`open_regular` as a binary file object (closing it closes the descriptor); FileNotFoundError when there is
    none. Example::

        with open_cached("features.h5.cache/maps/map-1.npz") as fh, zipfile.ZipFile(fh) as z: ...
    """
    if (opened := open_regular(path, limit)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path))
    return os.fdopen(opened[0], "rb")


def read_small(path: str | os.PathLike, limit: int, read: bool = True) -> bytes | None:
    """The bytes of the small cached file ``path`` (a record, a note, a thumbnail: at most ``limit`` bytes), read from
    the one descriptor :func:`open_regular` opened and checked; None when there is none (``read`` False: b"" once
    checked, nothing read). :class:`NotRegular` for a link, FIFO, device or folder at its name, or a larger file.

    >>> read_small("features.h5.cache/leaks-0f3c.json", 64 << 20) is None   # doctest: +SKIP
    True
    """
    opened = open_regular(path, limit)
    if opened is None:
        return None
    fd, st = opened
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:  # sized by the fstat: read(limit) would allocate the limit
            data = fh.read(st.st_size + 1) if read else b""
            if len(data) > st.st_size:  # grew since the fstat: the rest, up to the bound
                data += fh.read(limit + 1 - len(data))
    finally:
        os.close(fd)
    if len(data) > limit:  # grew since the fstat
        raise _not_regular(Path(path), size=len(data), limit=limit)
    return data


def _not_regular(path: Path, link: bool = False, size: int | None = None, limit: int | None = None) -> NotRegular:
    if size is not None:
        error = NotRegular(f"{path.name} is {size:,} bytes, more than the {limit:,} featstore writes there")
    else:
        kind = "a symbolic link" if link else "a pipe, device, folder or socket"
        error = NotRegular(f"{path.name} is not a regular file ({kind})")
    error.link, error.size = link, size
    return error


def cache_folder(root: str | os.PathLike, *parts: str, what: str = "cache folder", again: str = AGAIN) -> Path:
    """``root/parts...`` made where missing, each level a real folder of this user that only this user can write;
    returns it. ``root`` is the cache beside a store (:func:`featstore.outputs.cache_dir`), whose parent must exist. A
    symbolic link at any level is refused, never written through nor read from (a link planted at
    ``features.h5.cache`` sent thumbnails, map layouts and ONNX models wherever it pointed), and so is a file, FIFO or
    anything else in a folder's place: one OutputError naming it and the fix (``again``: what removing it costs).
    The similarity index (``<store>.index/<extractor>/<split>``) is made the same way. Example::

        maps = cache_folder(cache_dir("features.h5"), "maps")
    """
    if not FD_SAFE:
        return _by_name(Path(root), parts, what, again)
    os.close(_open_levels(Path(root), parts, what, make=True, again=again))
    return Path(root).joinpath(*parts)


@contextmanager
def opened_cache(
    root: str | os.PathLike, *parts: str, what: str = "cache folder", again: str = AGAIN
) -> Iterator[Path | None]:
    """``root/parts...`` opened and checked level by level as :func:`cache_folder` does (never made), held open while
    the block runs and given as a path through its descriptor (``/proc/self/fd/<fd>`` on Linux) that a link swapped
    in at any level later cannot redirect; None when a level is missing. For reading (and removing) cache files.
    Example::

        with opened_cache("features.h5.index", "s", "train") as at:
            meta = read_small(at / "index.json", 1 << 20) if at else None
    """
    if not FD_SAFE:
        levels = [Path(root).joinpath(*parts[:i]) for i in range(len(parts) + 1)]  # root, then each level below it
        yield levels[-1] if all(not os.path.islink(p) and p.is_dir() for p in levels) else None
        return
    fd = _open_levels(Path(root), parts, what, make=False, again=again, missing_ok=True)
    if fd < 0:
        yield None
        return
    try:
        yield _through(fd, "", Path(root).joinpath(*parts))
    finally:
        os.close(fd)


def write_cached(
    root: str | os.PathLike,
    path: str | os.PathLike,
    write: Callable[[Path], object],
    what: str = "cache",
    again: str = AGAIN,
) -> Path:
    """:func:`featstore.outputs.write_atomic` for a file ``path`` under the cache ``root`` (as :func:`cache_folder`
    takes it): ``write(tmp)`` into a new temporary file made through the folder's descriptor, renamed onto ``path`` in
    that same folder. The levels from ``root`` down are opened and checked as :func:`cache_folder` does; a link
    swapped in at any level afterwards is never followed. Example::

        write_cached("features.h5.cache", "features.h5.cache/maps/map-1.npz", lambda tmp: np.save(tmp, xy))
    """
    path, root = Path(path), Path(root)
    if not FD_SAFE:
        from featstore.outputs import write_atomic

        _by_name(root, path.parent.relative_to(root).parts, what, again)
        return write_atomic(path, write, what)
    fd = _open_levels(root, path.parent.relative_to(root).parts, what, make=False, again=again)
    try:
        _refuse_name(fd, path, what)
        say_swept(sweep(fd), path.parent)  # temporary files that killed writes left here (a large vectors.npy, say)
        tmp = f"{temp_prefix(path.name)}{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd))
            try:
                write(_through(fd, tmp, path.parent / tmp))
                _refuse_name(fd, path, what)  # nothing planted at the name meanwhile
                os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
            finally:
                _unlink(tmp, fd)
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            raise NotWritten(f"cannot write {what} {path}: {output_fix(exc, path)}") from None
    finally:
        os.close(fd)
    return path


def write_cached_text(root: str | os.PathLike, path: str | os.PathLike, text: str, what: str = "cache") -> Path:
    """:func:`write_cached` for a UTF-8 text."""
    return write_cached(root, path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"), what)


def _open_levels(
    root: Path, parts: tuple[str, ...], what: str, make: bool, again: str = AGAIN, missing_ok: bool = False
) -> int:
    """A descriptor of ``root/parts...``, each level from ``root`` on opened with O_NOFOLLOW | O_DIRECTORY relative to
    the one above (made with CACHE_MODE where missing, when ``make``) and checked (:func:`_check_level`); -1 for a
    missing level when ``missing_ok``."""
    try:
        fd = os.open(root.parent, PARENT)  # never listed: a store's folder of mode 0300 takes its cache
    except OSError as exc:
        raise OutputError(f"cannot use the {what} {root}: {output_fix(exc, root)}") from None
    level = root.parent
    for name in (root.name, *parts):
        level = level / name
        try:
            try:
                child = os.open(name, _OPEN_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                _refuse_unusable(fd, level, what)
                try:
                    os.mkdir(name, CACHE_MODE, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile: opened and checked below
                except OSError as exc:
                    error = CacheNotMade(f"cannot make the {what} {level}: {output_fix(exc, level)}")
                    error.cause, error.level = exc, level  # for callers that say it their own way
                    raise error from None
                child = os.open(name, _OPEN_DIR, dir_fd=fd)
        except OutputError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            if missing_ok and exc.errno == errno.ENOENT:
                return -1
            raise _level_error(exc, level, what, again) from None
        os.close(fd)
        fd = child
        try:
            _check_level(fd, level, what, again)
        except OutputError:
            os.close(fd)
            raise
    return fd


def _refuse_unusable(parent: int | Path, level: Path, what: str) -> None:
    """CacheNotMade, before a cache level is made in ``parent`` (a descriptor or path of ``level.parent``), where a
    folder made there would be shut to its maker or never removed (:func:`featstore.modes.unusable`): a store copied
    into a folder whose default ACL gives owners ``rw-`` had ``<store>.cache`` made ``drw-------`` and left, and the
    line blamed that new folder with a ``setfacl`` fix that could not open it (attack 40 #15). Callers go on without
    the cache where they can (a report's temporary one), as for a cache they may not make."""
    why = unusable(parent, level.parent)
    if why is not None:
        raise CacheNotMade(f"cannot make the {what} {terminal_safe(str(level))}: {why}")


def _by_name(root: Path, parts: tuple[str, ...], what: str, again: str = AGAIN) -> Path:
    """:func:`cache_folder` where there are no directory descriptors: each level made where missing and lstat-checked."""
    level = root
    for name in ("", *parts):
        level = level / name if name else level
        if not os.path.lexists(level):
            _refuse_unusable(level.parent, level, what)
        try:
            os.mkdir(level, CACHE_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CacheNotMade(f"cannot make the {what} {level}: {output_fix(exc, level)}") from None
        if not stat.S_ISDIR(os.lstat(level).st_mode):
            raise _level_error(OSError(errno.ENOTDIR, "not a folder"), level, what, again)
    return level


def _level_error(exc: OSError, level: Path, what: str, again: str = AGAIN) -> OutputError:
    """One line for a level that cannot be opened as a folder: a link, a file or FIFO in its place, or else."""
    if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(level)):
        return OutputError(
            f"the {what} {level} is a symbolic link; featstore never writes or reads its caches through a link. Remove the "
            f"link ({again}), or choose another --store"
        )
    if exc.errno == errno.ENOTDIR:
        return OutputError(
            f"the {what} {level} is not a folder; move it away (featstore keeps its caches there), or choose another "
            f"--store"
        )
    theirs = sticky.theirs(level, folder=True) if exc.errno == errno.EACCES else None
    if theirs is not None:  # a colleague's cache of a shared store: "folder ... is not writable by you" (attack 36 #7)
        return CacheNotTrusted(
            f"the {what} {level} is {owner_name(theirs.st_uid)}'s and closed to you (mode "
            f"{stat.S_IMODE(theirs.st_mode):04o}: featstore makes each user's caches for that user only), so it cannot "
            f"be used for you; ask {owner_name(theirs.st_uid)} to remove it ({again}), or use a copy of the store in a "
            f"folder of yours"
        )
    return OutputError(f"cannot use the {what} {level}: {output_fix(exc, level)}")


def _check_level(fd: int, level: Path, what: str, again: str = AGAIN) -> None:
    """CacheNotTrusted unless the folder open at ``fd`` is this user's and writable by no one else."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise CacheNotTrusted(
            f"the {what} {level} was not made by featstore for you (it belongs to user id {st.st_uid}, not to you), so "
            f"its files are not trusted; ask its owner to remove it or make it private (chmod go-w)"
        )
    if not st.st_mode & 0o022:
        return
    why = f"the group or others may write into it (mode {stat.S_IMODE(st.st_mode):04o})"
    raise CacheNotTrusted(
        f"the {what} {level} was not made by featstore for you ({why}), so its files are not trusted; remove it ({again}) "
        f"or make it yours and private (chmod go-w)"
    )


def _refuse_name(fd: int, path: Path, what: str) -> None:
    """OutputError when something other than a regular file (a link, folder, FIFO) is at ``path``'s name."""
    try:
        mode = os.lstat(path.name, dir_fd=fd).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise OutputError(f"{what} {path} is a symbolic link; featstore never writes through a link. Remove it")
    if not stat.S_ISREG(mode):
        raise OutputError(f"{what} {path} is not a regular file (a folder, pipe, device or socket); remove it")


def _through(fd: int, name: str, fallback: Path) -> Path:
    """A path to ``name`` in the folder open at ``fd`` that no later link can redirect: ``/proc/self/fd/<fd>/<name>``
    where the system has it (Linux), else ``fallback`` (its name, checked just before)."""
    proc = Path(f"/proc/self/fd/{fd}")
    return proc / name if proc.is_dir() else fallback


def _unlink(name: str, fd: int) -> None:
    """Remove ``name`` from the folder open at ``fd`` when it is still there."""
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
