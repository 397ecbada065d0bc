"""A split's recorded listing is read in blocks and compared with numpy (issue 21): a resume or a changed-listing check
of 10⁶ rows never holds a tuple per row, a diff keeps the first names and the counts, and a crafted listing length is
refused in one line before a row is read."""

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.images import listing_diff
from featstore.images.listing import ImageListing
from featstore.store import layout
from featstore.store.writer import SplitWriter, StoreFile, synthetic_attrs


def make_listing(tmp_path, n: int, size_shift: int = 0) -> ImageListing:
    items = [(f"train/c{i % 3}/img_{i:05d}.jpg", i % 3) for i in range(n)]
    sizes = [100 + i + (size_shift if i % 2 else 0) for i in range(n)]
    return ImageListing(tmp_path / "data", "train", ["c0", "c1", "c2"], items, 0, [], sizes, [10**18] * n)


def split_attrs(lst: ImageListing) -> dict:
    return {
        "class_names": lst.class_names,
        "source_root": str(lst.root),
        "n_images": len(lst.items),
        "n_ignored": 0,
        "listing_sha256": lst.digest(),
        "batch_size": 64,
        "compression": "none",
        "jit": False,
        "engine": "local",
    }


def start_split(path, lst: ImageListing) -> None:
    w = SplitWriter(StoreFile(path), ["pooled"], "train")
    w.prepare([synthetic_attrs((4,), "float32")], split_attrs(lst), False, lst)


def bounded_reads(monkeypatch, rows: int) -> list[int]:
    """Recorded listing paths may only be read ``rows`` at a time; returns the sizes read."""
    monkeypatch.setattr(listing_diff, "BLOCK", rows)
    seen, real = [], layout.read_paths

    def read(ds, stop, start=0):
        if ds.name.endswith("/listing/paths"):
            seen.append(stop - start)
            assert stop - start <= rows, f"read {stop - start} listing rows at once (block {rows})"
        return real(ds, stop, start)

    monkeypatch.setattr(layout, "read_paths", read)
    return seen


def test_a_changed_listing_is_read_in_blocks_and_summarised(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    start_split(path, make_listing(tmp_path, 2000))
    seen = bounded_reads(monkeypatch, 128)
    monkeypatch.setattr(listing_diff, "SHOWN", 10)
    changed = make_listing(tmp_path, 2000, size_shift=1)  # every other file another size
    with pytest.raises(StoreError, match=r"0 added, 0 removed, 1000 changed \(first: train/c1/img_00001.jpg, "):
        start_split(path, changed)
    assert seen and max(seen) == 128
    with h5py.File(path, "r") as f:
        cols = layout.listing_columns(f["pooled"]["train"])
        d = changed.diff(cols)
        assert d.counts == (0, 0, 1000) and len(d.changed) == 10
        reordered = ImageListing(changed.root, "train", changed.class_names, changed.items[::-1], 0, [],
                                 changed.sizes[::-1], changed.mtimes_ns[::-1])  # fmt: skip
        d = reordered.diff(cols)  # matched on hashes, then checked in a second pass of blocks
        assert d.counts == (0, 0, 1000) and d.changed[0] == "train/c1/img_01999.jpg"
        fewer = make_listing(tmp_path, 1500)
        assert fewer.diff(cols).counts == (0, 500, 0)
        assert layout.stored_listing(f["pooled"]["train"])[1] == ("train/c1/img_00001.jpg", 1, 101, 10**18)


def test_a_crafted_listing_length_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    lst = make_listing(tmp_path, 50)
    start_split(path, lst)
    with h5py.File(path, "a") as f:
        lg = f["pooled"]["train"]["listing"]
        for key in layout.LISTING:
            old = lg[key][:]
            del lg[key]
            lg.create_dataset(key, data=np.concatenate([old, old[:1]]))  # one row more than n_images
    monkeypatch.setattr(layout, "read_paths", lambda *a: pytest.fail("the listing was read"))
    with pytest.raises(StoreError, match=r"/listing records 51 images but the split has n_images 50: the store is dam"):
        start_split(path, lst)
    with h5py.File(path, "a") as f:  # an absurd length: 10⁹ rows (never written) and n_images to match
        sg = f["pooled"]["train"]
        del sg["listing"]
        lg = sg.create_group("listing")
        lg.create_dataset("paths", shape=(10**9,), dtype=layout.STR, chunks=(4096,))
        for key in layout.LISTING[1:]:
            lg.create_dataset(key, shape=(10**9,), dtype="int64", chunks=(4096,))
        sg.attrs["n_images"] = 10**9
    with pytest.raises(StoreError, match=r"records 1000000000 images but .* and the file \d+ bytes: the store is dam"):
        start_split(path, lst)


def test_two_paths_sharing_the_first_hash_are_told_apart(tmp_path, monkeypatch):
    real = listing_diff._hashes
    by_position = lambda paths: (np.arange(len(paths), dtype=np.int64), real(paths)[1])  # noqa: E731
    monkeypatch.setattr(listing_diff, "_hashes", by_position)
    old = listing_diff.ListingColumns.of([("t/x/a.jpg", 0, 1, 2), ("t/x/b.jpg", 0, 1, 2)])
    new = ImageListing(tmp_path, "t", ["x"], [("t/x/c.jpg", 0), ("t/x/b.jpg", 0)][::-1], 0, [], [1, 1], [2, 2])
    d = new.diff(old)  # reordered: matched on the first hash, which pairs other paths here; the second tells
    assert (d.added, d.removed, d.changed) == (["t/x/c.jpg"], ["t/x/a.jpg"], [])
