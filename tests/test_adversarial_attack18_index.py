"""Attack 18, the similarity index and leaks: rows for findings 3, 4, 6, 10 and 11 of the eighteenth fresh attack
(reproducers on branch attack18). Stores are synthetic (``writer.write_arrays``, no TensorFlow); each test failed
before its fix."""

from __future__ import annotations

import errno
import json
import logging
import os
import tracemalloc

import h5py
import numpy as np
import pytest

from featstore import FeatureStore
from featstore.errors import ConfigError, OutputError, StoreError
from featstore.experiments import similar_index
from featstore.experiments.similar import similar
from featstore.experiments.similar_index import build_similarity_index, index_dir, load_index
from featstore.store.writer import write_arrays

CLASSES = ["a", "b"]


def _rows(seed: int, n: int = 120, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), (np.arange(n) % 2).astype(np.int64)


@pytest.fixture
def store(tmp_path):
    """A store of 120 train and 30 test rows of 16 values, written from arrays, with its index (8 dims)."""
    path = tmp_path / "s.h5"
    write_arrays(path, "syn", "train", *_rows(0), CLASSES)
    write_arrays(path, "syn", "test", *_rows(1, 30), CLASSES)
    build_similarity_index(path, split="train", dims=8)
    return path


def _rewrite_in_the_same_second(path, seed: int = 2) -> None:
    """train rewritten from other rows of the same count, its finish time kept (a rewrite within the same second)."""
    with h5py.File(path, "r") as f:
        finished = f["syn/train"].attrs["finished_at"]
    write_arrays(path, "syn", "train", *_rows(seed), CLASSES)
    with h5py.File(path, "a") as f:
        f["syn/train"].attrs["finished_at"] = finished


# ------------------------------------------------------------------ 3. rows_sha256 in the split's commit
def test_an_index_of_a_split_rewritten_from_other_arrays_in_the_same_second_is_stale(store):
    """Finding 3: COMMIT_KEYS left out rows_sha256: a split written from arrays (listing "arrays:<rows>") rewritten
    from other rows of the same count within one second kept its index, which answered with the old rows' neighbours."""
    _rewrite_in_the_same_second(store)
    with pytest.raises(ConfigError, match="is stale: split 'train' changed since it was built \\(rows_sha256"):
        load_index(FeatureStore(store), "syn", "train")


def test_the_leaks_record_and_the_map_key_of_a_rewritten_split_are_stale(store):
    """Finding 3: `featstore info` kept showing the old leaks line, and the report's map cache key was the same."""
    from featstore.experiments import projection
    from featstore.experiments.leaks import find_leaks, leaks_line

    find_leaks(store, query=["test"], compare_bytes=False)
    key = projection._key(FeatureStore(store), "syn", ["train", "test"], 100, "pca", 0)
    _rewrite_in_the_same_second(store)
    fs = FeatureStore(store)
    assert "STALE" in leaks_line(store, "syn", fs.info()["extractors"]["syn"])
    assert projection._key(fs, "syn", ["train", "test"], 100, "pca", 0) != key


def test_an_index_recorded_before_rows_sha256_was_compared_stays_usable(store):
    """Finding 3: a record without rows_sha256 in its commit (made before) compares the rest; it is not refused."""
    meta_path = index_dir(store, "syn", "train") / "index.json"
    meta = json.loads(meta_path.read_text())
    assert meta["commit"].pop("rows_sha256")
    meta_path.write_text(json.dumps(_resigned(meta_path.parent, meta)))  # signed since attack 20: as featstore wrote it
    assert load_index(FeatureStore(store), "syn", "train").rows == 120


def _resigned(folder, meta: dict) -> dict:
    """``meta`` signed as this user's featstore signs an index whose vectors.npy is the one in ``folder`` now: the
    checks behind the signature (attack 20) are tested on files featstore would trust."""
    from featstore.experiments.similar_files import identity, seal
    from featstore.keys import user_key
    from featstore.provenance import sha256_file

    meta["vectors_sha256"] = sha256_file(folder / "vectors.npy")
    meta["vectors_identity"] = identity(os.stat(folder / "vectors.npy"))
    return seal(meta, user_key())


# ------------------------------------------------------------------ 4. the index's files checked
def _vectors(store) -> os.PathLike:
    return index_dir(store, "syn", "train") / "vectors.npy"


@pytest.mark.parametrize("rows", [[5], "all"])
def test_nan_in_vectors_npy_is_one_line_not_a_traceback_nor_rows_left_out(store, rows):
    """Finding 4: NaN in every row of vectors.npy gave "ValueError: cannot reshape array of size 0" (no candidate was
    finite); NaN in one row left that row out of every answer without a word. Both refuse the index in one line."""
    v = np.load(_vectors(store))
    v[slice(None) if rows == "all" else rows] = np.nan
    np.save(_vectors(store), v)  # the same size and header: the loader's checks pass, the search meets the NaN
    meta_path = _vectors(store).parent / "index.json"  # signed as featstore's (else built again since attack 20)
    meta_path.write_text(json.dumps(_resigned(meta_path.parent, json.loads(meta_path.read_text()))))
    with pytest.raises(StoreError, match="NaN or inf scores .*--build-index --split train`, or search with --exact"):
        similar("train/0", store, k=3)


def test_an_altered_mean_in_model_npz_is_refused(store):
    """Finding 4: a finite but altered mean in model.npz read every similarity as 1.0000, without a word."""
    part = index_dir(store, "syn", "train") / "model.npz"
    z = dict(np.load(part))
    z["mean"] = z["mean"] + 100
    np.savez(part, **z)
    assert part.stat().st_size == json.loads((part.parent / "index.json").read_text())["files"]["model.npz"]
    with pytest.raises(StoreError, match="model.npz cannot be used \\(its sha256 is not the one index.json records"):
        similar("train/0", store, k=3)


@pytest.mark.parametrize("change", ["appended", "fortran", "float64"])
def test_vectors_npy_unlike_what_index_json_records_is_refused(store, change):
    """Finding 4: index.json's recorded sizes were never compared; vectors.npy with bytes after its rows, in Fortran
    order, or of another dtype (its size recorded anew) was mapped as found."""
    path, meta_path = _vectors(store), _vectors(store).parent / "index.json"
    v = np.load(path)
    if change == "appended":
        with open(path, "ab") as fh:
            fh.write(b"\0" * 64)
    else:
        np.save(path, np.asfortranarray(v) if change == "fortran" else v.astype(np.float64))
        meta = json.loads(meta_path.read_text())
        meta["files"]["vectors.npy"] = path.stat().st_size
        meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="vectors.npy cannot be used \\((it is|its header says)"):
        load_index(FeatureStore(store), "syn", "train")


def test_an_index_json_without_the_files_digest_is_refused(store):
    """Finding 4: an index.json recording no digest of model.npz (an older index, or one edited) is rebuilt."""
    meta_path = _vectors(store).parent / "index.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("model_sha256", None)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="no digest of model.npz.*rebuild it with"):
        load_index(FeatureStore(store), "syn", "train")


# ------------------------------------------------------------------ 6. a full disk while vectors.npy is written
def test_a_full_disk_while_vectors_npy_is_written_is_one_line_and_leaves_nothing(store, monkeypatch):
    """Finding 6: vectors.npy was written through a memory map: on a full disk the page fault was SIGBUS ("Bus error",
    exit 135, no message) and a temporary file of the whole index was left. It is written through a file now; ENOSPC
    (simulated here: the attack's 16 MiB tmpfs needs root) is the usual one line, and nothing is left."""
    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            if self.fh.tell() > 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.fh.write(data)

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Full(fh) if "+" in mode and ".vectors.npy." in os.fspath(path) else fh

    monkeypatch.setattr(similar_index, "open", full_open, raising=False)
    folder = index_dir(store, "syn", "train")
    with pytest.raises(OutputError, match="cannot write similarity index .*vectors.npy: the disk is full"):
        build_similarity_index(store, split="train", dims=8)
    assert sorted(p.name for p in folder.iterdir()) == ["model.npz", "vectors.npy"]  # the earlier index's; no temp
    assert not (folder / "index.json").exists()  # the earlier index is no index until rebuilt


# ------------------------------------------------------------------ 10. the PCA sample within max_bytes
def test_the_pca_sample_is_bounded_by_max_bytes_and_said(tmp_path, caplog):
    """Finding 10: the whole PCA sample (sample rows x D float32, then PCA's copy) was held whatever max_bytes: 10,000
    rows of 8,192 values peaked at 927 MB with a 256 MB budget. The sample now fits half of max_bytes, fewer rows are
    said in one info line and in index.json, and the build's traced peak stays near the budget."""
    path, n, d = tmp_path / "w.h5", 2_000, 2_048
    rng = np.random.default_rng(0)
    write_arrays(
        path, "syn", "train", rng.normal(size=(n, 4, 4, d // 16)).astype(np.float16), np.arange(n) % 2, CLASSES
    )
    budget = 8 << 20
    import sklearn.decomposition  # noqa: F401 (imported before the trace: its import is not the build's memory)

    tracemalloc.start()
    try:
        with caplog.at_level(logging.INFO, logger="featstore"):
            meta = build_similarity_index(path, split="train", dims=32, max_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # measured: 34.3 MB before (the whole 2,000-row sample, twice while concatenated), 18.8 MB after
    assert peak < 3 * budget, f"peak {peak / 1e6:.1f} MB with max_bytes {budget / 1e6:.1f} MB"
    assert (meta["sample"], meta["sample_asked"]) == (budget // 2 // (4 * d), 20_000)  # 512 rows of 2,000
    assert "PCA is fitted on 512 rows, not 2,000" in caplog.text
    assert load_index(FeatureStore(path), "syn", "train").rows == n
    with pytest.raises(ConfigError, match="needs .* bytes of max_bytes .* give max_bytes at least"):
        build_similarity_index(path, split="train", dims=600, max_bytes=budget)


# ------------------------------------------------------------------ 11. each file hashed once
def test_leaks_hashes_each_distinct_file_once(tmp_path, monkeypatch):
    """Finding 11: leaks hashed a file once for every row naming it (250 rows reaching one 32 MiB file read 7.8 GiB).
    Here every row of train and test is a hard link to one file: it is read once, and every test row is a copy."""
    import hashlib

    from featstore.experiments.leaks import hashes

    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "one.bin").write_bytes(b"x" * 4096)
    path = tmp_path / "s.h5"
    for split, n in (("train", 40), ("test", 10)):
        write_arrays(path, "syn", split, *_rows(n, n), CLASSES)
        for i in range(n):
            os.link(root / "one.bin", root / split / str(i))
    with h5py.File(path, "a") as f:
        for split in ("train", "test"):
            f[f"syn/{split}"].attrs["source_root"] = str(root)
    reads = []

    class Counting:
        def __getattr__(self, name):
            return getattr(hashlib, name)

        def sha256(self, *args):
            reads.append(1)
            return hashlib.sha256(*args)

    monkeypatch.setattr(hashes, "hashlib", Counting())
    matches, unhashed = hashes.same_bytes(FeatureStore(path), "syn", ["test"], "train")
    assert sorted(matches["test"]) == list(range(10)) and not unhashed
    assert len(reads) == 1, f"{len(reads)} files hashed for one distinct file"
