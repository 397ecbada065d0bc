"""Fourteenth attack (issue #19), run folders: a fit or ``runs evaluate`` on a full disk (a temporary folder left with
an empty marker the orphan cleaner ignored, a traceback from closing the half-written predictions), ``runs evaluate``
copying the whole run folder (a FIFO, a sparse file), another store's split recorded as the run's own, a split named
like the out-of-fold record, a crafted run.json that parses into millions of objects, and two ``runs evaluate`` of one
run at once. Each test failed before its fix. Stores are synthetic (``writer.write_arrays``); a full disk is simulated
by a predictions file that refuses bytes past a limit (as a tmpfs does), so no test needs root or TensorFlow.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time

import numpy as np
import pytest

from featstore import fit
from featstore.runs import predictions_file
from featstore.store import writer
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture(scope="module")
def store_src(tmp_path_factory):
    """A synthetic 3-split store plus a fourth split 'extra' (read-only source: copy before changing it)."""
    path = synthetic_store(tmp_path_factory.mktemp("a14") / "f.h5")
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 5).astype(np.int32)
    writer.write_arrays(path, "s", "extra", rng.normal(0, 1, (15, 8)).astype(np.float32), y, ["a", "b", "c"])
    return path


@pytest.fixture
def store(store_src, tmp_path):
    """A private copy of ``store_src``."""
    return shutil.copy(store_src, tmp_path / "f.h5")


@pytest.fixture
def run(store, tmp_path):
    """``(store, runs folder, id)`` of a logreg run evaluated on validation only (test left to `runs evaluate`)."""
    runs = tmp_path / "runs"
    return store, runs, fit(store, "logreg", test=None, runs=runs)["id"]


def _leftovers(runs) -> list[str]:
    if not runs.exists():  # the runs folder made for a run not recorded goes with it (attack 48 L3)
        return []
    return sorted(p.name for p in runs.iterdir() if p.name.endswith(".tmp"))


class _FullFile:
    """A predictions file on a disk that fills after ``room`` bytes: writes past it and the final flush fail (ENOSPC)."""

    def __init__(self, fh, room: int):
        self._fh, self._room, self.full = fh, room, False

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if self._room < n:
            self.full = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= n
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.close()
        if self.full:  # the buffered bytes cannot be flushed either
            raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._fh, name)


@pytest.fixture
def full_disk(monkeypatch):
    """Every new predictions.npz gets ``room`` bytes (set ``full_disk.room``) before the disk is full."""
    state = type("State", (), {"room": 2000})()

    def opened(path, mode="r", *a, **k):
        fh = open(path, mode, *a, **k)
        return _FullFile(fh, state.room) if mode == "x+b" else fh

    monkeypatch.setattr(predictions_file, "open", opened, raising=False)
    return state


def _empty_marker_then_full(monkeypatch):
    """A disk with 0 bytes free: the marker file is made, its bytes are not."""
    from featstore.runs import write

    def mark(folder, run_id, role):
        (folder / write.TMP_MARKER).touch()
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / write.TMP_MARKER))

    monkeypatch.setattr(write, "_mark", mark)


# ------------------------------------------------------------------ 1: fit --runs on a full disk
def test_a_fit_whose_marker_cannot_be_written_leaves_no_folder(store, tmp_path, monkeypatch):
    """0 KiB free: the fit said "no partial folder is left" while `.logreg.XXXX.tmp` stayed with an empty marker."""
    _empty_marker_then_full(monkeypatch)
    runs = tmp_path / "runs"
    result = cli("fit", "--store", store, "--runs", runs, "--clf", "logreg")
    out = no_traceback(result)
    assert result.exit_code == 1 and "the disk is full" in out and "no partial folder is left" in out, out
    assert _leftovers(runs) == []


def test_a_fit_on_a_disk_that_fills_while_writing_is_one_line_and_leaves_nothing(store, tmp_path, full_disk):
    """4 KiB free: an OSError 28 traceback from closing the half-written predictions (PredictionsWriter.discard inside
    RunDraft.__exit__) replaced the message, and the partial folder stayed."""
    runs = tmp_path / "runs"
    result = cli("fit", "--store", store, "--runs", runs, "--clf", "logreg")
    out = no_traceback(result)
    assert result.exit_code == 1 and "the disk is full" in out and "Nothing was recorded" in out, out
    assert "logreg was fitted" in out and "Traceback" not in out, out  # what was computed is said
    assert _leftovers(runs) == []


def test_the_orphan_cleaner_removes_an_old_folder_whose_marker_is_empty(tmp_path):
    """An empty (or cut short) marker is what a full disk leaves: the folder is featstore's, and was never removed."""
    from featstore.runs.write import ORPHAN_AGE_S, TMP_MARKER, clean_orphans

    left = tmp_path / ".logreg.ab12cd.tmp"
    left.mkdir()
    (left / TMP_MARKER).write_bytes(b"")
    (left / "predictions.npz").write_bytes(b"PK")
    mine = tmp_path / ".notes.tmp"  # no marker: never featstore's
    mine.mkdir()
    old = time.time() - ORPHAN_AGE_S - 60
    for p in (left / TMP_MARKER, left / "predictions.npz", left, mine):
        os.utime(p, (old, old))
    clean_orphans(tmp_path)
    assert not left.exists() and mine.exists()


# ------------------------------------------------------------------ 2: runs evaluate on a full disk
def test_runs_evaluate_on_a_full_disk_is_one_line_with_the_cause_and_exit_1(run, full_disk):
    """4-52 KiB free: shutil.Error's Python list with "pass --runs DIR with a writable folder" (the disk was full), an
    OSError 28 traceback from discard(), a partial folder left; and every "not recorded" exited 0."""
    store, runs, rid = run
    before = (runs / rid / "run.json").read_bytes()
    full_disk.room = 600
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "not recorded" in out and "the disk is full" in out, out
    assert "free some space" in out and "--runs DIR" not in out and "[(" not in out, out
    assert _leftovers(runs) == [] and (runs / rid / "run.json").read_bytes() == before


def test_runs_evaluate_whose_marker_cannot_be_written_leaves_no_folder(run, monkeypatch):
    store, runs, rid = run
    _empty_marker_then_full(monkeypatch)
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "the disk is full" in out, out
    assert _leftovers(runs) == []


# ------------------------------------------------------------------ 3: runs evaluate copied the whole run folder
@pytest.mark.parametrize("what", ["fifo", "sparse"])
def test_runs_evaluate_refuses_what_is_not_the_runs_own_in_one_line(run, what):
    """A FIFO in the run folder: "[('.../notes.fifo', ..., 'is a named pipe')]; pass --runs DIR", exit 0; a 512 MiB
    sparse file was copied as 512 MiB of real data (copytree of the whole folder)."""
    store, runs, rid = run
    folder = runs / rid
    odd = folder / ("notes.fifo" if what == "fifo" else "scratch.bin")
    if what == "fifo":
        os.mkfifo(odd)
    else:
        with open(odd, "wb") as fh:
            fh.truncate(1 << 30)
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and odd.name in out and "move" in out and "[(" not in out, out
    assert _leftovers(runs) == [] and "test" not in json.loads((folder / "run.json").read_text())["metrics"]
    assert os.path.lexists(odd)


def test_runs_evaluate_carries_the_model_and_figures_over_without_copying_them(run):
    store, runs, rid = run
    no_traceback(cli("runs", "--store", store, "--runs", runs, "show", rid))
    folder = runs / rid
    kept = {p.name: os.stat(p).st_ino for p in folder.iterdir() if p.suffix in (".png", ".skops")}
    assert any(n.endswith(".png") for n in kept) and "model.skops" in kept, kept
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    assert result.exit_code == 0 and "recorded in run" in no_traceback(result)
    assert {p.name: os.stat(p).st_ino for p in folder.iterdir() if p.name in kept} == kept  # hard links, not copies
    assert "test" in no_traceback(cli("runs", "--store", store, "--runs", runs, "show", rid))


# ------------------------------------------------------------------ 9: another store's split recorded as the run's own
def _listing(path, split: str, digest: str) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        f["s"][split].attrs["listing_sha256"] = digest


def test_runs_evaluate_refuses_a_new_split_of_another_store(store_src, tmp_path):
    """`runs evaluate RUN --store OTHER.h5 --split test` (another dataset, same extractor, same fingerprint) recorded
    OTHER's test in the run with no note: `featstore runs` showed test figures on other images, and the run's own test
    could never be recorded. A copy of the run's store (moved with its runs) is still its store."""
    own = shutil.copy(store_src, tmp_path / "own.h5")
    for split in ("train", "validation"):
        _listing(own, split, f"sha-{split}-own")
    runs = tmp_path / "runs"
    rid = fit(own, "logreg", test=None, runs=runs)["id"]
    other = shutil.copy(own, tmp_path / "other.h5")
    _listing(other, "validation", "sha-validation-other")  # the same file names, other image files
    result = cli("runs", "--store", other, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "is not the store run" in out and str(own) in out, out
    assert "test" not in json.loads((runs / rid / "run.json").read_text())["metrics"]
    moved = shutil.copy(own, tmp_path / "moved.h5")  # the run's store under another name: the same images
    result = cli("runs", "--store", moved, "--runs", runs, "evaluate", rid, "--split", "test")
    assert result.exit_code == 0 and "recorded in run" in no_traceback(result), result.output


# ------------------------------------------------------------------ 12: a split named like the out-of-fold record
def test_a_split_named_like_the_out_of_fold_record_is_refused_before_fitting(tmp_path):
    """`fit --validation none --test train.oof` fitted, then ended in "split 'train.oof' is already in
    .../.logreg.XXXX.tmp/predictions.npz": the fit was lost (train's out-of-fold figures use that name)."""
    import h5py

    store = synthetic_store(tmp_path / "s.h5", splits=("train", "x", "test"))
    with h5py.File(store, "a") as f:  # write_arrays and extract refuse the name since attack 16: a store made before
        f.move("s/x", "s/train.oof")
    runs = tmp_path / "runs"
    result = cli("fit", "--store", store, "--runs", runs, "--validation", "none", "--test", "train.oof")
    out = no_traceback(result)
    assert result.exit_code == 1 and "'.oof'" in out and "Rename the split" in out, out
    assert not runs.exists() or not any(runs.iterdir())
    rid = fit(store, "logreg", runs=runs, validation="none", test=None)["id"]
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "train.oof")
    assert result.exit_code == 1 and "'.oof'" in no_traceback(result), result.output


# ------------------------------------------------------------------ 13: run.json bounded by what it parses into
def test_a_run_json_parsing_into_too_many_objects_is_refused_and_the_rest_listed(run, monkeypatch):
    """A 64 MiB `[{},{},...]` run.json (21 M dicts) made `featstore runs` peak at 1.8 GB: the byte limit held, what it
    parsed into was not bounded. (Limits lowered here so that the file is small.)"""
    from featstore.runs import files

    store, runs, rid = run
    monkeypatch.setattr(files, "MAX_RECORD_CONTAINERS", 1000)
    (runs / "zz-bomb").mkdir()
    (runs / "zz-bomb" / "run.json").write_text("[" + "{}," * 1500 + "{}]")
    out = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert rid in out and "zz-bomb" in out and "objects and lists" in out, out
    assert str(runs / "zz-bomb" / "run.json") in out


def test_a_real_sized_crafted_run_json_is_refused_before_parsing(tmp_path, monkeypatch):
    """The attack's own 64 MiB file: refused from a count of its bytes (json.loads is never called on it)."""
    from featstore.runs import files

    folder = tmp_path / "zz-bomb"
    folder.mkdir()
    n = (64 << 20) // 3 - 10
    (folder / "run.json").write_bytes(b"[" + b"{}," * n + b"{}]")
    monkeypatch.setattr(files.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(files.BrokenRunError, match="objects and lists"):
        files.read_record_json(folder)


# ------------------------------------------------------------------ 15: two runs evaluate of one run at once
def test_two_runs_evaluate_of_one_run_at_once_both_record(run, monkeypatch):
    """Two `runs evaluate` of one run (different splits) at once: both printed "recorded" while one split was lost
    (the later swap replaced the earlier version), or one said the predictions were "changed after the fit" (false).
    The second now waits for the first, then adds its split to the first's version."""
    from featstore.experiments import evaluate
    from featstore.runs import versions

    store, runs, rid = run
    real = evaluate.add_split
    writing, waiting = threading.Event(), threading.Event()

    def slow(*args, **kwargs):  # the first writer is still writing when the second reads the run
        if not writing.is_set():
            writing.set()
            waiting.wait(10)  # until the second says it waits for the run (events: 1.4 s of fixed sleeps before)
        return real(*args, **kwargs)

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it" in record.getMessage():
                waiting.set()

    monkeypatch.setattr(evaluate, "add_split", slow)
    said: dict = {}

    def one(split):
        said[split] = evaluate.evaluate_and_record(rid, split, store, runs)[2]

    handler = Waits()
    versions.logger.addHandler(handler)
    try:
        first = threading.Thread(target=one, args=("test",))
        first.start()
        assert writing.wait(60), "the first evaluate never wrote"
        one("extra")
        first.join()
    finally:
        versions.logger.removeHandler(handler)
    assert waiting.is_set(), "the second evaluate did not wait for the first"
    assert said == {"test": f"recorded in run {rid}", "extra": f"recorded in run {rid}"}, said
    recorded = json.loads((runs / rid / "run.json").read_text())
    assert {"test", "extra"} <= set(recorded["metrics"]) and {"test", "extra"} <= set(recorded["predictions"])


def test_a_run_recording_no_store_is_still_evaluated_on_a_store_holding_its_images(run):
    """Runs of an older featstore record no store: a split they recorded with the same paths here is enough."""
    store, runs, rid = run
    path = runs / rid / "run.json"
    rec = json.loads(path.read_text())
    del rec["store"]
    path.write_text(json.dumps(rec, indent=1))
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    assert result.exit_code == 0 and "recorded in run" in no_traceback(result), result.output


def test_a_link_at_a_runs_lock_name_is_refused_not_truncated(run, tmp_path):
    """The per-run lock file is opened with O_TRUNC (filelock): a link planted at its name is refused, never followed."""
    store, runs, rid = run
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    os.symlink(victim, runs / f".{rid}.lock")
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and f".{rid}.lock" in out and "remove it" in out, out
    assert victim.read_text() == "precious"
