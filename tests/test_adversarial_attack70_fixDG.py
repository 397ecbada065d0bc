"""Attack 70, findings 2 and 5: who `check` takes for a store's live writer, and what `extract --overwrite` promises.

2: `check` took any live process whose pid was in ``<store>.lock.pid`` for the store's writer (a killed extract leaves
the file, and its pid is soon another process's; pid 0 and -1 always "live"), and a live writer of one split for the
writer of every unfinished one: a killed, incomplete split was "no problem found so far", exit 75. The writer is now
the process holding the lock (tried as the writer takes it), and its note covers only the split it records writing.
5: `extract --overwrite` said "without --overwrite it resumes after them" also where that resume would be refused
(another --batch-size, ...); it now says so only where the resume check passes, else why it would not resume.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import h5py
import pytest
from typer.testing import CliRunner

from featstore import extract
from featstore.cli import app
from featstore.store.check import check_store
from featstore.store.lockholder import holder, lock_holder
from featstore.store.resume import discarded_note, resume_advice, resume_refusal
from featstore.store.survey import survey
from featstore.store.writer import writer_lock

from .conftest import interrupt_after_one_batch

PROBLEM = f"/vgg16/train: split train is not complete (4 of 12 images); {resume_advice('train')}"


@pytest.fixture
def interrupted(tmp_path, data_root, tiny_config, monkeypatch):
    """features.h5 with a complete test split and a train split an extract left after its first batch of 4."""
    path = tmp_path / "features.h5"
    extract(data_root, "test", path, tiny_config, batch_size=4)
    interrupt_after_one_batch(monkeypatch, data_root, "train", path, tiny_config, batch_size=4)
    return path


@pytest.fixture
def live_pid():
    """The pid of a live process that is no featstore writer (a killed writer's pid, given to it since)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("pid", ["live", "0", "-1", "own"])
def test_a_pid_file_without_the_lock_held_is_no_writer(interrupted, live_pid, pid):
    """A killed extract's pid file naming a live process (another one, or this one), 0 or -1, with no process holding
    the lock: the incomplete split is a problem (exit 1), no note, and `info`'s writer is none. Sabotage: lock_holder
    (lockholder.holder) reading the pid file without trying the lock fails it."""
    text = {"live": str(live_pid), "own": str(os.getpid())}.get(pid, pid)
    (interrupted.parent / f"{interrupted.name}.lock.pid").write_text(f'{text}\n"train"')
    notes: list[str] = []
    assert check_store(interrupted, notes=notes) == [PROBLEM] and notes == []
    assert lock_holder(interrupted) is None and holder(interrupted) is None
    res = CliRunner().invoke(app, ["check", str(interrupted)])
    assert res.exit_code == 1 and "problem: " + PROBLEM in res.output and "note:" not in res.output
    assert not (interrupted.parent / f"{interrupted.name}.lock").exists()  # the probe creates no lock file


def test_a_live_writer_of_another_split_hides_no_killed_one(interrupted):
    """The lock held by a writer recording split `test`: the killed `train` is a problem still (exit 1); held by one
    recording `train`, it is a note (exit 75). Sabotage: Writing.says not comparing the recorded split fails it."""
    notes: list[str] = []
    with writer_lock(interrupted, writing="test"):
        assert holder(interrupted).split == "test" and lock_holder(interrupted) == os.getpid()
        assert check_store(interrupted, notes=notes) == [PROBLEM] and notes == []
        res = CliRunner().invoke(app, ["check", str(interrupted)])
    assert res.exit_code == 1, res.output
    with writer_lock(interrupted, writing="train"):
        assert check_store(interrupted, notes=notes) == []
        res = CliRunner().invoke(app, ["check", str(interrupted)])
    assert res.exit_code == 75 and len(notes) == 1 and f"featstore process {os.getpid()} writes" in notes[0]


def test_a_writer_that_records_no_split_hides_none(interrupted):
    """A writer that records no split (a fine-tuning cache's mark, an older featstore): every unfinished split stays
    a problem, with one note that a process holds the lock. Sabotage: Writing.says taking it for every split fails it."""
    notes: list[str] = []
    with writer_lock(interrupted):
        assert holder(interrupted).split is None
        assert check_store(interrupted, notes=notes) == [PROBLEM]
    assert len(notes) == 1 and "without recording which split it writes" in notes[0]


def test_extract_overwrite_promises_a_resume_only_where_it_would_run(interrupted, data_root, caplog):
    """`extract --overwrite --batch-size 8` on a split started with 4: the same command without --overwrite is refused,
    so the warning and the last line say why, not "it resumes after them". Sabotage: pipeline passing no refusal to
    discarded_note fails it."""
    base = ["extract", "--data", str(data_root), "--split", "train", "--store", str(interrupted), "--weights", "none"]
    base += ["--image-size", "32", "--seed", "7", "--batch-size", "8", "--no-progress"]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code != 0 and "another --batch-size (4 then, 8 now)" in refused.output
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(app, [*base, "--overwrite"])
    assert res.exit_code == 0, res.output
    note = discarded_note(4, "train", "it was started with another --batch-size (4 then, 8 now)")
    assert "resumes after them" not in note and "would not resume" in note
    assert any(note == r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelno == logging.WARNING)
    assert [line for line in res.output.splitlines() if line.startswith("wrote ")][0].endswith(f"; {note}")


def test_the_resume_check_decides_the_note(interrupted):
    """resume_refusal answers as refuse_resume and the growth check: None for the same options; a reason for another
    --compression, --jit, or a split that cannot grow. Sabotage: survey's `fixed` left False fails it."""
    with h5py.File(interrupted, "r") as f:
        stored = dict(f["vgg16/train"].attrs)
    new = {k: stored[k] for k in ("n_images", "listing_sha256", "batch_size", "compression", "jit")}
    assert resume_refusal([stored], new) is None
    assert "--compression" in resume_refusal([stored], {**new, "compression": "lzf"})
    assert "--jit" in resume_refusal([stored], {**new, "jit": not stored["jit"]})
    with h5py.File(interrupted, "a") as f:  # rewritten contiguous, as a repack leaves it: a resume cannot append
        data = f["vgg16/train/labels"][()]
        del f["vgg16/train/labels"]
        f["vgg16/train"].create_dataset("labels", data=data)
    with h5py.File(interrupted, "r") as f:
        found = survey(f, interrupted, ["vgg16"], "train", lambda f, n: False, overwrite=True)
    assert found.discarded == 4 and found.fixed
    assert "cannot grow" in resume_refusal(found.stored, new, found.fixed)
