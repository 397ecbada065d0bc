"""A new folder written whole before it is renamed into place (a run folder, ``export --rows-per-file``'s shards), safe
in a folder others can write.

The folder is made by ``mkdtemp`` (mode 0700: no one else can make, rename or replace an entry in it) and held open;
every file is written through ``/proc/self/fd/<fd>/...`` (:attr:`OwnFolder.at`), which no rename in the shared folder
can redirect: a colleague who renames the folder away and puts a folder of links at its name (a ``root:team 2775``
folder has no sticky bit, so every member may) no longer makes featstore write through those links onto this user's
own files (attack 25). Its mode becomes the umask's only when it is complete, set through the descriptor, and it is
renamed into place only while its name is still that folder. Where there is no such path (macOS), the name is used
only when no one else can write the parent folder (or it has the sticky bit); else the write is refused.

Example::

    with OwnFolder(Path("runs"), ".logreg.", ".tmp") as folder:
        (folder.at / "run.json").write_text("{}")
        folder.publish(Path("runs/logreg-1a2b3c"))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from featstore.errors import OutputError
from featstore.outputs import _umask

_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class OwnFolder:
    """A new hidden folder ``<prefix><random><suffix>`` in ``parent`` held open while it is written: write through
    :attr:`at`, then :meth:`publish`; leaving the block removes it unless it was published. An OSError making it is
    raised as it is; a folder that is not the one made (someone else's at its name) is an OutputError."""

    def __init__(self, parent: Path, prefix: str, suffix: str):
        self.name = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))  # 0700
        self.published = False
        try:
            self.fd = os.open(self.name, _DIR)
        except OSError:
            shutil.rmtree(self.name, ignore_errors=True)
            raise
        try:
            st = os.fstat(self.fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077 or os.listdir(self.fd):
                raise self._swapped()
            self.at = _unredirectable(self.fd, self.name, parent)
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
        try:
            st = os.lstat(self.name)
        except OSError:
            return False
        mine = os.fstat(self.fd)
        return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def publish(self, dst: Path, mode: int | None = None) -> None:
        """The umask's mode (or ``mode``) set through the descriptor, then the folder renamed onto ``dst`` while its name
        is still this folder (else an OutputError: nothing is renamed)."""
        os.fchmod(self.fd, (0o777 & ~_umask()) if mode is None else mode)
        if not self.is_it():
            raise self._swapped()
        os.replace(self.name, dst)
        self.published = True
        self.close()

    def remove(self) -> None:
        """Remove what was written and the folder (by name only while the name is still it); never raises."""
        if getattr(self, "fd", -1) < 0:
            return
        with contextlib.suppress(OSError):
            at = _proc(self.fd) or (self.name if self.is_it() else None)
            if at is not None:
                for entry in os.listdir(self.fd):
                    p = at / entry
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            p.unlink()
            if self.is_it():
                os.rmdir(self.name)
        self.close()

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1

    def _swapped(self) -> OutputError:
        return OutputError(
            f"{self.name}, the folder featstore made to write in, was replaced by another (someone else can write "
            f"{self.name.parent}); nothing was written there. Write into a folder only you can write, then re-run the "
            f"same command"
        )


def _unredirectable(fd: int, name: Path, parent: Path) -> Path:
    """A path to the folder open at ``fd`` that no rename in ``parent`` can redirect: ``/proc/self/fd/<fd>``; where
    there is none, ``name`` only when no one else can write ``parent`` (or it has the sticky bit)."""
    proc = _proc(fd)
    if proc is not None:
        return proc
    st = os.stat(parent)
    if (st.st_uid == os.geteuid() and not st.st_mode & 0o022) or st.st_mode & stat.S_ISVTX:
        return name
    raise OutputError(
        f"cannot write into {parent}: someone else can write that folder, and this system has no /proc/self/fd to "
        f"write there safely; write into a folder only you can write"
    )


def _proc(fd: int) -> Path | None:
    """``/proc/self/fd/<fd>`` where it leads to the folder open at ``fd`` (Linux); else None."""
    proc = Path(f"/proc/self/fd/{fd}")
    with contextlib.suppress(OSError):
        st, mine = os.stat(proc), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return proc
    return None
