"""Attack 39 #3 and #10: what a colleague's files beside a shared store or run cost a user who did the work.

#3: a hard link or FIFO at ``<store>.leaks.json.lock`` ended ``featstore leaks`` with "error:", exit 1 and no record,
after it had computed and printed everything: now the lock's reason is a note (as any record failure), exit 0.
#10: ``runs evaluate`` of a colleague's run named his run folder only; once he shared it, the next try met his runs
folder with "make it writable": now the first line names both, and a refusal by the runs folder says whose it is.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.experiments.leaks import find_leaks, record_path

from .leaks_stores import blob, write_split


@pytest.fixture
def small(tmp_path):
    """A 20-row train and 5-row test store."""
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, size=(20, 8)).astype(np.float32)
    Q = rng.gamma(1.0, size=(5, 8)).astype(np.float32)
    store, data = tmp_path / "f.h5", tmp_path / "data"
    write_split(
        store, "s", "train", X, np.zeros(20), [f"train/{i}.png" for i in range(20)], data, [blob(i) for i in range(20)]
    )
    write_split(
        store, "s", "test", Q, np.zeros(5), [f"test/{i}.png" for i in range(5)], data, [blob(50 + i) for i in range(5)]
    )
    return store


def _plant(store, kind: str):
    lock = record_path(store).with_name(record_path(store).name + ".lock")
    if kind == "hard link":
        os.link(store, lock)  # a colleague's second name of the (group-writable) store
    else:
        os.mkfifo(lock)
    return lock


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_a_refused_leaks_lock_is_a_note_and_the_results_are_kept(small, tmp_path, kind):
    """#3: the CLI: printed results, --out and the PNG written, the lock's reason said as a note, exit 0."""
    lock = _plant(small, kind)
    out = tmp_path / "pairs.csv"
    r = CliRunner().invoke(app, ["leaks", "--store", str(small), "--threshold", "0.999", "--out", str(out)])
    assert r.exit_code == 0 and "Traceback" not in r.output and "error:" not in r.output, r.output
    assert "test: " in r.output and out.is_file() and os.path.isfile(f"{small}.leaks.png"), r.output
    said = [line for line in r.output.splitlines() if line.startswith("note: leaks record not written: ")]
    assert len(said) == 1 and f"{lock} is not " in said[0], r.output
    assert "`featstore info` will not show these counts (printed above)." in said[0]
    assert "must be writable to keep it" not in said[0]  # the folder is: that is not why
    assert not record_path(small).exists()


def test_find_leaks_warns_of_a_refused_lock_and_returns_its_report(small, caplog):
    """#3: the library: find_leaks (record=True) returned nothing, raising StoreError, for a record it calls secondary."""
    lock = _plant(small, "hard link")
    with caplog.at_level("WARNING", logger="featstore"):
        report = find_leaks(small, threshold=0.999)
    assert report.rows == {"test": 5}
    said = [r.getMessage() for r in caplog.records if "leaks record not written" in r.getMessage()]
    assert len(said) == 1 and str(lock) in said[0] and said[0].endswith("; `featstore info` will not show this result")
    assert os.stat(lock).st_nlink == 2  # the colleague's link is left as it is
