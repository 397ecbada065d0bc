"""The marker of featstore's temporary run folders, and a run that a killed ``runs evaluate`` left hidden mid-swap.

``featstore.runs.write.add_split`` gives a run a new version by two renames: the run folder ``<id>`` to
``.<id>.<random>.old.tmp``, then the complete, verified new version ``.<id>.<random>.tmp`` to ``<id>``. A kill
between the two left the run under no name: ``featstore runs`` said "no runs yet" and ``runs show`` "no run with id"
until the orphan cleaner restored the old version 10 minutes later, throwing the new one away. Each temporary folder's
marker records its writer (process id and :func:`featstore.leftovers.host_tag`), so :func:`reveal`, run by every
listing and look-up of runs, finishes the swap at once (the new version in, the old removed: what the killed process
would have done; the old version back when the new one cannot be read) when the writer is provably gone: this machine,
a process id that no longer runs, under the run's lock. Otherwise (another machine's writer, a running one) the run is
named with the folder that holds it, never called missing.

A writer in another PID namespace of this machine (a container) that is between its two renames for those
microseconds would find its new version already in: it does exactly what that writer does, so nothing is lost.

>>> ORPHAN_AGE_S
600
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path

from featstore import sticky
from featstore.errors import StoreError
from featstore.leftovers import host_tag, writer_gone
from featstore.renames import proc_path, same_folder
from featstore.runs.files import read_record_json, valid_name
from featstore.runs.kinds import parse_record
from featstore.runs.versions import TMP_MARKER, run_lock, write_marker
from featstore.store.held import DIR, move_aside, remove_held, replaced

logger = logging.getLogger(__name__)

ORPHAN_AGE_S = 600  # a marked temporary folder unchanged this long was left by a killed process (featstore.runs.write)
_OLD, _NEW = ".old.tmp", ".tmp"


def mark(folder: Path, run_id: str, role: str, successor: str | None = None) -> None:
    """Write TMP_MARKER into ``folder`` (``role``: new or old version), naming this process and machine: featstore's
    orphan cleaner may remove (or, for an old version, restore) the folder, and :func:`reveal` finish its swap. An old
    version names its ``successor`` (the new version's predictions digest): it is removed only once that version is
    the run (:func:`superseded`)."""
    found = {"run": run_id, "role": role, "pid": os.getpid(), "host": host_tag()}
    write_marker(folder, json.dumps(found if successor is None else {**found, "successor": successor}))


def superseded(found: dict, root: Path) -> bool:
    """Whether the old version marked ``found`` has been replaced: the run's name is a folder of this user's whose
    record is the successor the marker names. A run killed between its marking and its move kept the mark, and a
    colleague who renamed it to an orphan's name and put a folder of hers at its name had the cleaner delete the
    user's run (attack 31 #6): an old version is removed only once its new version is the run, else kept."""
    run, successor = found.get("run"), found.get("successor")
    if not valid_name(run) or not isinstance(successor, str):
        return False
    try:
        st = os.lstat(root / run)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return False
        record = read_record_json(root / run)
    except (OSError, StoreError):
        return False
    return isinstance(record, dict) and record.get("predictions_sha256") == successor


def hold_run(folder: Path) -> int:
    """The run folder open (not followed): what ``runs evaluate`` reads the old version's modes from, moves aside and
    removes is that folder, whatever is renamed meanwhile (by name, a run swapped in was deleted: attack 30 #9)."""
    try:
        return os.open(folder, DIR)
    except OSError as exc:
        raise StoreError(
            f"run folder {folder} cannot be opened as a folder ({exc.strerror or exc}); nothing was recorded"
        ) from None


def mark_held(held: int, folder: Path, run_id: str, successor: str) -> None:
    """:func:`mark` the run folder open at ``held`` (named ``folder``) as an old version replaced by ``successor``,
    through the descriptor where the system allows (``/proc/self/fd``), else by name while the name is that folder."""
    if not same_folder(held, folder):
        raise replaced(f"run folder {folder}")
    mark(proc_path(held) or folder, run_id, "old", successor)


def read_marker(folder: Path | int) -> dict | None:
    """The TMP_MARKER of a folder (or of the folder open at that descriptor), or None if it has none (then the folder is
    not featstore's to remove). A marker file whose JSON is missing or cut short (a full disk let the file be made, not
    its bytes) marks a new version: the folder is featstore's, never the only copy of a run (an old version's marker
    is written before it is moved)."""
    at, path = (folder, TMP_MARKER) if isinstance(folder, int) else (None, folder / TMP_MARKER)
    try:  # one opening, checked on its descriptor: a FIFO swapped in after a check by name blocked `runs` for ever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), dir_fd=at)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        found = json.loads(text)
    except (ValueError, RecursionError):  # 4000 "[" in 4 KiB: nested too deep (attack 82 #2: a fit's work was lost)
        return {"role": "new"}
    return found if isinstance(found, dict) else {"role": "new"}


def hidden_runs(root: Path) -> dict[str, Path]:
    """``{run id: its old version's folder}`` of the runs of ``root`` under no name: a marked old version
    ``.<id>.<random>.old.tmp`` whose run folder ``<id>`` is absent (a kill between add_split's two renames)."""
    found: dict[str, Path] = {}
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(".") and e.name.endswith(_OLD)]
    except OSError:
        return found
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.is_dir(follow_symlinks=False):
            continue
        found_mark = read_marker(Path(entry.path)) or {}
        run = found_mark.get("run")
        if found_mark.get("role") != "old" or not valid_name(run):
            continue
        if entry.name.startswith(f".{run}.") and not os.path.lexists(root / run):
            found.setdefault(run, Path(entry.path))
    return found


def _newest(folder: Path) -> float:
    """The newest modification time of a folder and its entries (0 when it cannot be read)."""
    try:
        return max([folder.lstat().st_mtime] + [p.lstat().st_mtime for p in folder.iterdir()])
    except OSError:
        return 0.0


def _why_not_gone(mark: dict) -> str | None:
    """Why the writer of a hidden run is not provably gone (None when it is: this machine, a pid that does not run)."""
    gone = writer_gone(mark.get("pid"), mark.get("host"))
    if gone is None:
        return f"by process {mark['pid']}, still running"
    return None if gone else "by a featstore process on another machine (or of an earlier version)"


def finish_swap(root: Path, run_id: str, aside: Path) -> str | None:
    """Put run ``run_id`` back under its name, under its lock: its new version (``aside``'s pair, complete and verified
    before the first rename) when its run.json reads, else the old version ``aside``. None when done, else why not."""
    with run_lock(root, run_id, wait=False) as locked:
        if not locked:
            return "by another featstore process, which holds the run's lock"
        try:  # the old version held from its check to its removal (by name, a folder swapped in was removed)
            fd = os.open(aside, DIR)
        except OSError:
            return None  # another process finished it meanwhile
        try:
            return _finish(root / run_id, aside, fd)
        finally:
            os.close(fd)


def _finish(run: Path, aside: Path, fd: int) -> str | None:
    """:func:`finish_swap` of the old version ``aside``, open at ``fd``, under the run's lock."""
    new = aside.with_name(aside.name[: -len(_OLD)] + _NEW)
    if os.path.lexists(run) or (read_marker(fd) or {}).get("role") != "old":
        return None  # another process finished it meanwhile
    nfd, held = -1, aside
    try:
        with contextlib.suppress(OSError):  # the new version, held too: the folder checked is the one put back
            nfd = os.open(new, DIR)
        use_new = nfd >= 0 and (read_marker(nfd) or {}).get("role") == "new"
        if use_new:
            try:
                parse_record(read_record_json(new), run)
            except StoreError:
                use_new = False
        put, held = (nfd, new) if use_new and same_folder(nfd, new) else (fd, aside)
        use_new = put == nfd
        move_aside(put, held, run, f"run {run.name}'s version {held}")  # only while its name is the folder checked
        with contextlib.suppress(FileNotFoundError):
            os.unlink(TMP_MARKER, dir_fd=put)  # through the descriptor: by name, a folder swapped in lost its marker
        if use_new:
            remove_held(fd, aside)  # its own files, through its descriptor
    except OSError as exc:
        logger.debug("could not finish the swap of run %s: %s", run.name, exc)
        theirs = sticky.refused(exc, held)
        if theirs is not None:  # another user's, in a sticky runs folder: only they can put it back (attack 34 #6)
            return _Theirs(theirs, held, run)
        return f"(featstore could not put it back: {exc.strerror or exc})"
    finally:
        if nfd >= 0:
            os.close(nfd)
    logger.warning(
        "run %s was left under no name by a `runs evaluate` killed between its two renames: %s",
        run.name,
        "its new version is in" if use_new else f"its old version is back ({new.name} could not be read)",
    )
    return None


class _Theirs(str):
    """Why another user's hidden run (a folder with the sticky bit) cannot be put back, and what can put it back."""

    def __new__(cls, theirs: sticky.Sticky, held: Path, run: Path):
        why = super().__new__(cls, f"by {theirs.owner}'s `runs evaluate` (killed, or still running)")
        why.fix = theirs.line(
            f"{theirs.owner}'s next featstore command on this runs folder (e.g. `featstore runs`) puts it back once "
            f"that `runs evaluate` has ended, or the folder's owner can: mv {held} {run}"
        )
        return why


def reveal(root: Path, now: float | None = None) -> dict[str, str]:
    """Finish the swap of every run of ``root`` a killed ``runs evaluate`` left under no name (:func:`finish_swap`) when
    its writer is provably gone, or its folder unchanged for ORPHAN_AGE_S; ``{run id: why it is hidden}`` of the
    others, in one line each naming the folder that holds the run and what to do."""
    now = time.time() if now is None else now
    left = {}
    for run_id, aside in hidden_runs(root).items():
        why = _why_not_gone(read_marker(aside) or {})
        if why is None or now - _newest(aside) > ORPHAN_AGE_S:
            why = finish_swap(root, run_id, aside)
        if why is not None:
            left[run_id] = f"hidden while a new version is swapped in {why}; the run is intact in {aside}. " + (
                why.fix
                if isinstance(why, _Theirs)
                else f"Run the command again once that process ends; if it was killed, featstore puts the run back "
                f"{ORPHAN_AGE_S // 60} minutes after its last change, or move {aside} to {root / run_id} yourself"
            )
    return left
