"""featstore leaks: a count that means the same on every extractor, exact copies by file bytes, NaN/inf refused.

Two synthetic "extractors" see the same 2,000 train and 1,000 test "images" (latent vectors) on very different
similarity scales: ``sharp`` (distinct images' nearest similarity about 0.5) and ``flat`` (about 0.97, like a deep
pooled layer where every shirt looks like every other shirt). Ten test rows are near copies of train rows (latent
plus a little noise) and three test files hold the same bytes as train files while their features say nothing.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import find_leaks
from featstore.cli import app
from featstore.errors import StoreError
from featstore.experiments.leaks import read_record, record_path

from .leaks_stores import blob, write_split

N_TRAIN, N_TEST, NEAR, SAME = 2000, 1000, range(10), range(10, 13)
NEAR_OF = {i: 100 + 7 * i for i in NEAR}  # test row -> the train row it nearly copies
SAME_OF = {i: 200 + i for i in SAME}  # test row -> the train row whose file it copies byte for byte


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _features(z: np.ndarray, c: np.ndarray, centres: np.ndarray, W: np.ndarray, pull: float) -> np.ndarray:
    """ReLU features of latents pulled towards their class centre (pull 0: sharp, pull 5: flat)."""
    return np.maximum((pull * centres[c] + z) @ W, 0).astype(np.float32)


@pytest.fixture(scope="module")
def two_extractors(tmp_path_factory) -> dict:
    """One store with extractors 'sharp' and 'flat' over the same images; files under data/ for the hashes."""
    tmp = tmp_path_factory.mktemp("cal")
    rng = np.random.default_rng(0)
    d = 64
    centres = rng.normal(size=(4, d)) / np.sqrt(d)
    z_tr = rng.normal(size=(N_TRAIN, d)) / np.sqrt(d)
    z_te = rng.normal(size=(N_TEST, d)) / np.sqrt(d)
    c_tr, c_te = rng.integers(0, 4, N_TRAIN), rng.integers(0, 4, N_TEST)
    for i, j in NEAR_OF.items():
        z_te[i] = z_tr[j] + rng.normal(size=d) * 0.03 / np.sqrt(d)
        c_te[i] = c_tr[j]
    files_tr = [blob(i) for i in range(N_TRAIN)]
    files_te = [blob(10**6 + i) for i in range(N_TEST)]
    for i, j in SAME_OF.items():
        files_te[i] = files_tr[j]
    store, data = tmp / "f.h5", tmp / "data"
    for name, pull in (("sharp", 0.0), ("flat", 5.0)):
        W = np.random.default_rng(1).normal(size=(d, 256))
        for split, z, c, files in (("train", z_tr, c_tr, files_tr), ("test", z_te, c_te, files_te)):
            paths = [f"{split}/{'ab'[k % 2]}/{k:05d}.png" for k in range(len(z))]
            write_split(store, name, split, _features(z, c, centres, W, pull), c % 2, paths, data, files)
    return {"store": store, "data": data}


def test_per_extractor_threshold_flags_the_same_small_fraction_and_finds_the_copies(two_extractors):
    store = two_extractors["store"]
    unrelated = np.setdiff1d(np.arange(N_TEST), [*NEAR, *SAME])
    frac = {}
    for name in ("sharp", "flat"):
        r = find_leaks(store, name, record=False)
        fixed = find_leaks(store, name, threshold=0.95, compare_bytes=False, record=False)
        flagged = {int(p.query_path.rsplit("/", 1)[1][:5]): p for p in r.pairs}
        frac[name] = np.isin(unrelated, list(flagged)).mean()
        fixed_frac = np.isin(unrelated, [int(p.query_path.rsplit("/", 1)[1][:5]) for p in fixed.pairs]).mean()
        assert r.calibration.method == "train-quantile" and r.calibration.sample == N_TRAIN
        assert r.calibration.caveat() == ""  # 2,000 rows: 20 above the 0.99 quantile
        for i, j in NEAR_OF.items():  # every near copy found, paired with its original
            assert flagged[i].train_path.endswith(f"{j:05d}.png") and not flagged[i].same_bytes, (name, i)
        for i, j in SAME_OF.items():  # same bytes: found whatever the features say, with that pair's own similarity
            assert flagged[i].same_bytes and flagged[i].train_path.endswith(f"{j:05d}.png"), (name, i)
            assert flagged[i].similarity < r.threshold
        assert r.same_bytes == {"test": 3} and r.unhashed == {}
        if name == "sharp":
            assert r.median["test"] < 0.6 and fixed_frac < 0.01
        else:  # the old fixed 0.95 flags most distinct rows of the flat extractor
            assert r.median["test"] > 0.9 and fixed_frac > 0.5
    assert 0 < frac["sharp"] <= 0.03 and 0 < frac["flat"] <= 0.03, frac
    assert abs(frac["sharp"] - frac["flat"]) <= 0.015, frac


def test_cli_prints_and_records_each_extractors_calibration(two_extractors, tmp_path):
    store = two_extractors["store"]
    for name in ("sharp", "flat"):
        r = run("leaks", "--store", store, "--extractor", name, "--split", "test", "--png", tmp_path / f"{name}.png")
        assert r.exit_code == 0, r.output
        assert (
            f"{name}: threshold 0." in r.output
            and "(calibrated: 0.99 quantile of the similarity of all 2000" in r.output
        )
        assert "test: " in r.output and "(3 with the same file bytes, similarity >= " in r.output
    rec = read_record(record_path(store))["extractors"]
    assert rec["sharp"]["threshold"] < rec["flat"]["threshold"]
    for name in ("sharp", "flat"):
        cal = rec[name]["calibration"]
        assert (
            cal["method"] == "train-quantile" and cal["quantile"] == 0.99 and cal["threshold"] == rec[name]["threshold"]
        )
    info = run("info", store).output
    assert info.count("calibrated on train, quantile 0.99; featstore leaks)") == 2, info
    record_path(store).unlink()


def test_copies_inside_train_do_not_push_the_threshold_to_one(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.gamma(1.0, size=(400, 32)).astype(np.float32)
    X[200:300] = X[:100]  # a quarter of train has an identical twin in train
    Q = rng.gamma(1.0, size=(100, 32)).astype(np.float32)
    Q[0] = X[5] + 0.01
    store = tmp_path / "f.h5"
    write_split(store, "s", "train", X, np.zeros(400), [f"train/{i}" for i in range(400)])
    write_split(store, "s", "test", Q, np.zeros(100), [f"test/{i}" for i in range(100)])
    r = find_leaks(store, record=False)
    assert r.calibration.copies_in_train == 200 and r.calibration.threshold < 0.99
    assert "200 with an exact copy inside train left out" in r.calibration.describe()
    assert r.pairs[0].query_path == "test/0" and r.pairs[0].train_path in ("train/5", "train/205")


@pytest.mark.parametrize("where", ["train", "test", "both"])
def test_nan_or_inf_rows_are_refused_naming_split_rows_and_fix(tmp_path, where):
    """One inf row in train made leaks report 0 although test held an exact copy; now it is refused, like fit."""
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, size=(50, 16)).astype(np.float32)
    Q = rng.gamma(1.0, size=(20, 16)).astype(np.float32)
    Q[0] = X[7]
    if where in ("train", "both"):
        X[5, 3] = np.inf
    if where in ("test", "both"):
        Q[2] = np.nan
        Q[4, 0] = -np.inf
    store = tmp_path / "f.h5"
    write_split(store, "s", "train", X, np.zeros(50), [f"train/{i}.png" for i in range(50)])
    write_split(store, "s", "test", Q, np.zeros(20), [f"test/{i}.png" for i in range(20)])
    with pytest.raises(StoreError) as info:
        find_leaks(store)
    msg = str(info.value)
    if where in ("train", "both"):
        assert "'train': 1 row(s), e.g. train/5.png" in msg
    if where in ("test", "both"):
        assert "'test': 2 row(s), e.g. test/2.png, test/4.png" in msg
    assert "so leaks (like fit) refuses" in msg and "featstore extract --split NAME --overwrite" in msg
    r = run("leaks", "--store", store)
    assert r.exit_code == 1 and "NaN or inf" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not record_path(store).exists()
    assert "leaks: not checked" in run("info", store).output  # never a count of 0 for features it could not compare


def test_files_gone_fifo_or_folder_are_listed_not_crashed_on_nor_blocking(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, size=(30, 16)).astype(np.float32)
    Q = rng.gamma(1.0, size=(10, 16)).astype(np.float32)
    files = [blob(i) for i in range(30)]
    store, data = tmp_path / "f.h5", tmp_path / "data"
    write_split(store, "s", "train", X, np.zeros(30), [f"train/{i}.png" for i in range(30)], data, files)
    test_files = [blob(100 + i) for i in range(10)]
    test_files[1] = files[3]  # same bytes, unrelated features
    write_split(store, "s", "test", Q, np.zeros(10), [f"test/{i}.png" for i in range(10)], data, test_files)
    (data / "train/0.png").unlink()
    (data / "test/5.png").unlink()
    os.mkfifo(data / "test/5.png")  # same size? never opened: not a regular file
    (data / "test/6.png").unlink()
    (data / "test/6.png").mkdir()
    done, box = threading.Event(), {}

    def go():
        box["r"] = find_leaks(store, threshold=0.999, record=False)
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(60), "leaks blocked on a FIFO at a stored path"
    r = box["r"]
    assert r.same_bytes == {"test": 1} and r.pairs[0].query_path == "test/1.png" and r.pairs[0].same_bytes
    assert r.unhashed["train"] == [f"{data}/train/0.png (not found)"]
    assert sorted(r.unhashed["test"]) == [
        f"{data}/test/5.png (not a regular file)",
        f"{data}/test/6.png (not a regular file)",
    ]
    out = run("leaks", "--store", store, "--threshold", "0.999", "--png", tmp_path / "p.png")
    assert out.exit_code == 0 and "not compared by content (train, 1): " in out.output and "Traceback" not in out.output


def test_degenerate_features_give_a_valid_threshold_and_record(tmp_path):
    """Two train rows, or constant features: a threshold in (0, 1] that info can show, never 0/0."""
    for name, X in (
        ("two", np.random.default_rng(0).random((2, 8), dtype=np.float32)),
        ("flat", np.zeros((5, 8), np.float32)),
    ):
        store = tmp_path / f"{name}.h5"
        write_split(store, "s", "train", X, np.zeros(len(X)), [f"train/{i}" for i in range(len(X))])
        write_split(store, "s", "test", X, np.zeros(len(X)), [f"test/{i}" for i in range(len(X))])
        r = find_leaks(store)
        assert 0 < r.threshold <= 1 and np.isfinite(list(r.median.values())).all()
        assert "calibrated on train, quantile 0.99; featstore leaks)" in run("info", store).output


def test_a_record_of_format_1_still_shows(tmp_path):
    """Records written before the calibration (fixed 0.95, no 'calibration') read as fixed."""
    X = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    store = tmp_path / "f.h5"
    write_split(store, "s", "train", X, np.zeros(20), [f"train/{i}" for i in range(20)])
    write_split(store, "s", "test", X[:5], np.zeros(5), [f"test/{i}" for i in range(5)])
    find_leaks(store)
    rec = read_record(record_path(store))
    entry = rec["extractors"]["s"]
    for key in ("calibration", "same_bytes"):
        del entry[key]
    entry["threshold"], rec["format"] = 0.95, 1
    record_path(store).write_text(json.dumps(rec))
    assert (
        "leaks: 5 test rows with a near-duplicate in train (threshold 0.95, fixed; featstore leaks)"
        in run("info", store).output
    )
