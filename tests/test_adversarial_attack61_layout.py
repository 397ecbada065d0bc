"""Attack 61 #3: a store an older featstore made from a channels_first cut (a PyTorch port's saved model, --pooling
none) holds (C, H, W) rows and records no layout; reduce=avg|max (fit, sweep, probe, fewshot) and export --features
avg|max averaged them over C and H, exit 0. A saved model's or preset's map in a group no layout-aware featstore wrote
or checked (no ``layout_checked``) is now refused under a reduce, naming the fix: extract one split again, which
checks the layout and records it (a channels_first model's group is refused there, its fingerprint holds map_layout)."""

from __future__ import annotations

import h5py
import pytest

import featstore
from featstore import provenance
from featstore.errors import ConfigError, StoreError
from tests.conftest import write_data_root

from .test_adversarial_attack60_fixCP import models  # noqa: F401 (the tiny saved models, a fixture)

SAID = r"stored by a featstore that did not record which axis holds the channels.*--overwrite"


def _old_store(tmp_path, path, layer, moved: bool):
    """A store as a featstore before the layout record made it: (C, H, W) rows where the cut is channels_first."""
    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    config = featstore.ExtractorConfig(model=str(path), layer=layer)
    for split in ("train", "validation", "test"):
        featstore.extract(data, split, store, config)
    with h5py.File(store, "r+") as f:
        (name,) = list(f)
        group = f[name]
        del group.attrs[provenance.LAYOUT_CHECKED]
        if moved:
            del group.attrs["map_layout"]
            for split in ("train", "validation", "test"):  # the rows as they came: (C, H, W)
                rows = group[split]["features"][...].transpose(0, 3, 1, 2)
                del group[split]["features"]
                group[split].create_dataset(
                    "features", data=rows, maxshape=(None, *rows.shape[1:]), chunks=(len(rows), *rows.shape[1:])
                )
            group.attrs["feature_shape"] = list(rows.shape[1:])
        group.attrs["fingerprint"] = provenance.fingerprint(dict(group.attrs))
    return data, store, config


def test_a_reduce_of_an_old_channels_first_store_is_refused_everywhere(models, tmp_path):  # noqa: F811
    data, store, config = _old_store(tmp_path, models["nchw"], "c2", moved=True)
    assert list(featstore.FeatureStore(store).split_info("train")["shape"][1:]) == [6, 28, 28]
    for call in (
        lambda: featstore.fit(store, "logreg", {"reduce": ["avg"]}),
        lambda: featstore.probe(store, reduce="max", knn=False),
        lambda: featstore.fewshot(store, "logreg", {"reduce": ["avg"]}, shots=(1,), trials=1),
    ):
        with pytest.raises(ConfigError, match=SAID + r".*; or pass --(param )?reduce[= ]flatten") as e:
            call()
        assert "(6, 28, 28)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=SAID + r".*; or pass --features flat"):
        featstore.export(store, "train", tmp_path / "t.npz", features="avg")
    assert not (tmp_path / "t.npz").exists() and not (tmp_path / "f.runs").exists()
    featstore.fit(store, "logreg")  # a flatten takes every value: its numbers do not depend on the order
    with pytest.raises(StoreError, match=r"map_layout: store has None.*Use --name"):  # the fix the line names
        featstore.extract(data, "validation", store, config, overwrite=True)


def test_an_old_channels_last_store_is_refused_until_one_split_is_extracted_again(models, tmp_path):  # noqa: F811
    data, store, config = _old_store(tmp_path, models["dense_last"], "r", moved=False)
    with pytest.raises(ConfigError, match=SAID):
        featstore.fit(store, "logreg", {"reduce": ["avg"]})
    featstore.extract(data, "validation", store, config, overwrite=True)  # same fingerprint: the layout is checked
    assert featstore.fit(store, "logreg", {"reduce": ["avg"]}).params["reduce"] == "avg"
    featstore.export(store, "train", tmp_path / "t.npz", features="avg")


def test_only_saved_models_and_presets_maps_can_be_unknown():
    from featstore.maplayout import layout_unknown as unknown

    assert not unknown({"model": "vgg16"}, (4, 4, 512))  # keras.applications: channels last
    assert unknown({"hub_preset": "p"}, (7, 7, 64)) and not unknown({"hub_preset": "p"}, (197, 768))  # tokens
    assert unknown({"model_file": "m.keras"}, (6, 28)) and not unknown({"model_file": "m.keras"}, (6,))
    for known in ({provenance.LAYOUT_CHECKED: True}, {"map_layout": provenance.MOVED_CHANNELS_LAST}):
        assert not unknown({"model_file": "m.keras", **known}, (6, 28, 28))


def test_a_map_whose_channels_no_layer_says_is_not_reduced(models, tmp_path):  # noqa: F811
    """Attack 66 #2: --pooling none at a cut past an EinsumDense/moveaxis (no layer says where the channels are) was
    marked layout_checked like any other, and reduce=avg averaged its (C, H, W) map over C and H, exit 0."""
    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    for split in ("train", "validation", "test"):
        featstore.extract(data, split, store, featstore.ExtractorConfig(model=str(models["moveaxis"]), layer="r"))
    assert featstore.FeatureStore(store).metadata()[provenance.LAYOUT_CHECKED] == provenance.UNKNOWN
    with pytest.raises(ConfigError, match=r"whose channels axis no layer up to the cut says .* pass --param reduce="):
        featstore.fit(store, "logreg", {"reduce": ["avg"]})
    with pytest.raises(ConfigError, match=r"whose channels axis no layer up to the cut says .* --features flat"):
        featstore.export(store, "train", tmp_path / "t.npz", features="max")
    featstore.fit(store, "logreg")  # flatten: every value, whatever the order


def test_registry_backbones_and_known_maps_are_checked_true(models, tmp_path):  # noqa: F811
    from tests.conftest import TINY_CONFIG

    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    featstore.extract(data, "train", store, TINY_CONFIG)
    featstore.extract(data, "train", store, featstore.ExtractorConfig(model=str(models["dense_last"]), layer="r"))
    fs = featstore.FeatureStore(store)
    assert [fs.metadata(n)[provenance.LAYOUT_CHECKED] for n in sorted(fs.extractors())] == [True, True]
