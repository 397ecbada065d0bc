"""Attack 46 #6 and #8: a relative RAY_TMPDIR reached ray.init ("temp_dir must be absolute", said as "cannot
connect"), and a Ray worker whose Keras is set otherwise than featstore's models are built for was said as "Keras in
this process" with fixes for the driver's."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from featstore.errors import ConfigError


@pytest.fixture
def short(monkeypatch):
    from featstore.models import scratch

    folder = tempfile.mkdtemp(dir="/tmp", prefix="fs46-")  # tmp_path is too long for a Ray session's sockets
    monkeypatch.setattr(scratch, "_SAID", set())
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_relative_ray_tmpdir_is_taken_from_the_current_folder(short, monkeypatch):
    """Sabotage: RAY_TMPDIR handed on as given: 'rt/ray', which Ray refuses."""
    from featstore.extraction.ray_address import _local_root

    os.mkdir(os.path.join(short, "rt"), 0o700)
    monkeypatch.chdir(short)
    monkeypatch.setenv("RAY_TMPDIR", "rt")
    assert _local_root() == os.path.join(short, "rt", "ray")


def test_a_local_ray_that_cannot_start_is_not_said_as_a_connection(monkeypatch, tmp_path):
    from featstore.extraction import ray as ray_engine

    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_engine, "_local_root", lambda: str(tmp_path / "ray"))

    def init(**kw):
        raise ValueError("temp_dir must be absolute path or None.")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=r"^cannot start a local Ray: temp_dir must be absolute"):
        ray_engine.RayEngine(ray_engine.RayOptions()).start(tmp_path, None)


def test_a_ray_workers_keras_settings_are_said_as_the_workers(monkeypatch):
    """Sabotage: the worker's own check left out: 'Keras in this process ... keras.config.set_*'."""
    import keras

    from featstore.extraction.ray import Forward
    from featstore.models.extractor import ExtractorConfig

    monkeypatch.setattr("featstore.extraction.ray.worker_tempdir", lambda: None)
    keras.config.set_floatx("float16")
    try:
        with pytest.raises(ConfigError) as got:
            Forward(ExtractorConfig(model="vgg16", weights="none", image_size=32), False, 4, ["x"], 1, 1.0)
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    line = str(got.value)
    assert line.startswith("Keras in the Ray worker on ") and "floatx 'float16'" in line, line
    assert "where the workers run" in line and "keras.config.set_" not in line, line
