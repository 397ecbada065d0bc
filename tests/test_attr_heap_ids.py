"""Attack 23 finding 1 (issue #19, inputs bounded): a string attribute's K heap IDs naming one long string were expanded
by HDF5 (K x the string: 3,000 IDs of one 2 MiB string in a 3.6 MB store, 5.7 GB) before any length was measured.
Their lengths are now read from the heap IDs in the file's bytes (``store.attr_ids``), in both layouts featstore
writes (compact: the object header; dense: libver v108's fractal heap), and refused before HDF5 reads a string.
Synthetic stores (write_arrays)."""

from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store import attr_ids, attr_values
from featstore.store.attr_dense import dense_place
from featstore.store.attr_values import MAX_ATTR_BYTES, MAX_NAME_BYTES, bounded_attrs, raw_attr, read_names
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack4 import cli, no_traceback


def _store(path, n_classes: int, names: list[str] | None = None):
    """A complete split ``s/train`` of ``n_classes`` classes (one row each); over 1,000 classes: dense attributes."""
    names = names or [f"class {i}" for i in range(n_classes)]
    X = np.zeros((len(names), 2), np.float32)
    write_arrays(path, "s", "train", X, np.arange(len(names)), names)
    return path


def _dense(path, group: str) -> bool:
    """Whether ``group``'s attributes are in dense storage (an Attribute Info message naming a fractal heap)."""
    with h5py.File(path, "r") as f:
        fh = attr_ids.FileBytes(f)
        address = h5py.h5g.get_objinfo(f[group].id).objno[0]
        return any(kind == 0x15 and dense_place(body, fh) for kind, body in attr_ids._messages(fh, address))


def _share_first(path, group: str, key: str, k: int, big: int) -> None:
    """``group``'s attribute ``key`` rewritten as k strings, then every heap ID made the first's (a string of ``big``
    bytes): k IDs naming one string, as the attack's store."""
    with h5py.File(path, "a") as f:
        f[group].attrs[key] = np.array(["x" * big] + [f"c{i}" for i in range(1, k)], dtype=h5py.string_dtype())
    data = bytearray(path.read_bytes())
    i, pattern, done = 0, struct.pack("<I", big), 0
    while (i := data.find(pattern, i)) >= 0:
        after = struct.unpack("<IQ4xIQ", data[i + 16 : i + 44])  # "c1", "c2": in one heap collection
        if after[0] == after[2] == 2 and after[1] == after[3]:
            data[i : i + 16 * k] = bytes(data[i : i + 16]) * k
            done += 1
        i += 4
    assert done == 1
    path.write_bytes(bytes(data))


CASES = {  # layout: (classes of the store (over 1,000: v108, dense attributes), group, key)
    "compact split class_names": (3, "s/train", "class_names"),
    "dense split class_names": (1500, "s/train", "class_names"),
    "compact extractor attribute": (3, "s", "notes"),
    "dense extractor attribute": (1500, "s", "notes"),
    "root attribute": (3, "/", "notes"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("long", [True, False], ids=["one string over its limit", "strings adding up past the file"])
def test_heap_ids_sharing_one_string_are_refused_before_hdf5_reads_one(tmp_path, monkeypatch, case, long):
    """K heap IDs naming one string: over its limit (its start shown), or within it but K times more than the file
    holds; refused in one line, in either layout, and HDF5 never asked to read (expand) the attribute."""
    n_classes, group, key = CASES[case]
    path = _store(tmp_path / "s.h5", n_classes)
    limit = MAX_NAME_BYTES if key == "class_names" else MAX_ATTR_BYTES
    # 300 IDs (4,800 bytes): a huge object of the dense heap, stored unchecksummed, so the bytes can be changed in place
    big, k = (limit + 1, 300) if long else (limit, max(300, path.stat().st_size // limit + 40))
    _share_first(path, group, key, k, big)
    assert _dense(path, group) == (n_classes > 1000 and group != "/")
    real = attr_values._read

    def spy(obj, name, where):  # HDF5 expanding the shared IDs: the bound came too late
        assert name != key, f"{key} read (expanded) before it was measured"
        return real(obj, name, where)

    monkeypatch.setattr(attr_values, "_read", spy)
    readers = {  # what info/check read it with; what compaction (every resume) copies it with (64 KiB a string: a
        # 4,097-byte class name is copied, the 300 adding up to less than the file)
        "read": lambda obj: read_names(obj, key, "w", limit) if key == "class_names" else bounded_attrs(obj, "w"),
        "copy": lambda obj: raw_attr(obj, key, "w"),
    }
    for reader, read in readers.items():
        if reader == "copy" and long and limit != MAX_ATTR_BYTES:
            continue
        with h5py.File(path, "r") as f, pytest.raises(StoreError) as err:
            read(f[group])
        said = str(err.value)
        if long:
            assert f"{key}[0] is a string of {big:,} bytes, over the {limit:,}-byte limit ('xxxx" in said, said
        else:
            assert f"{key} adds up to {k * big:,} bytes of strings in a file of" in said, (reader, said)
        assert "the store is crafted or damaged" in said and len(said) < 400 and "\n" not in said


def test_the_attacks_store_is_one_line_from_info_and_check(tmp_path):
    """The attack's store, smaller (it had 3,000 IDs of one 2 MiB string, 5.7 GB and 7-10 s each in info and check;
    here 300 of 256 KiB, 75 MiB if expanded): one line each, the split named."""
    path = _store(tmp_path / "s.h5", 3)
    _share_first(path, "s/train", "class_names", 300, 256 << 10)
    for args in (("info", path), ("check", path)):
        out = no_traceback(cli(*args))
        assert "s/train: class_names[0] is a string of 262,144 bytes, over the 4,096-byte limit" in out, out[-2000:]
        assert len(out) < 3000


@pytest.mark.parametrize("n_classes", [1, 2, 1500, 21841])
def test_genuine_class_names_read_exactly_as_before(tmp_path, monkeypatch, n_classes):
    """Genuine stores (1 class; 2; 1,500 and 21,841: dense attributes) with unicode names: the names read back equal
    what was written, and were measured from their heap IDs first."""
    names = [f"clé {i} 日本" * (1 + i % 4) for i in range(n_classes)]
    path = _store(tmp_path / "s.h5", n_classes, names)
    measured, real = [], attr_ids.heap_ids

    def spy(obj, key, shape, stored):
        measured.append(real(obj, key, shape, stored))
        return measured[-1]

    monkeypatch.setattr(attr_values, "heap_ids", spy)
    with h5py.File(path, "r") as f:
        assert read_names(f["s/train"], "class_names", "w") == names
        assert bounded_attrs(f["s/train"], "w")["class_names"] == names
        assert bounded_attrs(f["s"], "w") and bounded_attrs(f, "w")
    # one name too: its heap collection is walked before HDF5 walks it (gheap: a damaged one made HDF5 loop forever)
    assert attr_ids.lengths(measured[0]).tolist() == [len(n.encode()) for n in names]


def test_a_parse_that_disagrees_with_hdf5_is_refused(tmp_path):
    """What the file's bytes show is checked against what HDF5 opened: another shape, another size, another name, an
    attribute not there is Unparsed, never a guess; and read_names says so in one line."""
    path = _store(tmp_path / "s.h5", 3)
    with h5py.File(path, "r") as f:
        sg = f["s/train"]
        assert attr_ids.lengths(attr_ids.heap_ids(sg, "class_names", (3,), 48)).tolist() == [7, 7, 7]
        for shape, stored, key in [((4,), 64, "class_names"), ((3,), 40, "class_names"), ((3,), 48, "nothing")]:
            with pytest.raises(attr_ids.Unparsed):
                attr_ids.heap_ids(sg, key, shape, stored)


def test_a_store_being_written_is_measured_after_its_changes_are_flushed(tmp_path):
    """A writer reads back what it just set (HDF5's cache, not yet in the file): flushed first, then measured."""
    path = _store(tmp_path / "s.h5", 3)
    with h5py.File(path, "a") as f:
        f["s/train"].attrs["class_names"] = np.array(["a", "bé", "c", "d"], dtype=h5py.string_dtype())
        assert read_names(f["s/train"], "class_names", "w") == ["a", "bé", "c", "d"]  # the file held 3 names


def test_another_hdf5_driver_is_refused_naming_it(tmp_path):
    """The file's bytes are read with os.pread on HDF5's own descriptor: with another driver (HDF5_DRIVER) the strings
    cannot be measured first, so they are refused, naming the driver and the fix."""
    path = _store(tmp_path / "s.h5", 3)
    with h5py.File(path, "r", driver="core") as f, pytest.raises(StoreError, match="'core' driver.*unset HDF5_DRIVER"):
        read_names(f["s/train"], "class_names", "w")


def test_an_objects_header_is_walked_once_for_all_its_attributes(tmp_path, monkeypatch):
    """bounded_attrs looks up each attribute of an object: its header, walked for each, made N attributes cost N walks
    of a header holding N (3,000: minutes); it is kept for the opening (a read-only file), so walked once."""
    path = tmp_path / "many.h5"
    with h5py.File(path, "w") as f:
        for i in range(200):
            f.require_group("g").attrs[f"a{i}"] = np.array(["z", "q" * (i % 13)], dtype=h5py.string_dtype())
    walks, real = [], attr_ids._messages

    def spy(fh, address):
        walks.append(address)
        return real(fh, address)

    monkeypatch.setattr(attr_ids, "_messages", spy)
    with h5py.File(path, "r") as f:
        got = bounded_attrs(f["g"], "w")
    assert len(got) == 200 and got["a14"] == ["z", "q"] and len(walks) == 1, len(walks)
