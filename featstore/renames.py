"""The last step of every whole-file write (an output, a compacted store): the rename, safe in a folder others can write.

A temporary file written beside its target and renamed onto it *by name* could be swapped, between featstore's last
check and the rename, for a link or file another user renamed onto the temporary's name: a folder such as
``root:team 2775`` has no sticky bit, so every member may rename any entry in it (attack 23). :class:`PrivateFolder`
writes instead into a folder made for this one write beside the target (:func:`featstore.leftovers.private_name`,
mode 0700: no one else can make, rename or replace an entry in it), holds it and the target's folder open, and renames
through the two descriptors (``os.replace(name, target, src_dir_fd=, dst_dir_fd=)``): a private folder renamed away by
someone else is still the one written in and renamed from. A writer that opens by path (h5py, numpy, pyarrow) is given
``/proc/self/fd/<fd>/<name>``, which no rename in the shared folder can redirect; where there is no such path
(macOS), the folder's name is used only when the target's folder is one no one else can write or has the sticky bit,
else the write is refused (:func:`PrivateFolder.path`). Where the system has no directory descriptors (Windows), the
folder is made and renamed from by name.

:class:`OwnFolder` is the same for a new *folder* written whole, then renamed into place (a run folder, ``export
--rows-per-file``'s shards): made by ``mkdtemp`` (0700), held open and written through ``/proc/self/fd/<fd>/...``
(:attr:`OwnFolder.at`), given the mode a plain ``mkdir`` there gives (:func:`featstore.modes.fresh_mode`; or, replacing
a folder, the old one's: :mod:`featstore.carry`) through its descriptor once complete, and renamed only while its name
is still that folder. It was made group-writable at once and written by name, so a colleague's links in it (or a folder
of links put at its name) made ``fit`` and ``export`` write onto the user's own files (attack 25).

:func:`same_file` is featstore's one check of "the file at this name is the one I wrote" (its device and inode against
a descriptor of it), asked by :mod:`featstore.outputs`, :mod:`featstore.store.compact` and the similarity index.

Example::

    with PrivateFolder(Path("out.csv"), lambda removed: OutputError("someone else can write .")) as private:
        fd, tmp = private.new_file(0o644)
        tmp.write_text("a,b\\n")
        private.put(fd)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from featstore.errors import ConfigError, OutputError
from featstore.leftovers import PRIVATE_FILES, private_name, temp_stem
from featstore.modes import fresh_mode, same_xattrs, unusable

logger = logging.getLogger(__name__)
FD_SAFE = hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY") and os.mkdir in os.supports_dir_fd
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# a folder only made, opened, renamed and stat'ed in (``*at`` calls), never listed: reached with O_PATH where there is
# one, so a folder the user may write but not read (``0300``, a drop folder, a shared one made ``a-r``) takes outputs
# (attack 36 #2: opening it O_RDONLY needs read permission, and every output said "not writable")
PARENT = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def same_file(fd: int, name: str | os.PathLike, dir_fd: int | None = None) -> os.stat_result | None:
    """``os.fstat(fd)`` when the entry ``name`` (in the folder open at ``dir_fd``; None: a path) is that very file (its
    device and inode) and a regular file, not a link; None when it is anything else or nothing."""
    mine = os.fstat(fd)
    try:
        there = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino) or not stat.S_ISREG(there.st_mode):
        return None
    return mine


class PrivateFolder:
    """A folder only this user can write, made beside ``target`` for one write of it, with the target's folder held
    open: :meth:`new_file` (or a writer given :meth:`path`) writes in it, :meth:`put` renames the file onto ``target``.
    Leaving the block removes whatever is left in it and the folder. ``swapped(removed)``: the error raised when the
    folder or the file was replaced by someone else's (``removed``: the file is gone), or the folder cannot be written
    in safely (its message names the fix);
    an OSError making the folder (EACCES, ENOSPC) is raised as it is, for the caller to say. ``compact``: the
    temporary is ``.<name>.compact.tmp``, else ``.<name>.tmp`` (:data:`featstore.leftovers.PRIVATE_FILES`)."""

    def __init__(self, target: Path, swapped: Callable[[bool], Exception], compact: bool = False):
        self.target, self.swapped = Path(target), swapped
        self.temp = f".{temp_stem(self.target.name)}" + PRIVATE_FILES[compact]  # the file written
        self.name = ""  # the private folder's name in the target's folder, once made
        self.parent_fd = self.fd = -1
        self.made: set[str] = set()  # the names written in it: the only ones its clean-up removes

    def __enter__(self) -> PrivateFolder:
        if not self.name:
            self.make()
        return self

    def make(self) -> None:
        """Make the private folder and open it and the target's folder (what :meth:`__enter__` does when not done):
        an OSError making it (EACCES, ENOSPC) as it is, ``swapped(False)`` when what is at its name is not it."""
        if not FD_SAFE:
            self.name = _make(self.target.parent, self.target.name)
            return
        self.parent_fd = os.open(self.target.parent, PARENT)  # never listed: its entries are reached by name
        try:
            refuse_unusable(self.parent_fd, self.target.parent)
            self.name = _make(self.parent_fd, self.target.name)
            try:  # its name is in the shared folder: what is opened must be a folder of ours that no one else can write
                self.fd = os.open(self.name, _DIR | os.O_NOFOLLOW, dir_fd=self.parent_fd)
            except OSError:
                raise self.swapped(False) from None
            st = os.fstat(self.fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or os.listdir(self.fd):
                raise self.swapped(False)  # (a folder of this user's renamed onto its name: nothing in it is removed)
        except BaseException:
            self._close()
            raise

    def path(self, name: str | None = None) -> Path:
        """A path to ``name`` (the temporary by default) inside the private folder that no rename in the target's
        folder can redirect: ``/proc/self/fd/<fd>/<name>``; where there is none, through the folder's name only when
        no one else can write (or rename in) the target's folder; else ``swapped(False)``."""
        name = name or self.temp
        self.made.add(name)
        if not FD_SAFE:
            return self.target.parent / self.name / name
        at = unredirectable(self.fd, self.name, self.target.parent, os.fstat(self.parent_fd))
        if at is None:
            raise self.swapped(False)
        return at / name

    def new_file(self, mode: int | None = None) -> tuple[int, Path]:
        """The temporary, made empty (O_EXCL, O_NOFOLLOW) with ``mode`` set through its descriptor (None: what a plain
        ``open`` in the target's folder gives, :func:`featstore.modes.fresh_mode`: the private folder inherited that
        folder's default ACL): ``(fd, path)``; the caller closes ``fd`` (held open, its inode is never another file's)."""
        self.made.add(self.temp)
        if not FD_SAFE:
            fd = os.open(self.path(), _NEW, 0o600)
        else:
            fd = os.open(self.temp, _NEW, 0o600, dir_fd=self.fd)
        try:
            os.fchmod(fd, fresh_mode(self.fd, folder=False) if mode is None else mode)
            return fd, self.path()
        except BaseException:
            os.close(fd)
            raise

    def put(self, fd: int) -> os.stat_result:
        """Rename the temporary onto the target once it is the file open at ``fd`` (:func:`same_file`; else
        ``swapped``); its fstat."""
        at, name = (None, self.path()) if not FD_SAFE else (self.fd, self.temp)
        st = same_file(fd, name, at)
        if st is None:
            raise self.swapped(not os.path.lexists(name) if at is None else not _there(name, at))
        if not FD_SAFE:
            os.replace(name, self.target)
            return st
        os.replace(self.temp, self.target.name, src_dir_fd=self.fd, dst_dir_fd=self.parent_fd)
        return st

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        """Remove what this write made in the private folder (the names it handed out), then the folder, by name only
        while the name is still it and only when empty: a folder of the user's that a colleague renamed onto its name
        between ``mkdir`` and ``open`` passes the owner and mode checks, and every file in it was deleted (attack 28
        #8)."""
        if not FD_SAFE:
            import shutil

            if self.name:
                shutil.rmtree(self.target.parent / self.name, ignore_errors=True)
            return
        if self.fd >= 0:
            for name in self.made:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self.fd)
            try:
                st, mine = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False), os.fstat(self.fd)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    os.rmdir(self.name, dir_fd=self.parent_fd)
            except FileNotFoundError:
                pass
            except OSError as exc:  # (what refuse_unusable could not foresee: said, named, not left silently)
                _left(self.target.parent / self.name, exc)
            os.close(self.fd)
            self.fd = -1
        if self.parent_fd >= 0:
            os.close(self.parent_fd)
            self.parent_fd = -1


def others_cannot_rename(folder: os.stat_result) -> bool:
    """Whether no one but this user (and root) can rename entries in ``folder``: it is ours (or root's) and only its
    owner can write it, or it has the sticky bit."""
    owner = folder.st_uid in (os.geteuid(), 0)  # a sticky folder's owner may still rename anything in it (attack 27 #4)
    return owner and (not folder.st_mode & 0o022 or bool(folder.st_mode & stat.S_ISVTX))


def by_name(folder: Path, held: os.stat_result) -> Path | None:
    """``folder`` resolved, for writing by name where there is no ``/proc/self/fd``: only when it is the folder held
    open (``held``) and no one else can rename an entry in it or in any folder above it, up to ``/``; else None. The
    target's folder alone was checked, so a colleague who renamed the user's own folder in a team folder (and put hers
    at its name) redirected the write onto the user's files (attack 26 #7)."""
    real = Path(os.path.realpath(folder))
    try:
        st = os.stat(real)
        if (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
            return None
        if all(others_cannot_rename(os.stat(p)) for p in (real, *real.parents)):
            return real
    except OSError:
        pass
    return None


def same_folder(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed if a link) is the folder open at ``fd``."""
    try:
        st, mine = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def proc_path(fd: int) -> Path | None:
    """``/proc/self/fd/<fd>``, a path to the folder open at ``fd`` that no rename can redirect, where the system has
    it and it leads to that very folder (Linux); else None."""
    proc = Path(f"/proc/self/fd/{fd}")
    with contextlib.suppress(OSError):
        st, mine = os.stat(proc), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return proc
    return None


def _there(name: str, dir_fd: int) -> bool:
    """Whether anything (a link included) is at ``name`` in the folder open at ``dir_fd``."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _make(parent: int | Path, name: str) -> str:
    """A new folder (mode 0700) for one write of ``name`` in the folder open at ``parent`` (or its path): its name."""
    for _ in range(100):
        made = private_name(name)
        try:
            os.mkdir(made, 0o700, dir_fd=parent) if isinstance(parent, int) else os.mkdir(parent / made, 0o700)
            return made
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for a private folder beside {name}")


class OwnFolder:
    """A new hidden folder ``<prefix><random><suffix>`` in ``parent`` (never elsewhere: a path separator in either is a
    ConfigError, attack 57 #8) held open while it is written: write through :attr:`at`, then :meth:`publish`; leaving
    the block removes it unless it was published. An OSError making it is raised as it is; a folder that is not the
    one made (someone else's at its name) is an OutputError."""

    def __init__(self, parent: Path, prefix: str, suffix: str):
        if any(sep and sep in prefix + suffix for sep in (os.sep, os.altsep, "\0")):
            raise ConfigError(f"{prefix}...{suffix} would be outside {parent}: give a name without a path separator")
        refuse_unusable(parent, parent)
        self.name = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))  # 0700
        self.prefix, self.suffix = prefix, suffix
        self.published = False
        try:
            self.fd = os.open(self.name, _DIR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(self.name)  # only if empty: it was just made (what is there now may not be)
            raise
        try:
            st = os.fstat(self.fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or os.listdir(self.fd):
                self.close()  # not the folder made: nothing in it is removed (attack 28 #8: a run was emptied)
                raise self._swapped()
            at = unredirectable(self.fd, self.name.name, parent, os.stat(parent))
            if at is None:
                raise OutputError(
                    f"cannot write into {parent}: someone else can write that folder, and this system has no "
                    f"/proc/self/fd to write there safely; write into a folder only you can write"
                )
            self.at = at
        except BaseException:
            self.remove()
            raise

    def __enter__(self) -> OwnFolder:
        return self

    def __exit__(self, *exc) -> None:
        if not self.published:
            self.remove()

    def is_it(self) -> bool:
        """Whether the folder's name is still this folder (not someone else's put at its name)."""
        return same_folder(self.fd, self.name)

    def publish(self, dst: Path, mode: int | None = None) -> None:
        """The mode a plain ``mkdir`` in its folder gives (:func:`featstore.modes.fresh_mode`: the folder's default ACL
        and set-group-ID bit, which this folder inherited; attack 36 #4, #5) or ``mode``, set through the descriptor
        where it differs (a chmod by a non-member of the folder's group clears the bit: :meth:`_remade`), then the
        folder renamed onto ``dst`` while its name is still this folder (else an OutputError: nothing is renamed)."""
        want = fresh_mode(self.fd, folder=True) if mode is None else mode
        if stat.S_IMODE(os.fstat(self.fd).st_mode) != want:
            self._remade(want)
            if stat.S_IMODE(os.fstat(self.fd).st_mode) != want:  # (not remade: the bit is lost, as any chmod loses it)
                os.fchmod(self.fd, want)
        if not self.is_it():
            raise self._swapped()
        os.replace(self.name, dst)
        self.published = True
        self.close()

    def _remade(self, want: int) -> None:
        """Where ``want`` has the set-group-ID bit a chmod would clear (Linux does for a user outside the folder's
        group: attack 40 #5; a replaced folder's mode carried onto this one: attack 42 #5), a plain ``mkdir`` beside it
        with that mode (which keeps the bit) takes its entries, attributes (:func:`featstore.modes.same_xattrs`) and
        place. Group-writable (a team share: attack 42 #8), others may write in it from its ``mkdir``: it must then
        hold exactly the entries moved (names, inodes) and be still ours at its name; else they are moved back for the
        caller's chmod (the bit lost rather than a colleague's file published in the user's run or export). Not done
        (another mode, an error), the same; an OutputError where one cannot be moved back (renamed away)."""
        if not want & stat.S_ISGID or not FD_SAFE or _keeps_setgid(st := os.fstat(self.fd)):
            return
        made, fd, moved = self.name.with_name(f"{self.prefix}{os.urandom(4).hex()}{self.suffix}"), -1, {}
        try:
            os.mkdir(made, want & 0o777)
        except OSError:
            return
        try:
            fd = os.open(made, _DIR | os.O_NOFOLLOW)
            new = os.fstat(fd)
            if (new.st_uid, new.st_gid, stat.S_IMODE(new.st_mode)) != (os.geteuid(), st.st_gid, want) or os.listdir(fd):
                raise OSError("not the folder and mode wanted")  # (a default ACL or umask other than fresh_mode read)
            for entry in os.listdir(self.fd):
                moved[entry] = _key(entry, self.fd)
                os.rename(entry, entry, src_dir_fd=self.fd, dst_dir_fd=fd)
            if stat.S_IMODE(st.st_mode) & 0o777 == want & 0o777:  # a replaced folder's attributes, carried onto this
                same_xattrs(self.fd, fd)
            if {e: _key(e, fd) for e in os.listdir(fd)} != moved or not same_folder(fd, made) or not self.is_it():
                raise OSError("written into by someone else, or renamed away")
            os.rmdir(self.name)
        except OSError:
            self._put_back(fd, made, moved)
            return
        os.close(self.fd)
        self.fd, self.name = fd, made

    def _put_back(self, fd: int, made: Path, moved: dict[str, tuple[int, int] | None]) -> None:
        """The entries :meth:`_remade` moved into ``made`` (open at ``fd``; -1: not opened, removed if empty) moved back,
        each while it is the one moved, and ``made`` removed while empty (else left, said); an OutputError: one is gone."""
        if fd < 0:
            with contextlib.suppress(OSError):
                os.rmdir(made)
            return
        for entry, key in moved.items():
            with contextlib.suppress(OSError):
                if _key(entry, fd) == key:
                    os.rename(entry, entry, src_dir_fd=fd, dst_dir_fd=self.fd)
        try:
            if same_folder(fd, made):
                os.rmdir(made)
        except OSError as exc:  # someone else's entries in it: his to see, never published as the user's
            _left(made, exc)
        os.close(fd)
        if any(_key(entry, self.fd) != key for entry, key in moved.items()):
            raise self._swapped()

    def remove(self) -> None:
        """Remove what was written and the folder, only while its name is still it (a folder renamed away was published
        just now, a Ctrl-C landing between the rename and its flag, or taken by someone: its contents are left; a Ctrl-C
        there emptied the run or export just published: attack 27 #9); never raises."""
        if getattr(self, "fd", -1) < 0:
            return
        with contextlib.suppress(OSError):
            if self.is_it():
                for entry in os.listdir(self.fd):  # through the descriptor, as PrivateFolder's clean-up
                    with contextlib.suppress(OSError):
                        if stat.S_ISDIR(os.stat(entry, dir_fd=self.fd, follow_symlinks=False).st_mode):
                            shutil.rmtree(entry, dir_fd=self.fd)
                        else:
                            os.unlink(entry, dir_fd=self.fd)
                try:
                    os.rmdir(self.name)
                except OSError as exc:
                    _left(self.name, exc)
        self.close()

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1

    def _swapped(self) -> OutputError:
        return OutputError(
            f"{self.name}, the folder featstore made to write in, was replaced by another (someone else can write "
            f"{self.name.parent}); nothing was written there, and what is now at that name was left as it is (a folder "
            f"of yours? someone moved it there: rename it back). Write into a folder only you can write, then re-run "
            f"the same command"
        )


def _left(folder: Path, exc: OSError) -> None:
    logger.warning("left %s, featstore's own folder, which could not be removed (%s); remove it", folder, exc.strerror)


class Unusable(PermissionError):
    """A folder featstore cannot write its outputs in although the user may make entries there (append-only, a default
    ACL that shuts new folders to their owner): :attr:`line` says why and the fix (:func:`featstore.modes.unusable`)."""

    def __init__(self, line: str, folder: Path):
        super().__init__(errno.EPERM, line, str(folder))
        self.line = line


def refuse_unusable(at: int | Path, folder: Path) -> None:
    """:class:`Unusable` where featstore's own folders cannot be made, used and removed in ``folder`` (open at ``at``, or
    its path): refused before anything is made there (attack 40 #4: they were left for ever, "not writable by you")."""
    line = unusable(at, folder)
    if line is not None:
        raise Unusable(line, folder)


def _keeps_setgid(st: os.stat_result) -> bool:
    """Whether a chmod by this user keeps the set-group-ID bit of the file of ``st``: root's, or a member of its group
    (a user outside it without CAP_FSETID has the bit cleared by Linux)."""
    return os.geteuid() == 0 or st.st_gid == os.getegid() or st.st_gid in os.getgroups()


def _key(name: str, dir_fd: int) -> tuple[int, int] | None:
    """The device and inode of the entry ``name`` in the folder open at ``dir_fd`` (a link's own); None: nothing."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return st.st_dev, st.st_ino
    return None


def unredirectable(fd: int, name: str, parent: Path, held: os.stat_result) -> Path | None:
    """A path to the folder open at ``fd`` (named ``name`` in ``parent``, whose stat is ``held``) that no rename by
    someone else can redirect: ``/proc/self/fd/<fd>``; where there is none, by name only when no one else can rename an
    entry in ``parent`` or above it (:func:`by_name`) and the name is still that folder; else None. What a writer that
    opens by path (h5py, pyarrow, Keras) is given, in a private folder and in an own folder alike."""
    proc = proc_path(fd)
    if proc is not None:
        return proc
    base = by_name(parent, held)
    if base is not None and same_folder(fd, base / name):
        return base / name
    return None
