"""Your own saved Keras model as a backbone, and several layers in one pass (issue 10)."""

import logging

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, ExtractorConfig, FeatureStore, WeightsError, extract, fit, predict
from featstore.cli import app
from featstore.models.extractor import Extractor, to_gray

from .conftest import write_images


def _small_cnn(seed: int = 0, channels: int = 1, lambda_layer: bool = False):
    """A tiny gray CNN classifier: conv1 -> pool1 -> flatten -> hidden (Dense 8) -> out (Dense 3, softmax)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, channels))
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(3, activation="softmax", name="out")(x)
    return keras.Model(inp, out, name="small_cnn")


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "my_cnn.keras"
    _small_cnn().save(path)
    return path


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "data"
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        write_images(root, split, {"a": 4, "b": 4}, seed=seed, size=20)
    return root


def test_saved_model_is_a_backbone_cut_before_its_last_dense(cnn_file, small_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="featstore"):
        r = extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(cnn_file)))
    assert r.extractor == "my_cnn" and r.feature_shape == (8,) and r.rows == 8
    assert "cutting at 'hidden', the layer feeding its classifier 'out'" in caplog.text
    a = FeatureStore(tmp_path / "f.h5").metadata()
    from featstore.models.weights import sha256_file

    assert a["model"] == f"keras-file:{sha256_file(cnn_file)}" and a["model_sha256"] == sha256_file(cnn_file)
    assert (a["layer"], a["input_size"], a["input_channels"], a["preprocess"], a["weights_source"]) == (
        "hidden",
        16,
        1,
        "none",
        "model-file",
    )


def test_gray_model_sees_the_luma_of_the_images(cnn_file):
    import keras

    ex = Extractor(ExtractorConfig(model=str(cnn_file), layer="flatten"))
    rgb = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    want = keras.Model(ex.model.input, ex.model.get_layer("flatten").output)(to_gray(rgb)).numpy()
    np.testing.assert_allclose(ex(rgb), want, rtol=1e-5, atol=1e-5)  # graph vs eager: float rounding only
    gray = np.repeat(rgb[..., :1], 3, axis=3)  # a gray image as RGB: converted back exactly
    np.testing.assert_array_equal(to_gray(gray)[..., 0], rgb[..., 0].astype(np.float32))


def test_predict_rebuilds_from_the_same_file_and_refuses_another(cnn_file, small_data, tmp_path):
    import shutil

    model = tmp_path / "m.keras"
    shutil.copy(cnn_file, model)
    store = tmp_path / "f.h5"
    for split in ("train", "validation", "test"):
        extract(small_data, split, store, ExtractorConfig(model=str(model)))
    run = fit(store, "logreg", runs=tmp_path / "runs")
    rows = predict(run["id"], [small_data / "test"], store=store, runs=tmp_path / "runs")
    assert len(rows) == 8 and all(r["label"] in ("a", "b") for r in rows)
    _small_cnn(seed=5).save(model)  # retrained in place: other weights, other file
    with pytest.raises(WeightsError, match="are not the ones the run was fitted on"):
        predict(run["id"], [small_data / "test"], store=store, runs=tmp_path / "runs")


def test_multi_layer_pass_equals_single_layer_extractions_bit_for_bit(data_root, tmp_path):
    cfg = dict(model="vgg16", image_size=32, weights="none", seed=3)
    layers = ("block1_pool", "block2_pool", "block3_pool")
    r = extract(data_root, "train", tmp_path / "multi.h5", ExtractorConfig(**cfg, layers=layers), batch_size=5)
    assert r.extractors == [f"vgg16@{lyr}" for lyr in layers]
    multi = FeatureStore(tmp_path / "multi.h5")
    fps = set()
    for lyr in layers:
        extract(data_root, "train", tmp_path / f"{lyr}.h5", ExtractorConfig(**cfg, layer=lyr), batch_size=5)
        single = FeatureStore(tmp_path / f"{lyr}.h5")
        Xm, ym = multi.load("train", f"vgg16@{lyr}")
        Xs, ys = single.load("train")
        assert Xm.tobytes() == Xs.tobytes() and np.array_equal(ym, ys)
        assert multi.metadata(f"vgg16@{lyr}")["fingerprint"] == single.metadata()["fingerprint"]
        fps.add(single.metadata()["fingerprint"])
    assert len(fps) == 3
    again = extract(data_root, "train", tmp_path / "multi.h5", ExtractorConfig(**cfg, layers=layers))
    assert again.skipped


def test_multi_layer_resume_when_one_group_is_a_batch_ahead(data_root, tmp_path):
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=3, layers=("block1_pool", "block2_pool"))
    path = tmp_path / "m.h5"
    extract(data_root, "train", path, cfg, batch_size=4)
    clean = {g: FeatureStore(path).load("train", g) for g in ("vgg16@block1_pool", "vgg16@block2_pool")}
    with h5py.File(path, "a") as f:  # as if killed between the two groups' commits of the third batch
        for g, rows in (("vgg16@block1_pool", 8), ("vgg16@block2_pool", 4)):
            f[g]["train"].attrs["commit"] = np.array([rows, 0, rows], dtype=np.int64)
            f[g]["train"].attrs["complete"] = False
    r = extract(data_root, "train", path, cfg, batch_size=4)
    assert r.resumed_from == 4
    for g, (X, y) in clean.items():
        X2, y2 = FeatureStore(path).load("train", g)
        assert X2.tobytes() == X.tobytes() and np.array_equal(y, y2)


def test_models_lists_the_layers_of_a_saved_model(cnn_file):
    res = CliRunner().invoke(app, ["models", str(cnn_file), "--layers"])
    assert res.exit_code == 0, res.output
    assert "conv1" in res.output and "(7, 7, 4)" in res.output
    assert any("hidden" in ln and "default cut" in ln for ln in res.output.splitlines())


def test_cli_extracts_several_layers_of_a_saved_model(cnn_file, small_data, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "extract",
            "--model",
            str(cnn_file),
            "--layer",
            "pool1,hidden",
            "--data",
            str(small_data),
            "--store",
            str(tmp_path / "f.h5"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert FeatureStore(tmp_path / "f.h5").extractors() == ["my_cnn@hidden", "my_cnn@pool1"]


def _bad_file(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nope.keras"
    if kind == "not-a-model":
        p = tmp_path / "x.keras"
        p.write_text("not a model")
        return p
    if kind == "legacy-h5":
        p = tmp_path / "m.h5"
        _small_cnn().save(p)
        return p
    if kind == "lambda":
        p = tmp_path / "lam.keras"
        _small_cnn(lambda_layer=True).save(p)
        return p
    p = tmp_path / "two.keras"
    _small_cnn(channels=2).save(p)
    return p


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "does not exist"),
        ("not-a-model", "is not a Keras model"),
        ("legacy-h5", "legacy .h5 model.*--trust-model"),
        ("lambda", "Lambda layer"),
        ("two-channels", "2-channel images"),
    ],
)
def test_bad_model_files_are_refused_clearly(tmp_path, small_data, kind, message):
    with pytest.raises(ConfigError, match=message):
        extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(_bad_file(tmp_path, kind))))
    assert not (tmp_path / "f.h5").exists()


def test_trusted_legacy_h5_loads(tmp_path, small_data):
    path = _bad_file(tmp_path, "legacy-h5")
    r = extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(path), trust_model=True))
    assert r.feature_shape == (8,)


def test_layer_errors_and_the_softmax_warning(cnn_file, small_data, tmp_path, caplog):
    with pytest.raises(ConfigError, match="unknown layer 'hiden'.*Did you mean: hidden"):
        extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(cnn_file), layer="hiden"))
    with pytest.raises(ConfigError, match="does not apply to a saved model"):
        extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(cnn_file), weights="hed-bsds500"))
    with pytest.raises(ConfigError, match="--preprocess is for saved models"):
        extract(
            small_data,
            "train",
            tmp_path / "f.h5",
            ExtractorConfig(model="vgg16", weights="none", image_size=32, preprocess="tf"),
        )
    with pytest.raises(ConfigError, match="unknown preprocess 'half'"):
        extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(cnn_file), preprocess="half"))
    with caplog.at_level(logging.WARNING, logger="featstore"):
        extract(small_data, "train", tmp_path / "g.h5", ExtractorConfig(model=str(cnn_file), layer="out"))
    assert "classifier's output" in caplog.text


def test_a_saved_sequential_model_is_a_backbone_too(tmp_path, small_data):
    import keras

    keras.utils.set_random_seed(1)
    seq = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, name="c"),
            keras.layers.Flatten(name="f"),
            keras.layers.Dense(6, name="d"),
            keras.layers.Dense(2, name="o"),
        ]
    )
    seq.save(tmp_path / "seq.keras")
    r = extract(small_data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(tmp_path / "seq.keras")))
    assert r.extractor == "seq" and r.feature_shape == (6,)  # cut at d, before the last Dense; RGB input kept


def test_a_model_saved_unzipped_is_named_as_one_with_a_fix_that_works(tmp_path, monkeypatch):
    """Attack 21 finding 11: ``model.save(folder, zipped=False)`` (a folder of the .keras zip's parts) was taken for a
    KerasHub preset and answered with the list of transformer backbones. It is named as what it is, and the command the
    message advises, run in a shell from another folder on a folder whose name has a space (attack 22 #4: the first
    advice worked only for a folder in the current one), makes the file ``--model my_cnn.keras`` then reads."""
    import shutil
    import subprocess

    folder = tmp_path / "saved models" / "my_cnn"
    _small_cnn().save(folder, zipped=False)
    res = CliRunner().invoke(app, ["models", str(folder), "--layers"])
    assert res.exit_code != 0
    assert "is a Keras model saved unzipped" in res.output and "DINOV2Backbone" not in res.output
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    if shutil.which("zip") and shutil.which("bash"):
        advised = " ".join(res.output.split()).split("here: ")[1].split(", or save")[0]
        subprocess.run(["bash", "-c", advised], check=True)
    else:  # what the advised `(cd DIR && zip -qr - .) > my_cnn.keras` makes
        shutil.move(shutil.make_archive(str(here / "my_cnn"), "zip", folder), here / "my_cnn.keras")
    res = CliRunner().invoke(app, ["models", "my_cnn.keras", "--layers"])
    assert res.exit_code == 0 and "conv1" in res.output, res.output
