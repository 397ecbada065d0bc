"""A command opens its store once: how often extract and a fit open the HDF5 file, the metadata a FeatureStore reuses,
one locking setting, the old keyword names, and ExtractorConfig's one representation of the cut."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

import featstore
from featstore import ConfigError, ExtractorConfig, FeatureStore, extract
from featstore.store import locking, writer
from featstore.store.check import check_store

from .conftest import write_images


@pytest.fixture
def opens(monkeypatch):
    """Every h5py.File opened while the test runs (its path and keyword arguments), in order."""
    seen: list[tuple[str, dict]] = []
    real = h5py.File

    class Counting(real):
        def __init__(self, name, *args, **kwargs):
            seen.append((str(name), kwargs))
            super().__init__(name, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", Counting)
    return seen


@pytest.fixture
def commits(monkeypatch, opens):
    """The number of openings made before each committed batch."""
    at: list[int] = []
    real = writer.SplitWriter.commit

    def spy(self, *args, **kwargs):
        at.append(len(opens))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(writer.SplitWriter, "commit", spy)
    return at


def test_extract_opens_the_store_twice_before_its_first_batch_and_once_per_batch(
    data_root, tiny_config, tmp_path, opens, commits
):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config, batch_size=4)  # a new store: prepare, 3 batches, finish
    assert commits == [1, 2, 3] and len(opens) == 5, opens
    opens.clear(), commits.clear()
    # a store that holds another split: the survey (one opening for every check) and the preparation, then one per batch
    extract(data_root, "validation", path, tiny_config, batch_size=2)
    assert commits == [2, 3, 4] and len(opens) == 6, opens
    opens.clear(), commits.clear()
    assert extract(data_root, "train", path, tiny_config, batch_size=4).skipped  # complete: the survey only
    assert len(opens) == 1 and commits == []


def test_a_resume_compacts_once_then_writes_as_a_first_run(data_root, tiny_config, tmp_path, opens, commits):
    path = tmp_path / "f.h5"
    spy, calls = writer.SplitWriter.commit, []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after one committed batch
        return spy(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer.SplitWriter, "commit", dying)
        with pytest.raises(KeyboardInterrupt):
            extract(data_root, "train", path, tiny_config, batch_size=4)
    opens.clear(), commits.clear()
    r = extract(data_root, "train", path, tiny_config, batch_size=4)
    # the survey, the compaction (the store read, a fresh file written), the preparation, the first batch read back
    # (computed again: the resume computes as the run that started it, same_numerics); then 2 batches and the end
    assert r.resumed_from == 4 and commits == [5, 6] and len(opens) == 8, opens


def test_multi_layer_batches_are_one_opening_for_every_group(data_root, tmp_path, opens, commits):
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", layers=("block1_pool", "block2_pool"))
    extract(data_root, "train", tmp_path / "f.h5", cfg, batch_size=6)
    assert commits == [1, 2] and len(opens) == 4  # prepare both groups, 2 batches to both, finish both


def test_a_logreg_fit_reads_the_store_a_handful_of_times(store, tmp_path, opens):
    fs_path = str(store)
    featstore.fit(store, "logreg", runs=tmp_path / "runs")
    n = sum(1 for p, _ in opens if p == fs_path)
    print(f"\nfit(store, 'logreg') opened the store {n} times")  # 37 before the store read its metadata once
    assert n <= 8, opens  # metadata once; then train, validation and test read (one opening each) and two path lists


def test_feature_store_reads_its_metadata_once_and_again_when_the_file_changes(data_root, tiny_config, tmp_path, opens):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    opens.clear()
    fs = FeatureStore(path)
    for _ in range(3):
        fs.resolve(), fs.metadata(), fs.splits(), fs.class_names(), fs.split_info("train"), fs.nbytes("train")
        fs.block_lengths("train"), fs.augmentation("train"), fs.extractors(caches=False)
    assert len(opens) == 1
    extract(data_root, "validation", path, tiny_config)  # another process could have done this
    assert fs.splits() == ["train", "validation"]  # the file changed: read again
    opens.clear()
    fs.refresh()
    assert len(opens) == 1 and fs.split_info("validation")["committed_rows"] == 6
    info = fs.split_info("train")
    info["class_names"].append("x")  # a caller's change never reaches the store's copy
    assert fs.class_names() == ["cat", "dog"]


def test_damaged_parts_raise_when_used_not_when_opened(data_root, tiny_config, tmp_path):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    extract(data_root, "validation", path, tiny_config)
    with h5py.File(path, "a") as f:
        f["vgg16/validation"].attrs["commit"] = np.array([1, 2], dtype=np.int64)
    fs = FeatureStore(path)
    assert fs.split_info("train")["committed_rows"] == 12
    with pytest.raises(featstore.StoreError, match="attribute commit is"):
        fs.split_info("validation")
    with pytest.raises(featstore.StoreError, match="has no split 'test'; it has: train, validation"):
        fs.split_info("test")


def test_locking_is_one_setting_and_a_store_can_override_it(tmp_path, opens):
    path = tmp_path / "s.h5"
    X, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    try:
        locking.set_locking(False)
        writer.write_arrays(path, "s", "train", X, y, ["a", "b"])
        FeatureStore(path).load("train")
        check_store(path)
        assert opens and all(kw.get("locking") is False for _, kw in opens), opens
        opens.clear()
        FeatureStore(path, locking=True).load("train")  # this store only
        assert opens and all(kw.get("locking") is True for _, kw in opens)
    finally:
        locking.set_locking(None)
    opens.clear()
    FeatureStore(path).load("train")
    assert all("locking" not in kw for _, kw in opens)  # HDF5's default again


def test_old_keyword_names_still_work_with_a_deprecation_warning(data_root, tiny_config, tmp_path):
    with pytest.warns(DeprecationWarning, match="workers= is now decode_threads="):
        a = extract(data_root, "train", tmp_path / "a.h5", tiny_config, workers=0)
    with pytest.warns(DeprecationWarning, match="store_path= is now store="):
        b = extract(data_root, "train", config=tiny_config, store_path=tmp_path / "b.h5")
    assert a.rows == b.rows == 12 and b.store == str(tmp_path / "b.h5")
    with pytest.warns(DeprecationWarning, match="path= is now store="):
        assert FeatureStore(path=tmp_path / "a.h5").splits() == ["train"]
    with pytest.warns(DeprecationWarning, match="path= is now store="):
        assert check_store(path=tmp_path / "a.h5") == []
    with pytest.raises(ConfigError, match="give decode_threads= only"):
        extract(data_root, "train", tmp_path / "c.h5", tiny_config, workers=1, decode_threads=2)


def test_extractor_config_has_one_cut(tiny_config):
    one = ExtractorConfig(layer="block4_pool")
    assert one == ExtractorConfig(layers=("block4_pool",)) and one.cut_layers == ("block4_pool",)
    assert (one.layer, one.layers) == ("block4_pool", ())
    assert ExtractorConfig("vgg16", 150, "block4_pool").layer == "block4_pool"  # positional, as before
    many = ExtractorConfig(layers=["block3_pool", "block4_pool"])
    assert (many.layer, many.layers) == (None, ("block3_pool", "block4_pool"))
    assert dataclasses.replace(many, pooling="avg").layers == many.layers  # replace keeps the cut
    assert dataclasses.replace(one, layer="block5_pool").layer == "block5_pool"
    assert dataclasses.replace(many, layer=None, layers=()).cut_layers == ()
    assert [c.layer for c in many.per_layer()] == ["block3_pool", "block4_pool"]
    assert ExtractorConfig().cut_layers == () and tiny_config.layer is None
    with pytest.raises(ConfigError, match="give either layer or layers, not both"):
        ExtractorConfig(layer="block4_pool", layers=("block3_pool", "block5_pool"))


def test_recorded_attributes_give_back_the_configuration(data_root, tmp_path):
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=2, pooling="avg", layer="block2_pool")
    extract(data_root, "train", tmp_path / "f.h5", cfg)
    attrs = FeatureStore(tmp_path / "f.h5").metadata()
    back = ExtractorConfig.from_attrs(attrs)
    assert back == cfg.validated() and back.matches(attrs) and cfg.validated().matches(attrs)
    assert not dataclasses.replace(cfg, pooling="max").validated().matches(attrs)
    write_images(data_root, "train", {"cat": 7})  # one more image: the complete split is refused, not reused
    with pytest.raises(featstore.StoreError, match="changed since"):
        extract(data_root, "train", tmp_path / "f.h5", cfg)
