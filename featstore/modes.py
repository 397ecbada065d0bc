"""The mode a new file or folder gets where featstore writes it: what a plain ``open(O_CREAT, 0666)`` or ``mkdir(0777)``
in that folder would give, also where the folder shares by a default ACL or a set-group-ID bit.

Every whole-file output and every new folder is made private first (``0600``, ``mkdtemp``'s ``0700``: nothing half
written is readable or writable by others) and given its final mode through its descriptor once complete
(:mod:`featstore.renames`). That final mode was ``0666``/``0777`` less the umask. Two ways teams share a folder make that
wrong (attack 36 #4, #5):

- a **default ACL** (``setfacl -d -m u:bob:rwx``): there the kernel ignores the umask and takes the new entry's
  permissions from the folder's default ACL; a chmod to the umask's mode then set the entry's ACL mask to the umask's
  group bits, so bob's ``rwx`` became ``r-x`` on a run folder and ``r--`` on an export;
- a **set-group-ID folder** (``2770``, group ``team``): a new folder inherits the bit (and its files the group), and a
  chmod without it cleared it, so figures drawn into a run later got the drawer's own group and team members shut each
  other out.

:func:`fresh_mode` reads both from a folder featstore just made inside the destination (``mkdtemp``/``mkdir``), which
inherited the destination's default ACL (as its own default ACL) and set-group-ID bit when it was made, so nothing is
read by name from the shared folder.

>>> fresh_mode(-1, folder=False) == 0o666 & ~umask()
True
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from featstore.safetext import terminal_safe

DEFAULT_ACL = "system.posix_acl_default"
ACCESS_ACL = "system.posix_acl_access"
# statx (linux/stat.h): its call's flags and mask, and the attributes (stx_attributes at byte 8, stx_attributes_mask at
# byte 56 of struct statx) that make a folder unusable for featstore's private folders
_AT_FDCWD, _AT_EMPTY_PATH, _STATX_BASIC_STATS = -100, 0x1000, 0x7FF
_STATX_ATTR_IMMUTABLE, _STATX_ATTR_APPEND = 0x10, 0x20
# a POSIX ACL's binary form (linux/posix_acl_xattr.h): a 4-byte header (version 2), then 8-byte entries of tag (u16),
# permissions (u16) and id (u32); its tags
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def umask() -> int:
    """The process umask (read by setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fresh_mode(fd: int, folder: bool) -> int:
    """The mode a new file (``folder``: folder) made in the folder open at ``fd`` gets from a plain ``open``/``mkdir``:
    ``0666``/``0777`` masked by that folder's default ACL where it has one (its owner's, mask's (else group's) and
    others' permissions), else less the umask; a folder also keeps the set-group-ID bit ``fd``'s folder has (Linux
    gives it to every folder made in a set-group-ID folder). ``fd`` -1: the umask's mode."""
    base = 0o777 if folder else 0o666
    bits = _acl_bits(fd)
    mode = base & (bits if bits is not None else ~umask())
    if folder and fd >= 0:
        try:
            mode |= os.fstat(fd).st_mode & stat.S_ISGID
        except OSError:
            pass
    return mode


def _acl_bits(fd: int) -> int | None:
    """The permission bits the default ACL of the folder open at ``fd`` gives a new entry, or None without one."""
    perms = _default_acl(fd)
    if perms is None:
        return None
    group = perms.get(_MASK, perms.get(_GROUP_OBJ, 0))
    return perms[_USER_OBJ] << 6 | group << 3 | perms[_OTHER]


def _default_acl(at: int | str | os.PathLike) -> dict[int, int] | None:
    """The permissions of the default ACL's entries by tag of the folder open at ``at`` (a descriptor, ``O_PATH`` too,
    or a path), or None without one (or one the kernel would not apply: it needs the owner's and others' entries)."""
    if (isinstance(at, int) and at < 0) or not hasattr(os, "getxattr"):
        return None
    try:  # (through /proc: an O_PATH descriptor takes no fgetxattr on older kernels)
        acl = os.getxattr(f"/proc/self/fd/{at}" if isinstance(at, int) else at, DEFAULT_ACL)
    except OSError:  # ENODATA: none; ENOTSUP: a file system without ACLs
        if not isinstance(at, int):
            return None
        try:
            acl = os.getxattr(at, DEFAULT_ACL)
        except OSError:
            return None
    perms: dict[int, int] = {}
    for start in range(4, len(acl) - 7, 8):
        tag, perm = struct.unpack_from("<HH", acl, start)
        perms[tag] = perm & 0o7
    return perms if _USER_OBJ in perms and _OTHER in perms else None


def same_xattrs(src: int, dst: int) -> None:
    """The ACLs and ``user.*`` attributes (what :mod:`featstore.carry` carries) of the folder open at ``src`` onto the
    one open at ``dst``, set only where they differ: setting an access ACL clears the set-group-ID bit as a chmod does
    (a plain ``mkdir`` beside a replaced folder usually inherited the same ACL); none where there are no attributes."""
    if not hasattr(os, "listxattr"):
        return

    def carried(fd: int) -> dict[str, bytes]:
        try:
            names = [n for n in os.listxattr(fd) if n in (ACCESS_ACL, DEFAULT_ACL) or n.startswith("user.")]
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
        return {n: os.getxattr(fd, n) for n in names}

    old, new = carried(src), carried(dst)
    for name in new.keys() - old.keys():
        os.removexattr(dst, name)
    for name, value in old.items():
        if new.get(name) != value:
            os.setxattr(dst, name, value)


def unusable(at: int | str | os.PathLike, shown: str | os.PathLike) -> str | None:
    """Why featstore cannot write its outputs in the folder open at ``at`` (a descriptor, ``O_PATH`` too, or a path;
    ``shown`` in the line), or None: each output is written in a folder of featstore's own made there, then renamed into
    place and that folder removed (:mod:`featstore.renames`), which an append-only folder (``chattr +a``) lets be made
    but never renamed over or removed, and which a default ACL giving new entries' owner no ``x`` (``setfacl -d -m
    u::rw-``, written for files) makes but shuts to its maker: each said "not writable by you" and left folders no one
    could remove (attack 40 #4). Refused up front with this line, before anything is made."""
    where = terminal_safe(os.fspath(shown))
    attributes = _attributes(at)
    if attributes & _STATX_ATTR_IMMUTABLE:
        return f"folder {where} is immutable (chattr +i): nothing can be made in it; write to another folder"
    if attributes & _STATX_ATTR_APPEND:
        return (
            f"folder {where} is append-only (chattr +a): featstore writes each output into a folder of its own there "
            f"and renames it into place, and nothing in an append-only folder can be renamed over or removed; write to "
            f"another folder"
        )
    perms = _default_acl(at) if _checks_permissions() else None
    owner = perms[_USER_OBJ] if perms is not None else 0o7
    if owner != 0o7:
        given = "".join(c if owner & b else "-" for c, b in zip("rwx", (4, 2, 1), strict=True))
        return (
            f"folder {where} has a default ACL that gives new folders' owner {given} (setfacl -d -m u::{given}): the "
            f"folder featstore makes there for each output would be shut to you; write to another folder, or give "
            f"owners rwx (`setfacl -d -m u::rwx {where}`: new files still get no x)"
        )
    return None


def _checks_permissions() -> bool:
    """Whether the kernel checks this process's permissions on its own folders (root's CAP_DAC_OVERRIDE: not)."""
    return not hasattr(os, "geteuid") or os.geteuid() != 0


def _attributes(at: int | str | os.PathLike) -> int:
    """The ``statx`` attributes (``STATX_ATTR_*``) the file system reports for the folder open at ``at`` (a descriptor,
    ``O_PATH`` too, or a path followed), 0 where unknown (no ``statx``: other systems, an old C library)."""
    try:
        import ctypes

        statx = ctypes.CDLL(None, use_errno=True).statx
    except (ImportError, OSError, AttributeError, TypeError):  # (Windows: no CDLL(None))
        return 0
    buf = ctypes.create_string_buffer(256)  # struct statx: 256 bytes
    if isinstance(at, int):
        done = statx(at, b"", _AT_EMPTY_PATH, _STATX_BASIC_STATS, buf)
    else:
        done = statx(_AT_FDCWD, os.fsencode(at), 0, _STATX_BASIC_STATS, buf)
    if done != 0:
        return 0
    attributes, known = struct.unpack_from("=Q", buf, 8)[0], struct.unpack_from("=Q", buf, 56)[0]
    return attributes & known


def others_may_write(st: os.stat_result, at: int | str | os.PathLike | None = None) -> bool:
    """Whether someone else may write the file or folder of ``st`` (open at the descriptor ``at``, or its path, not
    followed): anyone (o+w), or its group (g+w) unless that group is this user's own private group (umask 002 makes the
    user's files group-writable: Ray's file of the user's own was refused, attack 27 #5; so was the user's own
    ~/.keras): no one else listed in it, nor anyone whose primary group it is (the group file lists only secondary
    members). With an access ACL the group bits are its mask over every named user and group: a named user other
    than this one, or a group that is not the user's private group, whose entry has ``w`` may write (a ``KERAS_HOME``
    shared by ``setfacl -m u:bob:rwx`` was taken as private, attack 40 #1); where ``at`` is not given or the file
    system has no ACLs, the mode bits alone."""
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False  # (no ACL entry beyond the owner's has w: the mask, the group bits, has none)
    entries = _access_acl(at)
    if entries is None:
        return not _private_group(st.st_gid)
    me = os.geteuid()
    for tag, perm, ident in entries:
        if not perm & 0o2:
            continue
        if (tag == _USER and ident != me) or (tag == _GROUP and not _private_group(ident)):
            return True
        if tag == _GROUP_OBJ and not _private_group(st.st_gid):
            return True
    return False


def _access_acl(at: int | str | os.PathLike | None) -> list[tuple[int, int, int]] | None:
    """The (tag, permissions, id) entries of the access ACL of the file open at ``at`` (or its path, not followed), or
    None where there is none or it cannot be read (no ``at``, no xattrs, a file system without ACLs)."""
    if at is None or not hasattr(os, "getxattr"):
        return None
    try:
        acl = os.getxattr(at, ACCESS_ACL, **({} if isinstance(at, int) else {"follow_symlinks": False}))
    except OSError:  # ENODATA: the mode alone; ENOTSUP: a file system without ACLs
        return None
    return [struct.unpack_from("<HHI", acl, at_) for at_ in range(4, len(acl) - 7, 8)]


def _private_group(gid: int) -> bool:
    """Whether the group ``gid`` is this user's own private group: the user's group, with no one else listed in it
    nor anyone whose primary group it is (the group file lists only secondary members)."""
    try:
        import grp
        import pwd

        me = pwd.getpwuid(os.geteuid()).pw_name
        if gid != os.getegid() or set(grp.getgrgid(gid).gr_mem) - {me}:
            return False
        return not any(p.pw_gid == gid and p.pw_name != me for p in pwd.getpwall())  # members by primary group
    except (ImportError, KeyError):
        return False


def writers(st: os.stat_result, at: int | str | os.PathLike | None = None, shown: str | os.PathLike = "") -> str:
    """Who else may write the file or folder of ``st`` (open at ``at``, or its path), as :func:`others_may_write` reads
    it, for a line that names the fix: ``anyone (o+w)``, the named users and groups of its access ACL that have ``w``
    (``user bob (its ACL)``), else its group (``group team``); ``its ACL (getfacl <shown>)`` where that is all known."""
    if st.st_mode & 0o002:
        return "anyone (it is o+w)"
    entries = _access_acl(at) if st.st_mode & 0o020 else None
    if entries is None:
        return f"group {_name(st.st_gid, group=True)}"
    me, named = os.geteuid(), []
    for tag, perm, ident in entries:
        if not perm & 0o2 or (tag == _USER and ident == me):
            continue
        if tag == _USER:
            named.append(f"user {_name(ident, group=False)}")
        elif tag in (_GROUP, _GROUP_OBJ) and not _private_group(st.st_gid if tag == _GROUP_OBJ else ident):
            named.append(f"group {_name(st.st_gid if tag == _GROUP_OBJ else ident, group=True)}")
    if not named:
        return f"its ACL (getfacl {terminal_safe(os.fspath(shown))})" if shown else "its ACL"
    return " and ".join(named) + " (its ACL)"


def _name(ident: int, group: bool) -> str:
    """The name of the user (``group``: group) ``ident``, or ``uid N``/``gid N`` where none is known."""
    try:
        import grp
        import pwd

        return grp.getgrgid(ident).gr_name if group else pwd.getpwuid(ident).pw_name
    except (ImportError, KeyError):
        return f"{'gid' if group else 'uid'} {ident}"


def renamable_by_others(path: str | os.PathLike) -> str | None:
    """The first folder on the way to ``path`` (``path`` included), walked as the kernel resolves it, in which someone
    other than this user and root may rename entries, or a link on the way another user made: he could swap what
    featstore later opens by name below it (a TMPDIR that is a team's 2775 folder: a colleague renamed the user's
    scratch folder away and put his at its name, attack 41 #3). None where no one else can. Links are followed one
    hop at a time (a colleague's link further on is his: attack 42 #1) and a ``..`` after one goes up from the link's
    real folder, not from its name (``~/proj/tmp -> ../tmp`` with ``~/proj`` a link: attack 43 #2)."""
    named = os.fspath(path)
    todo = [part for part in reversed(os.path.join(os.getcwd(), named).split("/")) if part not in ("", ".")]
    real, hops = "/", 0
    if _renamable("/"):
        return "/"
    while todo:
        part = todo.pop()
        if part == "..":  # ``real`` holds no link: going up by name is going up
            real = os.path.dirname(real)
            continue
        here = os.path.join(real, part)
        try:
            st = os.lstat(here)
        except OSError:
            return here
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if st.st_uid not in (os.geteuid(), 0) or hops > 40:
                return here
            try:
                target = os.readlink(here)
            except OSError:
                return here
            real = "/" if target.startswith("/") else real
            todo.extend(part for part in reversed(target.split("/")) if part not in ("", "."))
        elif _renamable(here, st):
            return here
        else:
            real = here
    return None


def _renamable(level: str, st: os.stat_result | None = None) -> bool:
    """Whether someone other than this user and root owns ``level`` or may rename entries in it (not a link)."""
    st = os.lstat(level) if st is None else st
    return st.st_uid not in (os.geteuid(), 0) or (not st.st_mode & stat.S_ISVTX and others_may_write(st, level))
