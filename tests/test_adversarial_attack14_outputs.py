"""Fourteenth attack (issue #19), the output side: the similarity index written and read through a planted link, report
and the index on read-only folders and file systems, advice that cannot work there (``chmod u+w`` on a read-only
mount), an ONNX export on a full disk blamed on the exporter, hidden temporary files of killed writes kept for ever, a
fine-tuned run described as "recorded before featstore calibrated runs", and two small messages. Each test failed
before its fix. Stores are synthetic (``writer.write_arrays``) unless the subject is a model.
"""

from __future__ import annotations

import errno
import os

import pytest

from featstore.errors import OutputError
from tests import test_adversarial_attack13 as a13
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store = a13.store_src, a13.store  # the thirteenth attack's fixtures: a synthetic 3-split store, a copy


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------ 4. the similarity index never through a link
@pytest.mark.parametrize("where", ["f.h5.index", "f.h5.index/s"])
def test_build_index_never_writes_through_a_link_at_any_level(store, tmp_path, where):
    """A link at ``<store>.index`` (or at its extractor's folder) sent vectors.npy, model.npz and index.json into its
    target; ``<store>.cache`` refused links at every level, the index did not."""
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tmp_path / where
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, link)
    result = cli("similar", "--store", store, "--build-index", "train/0")
    (line,) = _error_lines(no_traceback(result))
    assert result.exit_code == 1 and f"the similarity index folder {link} is a symbolic link" in line, line
    assert "--build-index makes it again" in line
    assert not list(victim.rglob("*"))


def test_an_index_is_never_read_through_a_link(store, tmp_path):
    """load_index read vectors.npy, model.npz and index.json through a link at ``<store>.index``: an index planted
    elsewhere (for another store with the same fingerprint and commit) chose the candidates."""
    from featstore.experiments.similar_index import build_similarity_index, load_index
    from featstore.store.reader import FeatureStore

    build_similarity_index(store, split="train", dims=4)
    elsewhere = tmp_path / "elsewhere"
    os.rename(tmp_path / "f.h5.index", elsewhere)
    os.symlink(elsewhere, tmp_path / "f.h5.index")
    with pytest.raises(OutputError, match="f.h5.index is a symbolic link; featstore never writes or reads"):
        load_index(FeatureStore(store), "s", "train")
    os.unlink(tmp_path / "f.h5.index")
    os.rename(elsewhere, tmp_path / "f.h5.index")
    assert load_index(FeatureStore(store), "s", "train").rows == 30  # the same index, not through a link: used


# ------------------------------------------------------------------ 8. a read-only file system, said before any work
def _read_only_fs(monkeypatch, folder):
    """No file or folder can be made under ``folder`` (EROFS), as on a read-only mount (tests cannot mount)."""
    real_open, real_mkdir = os.open, os.mkdir

    def full(path, dir_fd):
        return str(path) if dir_fd is None else os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)

    def refuse(path, dir_fd):
        if os.path.realpath(full(path, dir_fd)).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def fake_open(path, flags, *a, dir_fd=None, **k):
        if flags & os.O_CREAT:
            refuse(path, dir_fd)
        return real_open(path, flags, *a, dir_fd=dir_fd, **k)

    def fake_mkdir(path, *a, dir_fd=None, **k):
        refuse(path, dir_fd)
        return real_mkdir(path, *a, dir_fd=dir_fd, **k)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("built", [False, True])
def test_build_index_on_a_read_only_file_system_says_so_before_any_work(store, tmp_path, monkeypatch, built):
    """``similar --build-index`` on a read-only mount computed the index, then said "a file or link is in its way ...
    remove what is in the way" (nothing was in the way). It now checks that the folder takes a new file first (an index
    folder already there included) and names the read-only file system and the fixes."""
    from featstore.experiments import similar_index

    if built:
        similar_index.build_similarity_index(store, split="train", dims=4)
    _read_only_fs(monkeypatch, tmp_path)
    monkeypatch.setattr(similar_index, "scan", lambda *a, **k: pytest.fail("the index was computed"))
    with pytest.raises(OutputError) as got:
        similar_index.build_similarity_index(store, split="train", dims=4)
    line = str(got.value)
    assert f"cannot build the similarity index {tmp_path / 'f.h5.index' / 's' / 'train'}:" in line, line
    refused = tmp_path / "f.h5.index" / "s" / "train" if built else tmp_path  # the folder no file can be made in
    assert (
        f"the file system of {refused} is read-only" in line
        and "search without it (`featstore similar --exact`)" in line
    )
    assert "in its way" not in line


# ------------------------------------------------------------------ 6. report into a folder that cannot be made
@pytest.mark.parametrize("where", ["read-only", "empty read-only", "proc"])
def test_report_into_a_folder_that_cannot_be_written_is_one_line(store, tmp_path, monkeypatch, where):
    """``report`` of a store in a read-only folder (its default ``<store>.report`` cannot be made), or ``--out
    /proc/self/site``, ended in an OSError / FileNotFoundError traceback from ``mkdir``; an empty ``--out`` folder on a
    read-only file system failed at the site's first file. One line now names the folder and ``--out DIR``."""
    out = {"read-only": tmp_path / "f.report", "empty read-only": tmp_path / "site", "proc": "/proc/self/site"}[where]
    if where == "empty read-only":
        out.mkdir()
    if where != "proc":
        _read_only_fs(monkeypatch, tmp_path)
    args = ["--out", out] if where != "read-only" else []
    result = cli("report", "--store", store, "--no-leaks", *args)
    (line,) = _error_lines(no_traceback(result))
    assert result.exit_code == 1 and f"cannot write the report into {out}:" in line, line
    assert ("is read-only" if where != "proc" else "no file can be made in /proc/self") in line, line
    assert "Give --out DIR in a folder you can write" in line, line
    assert where == "empty read-only" or not os.path.exists(out)
    assert where != "empty read-only" or not list(out.iterdir())


class _StatVFS:
    f_flag = os.ST_RDONLY


@pytest.mark.parametrize("exists", [True, False])
def test_a_store_on_a_read_only_mount_is_not_told_to_chmod(store, tmp_path, monkeypatch, exists):
    """extract (and finetune, whose cut is extracted into the store) on a read-only mount said "store ... is read-only;
    make it writable (chmod u+w ...)": chmod fails there too. A read-only file system (statvfs's ST_RDONLY) is named
    so, with the fix that works: a --store on a writable file system."""
    from featstore.errors import StoreError
    from featstore.store.space import check_writable

    target = store if exists else tmp_path / "new.h5"
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as on the mount: nothing is writable
    monkeypatch.setattr(os, "statvfs", lambda *a, **k: _StatVFS())
    with pytest.raises(StoreError) as got:
        check_writable(target)
    line = str(got.value)
    assert f"store {target} is on a file system mounted read-only" in line, line
    assert "chmod u+w" not in line and "--store path on a writable file system" in line, line


# ------------------------------------------------------------------ 10. an ONNX export on a full disk
@pytest.mark.parametrize("wrapped", [False, True])
def test_an_onnx_export_on_a_full_disk_names_the_file_and_the_disk(tmp_path, monkeypatch, wrapped):
    """``extract --runtime onnx`` on a nearly full disk said "vgg16 could not be exported to ONNX ([Errno 28] ...). Run
    with --runtime keras": no path, and a fix that changes what the split records instead of freeing space. The file
    and the full disk are named now (also when the exporter wraps the OSError), with --runtime keras as the other way."""
    import sys
    import types

    from featstore.caches import cache_folder
    from featstore.models.onnx_runtime import export_cut

    def export(*a, **k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            if wrapped:
                raise RuntimeError("tf2onnx: failed to save the model") from exc
            raise

    fake_tf = types.SimpleNamespace(TensorSpec=lambda *a: None, float32="float32")  # TensorFlow is not the subject
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    root = tmp_path / "f.h5.cache"
    path = cache_folder(root, "onnx") / "cut.onnx"
    with pytest.raises(OutputError) as got:
        export_cut(types.SimpleNamespace(export=export), 32, 3, path, "vgg16", lambda tmp: None, root)
    line = str(got.value)
    assert f"cannot write the ONNX export of vgg16 to {path}: the disk is full; free some space" in line, line
    assert "--runtime keras" in line and "could not be exported" not in line, line
    assert not [p for p in path.parent.iterdir()]  # nothing left, not even its temporary file


# ------------------------------------------------------------------ 11. temporary files of killed single-file writes
@pytest.fixture
def fresh_sweep(monkeypatch):
    """Every folder swept again (a test's folder may reuse an inode of an earlier one)."""
    from featstore import leftovers

    monkeypatch.setattr(leftovers, "_swept", set())


def test_a_sigkilled_write_atomic_leaves_a_temporary_file_the_next_write_removes(tmp_path, fresh_sweep, caplog):
    """``export --out x.csv`` (any output through write_atomic) killed half-way left ``.x.csv.XXXXXXXX.tmp`` for ever
    (105 MB per kill in the attack) and the next run said nothing. A real SIGKILL here; the next write removes the file
    and says so in one line."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "x.csv"
    code = (
        "import time; from featstore.outputs import write_atomic\n"
        "def w(tmp):\n    tmp.write_bytes(b'a' * 100000); print('writing', flush=True); time.sleep(60)\n"
        f"write_atomic({str(out)!r}, w)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as child:
        assert child.stdout.readline().strip() == b"writing"
        child.send_signal(signal.SIGKILL)
    (left,) = [p.name for p in tmp_path.iterdir()]  # its private folder (featstore.renames), its temporary inside
    assert left.startswith(".x.csv.") and left.endswith(".featstore-tmp")
    assert [p.name for p in (tmp_path / left).iterdir()] == [".x.csv.tmp"]
    for p in [*(tmp_path / left).iterdir(), tmp_path / left]:  # unmodified for STALE_AGE_S: a young one could be
        os.utime(p, (0, 0))  # another PID namespace's
    from featstore.outputs import write_text

    with caplog.at_level("WARNING", logger="featstore.outputs"):
        write_text(out, "id\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"removed 1 temporary file(s) that killed featstore writes left in {tmp_path} ({left}; 0.1 MB)" == line


def test_only_provable_leftovers_are_removed(tmp_path, fresh_sweep):
    """Nothing that is not provably a killed featstore write's temporary file is removed: a live writer's, another
    machine's (process ids are per machine), the old unmarked naming (anyone's file could look so), a link, another
    user's."""
    from featstore.leftovers import host_tag
    from featstore.outputs import write_text
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    dead, host = _dead_pid(), host_tag()
    other_host = "0" * 6 if host != "0" * 6 else "1" * 6
    keep = [
        f".x.csv.fs{os.getppid()}-{host}-abc.tmp",  # a live process
        f".x.csv.fs{dead}-{other_host}-abc.tmp",  # another machine's
        ".x.csv.k2j3h4g5.tmp",  # the old naming: not provably featstore's
        f".x.csv.fs{dead}-{host}-lnk.tmp",  # a link (to a file that must survive)
    ]
    for name in keep[:3]:
        (tmp_path / name).write_text("kept")
    (tmp_path / "target").write_text("kept")
    os.symlink(tmp_path / "target", tmp_path / keep[3])
    gone = tmp_path / f".y.npz.fs{dead}-{host}-q_1.tmp"
    gone.write_text("left by a killed write")
    for name in [gone.name, *keep[:3]]:
        os.utime(tmp_path / name, (0, 0))  # all old enough (leftovers.STALE_AGE_S)
    write_text(tmp_path / "x.csv", "id\n")
    assert not gone.exists()
    assert all(os.path.lexists(tmp_path / name) for name in keep) and (tmp_path / "target").read_text() == "kept"


def test_a_cache_write_removes_leftovers_through_its_folder(tmp_path, fresh_sweep):
    """The similarity index's vectors.npy and the ONNX cut are written by featstore.caches.write_cached: a killed one
    left its temporary file in the cache folder for ever too."""
    from featstore.caches import cache_folder, write_cached_text
    from featstore.leftovers import host_tag
    from tests.test_adversarial_attack13_leftovers import _dead_pid

    folder = cache_folder(tmp_path / "f.h5.index", "s", "train")
    left = folder / f".vectors.npy.fs{_dead_pid()}-{host_tag()}-0a1b2c3d4e5f.tmp"
    left.write_bytes(b"\0" * 1000)
    os.utime(left, (0, 0))  # old enough (leftovers.STALE_AGE_S)
    write_cached_text(tmp_path / "f.h5.index", folder / "index.json", "{}")
    assert sorted(p.name for p in folder.iterdir()) == ["index.json"]


# ------------------------------------------------------------------ 16. two small messages
@pytest.mark.parametrize("budget", ["0.5", "1.5", "0.0000001kB"])
def test_a_memory_budget_under_a_byte_or_fractional_asks_for_a_unit(store, budget):
    """``--memory-budget 0.5`` said "must be positive, got '0.5'" (it is positive): a size without a unit is a whole
    number of bytes."""
    result = cli("fit", "--store", store, "--clf", "logreg", "--memory-budget", budget)
    (line,) = _error_lines(no_traceback(result))
    assert f"--memory-budget '{budget}' is not a whole number of bytes; give a unit (e.g. 512MB" in line, line
    assert "positive" not in line


@pytest.mark.parametrize("out", [".", ".."])
def test_shards_into_the_current_folder_are_refused_before_any_work(store, tmp_path, monkeypatch, out):
    """``export --rows-per-file 5 --out .`` in an empty folder wrote every shard, then said "--out . is a folder holding
    other files than shards (..XXXXXXXX.tmp)": featstore's own temporary folder, made inside ``.`` (the name of ``.``
    is empty). The current folder cannot be replaced by the shards' folder: it is refused first, naming what to pass."""
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    result = cli("export", "--store", store, "--split", "train", "--out", out, "--rows-per-file", "5")
    (line,) = _error_lines(no_traceback(result))
    assert f"--out {out} is the folder you are in (or holds it)" in line and "e.g. --out " in line, line
    assert "other files" not in line and not list(here.iterdir())


# ------------------------------------------------------------------ 14. fine-tuned runs and calibration
# (a fine-tuned run made now is calibrated on validation: tests/test_finetune.py checks it on its trained run)
@pytest.mark.parametrize("kind", ["finetune", "fit"])
def test_an_uncalibrated_run_is_described_truthfully(kind):
    """``runs show`` of a fine-tuned run said "recorded before featstore calibrated runs" while featstore did not
    calibrate fine-tuned runs at all; an older run is now said to predate calibrated runs of its kind."""
    from types import SimpleNamespace

    from featstore.report.runs import calibration_line

    rec = SimpleNamespace(kind=kind, calibration={"method": "none", "input": "probabilities"})
    assert calibration_line(rec) == f"calibration: none (recorded before featstore calibrated {kind} runs)"


def test_an_ensemble_mixing_calibrated_and_uncalibrated_members_says_so(store, tmp_path, caplog):
    """An ensemble averaged an uncalibrated member's probabilities with calibrated ones and recorded "the average of its
    members' calibrated probabilities". The uncalibrated members are named, in a warning and in the run's notes."""
    import json

    from featstore import ensemble, fit

    runs = tmp_path / "runs"
    calibrated, raw = (fit(store, clf, runs=runs)["id"] for clf in ("logreg", "knn"))
    record = runs / raw / "run.json"
    obj = json.loads(record.read_text())
    del obj["calibration"]  # as a run recorded before featstore calibrated runs (or a fine-tuned one before attack 14)
    record.write_text(json.dumps(obj))
    with caplog.at_level("WARNING", logger="featstore.experiments.ensemble"):
        both = ensemble([calibrated, raw], store=store, runs=runs)
    line = f"members {raw} are not calibrated (their probabilities are the model's own); the others' are"
    assert line in both["notes"] and [line] == [r.getMessage().removeprefix("ensemble: ") for r in caplog.records]
    assert "some not calibrated" in both.calibration["fitted_on"]
    assert not ensemble([calibrated, fit(store, "knn", runs=runs)["id"]], store=store, runs=runs)["notes"]
