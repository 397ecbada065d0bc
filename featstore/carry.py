"""What a file or folder featstore replaces passes on to its replacement: mode, group, access control list, user.*.

Every replacement is a new inode, written aside and renamed into place (:mod:`featstore.renames`): an output
(:func:`featstore.outputs.write_atomic`), a store's rewrite (:func:`featstore.store.compact.compact`), a run's new
version (``runs evaluate``) and a re-export of shards. Made with the umask's mode in the writer's primary group, it
dropped what the user had set on the old one: a private ``chmod -R go-rwx`` run came back 0755/0644, a ``chgrp team``
export went back to the user's group, a ``setfacl -m u:bob:r`` grant was lost (and the file's group, held off by the
ACL, let in: the mode's group bits are the ACL's mask) (attacks 23 #14, 26 #14, 28 #5, #6).

:func:`give` sets, through a descriptor of the new file (a chmod by name followed a link renamed onto it: attack 23),
the old one's group (``fchown``), mode, ``system.posix_acl_access`` (and a folder's ``system.posix_acl_default``) and
``user.*`` attributes. A group the user may not give (not a member of it) stays the user's, and the group then gets
nothing (its permission bits and the ACL's ``group::`` entry cleared): one warning line says so and how to share it
again. An attribute the new file cannot take is refused through the caller's ``refuse`` (nothing is replaced).
Example::

    before = Own.of("train.csv")
    ...  # write the new file, open at fd
    give(fd, before, "--out train.csv", "train.csv", refuse)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

ACCESS_ACL, DEFAULT_ACL = "system.posix_acl_access", "system.posix_acl_default"
# extended attributes a replacement carries: the access control lists (setfacl: how a file is shared with one person)
# and the user's own; others (security.*, trusted.*) are the system's and need privileges
_XATTRS = hasattr(os, "listxattr")
_GROUP_OBJ = 0x04  # an ACL entry's tag for the owning group (acl_ea.h)
_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_PATH = getattr(os, "O_PATH", 0)  # a descriptor for the owner and attributes of a file the user may not read
_PATH = _PATH and _PATH | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

Refuse = Callable[[str, OSError], Exception]  # (attribute, error) -> the caller's one line, raised


@dataclass(frozen=True)
class Own:
    """A file's or folder's mode, group and carried extended attributes (``key``: its device and inode)."""

    st_mode: int
    st_gid: int
    xattrs: dict[str, bytes] = field(default_factory=dict)
    key: tuple[int, int] | None = None

    @classmethod
    def of(cls, path: str | os.PathLike, folder: bool = False, dir_fd: int | None = None) -> Own | None:
        """Of the regular file (``folder``: the folder) at ``path`` (relative to the folder open at ``dir_fd``), not
        followed if a link, when it is this user's; None for anything else: another user's file at the name (her
        earlier export) gave the user's new file her ACL entry, which let her read and rewrite it (attack 30 #2); its
        replacement gets the umask's mode instead. Owner, mode and attributes are read from one descriptor: checked by
        ``lstat`` and then read by name, a colleague's file exchanged with the user's in between (renameat2
        RENAME_EXCHANGE, in a team folder without the sticky bit) gave the user's new file her ACL (attack 31 #3)."""
        try:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            if not _ours(st, folder):  # (a device is not opened: opening some has effects)
                return None
            fd = _open_own(path, folder, dir_fd)
        except PermissionError:  # the user's own file they may not read, and no O_PATH: the lstat's mode and group only
            return cls(st.st_mode, st.st_gid, {}, (st.st_dev, st.st_ino))
        except OSError:
            return None
        try:
            return cls.at(fd, folder)
        finally:
            os.close(fd)

    @classmethod
    def at(cls, fd: int, folder: bool = False) -> Own | None:
        """Of the regular file (``folder``: the folder) open at ``fd`` when it is this user's; None for anything else.
        The file opened is the one that counts, whatever a ``lstat`` of its name saw before."""
        try:
            st = os.fstat(fd)
            if not _ours(st, folder):
                return None
            return cls(st.st_mode, st.st_gid, _fd_xattrs(fd, folder), (st.st_dev, st.st_ino))
        except OSError:
            return None


def _ours(st: os.stat_result, folder: bool) -> bool:
    """Whether ``st`` is this user's regular file (``folder``: folder)."""
    return (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)) and st.st_uid == os.geteuid()


def _open_own(path: str | os.PathLike, folder: bool, dir_fd: int | None) -> int:
    """A descriptor of the file (``folder``: folder) at ``path``, never through a link and never blocking. One the user
    may not read (mode 0200) is opened with ``O_PATH`` where there is one (and ``/proc``, to read its attributes)."""
    kind = _DIRECTORY if folder else 0
    try:
        return os.open(path, _OPEN | kind, dir_fd=dir_fd)
    except PermissionError:
        if not (_PATH and os.path.isdir("/proc/self/fd")):
            raise
        return os.open(path, _PATH | kind, dir_fd=dir_fd)


def _fd_xattrs(fd: int, folder: bool) -> dict[str, bytes]:
    """:func:`shared_xattrs` of the file open at ``fd``; an ``O_PATH`` descriptor (which takes no ``flistxattr``) read
    through ``/proc/self/fd``, which leads to that very file."""
    if _PATH and _flags(fd) & os.O_PATH:
        return shared_xattrs(f"/proc/self/fd/{fd}", folder, follow=True)
    return shared_xattrs(fd, folder)


def _flags(fd: int) -> int:
    """The status flags of the descriptor ``fd``."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def shared_xattrs(path: str | os.PathLike | int, folder: bool = False, follow: bool = False) -> dict[str, bytes]:
    """The extended attributes of ``path`` (a link's own unless ``follow``; or of the file open at descriptor ``path``)
    that :func:`own_xattrs` carries (none where the system has none)."""
    if not _XATTRS:
        return {}
    kw = {} if isinstance(path, int) else {"follow_symlinks": follow}  # (a descriptor takes no follow_symlinks)
    try:
        names = [n for n in os.listxattr(path, **kw) if _carried(n, folder)]
        return {n: os.getxattr(path, n, **kw) for n in names}
    except OSError:
        return {}  # a file system without extended attributes: nothing to carry


def _carried(name: str, folder: bool) -> bool:
    """Whether the attribute ``name`` is one a replacement carries."""
    return name == ACCESS_ACL or name.startswith("user.") or (folder and name == DEFAULT_ACL)


def own_permissions(fd: int, before: os.stat_result | Own, bits: int = 0o7777) -> int:
    """The old group (``fchown``), then the old mode (``bits`` of it) onto the file open at ``fd``; the mode set. A group
    the user may not give leaves the user's, and its permission bits cleared: it had no access before."""
    if os.fstat(fd).st_gid != before.st_gid and hasattr(os, "fchown"):
        with contextlib.suppress(OSError):  # only a member of that group may give it
            os.fchown(fd, -1, before.st_gid)
    mode = stat.S_IMODE(before.st_mode) & bits
    if os.fstat(fd).st_gid != before.st_gid:
        mode &= ~0o070
    os.fchmod(fd, mode)  # after fchown, which clears a set-group-ID bit
    return mode


def own_xattrs(fd: int, shared: dict[str, bytes], before: os.stat_result | Own, refuse: Refuse, folder=False) -> None:
    """``shared`` (:func:`shared_xattrs`) onto the file open at ``fd`` (its ACL's ``group::`` emptied when the old group
    could not be given), and an ACL it inherited from its folder removed when the old one had none; an attribute it
    cannot take is ``refuse(name, error)``, raised."""
    if not _XATTRS:
        return
    kept = os.fstat(fd).st_gid == before.st_gid
    for name, value in shared.items():
        try:
            os.setxattr(fd, name, value if kept or name not in (ACCESS_ACL, DEFAULT_ACL) else _no_group(value))
        except OSError as exc:
            raise refuse(name, exc) from None
    for name in (ACCESS_ACL, DEFAULT_ACL) if folder else (ACCESS_ACL,):
        if name not in shared:
            with contextlib.suppress(OSError):  # ENODATA: none, as expected
                os.removexattr(fd, name)


def _no_group(acl: bytes) -> bytes:
    """A POSIX ACL (version 2: 4 bytes, then entries of tag, permissions, id) with its ``group::`` entry emptied."""
    out = bytearray(acl)
    for at in range(4, len(out) - 7, 8):
        if struct.unpack_from("<H", out, at)[0] == _GROUP_OBJ:
            struct.pack_into("<H", out, at + 2, 0)
    return bytes(out)


def say_group(fd: int, before: os.stat_result | Own, what: str, path: str, folder: bool = False) -> None:
    """One warning line when the file (``folder``: the folder) open at ``fd``, ``what`` at ``path``, is not in
    ``before``'s group (the user may not give it), with the command that gives it back."""
    now = os.fstat(fd).st_gid
    if now != before.st_gid:
        old, q = _group_name(before.st_gid), shlex.quote(path)
        bits = "".join(c for c, b in zip("rwx", (0o40, 0o20, 0o10)) if before.st_mode & b) or "r"
        fix = f"chgrp -R {old} {q} && chmod -R g+rX {q}" if folder else f"chgrp {old} {q} && chmod g+{bits} {q}"
        logger.warning(
            "%s was in group %s, which you may not give (you are not a member of it): it is now in your group %s, "
            "with no permissions for that group; to share it with %s again, run once you are a member of %s (or ask "
            "an administrator): %s",
            what,
            old,
            _group_name(now),
            old,
            old,
            fix,
        )


def _group_name(gid: int) -> str:
    """A group's name, or its number where the system has none for it."""
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


def give(fd: int, before: Own, what: str, path: str, refuse: Refuse, bits: int = 0o777, folder: bool = False) -> int:
    """``before``'s group, mode (``bits`` of it) and carried attributes onto the file (``folder``: the folder) open at
    ``fd``, which will be ``what`` at ``path``, saying a group that could not be given (:func:`say_group`); the mode it
    now has, with the set-group-ID bit wanted. Example::

        give(fd, Own.of("train.csv"), "--out train.csv", "train.csv", lambda name, exc: OutputError(...))
    """
    mode = own_permissions(fd, before, bits)
    own_xattrs(fd, before.xattrs, before, refuse, folder)
    say_group(fd, before, what, path, folder)
    # the set-group-ID bit wanted, also where the chmod of a user outside the folder's group cleared it: a folder's
    # publish gives it as a plain mkdir does (renames.OwnFolder._remade; it was lost from the second export on: 42 #5)
    return stat.S_IMODE(os.fstat(fd).st_mode) | (mode & stat.S_ISGID)


def not_carried(where: str, error: type[Exception], nothing: str = "nothing was written there") -> Refuse:
    """The ``refuse`` of :func:`give` for ``where`` (e.g. ``"--out train.csv"``): one ``error`` line naming the attribute
    the new file cannot take, that ``nothing`` was replaced, and the fix."""

    def refused(name: str, exc: OSError) -> Exception:
        kind = "an access control list: setfacl" if name.startswith("system.") else "a user attribute: setfattr"
        return error(
            f"{where} carries the extended attribute {name} ({kind}), which its new version beside it cannot take "
            f"({exc.strerror or exc}); {nothing}. Remove that attribute (setfacl -b, or setfattr -x) or write to "
            f"another name, then run again"
        )

    return refused


def own_folder(folder: str | os.PathLike) -> tuple[Own | None, dict[str, Own]]:
    """A folder's :class:`Own` and its regular files' (by name), for :func:`give_folder`; (None, {}) when none is
    there."""
    try:
        fd = _open_own(folder, True, None)
    except PermissionError:  # the user's own folder they may not read, and no O_PATH: its mode and group, no files
        return Own.of(folder, folder=True), {}
    except OSError:
        return None, {}
    try:  # the folder and each file in it read through descriptors: what is carried is what was checked (attack 31 #3)
        own = Own.at(fd, folder=True)
        if own is None:
            return None, {}
        files = {}
        with contextlib.suppress(OSError), os.scandir(fd) as entries:  # (an O_PATH one: the user may not list it)
            for entry in entries:
                if (found := Own.of(entry.name, dir_fd=fd)) is not None:
                    files[entry.name] = found
        return own, files
    finally:
        os.close(fd)


def give_folder(fd: int, before: Own, files: dict[str, Own], what: str, path: str, refuse: Refuse) -> int:
    """The folder open at ``fd`` (a new version of one, :func:`own_folder` of the old) given ``before``'s, and each
    regular file in it the old file's of its name, else the first old file's, else the folder's mode less its execute
    bits and its group; a file that is the old one (a hard link carried over) is left as it is. The folder's mode."""
    spare = next(iter(sorted(files.items())), (None, Own(before.st_mode & 0o666, before.st_gid)))[1]
    for name in sorted(os.listdir(fd)):
        with contextlib.suppress(FileNotFoundError):
            f = os.open(name, _OPEN, dir_fd=fd)
            try:
                st = os.fstat(f)
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) != getattr(files.get(name), "key", None):
                    like = files.get(name, spare)
                    own_permissions(f, like, 0o777)
                    own_xattrs(f, like.xattrs, like, lambda attr, exc, n=name: refuse(f"{attr} (of {n})", exc))
            finally:
                os.close(f)
    return give(fd, before, what, path, refuse, 0o7777, folder=True)
