"""Eleventh attack (issue #19, "inputs bounded, one clear message"): KerasHub preset folders and ``hub:<preset>`` names.
Crafted ``config.json`` and ``image_converter.json`` (not objects, mistyped or missing numbers, a zero patch, a FIFO in a
file's place, NaN scales, a registered_name naming another class, a Lambda layer), truncated weights and handles of
other URL schemes. Each test failed before its fix. Presets are tiny random-weight ViT and CLIP towers saved as
tests/test_hub.py saves them; only the tests that build a model import TensorFlow's graph code.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from featstore import ConfigError, ExtractorConfig
from featstore.models.extractor import Extractor
from tests.test_adversarial_attack4 import cli, no_traceback

keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """A tiny ViT and CLIP, each saved as a preset folder: {family: folder}."""
    import keras

    from tests.test_hub import _clip, _vit

    root = tmp_path_factory.mktemp("a11")
    out = {}
    for name, build in (("vit", _vit), ("clip", _clip)):
        keras.utils.set_random_seed(3)
        backbone, converter = build(32)
        backbone.save_to_preset(root / name)
        converter.save_to_preset(root / name)
        out[name] = root / name
    return out


def crafted(presets, tmp_path, family="vit", config=None, converter=None, name="crafted"):
    """A copy of a preset folder with ``config(dict)`` / ``converter(dict)`` applied to its JSON files."""
    folder = tmp_path / name
    shutil.copytree(presets[family], folder)
    for file, edit in (("config.json", config), ("image_converter.json", converter)):
        if edit:
            data = json.loads((folder / file).read_text())
            data = edit(data) if edit(data) is not None else data
            (folder / file).write_text(json.dumps(data))
    return folder


def _set(key, value, where="config"):
    def edit(data):
        data[where][key] = value

    return edit


def _without(key):
    def edit(data):
        data["config"].pop(key, None)

    return edit


# ------------------------------------------------------------------ a crafted config.json
@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: [1, 2], "holds a JSON list"),
        (lambda c: {**c, "config": [1]}, "reading the ViTBackbone config"),
        (lambda c: {**c, "class_name": ["ViTBackbone"]}, "choose one of"),
        (_set("patch_size", 0), "patch_size is 0"),
        (_set("patch_size", -8), "patch_size is -8"),
        (_set("patch_size", "8"), "patch_size is '8'"),
        (_set("patch_size", []), "patch_size is []"),
        (_without("image_shape"), "KeyError 'image_shape'"),
        (_set("image_shape", None), "image_shape is None"),
        (_without("hidden_dim"), "KeyError 'hidden_dim'"),
        (_set("hidden_dim", "x"), "hidden_dim is 'x'"),
        (_set("num_layers", -3), "num_layers is -3"),
        (_set("num_layers", 10**7), "num_layers is 10000000"),
    ],
)
def test_a_crafted_config_json_is_refused_with_one_message(presets, tmp_path, edit, needle):
    """A config.json that was not an object, or whose patch_size, image_shape, hidden_dim or num_layers were missing or
    mistyped, raised AttributeError, KeyError, TypeError, IndexError, ValueError or ZeroDivisionError (patch 0) from
    ``HubSpec.from_model``: a traceback from ``featstore models PATH/`` and ``extract``. A negative patch or string
    numbers were accepted until KerasHub failed at build time; num_layers 10**7 was accepted and ``--layers`` listed
    ten million blocks (10**12: memory ran out)."""
    folder = crafted(presets, tmp_path, config=edit)
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(model=str(folder)).validated()
    assert needle in str(err.value), str(err.value)
    out = no_traceback(cli("models", f"{folder}/", "--layers"))
    assert needle in out, out


def test_a_fifo_in_place_of_config_json_is_refused_not_waited_on(presets, tmp_path):
    """A FIFO named config.json (or image_converter.json) made ``read_text`` block forever: ``featstore models PATH/``
    and ``extract`` hung without a word; a huge file was read whole."""
    folder = crafted(presets, tmp_path)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    with pytest.raises(ConfigError, match="not a regular file of at most 1 MiB"):
        ExtractorConfig(model=str(folder)).validated()
    big = crafted(presets, tmp_path, name="big")
    with open(big / "image_converter.json", "a") as fh:
        fh.write(" " * (1 << 20))
    with pytest.raises(ConfigError, match="not a regular file of at most 1 MiB"):
        ExtractorConfig(model=str(big)).validated()


def test_a_deeply_nested_config_json_is_refused(presets, tmp_path):
    """An extra key nesting lists 700 deep (well under 1 MiB, and json.loads read it) made the architecture digest's
    recursion overflow: RecursionError, a traceback."""
    deep = "[" * 700 + "]" * 700
    folder = crafted(presets, tmp_path)
    text = (folder / "config.json").read_text().replace('"num_heads": 2', f'"junk": {deep}, "num_heads": 2')
    (folder / "config.json").write_text(text)
    with pytest.raises(ConfigError, match="nests deeper than 32 levels"):
        ExtractorConfig(model=str(folder)).validated()


# ------------------------------------------------------------------ a crafted image_converter.json
@pytest.mark.parametrize(
    "edit,needle",
    [
        (_set("scale", float("nan")), "scale is nan"),
        (_set("scale", float("inf")), "scale is inf"),
        (_set("offset", [0.0, 1e300, 0.0]), "offset is [0.0, 1e+300, 0.0]"),
        (_set("scale", "abc"), "scale is 'abc'"),
        (_set("scale", {"a": 1}), "scale is {'a': 1}"),
        (_set("scale", 10**400), "scale is 1000"),
        (lambda c: {**c, "config": [1]}, "its config is not an object"),
        (lambda c: [1], "holds a JSON list"),
    ],
)
def test_a_crafted_image_converter_is_refused(presets, tmp_path, edit, needle):
    """A NaN, infinite or huge scale or offset was accepted: every stored feature was NaN, with a fingerprint and no
    word. A string, a dict or a 400-digit integer raised ValueError/TypeError/OverflowError; a converter that was not
    an object, AttributeError: each a traceback."""
    folder = crafted(presets, tmp_path, converter=edit)
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(model=str(folder)).validated()
    assert needle in str(err.value), str(err.value)


# ------------------------------------------------------------------ what KerasHub builds is what featstore records
def test_a_registered_name_naming_another_class_is_refused(presets, tmp_path):
    """featstore read ``class_name`` (ViTBackbone: recorded, fingerprinted, cut as a ViT) while KerasHub builds what
    ``registered_name`` names: a DINOv2 or a plain Functional model was built and failed inside KerasHub with a
    TypeError/ValueError traceback (a class cut the same way would have been recorded under the other's name)."""
    for registered in ("keras_hub>DINOV2Backbone", "Functional"):
        folder = crafted(presets, tmp_path, config=lambda c, r=registered: {**c, "registered_name": r}, name=registered)
        with pytest.raises(ConfigError, match=f"registered_name {registered}; KerasHub would build the latter"):
            ExtractorConfig(model=str(folder)).validated()


def test_a_lambda_layer_in_a_preset_is_refused_with_one_message(presets, tmp_path):
    """A CLIP preset whose vision encoder is a Functional model with a Python-lambda Lambda layer: Keras's safe mode
    refused it (no code ran) but the ValueError came out of ``Extractor`` as a traceback; truncated weights did the
    same with an OSError from h5py."""
    import keras

    marker = str(tmp_path / "ran")
    inp = keras.Input((32, 32, 3))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: (open(marker, "w").close(), x)[1])(inp))
    evil = keras.saving.serialize_keras_object(model)
    os.remove(marker)  # building the model ran the lambda once, here: loading it must not

    def swap(c):
        vision = c["config"]["vision_encoder"]["config"]
        evil["config"].update({k: vision[k] for k in ("patch_size", "hidden_dim", "num_layers", "image_shape")})
        c["config"]["vision_encoder"] = evil

    folder = crafted(presets, tmp_path, family="clip", config=swap)
    # since attack 12 a nested model that is not a KerasHub encoder is refused before Keras reads it at all
    with pytest.raises(ConfigError, match="its vision_encoder is Functional, not a KerasHub encoder"):
        Extractor(ExtractorConfig(model=str(folder)))
    assert not os.path.exists(marker)
    truncated = crafted(presets, tmp_path, name="truncated")
    with open(truncated / "model.weights.h5", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ConfigError, match="KerasHub could not build truncated/.*truncated file"):
        Extractor(ExtractorConfig(model=str(truncated)))
    assert np.isfinite(Extractor(ExtractorConfig(model=str(presets["vit"])))(np.zeros((1, 32, 32, 3), np.uint8))).all()


# ------------------------------------------------------------------ hub: names of other URL schemes
@pytest.mark.parametrize("name", ["file:///etc", "http://127.0.0.1:9/x", "gs://bucket/preset", "s3://b/p"])
def test_hub_names_of_other_schemes_are_refused(name):
    """``hub:file:///folder`` was copied through TensorFlow's file systems into Keras's cache and loaded (``gs://``,
    ``s3://`` would be fetched the same way); ``hub:http://...`` failed with advice to put it in kagglehub's cache
    "under models/http://...". The docs name built-in names, kaggle:// and hf:// only."""
    with pytest.raises(ConfigError, match="hub: takes a built-in preset name, kaggle://"):
        ExtractorConfig(model=f"hub:{name}").validated()


# ------------------------------------------------------------------ --weights for a run made with a preset
def test_weights_naming_a_file_for_a_preset_run_is_refused_not_loaded_as_a_model(presets):
    """``predict --weights PRESET/model.weights.h5`` for a run made with a preset folder read the file as a saved
    model: refused as "a legacy .h5 model ... pass --trust-model if you made the file yourself", and with
    --trust-model a legacy .h5 *model* (code and all) would be loaded in the preset's place. --weights for a preset run
    names a local copy of the preset folder."""
    from featstore.runs.apply import rebuild_extractor

    attrs = Extractor(ExtractorConfig(model=str(presets["vit"]), pooling="cls")).attrs
    for trust in (False, True):
        with pytest.raises(ConfigError) as err:
            rebuild_extractor(attrs, weights=str(presets["vit"] / "model.weights.h5"), trust_model=trust)
        msg = str(err.value)
        assert "names a local copy of that preset folder" in msg and "not a file" in msg, msg
        assert "legacy" not in msg and "not a Keras model" not in msg, msg  # never read as a saved model
    assert rebuild_extractor(attrs, weights=str(presets["vit"])).attrs["fingerprint"] == attrs["fingerprint"]


# ------------------------------------------------------------------ a fine-tuned ViT preset loads back
def test_a_finetuned_vit_preset_can_be_applied(presets, tmp_path):
    """``featstore finetune`` of a run made with a ViT preset wrote its model.keras, but every later ``predict`` failed:
    "run artifact ... cannot be loaded by this Keras (Unrecognized keyword arguments passed to
    ViTPatchingAndEmbedding: num_patches, num_positions); fine-tune again", and fine-tuning again wrote the same
    unloadable file (KerasHub's ViT layers write config keys their __init__ refuses; ViTEncoderBlock: key_dim)."""
    from featstore import extract, fit, predict
    from featstore.experiments.finetune import FinetuneConfig, finetune
    from tests.conftest import write_images

    data, store = tmp_path / "data", tmp_path / "f.h5"
    for split, n, seed in (("train", 4, 1), ("validation", 2, 2), ("test", 2, 3)):
        write_images(data, split, {"cat": n, "dog": n}, seed=seed, size=40)
        extract(data, split, store, ExtractorConfig(model=str(presets["vit"]), pooling="cls"), batch_size=4)
    run = fit(store, "dense", {"epochs": [1], "units": [4]})
    tuned = finetune(run["id"], FinetuneConfig("transformer_block_2", epochs=1, batch_size=4), store=store)
    assert len(predict(tuned["id"], [data / "test"], store=store)) == 4


def test_edited_preprocessing_numbers_in_a_preset_runs_record_are_refused(presets, tmp_path):
    """A fine-tuned preset is fed by ``extractor_attrs.preprocess_scale``/``offset`` of its run.json, which were
    fingerprinted but never checked against the fingerprint: scale 1e30 gave four confident, identical predictions
    with rc 0 (the features' fingerprint, compared only as a string, still matched)."""
    from featstore import extract, fit
    from featstore.runs.files import BrokenRunError
    from featstore.runs.kinds import _check_features_record
    from tests.conftest import write_images

    write_images(tmp_path / "data", "train", {"cat": 3, "dog": 3}, seed=1, size=40)
    store = tmp_path / "f.h5"
    extract(tmp_path / "data", "train", store, ExtractorConfig(model=str(presets["vit"]), pooling="cls"))
    run = fit(store, "logreg")
    folder = tmp_path / "f.runs" / run["id"]
    rec = json.loads((folder / "run.json").read_text())
    _check_features_record(rec, "run.json", folder)  # as written: accepted
    rec["extractor_attrs"]["preprocess_scale"] = [1e30] * 3
    with pytest.raises(BrokenRunError, match="do not hash to the fingerprint"):
        _check_features_record(rec, "run.json", folder)


def test_a_clip_backbone_around_another_familys_vision_tower_is_refused(tmp_path):
    """A CLIPBackbone saved around a SigLIP vision encoder (KerasHub builds and saves it; its class_name and
    registered_name say CLIPBackbone) built, then featstore's unrolling raised AttributeError ('SigLIPVisionEncoder'
    object has no attribute 'pre_layer_norm'): a traceback."""
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64, image_shape=(32, 32, 3)
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=50, embedding_dim=32, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
        max_sequence_length=8,
    )  # fmt: skip
    folder = tmp_path / "mixed"
    keras_hub.models.CLIPBackbone(vision, text, projection_dim=16).save_to_preset(folder)
    keras_hub.layers.CLIPImageConverter(image_size=(32, 32)).save_to_preset(folder)
    with pytest.raises(ConfigError, match="not those of the CLIPBackbone featstore unrolls"):
        Extractor(ExtractorConfig(model=str(folder)))


@pytest.mark.parametrize("model", ["", "hub:"])
def test_an_empty_model_name_is_not_the_current_folder(presets, monkeypatch, model):
    """``--model ""`` (an unset ``$MODEL``) and ``--model hub:`` were the current folder (``Path("")`` is ``.``): run
    inside a preset folder, ``extract`` used that preset without a word; elsewhere the error named the current folder
    as an incomplete preset."""
    monkeypatch.chdir(presets["vit"])
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(model=model).validated()
    assert str(presets["vit"]) not in str(err.value), err.value


# ------------------------------------------------------------------ a named preset of another family
def test_a_named_preset_of_another_family_is_refused_before_its_weights_are_fetched(presets, monkeypatch, tmp_path):
    """``hub:gemma2_27b_en`` (a built-in preset, but no vision backbone) and a ``kaggle://`` handle of a BertBackbone
    fetched config.json, then model.weights.h5 (tens of GB for the large ones), then image_converter.json, and only
    then read the class and refused it."""
    from keras_hub.src.utils import preset_utils

    bert = crafted(presets, tmp_path, config=lambda c: {**c, "class_name": "BertBackbone"})
    fetched = []

    def cache(preset, path):
        fetched.append(path)
        return str(bert / path)

    monkeypatch.setattr(preset_utils, "get_file", cache)
    with pytest.raises(ConfigError, match="choose one of: clip_vit"):
        ExtractorConfig(model="hub:gemma2_2b_en").validated()
    assert fetched == []
    with pytest.raises(ConfigError, match="BertBackbone"):
        ExtractorConfig(model="hub:kaggle://someone/bert/keras/bert_tiny/1").validated()
    assert fetched == ["config.json"]


def test_cls_pooling_of_a_vit_without_a_class_token_is_refused(tmp_path):
    """A ViT saved with ``use_class_token=False`` (KerasHub builds it) has no class token, but --pooling cls was
    accepted for every ViT: the stored "cls" features were the first patch token, without a word."""
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
        use_class_token=False,
    )  # fmt: skip
    folder = tmp_path / "vit_no_cls"
    backbone.save_to_preset(folder)
    keras_hub.layers.ViTImageConverter(image_size=(32, 32)).save_to_preset(folder)
    for pooling in ("cls", "cls+mean"):
        with pytest.raises(ConfigError, match="choose one of: mean, none"):
            ExtractorConfig(model=str(folder), pooling=pooling).validated()
    assert ExtractorConfig(model=str(folder), pooling="mean").validated().pooling == "mean"


def test_a_huge_weights_file_is_refused_before_it_is_hashed(presets, tmp_path, monkeypatch):
    """A sparse 65 GiB model.weights.h5 (no disk used) was hashed in full before anything was checked (and then
    handed to KerasHub): minutes to hours of reading zeros, with no message."""
    import featstore.models.hub as hub

    folder = crafted(presets, tmp_path)
    os.truncate(folder / "model.weights.h5", 65 << 30)

    def no_hash(path):
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(hub, "sha256_file", no_hash)
    with pytest.raises(ConfigError, match="larger than 64 GiB"):
        ExtractorConfig(model=str(folder)).validated()
