"""Runs folders (and similarity index folders) this process made, so that a run not recorded leaves none behind.

``fit --runs /full/runs`` on a full disk said "Nothing was recorded (no partial folder is left)", yet the ``runs``
folder featstore had made for it stayed, empty (attack 48 L3). :func:`make` makes a runs folder level by level and
remembers each level it made (its device and inode); :func:`remove_made` removes those levels again, deepest first,
while each is empty, this user's and still the folder made (a folder someone put at its name since is left).
:func:`removed_on_failure` does so around a command's work between making the folder and recording into it (a
``fewshot`` or ``fit`` whose classifier could not fit left it, empty: attack 53 #3), and around a similarity index's
build (:func:`remember` its levels: a split refused while read left ``<store>.index/<extractor>/<split>/``: #7).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_MADE: dict[str, tuple[int, int]] = {}  # absolute path -> (st_dev, st_ino) of a folder this process made


def make(root: Path) -> None:
    """``root.mkdir(parents=True, exist_ok=True)``, remembering the levels made here (not those another process made
    meanwhile); its errors are mkdir's."""
    missing = []
    level = Path(os.path.abspath(root))
    while not os.path.lexists(level) and level != level.parent:
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        try:
            os.mkdir(level)
        except FileExistsError:
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(level)
            _MADE[str(level)] = (st.st_dev, st.st_ino)
    Path(root).mkdir(parents=True, exist_ok=True)  # a file or a link to nothing at the name: mkdir's own error


def remember(levels: list[Path]) -> None:
    """Remember folders another maker made here (``featstore.caches`` makes a similarity index's levels one by one,
    never through a link) as :func:`make` does; those not there (it failed before them) are left out."""
    for level in levels:
        with contextlib.suppress(OSError):
            st = os.lstat(level)
            if stat.S_ISDIR(st.st_mode):
                _MADE[os.path.abspath(level)] = (st.st_dev, st.st_ino)


def remove_made(root: Path) -> None:
    """Remove ``root`` and the levels above it that :func:`make` made, deepest first, while each is empty (its rmdir
    refuses otherwise), this user's, and the very folder made; stops at the first one kept."""
    level = Path(os.path.abspath(root))
    while str(level) in _MADE:
        try:
            st = os.lstat(level)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or (st.st_dev, st.st_ino) != _MADE[str(level)]:
                return
            os.rmdir(level)
        except OSError:
            return
        del _MADE[str(level)]
        level = level.parent


def forget(root: Path) -> None:
    """Forget ``root`` and the levels above it: a command that worked made them the user's, so a later call that fails
    in this process never removes them (a folder the user emptied and set a mode on was removed by the next refused
    ``fit``: attack 55 #5)."""
    level = Path(os.path.abspath(root))
    while _MADE.pop(str(level), None) is not None:
        level = level.parent


@contextlib.contextmanager
def removed_on_failure(root: Path) -> Iterator[None]:
    """Run the body; when it raises (an error, Ctrl-C), :func:`remove_made` the runs folder before the error goes on:
    only the levels this process made that are still empty (a folder that holds anything, or was there, is kept);
    when it ends well, :func:`forget` them."""
    try:
        yield
    except BaseException:
        remove_made(root)
        raise
    forget(root)
