"""Writing run folders: a hidden temporary folder renamed when complete and orphans of killed writers.

A run folder is written as ``.<id>.<random>.tmp`` and renamed to ``<id>`` when whole, so it is complete or
absent. Every temporary folder featstore creates holds ``TMP_MARKER`` from its creation on, and only
folders holding it are ever removed (see ``clean_orphans``); nothing is removed by listing or reading runs, except
that they finish the swap of a run a killed ``runs evaluate`` left under no name (``featstore.runs.swap``).
A run folder is 0700 and written through its descriptor until it is whole (:class:`featstore.renames.OwnFolder`);
files that replace others (PNGs in a run folder, ``predict --out``) go through :func:`featstore.outputs.write_atomic`.

>>> TMP_MARKER, ORPHAN_AGE_S
('.featstore-tmp', 600)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from featstore.carry import give_folder, not_carried, own_permissions
from featstore.errors import OutputError, StoreError
from featstore.leftovers import writer_gone
from featstore.renames import OwnFolder, same_folder
from featstore.runs import made
from featstore.runs.artifacts import save_estimator
from featstore.runs.files import (
    PREDICTIONS,
    RECORD,
    BrokenRunError,
    check_zip_file,
    json_default,
    read_record_json,
    sha256_of,
    valid_name,
    verify_file,
)
from featstore.runs.folder import verify_predictions
from featstore.runs.kinds import parse_record
from featstore.runs.own_writes import MARK, OwnWrites, own
from featstore.runs.predictions_file import PredictionsWriter, StoredSplit, read_labels
from featstore.runs.record import RunRecord
from featstore.runs.refusals import not_written
from featstore.runs.stopping import check, publishing
from featstore.runs.swap import ORPHAN_AGE_S, hold_run, mark_held, read_marker, reveal, superseded
from featstore.runs.swap import mark as _mark
from featstore.runs.versions import TMP_MARKER, carry, own_files
from featstore.stats.calibration import apply_calibration
from featstore.stats.figures import RowFigures, completed, packed_confusion
from featstore.store.held import move_aside, own_held, put_back, remove_held

logger = logging.getLogger(__name__)

# A fit writes its folder as ".<id>.<random>.tmp" and renames it when complete; writing takes seconds (the
# model, the predictions and run.json, one after the other). Every temporary folder featstore creates holds
# the file TMP_MARKER (JSON: the run id, whether it is a new or an old version, the writer's pid and host tag) from
# its creation on. A marked temporary folder whose newest entry is older than ORPHAN_AGE_S was left by a killed
# process on any host sharing the folder, so the next command that writes a run (fit, ensemble, sweep's test
# evaluation) removes it; a run left under no name by a kill between add_split's two renames is put back at once when its
# writer is provably gone, by any listing or look-up of runs (featstore.runs.swap.reveal), else after ORPHAN_AGE_S.
# A younger folder may still be being written; a folder without the marker is never touched, whatever its name.
_ORPHAN = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]*\.tmp")


def _make_temp(root: Path, run_id: str, role: str = "new", suffix: str = ".tmp") -> OwnFolder:
    """A new hidden temporary folder ``.<id>.<random><suffix>`` in ``root`` holding TMP_MARKER (``role``: new or old),
    0700 and written through its descriptor until :meth:`OwnFolder.publish` gives it its final mode: it was made
    group-writable at once and written by name, so in a team runs folder a colleague's link at ``run.json`` made a fit
    write its record onto the user's own files (attack 25)."""
    folder = OwnFolder(root, f".{run_id}.", suffix)
    try:
        _mark(folder.at, run_id, role)
    except BaseException:  # a full disk makes the marker file but not its bytes: the folder is removed here
        folder.remove()
        raise
    return folder


def clean_orphans(root: Path, now: float | None = None) -> None:
    """Remove the temporary folders featstore made that no process can still be writing (see ORPHAN_AGE_S), after
    putting back the runs a killed ``runs evaluate`` left under no name (``featstore.runs.swap.reveal``); only when
    writing."""
    now = time.time() if now is None else now
    reveal(root, now)
    for d in root.iterdir() if root.is_dir() else []:
        if not _ORPHAN.fullmatch(d.name):
            continue
        try:  # one opening: marker, owner, ages and removal all of that folder (a colleague's one swapped with the
            fd = os.open(d, _DIR)  # user's run between a check by name and rmtree by name had it deleted: attack 30 #3)
        except OSError:
            continue  # a link, not a folder, or gone
        try:
            _remove_orphan(fd, d, root, now)
        except OSError as exc:  # read-only runs folder, or another process removed it first
            logger.debug("could not remove orphan %s: %s", d, exc)
        finally:
            os.close(fd)


_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


def _remove_orphan(fd: int, d: Path, root: Path, now: float) -> None:
    """Remove the temporary folder open at ``fd`` (named ``d``) when it is this user's, marked by featstore, its writer
    gone and old: its entries through the descriptor, then the name only while it is still that folder."""
    if os.fstat(fd).st_uid != os.geteuid():
        return  # another user's leftover: theirs to remove
    found = read_marker(fd)
    if found is None:  # not made by featstore (or from before markers): never removed
        return
    if writer_gone(found.get("pid"), found.get("host")) is None:
        return  # its writer runs on this machine (a fit computing one slow block): its own, whatever its age
    if found.get("role") == "old" and not superseded(found, root):
        return  # an old version whose new one is not the run: maybe the only copy of the run (attack 31 #6)
    names = os.listdir(fd)
    newest = max([os.fstat(fd).st_mtime] + [os.stat(n, dir_fd=fd, follow_symlinks=False).st_mtime for n in names])
    if now - newest <= ORPHAN_AGE_S or _pair_hidden(d, found, root):
        return  # young; or a hidden run's copy, which reveal could not put back (another process has it)
    for name in names:
        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)
    if same_folder(fd, d):
        os.rmdir(d)
    logger.info("removed %s, left by a fit that was killed %.0f minutes ago", d, (now - newest) / 60)


def _pair_hidden(d: Path, found: dict, root: Path) -> bool:
    """Whether ``d`` (marked ``found``) is a version (old, or the new one beside it) of a run that is under no name."""
    run = found.get("run")
    if not valid_name(run) or os.path.lexists(root / run):
        return False
    return found.get("role") == "old" or (d.name.endswith(".tmp") and d.with_name(d.name[:-4] + ".old.tmp").is_dir())


EVAL_BLOCK_BYTES = 64 << 20  # probabilities read back at a time to complete a split's figures (8,192 rows of 1,000)


def _stored(split: StoredSplit) -> dict:
    """predictions.json's entry of one split."""
    listing = split.listing_sha256
    return {
        "paths_sha256": split.paths_sha256,
        "n": int(len(split.labels)),
        **({"listing_sha256": listing} if listing else {}),
    }


def _with_figures(record: dict, preds: PredictionsWriter) -> dict:
    """Every evaluated split's metrics with the figures it lacks (``featstore.stats.figures.completed``): intervals
    from its confusion matrix, log-loss, ECE and top-5 from its stored probabilities (read back in blocks, calibrated
    as the record says), computed only when missing (a fit's are already there)."""
    cal = record.get("calibration")
    metrics = {}
    for split, m in record.get("metrics", {}).items():
        stored = preds.splits.get(split)
        rows = None
        if stored is not None and "log_loss" not in m and len(stored.labels):
            per = max(1, EVAL_BLOCK_BYTES // (8 * max(stored.shape[1], 1)))
            rows, at = [], 0
            for block in preds.blocks(split, per):
                y = stored.labels[at : at + len(block)]
                rows.append(RowFigures.of(y, block if cal is None else apply_calibration(cal, block)))
                at += len(block)
            rows = RowFigures.join(rows)
        metrics[split] = completed(m, None if stored is None else stored.labels, rows)
    return {**record, "metrics": metrics}


def _write_contents(tmp: Path, record: dict, preds: PredictionsWriter, folder: Path) -> RunRecord:
    """Close predictions.npz and write run.json (with the predictions' sha256) into a temporary run folder; the record,
    validated as ``folder`` (its final place) will read it, before run.json is written."""
    record = _with_figures(record, preds)
    preds.close()
    record = {
        **record,
        "predictions": {s: _stored(p) for s, p in preds.splits.items()},
        "predictions_sha256": sha256_of(tmp / PREDICTIONS),
    }
    obj = json.loads(json.dumps(record, default=json_default))  # plain JSON values, as a reader will see them
    for m in obj.get("metrics", {}).values():  # a many-class confusion matrix as its non-zero cells
        m["confusion_matrix"] = packed_confusion(m["confusion_matrix"])
    try:
        rec = parse_record(obj, folder)  # the one validation path: a run featstore writes is one it can read
    except BrokenRunError as exc:  # its fix would be "remove the folder <id>", a folder never written (attack 54 #3)
        raise BrokenRunError(
            f"run {record['id']} was not recorded (no run folder was written): {exc.problem}"
        ) from None
    (tmp / RECORD).write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return rec


def _discard(preds: PredictionsWriter | None, tmp: OwnFolder) -> None:
    """Drop a temporary run folder being written: never raises (a full disk can refuse even the closing of its files),
    so the error that made it fail is the one reported."""
    if preds is not None:
        try:
            preds.discard()
        except Exception as exc:  # noqa: BLE001 - the folder goes anyway; the first error is the one to report
            logger.debug("closing %s failed: %s", preds.path, exc)
    tmp.remove()


def _other_run(exc: OSError, root: Path, tmp: Path) -> Path | None:
    """The folder under the runs ``root`` (not the draft's ``tmp``) that a file of ``exc`` lies in: another run's."""
    for name in (exc.filename, exc.filename2):
        if not isinstance(name, (str, bytes, os.PathLike)):
            continue
        parts = Path(os.path.abspath(os.fsdecode(name))).parts
        top = Path(os.path.abspath(root)).parts
        folder = root / parts[len(top)] if len(parts) > len(top) and parts[: len(top)] == top else None
        if folder is not None and folder != tmp and folder.is_dir():  # a store file beside the runs is not a run
            return folder
    return None


_RECORDING: dict[int, list[Path]] = {}  # the lists of the :func:`recording` blocks open in this process


@contextlib.contextmanager
def recording() -> Iterator[list[Path]]:
    """A list of the run folders this process is about to record or recorded (:meth:`RunDraft.finish`, any thread)
    inside the block; those that exist are the runs this command recorded. A difference of two listings of the runs
    folder named another process's run, that appeared meanwhile, as the command's own, to delete (attack 57 #9)."""
    ours: list[Path] = []
    _RECORDING[id(ours)] = ours
    try:
        yield ours
    finally:
        del _RECORDING[id(ours)]


class RunDraft:
    """A new run folder while it is written: a marked hidden temporary folder in ``root`` whose ``predictions``
    (:class:`~featstore.runs.predictions_file.PredictionsWriter`) are written split by split as they are computed,
    renamed to the run's id by :meth:`finish`; removed if anything fails first (an OSError is then an OutputError
    saying nothing was recorded). Example::

        with RunDraft(root, "logreg") as draft:
            with draft.predictions.probabilities("test", n, k) as member:
                ...  # member.write(block) for each block of probabilities
            draft.predictions.labels("test", y, paths_sha256)
            rec = draft.finish(record, est)
    """

    def __init__(self, root: Path, name: str):
        self.root, self.name, self.done = Path(root), name, False
        check()  # a stopped sweep's worker starts no draft
        try:
            made.make(self.root)
            clean_orphans(self.root)
            self.folder = _make_temp(self.root, name)
        except OSError as exc:
            made.remove_made(self.root)  # nothing recorded: no runs folder made for it left either (attack 48 L3)
            if isinstance(exc, OutputError):
                raise
            raise not_written(exc, self.root, name) from None
        self.tmp, self.at = self.folder.name, self.folder.at  # its name (messages, orphans); where it is written
        try:
            self._preds = PredictionsWriter(self.at / PREDICTIONS)
        except OSError as exc:
            _discard(None, self.folder)
            made.remove_made(self.root)
            raise not_written(exc, self.root, name, self.tmp) from None
        self.predictions = OwnWrites(self._preds)  # its OSErrors are the run folder's; a store read's are the store's

    def __enter__(self) -> RunDraft:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.done:
            return
        _discard(self._preds, self.folder)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError) and own(exc):
            made.remove_made(self.root)  # the runs folder made for this run, empty: "no partial folder is left"
            raise not_written(exc, self.root, self.name, self.tmp) from None
        other = _other_run(exc, self.root, self.tmp) if isinstance(exc, OSError) else None
        if other is not None:  # an ensemble's member read in the body: a traceback from deep in numpy or zipfile
            raise BrokenRunError(
                f"run {self.name} was not recorded: run folder {other} cannot be read ({exc.strerror or exc}: "
                f"{exc.filename}); fix its permissions or restore that file and run again, or leave that run out"
            ) from None

    def finish(self, record: dict, est) -> RunRecord:
        """Save the model (or none), close the predictions, write run.json and rename the folder to the run's id."""
        with MARK:
            if est is not None:
                record = {**record, "artifact": save_estimator(est, self.at)}
            rec = _write_contents(self.at, record, self._preds, self.root / record["id"])
            with publishing():  # a stopped sweep's worker records nothing after its Ctrl-C line (attack 54 #1)
                for ours in list(_RECORDING.values()):  # before: a Ctrl-C just after the rename still finds it
                    ours.append(self.root / record["id"])
                self.folder.publish(self.root / record["id"])
                self.done = True
                (self.root / record["id"] / TMP_MARKER).unlink(missing_ok=True)  # a run folder now, not a temporary one
                logger.info("recorded run %s in %s", record["id"], self.root)
        made.forget(self.root)  # it holds a run: the user's folder now, never removed by a later failure
        return rec


def write_run(root: Path, record: dict, est, probas: dict) -> RunRecord:
    """Write a new run (its JSON without predictions and artifact, e.g. from ``record.draft``, the fitted model or None,
    and ``{split: (probabilities, labels, paths_sha256[, listing_sha256])}``) into a hidden temporary folder, then
    rename: a run folder is complete or absent. Returns the validated record; an OSError (a full disk, a read-only
    folder) is an OutputError saying that nothing was recorded. (A fit writes its predictions as it computes them,
    through :class:`RunDraft`.)"""
    with RunDraft(root, record["id"]) as draft:
        for split, p in probas.items():
            draft.predictions.add(split, p[0], p[1], p[2], p[3] if len(p) > 3 else None)
        return draft.finish(record, est)


def add_split(
    root: Path, record: RunRecord, folder: Path, split: str, split_metrics: dict | Callable, prediction: tuple
) -> RunRecord:
    """A new version of a run folder with one more evaluated split: written aside, checked, then swapped in.

    ``prediction`` is ``(probabilities, labels, paths_sha256[, listing_sha256])``, or, streamed, ``(blocks, n,
    paths_sha256, listing_sha256)`` with ``blocks`` an iterator of ``(labels, predictions, probabilities)`` blocks of
    the split's ``n`` rows and ``split_metrics`` a function of those blocks giving the figures (each block's
    probabilities are written as it passes: no (N, K) array is held). The splits already stored are copied from the
    old predictions.npz a MiB at a time, never loaded; the run's other files (model, figures) are carried over, and
    anything else in the folder is refused first (``featstore.runs.versions.own_files``). The folder is briefly absent during the swap,
    never half-written; a kill leaves the old version or the new one (and marked temporary folders the orphan cleaner
    removes; a kill between the two renames leaves the run under no name until the next listing or look-up of runs
    puts the new version in, ``featstore.runs.swap.reveal``). Callers hold ``featstore.runs.versions.run_lock`` around reading the
    record and this; a run.json changed meanwhile (another process without the lock) is refused, not overwritten.
    The run folder is held open from here (:func:`featstore.runs.swap.hold_run`): its old version's modes are read,
    and it is moved aside and removed, through that descriptor, only while its name is that folder (attack 30 #9).
    """
    held = hold_run(folder)
    try:
        return _add_split(held, root, record, folder, split, split_metrics, prediction)
    finally:
        os.close(held)


def _add_split(
    held: int, root: Path, record: RunRecord, folder: Path, split: str, split_metrics, prediction
) -> RunRecord:
    """:func:`add_split` of the run folder open at ``held``."""
    old_sha, k = record["predictions_sha256"], len(record.class_names)
    stored = {s: (info.paths_sha256, info.listing_sha256) for s, info in record.predictions.items()}
    record = record.to_json()
    carried = own_files(folder, record)
    now = read_record_json(folder)
    if not isinstance(now, dict) or now.get("predictions_sha256") != old_sha:
        raise StoreError(
            f"run {record['id']} was given a new version by another process while this one evaluated it; nothing was "
            f"recorded: run the command again"
        )
    stale = f"not evaluated on {split!r}"  # fit's note about this split no longer holds
    record["notes"] = [n for n in record.get("notes", []) if not n.startswith(stale)]
    try:
        clean_orphans(root)
        new = _make_temp(root, record["id"])
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise not_written(exc, root, record["id"], update=True) from None
    tmp, at = new.name, new.at  # its name (messages, orphans); where it is written
    aside = tmp.with_name(f"{tmp.name[: -len('.tmp')]}.old.tmp")  # unique as tmp is
    preds = None
    try:
        with MARK:  # the run folder's own reads and writes; the prediction's blocks (store reads) are not
            for name in carried:
                carry(folder / name, at / name)
            preds = PredictionsWriter(at / PREDICTIONS)
            path = verify_file(folder, PREDICTIONS, old_sha, "stored predictions")  # the file the run was verified with
            check_zip_file(path, "stored predictions", folder, "npz file")
            with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:  # each split copied a MiB at a time, never loaded
                for s, digests in stored.items():
                    preds.copy(s, z, read_labels(z, s, record["predictions"][s]["n"], k), *digests)
        split_metrics = _add_prediction(OwnWrites(preds), split, k, split_metrics, prediction)
        record["metrics"] = {**record["metrics"], split: split_metrics}
        record["splits"] = {**record.get("splits", {}), split: split_metrics["n"]}
        with MARK:
            rec = _write_contents(at, record, preds, folder)
            verify_predictions(at, rec)  # the new predictions file reads back (in blocks) before it replaces the old
            mode = _own(new, held, folder)
            mark_held(held, folder, record["id"], rec["predictions_sha256"])  # marked before it moves
            move_aside(held, folder, aside, f"run folder {folder}")  # only while the name is the folder held
            new.publish(folder, mode)
    except BaseException as exc:
        _discard(preds, new)
        put_back(held, aside, folder)  # the second rename failed: put the old version back (only if it is the one held)
        try:
            os.unlink(TMP_MARKER, dir_fd=held)
        except FileNotFoundError:
            pass
        except OSError as again:
            logger.debug("could not remove %s: %s", folder / TMP_MARKER, again)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError) and own(exc):
            raise not_written(exc, root, record["id"], tmp, update=True) from None
        if isinstance(exc, (KeyError, ValueError, zipfile.BadZipFile)):
            raise BrokenRunError(
                f"stored predictions of run {record['id']} cannot be read ({exc}); remove the folder {folder} and fit "
                f"again"
            ) from None
        raise
    (folder / TMP_MARKER).unlink(missing_ok=True)
    try:  # the old version through its descriptor: by name it was whatever folder had been swapped to that name
        remove_held(held, aside)
    except OSError as exc:
        logger.debug("could not remove %s: %s", aside, exc)
    logger.info("added %s to run %s", split, record["id"])
    return rec


def _own(new: OwnFolder, held: int, folder: Path) -> int | None:
    """The old version's (open at ``held``) mode, group, ACL and user.* onto the new one and its new files (each the old
    file's of its name): a run made private (chmod -R go-rwx) came back 0755 with run.json 0644 (attack 28 #6); its
    mode. Of a colleague's run its group and mode only (her ACL on the user's new files: attack 30 #2): one recorded
    with the user's umask shut its author out of his group-writable run (attack 36 #3)."""
    old, files = own_held(held, folder, f"run folder {folder}")
    if old is None:
        return own_permissions(new.fd, os.fstat(held), 0o3775)  # never o+w on a folder of the user's (attack 38 #1)
    where = f"run folder {folder}"
    refuse = not_carried(where, OutputError, "nothing was recorded")
    return give_folder(new.fd, old, files, where, str(folder), refuse)


def _add_prediction(preds: PredictionsWriter, split: str, k: int, split_metrics, prediction: tuple) -> dict:
    """Write one split's prediction into ``preds`` (whole arrays, or streamed blocks: see :func:`add_split`); its figures."""
    if not callable(split_metrics):
        preds.add(split, *prediction)
        return split_metrics
    blocks, n, paths_sha256, listing_sha256 = prediction
    labels: list[np.ndarray] = []
    with preds.probabilities(split, n, k) as member:

        def written():
            for block in blocks:
                member.write(block[2])
                labels.append(np.asarray(block[0]))
                yield block

        figures = split_metrics(written())
    preds.labels(split, np.concatenate(labels) if labels else np.zeros(0, np.int64), paths_sha256, listing_sha256)
    return figures
