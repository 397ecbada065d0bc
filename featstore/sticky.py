"""Why renaming or removing another user's entry of a shared folder is refused, said as it is.

In a folder with the sticky bit (``/tmp``, a team folder made ``1777``) anyone may add entries, but only an entry's
owner, the folder's owner (or root) may rename, replace or remove it: the kernel answers everyone else EPERM. That
EPERM was read as "folder not writable; make it writable", of a folder that is (``1777``) and that no chmod of the
user's helps; a colleague's export, run, leaks record or hidden run there was then a dead end (attack 34 #3-#6).
:func:`refused` tells such an EPERM apart, :func:`ahead` says it before any work, and :meth:`Sticky.line` says
whose entry it is, who may change it, and the fix the caller adds (another path of the user's, or ask the owner).
:func:`unlisted` tells apart the EACCES of a folder the user may write in but not list (``0300``, a drop folder, a
shared folder made ``a-r``), which every output called "not writable by you" (attack 36 #2).

>>> owner_name(0)
'root'
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from dataclasses import dataclass

from featstore.safetext import terminal_safe


def owner_name(uid: int) -> str:
    """The user name of ``uid`` (``uid N`` where none is known)."""
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


@dataclass(frozen=True)
class Sticky:
    """An entry ``path`` of another user (``owner``) in the sticky ``folder`` (of ``folder_owner``, mode ``mode``)."""

    path: str
    owner: str
    folder: str
    folder_owner: str
    mode: int

    def line(self, fix: str) -> str:
        """``<path> is <owner>'s, in a folder with the sticky bit (...): only <owner> or ... may replace or remove it;
        <fix>``."""
        return (
            f"{terminal_safe(self.path)} is {self.owner}'s, in a folder with the sticky bit "
            f"({terminal_safe(self.folder)}, mode {self.mode:04o}): only {self.owner} or the folder's owner "
            f"({self.folder_owner}) may replace or remove it; {fix}"
        )


def entry(path: str | os.PathLike) -> Sticky | None:
    """A :class:`Sticky` when the kernel's sticky-bit rule keeps this user from renaming or removing ``path``: it is
    another user's, in a folder with the sticky bit that is not this user's and that this user may write (else the
    folder itself refuses, not the sticky bit); None otherwise (or where it cannot be told)."""
    if not hasattr(os, "geteuid"):
        return None
    full = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(full) or "/"
    try:
        st, dst = os.lstat(full), os.stat(folder)
    except (OSError, ValueError):
        return None
    me = os.geteuid()
    if st.st_uid == me or dst.st_uid == me or not dst.st_mode & stat.S_ISVTX:
        return None
    effective = os.access in os.supports_effective_ids
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        return None
    return Sticky(full, owner_name(st.st_uid), folder, owner_name(dst.st_uid), stat.S_IMODE(dst.st_mode))


def refused(exc: BaseException, path: str | os.PathLike) -> Sticky | None:
    """:func:`entry` of ``path`` when ``exc`` is an EPERM (what the kernel answers a rename or removal the sticky bit
    forbids; EACCES is a mode's answer: opening another's ``0700`` folder is not the sticky bit), else None."""
    if not isinstance(exc, OSError) or exc.errno != errno.EPERM:
        return None
    return entry(path)


def unlisted(folder: str | os.PathLike) -> str | None:
    """The line for an EACCES met in ``folder`` when this user may make entries in it but not list it (no read
    permission, write and search permission): what it is and the fix (``chmod u+r`` of the user's own folder, else
    its owner, named); None when it is not so, or cannot be told (``os.access`` of root says yes to all)."""
    if not hasattr(os, "geteuid"):
        return None
    effective = os.access in os.supports_effective_ids
    try:
        st = os.stat(folder)
        if os.access(folder, os.R_OK, effective_ids=effective):
            return None
        if not os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
            return None  # not writable either: that is what the caller says
    except (OSError, ValueError):
        return None
    shown = terminal_safe(os.fspath(folder))
    if st.st_uid == os.geteuid():
        fix = f"chmod u+r {shlex.quote(shown)} (it is yours)"
    else:
        fix = f"ask its owner, {owner_name(st.st_uid)}, to let you read it"
    return (
        f"folder {shown} cannot be listed by you (mode {stat.S_IMODE(st.st_mode):04o}: you may write in it but not "
        f"read it), and featstore reads the folders it writes in (an earlier output's files, its own leftovers); "
        f"{fix}, or write to another folder"
    )


def privileged() -> bool:
    """Whether this process may rename others' entries of a sticky folder anyway (root: CAP_FOWNER)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def ahead(path: str | os.PathLike) -> Sticky | None:
    """:func:`entry`, before any work: None for root, whom the sticky bit does not stop."""
    return None if privileged() else entry(path)


def share_fix(st: os.stat_result, path: str | os.PathLike, bits: str, recursive: bool = True) -> str:
    """The command that shares ``path`` (its ``stat``: ``st``) with this user through its group (``bits``: ``rX``,
    ``w``): ``chmod -R g+<bits>`` where this user is in its group; else first a ``chgrp`` to a group both are in (a run
    in its owner's own group: "chmod g+w" alone let no one else in, attack 38 #5, #10). ``recursive=False``: the
    folder alone (a runs folder, whose other runs are not the user's business: attack 39 #10)."""
    import shlex

    q = shlex.quote(os.fspath(path))
    r = " -R" if recursive else ""
    member = hasattr(os, "getgroups") and (st.st_gid == os.getegid() or st.st_gid in os.getgroups())
    return f"chmod{r} g+{bits} {q}" if member else f"chgrp{r} <a group you both are in> {q} && chmod{r} g+{bits} {q}"


def whose(st: os.stat_result) -> str:
    """``<owner>'s (mode NNNN)``: how the lines that ask a colleague name his file or folder (of ``st``)."""
    return f"{owner_name(st.st_uid)}'s (mode {stat.S_IMODE(st.st_mode):04o})"


def theirs(path: str | os.PathLike, folder: bool = False) -> os.stat_result | None:
    """The lstat of ``path`` when it is another user's (and, with ``folder``, a folder), else None (also where it
    cannot be looked at): the first question of every "this is a colleague's, ask them" line (a run's file, a run or
    runs folder closed to the user's writes, a colleague's cache folder)."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    if st.st_uid == os.geteuid() or (folder and not stat.S_ISDIR(st.st_mode)):
        return None
    return st
