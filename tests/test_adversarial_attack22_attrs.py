"""Attack 22 findings 1 and 5 (issue #19): every attribute of a store is read through the measured readers of
``store.strings`` (a split's ``n_images``, ``complete`` and ``commit`` were read whole, unmeasured, and printed whole:
an 18 MB ``n_images`` made ``info`` take 27 s and print a 22-million-character line), and an attribute that stores 0
bytes (an empty list, a null dataspace) is read, not a RuntimeError traceback. Synthetic stores (write_arrays)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import FeatureStore
from featstore.errors import StoreError
from featstore.store.check import check_store
from featstore.store.compact import compact
from featstore.store.writer import synthetic_attrs, write_arrays

PACKAGE = Path(__file__).resolve().parents[1] / "featstore"
# (module, expression): reads through ``.attrs`` that are not a store's HDF5 attributes read unmeasured, with why
ALLOWED = {
    ("store/attr_values.py", "obj.attrs[key]"): "the measured reader itself (_read, after measured_attr)",
    ("provenance.py", "obj.attrs.items()"): "attrs_of: for tests and callers outside featstore; none inside (below)",
}
# (module, receiver): objects whose ``.attrs`` is a dict of provenance already read, not an HDF5 attribute manager
DICTS = {
    ("models/extractor.py", "self"): "Extractor.attrs, built from the model",
    ("models/finetuned.py", "self"): "the fine-tuned model's Extractor attrs",
    ("models/finetuned.py", "extractor"): "an Extractor",
    ("extraction/pipeline.py", "extractor"): "an Extractor",
    ("runs/apply.py", "ex"): "a StoreMetadata extractor entry, read through bounded_attrs",
}
NAMES_ONLY = {"map", "len", "list", "sorted", "set", "tuple", "iter", "enumerate"}  # these see attribute names only


def _attrs(node) -> ast.Attribute | None:
    """``node`` when it is an ``<x>.attrs`` expression."""
    return node if isinstance(node, ast.Attribute) and node.attr == "attrs" else None


def _attr_reads(tree: ast.AST):
    """(expression, its ``.attrs`` node) for each read of attribute values through ``.attrs`` in ``tree``:
    ``x.attrs[k]`` (not assigned or deleted), ``x.attrs.get/items/values(...)``, ``x.attrs`` passed to a function that
    may read values (not ``len``/``list``/``map``..., which see names), and ``y = x.attrs`` (an alias)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _attrs(node.value):
            yield node, node.value
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "items", "values") and _attrs(func.value):
                yield node, func.value
            if not (isinstance(func, ast.Name) and func.id in NAMES_ONLY):
                yield from ((a, a) for a in node.args if _attrs(a))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and _attrs(node.value):
            yield node.value, node.value


def test_no_module_reads_a_store_attribute_outside_the_measured_readers():
    """Finding 1, for the future: a new ``sg.attrs["x"]`` or ``attrs.get("x")`` anywhere in featstore (not a write, not
    ``in``, not iterating names) fails here, so every read goes through read_attr/read_names/bounded_attrs/raw_attr,
    which measure what an attribute stores before HDF5 reads it whole."""
    found, unexpected = set(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        source, module = path.read_text(), path.relative_to(PACKAGE).as_posix()
        for node, attrs in _attr_reads(ast.parse(source)):
            expr = ast.get_source_segment(source, node)
            if (module, ast.get_source_segment(source, attrs.value)) in DICTS:
                continue
            found.add((module, expr))
            if (module, expr) not in ALLOWED:
                unexpected.append(f"{module}:{node.lineno}: {expr}")
    assert not unexpected, "attributes read unmeasured (use store.attr_values.read_attr):\n" + "\n".join(unexpected)
    assert found == set(ALLOWED), "an allowed read is gone: drop it from ALLOWED"
    callers = [
        f"{p.name}:{n.lineno}"
        for p in PACKAGE.rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.Call) and "attrs_of" in (getattr(n.func, "id", ""), getattr(n.func, "attr", ""))
    ]
    assert not callers, f"provenance.attrs_of reads attributes unmeasured: {callers}"


def test_the_rule_sees_each_kind_of_direct_read():
    """The walker above finds the reads the attack named (so an empty result means something)."""
    code = (
        'n = sg.attrs["n_images"]\nc = sg.attrs.get("complete")\nfor k, v in g.attrs.items(): pass\nd = dict(g.attrs)\n'
        'a = g.attrs\nf(g.attrs)\nn = len(g.attrs)\nsg.attrs["commit"] = 1\ndel sg.attrs["x"]\nok = "commit" in sg.attrs\nfor k in g.attrs: pass\n'
    )
    lines = sorted({node.lineno for node, _ in _attr_reads(ast.parse(code))})
    assert lines == [1, 2, 3, 4, 5, 6]


def _store(tmp_path, attrs=None) -> Path:
    path = tmp_path / "s.h5"
    write_arrays(path, "syn", "train", np.ones((10, 4), np.float32), np.arange(10) % 2, ["a", "b"], attrs=attrs)
    return path


def test_an_empty_list_in_the_provenance_is_written_and_read_back(tmp_path):
    """Finding 5: ``write_arrays(..., attrs={..., "notes": []})`` wrote an attribute of 0 bytes, and h5py's
    get_storage_size raised RuntimeError for it: info, fit and check were tracebacks on a store featstore wrote."""
    path = _store(tmp_path, {**synthetic_attrs((4,), "float32"), "notes": []})
    fs = FeatureStore(path)
    assert fs.metadata("syn")["notes"] == []
    X, _ = fs.load("train", "syn")
    assert X.shape == (10, 4) and check_store(path) == []


@pytest.mark.parametrize("where", ["", "syn", "syn/train"])
def test_a_null_dataspace_attribute_is_read_where_featstore_reads_it(tmp_path, where):
    """An HDF5 null dataspace (h5py.Empty) at the root, the extractor or a split: read like any other attribute."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        f[where or "/"].attrs["notes"] = h5py.Empty("i8")
    fs = FeatureStore(path)
    assert fs.load("train", "syn")[0].shape == (10, 4) and "error" not in json.dumps(fs.info(), default=str)
    assert check_store(path) == []
    compact(path)  # the resume's copy measures each attribute too
    with h5py.File(path, "r") as f:
        assert isinstance(f[where or "/"].attrs["notes"], h5py.Empty)


def test_a_null_format_version_is_one_line(tmp_path):
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = h5py.Empty("i8")
    with pytest.raises(StoreError, match="format_version") as err:
        FeatureStore(path).load("train", "syn")
    assert "\n" not in str(err.value)


def _wide_int(g, key):
    t = h5py.h5t.STD_I64LE.copy()
    t.set_size(16)  # a 128-bit integer: numpy has no dtype for it
    h5py.h5a.create(g.id, key.encode(), t, h5py.h5s.create_simple((2,)))


def _vlen_opaque(g, key):
    h5py.h5a.create(
        g.id, key.encode(), h5py.h5t.vlen_create(h5py.h5t.create(h5py.h5t.OPAQUE, 3)), h5py.h5s.create_simple((2,))
    )


@pytest.mark.parametrize("make", [_wide_int, _vlen_opaque])
def test_an_attribute_h5py_cannot_open_or_read_is_one_line_naming_it(tmp_path, make):
    """Any h5py error while an attribute is measured or read (a type numpy cannot hold, a read h5py fails) is the
    one-line StoreError naming the store, the object and the attribute, not a TypeError/ValueError traceback."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        make(f["syn"], "crafted")
    with pytest.raises(StoreError, match=r"s\.h5:/syn attribute: 'crafted' cannot be") as err:
        FeatureStore(path).load("train", "syn")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make", [_wide_int, _vlen_opaque])
def test_the_resume_compaction_of_such_a_store_is_one_line(tmp_path, make):
    """compact (every resume after a kill) sized attributes through numpy's dtype (a TypeError for a 128-bit integer)
    and copied them: one line too."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        make(f["syn"], "crafted")
    with pytest.raises(StoreError, match="'crafted' cannot be") as err:
        compact(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["n_images", "complete", "commit"])
def test_a_split_attribute_of_many_values_is_refused_unread_and_never_shown_whole(tmp_path, key):
    """Finding 1: validate_split read n_images, complete and commit whole and put the whole value in its message. Now
    a value of more items than featstore writes is refused from its shape, in a short line."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        del f["syn/train"].attrs[key]
        f["syn/train"].attrs[key] = np.arange(5_000, dtype=np.int64)
    with pytest.raises(StoreError, match=f"'{key}' holds 5,000 values") as err:
        FeatureStore(path).load("train", "syn")
    assert len(str(err.value)) < 400
    assert all(len(p) < 400 for p in check_store(path))


def test_classes_that_differ_between_splits_are_shown_cut(tmp_path):
    """writer._prepare_group printed both class lists whole ("classes of split ... differ"): 2,000 names of 200
    characters each made a 400 KB line. The other split's names are read bounded and both lists are shown cut."""
    path = _store(tmp_path)
    names = [f"{i:04d}" + "x" * 196 for i in range(2_000)]
    with pytest.raises(StoreError, match="classes of split 'test' differ") as err:
        write_arrays(path, "syn", "test", np.ones((4, 4), np.float32), np.arange(4), names)
    assert len(str(err.value)) < 1_000 and "1,992 more" in str(err.value)


def test_augmented_copies_attributes_are_bounded(tmp_path):
    """layout.validate_augmented read augment_copies, augment_spec, ... whole (plain(ag.attrs[k])) and printed them
    with !r: an augment_copies of 5,000 items is refused from its shape, a 60 KB augment_spec shown cut."""
    path = _store(tmp_path)
    with h5py.File(path, "a") as f:
        f.copy("syn/train", "tmp")
        f.move("tmp", "syn/train/augmented")
        ag = f["syn/train/augmented"]
        ag.create_dataset("copy", data=np.ones(10, np.int64))
        ag.attrs.update(augment_spec="x" * 60_000, augment_seed=1, source_rows=10, source_split="train")
        ag.attrs["augment_copies"] = np.arange(5_000, dtype=np.int64)
    problems = check_store(path)
    assert any("'augment_copies' holds 5,000 values" in p for p in problems) and all(len(p) < 400 for p in problems)
    with h5py.File(path, "a") as f:
        f["syn/train/augmented"].attrs["augment_copies"] = "one"
    problems = check_store(path)
    assert any("augment_spec 'xxx" in p for p in problems) and all(len(p) < 600 for p in problems)
