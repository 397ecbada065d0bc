"""Attack 39 #2, #12 (fixAQ).

#2: featstore reads a model file's ending case-insensitively, Keras case-sensitively: ``MODEL.KERAS`` (a FAT/Windows
copy), the user's link ``model.Keras -> blob`` and ``MODEL.H5 --trust-model`` passed featstore's checks and Keras then
said "File format not supported ... use keras.layers.TFSMLayer". The private name Keras is given now ends in Keras's
spelling; the ``--trust-model`` gate still tests that same name, case-insensitively (a superset of Keras's test).

#12: through the user's own hub-style link the default extractor name was the blob's 64 hex digits, not the name the
user gave; a too-long name was said as "use letters, digits ...", and the CLI's line did not offer --name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from featstore import ConfigError, ExtractorConfig, extract
from featstore.models.file_format import ENDINGS, is_legacy, keras_name
from featstore.models.saved import SavedModelSpec
from tests.conftest import write_data_root
from tests.test_adversarial_attack4 import cli
from tests.test_adversarial_attack36_fixAO import _tiny_cnn, hub_cache


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    _tiny_cnn().save(folder / "cnn.keras")
    _tiny_cnn().save(folder / "legacy.h5")
    return folder


def test_an_upper_case_ending_is_given_to_keras_in_its_spelling(tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(b"PK\x03\x04" + bytes(60))
    fd = os.open(blob, os.O_RDONLY)
    try:
        assert keras_name(tmp_path / "MODEL.KERAS", None, fd) == "MODEL.keras"
        assert keras_name(blob, tmp_path / "model.Keras", fd) == "model.keras"
        assert keras_name(tmp_path / "M.Weights.H5", None, fd) == "M.weights.h5"
        assert keras_name(tmp_path / "old.HDF5", None, fd) == "old.hdf5"
        # the gate: whatever name Keras gets, Keras's own legacy test (saving_api.load_model/load_weights:
        # str(filepath).endswith((".h5", ".hdf5")), case-sensitive) never says legacy where is_legacy does not
        cases = ["m", "M", "Model", "mOdEl"]
        for stem in cases:
            for end in ENDINGS:
                for spelled in (end, end.upper(), end.title(), end[:3] + end[3:].upper()):
                    name = keras_name(tmp_path / f"{stem}{spelled}", None, fd)
                    assert name.endswith(ENDINGS), name  # a name Keras knows
                    if name.endswith((".h5", ".hdf5")):
                        assert is_legacy(Path(name)), name
    finally:
        os.close(fd)


def test_upper_case_model_files_and_links_load(models, tmp_path):
    upper = tmp_path / "MODEL.KERAS"
    shutil.copyfile(models / "cnn.keras", upper)
    spec = SavedModelSpec.from_path(upper)  # was: "is not a Keras model this Keras can load: File format not supported"
    assert spec.build(16)[0].count_params() > 0
    link, _ = hub_cache(tmp_path / "hub", models / "cnn.keras", "model.Keras")
    assert SavedModelSpec.from_path(link).build(16)[0].count_params() > 0
    legacy = tmp_path / "MODEL.H5"
    shutil.copyfile(models / "legacy.h5", legacy)
    with pytest.raises(ConfigError, match=r"legacy \.h5 model.*--trust-model"):
        SavedModelSpec.from_path(legacy)  # the gate holds
    assert SavedModelSpec.from_path(legacy, trust_model=True).build(16)[0].count_params() > 0


def test_the_default_extractor_name_is_the_file_the_user_named(models, tmp_path):
    link, blob = hub_cache(tmp_path / "hub", models / "cnn.keras", "model.keras")
    data = write_data_root(tmp_path / "data")
    result = extract(data, "train", tmp_path / "s.h5", ExtractorConfig(model=str(link)))
    assert result.extractor == "model" and blob.name not in result.extractor  # was the blob's name


def test_a_too_long_name_is_said_as_too_long(models, tmp_path):
    from featstore.provenance import validate_name

    with pytest.raises(ConfigError, match="is too long: 250 characters, at most 200; choose a shorter one") as err:
        validate_name("extractor", "m" * 250)  # was: "use letters, digits and ..." of a name of letters only
    assert "--" not in str(err.value)  # the API's line names no option
    with pytest.raises(ConfigError, match="use letters, digits"):
        validate_name("extractor", "a b")
    long = tmp_path / ("m" * 240 + ".keras")
    shutil.copyfile(models / "cnn.keras", long)
    (tmp_path / "short.keras").symlink_to(long.name)
    data = write_data_root(tmp_path / "data")
    out = cli("extract", "--model", long, "--data", data, "--store", tmp_path / "s.h5", "--no-progress").output
    assert "240 characters, at most 200; choose one with --name NAME" in out, out
    assert not (tmp_path / "s.h5").exists()
    out = cli("extract", "--model", long, "--data", data, "--store", tmp_path / "s.h5", "--name", "m" * 201).output
    assert "201 characters, at most 200; choose a shorter one" in out, out  # their own --name: said as it is
    spaced = tmp_path / "my model.keras"  # a default name of a letter a store refuses: the line names --name too
    shutil.copyfile(models / "cnn.keras", spaced)
    out = cli("extract", "--model", spaced, "--data", data, "--store", tmp_path / "s.h5", "--no-progress").output
    assert "'my model' is not allowed: use letters" in out and "choose one with --name NAME" in out, out
    # the user's own shorter link to it names the extractor (the attack's long.keras -> <250 m's> now just works)
    assert (
        "s.h5:/short/train"
        in cli("extract", "--model", tmp_path / "short.keras", "--data", data, "--store", tmp_path / "s.h5").output
    )
