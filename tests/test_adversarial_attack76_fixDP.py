"""Attack 76 findings 3 and 4 (helper fixDP): the "fitted on these rows" marks take the run's training split, not any
split named like it in the store the command got (``runs evaluate --store OTHER``, an unrelated ./features.h5 beside
``runs show``/``compare``), and the rows rule's memory (16 bytes a training row, within a memory budget). Synthetic
stores written from arrays."""

from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.runs import fittedrows, trainstore
from featstore.runs.fittedrows import TrainingRows, fitted_rows_said, overlap_notes, peak_bytes, row_digests
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays

C = ["a", "b", "c"]


def _fresh():
    for d in (fittedrows._COUNTS, fittedrows._TRAIN, trainstore._STORES, trainstore._MATCHED):
        d.clear()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _rows(rng, n):
    y = np.arange(n) % 3
    return (rng.normal(size=(n, 8)) + y[:, None] * 0.5).astype(np.float32), y


def _write(path, **splits):
    for s, (X, y) in splits.items():
        write_arrays(path, "synthetic", s, X, y, C)
    return path


@pytest.fixture
def knn_on_a(tmp_path):
    """A 1-NN run fitted on store A's train (90 rows), and those rows."""
    rng = np.random.default_rng(0)
    XA = _rows(rng, 90)
    a = _write(tmp_path / "A.h5", train=XA, validation=_rows(rng, 60), test=_rows(rng, 60))
    rec = fit(a, "knn", {"n_neighbors": [1]}, runs=tmp_path / "A.runs")
    _fresh()
    return rec, XA, rng


# ------------------------------------------------------------------ finding 3: the run's training split, by identity
def test_evaluate_on_another_store_compares_with_the_runs_own_training_rows(tmp_path, knn_on_a):
    rec, XA, rng = knn_on_a
    b = _write(tmp_path / "B.h5", train=_rows(rng, 90), test=XA)  # its own train; its test: the run's training rows
    got = cli("runs", "evaluate", rec.id, "--store", b, "--split", "test", "--runs", tmp_path / "A.runs", "--json")
    marks = json.loads(got.output)
    assert marks["fitted_on_these_rows"], marks  # was an unmarked resubstitution 1.000
    X2 = _rows(rng, 60)
    b2 = _write(tmp_path / "B2.h5", train=X2, test=X2)  # rows the run never saw
    got = cli("runs", "evaluate", rec.id, "--store", b2, "--split", "train", "--runs", tmp_path / "A.runs", "--json")
    marks = json.loads(got.output)
    assert not marks["fitted_on_these_rows"] and not marks["rows_not_compared"], marks  # was called its training rows
    got = cli("runs", "evaluate", rec.id, "--store", b2, "--split", "test", "--runs", tmp_path / "A.runs", "--json")
    assert not json.loads(got.output)["fitted_on_these_rows"]


def test_an_unrelated_default_store_is_not_taken_for_the_runs(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    X = _rows(rng, 90)
    b = _write(tmp_path / "B.h5", train=X, validation=_rows(rng, 60), test=X)  # test: the run's own training rows
    runs = tmp_path / "B.runs"
    knn = fit(b, "knn", {"n_neighbors": [1]}, runs=runs)
    lr = fit(b, "logreg", runs=runs)
    (tmp_path / "cwd").mkdir()
    _write(tmp_path / "cwd" / "features.h5", train=_rows(rng, 90), test=_rows(rng, 30))  # another project's
    monkeypatch.chdir(tmp_path / "cwd")
    _fresh()
    marks = json.loads(cli("runs", "show", knn.id, "--runs", runs, "--json").output)["marks"]
    assert marks["test"]["fitted_on_these_rows"], marks
    out = cli("runs", "compare", knn.id, lr.id, "--runs", runs, "--out", tmp_path / "c.png").output
    test = out.split("test (")[-1]
    assert f"{knn.id} was fitted on these rows" in test and "larger than chance" not in test, out


def test_neither_store_holding_the_runs_split_is_said_not_silent(tmp_path, knn_on_a):
    rec, XA, rng = knn_on_a
    a = tmp_path / "A.h5"
    os.remove(a)  # A made again: another train, and a test of the run's very training rows
    _write(a, train=_rows(rng, 90), validation=_rows(rng, 60), test=XA)
    _fresh()
    marks = json.loads(cli("runs", "show", rec.id, "--store", a, "--runs", tmp_path / "A.runs", "--json").output)
    why = marks["marks"]["test"]["rows_not_compared"]
    assert why and "not the split the run was fitted on" in why and str(a) in why, marks
    assert not marks["marks"]["test"]["fitted_on_these_rows"]


def test_a_copy_of_the_store_still_marks(tmp_path, knn_on_a):
    import shutil

    rec, XA, rng = knn_on_a
    os.remove(tmp_path / "A.h5")  # the recorded store is gone; a copy of its train (same rows) is given
    c = _write(tmp_path / "copy.h5", train=XA, test=XA)
    marks = json.loads(cli("runs", "show", rec.id, "--store", c, "--runs", tmp_path / "A.runs", "--json").output)
    assert marks["marks"]["train"]["fitted_on_these_rows"]
    shutil.copy(c, tmp_path / "copy2.h5")
    _fresh()
    got, skipped = fittedrows.shared_rows(rec, ["train", "test"], tmp_path / "copy2.h5")
    assert got == {"train": (1, 1)}  # the copy's train is the run's: its figure there is marked
    assert "holds no split 'validation'" in skipped["validation"]  # said (78 #1)
    # the run's test figure was scored on A's test, not on the copy's (train's rows): not compared, not marked (78 #1b)
    assert "holds other rows than the run's figures there were scored on" in skipped["test"]


# ------------------------------------------------------------------ finding 4: the rows rule's memory
def _narrow(path, n):
    rng = np.random.default_rng(2)
    X = rng.random((n, 2), dtype=np.float32)
    write_arrays(path, "x", "train", X, np.arange(n) % 2, ["a", "b"], batch_size=1 << 16)
    write_arrays(path, "x", "test", X[: n // 4], np.arange(n // 4) % 2, ["a", "b"], batch_size=1 << 16)
    return path


def test_the_training_digests_take_16_bytes_a_row_at_peak(tmp_path):
    n = 1 << 21  # 16 MiB of features: blocks of one chunk (131,072 rows), whose temporaries the held digests outweigh
    fs = FeatureStore(_narrow(tmp_path / "s.h5", n))
    small = 1 << 17
    tracemalloc.start()
    try:
        rows = TrainingRows(fs, "x", "train", small)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held <= 16.5 * n and peak <= 21 * n, (held / n, peak / n)  # 38 bytes a row at peak before
    assert peak <= peak_bytes(fs, "x", "train", "test", small)
    assert rows.count(fs, "x", "test", small) == (n // 4, n // 4)


def test_a_memory_budget_bounds_the_rows_rule_or_says_so(tmp_path):
    store = _narrow(tmp_path / "s.h5", 1 << 14)
    fs = FeatureStore(store)
    _fresh()
    got, skipped = fitted_rows_said(store, "x", "train", ["test"], memory_budget=1 << 18)
    assert not got and "memory budget" in skipped["test"], skipped
    assert not fittedrows._TRAIN  # nothing held after a budgeted call
    notes = overlap_notes(fs, "x", "train", [None, "test"], memory_budget=1 << 18)
    assert len(notes) == 1 and "were not compared" in notes[0] and "memory budget" in notes[0], notes
    assert peak_bytes(fs, "x", "train", "test") < 64 << 20
    got, skipped = fitted_rows_said(store, "x", "train", ["test"], memory_budget=64 << 20)
    assert got == {"test": (1 << 12, 1 << 12)} and not skipped and not fittedrows._TRAIN


def test_hits_match_a_set_whatever_the_ties():
    class Fake(TrainingRows):
        def __init__(self, keys):
            keys = keys.copy()
            keys.byteswap(inplace=True)
            keys.view("V16").reshape(-1).sort()
            keys.byteswap(inplace=True)
            self.keys, self.fence = keys, np.ascontiguousarray(keys[:: fittedrows._FENCE, 0])

    rng = np.random.default_rng(3)
    for lanes in (4, 1 << 62):  # lane 0 tied almost everywhere, and hardly ever
        keys = rng.integers(0, lanes, size=(3000, 2), dtype=np.uint64)
        keys[:, 1] = rng.integers(0, 1 << 62, size=3000, dtype=np.uint64)
        train = Fake(np.concatenate([keys[:2000], keys[:100]]))  # some rows twice
        query = np.concatenate([keys, keys[:, ::-1], row_digests(np.ones((5, 3), np.float32), np.zeros(5))])
        want = {tuple(k) for k in keys[:2000].tolist()}
        assert train.hits(query).tolist() == [tuple(k) in want for k in query.tolist()]
