"""Attack 16 (issue 19): rows for what the sixteenth fresh attack found; reproducers on branch attack16."""

from __future__ import annotations

import json
import os

import numpy as np

from featstore.store import writer
from tests import test_adversarial_attack14 as a14
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store, run = a14.store_src, a14.store, a14.run  # the fourteenth attack's fixtures: a store and a run


def test_a_store_replaced_by_one_without_the_runs_splits_is_not_the_runs_store(run):
    """Finding 10: a store re-made at the run's path holding none of the splits the run recorded (another dataset's test
    alone) was accepted: nothing there showed it was the run's store, and its test was recorded as the run's own."""
    store, runs, rid = run
    os.unlink(store)
    rng = np.random.default_rng(7)
    y = rng.permutation(np.repeat(np.arange(3), 7)).astype(np.int32)
    writer.write_arrays(store, "s", "test", rng.normal(0, 9, (21, 8)).astype(np.float32), y, ["a", "b", "c"])
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "was replaced" in out and "none of them in the store there" in out, out
    assert "test" not in json.loads((runs / rid / "run.json").read_text())["metrics"]


def test_the_lock_pid_file_is_never_written_through_a_hard_link(tmp_path):
    """Finding 9: <store>.lock.pid was opened with O_TRUNC, so a hard link planted at that name had its other name's
    bytes replaced by the writer's pid; now a new file is renamed onto the name."""
    from featstore.store.locking import lock_holder, writer_lock

    notes = tmp_path / "notes.txt"
    notes.write_text("precious notes")
    os.link(notes, tmp_path / "f.h5.lock.pid")
    with writer_lock(tmp_path / "f.h5", True):
        assert lock_holder(tmp_path / "f.h5") == os.getpid()  # the pid is still recorded, in a file of its own
    assert notes.read_text() == "precious notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temporary file left behind


def test_a_path_under_an_unknown_users_home_is_one_line(store, tmp_path):
    """Finding 4: "~nosuchuser99/..." ended in "RuntimeError: Could not determine home directory" (info, export, report)."""
    for args in (
        ("info", "~nosuchuser99/f.h5"),
        ("export", "--store", store, "--split", "test", "--out", "~nosuchuser99/x.csv"),
    ):
        result = cli(*args)
        out = no_traceback(result)
        assert result.exit_code != 0 and "~nosuchuser99/" in out and "names no user of this machine" in out, out


def test_the_outlier_warning_holds_when_most_rows_are_zero(tmp_path, caplog):
    """Finding 12: with 16 of 30 train rows all zero the median norm was 0 and the warning was off, while one row of
    1e15 made leaks report "15 of 15 rows have a near-duplicate"."""
    from featstore.experiments.leaks.search import scan
    from featstore.store.reader import FeatureStore

    rng = np.random.default_rng(0)
    h5 = tmp_path / "z.h5"
    for split, n in (("train", 30), ("validation", 15)):
        X = rng.normal(size=(n, 8)).astype(np.float32)
        if split == "train":
            X[:16] = 0
            X[20] = 1e15
        writer.write_arrays(h5, "s", split, X, np.repeat(np.arange(3), n // 3).astype(np.int32), ["a", "b", "c"])
    with caplog.at_level("WARNING", logger="featstore.experiments.leaks.search"):
        scan(FeatureStore(h5), "s", ["validation"], "train", 1 << 20)
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "1 row(s) of 's' in 'train' have a norm over 1000 x the median of its non-zero rows" in said, said
    assert "train/20 (2.83e+15)" in said, said
