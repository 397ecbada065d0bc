"""Attack 75 #1 #2 #3 #4 #7 #8: the far-row rule's per-column usual sizes were set by the bad rows in sparse (ReLU)
columns (13 % of train rows at 1e12 passed, #1), it only looked upward from train (a train split all 1e9 x the others
passed, #2), its histograms cost memory with the column count and were rebuilt for every sweep cell (#4, #8), check
held a trainval/test store to no training split (#7), and the refusal's fix did not run as printed (#3). The rule is
now one usual size per split (the median over rows of each row's typical magnitude), splits far apart either way are
refused, and the reference is cached per store state."""

from __future__ import annotations

import re
import shlex
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

import featstore
from featstore.cli import app
from featstore.errors import StoreError
from featstore.store import far, nonfinite
from featstore.store.check import check_store
from featstore.store.writer import write_arrays
from tests.conftest import write_images

CLASSES = ["a", "b", "c", "d"]


def _sparse(n, rng):
    """ReLU-like rows: each class fires its own 4 of 16 units, each half of the time (about 87 % zeros)."""
    y = np.arange(n) % 4
    X = np.zeros((n, 16), np.float32)
    for i, c in enumerate(y):
        on = rng.random(4) < 0.5
        X[i, 4 * c : 4 * c + 4] = on * rng.uniform(1, 3, 4)
    return X, y


def test_sparse_far_rows_are_refused(tmp_path):
    """#1: 12 of 92 train rows at 1e12 in a sparse layer outnumbered each column's non-zero rows and set its usual
    size: fit at chance, check OK. Sabotage: the per-column medians of non-zero values (the old rule)."""
    rng = np.random.default_rng(0)
    store = tmp_path / "s.h5"
    X, y = _sparse(80, rng)
    X = np.vstack([X, np.full((12, 16), 1e12, np.float32)])
    write_arrays(store, "relu", "train", X, np.concatenate([y, np.arange(12) % 4]), CLASSES)
    for s in ("validation", "test"):
        write_arrays(store, "relu", s, *_sparse(40, rng), CLASSES)
    with pytest.raises(StoreError, match=r"/relu/train holds 12 row\(s\) \(80, 81, .*over 1e\+06 times the training"):
        featstore.fit(store, "logreg", runs=tmp_path / "runs")
    assert any(p.startswith("/relu/train: 12 rows hold features over 1e+06") for p in check_store(store))


def _dense(path, scale, splits=("train", "validation", "test"), n=60, base=1.0):
    rng = np.random.default_rng(1)
    for s in splits:
        y = np.arange(n) % 3
        X = (np.abs(rng.normal(size=(n, 8))) + y[:, None] * 1.5) * base * scale.get(s, 1.0)
        write_arrays(path, "synthetic", s, X.astype(np.float32), y, ["a", "b", "c"])
    return path


def test_a_far_train_split_is_refused(tmp_path):
    """#2: a train split all 1e9 x its honest validation and test passed fit, sweep and check (both scored at chance).
    Sabotage: judging the evaluation splits only for rows over train's bound."""
    store = _dense(tmp_path / "s.h5", {"train": 1e9})
    said = r"/synthetic/validation's usual feature size is \S+ and the training split train's \S+: over 1e\+06 times"
    for call in (
        lambda: featstore.fit(store, "logreg", runs=tmp_path / "runs"),
        lambda: featstore.fit(store, "logreg", memory_budget="1MB", runs=tmp_path / "runs"),
        lambda: featstore.sweep(store, ["logreg"], runs=tmp_path / "runs"),
    ):
        with pytest.raises(StoreError, match=said + r".*most likely train.*write_arrays\(.*'train', X, y"):
            call()
    assert not (tmp_path / "runs").exists()
    lines = [p for p in check_store(store) if "times apart" in p]
    assert [p.split(":")[0] for p in lines] == ["/synthetic/test", "/synthetic/validation"], lines
    assert all("most likely the training split train" in p for p in lines)


def test_honest_large_features_pass(tmp_path):
    """Honest layers whose every feature is over FAR_FLOOR (a VGG map without normalisation) are not refused, nor a
    split whose scale differs from train's by 1e3; the far rule reads them (no shortcut under the floor)."""
    store = _dense(tmp_path / "s.h5", {"test": 1e3}, base=5e3)
    featstore.fit(store, "logreg", runs=tmp_path / "runs")
    featstore.sweep(store, ["logreg"], runs=tmp_path / "runs2")
    assert check_store(store) == []


def test_check_takes_the_largest_split_without_train(tmp_path):
    """#7: with trainval/test, check held test to itself (OK, exit 0) where fit --train trainval refused it, and its
    line named a train split that does not exist. Sabotage: the split itself as reference without `train`."""
    store = _dense(tmp_path / "s.h5", {"test": 1e9}, splits=("trainval", "test"))
    lines = check_store(store)
    assert len(lines) == 1 and lines[0].startswith("/synthetic/test: 60 rows hold features over 1e+06 times"), lines
    assert "the training split trainval (no split is named train: the largest)" in lines[0]
    with pytest.raises(StoreError, match=r"/synthetic/test holds 60 row\(s\)"):
        featstore.fit(store, "logreg", train="trainval", validation=None, runs=tmp_path / "runs")
    assert check_store(_dense(tmp_path / "ok.h5", {}, splits=("trainval", "test"))) == []


def test_check_far_line_of_arrays_names_write_arrays(tmp_path):
    """#3 (d): check's far line told a write_arrays split to re-extract it."""
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(size=(30, 8))).astype(np.float32)
    X[4] = 1e12
    write_arrays(tmp_path / "s.h5", "synthetic", "train", X, np.arange(30) % 3, ["a", "b", "c"])
    (line,) = check_store(tmp_path / "s.h5")
    assert "write the split again from its arrays" in line and "re-extract" not in line, line


def test_the_fix_runs_as_printed_for_a_saved_model(tmp_path, monkeypatch):
    """#3: the fix named `--model keras-file:<sha256> --weights model`, left out the recorded --preprocess and --dtype
    and pointed to `featstore info --store S`; each failed as printed. Sabotage: the raw attributes."""
    import keras

    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Flatten(name="flatten")(keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inp))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    (tmp_path / "my models").mkdir()
    keras.Model(inp, keras.layers.Dense(2, name="out")(x)).save(tmp_path / "my models" / "cnn.keras")
    for s, seed in (("train", 1), ("test", 3)):
        write_images(tmp_path / "data", s, {"a": 3, "b": 3}, seed=seed, size=20)
    runner = CliRunner()
    for s in ("train", "test"):
        args = ["extract", "--data", "data", "--store", "s.h5", "--model", "my models/cnn.keras", "--split", s]
        got = runner.invoke(app, [*args, "--preprocess", "scale01", "--dtype", "float16", "--no-progress"])
        assert got.exit_code == 0, got.output
    import h5py

    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f["cnn/train/features"][0] = np.nan
    with pytest.raises(StoreError) as e:
        featstore.fit(tmp_path / "s.h5", "logreg", runs=tmp_path / "runs")
    line = str(e.value)
    assert "--store" not in line.split("`featstore extract")[0] and "featstore info --store" not in line
    cmd = re.search(r"`(featstore extract [^`]*)`", line).group(1)
    assert "--preprocess scale01" in cmd and "--dtype float16" in cmd and "keras-file:" not in cmd, cmd
    got = runner.invoke(app, shlex.split(cmd)[1:] + ["--no-progress"])
    assert got.exit_code == 0, got.output
    featstore.fit(tmp_path / "s.h5", "logreg", runs=tmp_path / "runs")  # mended


def test_train_is_binned_once_per_command(tmp_path, monkeypatch):
    """#8: a sweep built train's histograms once per cell (5 times for 4 classifiers). Now each split's usual size is
    binned once per process and store state. Sabotage: the reference kept on one FeatureStore object."""
    rng = np.random.default_rng(0)
    store = tmp_path / "s.h5"
    for s, n in (("train", 60), ("validation", 30), ("test", 45)):
        y = np.arange(n) % 3
        X = np.abs(rng.normal(size=(n, 8))) + y[:, None]
        X[:, 3] = 2000.0  # a large channel: over FAR_FLOOR, so the usual sizes are read
        write_arrays(store, "synthetic", s, X.astype(np.float32), y, ["a", "b", "c"])
    binned: list[int] = []
    add = far.LayerSizes.add_stats  # every binning (a split's first pass since attack 79 #5, or a pass of its own)
    monkeypatch.setattr(far.LayerSizes, "add_stats", lambda self, e, t: (binned.append(len(e)), add(self, e, t))[1])
    nonfinite._CACHE.clear()
    featstore.sweep(store, ["logreg", "knn", "sgd"], runs=tmp_path / "runs")
    assert sum(binned) == 60 + 30 + 45, binned


def test_the_usual_size_costs_a_chunk_whatever_the_width():
    """#4: (NBINS + 1) x columns int64 counts and as much again per bincount, one row at a time on wide maps. Now
    temporaries of a chunk of features and a histogram of a few KB."""
    X = np.ones((3, 1 << 21), np.float32)
    tracemalloc.start()
    sizes = far.LayerSizes()
    sizes.add(X)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * far._CHUNK * 4, peak  # a few chunk-sized arrays, not columns x bins
    assert sizes.usual() == 2.0 and sizes.counts.nbytes < 4096
