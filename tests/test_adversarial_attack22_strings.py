"""Attack 22 findings 10 and 14 (issue #19). 10: the per-string bounds on a store's attributes held for variable-length
strings only: a fixed-width 10 MB ``preprocess_description`` was printed whole by ``info`` (``check``: OK), two 8 MB
fixed-width class names were recorded by ``fit``, and a compound holding a variable-length string (16 bytes stored)
was read whole. 14: an attribute whose name is not UTF-8 (h5py lists it as bytes) made info and check an
AttributeError traceback. Synthetic stores (write_arrays); each test failed before its fix."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import FeatureStore
from featstore.errors import StoreError
from featstore.store.attr_values import MAX_ATTR_BYTES, MAX_NAME_BYTES, MAX_NAMES, bounded_attrs, read_names
from featstore.store.check import check_store
from featstore.store.writer import synthetic_attrs, write_arrays


def _store(tmp_path, attrs=None) -> Path:
    path = tmp_path / "s.h5"
    write_arrays(path, "syn", "train", np.ones((10, 4), np.float32), np.arange(10) % 2, ["a", "b"], attrs=attrs)
    return path


def _refused(path: Path, match: str, load: bool = True) -> None:
    """``path`` refused in one line matching ``match`` by load (which reads a split's attributes it needs only) and by
    check; info keeps the line under "error"."""
    if load:
        with pytest.raises(StoreError, match=match) as err:
            FeatureStore(path).load("train", "syn")
        assert "\n" not in str(err.value) and len(str(err.value)) < 600
    try:  # a split's other attributes are read outside check's per-split try: the command's one error line
        problems = check_store(path)
    except StoreError as exc:
        problems = [str(exc)]
        assert "\n" not in problems[0]
    assert any(re.search(match, p) for p in problems), problems
    assert all(len(p) < 600 for p in problems)
    entry = FeatureStore(path).info()["extractors"]["syn"]
    errors = [entry.get("error", "")] + [s.get("error", "") for s in entry["splits"].values()]
    assert any(re.search(match, e) for e in errors), entry


def _relabel(g, key: str, value, dtype=None) -> None:
    """Attribute ``key`` of ``g`` replaced by ``value`` (in a file whose attributes may be large: dense storage)."""
    del g.attrs[key]
    g.attrs.create(key, value, dtype=dtype)


def test_a_long_fixed_width_string_attribute_is_refused_unread(tmp_path):
    """Finding 10: a fixed-width description over MAX_ATTR_BYTES is refused from its type's width, before the read."""
    with h5py.File(tmp_path / "d.h5", "w", libver="latest") as f:  # dense attributes: one over 64 KiB
        f.create_group("syn").attrs["preprocess"] = np.bytes_(b"x" * (MAX_ATTR_BYTES + 1))
        with pytest.raises(StoreError, match=f"preprocess holds fixed-width strings of {MAX_ATTR_BYTES + 1:,} bytes"):
            bounded_attrs(f["syn"], "d.h5:/syn")


def test_a_long_fixed_width_class_name_is_refused_unread(tmp_path):
    """Finding 10: class names as fixed-width strings wider than MAX_NAME_BYTES (fit recorded two 8 MB names)."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        names = np.array([b"c" * (MAX_NAME_BYTES + 1), b"d"], dtype=f"S{MAX_NAME_BYTES + 1}")
        _relabel(f["syn/train"], "class_names", names)
    _refused(path, rf"class_names holds fixed-width strings of {MAX_NAME_BYTES + 1:,} bytes")


def test_short_fixed_width_strings_are_still_read(tmp_path):
    """Within the bounds a fixed-width string attribute reads as before (featstore never writes one, but h5py's
    ``np.bytes_`` does): the bound is on the width, not on the kind."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        _relabel(f["syn/train"], "class_names", np.array([b"a", b"b"], dtype="S1"))
    assert FeatureStore(path).load("train", "syn")[0].shape == (10, 4)


def test_fixed_width_names_are_counted_against_max_names(tmp_path):
    """Finding 10: MAX_NAMES + 1 one-byte fixed-width names (1 MiB stored, under the storage bound) are refused."""
    with h5py.File(tmp_path / "n.h5", "w", libver="latest") as f:
        f.attrs.create("class_names", np.zeros(MAX_NAMES + 1, "S1"))
        with pytest.raises(StoreError, match=f"class_names holds {MAX_NAMES + 1:,} strings, over the"):
            read_names(f, "class_names", "n.h5:/")


def _compound_vlen(g, key):
    dt = np.dtype([("s", h5py.string_dtype())])
    value = np.empty((), dt)
    value["s"] = "y" * 100
    _relabel(g, key, value, dt)


def _reference(g, key):
    _relabel(g, key, g.ref, h5py.ref_dtype)


def _vlen_ints(g, key):
    dt = h5py.vlen_dtype(np.int64)
    value = np.empty(1, dt)
    value[0] = np.arange(3)
    _relabel(g, key, value, dt)


def _opaque(g, key):
    _relabel(g, key, np.void(b"abcd"))


def _array_type(g, key):
    _relabel(g, key, np.zeros((), "(3,)i8"), np.dtype("(3,)i8"))


def _complex(g, key):
    _relabel(g, key, np.complex128(1j))


@pytest.mark.parametrize(
    "make, kind",
    [
        (_compound_vlen, "compound"),
        (_reference, "reference"),
        (_vlen_ints, "variable-length sequence"),
        (_opaque, "opaque"),
        (_array_type, "array"),
        (_complex, "complex"),
    ],
)
@pytest.mark.parametrize("where", ["syn", "syn/train"])
def test_an_attribute_type_featstore_never_writes_is_refused_unread(tmp_path, make, kind, where):
    """Finding 10: a compound holding a variable-length string stores 16 bytes, so it passed the storage bound and its
    10 MB string was read and printed whole; it, and every type featstore never writes, is refused from its type."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        make(f[where], "preprocess" if where == "syn" else "source_root")
    _refused(path, f"cannot be read: it is of HDF5 type {kind}, which featstore never writes", where == "syn")


def test_every_attribute_type_featstore_writes_is_read(tmp_path):
    """The refusal above spares a genuine store: strings, string lists (empty too), integers, integer lists, floats
    and booleans, on the file, an extractor and a split."""
    extra = {"notes": [], "tags": ["x", "y"], "ratio": 0.5, "flag": True, "sizes": [1, 2], "empty_text": ""}
    path = _store(tmp_path, {**synthetic_attrs((4,), "float32"), **extra})
    fs = FeatureStore(path)
    assert fs.load("train", "syn")[0].shape == (10, 4)
    assert check_store(path) == []
    meta = fs.metadata("syn")
    assert (meta["tags"], meta["ratio"], meta["flag"], meta["sizes"]) == (["x", "y"], 0.5, True, [1, 2])
    assert "error" not in fs.info()["extractors"]["syn"]


@pytest.mark.parametrize("where", ["syn", "syn/train"])
def test_an_attribute_name_that_is_not_utf8_is_one_line(tmp_path, where):
    """Finding 14: h5py lists such a name as bytes, and ``key.encode()`` raised AttributeError in info and check."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        a = h5py.h5a.create(f[where].id, b"note\xff", h5py.h5t.STD_I32LE, h5py.h5s.create(h5py.h5s.SCALAR))
        a.write(np.array(1, np.int32))
    _refused(
        path, r"'note\\udcff' is an attribute name that is not UTF-8, which featstore never writes", where == "syn"
    )


def test_check_lists_a_split_attribute_it_cannot_read_and_goes_on(tmp_path):
    """A split attribute of a type featstore never writes was raised out of ``check_store`` (its read sat outside the
    per-split ``try``), ending the check at that split; it is now one listed problem, and the other split is still
    checked (its class names shown cut). Sabotage: ``bounded_attrs`` moved back out of the ``try`` fails it."""
    path = tmp_path / "s.h5"
    for split in ("train", "test"):
        write_arrays(path, "x", split, np.ones((4, 2), np.float32), [0, 1, 0, 1], ["a", "b"])
    with h5py.File(path, "a") as f:
        f["x/train"].attrs["note"] = np.zeros(2, dtype=[("a", "i4"), ("b", "f4")])  # compound
    problems = check_store(path)
    assert len(problems) == 1 and "/x/train" in problems[0] and "compound" in problems[0], problems
