"""Why a run could not be recorded, in one line: :func:`not_written` for an OSError met writing a run folder, and
:func:`closed_run`, a colleague's run folder this user may not change (said before an evaluation, not after it).

>>> closed_run(Path("/nonexistent/run")) is None
True
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from featstore import sticky
from featstore.errors import OutputError


def closed_run(folder: Path) -> os.stat_result | None:
    """The lstat of the run folder ``folder`` when it is another user's that this user may not write (recording a
    split marks the old version: a colleague's run made with umask 022 in the team's group-writable runs folder
    computed the split, then said "<runs> is not writable; make it writable", of a folder that is: attack 38 #3);
    None otherwise (root writes any folder)."""
    if sticky.privileged():
        return None
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if st.st_uid == os.geteuid() or not stat.S_ISDIR(st.st_mode):
        return None
    effective = os.access in os.supports_effective_ids
    return None if os.access(folder, os.W_OK | os.X_OK, effective_ids=effective) else st


def not_written(exc: OSError, root: Path, run_id: str, left: Path | None = None, update: bool = False) -> OutputError:
    """One line for an OSError met while writing a run folder: why, what to do, and that nothing was recorded (and
    ``left``: a temporary folder that could not be removed). ``update``: adding to an existing run (``runs evaluate``),
    whose runs folder cannot be changed by an option."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    theirs = sticky.refused(exc, root / run_id) if update else None
    closed = closed_run(root / run_id) if update and exc.errno in (errno.EACCES, errno.EPERM) else None
    if theirs is not None:  # attack 34 #4: the sticky bit refused it, which no chmod helps
        fix = f"ask {theirs.owner} to run `featstore runs evaluate {run_id}` (only {theirs.owner} can add a split)"
        why = theirs.line(f"{fix}, or copy the run into a --runs folder of yours")
    elif closed is not None:  # attack 38 #3: "<runs> is not writable; make it writable", of a runs folder that is
        owner = sticky.owner_name(closed.st_uid)
        why = (
            f"run folder {root / run_id} is {owner}'s (mode {stat.S_IMODE(closed.st_mode):04o}), which you may not "
            f"change, and recording a split marks its old version: ask {owner} to run `featstore runs evaluate "
            f"{run_id}`, or to make it group-writable ({sticky.share_fix(closed, root / run_id, 'w')}), or copy the "
            f"run into a --runs folder of yours"
        )
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full" + (
            f"; free some space on the disk of {root} and run again"
            if update
            else "; free some space or pass --runs DIR on another disk"
        )
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = f"{root} is not writable ({exc.strerror}); " + (
            "make it writable and run again" if update else "pass --runs DIR with a writable folder"
        )
    else:
        why = f"{exc.strerror or exc}{where}; " + (
            "run again once that is fixed" if update else "pass --runs DIR with a writable folder"
        )
    kept = (
        f"a partial folder {left} could not be removed: remove it"
        if left is not None and os.path.lexists(left)
        else "no partial folder is left"
    )
    return OutputError(f"could not write run {run_id} into {root}: {why}. Nothing was recorded ({kept})")
