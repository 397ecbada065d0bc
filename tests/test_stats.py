"""featstore.stats against known values: scipy's Wilson interval and binomial test, scikit-learn's metrics,
hand-computed calibration bins, and the coverage of the bootstrap intervals on simulated data."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
from scipy.stats import binomtest

from featstore.stats import (
    balanced_accuracy,
    bootstrap_interval,
    compare_predictions,
    describe_difference,
    expected_calibration_error,
    log_loss,
    macro_f1,
    mcnemar,
    mcnemar_p,
    mean_sd,
    mean_tolerance,
    paired_bootstrap,
    proportion_interval,
    reliability,
    split_metrics,
    stratified_group_folds,
    top_k_accuracy,
    wilson_interval,
)


# ------------------------------------------------------------------ intervals of one figure
@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (81, 100), (1, 3), (500, 1000), (999, 1000), (7, 2000)])
def test_wilson_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)


@pytest.mark.parametrize("level", [0.8, 0.9, 0.99])
def test_proportion_interval_at_other_levels_matches_scipy(level):
    ref = binomtest(37, 50).proportion_ci(confidence_level=level, method="wilson")
    iv = proportion_interval(37, 50, level)
    assert (iv.estimate, iv.method) == (37 / 50, "wilson")
    assert iv.low == pytest.approx(ref.low, abs=1e-9) and iv.high == pytest.approx(ref.high, abs=1e-9)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert math.isnan(proportion_interval(0, 0).estimate)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        proportion_interval(1, 2, 95)


def test_mean_sd_and_tolerance():
    assert mean_sd([0.7, 0.8, 0.9]) == (pytest.approx(0.8), pytest.approx(0.1))
    assert mean_sd([0.5]) == (0.5, 0.0)
    assert mean_tolerance(0.0, 5) == 0.011
    assert mean_tolerance(0.05, 5) == pytest.approx(4 * 0.05 * math.sqrt(2 / 5))


def test_bootstrap_interval_of_a_mean_agrees_with_normal_theory():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    iv = bootstrap_interval(lambda a: float(a.mean()), x, n_boot=4000, seed=3)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert iv.high == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert bootstrap_interval(lambda a: float(a.mean()), x, n_boot=200, seed=3) == bootstrap_interval(
        lambda a: float(a.mean()), x, n_boot=200, seed=3
    )  # seeded
    json.dumps(iv.to_dict())


def test_bootstrap_interval_resamples_rows_jointly_and_refuses_bad_input():
    y = np.arange(50) % 5
    iv = bootstrap_interval(lambda a, b: float(np.mean(a == b)), y, y.copy(), n_boot=100)
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)  # the same rows of both arrays, always equal
    with pytest.raises(ValueError, match="different lengths"):
        bootstrap_interval(np.mean, y, y[:3])
    with pytest.raises(ValueError, match="at least one row"):
        bootstrap_interval(np.mean, np.array([]))
    with pytest.raises(ValueError, match="NaN on a bootstrap resample"):
        bootstrap_interval(lambda a: float("nan"), y, n_boot=5)


# ------------------------------------------------------------------ paired tests
@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 3), (10, 2), (2, 10), (40, 60), (0, 25), (517, 480)])
def test_mcnemar_p_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-10, abs=1e-300)


def _pair(n_both, n_a_only, n_b_only, n_neither, seed=0):
    """Labels and two predictions with the given numbers of rows right by both, A only, B only and neither (shuffled)."""
    kind = np.repeat([0, 1, 2, 3], [n_both, n_a_only, n_b_only, n_neither])
    np.random.default_rng(seed).shuffle(kind)
    y = np.arange(len(kind)) % 3
    wrong = (y + 1) % 3
    a = np.where(np.isin(kind, [0, 1]), y, wrong)
    b = np.where(np.isin(kind, [0, 2]), y, (y + 2) % 3)  # B's mistakes differ from A's: counted as both wrong
    return y, a, b


def test_mcnemar_counts_discordant_rows_only():
    y, a, b = _pair(50, 7, 2, 11)
    m = mcnemar(y, a, b)
    assert (m.b, m.c) == (7, 2) and m.p == pytest.approx(binomtest(7, 9).pvalue)
    assert mcnemar([], [], []) == mcnemar([1, 2], [1, 2], [1, 2])  # no rows and no discordant rows: p = 1
    assert mcnemar([], [], []).p == 1.0
    with pytest.raises(ValueError, match="same rows"):
        mcnemar([0, 1], [0, 1], [0])


def test_paired_bootstrap_is_row_resampling():
    """The multinomial shortcut has the distribution of resampling rows: same interval as the generic bootstrap."""
    y, a, b = _pair(150, 30, 18, 22, seed=2)
    fast = paired_bootstrap(y, a, b, n_boot=20000, seed=5)
    slow = bootstrap_interval(lambda y, a, b: float(np.mean(a == y) - np.mean(b == y)), y, a, b, n_boot=4000, seed=6)
    assert fast.estimate == pytest.approx(12 / 220) and slow.estimate == pytest.approx(12 / 220)
    step = 1 / 220  # the difference moves in steps of one row: the two may land one step apart
    assert fast.low == pytest.approx(slow.low, abs=1.5 * step) and fast.high == pytest.approx(slow.high, abs=1.5 * step)
    assert paired_bootstrap(y, a, b, n_boot=500, seed=1) == paired_bootstrap(y, a, b, n_boot=500, seed=1)
    same = paired_bootstrap(y, a, a)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="at least one row"):
        paired_bootstrap([], [], [])


def test_paired_bootstrap_covers_the_true_difference():
    """Simulated pairs of classifiers with a known difference (+3 points): the 95 % interval covers it about 95 % of the time."""
    rng = np.random.default_rng(0)
    n, covered, trials = 400, 0, 300
    for t in range(trials):
        kind = rng.choice(4, size=n, p=[0.75, 0.08, 0.05, 0.12])  # both, A only, B only, neither
        y = np.zeros(n, int)
        a, b = np.where(np.isin(kind, [0, 1]), 0, 1), np.where(np.isin(kind, [0, 2]), 0, 1)
        iv = paired_bootstrap(y, a, b, n_boot=2000, seed=t)
        covered += iv.low <= 0.03 <= iv.high
    assert 0.91 <= covered / trials <= 0.99


def test_describe_difference_in_words():
    big = compare_predictions(*_pair(800, 60, 20, 120), "ensemble", "logreg")
    assert big.mcnemar.p < 0.001 and big.verdict == "larger than chance"
    assert re.fullmatch(
        r"ensemble beats logreg by 4\.0 points \(95 % CI [\d.]+ to [\d.]+; McNemar p < 0\.001 on 80 discordant rows "
        r"of 1000\): larger than chance",
        big.sentence(),
    ), big.sentence()
    lo, hi = (float(x) for x in re.findall(r"CI ([\d.]+) to ([\d.]+)", big.sentence())[0])
    assert lo == pytest.approx(big.difference.low * 100, abs=0.05) and hi == pytest.approx(
        big.difference.high * 100, abs=0.05
    )

    flipped = compare_predictions(*_pair(800, 20, 60, 120), "ensemble", "logreg")  # B better: said from B's side
    assert flipped.sentence().startswith("logreg beats ensemble by 4.0 points (95 % CI ")
    assert flipped.difference.estimate == pytest.approx(-0.04)

    noise = compare_predictions(*_pair(880, 12, 10, 98), "ensemble", "svm")
    p = f"{float(f'{binomtest(10, 22).pvalue:.2g}'):g}"
    assert noise.verdict == "within noise"
    assert re.fullmatch(
        rf"ensemble beats svm by 0\.2 points \(95 % CI -[\d.]+ to [\d.]+; McNemar p = {p} on 22 discordant rows of "
        r"1000\): within noise",
        noise.sentence(),
    ), noise.sentence()

    tie = describe_difference(*_pair(90, 5, 5, 0), "a", "b")
    assert tie.startswith("a and b tie (95 % CI -") and tie.endswith(
        "McNemar p = 1 on 10 discordant rows of 100): within noise"
    )
    same = describe_difference(*_pair(90, 0, 0, 10))
    assert same.startswith("A and B are right on exactly the same 100 rows (no discordant rows; the difference is ")
    assert same.endswith(" points, 95 % CI): no difference seen"), same
    json.dumps(big.to_dict())
    with pytest.raises(ValueError, match="at least one row"):
        compare_predictions([], [], [])


def test_borderline_when_test_and_interval_disagree():
    """6 against 0 discordant rows: McNemar p = 0.031 (< 0.05), and the paired interval of +6 points on 100 rows
    excludes 0 as well; at 5 against 0 (p = 0.0625) both include 0 (Newcombe's interval excluded it, attack 65 #1);
    at 16 against 6 (p = 0.052) the interval excludes 0 and the test does not: the sentence says so."""
    six = compare_predictions(*_pair(80, 6, 0, 14))
    assert six.mcnemar.p == pytest.approx(2 / 64) and six.difference.low > 0 and six.verdict == "larger than chance"
    five = compare_predictions(*_pair(80, 5, 0, 15))
    assert five.mcnemar.p == pytest.approx(2 / 32) and five.difference.low < 0 and five.verdict == "within noise"
    near = compare_predictions(*_pair(60, 16, 6, 18))
    assert 0.05 < near.mcnemar.p < 0.06 and near.difference.low > 0
    assert near.verdict == "borderline" and "disagree" in near.sentence()


# ------------------------------------------------------------------ metrics against scikit-learn
def _scores(n=300, k=7, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return y, p


def test_metrics_match_scikit_learn():
    from sklearn import metrics as skm

    y, p = _scores()
    pred = p.argmax(axis=1)
    labels = list(range(p.shape[1]))
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=labels), rel=1e-12)
    for k in (1, 2, 3, 5):
        assert top_k_accuracy(y, p, k) == pytest.approx(skm.top_k_accuracy_score(y, p, k=k, labels=labels))
    assert balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_metrics_with_absent_classes_and_zero_probabilities_match_scikit_learn():
    from sklearn import metrics as skm

    y = np.array([0, 0, 1, 1, 1, 3])
    pred = np.array([0, 2, 1, 1, 0, 3])  # class 2 predicted but never true; class 3 true once
    p = np.eye(4)[pred] * 0.9 + 0.025
    p[1] = [0.0, 0.0, 1.0, 0.0]  # a confident mistake with an exact zero on the true class
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1, 2, 3]), rel=1e-12)
    assert math.isfinite(log_loss(y, p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns that y_pred holds a class y_true lacks
        want = skm.balanced_accuracy_score(y, pred)
    assert balanced_accuracy(y, pred) == pytest.approx(want) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))


def test_top_k_shares_ties():
    uniform = np.full((4, 5), 0.2)
    y = np.array([0, 1, 2, 4])
    assert top_k_accuracy(y, uniform, 1) == pytest.approx(1 / 5)
    assert top_k_accuracy(y, uniform, 2) == pytest.approx(2 / 5)
    assert top_k_accuracy(y, uniform, 5) == 1.0
    assert top_k_accuracy([2], [[0.5, 0.25, 0.25]], 2) == 0.5  # tied with class 1 for the second place
    with pytest.raises(ValueError, match="class indices 0..2"):
        top_k_accuracy([3], [[0.5, 0.25, 0.25]], 1)


def test_reliability_bins_by_hand():
    """Ten rows, five bins: each bin's count, mean confidence and accuracy worked out on paper."""
    p_top = np.array([0.15, 0.35, 0.45, 0.55, 0.65, 0.65, 0.75, 0.95, 0.95, 0.95])
    right = np.array([0, 1, 0, 1, 1, 0, 1, 1, 1, 0], bool)
    proba = np.stack([p_top, 1 - p_top], axis=1)
    proba[p_top < 0.5] = proba[p_top < 0.5][:, ::-1]  # the top probability is always the predicted class's
    y = np.where(right, proba.argmax(1), 1 - proba.argmax(1))
    rel = reliability(y, proba, n_bins=5)
    # top probabilities: 0.85 (from 0.15), 0.65 (0.35), 0.55 (0.45), 0.55, 0.65, 0.65, 0.75, 0.95 x 3
    # bin (0.4, 0.6]: rows 2, 3 (0.55 each) -> 1 right of 2 (conf 0.55); (0.6, 0.8]: rows 1, 4, 5, 6 (0.65 x 3, 0.75)
    # -> 3 right of 4 (conf 0.675); (0.8, 1]: rows 0, 7, 8, 9 (0.85, 0.95 x 3) -> 2 right of 4 (conf 0.925)
    assert [b.count for b in rel.bins] == [0, 0, 2, 4, 4]
    assert [round(b.confidence, 4) for b in rel.bins[2:]] == [0.55, 0.675, 0.925]
    assert [b.accuracy for b in rel.bins[2:]] == [0.5, 0.75, 0.5]
    ece = 2 / 10 * 0.05 + 4 / 10 * 0.075 + 4 / 10 * 0.425
    assert rel.ece == pytest.approx(ece) == pytest.approx(expected_calibration_error(y, proba, n_bins=5))
    d = rel.to_dict()
    assert d["bins"][0]["confidence"] is None and json.dumps(d)


def test_ece_of_a_calibrated_and_an_overconfident_model():
    y, p = _scores(n=20000, seed=1)  # labels drawn from p: calibrated by construction
    assert expected_calibration_error(y, p) < 0.015
    sharp = p**3 / (p**3).sum(axis=1, keepdims=True)
    assert expected_calibration_error(y, sharp) > 0.1
    assert reliability(y, p).bins[-1].high == 1.0 and sum(b.count for b in reliability(y, p).bins) == 20000


def test_split_metrics():
    y, p = _scores()
    m = split_metrics(y, p)
    assert m["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    lo, hi = wilson_interval(int(np.sum(p.argmax(1) == y)), len(y))
    assert (m["accuracy_ci"]["low"], m["accuracy_ci"]["high"]) == (lo, hi)
    assert m["top5"] == top_k_accuracy(y, p, 5) and m["ece"] == expected_calibration_error(y, p)
    assert "top5" not in split_metrics(y % 5, p[:, :5])  # fewer than 6 classes: top-5 means nothing
    json.dumps(m)
    for bad in ((np.array([], int), np.zeros((0, 3))),):
        with pytest.raises(ValueError, match="at least one row"):
            split_metrics(*bad)


# ------------------------------------------------------------------ folds that keep groups whole
def test_group_folds_keep_every_copy_of_an_image_together():
    """Copy-major rows, as an augmented store holds them: image i's copies are rows i, i + N, i + 2N, i + 3N."""
    n_images, copies = 61, 4
    y_img = np.random.default_rng(0).integers(0, 4, size=n_images)
    y, groups = np.tile(y_img, copies), np.tile(np.arange(n_images), copies)
    folds, n = stratified_group_folds(y, groups, 5, seed=1)
    assert n == 5 == len(folds)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(len(y)))  # every row held out exactly once
    for train, h in folds:
        assert not set(groups[train]) & set(groups[h])  # no image on both sides
        assert set(y[train]) == set(y) and set(y[h]) == set(y)  # every class on both sides
    per_fold = np.array([[len(set(groups[h][y[h] == c])) for c in range(4)] for _, h in folds])
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all()  # each class spread evenly over the folds
    assert [h.tolist() for _, h in folds] == [h.tolist() for _, h in stratified_group_folds(y, groups, 5, seed=1)[0]]
    assert [h.tolist() for _, h in folds] != [h.tolist() for _, h in stratified_group_folds(y, groups, 5, seed=2)[0]]


def test_group_folds_shrink_to_the_smallest_class():
    y = np.array([0] * 10 + [1] * 3)
    folds, n = stratified_group_folds(y, None, 5)
    assert n == 3 and all(set(y[train]) == {0, 1} for train, _ in folds)
    assert stratified_group_folds(np.array([0, 0, 1]), None, 3) == (
        [],
        0,
    )  # class 1 has one row: no fold can hold it out
    assert stratified_group_folds(np.array([0, 0, 1, 1]), np.array([7, 7, 8, 8]), 2) == ([], 0)  # one image per class
    assert stratified_group_folds(np.array([], int), None, 3) == ([], 0)
    with pytest.raises(ValueError, match="one group per row"):
        stratified_group_folds(y, np.arange(3))
    with pytest.raises(ValueError, match="at least 2"):
        stratified_group_folds(y, None, 1)


def test_too_few_rows_get_the_whole_range_not_a_point_interval():
    """One test row gave "balanced 0.000 [0.000, 0.000]" (every bootstrap resample is that row): an interval that
    reads as certainty. Under MIN_BOOT_ROWS rows the interval is the figure's whole range, and says why."""
    from featstore.stats.figures import MIN_BOOT_ROWS, confusion_figures, probability_figures

    one = confusion_figures([[0, 1], [0, 0]])
    for key in ("balanced_accuracy_ci", "macro_f1_ci"):
        assert (one[key]["low"], one[key]["high"]) == (0.0, 1.0), one[key]
        assert "too few for a bootstrap" in one[key]["method"]
    p = probability_figures([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], n_boot=50)
    assert p["log_loss_ci"]["low"] == 0.0 and p["log_loss_ci"]["high"] > 36 and p["ece_ci"]["high"] == 1.0
    n = MIN_BOOT_ROWS  # from this many rows on, a real bootstrap
    enough = confusion_figures([[n // 2 - 1, 1], [1, n - n // 2 - 1]])
    assert enough["balanced_accuracy_ci"]["method"].startswith("percentile bootstrap")
    assert 0.0 < enough["balanced_accuracy_ci"]["low"] < enough["balanced_accuracy_ci"]["high"] <= 1.0


def test_pipelines_seeds_examples_and_a_shared_test_set_is_judged_too():
    """pipelines/seeds.py's docstring examples run (pipelines/ is outside the package's doctests); a target judged
    over seeds that all score the same test images also faces that test set's own interval: the full-dataset run's
    t interval over seeds was all above 0.93 while each draw's Wilson interval contained it."""
    import doctest
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
    try:
        seeds = importlib.import_module("seeds")
    finally:
        sys.path.pop(0)
    assert doctest.testmod(seeds).failed == 0
    shared = seeds.judge("(x)", 0.93, [0.9321, 0.9311, 0.9313], shared_test=10000)
    assert "whole 95 % interval of the mean is above it" in shared and "the test set cannot tell" in shared
    own = seeds.judge("(x)", 0.93, [0.9321, 0.9311, 0.9313])  # each seed its own test images: no such clause
    assert "test set cannot tell" not in own
    clear = seeds.judge("(x)", 0.90, [0.9321, 0.9311, 0.9313], shared_test=10000)
    assert "test set cannot tell" not in clear


def test_confusion_bootstrap_memory_is_bounded_whatever_the_classes():
    """issue 21: the bootstrap of balanced accuracy and macro-F1 held all 2,000 resamples of every non-zero cell at
    once (a 1,000-class fit on 80,000 rows peaked at 2.7 GB over its 51 MB budget); it now draws them in chunks,
    the same draws in the same order, so the intervals are unchanged."""
    import tracemalloc

    from featstore.stats.figures import confusion_figures

    rng = np.random.default_rng(0)
    k, n = 1000, 60_000
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    assert np.count_nonzero(cm) > 20_000
    tracemalloc.start()
    try:
        f = confusion_figures(cm)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 250e6, f"{peak / 1e6:.0f} MB"  # one call of all 2,000 resamples: over 1 GB
    assert f["balanced_accuracy_ci"]["low"] < f["balanced_accuracy"] < f["balanced_accuracy_ci"]["high"]


def test_large_splits_draw_the_probability_bootstrap_from_its_normal_limit(monkeypatch):
    """From NORMAL_ROWS rows the log-loss, top-5 and ECE resamples come from the row bootstrap's normal limit (its exact
    mean and covariance), O(N) instead of O(N x B): the intervals agree with the row bootstrap's within its own Monte
    Carlo error, and say which was used."""
    from featstore.stats import figures

    rng = np.random.default_rng(3)
    n, k = 30_000, 8
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.5 * np.eye(k)[y] * rng.random((n, 1))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rows = figures.RowFigures.of(y, proba)
    exact = figures.probability_figures(None, rows)
    monkeypatch.setattr(figures, "NORMAL_ROWS", 10_000)
    limit = figures.probability_figures(None, rows)
    for key in ("log_loss_ci", "top5_ci", "ece_ci"):
        a, b = exact[key], limit[key]
        width = a["high"] - a["low"]
        assert a["estimate"] == b["estimate"]
        assert abs(a["low"] - b["low"]) < 0.08 * width and abs(a["high"] - b["high"]) < 0.08 * width, (key, a, b)
        assert "normal limit, 30000 rows" in b["method"] and "normal" not in a["method"], b["method"]
    assert exact["reliability"] == limit["reliability"]
