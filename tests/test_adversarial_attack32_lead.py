"""Attack 32 (crafted and genuine stores) findings fixed by the lead: old-style groups whose local heaps overlap."""

from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store.check import check_store
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays


def _store(path, groups: int = 0):
    rng = np.random.default_rng(0)
    write_arrays(path, "syn", "train", rng.normal(size=(8, 4)).astype(np.float32), np.arange(8) % 2, ["a", "b"])
    with h5py.File(path, "r+") as f:  # h5py's own groups (old-style, each with its local heap)
        extra = f["syn/train"].require_group("failed").create_group("extra")
        for j in range(groups):
            extra.create_group(f"k{j}")
    return path


def _heaps_reach(path, size: int) -> int:
    """Every version 0 local heap of ``path`` declares ``size`` bytes, all reaching into one run of zeros appended at
    the file's end (what attack 32 #4 did with 16 MiB); the number of heaps changed."""
    data = bytearray(path.read_bytes())
    end, at, count = len(data), data.find(b"HEAP"), 0
    data += bytes(size)
    while 0 <= at < end:
        if data[at + 4] == 0:
            struct.pack_into("<Q", data, at + 8, size)
            count += 1
        at = data.find(b"HEAP", at + 4)
    struct.pack_into("<Q", data, 40, len(data))  # superblock v0: the end-of-file address covers the zeros
    path.write_bytes(bytes(data))
    return count


def test_local_heaps_that_overlap_are_refused_before_hdf5_reads_them(tmp_path):
    """Attack 32 #4: each group's local heap was bounded (16 MiB) but not the heaps together; HDF5 reads a group's heap
    whole each time it opens it, so 4,000 empty groups whose heaps each declared 16 MiB of one run of zeros made `info`
    take 299 s and `check` 673 s ("OK") from a 23 MB store. Heaps that overlap (which HDF5 never writes) are refused
    in the walk before HDF5 lists anything, so the heaps read add up to at most the file. Sabotage: ``_symbol_table``
    without its ``_own_heap`` call fails it (the store opens, each group's heap read whole)."""
    path = _store(tmp_path / "s.h5", groups=40)
    assert check_store(path) == []  # genuine: h5py's own heaps, each its own
    assert _heaps_reach(path, 1 << 20) > 40
    with pytest.raises(StoreError, match=r"local heap's 1,048,576 bytes at [\d,]+ overlap another group's"):
        FeatureStore(path).splits()
    (problem,) = check_store(path)
    assert "overlap another group's, which HDF5 never writes" in problem and "\n" not in problem, problem
