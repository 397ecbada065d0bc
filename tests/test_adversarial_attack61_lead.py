"""Attack 61 (on this session's newest fixes): #1 a registered classifier's own search grid skipped the reload check
before the fit (the fit ran, then was refused); #2 a channels_first map of rank 3 (a Conv1D's (C, L)) was stored as
it is, and reduce=avg averaged over its channels; #4 isotonic calibration or a manhattan k-NN passed the check,
then the fit was thrown away; #5 a registered grid over 10,000 settings was called "the values given"."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore.errors import ConfigError
from featstore.experiments import classifiers
from featstore.experiments.params import Param

from .test_adversarial_attack54_fixCI import _synthetic


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))


def test_a_registered_grid_is_checked_before_any_fit(tmp_path, registry, monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    from featstore.experiments import selection

    featstore.register_classifier(
        "mine", "lr or nb", {"kind": Param(str, "lr", ("lr", "nb"))}, grid={"kind": ["lr", "nb"]}
    )(lambda p: GaussianNB() if p["kind"] == "nb" else LogisticRegression(max_iter=200))
    fits = []
    real = selection.fit_one
    monkeypatch.setattr(selection, "fit_one", lambda *a, **k: fits.append(1) or real(*a, **k))
    store = _synthetic(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match=r"its classifier, a GaussianNB, is not one featstore loads"):
        featstore.fit(store, "mine", search=True)
    assert not fits and not (tmp_path / "s.runs").exists()


@pytest.mark.parametrize(
    ("build", "said"),
    [
        ("isotonic", r"method='isotonic', whose fit adds a type runs do not load; use 'sigmoid'"),
        ("manhattan", r"metric='manhattan', whose fit adds a type runs do not load; use 'euclidean' or 'cosine'"),
    ],
)
def test_settings_whose_fit_adds_a_type_runs_cannot_load_are_refused_first(tmp_path, registry, build, said):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    est = (
        (lambda p: CalibratedClassifierCV(SVC(), method="isotonic"))
        if build == "isotonic"
        else (lambda p: KNeighborsClassifier(metric="manhattan"))
    )
    featstore.register_classifier(f"c_{build}", build, {})(est)
    with pytest.raises(ConfigError, match=said):
        featstore.fit(_synthetic(tmp_path / "s.h5"), f"c_{build}")
    assert not (tmp_path / "s.runs").exists()


def test_a_huge_registered_grid_is_named_as_the_grid(tmp_path, registry):
    from sklearn.linear_model import LogisticRegression

    featstore.register_classifier(
        "big", "big grid", {"a": Param(int, 1, low=1, high=1000), "b": Param(int, 1, low=1, high=1000)},
        grid={"a": list(range(1, 201)), "b": list(range(1, 201))},
    )(lambda p: LogisticRegression())  # fmt: skip
    with pytest.raises(ConfigError, match=r"its search grid \(--search\) and the values given make 40,000 settings"):
        featstore.fit(_synthetic(tmp_path / "s.h5"), "big", search=True)


def test_a_channels_first_conv1d_map_is_stored_channels_last(tmp_path):
    import keras

    from featstore.models.extractor import Extractor, ExtractorConfig

    x = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, name="c0")(x)
    h = keras.layers.Reshape((196, 4), name="seq")(h)
    h = keras.layers.Permute((2, 1), name="to_ncl")(h)  # a PyTorch port's (N, C, L)
    h = keras.layers.Conv1D(6, 3, data_format="channels_first", name="c1")(h)
    m = keras.Model(x, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(h)))
    m.save(tmp_path / "ncl.keras")
    ex = Extractor(ExtractorConfig(model=str(tmp_path / "ncl.keras"), layer="c1", image_size=16))
    assert ex.feature_shape == (194, 6) and ex.attrs.get("map_layout") == "channels_last_from_channels_first"
    imgs = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    want = keras.Model(m.inputs[0], m.get_layer("c1").output)(imgs.astype("float32")).numpy()
    assert np.allclose(ex(imgs), np.swapaxes(want, 1, 2), atol=1e-5)
