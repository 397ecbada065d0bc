"""A backbone saved as a keras.Sequential is cut for fine-tuning's cache like a Functional one (attack 47 #5): it
trained from the images every epoch ("featstore cannot cut for its cache yet"), since its layers' ``.input`` and
``.output`` are their first call's, not the fine-tuned model's. The cached training gives the model the images give;
a skip connection crossing the cut still trains from the images, said in one line."""

import logging

import numpy as np
import pytest

from featstore import ExtractorConfig, FeatureStore, extract, fit
from featstore.experiments.finetune import FinetuneConfig, finetune, warm_start_model
from featstore.images.listing import load_image
from featstore.models.backbones import outer_output
from featstore.models.finetuned import FinetunedModel, preprocess_images
from featstore.runs.folder import get_run

from .conftest import write_images

SIZE = 16


def _layers(L):
    return [
        L.Rescaling(1 / 255.0, name="scale"),
        L.Conv2D(4, 3, activation="relu", name="conv1"),
        L.BatchNormalization(name="bn1"),
        L.Conv2D(4, 3, activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(2, activation="softmax", name="out"),
    ]


def _store(tmp, model, layer: str = "pool"):
    """``model`` saved, the same 8 images as train and validation (so phase B's epoch beats phase A), extracted at ``layer``,
    and a dense run on them: (store, data, run id)."""
    path = tmp / "model.keras"
    model.save(path)
    data = tmp / "data"
    for split in ("train", "validation"):
        write_images(data, split, {"a": 4, "b": 4}, seed=1, size=20)
    store = tmp / "f.h5"
    for split in ("train", "validation"):
        extract(data, split, store, ExtractorConfig(model=str(path), layer=layer))
    return store, data, fit(store, "dense", {"epochs": [1], "units": [8]})["id"]


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), *_layers(keras.layers)], name="seq")
    return _store(tmp_path_factory.mktemp("seq"), model)


def test_a_sequential_backbone_is_cut_below_the_unfrozen_layer_with_its_weights(seq):
    store, data, run_id = seq
    rec, folder = get_run(run_id, store)
    built = warm_start_model(rec, folder, FinetuneConfig("conv2"))
    assert built.cut_input == "bn1" and built.top is not None
    assert [lyr.name for lyr in built.top.layers if lyr.weights] == ["conv2", "head_dense", "head_out"]
    assert all(built.top.get_layer(n) is built.model.get_layer(n) for n in ("conv2", "head_dense", "head_out"))
    images = np.stack([load_image(str(p), SIZE) for p in sorted((data / "train").rglob("img_*"))])
    x = preprocess_images(images, rec["extractor_attrs"])
    import keras

    below = keras.Model(built.model.inputs[0], outer_output(built.model, built.model.get_layer("bn1")))  # the cache's
    np.testing.assert_allclose(
        np.asarray(built.top(below(x), training=False)), np.asarray(built.model(x, training=False)), atol=1e-6
    )


@pytest.mark.slow
def test_a_sequential_fine_tuning_trains_on_its_cache_and_predicts_as_from_the_images(seq, caplog):
    store, data, run_id = seq
    cfg = dict(epochs=1, batch_size=4, lr=1e-3)
    with caplog.at_level(logging.INFO, logger="featstore"):
        cached = finetune(run_id, FinetuneConfig("conv2", **cfg), store=store)
    assert cached["cached_cut"] == "model@bn1" and "cannot be cut" not in caplog.text, caplog.text
    assert cached["restored_epoch"] == 1  # the epoch trained: what is compared below is not phase A's head
    images = finetune(run_id, FinetuneConfig("conv2", cache=False, **cfg), store=store)
    assert images["cached_cut"] == ""
    np.testing.assert_allclose(cached["history"]["loss"], images["history"]["loss"], rtol=1e-4)
    batch = np.stack([load_image(str(p), SIZE) for p in sorted((data / "validation").rglob("img_*"))])
    proba = [
        FinetunedModel.load(get_run(r["id"], store)[1] / "model.keras", r["extractor_attrs"]).proba(batch)
        for r in (cached, images)
    ]
    np.testing.assert_allclose(proba[0], proba[1], rtol=1e-4, atol=1e-5)
    assert "model@bn1" in FeatureStore(store).extractors()


@pytest.mark.slow
def test_a_skip_connection_across_the_cut_still_trains_from_the_images_in_one_line(tmp_path, caplog):
    import keras

    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(L.Rescaling(1 / 255.0, name="scale")(inp))
    b = L.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(a)
    c = L.Conv2D(4, 3, padding="same", activation="relu", name="conv3")(b)
    x = L.Flatten(name="flatten")(L.MaxPooling2D(name="pool")(L.Add(name="skip")([a, c])))  # conv1's output skips conv3
    store, _, run_id = _store(tmp_path, keras.Model(inp, L.Dense(2, activation="softmax", name="out")(x)))
    with caplog.at_level(logging.INFO, logger="featstore"):
        tuned = finetune(run_id, FinetuneConfig("conv3", epochs=1, batch_size=4), store=store)
    assert tuned["cached_cut"] == ""
    lines = [r.getMessage() for r in caplog.records if "cannot be cut" in r.getMessage()]
    assert len(lines) == 1 and "skip connection" in lines[0] and "\n" not in lines[0], lines
