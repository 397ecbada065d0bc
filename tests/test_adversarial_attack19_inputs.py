"""Nineteenth attack, inputs: a ``.keras`` file whose config.json asks Keras for far more than its weights (a user's
``--model`` and a run's ``model.keras``), a folder entry whose stat() fails (left out of a split unsaid), and a /proc
pseudo-file called "empty". Each test failed before its fix. Models are tiny and built here; nothing is fitted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import zipfile

import pytest

from featstore.errors import ConfigError
from featstore.images.decode import ImageError, load_image
from featstore.images.walk import find_images
from tests.test_adversarial_attack20_fixH import assert_bounded_and_accepted

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ------------------------------------------------------------------ 3. config.json sets what Keras allocates
@pytest.fixture(scope="module")
def small_keras(tmp_path_factory):
    """A 4-layer model (conv, flatten, dense 8, dense 2) saved as .keras: about 1,300 parameters."""
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(8, name="feat")(x)
    path = tmp_path_factory.mktemp("k") / "small.keras"
    keras.Model(inp, keras.layers.Dense(2, name="out")(x)).save(path)
    return path


def _edited(src, dst, old: str, new: str, packing: int = zipfile.ZIP_DEFLATED):
    """A copy of a .keras zip with ``old`` replaced by ``new`` in its config.json (7 KB deflated: a "config bomb")."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", packing) as w:
        for info in z.infolist():
            blob = z.read(info.filename)
            if info.filename == "config.json":
                assert old in blob.decode()
                blob = blob.decode().replace(old, new).encode()
            w.writestr(info.filename, blob)
    return dst


EDITS = {  # each asks for gigabytes; Keras built (random-initialised) them before it read a weight
    "dense units": ('"units": 8', '"units": 4000000'),
    "conv filters": ('"filters": 4', '"filters": 40000000'),
    "dense input": ('"input_shape": [null, 144]', '"input_shape": [null, 1000000000]'),
    "float units": ('"units": 8', '"units": 4e6'),
    "stored zip": ('"units": 8', '"units": 4000000', zipfile.ZIP_STORED),  # as Keras writes: weights read in place
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_model_config_asking_for_more_than_its_weights_is_refused_before_keras(
    small_keras, tmp_path, monkeypatch, edit
):
    """`extract --model bomb.keras` (units 4e6) peaked at 3,021 MiB, then said "not a Keras model (OOM ...)"."""
    import keras

    from featstore.models.saved import load_model_file

    bomb = _edited(small_keras, tmp_path / "bomb.keras", *EDITS[edit])
    assert bomb.stat().st_size < 30_000
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("Keras was asked to build it"))
    with pytest.raises(ConfigError) as err:
        load_model_file(bomb)
    msg = str(err.value)
    assert str(bomb) in msg and "builds at least" in msg and "model.weights.h5 holds 1,290" in msg, msg
    assert "\n" not in msg


def test_genuine_models_of_every_layer_kind_pass_the_bound(tmp_path):
    """The bound is a lower bound: a model Keras saved is never refused (dense, conv of each kind, recurrent and
    wrapped layers, attention, normalizations)."""
    import keras

    from featstore.models.saved import load_model_file

    L = keras.layers
    models = {
        "rnn": keras.Sequential(
            [keras.Input((7,), dtype="int32"), L.Embedding(50, 8), L.Bidirectional(L.LSTM(6, return_sequences=True))]
            + [L.GRU(5), L.Dense(2)]
        ),
        "wrapped": keras.Sequential([keras.Input((4, 6)), L.TimeDistributed(L.Dense(9)), L.LayerNormalization()]),
        "conv": keras.Sequential(
            [keras.Input((12, 12, 3)), L.SeparableConv2D(8, 3), L.DepthwiseConv2D(3, depth_multiplier=2)]
            + [L.Conv2DTranspose(4, 3), L.Conv2D(6, 3, groups=2), L.BatchNormalization(), L.Flatten(), L.Dense(3)]
        ),
    }
    inp = keras.Input((5, 8))
    models["attention"] = keras.Model(inp, L.Dense(2)(L.Flatten()(L.MultiHeadAttention(2, 4)(inp, inp))))
    # attack 20: lists of values in a preprocessing layer's config were read as sizes (ImageNet's mean and variance:
    # "builds at least 109,789,320,042 parameters" for a 112-parameter model)
    models["preprocessing"] = keras.Sequential(
        [keras.Input((3,)), L.Normalization(mean=[123.68, 116.78, 103.94], variance=[3409.0, 3262.7, 3291.0])]
        + [L.Dense(2)]
    )
    models["lookup"] = keras.Sequential(
        [keras.Input((1,), dtype="int64"), L.IntegerLookup(vocabulary=[10**9, 2 * 10**9, 3 * 10**9]), L.Embedding(5, 2)]
    )
    models["bins"] = keras.Sequential(
        [keras.Input((4,)), L.Discretization(bin_boundaries=[1000.0, 2000.0, 3000.0]), L.Embedding(4, 2)]
    )
    assert_bounded_and_accepted(tmp_path, models)
    load_model_file(tmp_path / "conv.keras")  # loads as before


def test_configs_that_hide_their_sizes_are_still_counted():
    """Attack 20: a Dense chain with its build_config removed was counted from the widest shape in the file (4):
    400,000 parameters for the 1.6e9 Keras built; an attention layer's value_dim was not counted (3.2e9 built)."""
    from featstore.models.keras_sizes import implied_parameters

    dense = [{"class_name": "Dense", "config": {"name": n, "units": 40000}} for n in "ab"]
    chain = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 4]}}, *dense]}}  # fmt: skip
    assert implied_parameters(chain)[0] >= 40000 * 40000
    mha = {"class_name": "MultiHeadAttention", "config": {"num_heads": 2, "key_dim": 8, "value_dim": 50_000_000},
           "build_config": {"shapes_dict": {"query_shape": [None, 4, 16], "value_shape": [None, 4, 16]}}}  # fmt: skip
    assert implied_parameters(mha)[0] >= 2 * 16 * 2 * 50_000_000


def test_run_model_keras_with_edited_config_is_refused_before_keras(small_keras, tmp_path, monkeypatch):
    """A dense run's model.keras with units 3e6 and its sha256 replaced in run.json made `runs evaluate` peak at
    3,758 MiB before "cannot be loaded by this Keras (OOM ...)"."""
    import keras

    from featstore.runs.artifacts import check_artifact
    from featstore.runs.files import BrokenRunError

    folder = tmp_path / "dense-1"
    folder.mkdir()
    bomb = _edited(small_keras, folder / "model.keras", '"units": 8', '"units": 3000000')
    artifact = {"file": "model.keras", "format": "keras-model", "sha256": hashlib.sha256(bomb.read_bytes()).hexdigest()}
    monkeypatch.setattr(keras.saving, "load_model", lambda *a, **k: pytest.fail("Keras was asked to build it"))
    with pytest.raises(BrokenRunError, match=r"model\.keras is refused before loading: its config\.json builds"):
        check_artifact(folder, artifact)
    good = folder / "model.keras"
    good.write_bytes(small_keras.read_bytes())
    assert check_artifact(folder, {**artifact, "sha256": hashlib.sha256(good.read_bytes()).hexdigest()}) == good


# ------------------------------------------------------------------ 4. an entry whose stat() fails is reported
def test_entry_whose_stat_fails_is_reported_not_dropped_unsaid(tmp_path, caplog):
    """17 nested folders of 240-byte names push an image past PATH_MAX: stat() says ENAMETOOLONG, and the folder (with
    its image) was left out of the split with no warning ("12 rows in the split, 0 failed")."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"x")
    fd = os.open(tmp_path / "cat", os.O_RDONLY)
    for i in range(17):
        name = f"{i:02d}" + "d" * 238
        os.mkdir(name, dir_fd=fd)
        sub = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    with caplog.at_level(logging.WARNING, logger="featstore.images.walk"):
        found = find_images(tmp_path / "cat")
    assert [p.name for p in found.files] == ["a.png"]
    (path, reason), *_ = [s for s in found.skipped_links if "cannot be read" in s[1]]
    assert os.strerror(errno.ENAMETOOLONG) in reason and "16" + "d" * 238 in path
    assert any("cannot be read" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ 8. a /proc pseudo-file is not "empty"
def test_proc_pseudo_file_is_not_called_empty(tmp_path):
    """A link status.png -> /proc/self/status (1.4 KB readable, st_size 0) was "empty file (0 bytes)"."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc here")
    (tmp_path / "status.png").symlink_to("/proc/self/status")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "status.png", 8)
    assert "empty" not in str(err.value) and "holds data" in str(err.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"^empty file \(0 bytes\)$"):
        load_image(tmp_path / "empty.png", 8)
