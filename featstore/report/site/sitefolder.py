"""The report's folder (``--out``), opened once and written, linked into and cleaned only through descriptors.

``featstore report`` checked ``--out`` for a link once, then wrote every page, asset, map and thumbnail by the
folder's *name* for the whole report (seconds to minutes): a colleague who, in a team folder, renamed the report
folder away and put her link ``s.report -> ~victim/thesis.report`` there once the report had started made the victim
overwrite (and clean) the victim's private report (attack 28 #2). Now ``--out`` is opened once with ``O_NOFOLLOW |
O_DIRECTORY`` (relative to its parent's descriptor) and held for the whole report; each subfolder (``runs/``,
``galleries/<id>/``, ``maps/``, ``assets/``, ``thumbs/``) is made and opened the same way, level by level, relative
to the level above, the first time it is written. Every write goes through :func:`featstore.outputs.write_atomic`
(its private folder, mode kept, HDF5 and FIFO refusals) given the path ``/proc/self/fd/<fd>/<name>`` of the folder
held open, which no rename or link put in the shared folder later can redirect (as :mod:`featstore.caches` writes);
every removal is ``unlink(name, dir_fd=...)`` in the folder opened. A link at ``--out`` or at a subfolder when it is
opened is refused in one line; one swapped in later is never followed: the report goes on into the folders it opened.
The folder ``--out`` is opened in (or ``--out .`` itself) is held to the link rule on the descriptor opened
(:func:`featstore.linkrule.refuse_foreign`): a colleague's link on its path made the report rewrite the user's
private one (attack 31 #2). Every folder opened (``--out`` and each level, an earlier report's checked all before
its manifest is rewritten) must be the user's and writable by no one else beyond what a plain ``mkdir`` there gives:
a colleague's ``0777`` copy of the user's report folder was taken as hers (attack 39 #6).

Where there is no ``/proc/self/fd`` (macOS), a folder is written by its real name only when no one else can rename an
entry in it or above it (:func:`featstore.renames.unredirectable`), else refused with the fix; where the system has
no directory descriptors (Windows), by name, as before.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from featstore.errors import NotWritten, OutputError
from featstore.linkrule import refuse_foreign
from featstore.modes import fresh_mode, others_may_write
from featstore.outputs import check_output, hdf5_signed, output_fix, terminal_safe, write_atomic
from featstore.renames import PARENT, by_name, proc_path, same_folder
from featstore.sticky import owner_name

FD_SAFE = hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY") and os.open in os.supports_dir_fd
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_LEVEL = _DIR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE |= getattr(os, "O_NOCTTY", 0)


class SiteFolder:
    """``--out`` opened (made when missing, its parent must exist) and held until :meth:`close`. ``not_writable(exc,
    where)``: the error for a folder that cannot be made or written. Example::

        site = SiteFolder(Path("features.report"), lambda exc, where: OutputError(str(exc)))
        site.write_text("runs/logreg.html", "<html>...", "report page")
    """

    def __init__(self, out: Path, not_writable: Callable[[OSError, Path], Exception]):
        self.out, self.made, self.wrote = Path(out), False, False  # wrote: a file written (a refusal says so)
        self.before_write: Callable[[str], None] | None = None  # the report's journal (featstore.report.site.journal)
        self._fds: dict[tuple[str, ...], int] = {}  # (), ("runs",), ("galleries", "<id>"), ...: held until close()
        if not FD_SAFE:
            self._by_name(out, not_writable)
            return
        if self.out.name in ("", ".", ".."):  # "--out ." or "..": the folder itself, never a link, never made
            try:
                self._fds[()] = os.open(self.out, _DIR)
            except OSError as exc:
                raise not_writable(exc, self.out) from None
            try:  # the link rule on the folder opened (its path's folders: another user's link, attack 31 #2)
                refuse_foreign(self.out, "--out", OutputError, "--out", self._fds[()])
                self._trusted(self._fds[()], self.out)
            except OutputError:
                self.close()
                raise
            return
        try:
            parent = os.open(self.out.parent, PARENT)  # never listed: a folder of mode 0300 takes a report
        except OSError as exc:
            raise not_writable(exc, self.out.parent) from None
        try:  # --out's folders held to the link rule on the folder opened: a colleague's team/exports -> ~you/work
            refuse_foreign(self.out.parent, "--out", OutputError, "--out", parent, self.out)  # rewrote ~you/work's
            self._fds[()] = self._level(parent, self.out.name, self.out, not_writable, top=True)  # report (attack 31)
        finally:
            os.close(parent)

    def _by_name(self, out: Path, not_writable: Callable[[OSError, Path], Exception]) -> None:
        """Windows: no directory descriptors; the folder is checked and written by name."""
        refuse_foreign(out, "--out", OutputError, "--out")
        if os.path.islink(out):
            raise OutputError(f"--out {out} is a symbolic link; featstore never writes through a link")
        try:
            out.mkdir()
            self.made = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise not_writable(exc, out.parent) from None

    def _level(self, parent: int, name: str, shown: Path, not_writable=None, top: bool = False) -> int:
        """Open the folder ``name`` in the folder open at ``parent`` (O_NOFOLLOW | O_DIRECTORY), made where missing."""
        for _ in range(3):
            try:
                fd = os.open(name, _LEVEL, dir_fd=parent)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o777, dir_fd=parent)  # the umask's mode, as Path.mkdir made it
                    self.made = self.made or top
                except FileExistsError:
                    continue  # made meanwhile: opened (and checked) again
                except OSError as exc:
                    if not_writable is not None:
                        raise not_writable(exc, shown.parent) from None
                    why = output_fix(exc, shown)
                    raise OutputError(f"cannot make the report folder {terminal_safe(str(shown))}: {why}") from None
                continue  # made: opened (and checked) next
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise self._not_a_folder(shown, top) from None
                if not_writable is not None:
                    raise not_writable(exc, shown) from None
                why = output_fix(exc, shown)
                raise OutputError(f"cannot open the report folder {terminal_safe(str(shown))}: {why}") from None
            try:
                self._trusted(fd, shown)
            except OutputError:
                os.close(fd)
                raise
            return fd
        raise self._not_a_folder(shown, top)

    def _trusted(self, fd: int, shown: Path) -> None:
        """Refuse the folder open at ``fd`` (``--out`` or a level below it) unless it is this user's and no one else
        may write it beyond what a plain ``mkdir`` there gives (:func:`featstore.modes.fresh_mode`: a default ACL or
        umask 002 of a team folder): a colleague's copy of the user's report folder (his, ``0777``, its manifest
        copied) was taken as the user's and written into (attack 39 #6)."""
        st = os.fstat(fd)
        mine = st.st_uid == os.geteuid()
        loose = st.st_mode & 0o022 & ~fresh_mode(fd, folder=True)
        if mine and not (loose and others_may_write(st, fd)):
            return
        why = f"{owner_name(st.st_uid)}'s, not yours" if not mine else "writable by others"
        mode = stat.S_IMODE(st.st_mode)
        place = f"--out {terminal_safe(str(self.out))}"
        if shown != self.out:
            place += f": its folder {terminal_safe(str(shown))}"
        at, owner = shlex.quote(terminal_safe(str(shown))), owner_name(st.st_uid)
        if mine:
            fix = f"Make it yours alone (chmod go-w {at}; setfacl -b {at} where an ACL lets others write), or give another --out"
        elif shown != self.out:  # his folder inside hers: renaming it needs no right on it (rm -r does: 43 #15)
            moved = shlex.quote(terminal_safe(f"{shown}.{owner}"))
            fix = f"Move it out of the way (mv {at} {moved}) or ask {owner} to remove it, or give another --out"
        else:
            fix = f"Give another --out, or ask {owner} to remove it"
        raise OutputError(
            f"{place} is {why} (mode {mode:04o}); featstore report writes only into folders of yours that no one "
            f"else may write. {fix}; " + ("the report stopped here" if self.wrote else "nothing was written")
        )

    def check_levels(self, folders: tuple[str, ...]) -> None:
        """Open and check (:meth:`_trusted`, a link or file refused) each of ``folders`` that exists below ``--out``,
        and each folder in those (a run's gallery folder), before anything is written: a link or a colleague's folder
        there was met only after the manifest was rewritten, and the report stopped half-way (attack 39 #6)."""
        if not FD_SAFE:
            return
        for name in folders:
            fd = self.folder_fd(name, make=False)
            if fd < 0:  # missing, or a link or file at its name (a folder that cannot be opened: said when written)
                st = self.lstat(name)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    raise self._not_a_folder(self.out / name, False)
                continue
            for entry in os.listdir(fd):
                if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    self.folder_fd(name, entry, make=False)  # checked as opened
                    self.release(name, entry)
            self.release(name)  # opened again when written in (and checked again): never held from here

    @staticmethod
    def _not_a_folder(shown: Path, top: bool) -> OutputError:
        if top and os.path.islink(shown):
            return OutputError(f"--out {shown} is a symbolic link; featstore never writes through a link")
        if top:
            return OutputError(f"--out {shown} is not a folder; give a new or empty folder")
        return OutputError(f"{shown} is a link or a file, not a folder; featstore report writes only into folders")

    @property
    def fd(self) -> int:
        """The descriptor of ``--out`` (-1 without directory descriptors)."""
        return self._fds.get((), -1)

    def folder_fd(self, *parts: str, make: bool = True) -> int:
        """The descriptor of ``--out/parts...``, each level opened (and made, when ``make``) relative to the one above
        and held until :meth:`release` or :meth:`close`; -1 when a level is missing and not ``make``."""
        if parts in self._fds:
            return self._fds[parts]
        parent = self.folder_fd(*parts[:-1], make=make)
        if parent < 0:
            return -1
        shown = self.out.joinpath(*parts)
        if not make:
            try:
                fd = os.open(parts[-1], _LEVEL, dir_fd=parent)
            except OSError:
                return -1  # missing, a link or not a folder: nothing of the report is there
            try:
                self._trusted(fd, shown)
            except OutputError:
                os.close(fd)
                raise
        else:
            fd = self._level(parent, parts[-1], shown)
        self._fds[parts] = fd
        return fd

    def at(self, *parts: str) -> Path:
        """A path to ``--out/parts...`` (made where missing) that no rename or link put in its place later redirects:
        ``/proc/self/fd/<fd>``; where there is none, its real name when no one else can rename an entry in it or
        above it; else an OutputError naming the fix."""
        if not FD_SAFE:
            path = self.out.joinpath(*parts)
            for i in range(1, len(parts) + 1):
                level = self.out.joinpath(*parts[:i])
                if os.path.islink(level) or (os.path.lexists(level) and not level.is_dir()):
                    raise self._not_a_folder(level, False)
                level.mkdir(exist_ok=True)
            return path
        fd = self.folder_fd(*parts)
        base = proc_path(fd) or by_name(self.out.joinpath(*parts), os.fstat(fd))
        if base is None:
            raise OutputError(
                f"cannot write the report into {terminal_safe(str(self.out))}: someone else can write that folder (or "
                f"one above it), and this system has no /proc/self/fd to write there safely; give --out DIR in a folder "
                f"only you can write"
            )
        return base

    def write(self, rel: str, write: Callable[[Path], object], what: str) -> str:
        """:func:`featstore.outputs.write_atomic` of ``--out/rel`` in the folder held open; returns ``rel``. Its
        OutputError names the file as ``--out/rel``, not as the descriptor's path."""
        *parts, name = rel.split("/")
        self.announce(rel)
        with self.named(*parts) as base:
            write_atomic(base / name, write, what)
            self.wrote = True  # only once it is there: a first write that failed left nothing (attack 55 #6)
        return rel

    def announce(self, rel: str) -> None:
        """Name ``rel`` in the report's journal before it is written (:mod:`featstore.report.site.journal`): every
        file put into the site, a thumbnail linked there included (attack 55 #1)."""
        if self.before_write is not None:
            self.before_write(rel)

    @contextmanager
    def named(self, *parts: str) -> Iterator[Path]:
        """:meth:`at` for a block that writes there: an OutputError it raises names the folder as ``--out/parts``,
        not as the descriptor's path."""
        base = self.at(*parts)
        try:
            yield base
        except OutputError as exc:
            shown = terminal_safe(str(self.out.joinpath(*parts)))
            if str(base) == shown or str(base) not in str(exc):
                raise
            if isinstance(exc, NotWritten):  # one file's failure stays one (the report says what the others are)
                raise NotWritten(exc.why.replace(str(base), shown), exc.then.replace(str(base), shown)) from None
            raise OutputError(str(exc).replace(str(base), shown)) from None

    def write_text(self, rel: str, text: str, what: str) -> str:
        """:meth:`write` of a UTF-8 text (file names that are not UTF-8 keep their bytes)."""

        def _write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
                fh.write(text)

        return self.write(rel, _write, what)

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry ``rel`` (not followed), or None when it or its folder is missing (never made for asking)."""
        *parts, name = rel.split("/")
        try:
            if not FD_SAFE:
                return os.lstat(self.out / rel)
            fd = self.folder_fd(*parts, make=False)
            return None if fd < 0 else os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None

    def read_small(self, name: str, limit: int) -> bytes | None:
        """The bytes of the regular file ``name`` at the top of the folder (opened once, O_NOFOLLOW, never a FIFO
        waited on), or None when it is missing, not a regular file or over ``limit`` bytes."""
        try:
            fd = os.open(name, _FILE, dir_fd=self.fd) if FD_SAFE else os.open(self.out / name, _FILE)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(limit + 1)
            return None if len(data) > limit else data
        except OSError:
            return None
        finally:
            os.close(fd)

    def is_empty(self) -> bool:
        """Whether the folder held open has no entry."""
        return not os.listdir(self.fd if FD_SAFE else self.out)

    def probe(self) -> None:
        """Make and remove an empty file in the folder (a read-only file system refuses before any work): OSError."""
        name = f".probe.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        if not FD_SAFE:
            os.close(os.open(self.out / name, flags, 0o600))
            os.unlink(self.out / name)
            return
        os.close(os.open(name, flags, 0o600, dir_fd=self.fd))
        os.unlink(name, dir_fd=self.fd)

    def remove(self, rel: str, keep: set[tuple[int, int]]) -> bool:
        """Remove the regular file ``rel`` from the folder it is in *inside the folder opened* (levels opened, never
        made, O_NOFOLLOW): never a link, folder or HDF5 file (a store), nor a file or folder on the way whose device and
        inode is in ``keep`` (the store, its runs and cache folders); whether it was removed."""
        *parts, name = rel.split("/")
        if not FD_SAFE:
            return self._remove_by_name(rel, keep)
        for i in range(len(parts) + 1):
            fd = self.folder_fd(*parts[:i], make=False)
            if fd < 0:
                return False
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in keep:
                return False
        try:  # a device is never opened (lstat first), a link never followed (O_NOFOLLOW)
            if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                return False
            file = os.open(name, _FILE, dir_fd=fd)
        except OSError:
            return False  # missing, or a link put there since: never removed
        try:
            st = os.fstat(file)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in keep or _is_hdf5(file):
                return False
        finally:
            os.close(file)
        try:
            os.unlink(name, dir_fd=fd)
        except OSError:
            return False
        return True

    def _remove_by_name(self, rel: str, keep: set[tuple[int, int]]) -> bool:
        path = self.out / rel
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in keep:
                return False
            check_output(path, "report file")  # OutputError for an HDF5 file (a store)
            path.unlink()
        except (OSError, OutputError):
            return False
        return True

    def inside(self, ids: set[tuple[int, int]]) -> bool:
        """Whether the folder held open, or a folder above it (walked up by ``..`` from its descriptor), has a device
        and inode in ``ids``."""
        if not FD_SAFE:
            real = Path(os.path.realpath(self.out))
            return any((st.st_dev, st.st_ino) in ids for st in map(os.stat, (real, *real.parents)))
        fd, seen = os.dup(self.fd), set()
        try:
            while True:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in ids:
                    return True
                if (st.st_dev, st.st_ino) in seen:  # "/" is its own parent
                    return False
                seen.add((st.st_dev, st.st_ino))
                up = os.open("..", _DIR, dir_fd=fd)
                os.close(fd)
                fd = up
        except OSError:
            return True  # a folder above that cannot be opened: remove nothing rather than guess
        finally:
            os.close(fd)

    def release(self, *parts: str) -> None:
        """Close the descriptor of ``--out/parts...`` (a run's gallery folder, once its pages are written)."""
        fd = self._fds.pop(parts, -1) if parts else -1
        if fd >= 0:
            os.close(fd)

    def still_named(self) -> bool:
        """Whether ``--out`` still names the folder held open (someone may have renamed it away meanwhile)."""
        return not FD_SAFE or same_folder(self.fd, self.out)

    def remove_if_made(self) -> bool:
        """Close, and remove ``--out`` when this report made it and it is still that folder, empty (the report
        refused to go on before writing anything into it); whether it was removed."""
        named = self.made and not self.wrote and self.still_named()
        self.close()
        if named:
            with suppress(OSError):
                os.rmdir(self.out)
                return True
        return False

    def close(self) -> None:
        for fd in self._fds.values():
            if fd >= 0:
                os.close(fd)
        self._fds.clear()

    def __enter__(self) -> SiteFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_hdf5(fd: int) -> bool:
    """Whether the file open at ``fd`` starts with HDF5's signature (:func:`featstore.outputs.hdf5_signed`)."""
    try:
        return hdf5_signed(fd)
    except OSError:
        return False
