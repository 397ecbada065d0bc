"""The link rule featstore holds every path it reads or writes by name to: only this user's own symbolic links (and
root's: ``/tmp -> /private/tmp``) are followed, every link met on the way counted (its folders', the name's, and what
each points to). Another user's link may name a file of this user's elsewhere: in a team folder a colleague's link at
a store, a data root or an image put the user's private data where the team reads it (attacks 26-30).
:mod:`featstore.store.links` holds stores to it on the file actually opened; the image listing holds ``--data``, its
split folder and every entry to it.

>>> foreign_on("data")   # None, or (link, its lstat, its target) of the first link another user made   # doctest: +SKIP
"""

from __future__ import annotations

import os
import stat

from featstore.errors import StoreError
from featstore.outputs import terminal_safe


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
