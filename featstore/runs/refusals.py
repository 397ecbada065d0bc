"""Why a run could not be recorded, in one line: :func:`not_written` for an OSError met writing a run folder, and
:func:`closed_run`, a colleague's run folder this user may not change (said before an evaluation, not after it).

>>> closed_run(Path("/nonexistent/run")) is None
True
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from featstore import sticky
from featstore.errors import OutputError


def closed_run(folder: Path) -> os.stat_result | None:
    """The lstat of the run folder ``folder`` when it is another user's that this user may not write (recording a
    split marks the old version: a colleague's run made with umask 022 in the team's group-writable runs folder
    computed the split, then said "<runs> is not writable; make it writable", of a folder that is: attack 38 #3);
    None otherwise (root writes any folder). Also asked of the runs folder (:func:`closed_folders`)."""
    if sticky.privileged():
        return None
    st = sticky.theirs(folder, folder=True)
    if st is None:
        return None
    effective = os.access in os.supports_effective_ids
    return None if os.access(folder, os.W_OK | os.X_OK, effective_ids=effective) else st


def closed_folders(root: Path, run_id: str) -> list[tuple[Path, os.stat_result]]:
    """The folders recording a split into run ``run_id`` of the runs folder ``root`` needs and this user may not
    change (:func:`closed_run`): the runs folder (the new version is made in it, the old one removed from it) and the
    run folder (its old version is marked). Both are named at once: naming the run folder only, a colleague who shared
    it left the user facing his runs folder next (attack 39 #10)."""
    return [(p, st) for p in (root, root / run_id) if (st := closed_run(p)) is not None]


def _closed_line(closed: list[tuple[Path, os.stat_result]], root: Path, run_id: str) -> str:
    """Why recording into run ``run_id`` is refused: the ``closed`` folders, whose, and the one command that opens
    them all to the user (:func:`sticky.share_fix`: the runs folder alone, the run folder with its files)."""
    kind = {root: "runs folder"}
    owners = list(dict.fromkeys(sticky.owner_name(st.st_uid) for _, st in closed))
    shown = " and ".join(f"{kind.get(p, 'run folder')} {p} is {sticky.whose(st)}" for p, st in closed)
    fix = " && ".join(sticky.share_fix(st, p, "w", recursive=p != root) for p, st in closed)
    them = "it" if len(closed) == 1 else "them"
    ask = (
        f"ask {owners[0]} to run `featstore runs evaluate {run_id}`, or to make {them} group-writable ({fix})"
        if len(owners) == 1
        else f"ask {' and '.join(owners)} to make them group-writable ({fix})"
    )
    needs = "recording a split " + (
        "marks its old version" if closed[0][0] != root else "writes the run's new version into the runs folder"
    )
    if len(closed) == 2:
        needs += " and marks the old one"
    return f"{shown}, which you may not change, and {needs}: {ask}, or copy the run into a --runs folder of yours"


def _not_yours(root: Path, strerror: str | None) -> str:
    """The fix for a runs folder that refused a write of ``runs evaluate``: whose it is where it is another user's
    (no "make it writable" to someone who cannot: attack 39 #10), else to make it writable."""
    st = None if sticky.privileged() else sticky.theirs(root, folder=True)
    if st is None:
        return f"{root} is not writable ({strerror}); make it writable and run again"
    owner = sticky.owner_name(st.st_uid)
    return (
        f"runs folder {root} is {sticky.whose(st)} and refuses your writes ({strerror}): "
        f"ask {owner} to make it group-writable ({sticky.share_fix(st, root, 'w', recursive=False)}), or copy the run "
        f"into a --runs folder of yours"
    )


def not_written(exc: OSError, root: Path, run_id: str, left: Path | None = None, update: bool = False) -> OutputError:
    """One line for an OSError met while writing a run folder: why, what to do, and that nothing was recorded (and
    ``left``: a temporary folder that could not be removed). ``update``: adding to an existing run (``runs evaluate``),
    whose runs folder cannot be changed by an option."""
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    theirs = sticky.refused(exc, root / run_id) if update else None
    closed = closed_folders(root, run_id) if update and exc.errno in (errno.EACCES, errno.EPERM) else []
    if theirs is not None:  # attack 34 #4: the sticky bit refused it, which no chmod helps
        fix = f"ask {theirs.owner} to run `featstore runs evaluate {run_id}` (only {theirs.owner} can add a split)"
        why = theirs.line(f"{fix}, or copy the run into a --runs folder of yours")
    elif closed:  # attack 38 #3: "<runs> is not writable; make it writable", of a runs folder that is
        why = _closed_line(closed, root, run_id)
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full" + (
            f"; free some space on the disk of {root} and run again"
            if update
            else "; free some space or pass --runs DIR on another disk"
        )
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = (
            _not_yours(root, exc.strerror)
            if update
            else f"{root} is not writable ({exc.strerror}); pass --runs DIR with a writable folder"
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
    refused = OutputError(f"could not write run {run_id} into {root}: {why}. Nothing was recorded ({kept})")
    refused.cause = exc  # what a caller that can keep the run elsewhere (finetune) says, with its own fix
    return refused
