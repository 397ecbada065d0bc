"""KerasHub presets as backbones (issue 22): tiny random-weight DINOv2, ViT, CLIP and SigLIP configs saved as preset
folders and loaded through the path users take (--model PATH/), token pooling, intermediate outputs equal to KerasHub's
own, the preset's converter, stable fingerprints, resume, predict, finetune, and the offline error of a named preset."""

import json
import shutil
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, ExtractorConfig, FeatureStore, WeightsError, extract, fit, predict
from featstore.cli import app
from featstore.models.extractor import Extractor

from .conftest import interrupt_after_one_batch, write_images

keras_hub = pytest.importorskip("keras_hub")

# ImageNet mean/std as a KerasHub converter writes them (scale and offset per channel, on 0..255 pixels)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
TORCH = {"scale": list(1 / (255 * STD)), "offset": list(-MEAN / STD)}


def _dinov2(size):
    return keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64, image_shape=(size, size, 3),
        position_embedding_shape=(56, 56, 3), num_register_tokens=2,
    ), keras_hub.layers.DINOV2ImageConverter(image_size=(size, size), **TORCH)  # fmt: skip


def _vit(size):
    return keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ), keras_hub.layers.ViTImageConverter(image_size=(size, size), scale=1 / 127.5, offset=-1.0)


def _clip(size):
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64, image_shape=(size, size, 3)
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
        max_sequence_length=8,
    )  # fmt: skip
    converter = keras_hub.layers.CLIPImageConverter(image_size=(size, size), interpolation="bicubic", **TORCH)
    return keras_hub.models.CLIPBackbone(vision, text, projection_dim=16), converter


def _siglip(size):
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64, image_shape=(size, size, 3)
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
        max_sequence_length=8, projection_dim=32,
    )  # fmt: skip
    return keras_hub.models.SigLIPBackbone(vision, text), keras_hub.layers.SigLIPImageConverter(
        image_size=(size, size), scale=1 / 127.5, offset=-1.0
    )


# family -> (builder, input side, tokens before the patches, projected embedding size or 0)
FAMILIES = {"dinov2": (_dinov2, 42, 3, 0), "vit": (_vit, 32, 1, 0), "clip": (_clip, 32, 1, 16), "siglip": (_siglip, 32, 0, 32)}  # fmt: skip


def save_presets(root, families=tuple(FAMILIES)):
    """Each family (of ``families``) built with seeded random weights and saved as a preset folder under root:
    {family: (folder, backbone)}."""
    import keras

    out = {}
    for name in families:
        build, size, _, _ = FAMILIES[name]
        keras.utils.set_random_seed(3)
        backbone, converter = build(size)
        backbone.save_to_preset(root / name)
        converter.save_to_preset(root / name)
        out[name] = (root / name, backbone)
    return out


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """Each family built once with seeded random weights and saved as a preset folder; the backbones kept to compare."""
    return save_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 42, 42, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_token_pooling_shapes_through_the_users_path(presets, family):
    folder, _ = presets[family]
    _, size, _, embed = FAMILIES[family]
    side, poolings = size // (14 if family == "dinov2" else 8), ("none", "mean") + (("cls", "cls+mean") if family != "siglip" else ())  # fmt: skip
    want = {"none": (side, side, 32), "cls": (32,), "mean": (32,), "cls+mean": (64,)}
    x = np.zeros((2, size, size, 3), np.uint8)
    for pooling in poolings:
        ex = Extractor(ExtractorConfig(model=str(folder) + "/", pooling=pooling, layers=("block1", "tokens")))
        assert [f.shape[1:] for f in ex.features(x)] == [want[pooling]] * 2
        assert ex.attrs["hub_preset"] == str(folder) and ex.attrs["pooling"] == pooling
    if embed:
        ex = Extractor(ExtractorConfig(model=str(folder), layer="embedding"))
        assert ex(x).shape == (2, embed) and ex.attrs["layer"] == "embedding"


def _prepared(folder, images, size):
    """The preset's own converter on images already at the input side."""
    converter = keras_hub.layers.ImageConverter.from_preset(str(folder))
    return np.asarray(converter(images[:, :size, :size].astype(np.float32)))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_outputs_equal_keras_hubs_own(presets, family, images):
    folder, backbone = presets[family]
    _, size, prefix, embed = FAMILIES[family]
    x = _prepared(folder, images, size)
    layers = ("block1", "block2", "tokens") + (("embedding",) if embed else ())
    ex = Extractor(ExtractorConfig(model=str(folder), layers=layers))
    np.testing.assert_allclose(ex._prepare(images[:, :size, :size]), x, rtol=1e-6, atol=1e-6)  # the converter's numbers
    ours = dict(zip(layers, ex.features(images[:, :size, :size])))
    side = size // ex.spec.patch_size
    if family in ("dinov2", "vit"):  # the backbone's own output is its final tokens
        theirs = {"tokens": np.asarray(backbone({"images": x} if family == "dinov2" else x))}
    else:
        theirs = {"tokens": np.asarray(backbone.vision_encoder({"images": x}))}
    if family == "clip":
        theirs["embedding"] = np.asarray(backbone.get_vision_embeddings(x))
    if family == "siglip":
        theirs = {"embedding": np.asarray(backbone.get_vision_embeddings(x))}  # its encoder's output is the pooled head
    if family == "dinov2":  # KerasHub's own intermediate outputs: pyramid_outputs["stageK"]
        import keras

        pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)({"images": x})
        theirs.update({f"block{k}": np.asarray(pyramid[f"stage{k}"]) for k in (1, 2)})
    for name, t in theirs.items():
        want = t if name == "embedding" else t[:, prefix:].reshape(len(x), side, side, -1)  # CLS, registers dropped
        np.testing.assert_allclose(ours[name], want, rtol=1e-4, atol=1e-5, err_msg=name)
    if prefix:  # cls is token 0, not a register
        cls = Extractor(ExtractorConfig(model=str(folder), pooling="cls+mean"))(images[:, :size, :size])
        t = theirs["tokens"]
        np.testing.assert_allclose(cls, np.hstack([t[:, 0], t[:, prefix:].mean(1)]), rtol=1e-4, atol=1e-5)


def test_fingerprint_is_stable_and_follows_the_converters_numbers(presets, tmp_path):
    folder, _ = presets["vit"]
    a, b = (Extractor(ExtractorConfig(model=str(folder), pooling="cls")).attrs for _ in range(2))
    assert a["fingerprint"] == b["fingerprint"] and a["model"].startswith("keras-hub:ViTBackbone:")
    assert a["preprocess"] == "keras-hub-converter" and a["preprocess_scale"] == [1 / 127.5] * 3
    other = tmp_path / "vit_other_norm"
    shutil.copytree(folder, other)
    conv = json.loads((other / "image_converter.json").read_text())
    conv["config"].update(TORCH)
    (other / "image_converter.json").write_text(json.dumps(conv))
    c = Extractor(ExtractorConfig(model=str(other), pooling="cls")).attrs
    assert c["weights_digest"] == a["weights_digest"] and c["fingerprint"] != a["fingerprint"]
    assert c["model"] == a["model"]  # same architecture wherever it is read from


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubdata") / "data"
    for split, n, seed in (("train", 6, 1), ("validation", 3, 2), ("test", 3, 3)):
        write_images(root, split, {"cat": n, "dog": n}, seed=seed, size=48)
    return root


def test_cli_extract_resumes_then_predict_and_finetune_rebuild_it(presets, data, tmp_path, monkeypatch):
    from featstore.experiments.finetune import FinetuneConfig, finetune

    folder = tmp_path / "my_dinov2"
    shutil.copytree(presets["dinov2"][0], folder)
    store, runner = tmp_path / "f.h5", CliRunner()
    args = ["extract", "--data", str(data), "--store", str(store), "--model", f"{folder}/", "--pooling", "cls"]
    interrupt_after_one_batch(
        monkeypatch, data, "train", store, ExtractorConfig(model=str(folder), pooling="cls"), batch_size=4
    )
    res = runner.invoke(app, [*args, "--split", "train", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "resumed after 4 images" in res.output, res.output
    clean = tmp_path / "clean.h5"
    extract(data, "train", clean, ExtractorConfig(model=str(folder), pooling="cls"), batch_size=4)
    assert FeatureStore(clean).load("train")[0].tobytes() == FeatureStore(store).load("train")[0].tobytes()
    res = runner.invoke(app, [*args, "--split", "validation", "--split", "test"])
    assert res.exit_code == 0, res.output
    assert FeatureStore(store).extractors() == ["my_dinov2"]
    assert FeatureStore(store).load("test")[0].shape == (6, 32)
    run = fit(store, "dense", {"epochs": [2], "units": [8]})
    assert len(predict(run["id"], [data / "test"], store=store)) == 6
    tuned = finetune(run["id"], FinetuneConfig("layers_1", epochs=1, batch_size=4), store=store)
    assert tuned["kind"] == "finetune"
    assert len(predict(tuned["id"], [data / "test"], store=store)) == 6
    moved = tmp_path / "moved"
    folder.rename(moved)
    with pytest.raises((ConfigError, WeightsError), match="local copy of that preset folder"):
        predict(run["id"], [data / "test"], store=store)
    assert len(predict(run["id"], [data / "test"], store=store, weights=str(moved))) == 6


def test_a_named_preset_offline_fails_fast_with_two_ways_out(monkeypatch, tmp_path):
    import requests
    from keras_hub.src.utils import preset_utils

    def offline(preset, path):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "khcache"))
    t = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        ExtractorConfig(model="hub:dinov2_small", pooling="cls").validated()
    assert time.perf_counter() - t < 5
    msg = str(err.value)
    assert "Two ways out" in msg and str(tmp_path / "khcache") in msg and "keras/dinov2/keras/dinov2_small/1" in msg
    assert "--model PATH/" in msg
    res = CliRunner().invoke(
        app, ["extract", "--model", "hub:dinov2_small", "--pooling", "cls", "--data", str(tmp_path)]
    )
    assert res.exit_code == 1 and "Two ways out" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "family,kwargs,needle",
    [
        ("dinov2", {"pooling": "avg"}, "choose one of: cls, mean, cls+mean, none"),
        ("siglip", {"pooling": "cls"}, "choose one of: mean, none"),
        ("vit", {"layer": "block9"}, "choose one of: block1, block2, tokens"),
        ("clip", {"layer": "embedding", "pooling": "cls"}, "already one vector per image"),
        ("vit", {"image_size": 40}, "takes only its preset's 32x32"),
        ("dinov2", {"image_size": 30}, "multiple of its patch size 14"),
        ("vit", {"weights": "none"}, "carries its own weights"),
        ("vit", {"preprocess": "tf"}, "uses its preset's image converter"),
    ],
)
def test_bad_options_are_refused_with_the_valid_ones(presets, family, kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        ExtractorConfig(model=str(presets[family][0]), **kwargs).validated()


def test_cnn_poolings_stay_and_token_poolings_are_refused_for_cnns():
    with pytest.raises(ConfigError, match="choose one of: none, avg, max"):
        ExtractorConfig(model="vgg16", pooling="cls").validated()


def test_a_resized_dinov2_interpolates_its_position_embeddings(presets):
    ex = Extractor(ExtractorConfig(model=str(presets["dinov2"][0]), image_size=28, pooling="none"))
    assert ex(np.zeros((1, 28, 28, 3), np.uint8)).shape == (1, 2, 2, 32) and ex.attrs["input_size"] == 28
    assert ex.attrs["layout_checked"] is True  # a preset's patch grid is (side, side, C): reduce=avg takes the patches


def test_models_lists_families_and_a_presets_blocks(presets):
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    from featstore.models.tokens import FAMILIES as OURS

    assert all(e in BUILTIN_PRESETS for f in OURS.values() for e in f.examples)
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0 and all(f"{f.family}  " in res.output for f in OURS.values()), res.output
    res = CliRunner().invoke(app, ["models", str(presets["clip"][0]), "--layers"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines()[1:]]
    assert [r[0] for r in rows] == ["block1", "block2", "tokens", "embedding"]
    assert rows[-1][1] == "(16,)"
    keras_layers = [lyr.name for lyr in Extractor(ExtractorConfig(model=str(presets["clip"][0]))).model.layers]
    assert [r[-1] for r in rows[:2]] == [n for n in keras_layers if "encoder_block" in n]  # what --unfreeze-from takes
    res = CliRunner().invoke(app, ["models", str(presets["dinov2"][0])])
    assert "42x42" in res.output and "cls+mean (64,)" in res.output and "none (3, 3, 32)" in res.output


def test_a_folder_that_is_not_a_preset_says_what_is_missing(tmp_path, presets):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json is missing"):
        ExtractorConfig(model=str(tmp_path / "empty")).validated()
    half = tmp_path / "half"
    shutil.copytree(presets["vit"][0], half)
    (half / "image_converter.json").unlink()
    with pytest.raises(ConfigError, match="image_converter.json is missing"):
        ExtractorConfig(model=str(half)).validated()
