"""Attack 32 #3: a store rewritten with HDF5's shared object header messages on (``h5repack -s 8``: alike datatypes,
dataspaces and, with HDF5 1.14, whole attribute messages kept once in the file's shared message table) was refused
as "crafted or damaged" by every command. ``store.attr_shared`` now finds each shared message as HDF5 does. Stores
are synthetic (``writer.write_arrays``); the shared copies are made by HDF5 itself (h5py's library with
``H5Pset_shared_mesg_index``, which h5py does not wrap, called through ctypes) and by h5repack where installed."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from featstore.store import attr_ids
from featstore.store.check import check_store
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack18_store import _store

DTYPE, DSPACE, ATTR = 0x08, 0x02, 0x1000  # H5O_SHMESG_*_FLAG


def _hdf5():
    """The HDF5 library h5py loaded (its wheel's or the system's), for what h5py does not wrap."""
    with open("/proc/self/maps") as maps:
        found = {line.split()[-1] for line in maps if "/libhdf5" in line and "hl" not in line.rsplit("/", 1)[-1]}
    if len(found) != 1:
        pytest.skip(f"h5py's HDF5 library not found once among the loaded ones ({sorted(found)})")
    return ctypes.CDLL(found.pop())


def _shared_copy(src, dst, flags):
    """``src`` copied by HDF5 (H5Ocopy of each object, the root's attributes one by one) into a new file whose shared
    message table keeps messages of ``flags`` of 8 bytes and more, as ``h5repack -s 8`` makes it."""
    hdf, fcpl = _hdf5(), h5py.h5p.create(h5py.h5p.FILE_CREATE)
    hid = ctypes.c_int64(fcpl.id)
    assert hdf.H5Pset_shared_mesg_nindexes(hid, ctypes.c_uint(1)) >= 0
    assert hdf.H5Pset_shared_mesg_index(hid, ctypes.c_uint(0), ctypes.c_uint(flags), ctypes.c_uint(8)) >= 0
    with h5py.File(src, "r") as s, h5py.File(h5py.h5f.create(str(dst).encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl)) as d:
        for name in s:
            s.copy(s[name], d, name)
        for key in s.attrs:
            d.attrs.create(key, s.attrs[key], dtype=s.attrs.get_id(key).dtype)
    return dst


def _spy(monkeypatch, name):
    """The message types (or heap IDs) ``attr_ids.<name>`` is called for: what shows the store's messages shared."""
    calls, real = [], getattr(attr_ids, name)
    monkeypatch.setattr(
        attr_ids, name, lambda fh, raw, kind, messages: calls.append(kind) or real(fh, raw, kind, messages)
    )
    return calls


def _reads_like(path, original):
    fs, was = FeatureStore(path), FeatureStore(original)
    assert fs.paths("test") == was.paths("test")
    X, y = fs.load("test")[:2]
    X0, y0 = was.load("test")[:2]
    assert np.array_equal(X, X0) and np.array_equal(y, y0)
    assert check_store(path) == []
    result = cli("info", path)
    assert result.exit_code == 0 and "syn" in result.output, no_traceback(result)


@pytest.mark.parametrize("flags", [DTYPE | DSPACE, DTYPE | DSPACE | ATTR], ids=["types", "types-and-attributes"])
def test_a_store_with_shared_messages_is_read(tmp_path, monkeypatch, flags):
    original = _store(tmp_path / "s.h5")
    path = _shared_copy(original, tmp_path / "shared.h5", flags)
    calls = _spy(monkeypatch, "shared_body")
    _reads_like(path, original)
    assert set(calls) == ({0x01, 0x03, 0x0C} if flags & ATTR else {0x01, 0x03}), set(calls)  # dataspace, type, message


def test_a_dense_attribute_index_of_shared_messages_is_read(tmp_path, monkeypatch):
    """A split of 1,500 classes keeps its attributes dense (a v2 B-tree and a fractal heap); with attribute messages
    shared, the index's records name messages in the shared heap."""
    original = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    names = [f"class_{i:04d}_" + "x" * 40 for i in range(1500)]
    for split in ("train", "test"):
        write_arrays(original, "syn", split, rng.normal(size=(30, 4)).astype("f4"), np.arange(30) % 1500, names)
    path = _shared_copy(original, tmp_path / "shared.h5", DTYPE | DSPACE | ATTR)
    calls = _spy(monkeypatch, "shared_place")
    _reads_like(path, original)
    assert FeatureStore(path).class_names() == names
    assert calls and set(calls) == {0x0C}  # the dense index's records name shared attribute messages


@pytest.mark.skipif(shutil.which("h5repack") is None, reason="h5repack (hdf5-tools) is not installed")
def test_a_store_rewritten_by_h5repack_s8_is_read(tmp_path):
    original = _store(tmp_path / "s.h5")
    path = tmp_path / "shared.h5"
    subprocess.run(["h5repack", "-s", "8", str(original), str(path)], check=True)
    _reads_like(path, original)


def test_an_attribute_of_a_committed_string_type_is_still_refused_in_one_line(tmp_path):
    """A string attribute whose type is a committed (named) datatype, which featstore never writes: refused unread,
    naming it, as before (only the shared message table's messages are read)."""
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        f["named"] = h5py.string_dtype()
        value = f.attrs["featstore_version"]
        del f.attrs["featstore_version"]
        f.attrs.create("featstore_version", value, dtype=f["named"])
    result = cli("info", path)
    out = no_traceback(result)
    assert result.exit_code != 0 and "featstore_version" in out and "committed" in out, out
