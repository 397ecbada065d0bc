"""Fifteenth attack (issue #19), run folders and the runs folder: the old version's marker written through a link (or
blocking on a FIFO) planted at ``<run>/.featstore-tmp``, a store re-created at the run's recorded path taken for the
run's own, a 5,000-digit integer in run.json, `runs show`'s temporary figure files refusing a `runs evaluate`, a
runs folder that is a file, FIFO, missing folder, link loop or link to nothing, and a symbolic link loop as --data.
Each test failed before its fix. Stores are synthetic (``writer.write_arrays``): no TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest

from featstore import fit
from featstore.errors import DataError, StoreError
from featstore.store import writer
from tests import test_adversarial_attack14 as a14
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store, run = a14.store_src, a14.store, a14.run  # the fourteenth attack's fixtures: a store and a run


def _metrics(runs, rid) -> dict:
    return json.loads((runs / rid / "run.json").read_text())["metrics"]


# ------------------------------------------------------------------ 1: the old version's marker through a link
@pytest.mark.parametrize("what", ["symlink", "hardlink", "fifo", "folder"])
def test_a_link_fifo_or_folder_at_the_marker_name_is_never_written_through(run, tmp_path, what):
    """`runs evaluate` wrote {"run": ..., "role": "old"} into a link's target (symbolic or hard) planted at
    <run>/.featstore-tmp, and hung on a FIFO there; a folder there gave "Is a directory" without naming the fix."""
    store, runs, rid = run
    victim, marker = tmp_path / "victim.txt", runs / rid / ".featstore-tmp"
    victim.write_text("precious")
    {"symlink": lambda: os.symlink(victim, marker), "hardlink": lambda: os.link(victim, marker)}.get(
        what, lambda: os.mkfifo(marker) if what == "fifo" else marker.mkdir()
    )()
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert victim.read_text() == "precious"
    if what == "hardlink":  # a regular file: replaced by the new marker (a rename), the linked file untouched
        assert result.exit_code == 0 and "recorded in run" in out and "test" in _metrics(runs, rid), out
        return
    assert result.exit_code == 1 and ".featstore-tmp is not a regular file" in out and "remove" in out, out
    assert "test" not in _metrics(runs, rid) and os.path.lexists(marker)


# ------------------------------------------------------------------ 9: a store re-created at the run's recorded path
def test_runs_evaluate_refuses_a_store_replaced_at_the_runs_recorded_path(run):
    """features.h5 re-created for another dataset (same classes, same extractor) beside the old runs: the path matched,
    so its test was recorded as the old run's own (test_acc on 33 rows of other images)."""
    store, runs, rid = run
    os.unlink(store)
    rng = np.random.default_rng(99)
    for split, n in (("train", 45), ("validation", 21), ("test", 33)):
        y = np.repeat(np.arange(3), n // 3).astype(np.int32)
        writer.write_arrays(store, "s", split, rng.normal(0, 1, (n, 8)).astype(np.float32), y, ["a", "b", "c"])
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "was replaced" in out and "'validation': 21 rows here, 15 recorded" in out, out
    assert "test" not in _metrics(runs, rid)


def test_runs_evaluate_still_records_on_its_store_whose_validation_alone_changed(store, tmp_path):
    """The same path with one recorded split still the same (test), validation re-written since: still the run's
    store, so a new split ('extra') is recorded."""
    runs = tmp_path / "runs"
    rid = fit(store, "logreg", runs=runs)["id"]  # records validation and test
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(3), 6).astype(np.int32)
    writer.write_arrays(store, "s", "validation", rng.normal(0, 1, (18, 8)).astype(np.float32), y, ["a", "b", "c"])
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "extra")
    assert result.exit_code == 0 and "recorded in run" in no_traceback(result), result.output


# ------------------------------------------------------------------ 3: a 5,000-digit integer in run.json
def test_a_run_json_with_a_huge_integer_is_a_broken_run_in_one_line(run):
    """json.loads raised ValueError ("Exceeds the limit (4300 digits) for integer string conversion"): a traceback
    from `runs`, `runs show` and `runs evaluate`. Any integer over 308 digits is refused at parse now (attack 80 #2)."""
    store, runs, rid = run
    path = runs / rid / "run.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps(rec, indent=1).replace('"notes": [', '"big": ' + "9" * 5000 + ', "notes": [', 1))
    listed = cli("runs", "--store", store, "--runs", runs)
    assert listed.exit_code == 0 and "an integer of 5000 digits" in no_traceback(listed), listed.output
    for args in (("show", rid), ("evaluate", rid, "--split", "test")):
        result = cli("runs", "--store", store, "--runs", runs, *args)
        out = no_traceback(result)
        assert result.exit_code == 1 and "is broken" in out and "5000 digits" in out, out


# ------------------------------------------------------------------ 6: runs show's own temporary files
def test_runs_evaluate_is_not_refused_over_featstores_own_temporary_file(run):
    """`runs show` killed while drawing left `.reliability_train.png.<...>.tmp` in the folder: evaluate refused it as
    the user's file ("move it out of the folder"). Such a file, provably abandoned (leftovers.abandoned), is left out."""
    from featstore.leftovers import host_tag
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    store, runs, rid = run
    left = runs / rid / f".reliability_train.png.fs{_dead_pid()}-{host_tag()}-abc123.tmp"
    left.write_bytes(b"half a PNG")
    os.utime(left, (0, 0))  # unmodified for leftovers.STALE_AGE_S
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    assert result.exit_code == 0 and "recorded in run" in no_traceback(result), result.output
    assert not list((runs / rid).glob("*.tmp"))


@pytest.mark.parametrize("whose", ["other host", "running", "young"])
def test_runs_evaluate_refuses_a_temporary_file_not_provably_abandoned(run, whose):
    """Attack 16, finding 3: every temporary-named file was left out of the new version, so another node's `runs show`
    drawing on a shared runs folder (or a live writer's) lost its file without a word. Only what leftovers would
    remove is left out; the rest is refused like any unknown file, and kept."""
    from featstore.leftovers import host_tag
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    store, runs, rid = run
    pid, host = {"other host": (4242, "0" * 16), "running": (os.getpid(), host_tag())}.get(whose, (0, host_tag()))
    name = f".curves.png.fs{pid or _dead_pid()}-{host}-othernode1.tmp"
    (runs / rid / name).write_bytes(b"x" * 1000)
    if whose != "young":
        os.utime(runs / rid / name, (0, 0))
    before = (runs / rid / "run.json").read_bytes()
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and f"holds {name!r}, a temporary file of a featstore write" in out, out
    assert "move " in out and (runs / rid / name).read_bytes() == b"x" * 1000
    assert (runs / rid / "run.json").read_bytes() == before


def test_runs_show_draws_with_the_runs_lock_held(run, monkeypatch):
    """`runs show` took no lock, so a `runs evaluate` of the same run found its temporary files mid-drawing."""
    from featstore.experiments import evaluate

    store, runs, rid = run
    held = []
    real = evaluate._png

    @contextlib.contextmanager
    def lock(root, run_id):
        held.append(run_id)
        yield
        held.append(None)

    monkeypatch.setattr(evaluate, "run_lock", lock)
    monkeypatch.setattr(evaluate, "_png", lambda *a: (held.append("png"), real(*a))[1])
    evaluate.show_run(rid, store, runs)
    assert held[0] == rid and held[-1] is None and "png" in held[1:-1], held


# ------------------------------------------------------------------ 7 and 11: --runs not a runs folder
@pytest.mark.parametrize("what", ["file", "fifo", "missing", "loop", "dangling"])
def test_report_and_runs_refuse_a_runs_folder_that_is_not_one_in_one_line(store, tmp_path, what):
    """`report --runs X` (a file, FIFO or mistyped folder) built a site without runs, exit 0, no word; `runs --runs
    MISSING` said "no runs yet"; a link loop was a traceback (Errno 40), a link to nothing "(File exists)"."""
    bad = tmp_path / "bad"
    if what == "file":
        bad.write_text("x")
    elif what == "fifo":
        os.mkfifo(bad)
    elif what == "loop":
        os.symlink(tmp_path / "other", bad)
        os.symlink(bad, tmp_path / "other")
    elif what == "dangling":
        os.symlink(tmp_path / "nowhere", bad)
    said = {
        "file": "is a file",
        "fifo": "is a FIFO",
        "missing": "does not exist",
        "loop": "is a symbolic link loop",
        "dangling": "which does not exist",
    }[what]
    for args in (("report", "--out", tmp_path / "site"), ("runs",)):
        result = cli(*args, "--store", store, "--runs", bad)
        out = no_traceback(result)
        assert result.exit_code == 1 and f"--runs {bad}" in out and said in out, (args, out)
        assert len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "site").exists()
    if what != "missing":  # the API refuses too (a fit makes a missing runs folder)
        from featstore.runs.folder import runs_root

        with pytest.raises(StoreError, match=said):
            runs_root(store, bad)
        result = cli("fit", "--store", store, "--runs", bad, "--clf", "logreg")
        assert result.exit_code == 1 and said in no_traceback(result), result.output


def test_a_symlink_loop_as_data_root_is_named_so(tmp_path):
    """--data naming a link loop said "does not exist"."""
    from featstore.images.listing import discover

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    with pytest.raises(DataError, match="is a symbolic link loop; pass --data"):
        discover(tmp_path / "a", "train")


def test_an_arrays_store_copied_elsewhere_is_refused_for_the_right_reason(store, tmp_path):
    """A store written from arrays copied with its runs: "none of the splits it recorded holds the same images there"
    although validation was byte-identical; rows written from arrays name no image files to compare. (Since attack 16
    such a split records its rows' digest, and a copy is the run's store: this holds for stores written before.)"""
    import shutil

    import h5py

    with h5py.File(store, "a") as f:  # as an older featstore wrote it: no digest of the rows
        for split in f["s"]:
            del f["s"][split].attrs["rows_sha256"]
    runs = tmp_path / "runs"
    rid = fit(store, "logreg", test=None, runs=runs)["id"]
    copy = shutil.copy(store, tmp_path / "copy.h5")
    result = cli("runs", "--store", copy, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "written from arrays" in out and "holds the same images" not in out, out
