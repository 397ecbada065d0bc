"""A Ray actor that refuses (its Keras set otherwise, another fingerprint, the driver's ONNX file, a batch out of
memory) is featstore's one line at the driver, without Ray's own ~200 lines about the dead actor (attack 47 #7): the
actor Ray builds (:class:`Guarded`) returns a featstore error as a value, which the driver raises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import ConfigError, DataError
from featstore.extraction.ray_messages import _RAY_FD_NOISE, Guarded, raise_refused

ROOT = Path(__file__).resolve().parents[1]
LINE = "Keras in the Ray worker on w1 says floatx 'float16': featstore's models are built for floatx 'float32'"


class _Refuses:
    def __init__(self, error: Exception):
        raise error


class _Batches:
    def __init__(self, error: Exception | None = None):
        self.error = error

    def __call__(self, batch: dict) -> dict:
        if self.error is not None:
            raise self.error
        return {"index": batch["index"], "f0": np.zeros((len(batch["index"]), 2))}


def _batch(n: int = 3) -> dict:
    return {"index": np.arange(n), "path": np.array([b"a"] * n, dtype=object)}


def test_an_actor_that_refuses_at_start_lives_and_its_first_batch_carries_the_line():
    actor = Guarded(_Refuses, ConfigError(LINE))  # Ray's actor: built, not dead
    out = actor(_batch())
    assert set(out) == {"index", "refused"} and len(out["refused"]) == 3
    with pytest.raises(ConfigError) as got:
        raise_refused(out)
    assert str(got.value) == LINE
    with pytest.raises(DataError, match=r"^a Ray worker on h cannot read /d$"):  # its own class
        raise_refused(Guarded(_Refuses, DataError("a Ray worker on h cannot read /d"))(_batch(1)))


def test_a_batchs_featstore_error_is_a_value_and_others_are_rays():
    out = Guarded(_Batches, ConfigError("the forward pass ran out of memory on a batch of 3 images"))(_batch())
    with pytest.raises(ConfigError, match=r"^the forward pass ran out of memory on a batch of 3 images$"):
        raise_refused(out)
    fine = Guarded(_Batches)(_batch())
    assert "refused" not in fine and raise_refused(fine) is None
    with pytest.raises(RuntimeError, match="a bug"):  # not featstore's: raised, Ray's error with its traceback
        Guarded(_Batches, RuntimeError("a bug"))(_batch())
    with pytest.raises(TypeError):
        Guarded(_Refuses, TypeError("a bug"))


def test_rays_constructor_arguments_line_is_dropped_after_a_progress_bar():
    bar = b"m/train:   0%|          | 0/6 [00:00<?, ?img/s]"
    noise = (
        b"[2026-12-07 00:14:03,252 E 9890 9890] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches"
        b"(Guarded))' and ID: 'b7e7' has constructor arguments in the object store and max_restarts > 0.\n"
    )
    assert _RAY_FD_NOISE.sub(b"", bar + noise) == bar and _RAY_FD_NOISE.sub(b"", noise) == b""
    assert _RAY_FD_NOISE.sub(b"", b"[x E 1 2] raylet.cc:1: a real error\n") == b"[x E 1 2] raylet.cc:1: a real error\n"


# the workers' Keras reads KERAS_HOME's keras.json (float16); the driver's Keras was imported before it was set
_SCRIPT = """
import json, os, pathlib, sys
import keras
from tests.conftest import write_images
root = sys.argv[1]
write_images(pathlib.Path(root) / "data", "train", {"a": 2, "b": 2}, seed=1, size=20)
keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(name="p")]
                 ).save(os.path.join(root, "m.keras"))
os.environ["KERAS_HOME"] = os.path.join(root, "kh")  # inherited by the local Ray featstore starts
sys.argv = ["featstore", "extract", "--data", os.path.join(root, "data"), "--split", "train", "--store",
            os.path.join(root, "s.h5"), "--model", os.path.join(root, "m.keras"), "--engine", "ray", "--workers", "1"]
from featstore.cli import app
app()
"""


@pytest.mark.slow
def test_a_ray_worker_refusing_at_start_is_one_line_not_rays_tracebacks(tmp_path):
    """Sabotage: the actors built as the plain Forward (Guarded left out): 206 lines, the worker's traceback twice."""
    pytest.importorskip("ray")
    (tmp_path / "kh").mkdir()
    settings = {"floatx": "float16", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"}
    (tmp_path / "kh" / "keras.json").write_text(json.dumps(settings))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),  # the workers' featstore too
        "RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": "0.02",  # a small object store: a test's few images
    }
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    said = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith(("I0000", "E0000", "W0000"))]
    ours = [ln for ln in said if ln.startswith("error: ")]
    assert done.returncode == 1 and len(ours) == 1, done.stderr[-3000:]
    assert ours[0].startswith("error: Keras in the Ray worker on ") and "floatx 'float16'" in ours[0]
    assert "Traceback" not in done.stderr and "(raylet)" not in done.stderr, done.stderr[-3000:]
    assert len(said) <= 10, said  # featstore's INFO lines, TensorFlow's start-up notes, the progress bar, the line
