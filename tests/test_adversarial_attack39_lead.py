"""Attack 39 (on the fixes of 2026-12-06 after 12:05): cases of the activation bound, the private name Keras is given,
Keras's cache check and nested models, each one line (or the right result) where it was a traceback or a signal."""

from __future__ import annotations

import os

import pytest

from featstore.errors import ConfigError


def test_a_long_suffix_less_blob_name_gets_a_private_name_within_name_max(tmp_path):
    """#5: the ending was added to a 250-byte blob name: ENAMETOOLONG making the private link, a traceback."""
    from featstore.models.file_format import keras_name

    blob = tmp_path / ("m" * 250)
    blob.write_bytes(b"PK\x03\x04" + bytes(60))
    fd = os.open(blob, os.O_RDONLY)
    try:
        assert keras_name(blob, None, fd) == "model.keras"
        assert keras_name(tmp_path / "4f2a9c0e", None, fd) == "4f2a9c0e.keras"  # a short one keeps its name
    finally:
        os.close(fd)


def test_roots_read_only_keras_cache_is_not_called_writable_by_others(tmp_path, monkeypatch):
    """#9: a site-wide cache of root's, 0755, lacking a file: "which other users can write", of a folder only root can."""
    from featstore.models.weights import _others_write

    site = tmp_path / "sitekeras"
    (site / "models").mkdir(parents=True)
    os.chown(site / "models", 0, -1) if os.geteuid() == 0 else pytest.skip("chown to root needs root")
    (site / "models").chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: 54321)  # an ordinary user
    assert _others_write(site / "models", site) is None
    (site / "models").chmod(0o775)
    assert _others_write(site / "models", site) == site / "models"


def test_a_nested_model_on_unknown_sides_is_measured_at_the_input_side():
    """#7: a model nested on (None, None, 3) inputs counted its unknown sides 1: its 16 GiB Conv2D passed as 16 KiB and
    extract died of SIGSEGV."""
    import keras

    from featstore.models.activations import MAX_ACTIVATION_BYTES, check_activations

    i = keras.Input((None, None, 3))
    inner = keras.Model(i, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4096, 1, name="wide_conv")(i)))
    o = keras.Input((1024, 1024, 3))
    model = keras.Model(o, keras.layers.Dense(2, name="head")(inner(o)))
    with pytest.raises(ConfigError, match="wide_conv") as err:
        check_activations(model, "nested.keras", resizable=False)
    assert f"{MAX_ACTIVATION_BYTES >> 30} GiB" in str(err.value)


def test_a_backbone_nested_in_a_classifier_at_its_default_cut_is_one_line(tmp_path):
    """#8: the Keras transfer-learning layout (an application inside a classifier): "Output with path `` is not
    connected to `inputs`", a Keras traceback, at the default cut (a one-line refusal then; its cut since 40 #7)."""
    import keras

    from tests.conftest import write_data_root
    from tests.test_adversarial_attack4 import cli, no_traceback

    i = keras.Input((32, 32, 3))
    base = keras.Model(i, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(i)), name="base")
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.Dense(2)])
    path = tmp_path / "transfer.keras"
    model.save(path)
    data = write_data_root(tmp_path / "data")
    out = no_traceback(
        cli("extract", "--model", path, "--data", data, "--split", "train", "--store", tmp_path / "s.h5")
    )
    assert "wrote 12 rows of (4,)" in out and (tmp_path / "s.h5").exists(), out  # 40 #7: its outer call, cut


def test_a_keras_zip_given_as_weights_is_held_to_the_zip_rules_of_model_files(tmp_path):
    """#11: `--weights FILE.keras` skipped the zip checks `--model` files get: 12 MB unpacking to 4 GiB was accepted."""
    import zipfile

    from featstore.errors import WeightsError
    from featstore.models.backbones import get_backbone
    from featstore.models.weights import load_base

    bomb = tmp_path / "w.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", bytes(100 << 20))  # 100 MiB of zeros: about 100 KB in the zip
    with pytest.raises(WeightsError, match=f"weights file {bomb} is refused before loading"):
        load_base(get_backbone("vgg16"), 32, str(bomb))


def test_attention_scores_inside_a_layer_count_as_its_activation():
    """#1: a MultiHeadAttention's scores (256 heads x 4096 x 4096 tokens: 16 GiB per image) are no layer's output;
    every output was under 1 MiB, so the bound passed it and extract ran out of memory."""
    import keras

    from featstore.models.activations import check_activations

    i = keras.Input((64, 64, 3))
    x = keras.layers.Reshape((4096, 3))(i)
    x = keras.layers.MultiHeadAttention(num_heads=256, key_dim=1, name="mha")(x, x)
    model = keras.Model(i, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Dense(4, name="wide")(x))))
    with pytest.raises(ConfigError, match="its layer 'mha' makes 256 x 4096 x 4096 float32 attention scores per image"):
        check_activations(model, "mha.keras", resizable=False)
    y = keras.layers.Reshape((4096, 3))(i)
    small = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(y, y)  # 2 x 4096^2 x 4 B = 128 MiB: fine
    assert check_activations(keras.Model(i, small), "ok.keras", resizable=False) is not None


def test_the_users_own_keras_cache_under_umask_002_is_not_shared(tmp_path, monkeypatch):
    """(Read of this session's #6 fix) umask 002 with a private group (Debian's and Ubuntu's users) makes ~/.keras
    0775 in the user's own group, which no one else is in: not a cache "other users can write"."""
    from featstore.models import weights
    from featstore.models.weights import _others_write

    home = tmp_path / ".keras"
    (home / "models").mkdir(parents=True)
    (home / "models").chmod(0o775)
    monkeypatch.setattr(weights, "others_may_write", lambda st, at=None: False)  # the group is the user's own
    assert _others_write(home / "models", home) is None
    monkeypatch.undo()
    (home / "models").chmod(0o777)
    assert _others_write(home / "models", home) == home / "models"
