"""Temperature scaling (featstore.stats.calibration): recovers a known temperature, never changes a prediction,
and lowers held-out log-loss and ECE of an over-confident and an under-confident model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.stats import apply_calibration, expected_calibration_error, fit_temperature, log_loss, softmax
from featstore.stats.calibration import identity_calibration


def _draw(n, k, true_t, seed=0, scale=3.0):
    """Logits and labels drawn from softmax(logits / true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = softmax(z / true_t)
    u = rng.random((n, 1))
    y = (p.cumsum(axis=1) < u).sum(axis=1).clip(max=k - 1)
    return z, y


@pytest.mark.parametrize("true_t,k", [(2.5, 5), (0.4, 5), (1.0, 10), (3.0, 2)])
def test_recovers_a_known_temperature_from_logits(true_t, k):
    z, y = _draw(20000, k, true_t)
    rec = fit_temperature(z, y, input="logits")
    assert rec["T"] == pytest.approx(true_t, rel=0.06)
    assert rec["nll_after"] <= rec["nll_before"] and not rec["at_bound"]


def test_recovers_it_from_probabilities_and_binary_decision_values():
    z, y = _draw(20000, 4, 2.0, seed=1)
    assert fit_temperature(softmax(z), y)["T"] == pytest.approx(2.0, rel=0.06)  # log(softmax(z)) = z + const
    d = np.random.default_rng(2).normal(size=20000) * 4
    yb = (np.random.default_rng(3).random(20000) < 1 / (1 + np.exp(-d / 1.5))).astype(int)
    assert fit_temperature(d, yb, input="logits")["T"] == pytest.approx(1.5, rel=0.06)


def test_never_changes_the_predicted_class():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 6)) * 5
    p = softmax(z)
    p[rng.random(p.shape) < 0.3] = 0.0  # exact zeros, as k-NN and forests give
    p[np.arange(500), z.argmax(axis=1)] += 0.05  # the top class keeps a positive probability
    p /= p.sum(axis=1, keepdims=True)
    for t in (0.011, 0.3, 1.0, 4.0, 99.0):
        for values, kind in ((z, "logits"), (p, "probabilities")):
            out = apply_calibration({"method": "temperature", "T": t, "input": kind}, values)
            np.testing.assert_array_equal(out.argmax(axis=1), np.asarray(values).argmax(axis=1))
            np.testing.assert_allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("sharpness", [3.0, 0.3])  # over-confident (logits x3), under-confident (x0.3)
def test_lowers_held_out_log_loss_and_ece(sharpness):
    z, y = _draw(6000, 5, 1.0, seed=5)
    model = softmax(z * sharpness)  # what a mis-scaled model would say
    fit_rows, test_rows = slice(0, 3000), slice(3000, None)
    rec = fit_temperature(model[fit_rows], y[fit_rows])
    assert (rec["T"] > 1) == (sharpness > 1)  # softens the over-confident one, sharpens the other
    assert rec["T"] == pytest.approx(sharpness, rel=0.1)
    cal = apply_calibration(rec, model[test_rows])
    assert log_loss(y[test_rows], cal) < log_loss(y[test_rows], model[test_rows]) - 0.05
    assert expected_calibration_error(y[test_rows], cal) < 0.5 * expected_calibration_error(
        y[test_rows], model[test_rows]
    )


def test_probabilities_with_zeros_and_the_record():
    """A k-NN-like model (votes of 3 neighbours) with exact zeros, the true class among them: still a finite fit."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, size=300)
    votes = np.stack([np.bincount(np.where(rng.random(3) < 0.3, t, rng.integers(0, 3, 3)), minlength=3) for t in y])
    p = votes / 3
    assert (p[np.arange(300), y] == 0).any()
    rec = fit_temperature(p, y)
    assert np.isfinite(rec["T"]) and rec["nll_after"] <= rec["nll_before"]
    assert rec["floor"] == 1e-4 and rec["input"] == "probabilities" and rec["n"] == 300  # 1/3 is far above it
    assert fit_temperature([[1e-9, 1 - 1e-9], [0.0, 1.0]], [1, 1])["floor"] == 1e-9  # only the zeros are lifted
    assert json.loads(json.dumps(rec)) == rec


def test_all_right_ends_on_the_sharp_bound():
    z = np.array([[3.0, 0.0], [0.0, 3.0]] * 10)
    rec = fit_temperature(z, np.array([0, 1] * 10), input="logits")
    assert rec["at_bound"] and rec["T"] == rec["bounds"][0]


def test_bad_records_and_inputs_are_refused_with_the_choices():
    p = np.array([[0.7, 0.3]])
    with pytest.raises(ConfigError, match="unknown calibration method 'platt'; choose one of: temperature, none"):
        apply_calibration({"method": "platt"}, p)
    for t in (0, -1.0, float("nan"), "2", True, None):
        with pytest.raises(ConfigError, match="finite positive 'T'"):
            apply_calibration({"method": "temperature", "T": t}, p)
    with pytest.raises(ConfigError, match="unknown calibration input 'scores'; choose one of: logits, probabilities"):
        fit_temperature(p, [0], input="scores")
    with pytest.raises(ValueError, match="class indices in 0..1"):
        fit_temperature(p, [2])
    with pytest.raises(ValueError, match="at least one held-out row"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, int))
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(np.array([[np.inf, 0.0]]), [0], input="logits")
    np.testing.assert_array_equal(apply_calibration(identity_calibration(), p), p)


# ------------------------------------------------------------------ where it is fitted (featstore.experiments.calibration)
def _copies(n_images=80, copies=4, k=4, seed=0):
    """Copy-major rows of ``copies`` near-identical copies per image, labels random per image (nothing to learn)."""
    rng = np.random.default_rng(seed)
    X_img, y_img = rng.normal(size=(n_images, 6)), rng.integers(0, k, size=n_images)
    X = np.concatenate([X_img + rng.normal(size=X_img.shape) * 1e-3 for _ in range(copies)])
    return X, np.tile(y_img, copies), np.tile(np.arange(n_images), copies)


def test_out_of_fold_never_predicts_a_row_from_a_copy_of_its_image():
    """1-NN finds a row's own copy when it is in training: labels random per image, so only a leak scores well."""
    from sklearn.neighbors import KNeighborsClassifier

    from featstore.experiments.calibration import out_of_fold_proba

    X, y, groups = _copies()
    leaky, n = out_of_fold_proba(KNeighborsClassifier(1), X, y, 5, groups=None)
    kept, m = out_of_fold_proba(KNeighborsClassifier(1), X, y, 5, groups=groups)
    assert n == m == 5 and leaky.shape == kept.shape == (len(y), 5)
    assert np.mean(leaky.argmax(axis=1) == y) > 0.95  # each held-out copy finds another copy in training
    assert np.mean(kept.argmax(axis=1) == y) < 0.45  # chance is 0.25 for 4 classes
    assert (kept[:, 4] == 0).all()  # a store class absent from train


def test_calibrate_out_of_fold_and_on_validation_record_where():
    from featstore.experiments.calibration import _accepts_groups, calibrate_on_validation, calibrate_out_of_fold
    from featstore.experiments.classifiers import build_classifier

    X, y, groups = _copies(n_images=60, k=3, seed=1)
    X[:, 0] += y * 1.5  # something to learn this time
    svm = build_classifier("svm", {"calibration_folds": 2})
    assert _accepts_groups(svm) and not _accepts_groups(build_classifier("logreg"))
    rec = calibrate_out_of_fold(svm, X, y, 3, groups=groups, n_folds=3, seed=4)
    assert rec["fitted_on"] == "out-of-fold on train (3 folds, seed 4, copies of one image kept in one fold)"
    assert rec["method"] == "temperature" and rec["n"] == len(y) and json.loads(json.dumps(rec)) == rec
    val = calibrate_on_validation(softmax(np.eye(3)[y] * 4), y)
    assert val["fitted_on"] == "validation" and val["T"] < 1  # always right: sharper
    with pytest.raises(ConfigError, match=r"at least 2 images of every class; per class there are \[1, 2\]"):
        calibrate_out_of_fold(svm, X[:4], np.array([0, 1, 1, 1]), 2, groups=np.array([0, 1, 1, 2]))


def test_applying_a_temperature_leaves_the_callers_arrays_as_they_were():
    """apply_calibration and softmax work in place on their own copies (issue 21: three (N, K) temporaries each at
    1,000 classes); the logits or probabilities a caller passes must come back unchanged."""
    from featstore.stats.calibration import apply_calibration, softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4))
    proba = softmax(logits)
    before_l, before_p = logits.copy(), proba.copy()
    for values, input in ((logits, "logits"), (proba, "probabilities")):
        out = apply_calibration({"method": "temperature", "T": 2.0, "input": input, "floor": 1e-4}, values)
        np.testing.assert_allclose(out.sum(axis=1), 1.0)
    np.testing.assert_array_equal(logits, before_l)
    np.testing.assert_array_equal(proba, before_p)
    np.testing.assert_allclose(
        apply_calibration({"method": "temperature", "T": 2.0, "input": "logits"}, logits), softmax(logits / 2)
    )
