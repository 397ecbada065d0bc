"""Run folders: where they live, listing them (``run.json`` only), finding one and verifying it before it is used.

A run folder ``<runs>/<id>/`` holds ``run.json``, the fitted model and ``predictions.npz``; ``run.json``
records the sha256 of the other files. Listing runs (``featstore runs``, :func:`list_runs`) reads each
``run.json`` (refused unread when larger than ``files.MAX_RECORD_BYTES``), validates it as a typed record
(``featstore.runs.record``) and checks that the files it names are regular files, without reading them: its
cost does not grow with the size of the models. A run that a command *uses* (:func:`find_run`, so
:func:`get_run`, evaluate, predict, ensemble members, fine-tuning) is verified first: its model's sha256,
zip sizes and types (``featstore.runs.artifacts``) and its stored predictions (shapes, values, sha256). A
folder that fails is listed as broken with the reason, or refused when used, never half used. Writing run
folders is in ``featstore.runs.write``.

>>> runs_dir("data/features.h5").as_posix()
'data/features.runs'
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore import sticky
from featstore.errors import ConfigError, StoreError, check_paths
from featstore.linkrule import refuse_foreign
from featstore.outputs import name_problem, terminal_safe
from featstore.runs import made
from featstore.runs.files import (
    PREDICTIONS,
    RECORD,
    BrokenRunError,
    UnreadableRun,
    check_zip_file,
    read_record_json,
    regular_file,
    verify_file,
)
from featstore.runs.kinds import calibrated, kind_of, parse_record
from featstore.runs.record import RunRecord
from featstore.runs.refusals import closed_run
from featstore.runs.swap import reveal
from featstore.safezip import iter_npy
from featstore.store.folders import refuse_in_image_folders

logger = logging.getLogger(__name__)


@dataclass
class RunListing:
    """The runs of a runs folder: usable records (oldest first) and broken folders with their reasons."""

    records: list[RunRecord] = field(default_factory=list)  # validated run.json contents
    broken: list[tuple[str, str]] = field(default_factory=list)  # (folder name, why it cannot be used)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # other users' runs closed to this one: (name, why)


def runs_dir(store: str | os.PathLike) -> Path:
    """Where the runs of a store live: ``features.h5`` -> ``features.runs/``. A store path with no file name (``.``,
    ``/``, ``./``, ``..``, ``Path("")``) is a folder, never a store: StoreError in one line, as ``export`` says (was a
    ``ValueError ... has an empty name`` traceback in fit, runs, report, sweep, ensemble; attack 64 #2)."""
    path = Path(store)
    if path.name in ("", ".", ".."):
        shown = terminal_safe(os.fspath(store) or ".")
        raise StoreError(
            f"store {shown} is not a regular file (a folder, FIFO or device); pass the .h5 store written by "
            "`featstore extract`"
        )
    return path.with_suffix(".runs")


def runs_root(store: str | os.PathLike, runs: str | os.PathLike | None) -> Path:
    """``runs`` if given, else the store's default runs folder; StoreError (one line naming it) when something other
    than a folder is at that name: a file, FIFO or device, a symbolic link loop, a link to nothing. Nothing there is
    fine (no runs yet; a fit makes the folder). An empty ``store`` or ``runs`` is a ConfigError naming it (``runs=""``
    took the default). Held to the link rule on its whole path (:func:`featstore.linkrule.refuse_foreign`): a
    colleague's ``team/s.runs -> ~you/thesis.runs`` made ``fit`` of the team store write into the user's private runs
    and ``report`` publish them (attack 31 #4); every command that reads or writes runs resolves its folder here. By
    name: a link put on the path after this check is not seen (the runs are then read and written by name)."""
    check_paths(runs=runs)
    check_paths(required=True, store=store)
    root = Path(runs) if runs else runs_dir(store)
    where = f"--runs {root}" if runs else f"the runs folder {root} (beside the store)"
    refuse_foreign(root, "--runs" if runs else "the runs folder", StoreError, "--runs")
    try:
        mode = os.stat(root).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"{where} is a symbolic link loop; pass --runs with the folder of the run folders"
            ) from None
        if name_problem(exc, root):  # a part over 255 bytes, or a part that is a file ("does not exist" before)
            raise StoreError(f"{where}: {name_problem(exc, root)}") from None
        if os.path.islink(root):
            raise StoreError(
                f"{where} is a symbolic link to {os.readlink(root)}, which does not exist; make that folder, or pass "
                f"--runs with the folder of the run folders"
            ) from None
        return root  # nothing there: no runs yet
    if not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else "a FIFO, device or socket"
        raise StoreError(
            f"{where} is {what}, not a runs folder; pass --runs with the folder that holds the run folders "
            f"(the one `featstore fit --runs` wrote)"
        )
    if os.path.lexists(
        root / "run.json"
    ):  # a run folder: a run recorded in it was lost to `featstore runs` (attack 24)
        raise StoreError(
            f"{where} is a run folder (it holds run.json), not a runs folder; pass --runs with the folder that holds "
            f"the run folders: {root.parent}"
        )
    return root


def ensure_writable(root: Path, store: str | os.PathLike | None = None, elsewhere: bool = True) -> None:
    """Create the runs folder if needed and prove a run can be written there (checked before any fitting); never inside
    an image folder of ``store`` (the charts of its runs would be extracted as images). ``elsewhere``: the command can
    write its run into another ``--runs DIR`` (finetune cannot: it reads its phase-A run there)."""
    if store is not None:  # probed as a file in it, named as the folder given (attack 64 #7)
        refuse_in_image_folders(Path(root) / "run", store, "--runs", shown=Path(root))
    try:
        made.make(root)  # remembered: a run that is not recorded removes it again, empty (attack 48 L3)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=root))
    except OSError as exc:
        made.remove_made(root)
        there = (
            "pass --runs DIR with a folder of yours"
            if elsewhere
            else "copy the run it starts from into a folder of yours and pass that as --runs"
        )
        theirs = closed_run(root) if exc.errno in (errno.EACCES, errno.EPERM) else None
        if theirs is not None:  # a colleague's runs folder: not "make it writable" (attack 40 #16)
            owner = sticky.owner_name(theirs.st_uid)
            raise StoreError(
                f"cannot write runs into {terminal_safe(str(root))}: it is {sticky.whose(theirs)}, and you may not "
                f"write in it; {there}, or ask {owner} to make it group-writable "
                f"({sticky.share_fix(theirs, root, 'w', recursive=False)}). Nothing was computed"
            ) from None
        raise StoreError(
            f"cannot write runs into {terminal_safe(str(root))} ({exc.strerror or exc}); make it writable or "
            f"{there.replace('of yours', 'you may write in')}. Nothing was computed"
        ) from None


def read_record(folder: Path) -> RunRecord:
    """A run's validated record, with the files it names checked to be regular files (none is read); else BrokenRunError."""
    rec = parse_record(read_record_json(folder), folder)
    kind_of(rec).check_files(rec, folder)
    regular_file(folder, PREDICTIONS, "stored predictions")
    return rec


def verify_run(rec: RunRecord, folder: Path) -> None:
    """BrokenRunError unless the run's files are the ones it recorded: the model (sha256, zip, types) and the predictions."""
    kind_of(rec).verify(rec, folder)
    verify_predictions(folder, rec)  # read in blocks: bounded memory whatever the splits' sizes


# what a run folder holds (run.json, its predictions, its model, the PNGs `runs show` draws): a folder holding none is not
# a run (a wrong --runs naming a project folder listed src/ and data/ as broken runs, with "Remove .../src and fit again")
_RUN_FILES = (RECORD, PREDICTIONS, "model.skops", "model.keras", "head.json", "curves.png")


def _run_folders(root: Path, others: list[str] | None = None) -> list[str]:
    """Names of the entries of ``root`` that are run folders (or links posing as one), sorted; hidden ones and folders
    holding none of a run's files are not runs (their names go to ``others``)."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    # files such as compare.png and sweep-*.json are not runs; links are listed, and refused as broken
    folders = [e for e in entries if not e.name.startswith(".") and (e.is_symlink() or e.is_dir())]
    runs = {e.name for e in folders if _holds_run_files(e.path)}
    if others is not None:
        others.extend(sorted(e.name for e in folders if e.name not in runs))
    return sorted(runs)


def _holds_run_files(folder: str) -> bool:
    """Whether ``folder`` holds one of a run folder's files (or cannot be looked into: then it is listed, as broken)."""
    for name in _RUN_FILES:
        try:
            os.lstat(os.path.join(folder, name))
            return True
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return True
    return False


def no_runs_here(root: Path) -> list[str]:
    """The sub-folders of ``root`` when none of them is a run folder (a wrong --runs: a project, data or system folder),
    else an empty list. Example::

        no_runs_here(Path("my_project"))   # ['data', 'notebooks', 'src']
    """
    others: list[str] = []
    return [] if _run_folders(root, others) else others


def scan_runs(root: Path) -> RunListing:
    """Every run folder under ``root``: valid records sorted oldest first, and broken folders with their reasons.

    Reads each ``run.json`` only (see the module docstring); a run's model and predictions are verified when it is used.
    """
    out = RunListing()
    hidden = reveal(root)  # runs a killed `runs evaluate` left under no name: put back, or named with why
    for name in _run_folders(root):
        try:
            out.records.append(read_record(root / name))
        except StoreError as exc:
            (out.unreadable if isinstance(exc, UnreadableRun) else out.broken).append((name, str(exc)))
            logger.debug("run folder %s is not usable: %s", root / name, exc)
    out.broken += sorted(hidden.items())
    out.records.sort(key=lambda r: (r.created_at, r.id))
    return out


def find_run(
    run_id: str, root: Path, exact: bool = False, listing: RunListing | None = None, verify: bool = True
) -> tuple[RunRecord, Path]:
    """A run's record and folder, by id or (unless ``exact``) unique id prefix, verified (unless ``verify=False``) for use.

    Only that run's folder is read (the others only when the id matches none or several, to list them); a broken
    run raises its reason. Example::

        rec, folder = find_run("logreg-1a", runs_dir("features.h5"))
    """
    if not isinstance(run_id, str) or not run_id.strip():  # '' (an unset $RUN) was a prefix of every id: "the only run"
        raise ConfigError(f"the run id is empty ({run_id!r}); give a run id (`featstore runs` lists those in {root})")
    hidden = reveal(root) if listing is None else {}  # put back a run a killed `runs evaluate` left under no name
    names = (
        _run_folders(root) + sorted(hidden)
        if listing is None
        else [r.id for r in listing.records] + [n for n, _ in listing.broken + listing.unreadable]
    )
    found = [n for n in names if n == run_id] or ([] if exact else [n for n in names if n.startswith(run_id)])
    if not found and listing is None and not root.is_dir():
        raise ConfigError(
            f"no run with id {run_id!r}: the runs folder {root} does not exist"
            + (f" (here: {Path.cwd()})" if not root.is_absolute() else "")
            + ". Runs live beside their store (--store S.h5 reads S.runs); name the store with --store, or the runs "
            "folder with --runs DIR"
        )
    if len(found) > 1:  # only the matches, by folder name, bounded; no run.json read (attack 64 #6)
        raise ConfigError(_several(run_id, found, root))
    if not found:
        known = ", ".join(r.id for r in (scan_runs(root) if listing is None else listing).records) or "none"
        raise ConfigError(f"no run with id {run_id!r} in {root}; runs there: {known}")
    if found[0] in hidden:  # its writer may still be running, or ran on another machine: not "no run with id"
        raise StoreError(f"run {found[0]} is {hidden[found[0]]}")
    folder = root / found[0]
    try:
        if listing is not None and found[0] in dict(listing.unreadable):
            raise UnreadableRun(dict(listing.unreadable)[found[0]])
        if listing is not None and found[0] in dict(listing.broken):
            raise BrokenRunError(dict(listing.broken)[found[0]])
        known_rec = {r.id: r for r in listing.records}.get(found[0]) if listing is not None else None
        rec = known_rec or read_record(folder)
        if verify:
            verify_run(rec, folder)
    except UnreadableRun as exc:
        raise UnreadableRun(f"run {found[0]} cannot be used: {exc}") from None
    except StoreError as exc:
        raise BrokenRunError(f"run {found[0]} is broken: {exc}") from None
    return rec, folder


_SHOWN_MATCHES = 10


def _several(run_id: str, found: list[str], root: Path) -> str:
    """The line for a run-id prefix that several run folders start with: the first matches (sorted) and a count."""
    names = sorted(found)
    shown = ", ".join(terminal_safe(n) for n in names[:_SHOWN_MATCHES])
    more = f" and {len(names) - _SHOWN_MATCHES} more ({len(names)} in all)" if len(names) > _SHOWN_MATCHES else ""
    return f"several runs in {terminal_safe(str(root))} start with {run_id!r}: {shown}{more}; give more of the id"


def get_run(
    run_id: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> tuple[RunRecord, Path]:
    """A run's record and folder, by id or unique id prefix, verified for use; a broken run folder raises the reason.

    Example::

        rec, folder = get_run("logreg-1a2b3c", "features.h5")
        rec["metrics"]["test"]["accuracy"], rec.metrics["test"].accuracy   # the JSON, or typed
    """
    return find_run(run_id, runs_root(store, runs))


def scan_runs_of(store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None) -> RunListing:
    """Every run folder of a store: usable records (oldest first) and broken folders with the reason each cannot be used."""
    return scan_runs(runs_root(store, runs))


def list_runs(store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None) -> list[RunRecord]:
    """Every usable recorded run of a store, oldest first (broken run folders are logged as warnings and left out).

    Example::

        [r["id"] for r in list_runs("features.h5")]
    """
    listing = scan_runs_of(store, runs)
    for name, reason in listing.broken:
        logger.warning("run folder %s is broken and not listed: %s", name, reason)
    return listing.records


def calibrated_predictions(folder: Path, rec: RunRecord) -> StoredPredictions:
    """:func:`load_predictions` with the run's calibration applied to every split's probabilities (what the run gives:
    predictions.npz keeps the model's raw ones, so a new calibration never rewrites them)."""
    return load_predictions(folder, rec, calibrate=True)


def load_predictions(folder: Path, rec: dict, calibrate: bool = False) -> StoredPredictions:
    """A run's stored validation/test probabilities and labels, verified (:func:`verify_predictions`, in blocks), read
    lazily: ``out["test__proba"]`` reads that member when asked, ``out.blocks("test", rows)`` a block at a time.

    Example::

        preds = load_predictions(folder, rec)
        for proba, labels in preds.blocks("test", 4096): ...
    """
    return StoredPredictions(verify_predictions(folder, rec), folder, rec, calibrate)


BLOCK_BYTES = 8 << 20  # probabilities read at a time when stored predictions are verified or read in blocks


def verify_predictions(folder: Path, rec: dict) -> Path:
    """The run's ``predictions.npz`` after checking its recorded sha256, its zip sizes, and that each split has ``n`` rows
    (the recorded count) of probabilities in [0, 1] summing to 1, one column per class, and labels of those classes:
    read ``BLOCK_BYTES`` of probabilities at a time, so a split of any size is verified in bounded memory."""
    path = verify_file(folder, PREDICTIONS, rec["predictions_sha256"], "stored predictions")
    check_zip_file(path, "stored predictions", folder, "npz file", any_size=True)  # read in blocks: no size cap
    with _open_npz(path, folder) as z:
        missing = sorted(
            f"{s}__{a}" for s in rec["predictions"] for a in ("proba", "labels") if f"{s}__{a}.npy" not in z.namelist()
        )
        if missing:
            raise BrokenRunError(
                f"stored predictions {path} lack {', '.join(missing)}; remove the folder {folder} and fit again"
            )
        for split in rec["predictions"]:
            for _ in _split_blocks(z, rec, split, _rows(rec)):
                pass
    return path


class StoredPredictions(Mapping):
    """A verified ``predictions.npz`` read lazily (see :func:`load_predictions`): keys ``<split>__proba`` and
    ``<split>__labels``; each value read (and checked again) when asked for, never kept."""

    def __init__(self, path: Path, folder: Path, rec: dict, calibrate: bool):
        self.path, self.folder, self.rec, self.calibrate = path, folder, rec, calibrate
        self._keys = [f"{s}__{a}" for s in rec["predictions"] for a in ("proba", "labels")]

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        split, what = key.rsplit("__", 1)
        n, k = int(self.rec["predictions"][split]["n"]), len(self.rec["class_names"])
        if what == "labels":  # the labels alone (one integer a row), checked
            with _open_npz(self.path, self.folder) as z:
                labels = ([*iter_npy(z, f"{split}__labels.npy", "iu", (n,), max(n, 1))] or [np.zeros(0, np.int64)])[0]
                if labels.size and (labels.min() < 0 or labels.max() >= k):
                    raise ValueError(f"{split}__labels holds labels outside 0..{k - 1}")
                return labels
        return ([p for p, _ in self.blocks(split, max(n, 1))] or [np.zeros((0, k))])[0]  # one block: the whole split

    def __contains__(self, key: object) -> bool:  # without reading the member (Mapping's would)
        return key in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def blocks(self, split: str, rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(probabilities, labels)`` of ``split``, ``rows`` rows at a time (default: ``BLOCK_BYTES`` of probabilities),
        checked as they are read; calibrated when the mapping is (:func:`calibrated_predictions`)."""
        with _open_npz(self.path, self.folder) as z:
            for proba, labels in _split_blocks(z, self.rec, split, rows or _rows(self.rec)):
                yield (calibrated(self.rec, proba) if self.calibrate else proba), labels


def _rows(rec: dict) -> int:
    """Rows of probabilities in ``BLOCK_BYTES``."""
    return max(1, BLOCK_BYTES // (8 * max(1, len(rec["class_names"]))))


@contextmanager
def _open_npz(path: Path, folder: Path) -> Iterator[zipfile.ZipFile]:
    """The predictions file open as a zip; a read or format error becomes the run's BrokenRunError."""
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as z:  # our handle: zipfile leaks none on a bad zip
            yield z
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EIO):  # not the file's fault
            raise BrokenRunError(
                f"stored predictions {path} cannot be read ({exc.strerror}); fix the permissions or the disk of run "
                f"folder {folder} and run again (its files may be sound: removing it is not the fix)"
            ) from None
        raise BrokenRunError(
            f"stored predictions {path} cannot be read or do not match run.json ({exc}); "
            f"remove the folder {folder} and fit again"
        ) from None


def _split_blocks(z: zipfile.ZipFile, rec: dict, split: str, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A split's (probabilities, labels) ``rows`` at a time, each block checked (ValueError names what is wrong)."""
    n, k = int(rec["predictions"][split]["n"]), len(rec["class_names"])
    probas = iter_npy(z, f"{split}__proba.npy", "f", (n, k), rows)  # headers checked before any row is read
    labels = iter_npy(z, f"{split}__labels.npy", "iu", (n,), rows)
    for proba, y in zip(probas, labels):
        if not (np.isfinite(proba).all() and (proba >= -1e-6).all() and (proba <= 1 + 1e-6).all()):
            raise ValueError(f"{split}__proba holds NaN, inf or values outside [0, 1]")
        if proba.size and not (np.abs(proba.sum(axis=1, dtype=np.float64) - 1.0) <= 1e-3).all():
            raise ValueError(f"{split}__proba holds rows that do not sum to 1 (not probabilities)")
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{split}__labels holds labels outside 0..{k - 1}")
        yield proba, y
