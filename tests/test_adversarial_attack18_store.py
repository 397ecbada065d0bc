"""Attack 18, the store's storage: a heap ID whose length disagrees with its heap object, features chunked across their
values, a path column with a huge chunk, committed rows whose chunks were never written, and a chunk packed by a filter
plugin that is not installed (reproducers on branch attack18: f2, f5, f10, f13, f8). Stores are synthetic
(``writer.write_arrays``, no TensorFlow); each test failed before its fix."""

from __future__ import annotations

import errno
import tracemalloc

import h5py
import numpy as np
import pytest

from featstore.errors import OutputError, StoreError
from featstore.store import writer
from featstore.store.check import check_store
from featstore.store.export import export
from featstore.store.reader import FeatureStore
from featstore.store.strings import vlen_lengths
from tests.test_adversarial_attack4 import cli, no_traceback


def _store(path, n=64, d=16, splits=("train", "test")):
    """A synthetic store of 3 classes, ``n`` rows of ``d`` float32 values a split."""
    rng = np.random.default_rng(0)
    for split in splits:
        y = rng.integers(0, 3, n)
        X = (rng.normal(size=(n, d)) + y[:, None]).astype(np.float32)
        writer.write_arrays(path, "syn", split, X, y, ["a", "b", "c"])
    return path


def _replace_features(path, split, make):
    """Replace ``syn/<split>/features`` by the dataset ``make(group, X)`` creates, keeping its attributes."""
    with h5py.File(path, "a") as f:
        g = f[f"syn/{split}"]
        X, attrs = g["features"][...], dict(g["features"].attrs)
        del g["features"]
        ds = make(g, X)
        for k, v in attrs.items():
            ds.attrs[k] = v


# ------------------------------------------------------------------ 2. a heap ID whose length disagrees with its object
@pytest.fixture
def heap_mismatch(tmp_path):
    """Every test path names row 0's 1 MiB heap object, each ID's length field saying 10 bytes (f2)."""
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        ds = f["syn/test/paths"]
        ds[0] = "x" * (1 << 20)
        mask, raw = ds.id.read_direct_chunk((0,))
        ids = np.frombuffer(raw, np.uint8).reshape(-1, 16).copy()
        ids[:64] = ids[0]
        ids[:64, :4] = np.frombuffer(np.uint32(10).tobytes(), np.uint8)
        ds.id.write_direct_chunk((0,), ids.tobytes(), filter_mask=mask)
    return path


def test_a_heap_length_mismatch_is_one_store_error_naming_split_dataset_and_fix(heap_mismatch):
    """Finding 2: check, export and similar ended in h5py's OSError traceback ("Expected global heap object size does
    not match"). Now refused before HDF5 reads, from the heap collection the IDs name (``store.gheap``)."""
    with pytest.raises(
        StoreError, match=r"syn/test/paths: row 0 names .* global heap .*heap ID says 10.*--overwrite.*--store"
    ):
        FeatureStore(heap_mismatch).paths("test")
    (problem,) = check_store(heap_mismatch)
    assert "syn/test/paths" in problem and "--overwrite" in problem
    with pytest.raises(StoreError, match="global heap"):
        export(heap_mismatch, "test", heap_mismatch.parent / "t.csv")


def test_fit_on_a_heap_mismatch_blames_the_store_not_the_runs_folder(heap_mismatch, tmp_path):
    """Finding 2: fit said "could not write run logreg into runs ...; pass --runs DIR with a writable folder"."""
    result = cli("fit", "--store", heap_mismatch, "--runs", tmp_path / "runs", "--validation", "none")
    out = no_traceback(result)
    assert result.exit_code == 1 and "syn/test" in out and "--overwrite" in out, out
    assert "could not write run" not in out and "--runs DIR" not in out, out


def test_a_run_draft_names_only_its_own_oserrors_as_the_runs_folders(tmp_path, monkeypatch):
    """Finding 2: RunDraft turned every OSError met in its body (a store read included) into "could not write run
    ... pass --runs DIR with a writable folder"; its own writes still say so."""
    from featstore.runs import predictions_file
    from featstore.runs.write import RunDraft

    with pytest.raises(OSError) as caught:
        with RunDraft(tmp_path / "runs", "logreg"):
            raise OSError("Can't synchronously read data (a store's read error)")
    assert not isinstance(caught.value, OutputError)

    def full(self, key, arr):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predictions_file.PredictionsWriter, "_array", full)
    with pytest.raises(OutputError, match="could not write run logreg into .*the disk is full"):
        with RunDraft(tmp_path / "runs", "logreg") as draft:
            draft.predictions.add("test", np.ones((2, 2)) / 2, np.zeros(2, np.int64), "0" * 64)
    assert not (tmp_path / "runs").exists()  # made by this process, empty: removed with the run (attack 48 L3)


# ------------------------------------------------------------------ 5. features chunked across their values
@pytest.fixture
def column_chunks(tmp_path):
    """train's features chunked (N, 1): each chunk holds one value of every row (f5)."""
    path = _store(tmp_path / "cols.h5", n=512, d=64)
    _replace_features(
        path,
        "train",
        lambda g, X: g.create_dataset("features", data=X, chunks=(len(X), 1), maxshape=(None, X.shape[1])),
    )
    return path


def test_features_chunked_across_values_are_refused_with_the_true_chunk_size(column_chunks, tmp_path):
    """Finding 5: check said OK, export read the whole split as one block (blocks sized as chunks[0] whole rows), and
    fit/similar asked for a budget of chunks[0] x the whole row (a 400 KB chunk quoted as 410 MB)."""
    with pytest.raises(
        StoreError, match=r"chunked \(512, 1\) \(.*\(2 KiB\) a chunk\), across its values.*h5repack"
    ) as err:
        FeatureStore(column_chunks).split_info("train")
    assert "--overwrite" in str(err.value) and "128 KiB" not in str(err.value)  # not 512 rows x the whole row
    assert any("across its values" in p for p in check_store(column_chunks))
    with pytest.raises(StoreError, match="across its values"):
        export(column_chunks, "train", tmp_path / "t.npz")
    fs = FeatureStore(column_chunks)
    assert fs.load("test")[0].shape == (512, 64)  # the other split is read as ever


def test_a_chunk_is_sized_by_its_own_shape_not_the_datasets_row():
    """Finding 5: blocks and "raise it to" figures were chunks[0] x the dataset's whole row (410 MB for a 400 KB chunk
    of (200000, 1) float16); storage.chunk_bytes, which the readers' budgets and export's block use, is the chunk's."""
    from featstore.store.storage import chunk_bytes

    assert chunk_bytes({"chunks": [200_000, 1], "shape": [200_000, 1024], "dtype": "float16"}) == 400_000
    assert chunk_bytes({"chunks": [256, 1024], "shape": [200_000, 1024], "dtype": "float16"}) == 256 * 2048
    assert chunk_bytes({"chunks": [], "shape": [10, 4, 4], "dtype": "float32"}) == 64


# ------------------------------------------------------------------ 7. a path column with a huge chunk
def test_path_lengths_are_measured_without_reading_a_whole_huge_chunk(tmp_path):
    """Finding 7: vlen_lengths read each chunk whole (read_direct_chunk): a 50-row column in one chunk of 2**25 rows
    made check/export/similar peak at ~718 MB. Only the rows asked are read, a bounded block at a time."""
    path = _store(tmp_path / "s.h5", n=50)
    with h5py.File(path, "a") as f:
        g = f["syn/test"]
        data, attrs = g["paths"][...], dict(g["paths"].attrs)
        del g["paths"]
        ds = g.create_dataset("paths", shape=data.shape, maxshape=(None,), chunks=(1 << 20,), dtype=h5py.string_dtype())
        ds[...] = data
        for k, v in attrs.items():
            ds.attrs[k] = v
    with h5py.File(path, "r") as f:
        ds = f["syn/test/paths"]
        tracemalloc.start()
        lengths = vlen_lengths(ds, 0, 50)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak:,} bytes traced for 50 rows in a 16 MiB chunk"
    assert lengths.tolist() == [len(p) for p in data]
    assert FeatureStore(path).paths("test") == [p.decode() for p in data]


# ------------------------------------------------------------------ 9. committed rows whose chunks were never written
@pytest.fixture
def holes(tmp_path):
    """test's features in chunks of 16 rows, those of rows 16..31 and 48..63 never allocated (f13)."""
    path = _store(tmp_path / "s.h5")

    def make(g, X):
        ds = g.create_dataset("features", shape=X.shape, maxshape=(None, X.shape[1]), chunks=(16, X.shape[1]))
        for c in (0, 32):
            ds[c : c + 16] = X[c : c + 16]
        return ds

    _replace_features(path, "test", make)
    return path


def test_committed_rows_whose_chunks_were_never_written_are_refused(holes):
    """Finding 9: check said OK and fit scored 32 rows of zeros (test accuracy 0.92 -> 0.72) without a word."""
    assert any("2 of the 4 chunks" in p and "never written" in p for p in check_store(holes)), check_store(holes)
    with pytest.raises(StoreError, match=r"syn/test/features: 2 of the 4 chunks .* never written.*--overwrite"):
        FeatureStore(holes).load("test")
    assert FeatureStore(holes).load("train")[0].shape == (64, 16)


def test_a_resumes_compaction_refuses_a_split_the_readers_refuse(holes, column_chunks):
    """Attack 29 #5, #3: a resume's compaction copied every split without the readers' chunk check: lost chunks came
    back as allocated rows of zeros (check then said OK, fit scored them), a chunk across values was copied as it was.
    Refused before any copy now, the store unchanged; with the split left out (what --overwrite does) it goes through.
    Sabotage: the check_chunks call in compact._copy_split removed fails it (the copy succeeds)."""
    from featstore.store.compact import compact

    for path, says in ((holes, r"syn/test/features: 2 of the 4 chunks .* never written"), (column_chunks, "across")):
        before = path.read_bytes()
        with pytest.raises(StoreError, match=says):
            compact(path)
        assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["cols.h5", "s.h5"]
    compact(holes, leave_out=frozenset({("syn", "test")}))
    assert check_store(holes) == [] and FeatureStore(holes).splits() == ["train"]


# ------------------------------------------------------------------ 13. a filter plugin that is not installed
@pytest.fixture
def blosc_chunk(tmp_path):
    """test's features with the (unregistered here) Blosc filter 32001, one chunk packed by it (f8)."""
    if h5py.h5z.filter_avail(32001):
        pytest.skip("a Blosc plugin is installed here")
    path = _store(tmp_path / "s.h5")

    def make(g, X):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((16, 16))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, (0, 0, 0, 0, 5, 1, 1))
        space = h5py.h5s.create_simple(X.shape, (h5py.h5s.UNLIMITED, X.shape[1]))
        ds = h5py.Dataset(h5py.h5d.create(g.id, b"features", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl))
        ds[...] = X
        ds.id.write_direct_chunk((16, 0), b"\0" * (16 * 16 * 4), filter_mask=0)
        return ds

    _replace_features(path, "test", make)
    return path


def test_a_missing_filter_plugin_is_named_not_called_disk_damage(blosc_chunk, tmp_path):
    """Finding 13: "features of rows 0..63 cannot be read (... can't open directory (/usr/local/hdf5/lib/plugin)):
    the file is damaged (disk or copy error)"."""
    with pytest.raises(StoreError, match=r"compressed with HDF5 filter 32001 \(blosc\).*hdf5plugin") as err:
        FeatureStore(blosc_chunk).load("test")
    assert "disk or copy error" not in str(err.value)
    problems = [p for p in check_store(blosc_chunk) if "32001" in p]
    assert problems and "hdf5plugin" in problems[0] and "damaged" not in problems[0], check_store(blosc_chunk)
    with pytest.raises(StoreError, match="32001"):
        export(blosc_chunk, "test", tmp_path / "t.csv")
