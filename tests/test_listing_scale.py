"""The listing's digest and diff at scale: the same digest as stores recorded before, computed once, any file name."""

import hashlib
import os
from pathlib import Path

import numpy as np

from featstore.images.listing import ImageListing, path_to_store
from featstore.images.listing_diff import ListingColumns, _diff_dicts


def listing(n: int) -> ImageListing:
    items = [(f"train/c{i % 7}/img_{i:06d}.jpg", i % 7) for i in range(n)]
    items[1] = ("train/c1/bad\udcff.png", 1)  # not UTF-8: its own byte
    items[2] = ("train/c2/été ☃.png", 2)  # UTF-8, more bytes than characters
    return ImageListing(
        Path("/data"),
        "train",
        [f"c{i}" for i in range(7)],
        items,
        0,
        [],
        list(range(n)),
        [10**18 + i for i in range(n)],
    )


def reference_digest(lst: ImageListing) -> str:
    """The digest as every store before recorded it, one row at a time."""
    h = hashlib.sha256()
    for path, label, size, mtime in lst.entries():
        raw = os.fsencode(path)
        h.update(f"{label}\t{size}\t{mtime}\t{len(raw)}\t".encode() + raw + b"\n")
    return h.hexdigest()


def test_digest_is_the_recorded_one_across_blocks_and_computed_once():
    lst = listing(70_000)  # more than one block of 65,536 rows
    assert lst.digest() == reference_digest(lst)
    assert lst._digest == lst.digest()
    assert ImageListing(Path("/d"), "train", ["a"], [], 0, [], [], []).digest() == hashlib.sha256().hexdigest()


def test_diff_reads_stored_bytes_and_numpy_numbers():
    lst = listing(1000)
    stored = [(path_to_store(p), np.int32(lab), np.int64(s), np.int64(m)) for p, lab, s, m in lst.entries()]
    assert not lst.diff(stored)
    stored[1] = (stored[1][0], np.int32(1), np.int64(5), np.int64(6))  # the non-UTF-8 file changed
    del stored[2]
    stored.append((b"train/c0/gone.jpg", 0, 1, 2))
    d = lst.diff(stored)
    assert (d.added, d.removed, d.changed) == (
        ["train/c2/été ☃.png"],
        ["train/c0/gone.jpg"],
        ["train/c1/bad\udcff.png"],
    )
    assert lst.diff([]).added[:1] == [lst.items[0][0]]


def test_vectorised_diff_agrees_with_the_row_by_row_one():
    lst = listing(5000)
    stored = [(path_to_store(p), lab, s, m) for p, lab, s, m in lst.entries()]
    rng = np.random.default_rng(0)
    for k in rng.choice(len(stored), 40, replace=False):
        stored[k] = (stored[k][0], stored[k][1], stored[k][2] + 1, stored[k][3])  # changed size
    stored = stored[:100] + stored[130:] + [(f"train/c3/old_{i}.jpg".encode(), 3, 1, 2) for i in range(20)]
    stored.reverse()  # another order: rows are matched by path, not position
    d = lst.diff(stored)
    new_nums = np.array([[lab for _, lab in lst.items], lst.sizes, lst.mtimes_ns], dtype=np.int64)
    ref = _diff_dicts([p for p, _ in lst.items], new_nums, ListingColumns.of(stored))
    assert (d.added, d.removed, d.changed) == (ref.added, ref.removed, ref.changed)
    assert len(d.added) == 30 and len(d.removed) == 20 and 30 <= len(d.changed) <= 40
    same = lst.diff([(p, lab, s, m) for p, lab, s, m in lst.entries()])  # same paths, same order: the short path
    assert not same
    twice = stored + stored[:1]  # a repeated stored path: the dictionaries' answer
    d2 = lst.diff(twice)
    assert (d2.added, d2.removed, d2.changed) == (d.added, d.removed, d.changed)
    empty = ImageListing(Path("/d"), "train", ["a"], [], 0, [], [], [])
    assert empty.diff(stored).removed[:1] == [os.fsdecode(stored[0][0])] and not empty.diff([])
