"""Attack 26 #3, #5 and #8: featstore's own walk of an object's attributes (header and dense name index) bounded.

#5: one B-tree leaf of 3,841 records naming a split's class_names message was read 3,841 times (3.6 GB in ``info``).
#8: an internal node whose children all repeat one leaf made the walk (and HDF5's listing) take minutes on 2 MB.
#3: a store open for writing walked an object's header once per string attribute (3,000: 30 s, quadratic).
The crafted stores are the reproducers', smaller (1,500 classes: the split's attributes in dense storage).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store import attr_dense, attr_ids
from featstore.store.attr_dense import Heap, _lookup3, dense_place, message_name
from featstore.store.attr_values import MAX_ATTRS, bounded_attrs, read_names
from featstore.store.check import check_store
from featstore.store.writer import write_arrays

NODE = 1 << 16
MOST = (NODE - 10) // 17  # records of a 64 KiB leaf


def _store(path, k: int = 1500):
    write_arrays(path, "s", "train", np.zeros((k, 2), np.float32), np.arange(k), [f"class {i}" for i in range(k)])
    return path


def _index(path):
    """(name index header address, its real records, a reader of a record's message name)."""
    with h5py.File(path, "r") as f:
        fh = attr_ids.FileBytes(f)
        obj = h5py.h5g.get_objinfo(f["s/train"].id).objno[0]
        heap_at, hd = next(dense_place(b, fh) for k, b in attr_ids._messages(fh, obj) if k == 0x15)
        heap = Heap(fh, heap_at)
        data = Path(path).read_bytes()
        root, n = (int.from_bytes(data[hd + a : hd + b], "little") for a, b in ((16, 24), (24, 26)))
        recs = [data[root + 6 + 17 * j : root + 6 + 17 * (j + 1)] for j in range(n)]
        names = [message_name(fh.read(*heap.locate(r[:8]))) for r in recs]
    return hd, recs, names


def _rewrite(path, hd: int, leaf: list[bytes], m: int = 0, total: int | None = None) -> None:
    """The name index at ``hd`` made one 64 KiB leaf of ``leaf`` records (with ``m``: an internal root of ``m``
    separators whose ``m + 1`` children are all that leaf), the header counting ``total`` (default: what it holds),
    every checksum as HDF5 verifies it (the reproducers' technique)."""
    data = bytearray(Path(path).read_bytes())
    body = b"BTLF\x00\x08" + b"".join(leaf)
    leaf_at, root_at = len(data), len(data)
    data += (body + _lookup3(body).to_bytes(4, "little")).ljust(NODE, b"\0")
    if m:
        root_at = len(data)
        child = leaf_at.to_bytes(8, "little") + len(leaf).to_bytes(2, "little")
        inner = b"BTIN\x00\x08" + leaf[-1] * m + child * (m + 1)
        data += (inner + _lookup3(inner).to_bytes(4, "little")).ljust(NODE, b"\0")
    data[hd + 6 : hd + 10] = NODE.to_bytes(4, "little")
    data[hd + 12 : hd + 14] = (1 if m else 0).to_bytes(2, "little")
    data[hd + 16 : hd + 24] = root_at.to_bytes(8, "little")
    data[hd + 24 : hd + 26] = (m or len(leaf)).to_bytes(2, "little")
    count = m + (m + 1) * len(leaf) if m else len(leaf)
    data[hd + 26 : hd + 34] = (count if total is None else total).to_bytes(8, "little")
    data[hd + 34 : hd + 38] = _lookup3(bytes(data[hd : hd + 34])).to_bytes(4, "little")
    data[28:36] = len(data).to_bytes(8, "little")  # superblock v2: end of file, checksum
    data[44:48] = _lookup3(bytes(data[:44])).to_bytes(4, "little")
    Path(path).write_bytes(bytes(data))


def _bytes_read(monkeypatch) -> list[int]:
    sizes, real = [], attr_dense.FileBytes.read

    def spy(self, at, n, most=False):
        sizes.append(n)
        return real(self, at, n, most)

    monkeypatch.setattr(attr_dense.FileBytes, "read", spy)
    return sizes


def _copies(path, variants: bool) -> int:
    """#5: class_names' record repeated to fill the leaf; ``variants``: each copy's heap ID differs in its first byte's
    reserved bits (one message, distinct IDs). The message's size is returned."""
    hd, recs, names = _index(path)
    i = names.index(b"class_names")
    copies = [bytes([recs[i][0] | (j % 16 if variants else 0)]) + recs[i][1:] for j in range(MOST - len(recs) + 1)]
    _rewrite(path, hd, recs[:i] + copies + recs[i + 1 :])
    with h5py.File(path, "r") as f:
        return h5py.h5a.open(f["s/train"].id, b"class_names").get_storage_size()


@pytest.mark.parametrize("variants", [False, True])
def test_records_naming_one_message_read_it_once_then_refused(tmp_path, monkeypatch, variants):
    """#5: 3,841 records naming class_names read it 3,841 times (here 24 KB each: 92 MB): a repeated heap ID is refused
    at once; distinct IDs of one message, at the second (read once); one line from check."""
    path = _store(tmp_path / "s.h5")
    size = _copies(path, variants)
    sizes = _bytes_read(monkeypatch)
    why = "2 or more attribute messages of that name" if variants else "two records of its attribute index name one"
    with h5py.File(path, "r") as f, pytest.raises(StoreError, match=why) as got:
        read_names(f["s/train"], "class_names", "w")
    assert "\n" not in str(got.value) and sum(sizes) < 2 * size + 3 * NODE, (sum(sizes), size)
    problems = check_store(path)
    assert len(problems) == 1 and why in problems[0], problems


def test_an_index_reaching_one_leaf_twice_is_refused_before_hdf5_lists_it(tmp_path, monkeypatch):
    """#8: an internal root whose children all repeat one leaf (HDF5's listing walks it M times): refused in one line
    before HDF5 lists the attributes, the leaf read once."""
    path = _store(tmp_path / "s.h5")
    hd, recs, _ = _index(path)
    _rewrite(path, hd, recs, m=3)
    listed, real = [], h5py.AttributeManager.__iter__
    monkeypatch.setattr(h5py.AttributeManager, "__iter__", lambda self: listed.append(1) or real(self))
    sizes = _bytes_read(monkeypatch)
    with h5py.File(path, "r") as f, pytest.raises(StoreError, match="reaches its node at .* twice") as got:
        bounded_attrs(f["s/train"], "w")
    assert "\n" not in str(got.value) and not listed and sizes.count(NODE) == 2, sizes  # the root, the leaf once
    problems = check_store(path)
    assert len(problems) == 1 and "s/train: its attributes cannot be counted" in problems[0], problems


@pytest.mark.parametrize("total", [13, 15, 10**9])
def test_an_index_whose_header_miscounts_its_records_is_refused(tmp_path, total):
    """#8: the header's total is what bounds the walk: fewer records than the tree holds, more, or more than the file
    can hold, each refused in one line."""
    path = _store(tmp_path / "s.h5")
    hd, recs, _ = _index(path)
    assert len(recs) == 14
    _rewrite(path, hd, recs, total=total)
    why = {13: "more records than its header's 13", 15: "holds 14 records where its header counts 15"}
    with h5py.File(path, "r") as f, pytest.raises(StoreError, match=why.get(total, "more than the file holds")):
        bounded_attrs(f["s/train"], "w")


@pytest.mark.parametrize("libver", ["earliest", "latest"])  # compact in the header; dense
def test_an_object_with_more_attributes_than_featstore_writes_is_refused_unread(tmp_path, monkeypatch, libver):
    """#3, #8: over MAX_ATTRS attributes (3,000 made an extract quadratic; HDF5 lists every one) refused unread."""
    path = tmp_path / "many.h5"
    with h5py.File(path, "w", libver=libver) as f:
        for i in range(MAX_ATTRS + 1):
            f.require_group("g").attrs[f"a{i}"] = i
    with h5py.File(path, "r") as f, pytest.raises(StoreError, match=f"holds {MAX_ATTRS + 1} attributes where"):
        bounded_attrs(f["g"], "w")
    with h5py.File(path, "a") as f:
        del f["g"].attrs["a0"]
        assert len(bounded_attrs(f["g"], "w")) == MAX_ATTRS


def test_a_writable_objects_header_is_walked_once_for_all_its_attributes(tmp_path, monkeypatch):
    """#3: a file open for writing walked the header once per string attribute (N x N); once per bounded_attrs now,
    and a write between two readings is seen."""
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        for i in range(200):
            f.require_group("g").attrs[f"a{i}"] = np.array(["z", "q" * (i % 13)], dtype=h5py.string_dtype())
    walks, real = [], attr_ids._messages
    monkeypatch.setattr(attr_ids, "_messages", lambda fh, address: walks.append(address) or real(fh, address))
    with h5py.File(path, "a") as f:
        got = bounded_attrs(f["g"], "w")
        assert len(got) == 200 and got["a14"] == ["z", "q"] and len(walks) == 1, len(walks)
        f["g"].attrs["a14"] = np.array(["y", "x"], dtype=h5py.string_dtype())
        assert bounded_attrs(f["g"], "w")["a14"] == ["y", "x"] and len(walks) == 2


@pytest.mark.parametrize("k", [1, 1500, 21841])
def test_genuine_stores_read_as_before(tmp_path, k):
    """Compact (1 class) and dense (1,500, 21,841) attributes: every attribute as HDF5 reads it, check finds nothing."""
    path = _store(tmp_path / "s.h5", k)
    with h5py.File(path, "r") as f:
        for obj in (f, f["s"], f["s/train"]):
            got = bounded_attrs(obj, "w")
            assert set(got) == set(obj.attrs) and len(got) <= 14
        assert read_names(f["s/train"], "class_names", "w") == [f"class {i}" for i in range(k)]
    assert check_store(path) == []


def test_a_resumes_compaction_counts_attributes_before_hdf5_lists_them(tmp_path):
    """The compaction copies every attribute of the root, each extractor and split: its listing went unguarded (a
    crafted index listed for minutes). Sabotage: the ``refuse_many_attrs`` call in ``compact._copy_attrs`` removed
    fails it (the copy starts, and HDF5 lists them all)."""
    from featstore.store.compact import compact
    from featstore.store.writer import synthetic_attrs

    path = tmp_path / "s.h5"
    write_arrays(path, "s", "train", np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]), ["a", "b"],
                 attrs=synthetic_attrs((2,)))  # fmt: skip
    with h5py.File(path, "a") as f:
        for i in range(MAX_ATTRS + 1):
            f["s"].attrs[f"extra{i}"] = i
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"attributes where featstore writes at most {MAX_ATTRS}"):
        compact(path)
    assert path.read_bytes() == before


def test_a_root_over_the_attribute_limit_is_refused_by_writers_and_readers_as_info_refuses_it(
    data_root, tiny_config, tmp_path
):
    """Attack 27 #10: a root holding over MAX_ATTRS attributes was refused by info and check, yet `extract
    --overwrite` wrote hours into it and export read it. Now the writer's check_root and the reader count the root's
    too, before an image is read. Sabotage: the refuse_many_attrs line in layout.check_root (or reader.refresh)
    removed fails it (the extract writes; the store opens)."""
    from featstore import extract
    from featstore.store.reader import FeatureStore

    store = tmp_path / "s.h5"
    extract(data_root, "train", store, tiny_config, batch_size=4)
    with h5py.File(store, "a") as f:
        for i in range(MAX_ATTRS + 1):
            f.attrs[f"extra{i}"] = i
    before = store.read_bytes()
    many = f"s.h5:/: holds {MAX_ATTRS + 3} attributes where featstore writes at most {MAX_ATTRS}"
    with pytest.raises(StoreError, match=many):
        extract(data_root, "train", store, tiny_config, batch_size=4, overwrite=True)
    with pytest.raises(StoreError, match=many):
        extract(data_root, "validation", store, tiny_config, batch_size=4)
    with pytest.raises(StoreError, match=many):
        FeatureStore(store)  # what export, fit and info open
    with pytest.raises(StoreError, match=many):
        write_arrays(store, "s", "extra", np.zeros((2, 2), np.float32), np.array([0, 1]), ["a", "b"])
    assert store.read_bytes() == before
