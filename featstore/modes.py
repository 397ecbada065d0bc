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

import os
import stat
import struct

DEFAULT_ACL = "system.posix_acl_default"
ACCESS_ACL = "system.posix_acl_access"
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
    if fd < 0 or not hasattr(os, "getxattr"):
        return None
    try:
        acl = os.getxattr(fd, DEFAULT_ACL)
    except OSError:  # ENODATA: none; ENOTSUP: a file system without ACLs
        return None
    perms: dict[int, int] = {}
    for at in range(4, len(acl) - 7, 8):
        tag, perm = struct.unpack_from("<HH", acl, at)
        perms[tag] = perm & 0o7
    if _USER_OBJ not in perms or _OTHER not in perms:
        return None  # not an ACL the kernel would apply (it needs both): the umask's mode
    group = perms.get(_MASK, perms.get(_GROUP_OBJ, 0))
    return perms[_USER_OBJ] << 6 | group << 3 | perms[_OTHER]


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
