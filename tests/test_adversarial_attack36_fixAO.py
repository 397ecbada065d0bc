"""Attack 36 #1.

#1: ``--model`` / ``--weights`` given through the user's own link to a file without a suffix (the Hugging Face hub
cache's ``snapshots/<rev>/model.keras -> ../../blobs/<sha256>``) were refused with a false reason naming the blob:
Keras picks the format by the name it is given, and featstore gave it one named after the blob. The name now comes
from the real file's ending, else the one the user gave, else the file's first bytes (:mod:`featstore.models.
file_format`); the ``--trust-model`` gate follows the same name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from featstore import ConfigError, Extractor, ExtractorConfig, WeightsError, get_backbone
from featstore.models.saved import SavedModelSpec
from featstore.models.weights import load_base, sha256_file


def _tiny_cnn():
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.Dense(8, name="hidden")(x))
    return keras.Model(inp, out)


def hub_cache(root: Path, source: Path, name: str) -> tuple[Path, Path]:
    """``source`` laid out as the Hugging Face hub cache lays a file: ``(snapshots/rev1/<name>, blobs/<sha>)``, the
    first the user's own relative link to the second."""
    blob = root / "blobs" / sha256_file(source)[:12]
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    link = root / "snapshots" / "rev1" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../../blobs") / blob.name)
    return link, blob


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    _tiny_cnn().save(folder / "cnn.keras")
    _tiny_cnn().save(folder / "legacy.h5")
    return folder


def test_a_model_through_a_link_to_a_blob_loads_and_is_named_as_given(models, tmp_path):
    link, blob = hub_cache(tmp_path, models / "cnn.keras", "model.keras")
    spec = SavedModelSpec.from_path(link)  # was: "<blob> is not a Keras model this Keras can load: File format not"
    assert spec.path == blob and spec.sha256 == sha256_file(blob) and spec.shown == link
    model, loaded = spec.build(16)
    assert model.count_params() > 0 and loaded.file_sha256 == spec.sha256
    # the store records the real file (the blob): a later predict or Ray worker reloads it by that name, suffix-less
    again = SavedModelSpec.from_path(blob)
    assert again.sha256 == spec.sha256
    with pytest.raises(ConfigError) as err:
        spec.build(32)
    assert str(link) in str(err.value) and blob.name not in str(err.value)  # the path the user gave, not the blob


def test_the_trust_model_gate_follows_the_name_keras_is_given(models, tmp_path):
    link, blob = hub_cache(tmp_path, models / "legacy.h5", "model.keras")
    with pytest.raises(ConfigError, match=r"legacy \.h5 model.*--trust-model"):
        SavedModelSpec.from_path(blob)  # no suffix: its bytes (HDF5, a legacy model) decide, and the gate holds
    assert SavedModelSpec.from_path(blob, trust_model=True).sha256 == sha256_file(blob)
    with pytest.raises(ConfigError, match="is not a Keras model .a .keras file is a zip") as err:
        SavedModelSpec.from_path(link, trust_model=True)  # named .keras by its user: read as one, never as legacy
    assert str(link) in str(err.value)


def test_weights_through_a_link_to_a_blob_load(vgg16_weights_file, tmp_path):
    link, blob = hub_cache(tmp_path, vgg16_weights_file, "vgg16.weights.h5")
    _, loaded = load_base(get_backbone("vgg16"), 32, str(link))  # was: "weights file <blob> does not fit vgg16"
    assert loaded.file_sha256 == sha256_file(blob) and loaded.path == str(blob)
    # what extract does: the configuration validated (the weights' real path recorded), then the model built from it
    from_link = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights=str(link)))
    seeded = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=123))  # the fixture's
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(from_link(x), seeded(x))
    assert from_link.attrs["weights_sha256"] == sha256_file(blob)


def test_weights_that_do_not_fit_are_named_by_the_path_given(tmp_path):
    model = _tiny_cnn()
    model.save_weights(tmp_path / "small.weights.h5")
    link, blob = hub_cache(tmp_path / "hub", tmp_path / "small.weights.h5", "mnv2.weights.h5")
    with pytest.raises(WeightsError, match="does not fit vgg16") as err:
        load_base(get_backbone("vgg16"), 32, str(link))
    assert f"weights file {link} " in str(err.value)
    assert blob.name not in str(err.value).split(":")[0]  # Keras's own part may name its private link's folder
