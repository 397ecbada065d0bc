"""Attack 58 #1-#3 and its suspected ONNX check: a saved model's integer input refuses a --preprocess whose values it
cannot hold, --pooling pools a channels_first cut over its own height and width, reduce=avg/max averages
(tokens, dims) over the tokens and refuses vectors, and the start-up checks of --runtime onnx and --jit hold each
output to its own scale."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from featstore.errors import ConfigError


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight models at 32 px: a uint8 input rescaled inside, and a PyTorch-style channels_first port."""
    import keras

    root = tmp_path_factory.mktemp("a58")
    keras.utils.set_random_seed(0)
    x = keras.Input((32, 32, 3), dtype="uint8")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    keras.Model(x, keras.layers.Dense(2, activation="softmax", name="fc")(h)).save(root / "u8.keras")
    x = keras.Input((32, 32, 3))
    h = keras.layers.Permute((3, 1, 2), name="to_nchw")(x)
    h = keras.layers.Conv2D(8, 3, activation="relu", data_format="channels_first", name="c1")(h)
    h = keras.layers.Conv2D(6, 3, data_format="channels_first", name="c2")(h)
    h = keras.layers.ReLU(name="r")(h)  # no data_format of its own: its layout is c2's
    g = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="gap")(h)
    keras.Model(x, keras.layers.Dense(2, activation="softmax", name="fc")(g)).save(root / "nchw.keras")
    return {"u8": root / "u8.keras", "nchw": root / "nchw.keras"}


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# --- #1: an integer input and --preprocess ---


@pytest.mark.parametrize("mode", ["tf", "scale01", "imagenet-caffe", "imagenet-torch"])
def test_a_uint8_input_refuses_a_preprocess_it_cannot_hold(models, mode):
    """Keras cast --preprocess tf's [-1, 1] to uint8 0 or 1: the features of a blank image, exit 0."""
    from featstore.models.extractor import ExtractorConfig

    with pytest.raises(ConfigError, match=rf"u8.keras takes uint8 input, and --preprocess {mode} gives fractions") as e:
        ExtractorConfig(model=str(models["u8"]), preprocess=mode).backbone()
    assert "pass --preprocess none" in str(e.value) and "dtype='float32'" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_uint8_input_with_preprocess_none_extracts_what_the_model_computes_on_its_pixels(models):
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig

    ex = Extractor(ExtractorConfig(model=str(models["u8"]), layer="gap"))
    model = keras.saving.load_model(models["u8"], compile=False)
    want = keras.Model(model.inputs[0], model.get_layer("gap").output)(_images()).numpy()
    np.testing.assert_allclose(ex(_images()), want, rtol=1e-6, atol=1e-7)
    assert np.abs(want).max() > 1e-3  # not a blank image's features


def test_which_preprocess_each_input_dtype_holds():
    from featstore.models.saved import check_input_dtype, input_dtype_note

    for dtype in ("float32", "float16", "bfloat16"):
        check_input_dtype(Path("m.keras"), dtype, "tf")  # a float input takes any
        assert input_dtype_note(dtype) is None
    for dtype in ("uint8", "int16", "int32", "uint16"):
        check_input_dtype(Path("m.keras"), dtype, "none")  # whole pixels 0..255
    for dtype in ("int8", "bool"):  # not even 0..255
        with pytest.raises(
            ConfigError, match=rf"takes {dtype} input.*cannot hold.*; save the model with a float input"
        ):
            check_input_dtype(Path("m.keras"), dtype, "none")
    assert input_dtype_note("uint8").startswith("input uint8: --preprocess none (")
    assert input_dtype_note("int8").startswith("input int8: no --preprocess")


def test_featstore_models_file_says_what_its_uint8_input_takes(models):
    from featstore.report.tables import layers_table

    assert layers_table(str(models["u8"])).splitlines()[-1].startswith("input uint8: --preprocess none (")
    assert "input " not in layers_table(str(models["nchw"])).splitlines()[-1]


# --- #2: --pooling at a channels_first cut ---


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("layer", ["c2", "r"])
def test_pooling_a_channels_first_cut_gives_one_value_per_channel(models, pooling, layer):
    """It was GlobalAveragePooling2D in channels_last: (28,) per image, one value per image column."""
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig

    ex = Extractor(ExtractorConfig(model=str(models["nchw"]), layer=layer, pooling=pooling))
    assert ex.feature_shape == (6,)
    model = keras.saving.load_model(models["nchw"], compile=False)
    maps = keras.Model(model.inputs[0], model.get_layer(layer).output)(_images().astype(np.float32)).numpy()
    want = maps.mean(axis=(2, 3)) if pooling == "avg" else maps.max(axis=(2, 3))
    np.testing.assert_allclose(ex(_images()), want, rtol=1e-5, atol=1e-6)


def test_pooling_where_no_layer_says_the_layout_is_refused(models):
    from featstore.models.extractor import Extractor, ExtractorConfig

    with pytest.raises(ConfigError, match=r"--pooling avg pools over .* layer to_nchw of .*; pass --pooling none"):
        Extractor(ExtractorConfig(model=str(models["nchw"]), layer="to_nchw", pooling="avg"))


def test_layouts_found_by_the_walk():
    import keras

    from featstore.models.layout import data_format_at

    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    b = keras.layers.Add(name="b")([keras.layers.BatchNormalization(name="bn")(a), a])
    p = keras.layers.Permute((3, 1, 2), name="p")(b)
    cf = keras.layers.Conv2D(4, 1, data_format="channels_first", name="cf")(p)
    mixed = keras.layers.Add(name="mixed")([keras.layers.Permute((2, 3, 1))(cf), b])
    inner = keras.Model(x, keras.layers.ReLU()(cf), name="inner")
    outer_in = keras.Input((8, 8, 3))
    nested = keras.layers.Activation("relu", name="after")(inner(outer_in))
    assert data_format_at(None, keras.layers.ReLU()(x)) == "channels_last"  # the input: fed as (H, W, C)
    assert data_format_at(None, b) == "channels_last"
    assert data_format_at(None, cf) == "channels_first"
    assert data_format_at(None, keras.layers.ReLU()(cf)) == "channels_first"
    assert data_format_at(None, p) is None and data_format_at(None, mixed) is None
    assert data_format_at(None, nested) == "channels_first"


# --- #3: reduce=avg|max on features that are not (h, w, c) ---


@pytest.mark.parametrize("reduce", ["avg", "max"])
def test_reduce_averages_tokens_over_every_axis_but_the_last(reduce):
    from featstore.models.reshape import FeatureReshape

    X = np.random.default_rng(0).normal(size=(4, 7, 5)).astype(np.float32)
    got = FeatureReshape(reduce).fit_transform(X)
    np.testing.assert_allclose(got, X.mean(axis=1) if reduce == "avg" else X.max(axis=1), rtol=1e-6)
    maps = np.random.default_rng(1).normal(size=(4, 3, 3, 2, 5)).astype(np.float32)
    assert FeatureReshape(reduce).fit_transform(maps).shape == (4, 5)


def test_reduce_on_vectors_is_refused_where_the_user_gave_it(tmp_path):
    """fit recorded reduce=avg for features it flattened: vectors (a pooled store) have nothing to reduce."""
    import featstore
    from featstore.models.reshape import FeatureReshape, check_reduce
    from featstore.store.writer import write_arrays

    X = np.random.default_rng(0).normal(size=(12, 9)).astype(np.float32)
    assert np.array_equal(FeatureReshape("avg").fit_transform(X), X)  # as it is: a scikit-learn transformer still
    store = tmp_path / "vec.h5"
    for split in ("train", "validation", "test"):
        write_arrays(store, "e", split, X, np.arange(12) % 2, ["a", "b"])
    for call in (
        lambda: featstore.fit(store, "logreg", {"reduce": ["max"]}),
        lambda: featstore.fewshot(store, "logreg", {"reduce": "avg"}, shots=[1], trials=1),
    ):
        with pytest.raises(
            ConfigError, match=r"and extractor 'e''s features are stored as vectors \(shape \(9,\) per "
        ):
            call()
    assert not (tmp_path / "vec.runs").exists() or not any((tmp_path / "vec.runs").iterdir())
    with pytest.raises(ConfigError, match=r"nothing to reduce; pass --reduce flatten"):
        check_reduce("avg", (9,), "x", "--reduce flatten")
    check_reduce("avg", (7, 5), "x")  # tokens: averaged
    check_reduce("flatten", (9,), "x")


def test_a_reshape_fitted_before_the_fix_predicts_as_it_was_fitted():
    """A run saved before: no pooled_; its (tokens, dims) were flattened, its maps pooled. It keeps predicting so."""
    from featstore.models.reshape import FeatureReshape

    old = FeatureReshape("avg").fit(np.ones((2, 7, 5), np.float32))
    del old.pooled_
    assert old.transform(np.ones((2, 7, 5), np.float32)).shape == (2, 35)
    old = FeatureReshape("avg").fit(np.ones((2, 3, 3, 5), np.float32))
    del old.pooled_
    assert old.transform(np.ones((2, 3, 3, 5), np.float32)).shape == (2, 5)


def test_fit_with_reduce_avg_on_tokens_fits_on_the_token_average(tmp_path):
    from featstore.experiments.classifiers import build_classifier

    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    X = (rng.normal(size=(30, 7, 5)) + y[:, None, None]).astype(np.float32)
    pipe = build_classifier("logreg", {"reduce": "avg"}).fit(X, y)
    assert pipe.steps[-1][1].n_features_in_ == 5  # was 35: flattened, recorded as avg


def test_a_dense_head_saved_and_loaded_keeps_its_token_average(tmp_path):
    from featstore.experiments.classifiers import build_classifier
    from featstore.runs.artifacts import load_estimator, save_estimator

    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    X = (rng.normal(size=(20, 7, 5)) + y[:, None, None]).astype(np.float32)
    pipe = build_classifier("dense", {"reduce": "max", "units": 4, "epochs": 1}).fit(X, y)
    loaded = load_estimator(tmp_path, save_estimator(pipe, tmp_path))
    np.testing.assert_allclose(loaded.predict_proba(X), pipe.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_fine_tuning_pools_a_cut_as_its_dense_head_was_fitted():
    """The Keras layer on the cut equals FeatureReshape: (tokens, dims) were a GlobalAveragePooling2D traceback."""
    from featstore.models.finetuned import _reduce_layer
    from featstore.models.reshape import FeatureReshape

    for shape in ((7, 5), (3, 3, 5), (2, 3, 3, 5)):
        X = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
        for reduce in ("flatten", "avg", "max"):
            got = np.asarray(_reduce_layer(reduce, len(shape))(X))
            np.testing.assert_allclose(got, FeatureReshape(reduce).fit_transform(X), rtol=1e-5, atol=1e-6)


def test_no_default_or_grid_of_a_classifier_reduces():
    """Vectors (a pooled store) are refused a reduce only where the user gave one: no default, no default grid."""
    from featstore.experiments.classifiers import get_classifier, list_classifiers

    for name in list_classifiers():
        spec = get_classifier(name)
        assert "reduce" not in spec.grid
        assert "reduce" not in spec.params or spec.params["reduce"].default == "flatten"


# --- suspected: the start-up checks, each output against its own scale ---


def _two_outputs(small_error: float):
    rng = np.random.default_rng(0)
    big, small = rng.normal(size=(4, 3)) * 1e4, rng.normal(size=(4, 2))
    return [big, small], [big, small + small_error]


def test_the_onnx_check_holds_each_output_to_its_own_scale():
    from featstore.models.onnx_runtime import check_agreement

    want, got = _two_outputs(0.5)  # 50 % of the small layer's features: well within 1e-4 of the big one's
    with pytest.raises(ConfigError, match=r"output 2 of 2 differs from Keras's by up to 0.5 \(its largest feature"):
        check_agreement(lambda x: x, lambda x: want, lambda x: got, 8, "m", rows=4)
    want, got = _two_outputs(0.0)
    assert check_agreement(lambda x: x, lambda x: want, lambda x: got, 8, "m", rows=4) == 0.0


def test_the_jit_check_holds_each_output_to_its_own_scale():
    from featstore.models.forward import check_jit

    want, got = _two_outputs(0.5)
    config = SimpleNamespace(image_size=8, mixed_precision=False)
    with pytest.raises(ConfigError, match=r"differs from the uncompiled model by up to 0.5"):
        check_jit(lambda x: x, lambda x: want, lambda x: got, config, 4, "m")


def test_probe_and_export_reduce_tokens_and_probe_refuses_vectors(tmp_path):
    """probe --reduce avg on vectors recorded "averaged over space" for a flatten; export --features avg flattened
    (tokens, dims) into 35 values while its file said avg (attack 58 #3, the probe and export halves)."""
    import featstore
    from featstore.store.writer import write_arrays

    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    tokens, vectors = tmp_path / "tok.h5", tmp_path / "vec.h5"
    for split in ("train", "validation", "test"):
        write_arrays(
            tokens, "e", split, (rng.normal(size=(30, 7, 5)) + y[:, None, None]).astype(np.float32), y, list("abc")
        )
        write_arrays(vectors, "e", split, (rng.normal(size=(30, 9)) + y[:, None]).astype(np.float32), y, list("abc"))
    out = featstore.export(tokens, "train", tmp_path / "t.npz", features="avg")
    with np.load(out.path) as z:
        got = z["features"]
    X, _ = featstore.FeatureStore(tokens).load("train")
    assert out.n_features == 5 and np.allclose(got, X.mean(axis=1))
    summary = featstore.probe(tokens, reduce="avg", knn=False)
    assert summary["cells"][0]["dim"] == 5 and "averaged over space or tokens" in summary["protocol"]["preprocessing"]
    with pytest.raises(ConfigError, match=r"extractor 'e''s features are stored as vectors .*pass --reduce flatten"):
        featstore.probe(vectors, reduce="avg", knn=False)
