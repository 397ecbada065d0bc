"""Attack 68 #1 (High): a saved model's 2-D (C, L) map (a Conv1D's output after a Permute) was recorded
``layout_checked: True`` (the walk skipped every 2-D row), so ``fit --param reduce=avg`` and ``export --features avg``
averaged over its channels, exit 0. A map of every rank is now walked, and one whose channels are not proven last is
recorded "unknown" and refused under a reduce. Attack 68 #6 (Low): an EfficientNet ``*_se_reshape`` cut, a registry
backbone's ``(1, 1, C)`` map, was recorded "unknown" and refused, citing a ``--pooling`` never given."""

from __future__ import annotations

import pytest

import featstore
from featstore import provenance
from featstore.errors import ConfigError
from featstore.models.backbones import layout_of
from featstore.models.layout import data_format_at
from tests.conftest import SIZE, write_data_root

UNKNOWN = {provenance.LAYOUT_CHECKED: provenance.UNKNOWN}


def _cut(h, x):
    import keras

    return keras.Model(x, h)


def _maps():
    """``(name, cut model, layout_of expected)`` for a vector and 2-D, 3-D and 4-D maps, channels last or not proven."""
    import keras

    L = keras.layers
    found = []
    x = keras.Input((16, 16, 3))
    found.append(("vector", _cut(L.Dense(4)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(x))), x), {}))
    seq = L.Reshape((64, 12))(x)  # (h*w/4, 4 pixels' rgb): the input is channels last
    found.append(("2-D conv1d (L, C)", _cut(L.Conv1D(6, 4, name="c")(seq), x), {}))
    found.append(("2-D conv1d permuted (C, L)", _cut(L.Permute((2, 1))(L.Conv1D(6, 4)(seq)), x), UNKNOWN))
    found.append(("2-D tokens (h*w, c)", _cut(L.LayerNormalization()(L.Reshape((196, 5))(L.Conv2D(5, 3)(x))), x), {}))
    found.append(
        ("2-D tokens, lambda", _cut(L.Lambda(lambda t: t * 1.0)(L.Reshape((196, 5))(L.Conv2D(5, 3)(x))), x), UNKNOWN)
    )
    found.append(("3-D conv2d", _cut(L.ReLU()(L.Conv2D(4, 3)(x)), x), {}))
    found.append(("3-D conv2d permuted", _cut(L.Permute((3, 1, 2))(L.Conv2D(4, 3)(x)), x), UNKNOWN))
    cube = keras.Input((6, 6, 6, 2))
    found.append(("4-D conv3d", _cut(L.Conv3D(3, 2)(cube), cube), {}))
    found.append(("4-D conv3d permuted", _cut(L.Permute((4, 1, 2, 3))(L.Conv3D(3, 2)(cube)), cube), UNKNOWN))
    return found


def test_every_rank_of_map_is_walked_and_an_unproven_one_is_unknown():
    got = {name: layout_of(cut) for name, cut, _ in _maps()}
    assert got == {name: want for name, _, want in _maps()}


def test_a_reshape_keeps_the_last_axis_only_where_it_was_the_channels():
    import keras

    L = keras.layers
    x = keras.Input((8, 8, 3))
    c = L.Conv2D(4, 3, name="c")(x)  # an EfficientNet squeeze-excite: (c,) to (1, 1, c)
    se = L.Reshape((1, 1, 4), name="se_reshape")(L.GlobalAveragePooling2D()(c))
    assert data_format_at(_cut(se, x), se) == "channels_last"
    first = L.Conv2D(4, 3, data_format="channels_first")(L.Permute((3, 1, 2))(x))  # (4, 6, 6): its last is a width
    kept = L.Reshape((24, 6))(first)
    assert data_format_at(_cut(kept, x), kept) is None
    mixed = L.Reshape((24, 6))(L.Permute((3, 1, 2))(L.Conv2D(4, 3)(x)))  # last size kept, but past a Permute
    assert data_format_at(_cut(mixed, x), mixed) is None


@pytest.fixture(scope="module")
def conv1d_models(tmp_path_factory):
    import keras

    root = tmp_path_factory.mktemp("a68")
    keras.utils.set_random_seed(0)
    found = {}
    for name, permute in (("ncl", True), ("nlc", False)):
        x = keras.Input((SIZE, SIZE, 3))
        h = keras.layers.Conv1D(6, 8, strides=8, name="conv1d")(keras.layers.Reshape((SIZE * SIZE, 3))(x))
        if permute:  # (C=6, L) as a PyTorch port's Conv1d gives it
            h = keras.layers.Permute((2, 1), name="to_ncl")(h)
        keras.Model(x, h).save(root / f"{name}.keras")
        found[name] = root / f"{name}.keras"
    return found


def _extracted(tmp_path, config):
    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    for split in ("train", "validation", "test"):
        featstore.extract(data, split, store, config)
    return store


def test_a_permuted_2d_map_is_recorded_unknown_and_never_averaged(conv1d_models, tmp_path):
    store = _extracted(tmp_path, featstore.ExtractorConfig(model=str(conv1d_models["ncl"])))
    assert featstore.FeatureStore(store).metadata()[provenance.LAYOUT_CHECKED] == provenance.UNKNOWN
    with pytest.raises(ConfigError, match=r"maps \(6, 128\) per row whose channels axis .* --param reduce=") as e:
        featstore.fit(store, "logreg", {"reduce": ["avg"]})
    assert "--pooling" not in str(e.value) and "ncl.keras --layers" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"whose channels axis .* pass --features flat"):
        featstore.export(store, "train", tmp_path / "t.npz", features="avg")
    assert not (tmp_path / "t.npz").exists()
    featstore.fit(store, "logreg")  # flatten: every value, whatever the order


def test_a_2d_map_proven_channels_last_is_still_reduced(conv1d_models, tmp_path):
    store = _extracted(tmp_path, featstore.ExtractorConfig(model=str(conv1d_models["nlc"])))
    assert featstore.FeatureStore(store).metadata()[provenance.LAYOUT_CHECKED] is True
    assert featstore.fit(store, "logreg", {"reduce": ["avg"]}).params["reduce"] == "avg"
    featstore.export(store, "train", tmp_path / "t.npz", features="avg")


def test_a_registry_backbones_se_reshape_is_checked_and_reduced(tmp_path):
    config = featstore.ExtractorConfig(
        model="efficientnet_b0", image_size=SIZE, weights="none", seed=7, layer="block1a_se_reshape"
    )
    store = _extracted(tmp_path, config)
    assert featstore.FeatureStore(store).metadata()[provenance.LAYOUT_CHECKED] is True
    assert featstore.fit(store, "logreg", {"reduce": ["avg"]}).params["reduce"] == "avg"
