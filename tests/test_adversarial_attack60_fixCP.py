"""Attack 60 #1-#2: a channels_first cut stored as it is (--pooling none) is stored (H, W, C), as every map is, so that
reduce=avg/max, export --features avg/max and a fine-tuning head average over its height and width (they averaged
over C and H, one value per image column); the record says so and the fingerprint holds it. The --pooling layout walk
is an allow-list: EinsumDense, keras.ops.moveaxis (class Moveaxis), a Dense over a channels_first map leave the layout
unknown, and --pooling is refused naming --pooling none (they were pooled over channels and rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featstore.errors import ConfigError


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight models at 32 px (10 px for the cube): each saved as a plain .keras file."""
    import keras

    root = tmp_path_factory.mktemp("a60")
    keras.utils.set_random_seed(0)
    found = {}

    def save(name: str, x, h) -> None:
        keras.Model(x, keras.layers.Dense(2, activation="softmax", name="fc")(keras.layers.Flatten()(h))).save(
            root / f"{name}.keras"
        )
        found[name] = root / f"{name}.keras"

    x = keras.Input((32, 32, 3))  # a PyTorch port: (6, 28, 28) at c2
    h = keras.layers.Permute((3, 1, 2), name="to_nchw")(x)
    h = keras.layers.Conv2D(8, 3, activation="relu", data_format="channels_first", name="c1")(h)
    h = keras.layers.Conv2D(6, 3, data_format="channels_first", name="c2")(h)
    save("nchw", x, keras.layers.ReLU(name="r")(h))
    x = keras.Input((10, 10, 3))  # (8, 8, 8) at c: the same shape in either layout
    h = keras.layers.Conv2D(8, 3, data_format="channels_first", name="c")(keras.layers.Permute((3, 1, 2))(x))
    save("cube", x, h)
    x = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(x)  # (30, 30, 8) channels_last
    h = keras.layers.EinsumDense("bhwc,cd->bdhw", output_shape=(4, 30, 30), name="mix")(h)
    save("einsum", x, keras.layers.ReLU(name="r")(h))
    x = keras.Input((32, 32, 3))
    h = keras.ops.moveaxis(keras.layers.Conv2D(8, 3, activation="relu", name="c1")(x), -1, 1)  # class Moveaxis
    save("moveaxis", x, keras.layers.ReLU(name="r")(h))
    x = keras.Input((32, 32, 3))  # a Dense over a (C, H, W) map mixes its columns
    h = keras.layers.Conv2D(6, 3, data_format="channels_first", name="c1")(keras.layers.Permute((3, 1, 2))(x))
    save("dense_first", x, keras.layers.ReLU(name="r")(keras.layers.Dense(5, name="d")(h)))
    x = keras.Input((32, 32, 3))  # ConvNeXt's pattern: Dense over channels_last, ops, a merge, a normalisation
    c = keras.layers.Conv2D(8, 3, name="c1")(x)
    h = keras.layers.Dense(8, name="d")(keras.layers.LayerNormalization()(c))
    h = keras.layers.Add()([c, keras.ops.multiply(keras.ops.relu(h), 0.5)])
    save("dense_last", x, keras.layers.BatchNormalization(name="r")(h))
    return found


def _images(n: int = 3, side: int = 32) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _cut(path: Path, layer: str, images: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(path, compile=False)
    return keras.Model(model.inputs[0], model.get_layer(layer).output)(images.astype(np.float32)).numpy()


# --- #1: a channels_first map stored as it is ---


@pytest.mark.parametrize("layer", ["c2", "r"])
def test_a_channels_first_map_is_stored_channels_last_and_reduced_per_channel(models, layer):
    """It was stored (6, 28, 28): reduce=avg averaged over C and H, 28 values per image."""
    from featstore.models.extractor import Extractor, ExtractorConfig
    from featstore.models.reshape import FeatureReshape
    from featstore.provenance import MOVED_CHANNELS_LAST

    ex = Extractor(ExtractorConfig(model=str(models["nchw"]), layer=layer, pooling="none"))
    raw = _cut(models["nchw"], layer, _images())  # (3, 6, 28, 28)
    assert ex.feature_shape == (28, 28, 6) and ex.attrs["map_layout"] == MOVED_CHANNELS_LAST
    got = ex(_images())
    np.testing.assert_allclose(got, raw.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
    for reduce, want in (("avg", raw.mean(axis=(2, 3))), ("max", raw.max(axis=(2, 3)))):
        np.testing.assert_allclose(FeatureReshape(reduce).fit_transform(got), want, rtol=1e-5, atol=1e-6)


def test_onnx_runs_the_same_channels_last_map(models, tmp_path):
    """The Permute is in the cut model, so --runtime onnx (and --jit, predict) compute what the store holds."""
    pytest.importorskip("tf2onnx")
    from featstore.models.extractor import Extractor, ExtractorConfig

    ex = Extractor(ExtractorConfig(model=str(models["nchw"]), layer="c2", runtime="onnx"), runtime_cache=tmp_path)
    assert ex.config.runtime == "onnx" and ex.feature_shape == (28, 28, 6)
    want = _cut(models["nchw"], "c2", _images()).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ex(_images()), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())  # float rounding


def test_the_fine_tuning_head_reduces_the_stored_map_per_channel(models):
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig
    from featstore.models.finetuned import _reduce_layer

    ex = Extractor(ExtractorConfig(model=str(models["nchw"]), layer="c2", pooling="none"))
    head = keras.Model(ex.model.input, _reduce_layer("avg", len(ex.feature_shape))(ex.model.output))
    want = _cut(models["nchw"], "c2", _images()).mean(axis=(2, 3))
    np.testing.assert_allclose(head(_images().astype(np.float32)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_the_layout_is_fingerprinted_where_both_layouts_have_one_shape(models):
    """A store of (C, H, W) rows made before must not take new (H, W, C) rows on resume: (8, 8, 8) either way."""
    from featstore import provenance
    from featstore.models.extractor import Extractor, ExtractorConfig

    ex = Extractor(ExtractorConfig(model=str(models["cube"]), layer="c", pooling="none"))
    assert ex.feature_shape == (8, 8, 8) and ex.attrs["map_layout"] == provenance.MOVED_CHANNELS_LAST
    before = {k: v for k, v in ex.attrs.items() if k != "map_layout"}  # what a store made before 60 #1 recorded
    assert provenance.fingerprint(before) != ex.attrs["fingerprint"] == provenance.fingerprint(ex.attrs)
    assert "map_layout: store has None" in provenance.describe_diff(before, ex.attrs)
    provenance.validate_extractor(ex.attrs, "f.h5")  # the record checks against its own fingerprint


def test_channels_last_cuts_and_pooled_cuts_record_no_layout(models):
    """Their records (and so every store's fingerprint made before) are unchanged."""
    from featstore.models.extractor import Extractor, ExtractorConfig

    for path, layer, pooling in ((models["dense_last"], "r", "none"), (models["nchw"], "c2", "avg")):
        ex = Extractor(ExtractorConfig(model=str(path), layer=layer, pooling=pooling))
        assert "map_layout" not in ex.attrs and ex.model.layers[-1].__class__.__name__ != "Permute"


def test_export_avg_of_a_channels_first_store_gives_one_value_per_channel(models, tmp_path):
    import featstore
    from tests.conftest import write_data_root

    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    featstore.extract(data, "train", store, featstore.ExtractorConfig(model=str(models["nchw"]), layer="c2"))
    featstore.export(store, "train", tmp_path / "train.npz", features="avg")
    with np.load(tmp_path / "train.npz") as z:
        assert z["features"].shape[1] == 6


# --- #2: the layout walk is an allow-list ---


@pytest.mark.parametrize("name", ["einsum", "moveaxis", "dense_first"])
def test_pooling_after_a_layer_that_moves_or_mixes_axes_is_refused(models, name):
    """EinsumDense and Moveaxis were walked through to a channels_last conv: 30 values per image, one per row."""
    from featstore.models.extractor import Extractor, ExtractorConfig

    with pytest.raises(ConfigError, match=r"no layer up to it says which of its axes .* pass --pooling none") as e:
        Extractor(ExtractorConfig(model=str(models[name]), layer="r", pooling="avg"))
    assert "\n" not in str(e.value)


def test_pooling_after_layers_that_keep_the_axes_still_works(models):
    from featstore.models.extractor import Extractor, ExtractorConfig

    ex = Extractor(ExtractorConfig(model=str(models["dense_last"]), layer="r", pooling="avg"))
    np.testing.assert_allclose(ex(_images()), _cut(models["dense_last"], "r", _images()).mean(axis=(1, 2)), rtol=1e-5)


def test_the_walk_knows_no_op_outside_its_allow_list():
    import keras

    from featstore.models.layout import data_format_at

    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, name="c")(x)
    assert data_format_at(None, keras.layers.ReLU()(h)) == "channels_last"
    for moved in (keras.ops.moveaxis(h, -1, 1), keras.ops.einsum("bhwc->bchw", h), keras.ops.swapaxes(h, 1, 3)):
        assert data_format_at(None, keras.layers.ReLU()(moved)) is None


def test_a_store_of_channels_first_rows_made_before_takes_no_new_rows(models, tmp_path):
    """Made before 60 #1: (8, 8, 8) rows as (C, H, W), no map_layout; new rows (H, W, C) of the same shape are refused."""
    import h5py

    import featstore
    from featstore import provenance
    from featstore.errors import StoreError
    from tests.conftest import write_data_root

    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    config = featstore.ExtractorConfig(model=str(models["cube"]), layer="c")
    featstore.extract(data, "train", store, config)
    with h5py.File(store, "r+") as f:  # the record a store made before this fix holds
        group = f["cube"]
        del group.attrs["map_layout"]
        group.attrs["fingerprint"] = provenance.fingerprint(dict(group.attrs))
    with pytest.raises(
        StoreError, match=r"map_layout: store has None, this run has 'channels_last_from_channels_first'"
    ):
        featstore.extract(data, "validation", store, config)
