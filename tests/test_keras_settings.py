"""Keras's settings file (keras.json) and KERAS_BACKEND, which Keras reads as it is imported: a float16 setting gave
features off by up to 0.085 under the same fingerprint (a resume would mix two precisions), channels-first and a
backend that is not installed ended in Keras's tracebacks, and in /tmp/.keras (a home folder that is not writable)
the file may be a colleague's (a FIFO there: Keras waits for ever). Each is one line now, before Keras is imported
(the command's import hook) or, for the Python API, when featstore builds a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from featstore import kerasconfig
from featstore.errors import ConfigError

DEFAULT = {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"}
root_only = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "kh"
    folder.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(folder))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    return folder


def _settings(home, **changed) -> None:
    (home / "keras.json").write_text(json.dumps({**DEFAULT, **changed}))


def test_keras_defaults_a_missing_file_and_one_keras_cannot_parse_pass(home):
    assert kerasconfig.problem() is None  # none yet: Keras writes its own
    _settings(home)
    assert kerasconfig.problem() is None
    (home / "keras.json").write_text("{not json")
    assert kerasconfig.problem() is None  # Keras ignores it and keeps its defaults
    (home / "keras.json").write_text('{"floatx": "float32"}')
    assert kerasconfig.problem() is None  # the rest: Keras's defaults


@pytest.mark.parametrize(
    ("changed", "said"),
    [
        ({"floatx": "float16"}, "floatx 'float16'"),
        ({"image_data_format": "channels_first"}, "image_data_format 'channels_first'"),
        ({"backend": "jax"}, "backend 'jax'"),
        ({"epsilon": 0.001}, "epsilon 0.001"),
    ],
)
def test_a_setting_featstore_models_are_not_built_for_is_one_line(home, changed, said):
    _settings(home, **changed)
    line = kerasconfig.problem()
    assert line is not None and said in line and str(home / "keras.json") in line
    assert "set KERAS_HOME to a folder of yours" in line


def test_keras_backend_in_the_environment_wins_over_the_file_as_in_keras(home, monkeypatch):
    _settings(home, backend="jax")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert kerasconfig.problem() is None
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert "KERAS_BACKEND=torch" in kerasconfig.problem()


def test_a_fifo_a_huge_a_deep_or_a_non_object_file_is_one_line_without_waiting(home):
    path = home / "keras.json"
    os.mkfifo(path)
    assert "not a regular file" in kerasconfig.problem()  # opened without waiting for a writer
    path.unlink()
    path.write_bytes(b" " * kerasconfig.MOST)
    assert "1 MiB or more" in kerasconfig.problem()
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in kerasconfig.problem()
    path.write_text("[1]")
    assert "holds no settings object" in kerasconfig.problem()


@root_only
def test_a_colleagues_link_or_his_open_folder_is_refused(home, tmp_path):
    target = tmp_path / "mine.json"
    (home / "keras.json").symlink_to(target)  # dangling: Keras would create the file it names
    os.lchown(home / "keras.json", 4242, 4242)
    line = kerasconfig.problem()
    assert "a symbolic link made by" in line and "not by you" in line
    (home / "keras.json").unlink()
    os.chown(home, 4242, 4242)
    home.chmod(0o777)
    assert "a folder of" in kerasconfig.problem() and "others may write" in kerasconfig.problem()
    home.chmod(0o755)
    assert kerasconfig.problem() is None  # his, closed to others: Keras cannot write there, and nothing is read


def test_the_command_says_it_in_one_line_before_tensorflow_is_imported(home, tmp_path):
    """Sabotage: the import hook's check left out: extract wrote float16 features (or Keras's traceback)."""
    from tests.conftest import write_data_root

    _settings(home, floatx="float16")
    data = write_data_root(tmp_path / "data")
    env = {**os.environ, "KERAS_HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "featstore.cli", "extract", "--model", "vgg16", "--weights", "none", "--image-size",
         "32", "--data", str(data), "--split", "train", "--store", str(tmp_path / "s.h5"), "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Keras's settings file"), done.stderr
    assert "floatx 'float16'" in lines[0]
    assert not (tmp_path / "s.h5").exists()


def test_the_python_api_refuses_a_keras_set_otherwise_in_this_process(home):
    """Sabotage: check_loaded left out of Extractor (and the head): float16 features, same fingerprint."""
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig
    from featstore.models.head import head_layers

    keras.config.set_floatx("float16")
    try:
        with pytest.raises(ConfigError, match="Keras in this process says floatx 'float16'"):
            Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))
        with pytest.raises(ConfigError, match="floatx 'float16'"):
            head_layers(8, 0.5, 2)
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")  # (Keras kept the float16 one it derived from floatx)
    kerasconfig.check_loaded()


def test_a_global_mixed_precision_policy_is_refused_for_the_head_and_not_for_the_extractor(home):
    """Attack 45 #3: a notebook's mixed_float16 policy trained the dense head in float16 (probabilities off by 4e-4),
    unrecorded. The extractor sets its own policy (float32, or mixed_float16 with --mixed-precision) and builds as
    always. Sabotage: the policy left out of check_loaded: the head's layers were built mixed_float16."""
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig
    from featstore.models.head import head_layers

    keras.config.set_dtype_policy("mixed_float16")
    try:
        with pytest.raises(ConfigError, match="dtype_policy 'mixed_float16'"):
            head_layers(8, 0.5, 2)
        ex = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))
        assert {lyr.dtype_policy.name for lyr in ex.model.layers} == {"float32"}
    finally:
        keras.config.set_dtype_policy("float32")
    assert [lyr.dtype_policy.name for lyr in head_layers(8, 0.5, 2)] == ["float32"] * 3


@pytest.mark.parametrize("cap", ["KERAS_MAX_EPOCHS", "KERAS_MAX_STEPS_PER_EPOCH"])
def test_keras_caps_on_epochs_and_steps_are_refused_before_a_fit_only(home, monkeypatch, cap):
    """Attack 46 #1: KERAS_MAX_EPOCHS=1 (a CI's smoke-test setting left in a shell) cut a 20-epoch dense fit to one
    epoch of one step, recorded as 20 epochs. #7: refused for commands that train nothing, and 0 (no cap in Keras)
    refused too. Sabotage: the caps left out of check_loaded: the head is built under a cap."""
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig
    from featstore.models.head import head_layers

    monkeypatch.setenv(cap, "1")
    assert kerasconfig.problem() is None  # the import goes on: extract and predict fit nothing
    monkeypatch.setenv(cap, "one")
    assert kerasconfig.problem() == f"{cap}=one is not a whole number, and Keras fails on it; unset {cap}"
    monkeypatch.delenv(cap)
    set_cap = keras.config.set_max_epochs if cap == "KERAS_MAX_EPOCHS" else keras.config.set_max_steps_per_epoch
    set_cap(1)
    try:
        with pytest.raises(ConfigError, match="max_.* 1: featstore's models are built for .*keras.config.set_"):
            head_layers(8, 0.5, 2)
        Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))  # trains nothing: built
        set_cap(0)  # Keras: no cap
        head_layers(8, 0.5, 2)
    finally:
        set_cap(None)
    kerasconfig.check_loaded()


def test_a_backend_set_in_the_users_own_file_names_keras_backend_as_the_fix(home):
    """Attack 46 #5: her own keras.json says jax (her JAX work elsewhere); the line asked her to change it back
    (keras.config.set_* "in a notebook", of a file) or move KERAS_HOME. Sabotage: one fix text for all: no
    KERAS_BACKEND."""
    _settings(home, backend="jax")
    line = kerasconfig.problem()
    assert "set KERAS_BACKEND=tensorflow for featstore, or change it in that file" in line, line
    assert "keras.config.set_" not in line
    _settings(home, floatx="float16")
    assert "KERAS_BACKEND" not in kerasconfig.problem()


def test_a_cap_in_the_shell_is_refused_before_any_work_of_a_command_that_trains_with_keras(home, monkeypatch, tmp_path):
    """Attack 47 #8: KERAS_MAX_EPOCHS=5 and `sweep --clf logreg,svm,dense`: logreg and svm were fitted and recorded,
    then "Keras in this process says max_epochs 5 ... keras.config.set_*": the sweep's own record lost, the variable
    not named. Sabotage: refuse_caps left out of check_values: the sweep goes on to read the (missing) store."""
    from featstore.experiments.finetune import FinetuneConfig
    from featstore.experiments.sweep import sweep

    monkeypatch.setenv("KERAS_MAX_EPOCHS", "5")
    with pytest.raises(
        ConfigError, match=r"^KERAS_MAX_EPOCHS=5: Keras cuts every model.fit to it .*unset KERAS_MAX_EPOCHS$"
    ):
        sweep(tmp_path / "missing.h5", clfs=["logreg", "svm", "dense"])
    with pytest.raises(ConfigError, match="unset KERAS_MAX_EPOCHS"):
        FinetuneConfig("block5_conv1").validated()
    monkeypatch.setenv("KERAS_MAX_EPOCHS", "0")  # no cap, as Keras reads it
    FinetuneConfig("block5_conv1").validated()
