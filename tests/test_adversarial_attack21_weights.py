"""Attack 21 finding 10 (issue #19): an HDF5 array with *external* (or virtual) storage declares whatever storage its
list of files says, so a 15 KB weights file "held" 2e9 parameters and let a config ask Keras for 6.4 GB; and Keras
would read such an array's bytes from any local file it names. Such an array is refused wherever a weights file is
walked. Synthetic HDF5 files only (no TensorFlow)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.models.keras_sizes import keras_zip_problem
from featstore.models.preset_json import check_weights_file, held_parameters, walk_weights


def _weights(path, external=None):
    """A weights file of one genuine 4x2 kernel and bias, plus (when ``external`` is a file) an array of 2e9 float32
    whose storage is declared in that file."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.ones((4, 2), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros(2, np.float32))
        if external is not None:
            f.create_dataset(
                "padding", shape=(2_000_000_000,), dtype=np.float32, external=[(str(external), 0, 8_000_000_000)]
            )
    return path


def test_an_external_array_holds_nothing_and_is_named(tmp_path):
    plain = walk_weights(_weights(tmp_path / "plain.h5"))
    assert plain == (10, 5, 0, "")
    held, _seen, _unstored, outside = walk_weights(_weights(tmp_path / "ext.h5", external=tmp_path / "nowhere.bin"))
    assert (held, outside) == (10, "padding")  # was 2,000,000,010 "held"


def test_a_weights_file_with_an_external_array_is_refused_by_every_walker(tmp_path):
    path = _weights(tmp_path / "model.weights.h5", external="/dev/zero")
    problem = check_weights_file(path)  # --weights FILE
    assert problem and "'padding' is stored outside the file" in problem and "save the weights again" in problem
    with pytest.raises(ConfigError, match="stored outside the file"):
        held_parameters(path, "my_preset")  # a KerasHub preset's weights


def test_a_keras_file_whose_weights_hold_an_external_array_is_refused(tmp_path):
    """The attack: its config edited to Dense 4 -> 40000 -> 40000 (1.6e9 parameters) passed, the external array's
    declared 8 GB counted as held; a small config with the same weights is refused too (Keras would read the file
    the array names)."""
    weights = _weights(tmp_path / "model.weights.h5", external=tmp_path / "nowhere.bin")
    for units, why in ((40_000, "builds at least"), (2, "stored outside the file")):
        layers = [
            {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 4]}},
            {
                "class_name": "Dense",
                "config": {"name": "a", "units": units},
                "build_config": {"input_shape": [None, 4]},
            },
            {"class_name": "Dense", "config": {"name": "b", "units": units}},
        ]
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": layers}}
        path = tmp_path / f"m{units}.keras"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("config.json", json.dumps(config))
            z.write(weights, "model.weights.h5")
        problem = keras_zip_problem(path)
        assert problem and why in problem, problem
