"""Attack 29 #7: a split that is another split (one object under two names, a dataset shared, a copy) is refused by
every opening and listed by `check`: `fit` scored the training rows as the test split (1.0 where the real one: 0.45)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store.check import check_store
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays


def _store(path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_arrays(path, "syn", split, rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 2, ["a", "b"])
    return path


@pytest.mark.parametrize("how", ["group linked", "features linked", "copied"])
def test_a_split_that_is_another_split_is_refused_and_listed(tmp_path, how):
    """Sabotage: ``split_copies`` returning {} fails the copy (the test split loads: the training rows); the linked cases
    are names.refuse_odd_names' (attack 29 #7, tests/test_adversarial_attack29.py)."""
    path = _store(tmp_path / "s.h5")
    assert check_store(path) == [] and FeatureStore(path).load("test")[0].shape == (40, 8)
    with h5py.File(path, "a") as f:
        if how == "group linked":
            del f["syn/test"]
            f["syn/test"] = f["syn/train"]
        elif how == "features linked":
            del f["syn/test/features"]
            f["syn/test/features"] = f["syn/train/features"]
        else:
            del f["syn/test"]
            f.copy("syn/train", "syn/test")
    # one object under two names is refused at every opening (names.refuse_odd_names, fixAH); a copy by its split_id
    said = "two names of one HDF5 object" if how != "copied" else "syn: splits 'test' and 'train' are one split .* re-"
    with pytest.raises(StoreError, match=said):
        FeatureStore(path).load("test")
    found = check_store(path)
    assert any(("two names of one" if how != "copied" else "are one split") in p for p in found), found


def test_a_resumes_compaction_counts_each_groups_attributes_before_sizing_them(tmp_path):
    """Attack 29 #6: the compaction sized every group's attributes (HDF5's listing, one open by name each: quadratic,
    20,014 attributes 9-21 s) before it counted them. Sabotage: the refuse_many_attrs loop in compact._large_attrs
    removed fails it (the sizing lists them all and answers)."""
    from featstore.store.attr_values import MAX_ATTRS
    from featstore.store.compact import _large_attrs

    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        for i in range(MAX_ATTRS + 1):
            f["syn/test"].attrs[f"extra{i}"] = i
    with h5py.File(path, "r") as f, pytest.raises(StoreError, match=r"syn/test attribute: holds 2\d\d attributes"):
        _large_attrs(f)


@pytest.mark.parametrize("layout", ["contiguous", "fixed size"])
def test_resuming_a_split_that_cannot_grow_is_refused_before_any_work(tmp_path, layout):
    """Attack 29 #9: an interrupted split whose features were rewritten contiguous (a repack) ended its resume in a
    59-line traceback ("Only chunked datasets can be resized") after the compaction and the model's build; --overwrite
    still works. Sabotage: the ``_refuse_fixed_size`` call in survey._partial removed fails it (the survey passes)."""
    from featstore.store.survey import survey

    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        sg = f["syn/test"]
        sg.attrs["complete"] = False
        X = sg["features"][...]
        del sg["features"]
        kw = {} if layout == "contiguous" else {"chunks": (8, 8), "maxshape": (40, 8)}
        sg.create_dataset("features", data=X, **kw)
    with h5py.File(path, "r") as f:
        with pytest.raises(
            StoreError, match=r"syn/test/features is stored (contiguous|with a largest size of 40 rows)"
        ):
            survey(f, path, ["syn"], "test", lambda f, n: False)
        assert survey(f, path, ["syn"], "test", lambda f, n: False, overwrite=True).todo == ["syn"]


def test_finding_copies_is_linear_in_the_splits(tmp_path, monkeypatch):
    """Attack 30 #11: every split's opening compared it with every other split (200 splits: check 85 s, info over
    100 s). The copies are found in one pass per extractor, which info and check share across its splits. Sabotage:
    ``copies=copies`` not passed by StoreMetadata.read fails it (each opening reads every split's id)."""
    from featstore.store import attr_values, metadata

    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    for i in range(30):
        write_arrays(path, "syn", f"s{i:02d}", rng.normal(size=(4, 2)).astype(np.float32), np.arange(4) % 2, ["a", "b"])
    reads, real = [], attr_values.read_attr
    monkeypatch.setattr(metadata, "read_attr", lambda obj, key, *a, **k: reads.append(key) or real(obj, key, *a, **k))
    assert len(FeatureStore(path).splits()) == 30
    assert reads.count("split_id") == 30, reads.count("split_id")


def test_splits_without_a_split_id_are_not_copies(tmp_path):
    """Two splits without ``split_id`` (a store of an older featstore) are not copies of each other (the missing id read
    as the string "None" made them so). Sabotage: ``str(value)`` for a missing value in metadata._split_id fails it."""
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        for split in ("train", "test"):
            del f[f"syn/{split}"].attrs["split_id"]
    from featstore.store.metadata import split_copies

    with h5py.File(path, "r") as f:
        assert split_copies(f["syn"]) == {}
