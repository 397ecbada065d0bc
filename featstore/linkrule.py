"""The link rule featstore holds every path it reads or writes by name to: only this user's own symbolic links (and
root's: ``/tmp -> /private/tmp``) are followed, every link met on the way counted (its folders', the name's, and what
each points to). Another user's link may name a file of this user's elsewhere: in a team folder a colleague's link at
a store, a data root or an image put the user's private data where the team reads it (attacks 26-30).
:mod:`featstore.store.links` holds stores to it on the file actually opened; the image listing holds ``--data``, its
split folder and every entry to it; :func:`refuse_foreign` holds every output's path (:mod:`featstore.outputs`, the
report's folder, export's shards) and the runs folder (attack 31 #2, #4).

>>> foreign_on("data")   # None, or (link, its lstat, its target) of the first link another user made   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shlex
import stat

from featstore.errors import StoreError
from featstore.safetext import terminal_safe
from featstore.sticky import owner_name as user  # the name of a uid, said in every link line

PROC_FD = "/proc/self/fd/"  # a descriptor's path (a folder featstore holds open): checked when it was opened


def walk(
    path: str | os.PathLike, most: int = 40, error: type[Exception] = StoreError, what: str = "the store"
) -> tuple[list[tuple[str, os.stat_result, str]], str | None, os.stat_result | None]:
    """Resolve ``path`` as the kernel does, one ``lstat`` per part: the symbolic links met (its folders', the name's,
    and what each points to, at most ``most`` hops) with their ``lstat`` and target, then the file reached and its ``lstat``
    (None, None where a part does not exist or the links loop)."""
    links: list[tuple[str, os.stat_result, str]] = []
    pending = list(reversed(full_path(path, error, what).split("/")))
    current, st = "/", os.lstat("/")
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            st = os.lstat(current)
            continue
        nxt = os.path.join(current, part)
        try:
            st = os.lstat(nxt)
        except OSError:
            return links, None, None
        if not stat.S_ISLNK(st.st_mode):
            current = nxt
            continue
        if len(links) >= most:
            return links, None, None  # a loop: opening the store says so
        try:
            target = os.readlink(nxt)
        except OSError:  # no longer a link (renamed over since its lstat): the opening's check says the name changed
            return links, None, None
        links.append((nxt, st, target))
        if target.startswith("/"):
            current = "/"
        pending.extend(reversed(target.split("/")))
    return links, current, st


def full_path(path: str | os.PathLike, error: type[Exception] = StoreError, what: str = "the store") -> str:
    """``path`` from ``/``: as given when absolute (no current folder needed: it may be gone), else from the current
    folder; a current folder that no longer exists is one line (attack 30 #7: a store named by its absolute path was
    "missing", and extract ended in a traceback)."""
    p = os.fspath(path)
    if os.path.isabs(p):
        return p
    try:
        return os.path.join(os.getcwd(), p)
    except FileNotFoundError:
        raise error(
            f"the current folder no longer exists (removed since this shell entered it), so {terminal_safe(p)} names "
            f"nothing: cd to an existing folder, or give {what} by its absolute path"
        ) from None


def foreign_on(path: str | os.PathLike, error: type[Exception] = StoreError, what: str = "the store"):
    """The first link another user made (not this user, not root) met resolving ``path``: ``(link, its lstat, its
    target)``; None when there is none."""
    for link, st, target in walk(path, error=error, what=what)[0]:
        if st.st_uid not in (os.geteuid(), 0):
            return link, st, target
    return None


def refuse_foreign(
    path: str | os.PathLike,
    what: str,
    error: type[Exception] = StoreError,
    option: str | None = None,
    opened: int = -1,
    named: str | os.PathLike | None = None,
) -> os.stat_result | None:
    """Refuse ``path`` when resolving it meets a symbolic link another user made (on a folder of its path, at its name
    or in what a link points to), in one line (``error``) naming ``what`` (``named``: the path the user gave, when
    ``path`` is its folder), the link, its owner and target, the real path to give on purpose (with ``option``) and
    the ``rm`` that removes the link; the user's own and root's links are followed. Returns the ``lstat`` of what
    ``path`` reaches (None: nothing there yet). A colleague's ``team/exports -> ~you/work`` made ``export --out
    team/exports/train.csv`` replace the user's private export, and her ``team/s.runs -> ~you/thesis.runs`` put the
    user's private runs into the team's report (attack 31 #2, #4).

    By name, a race remains: a link put on the path after this walk is not seen. ``opened``, a descriptor of the
    folder ``path`` names (opened by name before), or of the file it names: refused too unless the walk reaches that
    very folder or file (device and inode), so the check holds for the folder actually written in (the file read). A
    path under ``/proc/self/fd/`` is a descriptor's (a folder featstore opened, and checked, before): not walked (its
    link's text is not what the kernel follows).

    >>> refuse_foreign("out/train.csv", "--out", OutputError, "--out")   # doctest: +SKIP
    """
    full = full_path(path, error, what)
    if full.startswith(PROC_FD):
        return None
    links, _, st = walk(full, error=error, what=what)
    for link, lst, target in links:
        if lst.st_uid not in (os.geteuid(), 0):
            raise error(foreign_line(path if named is None else named, what, link, lst, target, option))
    if opened >= 0:
        mine = os.fstat(opened)
        shown = terminal_safe(os.fspath(path if named is None else named))
        if st is None and len(os.fsencode(full)) >= 4096:  # PATH_MAX: the walk cannot lstat it (attack 33 #3)
            raise error(
                f"{what} {shown} cannot be checked for other users' links: its full path is {len(os.fsencode(full)):,} "
                f"bytes, longer than this system takes; cd nearer to it, or give a shorter path"
            )
        if st is None or (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            kind = "folder" if stat.S_ISDIR(mine.st_mode) else "file"
            raise error(
                f"{what} {shown}: the {kind} opened for it is not the one its path leads to now (a folder on its path "
                f"was renamed or replaced meanwhile: someone else can write there); nothing was written. Run again, "
                f"or write into a folder only you can write"
            )
    return st


def foreign_line(path: str | os.PathLike, what: str, link: str, st: os.stat_result, target: str, option=None) -> str:
    """The one line for ``path`` (``what``), which leads through ``link``, another user's, to ``target``."""
    shown, full = os.fspath(path), full_path(path)
    full = full if ".." in full.split("/") else os.path.normpath(full)  # "a/./b", "a//b": as the walk names links
    real = os.path.normpath(os.path.join(os.path.dirname(link), target))
    give = "give the real path it leads to"
    if full == link or full.startswith(link.rstrip("/") + "/"):  # the link is on the path as given: its real path
        real_path = os.path.join(real, full[len(link) :].lstrip("/")) if full != link else real
        give = f"give the real path ({option} {shlex.quote(real_path)})" if option else f"give {real_path}"
    return (
        f"{what} {terminal_safe(shown)} leads through {terminal_safe(link)}, a symbolic link made by {user(st.st_uid)}, "
        f"not by you (-> {terminal_safe(real)}); featstore follows only your own (or root's) links: another user's may "
        f"lead to a file or folder of yours elsewhere, and what featstore writes or reads there would be where they "
        f"can see it. To use it on purpose, {terminal_safe(give)}; else remove the link (rm {shlex.quote(link)})"
    )
