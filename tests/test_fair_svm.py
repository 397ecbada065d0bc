"""featstore's svm predicts exactly as scikit-learn's SVC, and its probabilities never disagree with its predictions.

The reference is plain scikit-learn: the same steps up to the classifier (FeatureReshape, StandardScaler,
optionally PCA) followed by ``SVC`` of the same parameters, on fixed synthetic features of several classes.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from featstore.errors import ConfigError
from featstore.experiments.classifiers import build_classifier
from featstore.models.reshape import FeatureReshape
from featstore.models.svm import TemperedSVC


def _features(n_classes: int, n: int = 240, seed: int = 0):
    """Stored-feature-like arrays (N, 2, 2, 6) float32: one fixed mean per class, overlapping noise."""
    means = np.random.default_rng(100 + n_classes).normal(size=(n_classes, 2, 2, 6)) * 0.6
    y = np.arange(n) % n_classes
    X = means[y] + np.random.default_rng(seed).normal(size=(n, 2, 2, 6))
    return X.astype(np.float32), y


def _reference(params: dict) -> Pipeline:
    """Plain scikit-learn with featstore's steps up to the classifier."""
    steps = [
        ("features", FeatureReshape(params.get("reduce", "flatten"), params.get("power", 1.0), params.get("l2", False)))
    ]
    if params.get("scale", True):
        steps.append(("scale", StandardScaler()))
    if params.get("pca", 0):
        steps.append(("pca", PCA(params["pca"], svd_solver="randomized", random_state=params.get("seed", 0))))
    gamma = params.get("gamma", "scale")
    svc = SVC(
        C=params.get("C", 1.0),
        kernel=params.get("kernel", "linear"),
        gamma=gamma if gamma in ("scale", "auto") else float(gamma),
    )
    return Pipeline(steps + [("clf", svc)])


CASES = [
    (2, {"kernel": "linear"}),
    (2, {"kernel": "rbf", "C": 10.0}),
    (3, {"kernel": "linear", "C": 0.1}),
    (3, {"kernel": "rbf", "gamma": "0.05"}),
    (5, {"kernel": "linear", "C": 10.0}),
    (5, {"kernel": "rbf", "gamma": "auto"}),
    (10, {"kernel": "linear"}),
    (10, {"kernel": "rbf", "C": 0.1}),
    (4, {"kernel": "rbf", "power": 0.5, "l2": True, "scale": False, "pca": 5}),
    (4, {"kernel": "linear", "reduce": "avg"}),
]


@pytest.mark.parametrize("n_classes,params", CASES)
def test_svm_predicts_exactly_as_scikit_learn(n_classes, params):
    X, y = _features(n_classes)
    X_new, _ = _features(n_classes, n=500, seed=1)
    X_new *= 1.5  # farther from the training data: more tied votes
    if params.get("power", 1.0) != 1.0:
        X, X_new = np.abs(X), np.abs(X_new)
    ours = build_classifier("svm", params).fit(X, y)
    ref = _reference(params).fit(X, y)
    for rows in (X, X_new):
        np.testing.assert_array_equal(ours.predict(rows), ref.predict(rows))
        np.testing.assert_array_equal(ours.decision_function(rows), ref.decision_function(rows))
        proba = ours.predict_proba(rows)
        np.testing.assert_array_equal(proba.argmax(axis=1), ours.predict(rows))
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert ((proba >= 0) & (proba <= 1)).all()


def test_the_reference_argmax_is_not_the_prediction_but_ours_is():
    """scikit-learn's one-vs-rest decision function breaks tied votes by confidence, libsvm's predict by class order:
    on these rows the two differ, and featstore's probabilities still follow the prediction."""
    X, y = _features(10)
    X_new, _ = _features(10, n=2000, seed=2)
    X_new *= 2.0
    ref = _reference({}).fit(X, y)
    differ = ref.decision_function(X_new).argmax(axis=1) != ref.predict(X_new)
    assert differ.sum() > 10  # the case the swap exists for is real here
    ours = build_classifier("svm", {}).fit(X, y)
    np.testing.assert_array_equal(ours.predict_proba(X_new).argmax(axis=1), ref.predict(X_new))


def test_exact_ties():
    """Decision values of exactly 0: libsvm votes for the second class of each pair, scikit-learn's one-vs-rest
    shape for the first. Three classes on the unit vectors, asked at points equidistant from all three."""
    X, y = np.eye(3), np.arange(3)
    at = np.array([[0.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 1.0, 1.0]])
    for kernel in ("linear", "rbf"):
        svc = SVC(kernel=kernel).fit(X, y)
        ours = TemperedSVC(kernel=kernel, calibration_folds=0).fit(X, y)
        assert svc.predict(at).tolist() == ours.predict(at).tolist() == [2, 2, 2]
        assert svc.decision_function(at).argmax(axis=1).tolist() == [0, 0, 0]  # the disagreement, exactly
        np.testing.assert_array_equal(ours.decision_function(at), svc.decision_function(at))
        assert ours.predict_proba(at).argmax(axis=1).tolist() == [2, 2, 2]
    Xb, yb = np.array([[-1.0], [1.0]]), np.array([0, 1])  # binary: a decision value of exactly 0 predicts class 1
    svc, ours = SVC(kernel="linear").fit(Xb, yb), TemperedSVC(calibration_folds=0).fit(Xb, yb)
    assert svc.predict([[0.0]]).tolist() == ours.predict([[0.0]]).tolist() == [1]
    p = ours.predict_proba([[0.0]])
    assert p.argmax(axis=1).tolist() == [1] and p[0] == pytest.approx([0.5, 0.5])


def test_temperature_changes_probabilities_not_predictions():
    X, y = _features(5)
    X_new, _ = _features(5, n=300, seed=3)
    fits = {f: build_classifier("svm", {"kernel": "rbf", "calibration_folds": f}).fit(X, y) for f in (0, 2, 5)}
    assert fits[0].named_steps["clf"].temperature_ == 1.0 and fits[0].named_steps["clf"].calibration_folds_ == 0
    temps = {f: m.named_steps["clf"].temperature_ for f, m in fits.items()}
    assert temps[2] != 1.0 and temps[5] != 1.0 and temps[2] != temps[5]
    for m in fits.values():
        np.testing.assert_array_equal(m.predict(X_new), fits[0].predict(X_new))
    assert not np.allclose(fits[2].predict_proba(X_new), fits[0].predict_proba(X_new))
    assert fits[5].named_steps["clf"].calibration_folds_ == 5


def test_copies_of_one_image_stay_in_one_calibration_fold():
    """Four identical copies of every image: without groups each held-out row has its copies in training, so the
    out-of-fold values look sure and the temperature comes out small; with groups it does not."""
    X, y = _features(3, n=90)
    Xc, yc = np.repeat(X, 4, axis=0), np.repeat(y, 4)
    groups = np.repeat(np.arange(90), 4)
    pipe = build_classifier("svm", {"kernel": "rbf"})
    leaky = pipe.fit(Xc, yc).named_steps["clf"].temperature_
    grouped = build_classifier("svm", {"kernel": "rbf"}).fit(Xc, yc, clf__groups=groups).named_steps["clf"]
    assert grouped.calibration_folds_ == 3
    assert grouped.temperature_ > 1.5 * leaky
    with pytest.raises(ValueError, match="one group per row"):
        TemperedSVC().fit(X.reshape(90, -1), y, groups=np.arange(3))


def test_small_classes_and_bad_folds():
    X, y = _features(3, n=30)
    y = y.copy()
    y[y == 2] = np.r_[2, np.zeros(9, int)]  # class 2 has one image: no fold can hold it out and keep it in training
    m = build_classifier("svm", {}).fit(X, y).named_steps["clf"]
    assert (m.temperature_, m.calibration_folds_) == (1.0, 0)
    for bad in (1, -1):
        with pytest.raises(ConfigError, match="calibration_folds must be 0"):
            build_classifier("svm", {"calibration_folds": bad})
        with pytest.raises(ConfigError, match="calibration_folds must be 0"):
            TemperedSVC(calibration_folds=bad).fit(X.reshape(30, -1), y)


def test_skops_round_trip_with_only_the_allowed_types(tmp_path):
    """The fitted pipeline saves with skops and loads trusting ARTIFACT_TYPES alone, predicting the same."""
    import skops.io as sio

    from featstore.runs.artifacts import ARTIFACT_TYPES

    X, y = _features(4)
    est = build_classifier("svm", {"kernel": "rbf", "pca": 3}).fit(X, y)
    path = tmp_path / "m.skops"
    sio.dump(est, path)
    untrusted = sio.get_untrusted_types(file=path)
    assert set(untrusted) <= ARTIFACT_TYPES and "featstore.models.svm.TemperedSVC" in untrusted
    loaded = sio.load(path, trusted=untrusted)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
