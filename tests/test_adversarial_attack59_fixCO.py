"""Attack 59: a KerasHub preset's own dtypes, and its register-token count.

#1 A CLIP/SigLIP preset whose vision_encoder config says ``mixed_bfloat16`` computed in bfloat16 (KerasHub keeps a
nested model's own dtype over the one ``from_preset`` is given) under the float32 preset's fingerprint and a float32
record. #2 ``--mixed-precision`` on such a preset left the whole vision tower in float32 (every saved tower names
``float32``), while the store recorded mixed_float16 under another fingerprint. Now featstore sets every dtype in what
KerasHub builds to its own policy, and refuses a backbone with any layer under another policy. #3 ``num_register_tokens:
-1`` passed (1 + -1 prefix tokens) while KerasHub built the class token: ``mean`` averaged it in, ``none`` was a
traceback. #4 ``null`` or ``"x"`` there was a traceback from ``int()``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, ExtractorConfig
from featstore.cli import app
from featstore.models.extractor import Extractor

from .test_hub import FAMILIES, save_presets

keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    return save_presets(tmp_path_factory.mktemp("presets"), ("dinov2", "clip", "siglip"))


def _edited(presets, family, tmp_path, edit):
    """A copy of ``family``'s preset folder whose config.json ``edit`` (a function of the config) changed."""
    folder = tmp_path / f"{family}_edited"
    shutil.copytree(presets[family][0], folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _x(family):
    size = FAMILIES[family][1]
    return np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------------ #1, #2


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_towers_own_dtype_does_not_decide_what_is_computed(presets, family, tmp_path):
    def bfloat16(config):
        config["config"]["vision_encoder"]["config"]["dtype"] = "mixed_bfloat16"  # a preset saved under that policy

    ours = Extractor(ExtractorConfig(model=str(presets[family][0]), pooling="mean"))
    edited = Extractor(ExtractorConfig(model=str(_edited(presets, family, tmp_path, bfloat16)), pooling="mean"))
    # the same fingerprint is true now: the same numbers, computed in the float32 both record
    assert edited.attrs["fingerprint"] == ours.attrs["fingerprint"] and edited.attrs["compute_dtype"] == "float32"
    np.testing.assert_array_equal(edited(_x(family)), ours(_x(family)))  # it differed by up to 9e-3 in bfloat16


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_mixed_precision_reaches_the_vision_tower(presets, family):
    folder = str(presets[family][0])
    full = Extractor(ExtractorConfig(model=folder, pooling="mean"))
    mixed = Extractor(ExtractorConfig(model=folder, pooling="mean", mixed_precision=True))
    assert mixed.attrs["compute_dtype"] == "mixed_float16" and mixed.attrs["fingerprint"] != full.attrs["fingerprint"]
    a, b = full(_x(family)), mixed(_x(family))
    assert np.abs(a - b).max() > 0  # bit-identical before: the tower stayed float32
    np.testing.assert_allclose(b, a, atol=0.05)  # float16 rounding, not another model
    blocks = [lyr for lyr in mixed.model._flatten_layers(recursive=True) if "encoder_block" in lyr.name]
    assert blocks and {lyr.dtype_policy.name for lyr in blocks} == {"mixed_float16"}


def test_a_layer_under_another_policy_is_refused_not_recorded(presets, monkeypatch):
    import featstore.models.hub as hub

    monkeypatch.setattr(hub, "with_dtype", lambda text, policy, nested: text)  # the towers keep their float32
    with pytest.raises(ConfigError, match=r"float32\), not mixed_float16 as asked") as err:
        Extractor(ExtractorConfig(model=str(presets["clip"][0]), pooling="mean", mixed_precision=True))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------------------ #3, #4


@pytest.mark.parametrize("value", [-1, -5, 1025, 10**30, None, "x", "2", 2.0, True, [2]])
def test_a_register_count_outside_its_range_or_not_a_number_is_one_line(presets, tmp_path, value):
    def registers(config):
        config["config"]["num_register_tokens"] = value

    folder = _edited(presets, "dinov2", tmp_path, registers)
    with pytest.raises(ConfigError, match=r"config.json: num_register_tokens is .*whole number from 0 to 1024") as err:
        ExtractorConfig(model=str(folder), pooling="mean").validated()
    assert "\n" not in str(err.value)
    res = CliRunner().invoke(app, ["models", str(folder), "--layers"])  # a traceback of 16 frames for null
    assert res.exit_code != 0 and "num_register_tokens is" in res.output and "Traceback" not in res.output


def test_the_register_counts_keras_hub_writes_still_load(presets, tmp_path):
    def none(config):
        config["config"].pop("num_register_tokens")

    spec = ExtractorConfig(model=str(_edited(presets, "dinov2", tmp_path, none))).backbone()
    assert (
        spec.prefix_tokens() == 1 and ExtractorConfig(model=str(presets["dinov2"][0])).backbone().prefix_tokens() == 3
    )
