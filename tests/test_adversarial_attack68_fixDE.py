"""Attack 68, findings 5 and 7: what featstore says of a split an extract left incomplete.

7: every command's advice ("re-run the same `featstore extract`") restarted an interrupted `extract --overwrite` from
scratch; it now says to resume without --overwrite, and `extract --overwrite` says the images it throws away.
5: `check` while an extract writes the store called its split a killed one ("re-run ... to resume", exit 1), advice
that the writer's lock refuses; it now names the writer and asks for a later check (exit 75).
"""

from __future__ import annotations

import logging
import os

import pytest
from typer.testing import CliRunner

from featstore import FeatureStore, extract
from featstore.cli import app
from featstore.errors import StoreError
from featstore.experiments.leaks import find_leaks
from featstore.store.check import check_store
from featstore.store.resume import discarded_note, resume_advice
from featstore.store.writer import writer_lock

from .conftest import interrupt_after_one_batch


@pytest.fixture
def interrupted(tmp_path, data_root, tiny_config, monkeypatch):
    """features.h5 with a complete test split and a train split an extract left after its first batch of 4 (as a
    SIGKILL leaves it)."""
    path = tmp_path / "features.h5"
    extract(data_root, "test", path, tiny_config, batch_size=4)
    interrupt_after_one_batch(monkeypatch, data_root, "train", path, tiny_config, batch_size=4)
    return path


def test_every_command_says_to_resume_without_overwrite(interrupted):
    """check, every reader and leaks give the one phrase, which names --overwrite as what starts again. Sabotage: the
    old "re-run the same `featstore extract`" in check.py, reader.py or leaks/find.py fails it."""
    assert "without --overwrite" in resume_advice("train") and "--split train" in resume_advice("train")
    assert check_store(interrupted) == [
        f"/vgg16/train: split train is not complete (4 of 12 images); {resume_advice('train')}"
    ]
    fs = FeatureStore(interrupted)
    for read in (lambda: fs.load("train"), lambda: list(fs.iter_batches("train")), lambda: find_leaks(interrupted)):
        with pytest.raises(StoreError) as err:
            read()
        assert resume_advice("train") in str(err.value)


def test_extract_overwrite_says_what_it_discards(interrupted, data_root, caplog):
    """`extract --overwrite` on the interrupted split warns before its work and says in its last line how many images
    it extracts again that a resume would have kept; without --overwrite it resumes and says nothing of the kind.
    Sabotage: Survey.discarded left 0 (survey.py) fails it."""
    base = ["extract", "--data", str(data_root), "--split", "train", "--store", str(interrupted), "--weights", "none"]
    base += ["--image-size", "32", "--seed", "7", "--batch-size", "4", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(app, [*base, "--overwrite"])
    assert res.exit_code == 0, res.output
    note = discarded_note(4, "train")
    assert "without --overwrite it resumes" in note
    assert any(note in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    wrote = [line for line in res.output.splitlines() if line.startswith("wrote ")]
    assert wrote and wrote[0].startswith("wrote 12 rows") and wrote[0].endswith(f"; {note}")
    assert FeatureStore(interrupted).split_info("train")["committed_rows"] == 12


def test_a_resume_discards_nothing(interrupted, data_root, tiny_config):
    r = extract(data_root, "train", interrupted, tiny_config, batch_size=4)
    assert (r.resumed_from, r.written, r.discarded) == (4, 8, 0)


def test_check_while_an_extract_writes_names_the_writer(interrupted):
    """With the store's writer lock held (as a running extract holds it), the incomplete split is a note naming the
    writer's pid, not a problem, and `featstore check` exits 75; once the lock is gone it is a problem again (exit 1).
    Sabotage: check_store not passing lock_holder's pid to Writing fails it."""
    notes: list[str] = []
    with writer_lock(interrupted, writing="train"):  # as extract records the split it writes (attack 70 #2)
        assert check_store(interrupted, notes=notes) == []
        res = CliRunner().invoke(app, ["check", str(interrupted)])
    assert len(notes) == 1 and f"featstore process {os.getpid()} writes to this store" in notes[0]
    assert "run `featstore check` again" in notes[0] and "(4 of 12 images so far)" in notes[0]
    assert res.exit_code == 75, res.output
    assert res.output.splitlines()[0] == f"note: {notes[0]}"
    assert not any(line.startswith("problem:") for line in res.output.splitlines())
    res = CliRunner().invoke(app, ["check", str(interrupted)])
    assert res.exit_code == 1 and "without --overwrite" in res.output
