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
# a POSIX ACL's binary form (linux/posix_acl_xattr.h): a 4-byte header (version 2), then 8-byte entries of tag (u16),
# permissions (u16) and id (u32); the tags of the entries that make a new entry's mode
_USER_OBJ, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x04, 0x10, 0x20


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


def others_may_write(st: os.stat_result) -> bool:
    """Whether someone else may write the file or folder of ``st``: anyone (o+w), or its group (g+w) unless that group
    is this user's own private group (umask 002 makes the user's files group-writable: Ray's file of the user's own
    was refused, attack 27 #5; so was the user's own ~/.keras): no one else listed in it, nor anyone whose primary
    group it is (the group file lists only secondary members)."""
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    try:
        import grp
        import pwd

        me = pwd.getpwuid(os.geteuid()).pw_name
        if st.st_gid != os.getegid() or set(grp.getgrgid(st.st_gid).gr_mem) - {me}:
            return True
        return any(p.pw_gid == st.st_gid and p.pw_name != me for p in pwd.getpwall())  # members by primary group
    except (ImportError, KeyError):
        return True
