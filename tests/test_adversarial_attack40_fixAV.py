"""Attack 40 #2 and #7 (fixAV): a weights-only ``.keras`` given as ``--weights`` has its weights file checked as a
``.weights.h5`` is, and a file Keras cannot read at all is not said to "not fit" the architecture; a model nested in a
saved one (the Keras transfer-learning layout) is cut where the outer model calls it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from featstore.errors import ConfigError, WeightsError


def _weights_only_zip(path, member) -> None:
    """A ``.keras`` holding ``metadata.json`` and ``member`` as its ``model.weights.h5``: no ``config.json``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3"}))
        if member is not None:
            z.write(member, "model.weights.h5")


def test_a_weights_only_keras_zip_has_its_member_checked_before_keras(tmp_path):
    """#2: without config.json, keras_zip_problem returned None at once: a member declaring 32 GiB and storing nothing
    reached load_weights (only Keras 3.15's own guard stopped it), said "does not fit mobilenet_v2"."""
    import h5py

    from featstore.models.backbones import get_backbone
    from featstore.models.weights import load_base

    huge = tmp_path / "huge.weights.h5"
    with h5py.File(huge, "w") as f:
        f.create_dataset("layers/bn/vars/0", shape=(1 << 16, 1 << 16, 2), dtype="f4", chunks=(64, 64, 2))
    _weights_only_zip(tmp_path / "noconf.keras", huge)
    with pytest.raises(WeightsError, match="refused before loading: model.weights.h5: its arrays declare") as err:
        load_base(get_backbone("mobilenet_v2"), 32, str(tmp_path / "noconf.keras"))
    assert "does not fit" not in str(err.value)


@pytest.mark.parametrize("kind", ["no member", "member not HDF5", "file not HDF5"])
def test_a_file_keras_cannot_read_at_all_is_not_said_to_not_fit(tmp_path, kind):
    """#2 (others on that path): a .keras without model.weights.h5, or a weights file that is no HDF5 file, was "does
    not fit mobilenet_v2 ... Pass a file saved from that architecture": false, and a fix that cannot help."""
    from featstore.models.backbones import get_backbone
    from featstore.models.weights import load_base

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not hdf5 " * 100)
    path = tmp_path / ("w.weights.h5" if kind == "file not HDF5" else "w.keras")
    if kind == "file not HDF5":
        path.write_bytes(junk.read_bytes())
    else:
        _weights_only_zip(path, None if kind == "no member" else junk)
    with pytest.raises(WeightsError) as err:
        load_base(get_backbone("mobilenet_v2"), 32, str(path))
    said = str(err.value)
    assert "does not fit" not in said and str(path) in said, said
    assert ("holds no model.weights.h5" if kind == "no member" else "is not an HDF5 file") in said, said


def _transfer(tmp_path, layout="sequential"):
    """The transfer-learning layout: a backbone model inside a classifier (Sequential or functional), saved."""
    import keras

    i = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="inner_conv")(i)
    base = keras.Model(i, keras.layers.GlobalAveragePooling2D(name="gap")(x), name="base")
    if layout == "sequential":
        model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.Dense(2, name="head")])
    else:
        outer = keras.Input((32, 32, 3))
        model = keras.Model(outer, keras.layers.Dense(2, name="head")(base(outer)))
    path = tmp_path / "transfer.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("layout", ["sequential", "functional"])
def test_the_default_cut_at_a_nested_model_gives_its_output_where_the_classifier_calls_it(tmp_path, layout):
    """#7: featstore chose (and listed) the nested backbone as the default cut, then refused it; its `.output` is its
    inner graph's tensor ("not connected to inputs"). Now: its outer call's, equal to model.get_layer("base")(x) by hand."""
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig

    path = _transfer(tmp_path, layout)
    ex = Extractor(ExtractorConfig(model=str(path)))
    assert ex.outputs[0][0] == "base" and ex.feature_shape == (4,)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    got = np.asarray(ex(images))
    want = np.asarray(keras.models.load_model(path).get_layer("base")(ex._prepare(images)))
    assert got.shape == (3, 4) and np.abs(got).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_layer_inside_the_nested_model_is_one_line_naming_it_in_the_python_given(tmp_path):
    """#7: a --layer inside the nested model: one line naming the nested model (no NAME left to fill)."""
    from featstore.models.extractor import Extractor, ExtractorConfig

    with pytest.raises(ConfigError, match=r"inside 'base'.*model\.get_layer\('base'\)\.save\('base\.keras'\)"):
        Extractor(ExtractorConfig(model=str(_transfer(tmp_path)), layer="inner_conv"))


def test_the_layer_listing_gives_a_nested_models_shape_where_the_classifier_calls_it(tmp_path):
    """#7: the listing printed a nested model's own output shape, (None, None, 4) for one on unknown sides, not the
    (30, 30, 4) of its call in the classifier, which is what a cut there gives."""
    import keras

    from featstore.report.tables import layers_table

    i = keras.Input((None, None, 3))
    base = keras.Model(i, keras.layers.Conv2D(4, 3, name="inner_conv")(i), name="base")
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.Flatten(), keras.layers.Dense(2)])
    model.save(tmp_path / "t.keras")
    table = layers_table(str(tmp_path / "t.keras"))
    assert "(30, 30, 4)" in table and "None" not in table, table
