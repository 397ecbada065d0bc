"""--jit: the XLA-compiled forward pass, checked against the uncompiled model at start-up; not fingerprinted."""

import logging

import h5py
import numpy as np
import pytest

from featstore import ConfigError, Extractor, FeatureStore, extract
from featstore.models import forward

from .test_cli import tiny


def test_jit_features_match_uncompiled_and_keep_the_fingerprint(data_root, tiny_config, tmp_path):
    plain = extract(data_root, "train", tmp_path / "a.h5", tiny_config, batch_size=5)
    jit = extract(data_root, "train", tmp_path / "b.h5", tiny_config, batch_size=5, jit=True)
    assert plain.jit_max_abs_diff is None and 0 <= jit.jit_max_abs_diff
    a, b = FeatureStore(tmp_path / "a.h5"), FeatureStore(tmp_path / "b.h5")
    assert jit.fingerprint == plain.fingerprint == b.metadata()["fingerprint"]  # the features are the fingerprint's
    assert a.paths("train") == b.paths("train")
    Xa, Xb = a.load("train")[0], b.load("train")[0]
    assert np.abs(Xa - Xb).max() <= forward.JIT_TOLERANCE["float32"] * np.abs(Xa).max()
    with h5py.File(tmp_path / "b.h5", "r") as f, h5py.File(tmp_path / "a.h5", "r") as g:
        assert bool(f["vgg16/train"].attrs["jit"]) and not bool(g["vgg16/train"].attrs["jit"])


def test_jit_beyond_tolerance_is_refused(tiny_config, monkeypatch):
    monkeypatch.setitem(forward.JIT_TOLERANCE, "float32", -1.0)  # any difference, even 0, is over it
    with pytest.raises(ConfigError, match=r"--jit: the XLA-compiled vgg16 differs .* Run without --jit"):
        Extractor(tiny_config, jit=True)


def test_jit_on_another_backend_is_refused(tiny_config, monkeypatch):
    monkeypatch.setattr(forward, "backend", lambda: "jax")
    with pytest.raises(
        ConfigError, match="--jit compiles the forward pass with TensorFlow's XLA, but Keras runs on the 'jax'"
    ):
        Extractor(tiny_config, jit=True)


def test_cli_jit_verbose_prints_the_difference(data_root, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="featstore.models.forward"):
        r = tiny(data_root, tmp_path / "f.h5", "--jit")
    assert r.exit_code == 0, r.output
    assert "wrote 12 rows" in r.output
    assert any("max abs difference to the uncompiled model" in m for m in caplog.messages)
