"""Which links a store's name may lead through, and the file an opening actually got: the rule holds for that file.

Only this user's own symbolic links (and root's: ``/tmp -> /private/tmp``) are followed on the way to a store, for
reading and for writing; another user's link may name a file of this user's elsewhere (attack 26 #2, 27 #2/#8, 28 #4).
The check is made on the file actually opened, not on the name before the opening (attack 28 #1): :func:`open_checked`
opens, then walks the name again (:func:`reach`) and compares the file it reaches with the descriptor's ``fstat``. A
store opened for writing is first opened read-only (which changes nothing), checked, and then given to HDF5 as
``/proc/self/fd/<fd>``, which no rename can redirect: HDF5 writes its superblock's "open for writing" flag at the
opening itself, so an opening by name that turned out to be the wrong file had already written it.

>>> f, alias, fd = open_checked("features.h5", "a", {})   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
from collections.abc import Iterator

import h5py

from featstore.errors import StoreError
from featstore.linkrule import full_path, user, walk  # noqa: F401 (re-exported)
from featstore.outputs import terminal_safe
from featstore.renames import proc_path

# how a store file is opened: HDF5 read-only, or read-write on the file as it is; never "w" (it empties the file at its
# name at the opening, before any check could look at what it emptied)
MODES = ("r", "a", "r+")
_RO = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def links_on(path: str | os.PathLike, most: int = 40) -> Iterator[tuple[str, os.stat_result]]:
    """Every symbolic link met resolving ``path`` (:func:`walk`), with its ``lstat``."""
    yield from ((link, st) for link, st, _ in walk(path, most)[0])


def reach(path: str | os.PathLike) -> tuple[str | None, os.stat_result | None]:
    """The file ``path`` leads to and its ``lstat`` (None, None: nothing there), once no link on the way is another
    user's (:func:`refuse_foreign_link`'s one line)."""
    links, end, st = walk(path)
    for link, lst, target in links:
        if lst.st_uid not in (os.geteuid(), 0):  # this user's, or the system's (/tmp -> /private/tmp)
            # (not even the link's folder's owner's: a colleague who swapped the user's `proj` for her own folder owns
            # both it and the link she put in it, attack 27 #8)
            raise _foreign(path, link, lst, target)
    return end, st


def refuse_foreign_link(path: str | os.PathLike) -> os.stat_result | None:
    """Refuse a store reached through a symbolic link another user made (anyone but this user or root: stricter than
    Linux's ``fs.protected_symlinks``, which trusts the folder's owner too), wherever it is met: the store's name, a
    link it points to, or a folder on its path; the ``lstat`` of the file reached (None: none yet). In a team folder a
    colleague's link made ``extract --overwrite`` replace a split of the user's private store (attack 26 #2), and
    ``export`` publish it beside the link (attack 28 #4)."""
    return reach(path)[1]


def _foreign(path, link: str, st: os.stat_result, target: str) -> StoreError:
    """The one line for a store that leads through ``link``, another user's, to ``target``."""
    via = "" if link == full_path(path) else f" through {terminal_safe(link)}"
    target = os.path.normpath(os.path.join(os.path.dirname(link), target))
    return StoreError(
        f"store {terminal_safe(str(path))} leads{via} to a symbolic link made by {user(st.st_uid)}, not by you "
        f"({terminal_safe(link)} -> {terminal_safe(target)}); featstore follows only your own links (another user's "
        f"may name a file of yours elsewhere, and what featstore writes from it may land where they read it): to use "
        f"that file on purpose, give the real path with --store {shlex.quote(target)}; else remove the link "
        f"(rm {shlex.quote(link)})"
    )


def hard_linked(path: str | os.PathLike, links: int) -> StoreError:
    """The one line for a store file of ``links`` names, which featstore does not write in place."""
    p = shlex.quote(str(path))
    return StoreError(
        f"store {terminal_safe(str(path))} has {links} names (a hard link: a `cp -al` or rsnapshot snapshot?); "
        f"writing it in place would change the other name(s) too. Give it a file of its own first: "
        f"cp --reflink=never {p} {p}.own && mv {p}.own {p} (or remove the other name), then run again"
    )


def refuse_hard_linked(path: str | os.PathLike) -> None:
    """Refuse to write a store file that has another name (a hard link: a ``cp -al`` or rsnapshot snapshot, a dedup
    tool): HDF5 updates the file in place, so the other name would gain the new split too (and a kill would damage
    both). Every other output is replaced by a rename, which leaves a hard link its own bytes."""
    try:
        links = os.stat(path).st_nlink
    except OSError:
        return  # no store yet (or one the opening itself names)
    if links > 1:
        raise hard_linked(path, links)


class Swapped(StoreError):
    """A store name that led to another file after the opening than the one opened (a rename in its folder)."""


def swapped(path: str | os.PathLike, wrote: bool) -> Swapped:
    """The one line for a store name that led to another file after the opening than the one opened."""
    folder = terminal_safe(os.path.dirname(full_path(path)))
    return Swapped(
        f"store {terminal_safe(str(path))} was replaced by another file while featstore opened it (someone else can "
        f"rename entries in {folder}); nothing was {'written' if wrote else 'read'}. Keep stores in a folder only you "
        f"can write, then run again"
    )


def same(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    """Whether two ``stat`` results are one file (device and inode)."""
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def too_long(path: str | os.PathLike) -> str:
    """The fix for a path the system refuses as too long: a name in it over the file system's NAME_MAX (the one
    :func:`side_name` says for a store's side files), else its full path, from the current folder, past PATH_MAX."""
    full = full_path(path)
    most = name_max(os.path.dirname(full))
    for part in reversed(full.split(os.sep)):
        if (size := len(os.fsencode(part))) > most:  # ("cd nearer to it" cannot help a name: attack 40 #10)
            return f"its name {terminal_safe(part[:24])}... is {size:,} bytes, over the {most} a name may have; use a shorter name"
    return (
        f"its full path is {len(os.fsencode(full)):,} bytes, longer than this system takes: cd nearer to it, or move it "
        f"to a shorter path"
    )


def name_max(folder: str | os.PathLike) -> int:
    """The longest name, in bytes, the file system of ``folder`` (or the nearest folder above it that exists) takes:
    ``pathconf``'s NAME_MAX, 255 where unknown."""
    folder = os.fspath(folder) or "."
    while True:
        try:
            return int(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            parent = os.path.dirname(folder)
            if not parent or parent == folder:
                return 255
            folder = parent


def side_name(path: str | os.PathLike, ends: dict[str, str]) -> str | None:
    """Why a side file of the store ``path`` (its real name + each ending of ``ends``, named by its value: ``{".lock":
    "lock file"}``) cannot be made, its name over NAME_MAX, with the store name that fits them all; None when all fit.
    Asked before any work: a 251-byte store name (legal) was refused once its extraction began, as a full path "longer
    than this system takes: cd nearer to it", which no cd helps (attack 40 #10)."""
    real = os.path.realpath(path)
    name, most = os.path.basename(real), name_max(os.path.dirname(real))
    size, longest = len(os.fsencode(name)), max(len(os.fsencode(end)) for end in ends)
    for end, what in ends.items():
        if size + len(os.fsencode(end)) > most:
            return (
                f"its {what}'s name {terminal_safe(name[:24])}...{end} would be {size + len(os.fsencode(end)):,} bytes, "
                f"over the {most} a name may have: use a store name of at most {most - longest} bytes"
            )
    return None


def check_opened(path: str | os.PathLike, st: os.stat_result, wrote: bool) -> str:
    """The file ``path`` reaches (its real path), once the name leads through no other user's link to the very file
    opened (``st``, the descriptor's ``fstat``); else the one line (:func:`refuse_foreign_link`, :func:`swapped`)."""
    end, now = reach(path)
    if end is None and len(os.fsencode(full_path(path))) >= 4096:  # PATH_MAX: the walk by full path failed
        raise StoreError(f"store {terminal_safe(str(path))} cannot be checked: {too_long(path)}")
    if end is None or not same(now, st):
        raise swapped(path, wrote)
    return end


def open_checked(path: str | os.PathLike, mode: str, kwargs: dict, expect=None) -> tuple[h5py.File, str | None, int]:
    """``h5py.File(path, mode)``, of the very file the name reaches through this user's own links only: the file, the
    name HDF5 was given for it in place of ``path`` (``/proc/self/fd/<fd>``; None: ``path``) and that descriptor, which
    the caller closes after the file (-1: none). An OSError of the opening (missing file, lock held) is raised as it
    is, for the caller to say. ``expect``: the ``stat`` of the file a write must reach (the one the writer's lock
    checked), else refused before HDF5 opens it."""
    if mode not in MODES:
        raise ValueError(f"a store opens with one of {MODES}, not {mode!r}")
    for _ in range(2):  # a new file renamed onto the name (the user's own resume's compaction): tried again
        with contextlib.suppress(Swapped):
            return _open_once(path, mode, kwargs, expect)
    return _open_once(path, mode, kwargs, expect)


def _open_once(path, mode: str, kwargs: dict, expect=None) -> tuple[h5py.File, str | None, int]:
    """One try of :func:`open_checked`."""
    try:  # read-only and non-blocking: nothing in the file changes, whichever it is, and a FIFO is not waited on
        fd = os.open(path, _RO)
    except FileNotFoundError:
        if mode != "a":
            raise
        if expect is not None:  # the store the lock checked is gone from its name: not made anew in its place
            raise swapped(path, wrote=True) from None
        refuse_foreign_link(path)  # a dangling link of someone else's at the name: said so, not created through
        try:  # O_EXCL: never through a link at the name
            return _checked(h5py.File(path, "w-", **kwargs), path, wrote=True), None, -1
        except FileExistsError:
            raise swapped(path, wrote=True) from None  # made at the name since: tried again as an existing store
    try:
        f, alias = _existing(path, fd, "r" if mode == "r" else "r+", kwargs, expect)
    except BaseException:
        os.close(fd)
        raise
    return f, alias, fd


def _existing(path, fd: int, mode: str, kwargs: dict, expect=None) -> tuple[h5py.File, str | None]:
    """The store open through HDF5 (``mode`` "r" or "r+"), from the read-only descriptor ``fd`` of it, once checked
    (and, with ``expect``, once it is that file). HDF5 is given ``/proc/self/fd/<fd>`` for reads too: by name, a FIFO
    renamed onto the name after the check made its opening wait for a writer forever (attack 30 #5)."""
    wrote = mode != "r"
    st = os.fstat(fd)
    check_opened(path, st, wrote=wrote)
    if expect is not None and not same(st, expect):
        raise swapped(path, wrote=wrote)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(
            f"store {terminal_safe(str(path))} is not a regular file (a folder, FIFO or device); pass the .h5 store "
            f"written by `featstore extract`"
        )
    if wrote and st.st_nlink > 1:
        raise hard_linked(path, st.st_nlink)
    alias = proc_path(fd)  # where there is no /proc (macOS), by name: the check after it is then the only one
    try:
        f = h5py.File(alias or path, mode, **kwargs)
    except OSError:  # HDF5 resolves the alias's real path: gone when the file was renamed off its name since the check
        if not same(reach(path)[1], st):
            raise swapped(path, wrote=wrote) from None
        raise
    if not same(os.fstat(f.id.get_vfd_handle()), st):
        f.close()
        raise swapped(path, wrote=wrote)
    return f, None if alias is None else str(alias)


def _checked(f: h5py.File, path, wrote: bool) -> h5py.File:
    """``f`` once the name ``path`` still reaches it through this user's own links only (:func:`check_opened`)."""
    try:
        check_opened(path, os.fstat(f.id.get_vfd_handle()), wrote)
    except BaseException:
        f.close()
        raise
    return f


ALIAS = re.compile(r"/proc/self/fd/\d+(?![\d/])")  # the name HDF5 is given for a store opened through its descriptor


def said_as(text: str, path: str | os.PathLike) -> str:
    """``text`` (a finding or an error kept while the store was open) with the name HDF5 was given for the store
    (``/proc/self/fd/<fd>``: ``ds.file.filename``) said as ``path``, the user's name for it."""
    return ALIAS.sub(lambda _: str(path), text)


def named(exc: BaseException, path: str | os.PathLike) -> None:
    """Say ``path`` where an error raised (or kept) while the store was open names it by the name HDF5 was given
    (``/proc/self/fd/<fd>``: messages quote ``ds.file.filename``)."""
    exc.args = tuple(said_as(a, path) if isinstance(a, str) else a for a in exc.args)
