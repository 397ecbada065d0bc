"""The one line for a path this user may not reach: a folder on its way they may not enter, or a file they may not
read or write. Root never meets EACCES, so every earlier attack missed it; run as an ordinary user, a path inside a
colleague's private folder (``0700``) ended eight commands in a Python traceback from ``Path.exists``, ``is_dir`` or
``os.scandir`` (attack 34 #1). The CLI turns any PermissionError that names a file into this line.

>>> denied_line(PermissionError(13, "Permission denied", "/"))   # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import stat

from featstore.linkrule import foreign_line, foreign_on, full_path, user
from featstore.sticky import entry


def denied_line(exc: PermissionError) -> str:
    """What ``exc`` (a PermissionError naming a file) means for the user, and the way out, in one line."""
    path = os.fsdecode(exc.filename)
    try:
        full = os.path.normpath(full_path(path, PermissionError, "the path"))
    except PermissionError as gone:  # the current folder no longer exists: full_path's own line
        return str(gone)
    # another user's link on the path: featstore refuses to follow it, and where fs.protected_symlinks is on (most
    # distributions) the kernel refused first, in a sticky folder, with EACCES: "you may not read it (owner unknown)",
    # of a readable file, and the link rule's line was lost (attack 36 #8). The walk lstats and reads links only.
    try:
        found = foreign_on(full, PermissionError, "the path")
    except OSError:
        found = None
    if found is not None:
        return foreign_line(path, "the path", *found)
    blocked = _first_closed_folder(full)
    if blocked is not None:
        why = f"you may not enter the folder {blocked} ({_owner_and_mode(blocked)}), which is on its path"
    elif not os.path.lexists(full):
        folder = os.path.dirname(full) or "/"
        why = f"you may not make files in the folder {folder} ({_owner_and_mode(folder)})"
    else:
        denied = _denied(full)
        # the mode lets the user write, or EPERM (a rename or removal refused): the folder's sticky bit (attack 34 #5)
        theirs = entry(full) if denied == "change" or exc.errno == errno.EPERM else None
        if theirs is not None:
            return f"cannot change {path}: " + theirs.line(
                f"ask {theirs.owner} to remove it, or use a path of yours (a copy in a folder of yours, or another "
                f"output folder)"
            )
        why = f"you may not {denied} it ({_owner_and_mode(full)})"
    return (
        f"cannot reach {path}: {why}. Ask its owner for access, or use a path you can reach (a copy in a folder of "
        f"yours, or another output folder)"
    )


def _first_closed_folder(full: str) -> str | None:
    """The first folder from ``/`` down to ``full``'s folder this user may not enter (search), or None."""
    effective = os.access in os.supports_effective_ids
    parts = full.split("/")
    for i in range(1, len(parts)):
        folder = "/".join(parts[:i]) or "/"
        try:
            if not stat.S_ISDIR(os.stat(folder).st_mode):
                return None
        except OSError:
            return None
        if not os.access(folder, os.X_OK, effective_ids=effective):
            return folder
    return None


def _owner_and_mode(path: str) -> str:
    """``"<owner>'s, mode 0700"`` of ``path``; ``"owner unknown"`` where even that cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return "owner unknown"
    return f"{user(st.st_uid)}'s, mode {stat.S_IMODE(st.st_mode):04o}"


def _denied(full: str) -> str:
    """What this user may not do with the existing file ``full``: read it, or else write it (or change it)."""
    effective = os.access in os.supports_effective_ids
    if not os.access(full, os.R_OK, effective_ids=effective):
        return "read"
    return "write" if not os.access(full, os.W_OK, effective_ids=effective) else "change"
