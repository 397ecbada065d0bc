"""Attack 32 #1: a path column packed by HDF5's deflate and shuffle filters (``h5repack -f GZIP=4``, h5py's
``compression="gzip", shuffle=True``) was refused as "crafted". Its chunks are now unpacked in Python, bounded, and
measured as stored ones are (``store.unpack``); other filters are refused naming the filter and a fix that works, and a
crafted filtered chunk is refused in one line. Stores are synthetic (``writer.write_arrays``, no TensorFlow)."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store.check import check_store
from featstore.store.reader import FeatureStore
from featstore.store.strings import vlen_lengths
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack18_store import _store

LONG = [f"class_{i % 3}/" + "x" * (i % 40) + f"/{i}.png" for i in range(64)]  # lengths that vary, as paths do


def _repack_paths(path, **filters):
    """Rewrite every ``syn/*/paths`` column (its rows made LONG) with h5py ``filters``, chunked 16 rows a chunk."""
    with h5py.File(path, "a") as f:
        for split in ("train", "test"):
            g = f[f"syn/{split}"]
            del g["paths"]
            g.create_dataset(
                "paths", data=np.array(LONG, object), dtype=h5py.string_dtype(), chunks=(16,), maxshape=(None,),
                **filters,
            )  # fmt: skip
    return path


def _reads_right(path):
    fs = FeatureStore(path)
    assert fs.paths("test") == LONG and fs.paths("train", start=5, stop=40) == LONG[5:40]
    assert len(fs.load("test")[0]) == 64
    assert check_store(path) == []
    result = cli("info", path)
    assert result.exit_code == 0, no_traceback(result)


@pytest.mark.parametrize(
    "filters", [dict(compression="gzip", shuffle=True), dict(compression="gzip"), dict(shuffle=True)]
)
def test_a_path_column_packed_by_deflate_and_shuffle_is_read(tmp_path, filters):
    path = _repack_paths(_store(tmp_path / "s.h5"), **filters)
    with h5py.File(path, "r") as f:
        assert f["syn/test/paths"].id.get_create_plist().get_nfilters() == len(filters)
        assert vlen_lengths(f["syn/test/paths"], 3, 50).tolist() == [len(p) for p in LONG[3:50]]
    _reads_right(path)


@pytest.mark.skipif(shutil.which("h5repack") is None, reason="h5repack (hdf5-tools) is not installed")
def test_a_store_shrunk_by_h5repack_gzip_is_read(tmp_path):
    path = _repack_paths(_store(tmp_path / "s.h5"))
    small = tmp_path / "small.h5"
    subprocess.run(["h5repack", "-f", "SHUF", "-f", "GZIP=4", str(path), str(small)], check=True)
    with h5py.File(small, "r") as f:
        assert f["syn/test/paths"].id.get_create_plist().get_nfilters() == 2
    _reads_right(small)


def test_lzf_is_refused_naming_the_filter_and_a_fix_not_crafted(tmp_path):
    path = _repack_paths(_store(tmp_path / "s.h5"), compression="lzf")
    with pytest.raises(StoreError) as err:
        FeatureStore(path).paths("test")
    text = str(err.value)
    assert "'lzf' filter (HDF5 filter 32000)" in text and "--overwrite" in text and "\n" not in text
    assert "crafted" not in text


def _crafted_chunk(path, rows, payload):
    """test's paths column (gzip) with chunks of ``rows`` rows, its first chunk's stored bytes ``payload``."""
    with h5py.File(path, "a") as f:
        g = f["syn/test"]
        del g["paths"]
        ds = g.create_dataset("paths", (64,), h5py.string_dtype(), chunks=(rows,), maxshape=(None,), compression="gzip")
        ds.id.write_direct_chunk((0,), payload, filter_mask=0)
    return path


def test_a_chunk_inflating_past_its_rows_is_refused_in_one_line_and_bounded(tmp_path):
    """4,096 rows of 16-byte heap IDs (64 KiB) whose chunk inflates to 64 MiB: refused before HDF5 reads it, and never
    inflated past its rows (decompressobj's max_length)."""
    path = _crafted_chunk(_store(tmp_path / "s.h5"), 4096, zlib.compress(bytes(64 << 20), 9))
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"syn/test/paths: chunk 0 inflates past its rows' 65,536 bytes") as err:
            FeatureStore(path).paths("test")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value) and peak < 8 << 20, peak
    (problem,) = check_store(path)
    assert "inflates past its rows" in problem


def test_a_chunk_stored_in_more_bytes_than_its_rows_pack_into_is_refused_unread(tmp_path):
    path = _crafted_chunk(_store(tmp_path / "s.h5"), 64, bytes(4096))
    with pytest.raises(StoreError, match=r"chunk 0 is stored in 4,096 bytes, more than its 64 rows could be packed"):
        FeatureStore(path).paths("test")


def test_a_chunk_unpacking_past_the_bound_is_refused_unread(tmp_path):
    """A chunk of 8 Mi rows (128 MiB of heap IDs unpacked): over CHUNK_MOST, refused before it is read."""
    path = _crafted_chunk(_store(tmp_path / "s.h5"), 8 << 20, zlib.compress(bytes(1024)))
    with pytest.raises(StoreError, match=r"chunk 0 unpacks to 134,217,728 bytes .* over the 67,108,864-byte limit"):
        FeatureStore(path).paths("test")


def test_a_chunk_inflating_short_of_its_rows_is_refused(tmp_path):
    path = _crafted_chunk(_store(tmp_path / "s.h5"), 64, zlib.compress(bytes(100)))
    with pytest.raises(StoreError, match=r"chunk 0 unpacks to 100 bytes, not its 64 rows' 1,024"):
        FeatureStore(path).paths("test")


def test_a_filtered_chunks_heap_ids_are_checked_as_a_stored_chunks_are(tmp_path):
    """Every row of a gzip chunk naming row 0's heap object with a length of 10 (attack 18 #2, packed): refused from
    the heap collection before HDF5 reads, as for an unfiltered chunk."""
    path = _repack_paths(_store(tmp_path / "s.h5"), compression="gzip")
    with h5py.File(path, "a") as f:
        ds = f["syn/test/paths"]
        mask, raw = ds.id.read_direct_chunk((0,))
        ids = np.frombuffer(zlib.decompress(raw), np.uint8).reshape(16, 16).copy()
        ids[:] = ids[0]
        ids[:, :4] = np.frombuffer(np.uint32(10).tobytes(), np.uint8)
        ds.id.write_direct_chunk((0,), zlib.compress(ids.tobytes()), filter_mask=mask)
    with pytest.raises(StoreError, match=r"syn/test/paths: row 0 names .* global heap .*heap ID says 10.*--overwrite"):
        FeatureStore(path).paths("test")


def _shuffled(path, values):
    """test's paths column rebuilt under an optional shuffle with client values ``values`` and deflate (the only way
    HDF5 takes filters on a string column), its one chunk written shuffled by 16 bytes and deflated (mask 0)."""
    with h5py.File(path, "a") as f:
        g = f["syn/test"]
        raw = g["paths"].id.read_direct_chunk((0,))[1][: 64 * 16]
        del g["paths"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((64,))
        dcpl.set_filter(h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FLAG_OPTIONAL, values)
        dcpl.set_filter(h5py.h5z.FILTER_DEFLATE, h5py.h5z.FLAG_OPTIONAL, (4,))
        space = h5py.h5s.create_simple((64,), (h5py.h5s.UNLIMITED,))
        vlen = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
        ds = h5py.h5d.create(g.id, b"paths", vlen, space, dcpl=dcpl)
        planes = np.frombuffer(raw, np.uint8).reshape(64, 16).T.tobytes()
        ds.write_direct_chunk((0,), zlib.compress(planes), filter_mask=0)
    return path


def test_a_shuffled_chunk_is_unshuffled_by_its_pipelines_element_size_as_hdf5_does(tmp_path):
    """HDF5 skips shuffle on a string column h5py makes (filter mask 1, no element size stored); a chunk marked
    shuffled, with the size in the pipeline, HDF5 unshuffles by it, and so does unpack."""
    path = _shuffled(_store(tmp_path / "s.h5"), (16,))
    want = [f"test/{i}" for i in range(64)]
    with h5py.File(path, "r") as f:
        assert [p.decode() for p in f["syn/test/paths"][:]] == want  # HDF5 reads it so
    assert FeatureStore(path).paths("test") == want


def test_a_chunk_marked_shuffled_without_an_element_size_is_refused(tmp_path):
    path = _shuffled(_store(tmp_path / "s.h5"), ())
    with pytest.raises(StoreError, match=r"chunk 0 is marked shuffled, but its shuffle filter holds no element size"):
        FeatureStore(path).paths("test")


def test_a_large_chunk_is_inflated_once_for_the_blocks_read_of_it(tmp_path, monkeypatch):
    """h5repack makes chunks of up to 64 MiB (4 Mi rows); readers ask a block of rows at a time, each in its own
    opening: the last large chunk unpacked is kept under the file's state, so it is inflated once, not per block, and
    again once the file changed."""
    from featstore.store import unpack

    rows = [f"c/{i:06d}.png" for i in range(100_000)]  # 1.6 MB of heap IDs in one chunk
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "p", data=np.array(rows, object), dtype=h5py.string_dtype(), chunks=(100_000,), compression="gzip"
        )
    calls, real = [], unpack._inflate
    monkeypatch.setattr(unpack, "_inflate", lambda *a: calls.append(1) or real(*a))
    for a in range(0, 100_000, 25_000):
        with h5py.File(path, "r") as f:
            assert vlen_lengths(f["p"], a, a + 25_000).tolist() == [len(r) for r in rows[a : a + 25_000]]
    assert len(calls) == 1
    with h5py.File(path, "a") as f:
        f["p"][0] = "changed/0.png"
    with h5py.File(path, "r") as f:
        assert vlen_lengths(f["p"], 0, 2).tolist() == [len("changed/0.png"), len(rows[1])]
    assert len(calls) == 2
