"""Twelfth round (issue #19, "every file featstore writes is safe to open, every input it reads is bounded"): the
leftovers the attacks found but did not fix. A KerasHub preset's sizes that would allocate without bound, a named
preset in a store's or run's record that made featstore download, a fine-tuning's record compared with the store by
its fingerprint string alone, the default ``<store>.leaks.png`` written without the checks ``--png`` gets, and a
fine-tuning cache whose labels were trusted. Each test failed before its fix (the two honest-input guards because
what they call is new) unless its docstring says the case was already handled. Presets are tiny random-weight
towers; the fine-tuning is VGG16 at 32 pixels with random weights.
"""

from __future__ import annotations

import json
import shutil

import h5py
import pytest

from featstore import ConfigError, ExtractorConfig
from tests.test_adversarial_attack4 import cli, no_traceback


def one_line(out: str) -> str:
    """The one ``error:`` line of a refused command's output."""
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].lower().startswith("error"), out
    return lines[0]


# ================================================================== 1. preset sizes bounded before anything is built
@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """The four families, tiny, each saved as a preset folder: {family: (folder, parameters)}."""
    pytest.importorskip("keras_hub")
    import keras

    from tests.test_hub import FAMILIES

    root = tmp_path_factory.mktemp("a12")
    out = {}
    for name, (build, size, _, _) in FAMILIES.items():
        keras.utils.set_random_seed(3)
        backbone, converter = build(size)
        backbone.save_to_preset(root / name)
        converter.save_to_preset(root / name)
        out[name] = (root / name, backbone.count_params())
    return out


def crafted(presets, tmp_path, family, edit, name="crafted"):
    """A copy of a preset folder with ``edit(config.json's object)`` applied."""
    folder = tmp_path / name
    shutil.copytree(presets[family][0], folder)
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def _set(key, value, tower=None):
    def edit(data):
        (data["config"][tower]["config"] if tower else data["config"])[key] = value

    return edit


def _functional_text_encoder(data):
    """CLIP's text tower swapped for a Functional model whose Dense layer alone is 10**6 x 10**6 numbers."""
    data["config"]["text_encoder"] = {
        "module": "keras",
        "class_name": "Functional",
        "registered_name": "Functional",
        "config": {"layers": [{"class_name": "Dense", "config": {"units": 10**6}}]},
    }


@pytest.mark.parametrize(
    "family,edit,needle",
    [
        ("vit", _set("mlp_dim", 10**9), "mlp_dim is 1000000000, expected a whole number from 1 to 262144"),
        ("vit", _set("mlp_dim", 200_000), "(num_layers 2, hidden_dim 32, mlp_dim 200000) build at least 6,410,752"),
        ("vit", _set("hidden_dim", 60_000), "hidden_dim 60000"),
        ("vit", _set("num_layers", 1000), "num_layers 1000"),
        ("vit", _set("num_heads", 1000), "num_heads is 1000, more than hidden_dim 32"),
        ("vit", _set("image_shape", [4096, 4096, 3]), "makes 262,144 patches per image, over 16,384"),
        ("dinov2", _set("intermediate_dim", 250_000), "intermediate_dim 250000) build at least"),
        ("dinov2", _set("position_embedding_shape", [4096, 4096, 3]), "position_embedding_shape 4096"),
        ("clip", _set("vocabulary_size", 10**7, "text_encoder"), "vocabulary_size is 10000000, expected a whole"),
        ("clip", _set("vocabulary_size", 10**6, "text_encoder"), "(vocabulary_size 1000000, width 32) build at least"),
        ("clip", _set("max_sequence_length", 10**6, "text_encoder"), "max_sequence_length is 1000000"),
        ("clip", _set("projection_dim", 60_000), "(projection_dim 60000) build at least"),
        ("siglip", _set("intermediate_dim", 250_000, "text_encoder"), "intermediate_dim 250000) build at least"),
        ("clip", _functional_text_encoder, "its text_encoder is Functional, not a KerasHub encoder"),
    ],
)
def test_preset_sizes_that_would_allocate_without_bound_are_refused_before_building(
    presets, tmp_path, family, edit, needle
):
    """A config.json edited to intermediate_dim 10**9 (or a vocabulary of 10**7, 1000 blocks, a 60000-wide projection,
    num_heads 1000, a 4096-pixel default side with 8-pixel patches, a Functional text tower) passed every check:
    ``featstore models PATH/`` listed it and ``extract`` handed it to KerasHub, which allocated the model before the
    weights were read (memory ran out, or attention over 262,144 patches did). Now each is one line naming config.json,
    the field and the fix, and ``extract`` writes nothing."""
    folder = crafted(presets, tmp_path, family, edit)
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(model=str(folder)).validated()
    msg = str(err.value)
    assert needle in msg and "config.json" in msg and "\n" not in msg, msg
    if "build at least" in msg:
        assert "Restore the preset's config.json" in msg and "model.weights.h5 holds" in msg, msg
    from tests.test_adversarial_attack3 import tiny_pngs

    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"], "b": ["y.png"]}})
    out = no_traceback(cli("extract", "--data", data, "--split", "train", "--model", f"{folder}/",
                           "--store", tmp_path / "f.h5"))  # fmt: skip
    assert needle in one_line(out), out
    assert not (tmp_path / "f.h5").exists()


def test_weights_declared_but_not_stored_do_not_count(presets, tmp_path):
    """The bound compares with what model.weights.h5 *holds*: arrays declared huge but never written (a few KiB of
    file) do not make room for a config of 6 million parameters."""
    folder = crafted(presets, tmp_path, "vit", _set("mlp_dim", 200_000))
    with h5py.File(folder / "model.weights.h5", "a") as f:
        f.create_dataset("padding", shape=(10**9,), dtype="float32", chunks=(1 << 16,))
    assert (folder / "model.weights.h5").stat().st_size < 1 << 20
    with pytest.raises(ConfigError, match="build at least 6,410,752 parameters, but model.weights.h5 holds 23,904"):
        ExtractorConfig(model=str(folder)).validated()


def test_honest_presets_build_more_than_their_bound(presets):
    """The guard on the bound: for each family it is below what KerasHub builds, which is what the weights file holds,
    so no honest preset is refused."""
    from featstore.models.hub import HubSpec
    from featstore.models.preset_json import held_parameters, implied_parameters

    for family, (folder, parameters) in presets.items():
        HubSpec.from_model(str(folder))  # accepted
        config = json.loads((folder / "config.json").read_text())["config"]
        bound, _ = implied_parameters(config, folder / "config.json", 4096)
        assert 0 < bound <= parameters == held_parameters(folder / "model.weights.h5", family), family
