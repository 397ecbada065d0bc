"""Attack 62 #1 and #2: layouts of channels_first maps at a fine-tuning's cached cut and behind a nested model's outputs.

#1: the cached cut of a channels_first (PyTorch-port) model is stored channels last, as every map is, and the layers
above the cut take (C, H, W): where C = H = W they were trained silently on transposed maps, else a TensorFlow
traceback after the cache was written. The top now permutes the cached map back: on the cached rows it gives what the
fine-tuned model gives on the images, and a fine-tuning from the cache trains as one from the images.
#2: the layout walk read a nested model's first output whatever output the cut takes: ``--pooling avg`` averaged a
channels-last map over its width and channels, ``--pooling none`` permuted it and recorded it channels_first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import featstore
from featstore import FeatureStore, provenance
from featstore.errors import StoreError
from featstore.experiments.finetune import FinetuneConfig, finetune, warm_start_model
from featstore.images.listing import load_image
from featstore.models.finetuned import preprocess_images
from featstore.models.layout import data_format_at
from featstore.runs.folder import get_run
from tests.conftest import write_data_root

SIZE = 32


def _port(path, channels: int):
    """A PyTorch port at 32 px: NCHW inside, three channels_first convolutions of ``channels`` at 8 x 8, a classifier."""
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Permute((3, 1, 2), name="to_nchw")(x)
    h = keras.layers.Conv2D(channels, 3, strides=4, padding="same", data_format="channels_first", name="c1")(h)
    h = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", data_format="channels_first", name="c2")(h)
    h = keras.layers.Conv2D(channels, 3, padding="same", data_format="channels_first", name="c3")(h)
    out = keras.layers.Dense(2, activation="softmax", name="fc")(keras.layers.Flatten()(h))
    keras.Model(x, out, name="cf").save(path)
    return path


@pytest.fixture(scope="module", params=[8, 4], ids=["C=H=W", "C!=H"])
def port(request, tmp_path_factory):
    """A store of the port cut at c3 (stored channels last) and a dense run with reduce=avg on it."""
    root = tmp_path_factory.mktemp(f"a62_{request.param}")
    data, store = write_data_root(root / "data"), root / "f.h5"
    config = featstore.ExtractorConfig(model=str(_port(root / "cf.keras", request.param)), layer="c3")
    for split in ("train", "validation", "test"):
        featstore.extract(data, split, store, config)
    assert FeatureStore(store).metadata()["map_layout"] == provenance.MOVED_CHANNELS_LAST
    run = featstore.fit(store, "dense", {"epochs": [2], "reduce": ["avg"], "seed": [0]})
    return {"data": data, "store": store, "config": config, "dense": run["id"], "channels": request.param}


def _images(port, split: str):
    fs = FeatureStore(port["store"])
    return np.stack([load_image(str(port["data"] / p), SIZE) for p in fs.paths(split, "cf")])


def test_the_top_on_the_cached_rows_gives_what_the_model_gives_on_the_images(port, tmp_path):
    rec, folder = get_run(port["dense"], port["store"])
    built = warm_start_model(rec, folder, FinetuneConfig("c3"))
    assert built.cut_input == "c2"
    cut = featstore.ExtractorConfig(model=port["config"].model, layer="c2")  # what finetune caches: c2, as every map
    featstore.extract(port["data"], "train", tmp_path / "c.h5", cut, name="cf@c2")
    fs = FeatureStore(tmp_path / "c.h5")
    assert fs.metadata("cf@c2")["map_layout"] == provenance.MOVED_CHANNELS_LAST
    X, _ = fs.load("train", "cf@c2")
    assert fs.paths("train") == FeatureStore(port["store"]).paths("train", "cf")
    assert tuple(built.top.input_shape[1:]) == X.shape[1:]  # (8, 8, C): what the cache holds
    images = preprocess_images(_images(port, "train"), rec["extractor_attrs"])
    on_images = np.asarray(built.model(images, training=False))
    np.testing.assert_allclose(np.asarray(built.top(X, training=False)), on_images, rtol=1e-4, atol=1e-6)
    # and that model is the saved one's cut with the dense run's head: its c3 map is the saved model's
    import keras

    saved = keras.saving.load_model(port["config"].model)
    np.testing.assert_allclose(
        np.asarray(keras.Model(built.model.input, built.model.get_layer("c3").output)(images)),
        np.asarray(keras.Model(saved.input, saved.get_layer("c3").output)(images)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_fine_tuning_from_the_cache_trains_as_one_from_the_images_and_predicts_so(port):
    import keras

    options = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "patience": 5}
    cached = finetune(port["dense"], FinetuneConfig("c3", **options), store=port["store"])
    assert cached["cached_cut"] == "cf@c2"
    images = finetune(port["dense"], FinetuneConfig("c3", cache=False, **options), store=port["store"])
    np.testing.assert_allclose(cached["history"]["loss"], images["history"]["loss"], rtol=1e-4)
    np.testing.assert_allclose(cached["history"]["val_loss"], images["history"]["val_loss"], rtol=1e-4)
    # predict applies the saved model to images: on the cached rows, its trained top gives the same
    rec, folder = get_run(cached["id"], port["store"])
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True, compile=False)
    from featstore.models.finetuned import _top_model

    _, top = _top_model(model, model.get_layer("c3"))
    X, _ = FeatureStore(port["store"]).load("validation", "cf@c2")
    shown = preprocess_images(_images(port, "validation"), rec["extractor_attrs"])
    np.testing.assert_allclose(np.asarray(top(X)), np.asarray(model(shown)), rtol=1e-4, atol=1e-6)


def test_a_cache_group_of_another_layout_is_refused_before_anything_is_written(port, tmp_path):
    import shutil

    import h5py

    from featstore.experiments.finetune_cache import refuse_other_layout

    store = shutil.copy(port["store"], tmp_path / "f.h5")
    with h5py.File(store, "a") as f:
        f.pop("cf@c2", None)  # the other tests' fine-tunings made it
    other = featstore.ExtractorConfig(model=port["config"].model, layer="to_nchw")  # (3, 32, 32), stored as it is
    featstore.extract(port["data"], "train", store, other, name="cf@c2")
    before = Path(store).read_bytes()
    with pytest.raises(StoreError, match=r"(?s)already holds an extractor named 'cf@c2'.*map_layout.*pass --no-cache"):
        finetune(port["dense"], FinetuneConfig("c3", epochs=1), store=store, runs=port["store"].with_suffix(".runs"))
    assert Path(store).read_bytes() == before
    rec, folder = get_run(port["dense"], port["store"])
    built = warm_start_model(rec, folder, FinetuneConfig("c3"))  # and were it trained on: refused before training
    with pytest.raises(StoreError, match=r"'cf@c2' .* hold rows of \(3, 32, 32\), and the layers above .*--no-cache"):
        refuse_other_layout(FeatureStore(store), "cf@c2", built.top)


def _pyramid():
    """A backbone giving two maps: [a] channels_first (4, 16, 16), [b] channels last (16, 16, 6)."""
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.Conv2D(4, 3, strides=2, padding="same", data_format="channels_first", name="a_cf")(
        keras.layers.Permute((3, 1, 2))(i)
    )
    b = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="b_cl")(i)
    return keras.Model(i, [a, b], name="pyramid")


def test_the_walk_follows_the_output_the_cut_reads_once_or_called_twice():
    import keras

    pyramid, x = _pyramid(), keras.Input((SIZE, SIZE, 3))
    first, second = pyramid(x)
    assert data_format_at(None, keras.layers.ReLU()(second)) == "channels_last"
    assert data_format_at(None, keras.layers.ReLU()(first)) == "channels_first"
    again = pyramid(keras.layers.Rescaling(0.5)(x))  # a shared backbone: its second call's outputs
    assert data_format_at(None, keras.layers.Add()([second, again[1]])) == "channels_last"
    assert data_format_at(None, keras.layers.Add()([first, again[0]])) == "channels_first"
    assert data_format_at(None, keras.layers.Concatenate()([keras.layers.Permute((2, 3, 1))(first), again[1]])) is None


@pytest.mark.parametrize("output, channels", [(1, 6), (0, 4)], ids=["second, channels last", "first, channels_first"])
def test_extract_pools_and_stores_the_output_the_cut_reads(tmp_path, output, channels):
    import keras

    x = keras.Input((SIZE, SIZE, 3))
    outer = keras.Model(x, keras.layers.ReLU(name="r")(_pyramid()(x)[output]), name="outer")
    outer.save(tmp_path / "nest.keras")
    data = write_data_root(tmp_path / "data")
    for pooling in ("avg", "none"):
        store = tmp_path / f"{pooling}.h5"
        config = featstore.ExtractorConfig(model=str(tmp_path / "nest.keras"), layer="r", pooling=pooling)
        featstore.extract(data, "train", store, config)
        fs = FeatureStore(store)
        X, _ = fs.load("train")
        images = np.stack([load_image(str(data / p), SIZE) for p in fs.paths("train")]).astype("float32")
        true = np.asarray(outer(images))
        if output == 0:  # (C, H, W): stored (H, W, C), as every map is
            true = true.transpose(0, 2, 3, 1)
        want = true.mean(axis=(1, 2)) if pooling == "avg" else true
        assert X.shape[1:] == want.shape[1:] and want.shape[-1] == channels
        np.testing.assert_allclose(X, want, rtol=1e-4, atol=1e-5)
        moved = fs.metadata().get("map_layout") == provenance.MOVED_CHANNELS_LAST
        assert moved == (pooling == "none" and output == 0)
