"""A folder that featstore replaces (an earlier export's shards, a run's old version), held open from its check to its
removal: checked, read, moved aside and removed through one descriptor, and renamed only while its name is that folder.

Checked by name and then moved aside and deleted by name, a folder a colleague exchanged with another of the user's in
a team folder (renameat2 RENAME_EXCHANGE needs no right on either folder) was the one deleted: a re-export of shards
deleted the user's private ``notes/``, a ``runs evaluate`` another (private) run (attack 30 #8, #9).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from featstore.carry import Own, own_folder
from featstore.errors import OutputError
from featstore.renames import proc_path, same_folder

DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def replaced(what: str) -> OutputError:
    """The one line for a folder whose name no longer is the folder held."""
    return OutputError(f"{what} was replaced by another folder during this run; nothing was changed")


def own_held(fd: int, path: Path, what: str) -> tuple[Own | None, dict[str, Own]]:
    """:func:`featstore.carry.own_folder` of the folder open at ``fd`` (named ``path``): through ``/proc/self/fd``
    where there is one, else by name while the name is that folder before and after."""
    proc = proc_path(fd)
    if proc is not None:
        return own_folder(f"{proc}/.")
    if not same_folder(fd, path):
        raise replaced(what)
    found = own_folder(path)
    if not same_folder(fd, path):
        raise replaced(what)
    return found


def move_aside(fd: int, path: Path, aside: Path, what: str) -> None:
    """Rename ``path`` to ``aside`` only while it is the folder open at ``fd``; a folder moved that is not that one
    (exchanged in between) is put back, never removed, and the move refused in one line."""
    if not same_folder(fd, path):
        raise replaced(what)
    os.replace(path, aside)
    if same_folder(fd, aside):
        return
    if not os.path.lexists(path):
        os.replace(aside, path)  # someone else's folder, put back where it was
        raise replaced(what)
    raise OutputError(
        f"{what} was replaced by another folder during this run; the folder moved by mistake is at {aside}: move it "
        f"back to {path} yourself"
    )


def put_back(fd: int, aside: Path, path: Path) -> None:
    """The held folder, moved to ``aside``, back at ``path`` when that name is free (only while ``aside`` is it)."""
    if not os.path.lexists(path) and same_folder(fd, aside):
        os.replace(aside, path)


def remove_held(fd: int, path: Path, names: list[str] | None = None) -> None:
    """Remove the folder open at ``fd``: its entries through the descriptor (``names``: only those, and only regular
    files), then the name ``path`` only while it is that folder (an entry that appeared since keeps it)."""
    for name in os.listdir(fd) if names is None else names:
        with contextlib.suppress(FileNotFoundError):
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                if names is None:
                    shutil.rmtree(name, dir_fd=fd)
            elif names is None or stat.S_ISREG(mode):
                os.unlink(name, dir_fd=fd)
    if same_folder(fd, path):
        os.rmdir(path)
