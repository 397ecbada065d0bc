"""Crafted and damaged stores: every entry point (info, check, fit, resume) gives one clear message; nothing is padded.

Add a row to CRAFTED_STORE_CASES to cover a new kind of damage: (id, damage(h5py.File), what the readers do).
"""

import shutil

import h5py
import numpy as np
import pytest

from featstore import ExtractorConfig, FeatstoreError, FeatureStore, extract, fit
from featstore.check import check_store
from featstore.report import store_tree

from .conftest import write_images

CFG = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=4, pooling="avg", layer="block1_pool")


def _set_commit(value):
    def damage(f):
        f["vgg16/train"].attrs["commit"] = value
    return damage


def _replace(key, make):
    def damage(f):
        sg = f["vgg16/train"]
        old = sg[key][()]
        del sg[key]
        sg.create_dataset(key, data=make(old))
    return damage


def _del(where, attr=None):
    def damage(f):
        if attr:
            del f[where].attrs[attr]
        else:
            del f[where]
    return damage


def _huge_features(f):
    sg = f["vgg16/train"]
    del sg["features"]
    sg.create_dataset("features", shape=(10**12, 64), maxshape=(None, 64), chunks=(1024, 64), dtype="float32")
    sg.attrs["commit"] = np.array([10**12, 0, 10**12], dtype=np.int64)


def _labels_out_of_range(f):
    f["vgg16/train/labels"][0] = 99


def _edit_provenance(f):
    f["vgg16"].attrs["layer"] = "block2_pool"  # fingerprint no longer matches


def _root_attr(value):
    def damage(f):
        f.attrs["format_version"] = value
    return damage


# (id, damage, fragment every refusal must contain)
CRAFTED_STORE_CASES = [
    ("commit-wrong-length", _set_commit(np.array([3, 0], dtype=np.int64)), "expected three integers"),
    ("commit-wrong-type", _set_commit(np.array([1.5, 0.0, 1.5])), "expected three integers"),
    ("commit-string", _set_commit("12"), "expected three integers"),
    ("commit-larger-than-data", _set_commit(np.array([20, 0, 20], dtype=np.int64)), "rows were lost"),
    ("commit-negative", _set_commit(np.array([-1, 0, -1], dtype=np.int64)), "inconsistent"),
    ("commit-over-n-images", lambda f: f["vgg16/train"].attrs.__setitem__("n_images", 4), "images done of n_images 4"),
    ("labels-out-of-range", _labels_out_of_range, "outside 0..1"),
    ("labels-float", _replace("labels", lambda y: y.astype(np.float32)), "expected 1-D integers"),
    ("features-int", _replace("features", lambda x: x.astype(np.int32)), "not floating point"),
    ("features-declared-1e12-rows", _huge_features, "labels holds"),
    ("missing-class-names", _del("vgg16/train", "class_names"), "attributes missing: class_names"),
    ("missing-labels", _del("vgg16/train/labels"), "dataset labels is missing"),
    ("missing-provenance", _del("vgg16", "weights_digest"), "provenance attributes missing: weights_digest"),
    ("edited-provenance", _edit_provenance, "fingerprint attribute does not match"),
    ("format-version-text", _root_attr("two"), "not an integer"),
    ("format-version-float", _root_attr(1.5), "not an integer"),
    ("format-version-old", _root_attr(1), "older featstore"),
    ("format-version-newer", _root_attr(99), "Upgrade featstore"),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(data root, a sound store with train/validation/test of 2 classes)."""
    root = tmp_path_factory.mktemp("crafted")
    data = root / "data"
    for split, seed, n in (("train", 1, 6), ("validation", 2, 3), ("test", 3, 3)):
        write_images(data, split, {"cat": n, "dog": n}, seed=seed)
    path = root / "good.h5"
    for split in ("train", "validation", "test"):
        extract(data, split, path, CFG)
    return data, path


def _crafted(good, tmp_path, damage):
    data, path = good
    bad = tmp_path / "bad.h5"
    shutil.copy(path, bad)
    with h5py.File(bad, "a") as f:
        damage(f)
    return data, bad


def _refused(fn, fragment):
    """fn() fails with a FeatstoreError naming the problem (never another exception)."""
    with pytest.raises(FeatstoreError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        fn()


@pytest.mark.parametrize("case_id,damage,fragment", CRAFTED_STORE_CASES, ids=[c[0] for c in CRAFTED_STORE_CASES])
def test_crafted_store_gets_one_clear_message_everywhere(good, tmp_path, case_id, damage, fragment):
    data, bad = _crafted(good, tmp_path, damage)
    before = bad.read_bytes()
    # fit and resume refuse with the reason
    _refused(lambda: fit(bad, "logreg", runs=tmp_path / "runs"), fragment)
    _refused(lambda: extract(data, "train", bad, CFG), fragment)
    assert bad.read_bytes() == before, "a refused resume must not touch the store"
    # info shows the store with the damaged part marked, or refuses it as a whole
    try:
        text = store_tree(str(bad))
        assert "BROKEN" in text and fragment.split("(")[0] in text
    except FeatstoreError as exc:
        assert fragment.split("(")[0] in str(exc)
    # check lists it as a problem
    try:
        problems = check_store(bad)
        assert problems and any(fragment.split("(")[0] in p for p in problems), problems
    except FeatstoreError as exc:
        assert fragment.split("(")[0] in str(exc)


def test_non_utf8_stored_path_round_trips(good, tmp_path):
    data, bad = _crafted(good, tmp_path, lambda f: f["vgg16/train/paths"].__setitem__(0, b"train/cat/\xff.png"))
    assert FeatureStore(bad).paths("train")[0] == "train/cat/\udcff.png"
    assert check_store(bad) == []


def test_sound_store_passes(good):
    assert check_store(good[1]) == []
