"""Attack 63 #10: byte-identical image files inside one split (12 distinct test images saved 8 times each) counted
as independent rows, and `featstore leaks`, which already hashed files to compare test with train, said nothing.

`leaks` (find_leaks, its printed summary, <store>.leaks.json and the `info` line) now groups the rows of each split
it reads whose files hold the same bytes: rows, distinct images, groups, a few example paths and one line of advice.
Synthetic stores (``tests/leaks_stores.py``): any features, real files of a few bytes; no TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import FeatureStore, find_leaks
from featstore.cli import app
from featstore.experiments.leaks import hashes, leaks_line, record_path

from .leaks_stores import blob, write_split

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def copies_store(tmp_path: Path, images: int = 3, copies: int = 4, train_copies: int = 1) -> Path:
    """``tmp_path/f.h5``: train of 8 distinct files (each saved ``train_copies`` times), test of ``images`` distinct
    files saved ``copies`` times each under other names (rows in file order: img0 copy0, img0 copy1, ...)."""
    store, data = tmp_path / "f.h5", tmp_path / "data"
    rng = np.random.default_rng(0)
    n = 8 * train_copies
    X = rng.normal(0, 1, (n, 6)).astype(np.float32)
    write_split(
        store,
        "s",
        "train",
        X,
        np.arange(n) % 2,
        [f"train/{i}_{k}.png" for i in range(8) for k in range(train_copies)],
        data,
        [blob(i) for i in range(8) for _ in range(train_copies)],
    )
    m = images * copies
    write_split(
        store,
        "s",
        "test",
        rng.normal(0, 1, (m, 6)).astype(np.float32),
        np.arange(m) % 2,
        [f"test/{i:03d}_{k}.png" for i in range(images) for k in range(copies)],
        data,
        [blob(100 + i) for i in range(images) for _ in range(copies)],
    )
    return store


def test_copies_inside_test_are_grouped_with_counts_examples_and_advice(tmp_path):
    store = copies_store(tmp_path, images=12, copies=8)
    r = find_leaks(store, threshold=0.999, record=False)
    c = r.within["test"]
    assert (c.rows, c.distinct, c.groups, c.in_groups, c.largest) == (96, 12, 12, 96, 8)
    assert c.examples[0] == ("test/000_0.png", "test/000_1.png", "test/000_2.png") and c.example_rows[0] == 8
    assert r.within["train"].groups == 0 and r.within["train"].distinct == 8
    advice = c.advice("test")
    assert advice.startswith("test holds 96 rows of 12 distinct images")
    assert "accuracy intervals and paired tests count copies as independent rows; remove the copies" in advice
    assert r.within["train"].advice("train", reference=True) == ""
    assert r.counts["test"] == 0 and r.same_bytes["test"] == 0  # none of them is a copy of a train image


def test_copies_inside_train_get_the_reference_advice(tmp_path):
    r = find_leaks(copies_store(tmp_path, train_copies=2), threshold=0.999, record=False)
    c = r.within["train"]
    assert (c.rows, c.distinct, c.groups) == (16, 8, 8)
    assert "cross-validation can put copies of one image on both sides of a fold" in c.advice("train", True)


def test_cli_prints_the_advice_and_examples_and_info_shows_distinct_images(tmp_path):
    store = copies_store(tmp_path, images=12, copies=8)
    res = run("leaks", "--store", store, "--threshold", "0.999", "--png", tmp_path / "l.png")
    assert res.exit_code == 0, res.output
    assert "copies: test holds 96 rows of 12 distinct images (12 groups of byte-identical files" in res.output
    assert "  8 copies  test/000_0.png = test/000_1.png = test/000_2.png (and 5 more)" in res.output
    rec = json.loads(record_path(store).read_text())
    assert rec["format"] == 3
    assert rec["extractors"]["s"]["within"]["test"] == {
        "rows": 96,
        "distinct": 12,
        "groups": 12,
        "in_groups": 96,
        "largest": 8,
    }
    out = run("info", store).output
    assert "byte-identical copies inside a split: test 96 rows of 12 distinct images" in out, out


def test_info_reads_a_record_without_copies_and_refuses_copies_that_do_not_add_up(tmp_path):
    store = copies_store(tmp_path)
    find_leaks(store, threshold=0.999)
    entry = FeatureStore(store).info()["extractors"]["s"]
    assert "test 12 rows of 3 distinct images" in leaks_line(store, "s", entry)
    rec = json.loads(record_path(store).read_text())
    old = json.loads(json.dumps(rec))  # a record of format 2 (before "within"): read as before
    old["format"] = 2
    del old["extractors"]["s"]["within"]
    record_path(store).write_text(json.dumps(old))
    line = leaks_line(store, "s", entry)
    assert line.startswith("leaks: 0 test rows with a near-duplicate in train") and "distinct" not in line, line
    rec["extractors"]["s"]["within"]["test"]["distinct"] = 13  # edited: more distinct images than groups allow
    record_path(store).write_text(json.dumps(rec))
    line = leaks_line(store, "s", entry)
    assert "is damaged: it has copies within split 'test' that do not add up" in line, line
    rec["extractors"]["s"]["within"]["test"] = [1, 2]
    record_path(store).write_text(json.dumps(rec))
    assert "is damaged" in leaks_line(store, "s", entry)


def test_each_distinct_file_is_read_once_and_only_sizes_that_repeat(tmp_path, monkeypatch):
    """Rows naming one file (hard links, another spelling) are grouped without reading it; a file whose size no other
    file of the split has is not read; two files of one size with other bytes are read once each, not grouped; a
    file read to compare with train is not read again; a missing file counts as a distinct image."""
    store, data = tmp_path / "f.h5", tmp_path / "data"
    X = np.random.default_rng(1).normal(0, 1, (12, 5)).astype(np.float32)
    write_split(store, "s", "train", X[:4], np.arange(4) % 2, [f"train/{i}.png" for i in range(4)], data,
                [blob(i, 40 + i) for i in range(4)])  # fmt: skip
    paths = ["test/one.png", "test/x/../one.png", "test/link.png", "test/p.png", "test/q.png", "test/big.png",
             "test/t0.png", "test/t0b.png"]  # fmt: skip
    files = [blob(50, 90), blob(50, 90), blob(50, 90), blob(51, 70), blob(52, 70), blob(53, 300),
             blob(0, 40), blob(0, 40)]  # fmt: skip
    os.makedirs(data / "test/x")
    write_split(store, "s", "test", X[4:], np.arange(8) % 2, paths, data, files)
    os.unlink(data / "test/link.png")
    os.link(data / "test/one.png", data / "test/link.png")
    os.unlink(data / "test/t0b.png")  # gone: a distinct image, listed as not compared
    reads = []
    real = hashes._read_digest
    monkeypatch.setattr(hashes, "_read_digest", lambda fd, size: reads.append(os.fstat(fd).st_ino) or real(fd, size))
    r = find_leaks(store, threshold=0.999, record=False)
    c = r.within["test"]
    assert (c.rows, c.distinct, c.groups, c.in_groups, c.largest) == (8, 6, 1, 3, 3), c
    assert set(c.examples[0]) == {"test/one.png", "test/x/../one.png", "test/link.png"}
    ino = {p: os.stat(data / p).st_ino for p in ("test/p.png", "test/q.png", "test/t0.png", "train/0.png")}
    assert sorted(reads) == sorted(ino.values()), reads  # p and q (one size); t0 and train/0 (same size as train's)
    assert r.same_bytes["test"] == 1 and any("t0b.png (not found)" in u for u in r.unhashed["test"])
    assert len(r.unhashed["test"]) == 1  # said once, though both checks list the split's files


def test_without_compare_bytes_nothing_is_hashed(tmp_path):
    r = find_leaks(copies_store(tmp_path), threshold=0.999, record=False, compare_bytes=False)
    assert r.within == {}


def test_near_duplicates_inside_a_query_split_are_counted_recorded_and_shown(tmp_path):
    """The module finds near-duplicates by features between splits; inside one checked split the same way: a row
    whose nearest *other* row of the split is at or above the threshold (files of other bytes: no group of copies)."""
    store, data = tmp_path / "f.h5", tmp_path / "data"
    rng = np.random.default_rng(3)
    X = rng.normal(0, 1, (20, 16)).astype(np.float32)
    write_split(store, "s", "train", X[:12], np.arange(12) % 2, [f"train/{i}.png" for i in range(12)], data,
                [blob(i) for i in range(12)])  # fmt: skip
    T = X[12:].copy()
    T[1] = T[0] + np.float32(1e-4)  # rows 0 and 1: near-duplicates of each other, not of a train row
    write_split(store, "s", "test", T, np.arange(8) % 2, [f"test/{i}.png" for i in range(8)], data,
                [blob(50 + i) for i in range(8)])  # fmt: skip
    r = find_leaks(store, threshold=0.999, record=False)
    assert r.near_within == {"test": 2} and r.within["test"].groups == 0 and r.counts["test"] == 0
    res = run("leaks", "--store", store, "--threshold", "0.999", "--png", tmp_path / "l.png")
    assert res.exit_code == 0, res.output
    assert "test: 0 of 8 rows have a near-duplicate in train" in res.output
    assert "; 2 have one inside test" in res.output, res.output
    assert json.loads(record_path(store).read_text())["extractors"]["s"]["near_within"] == {"test": 2}
    assert (
        "leaks: 0 test rows with a near-duplicate in train (threshold 0.999, given; featstore leaks)"
        in run("info", store).output
    )  # recorded, not shown: the line is as it was
    rec = json.loads(record_path(store).read_text())
    rec["extractors"]["s"]["near_within"]["test"] = 9  # more than the 8 rows checked
    record_path(store).write_text(json.dumps(rec))
    entry = FeatureStore(store).info()["extractors"]["s"]
    assert "is damaged: it has near-duplicates inside a split" in leaks_line(store, "s", entry)


def test_near_duplicates_inside_a_split_blocked_equal_brute_force(tmp_path):
    """Several blocks of the split against itself (each row's own left out, wherever its block) give the brute-force
    count of rows whose nearest other row is at or above the threshold (centred on train's mean)."""
    from featstore.store.writer import write_arrays

    rng = np.random.default_rng(2)
    X = rng.gamma(1.0, size=(600, 256)).astype(np.float32)  # 1 KiB rows
    Q = rng.gamma(1.0, size=(1500, 256)).astype(np.float32)
    Q[100:140] = Q[:40] + rng.normal(0, 0.05, (40, 256)).astype(np.float32)  # 80 rows with a close twin
    path = tmp_path / "arr.h5"
    for split, F in (("train", X), ("test", Q)):
        write_arrays(path, "synthetic", split, F, np.arange(len(F)) % 2, ["a", "b"], batch_size=256)
    chunk = FeatureStore(path).split_info("test")["chunks"][0] * 1024
    R = Q.astype(np.float64) - X.astype(np.float64).mean(0)
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    S = R @ R.T
    np.fill_diagonal(S, -np.inf)
    best = np.sort(S.max(1))
    t = float((best[-80] + best[-81]) / 2)  # between the 80 twins and the rest: no row at the threshold
    small = find_leaks(path, threshold=t, max_bytes=8 * chunk, record=False)
    big = find_leaks(path, threshold=t, max_bytes=1 << 30, record=False)
    assert small.near_within == big.near_within == {"test": 80}
