"""Attack 21 finding 6: a path column's string lengths (``strings.vlen_lengths``) walked the column's whole chunk index
on every block a command measured (check, export, compact: one opening per block), so ``featstore check`` of a store
whose paths were chunked one row a chunk was quadratic (40,000 rows: 47 s; h5py read every path in 0.4 s). Counted,
not timed: walks and look-ups of the index per command. Synthetic stores only; each test failed before its fix."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featstore.store import strings
from featstore.store.strings import vlen_lengths


class _Counted:
    """A dataset (or its id) whose walks (``chunk_iter``) and look-ups of its chunk index are counted."""

    def __init__(self, real, counts: dict):
        self._real, self._counts = real, counts

    def __getattr__(self, name):
        if name == "id":
            return _Counted(self._real.id, self._counts)
        real = getattr(self._real, name)
        if name not in ("chunk_iter", "get_chunk_info_by_coord"):
            return real

        def counted(*args):
            self._counts[name] = self._counts.get(name, 0) + 1
            return real(*args)

        return counted


def _paths(n: int) -> list[str]:
    return [f"img/{'x' * (i % 7)}{i}.png" for i in range(n)]


def _one_row_chunks(path, paths: list[str], chunks: int = 1) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("paths", data=paths, dtype=h5py.string_dtype(), chunks=(chunks,), maxshape=(None,))


@pytest.mark.parametrize("block", [16, 32])
def test_lengths_measured_block_by_block_walk_the_index_once_across_openings(tmp_path, block):
    """16 rows a block (16 chunks: looked up one by one, each O(index)) and 32 (a walk of all N chunks each): both were
    O(blocks x index). Now one walk for the whole column, though each block opens the file anew."""
    paths = _paths(1500)
    _one_row_chunks(tmp_path / "s.h5", paths)
    counts: dict = {}
    got: list = []
    for a in range(0, len(paths), block):
        with h5py.File(tmp_path / "s.h5", "r") as f:
            got += vlen_lengths(_Counted(f["paths"], counts), a, min(a + block, len(paths))).tolist()
    assert got == [len(p.encode()) for p in paths]
    assert counts == {"chunk_iter": 1}, f"{counts} for {-(-len(paths) // block)} blocks"


def _crafted_store(path, n: int, feature_rows: int = 1) -> None:
    """A store featstore wrote, then its paths chunked one row a chunk and features ``feature_rows`` (check's block is
    16 chunks of features: 16 rows)."""
    from featstore.store.writer import write_arrays

    write_arrays(path, "ex", "train", np.random.default_rng(0).random((n, 4), np.float32), np.arange(n) % 2, ["a", "b"])
    with h5py.File(path, "r+") as f:
        g = f["ex/train"]
        paths, X = g["paths"][:], g["features"][:]
        del g["paths"], g["features"]
        g.create_dataset("paths", data=paths, dtype=h5py.string_dtype(), chunks=(1,), maxshape=(None,))
        g.create_dataset("features", data=X, chunks=(feature_rows, 4), maxshape=(None, 4))


def _count_walks(monkeypatch) -> list:
    walks: list = []
    real = strings._walk
    monkeypatch.setattr(strings, "_walk", lambda ds: walks.append(ds.name) or real(ds))
    return walks


def test_check_walks_the_path_column_once_whatever_its_blocks(tmp_path, monkeypatch):
    """``featstore check`` measured the paths of each 16-row block with 16 look-ups (or 32-row blocks with a walk each)
    of the whole index: 10,000 rows 6.8 s, 40,000 rows 47 s. Now one walk of the column for the whole check."""
    from featstore.store.check import check_store

    _crafted_store(tmp_path / "s.h5", 800)
    walks = _count_walks(monkeypatch)
    assert check_store(tmp_path / "s.h5") == []
    assert walks == ["/ex/train/paths"], f"{len(walks)} walks for 50 blocks"


def test_export_and_compact_walk_the_path_column_once(tmp_path, monkeypatch):
    """export reads paths a block at a time (``fs.paths(start, stop)``, an opening each) and compact copies them 16
    chunks a step: one walk each now, and the rows come out right."""
    from featstore import FeatureStore
    from featstore.store.compact import compact

    _crafted_store(tmp_path / "s.h5", 800)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        want = [p.decode() for p in f["ex/train/paths"][:]]
    fs = FeatureStore(tmp_path / "s.h5")
    walks = _count_walks(monkeypatch)
    assert [p for a in range(0, 800, 16) for p in fs.paths("train", start=a, stop=a + 16)] == want
    assert walks == ["/ex/train/paths"], f"{len(walks)} walks for 50 blocks"
    walks.clear()
    strings._PLACES.clear()  # compact's own walk, not the one export kept
    compact(tmp_path / "s.h5")
    assert walks == ["/ex/train/paths"], f"{len(walks)} walks for 50 steps"
    assert FeatureStore(tmp_path / "s.h5").paths("train") == want


def test_a_column_rewritten_between_openings_is_walked_again(tmp_path):
    """The walk is kept under the file's state: a column replaced (same name, shape and chunks, other places) between
    two openings is walked again, never read at the old places; so is one replaced within an opening for writing."""
    paths = _paths(300)
    longer = [p + "y" * (1 + i % 5) for i, p in enumerate(paths)]
    _one_row_chunks(tmp_path / "s.h5", paths, chunks=3)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert vlen_lengths(f["paths"], 0, 300).tolist() == [len(p) for p in paths]
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        assert vlen_lengths(f["paths"], 0, 300).tolist() == [len(p) for p in paths]
        del f["paths"]
        f.create_dataset("paths", data=longer, dtype=h5py.string_dtype(), chunks=(3,), maxshape=(None,))
        assert vlen_lengths(f["paths"], 0, 300).tolist() == [len(p) for p in longer]
    with h5py.File(tmp_path / "s.h5", "r") as f:
        counts: dict = {}
        assert vlen_lengths(_Counted(f["paths"], counts), 0, 300).tolist() == [len(p) for p in longer]
        assert counts == {"chunk_iter": 1}


def test_another_column_moved_to_the_name_is_walked_even_where_the_file_looks_unchanged(tmp_path, monkeypatch):
    """A file system with coarse timestamps (a tick of 1-10 ms on kernels before 6.13, NFS) may show the same size and
    times after a rewrite: the column's object address is in the key too, so a column moved to the name is walked."""
    import os

    paths = _paths(300)
    other = [p + "z" * (1 + i % 3) for i, p in enumerate(paths)]
    with h5py.File(tmp_path / "s.h5", "w") as f:
        for name, rows in (("paths", paths), ("other", other)):
            f.create_dataset(name, data=rows, dtype=h5py.string_dtype(), chunks=(3,), maxshape=(None,))
    frozen = os.stat(tmp_path / "s.h5")
    monkeypatch.setattr(os, "fstat", lambda fd: frozen)  # the file looks the same at every opening
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert vlen_lengths(f["paths"], 0, 300).tolist() == [len(p) for p in paths]
    with h5py.File(tmp_path / "s.h5", "r+") as f:
        f.move("paths", "old")
        f.move("other", "paths")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert vlen_lengths(f["paths"], 0, 300).tolist() == [len(p) for p in other]
