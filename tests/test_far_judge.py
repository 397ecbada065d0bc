"""The far rule's one judge (``store/far.judge``): fit, ``featstore check`` and ``runs evaluate`` say the same of a
split (attack 79 #5: check flagged as one that fit refuses a test split whose usual feature SIZE is 1e-10 x train's
while its usual PEAK is not, which fit and runs evaluate accept; attack 80 #4: refusing it in all three refused honest
softmax features of a confidently recognised test split). Synthetic stores written from arrays."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from featstore import FeatureStore, fit
from featstore.errors import StoreError
from featstore.experiments.evaluate import evaluate_and_record
from featstore.store import far, nonfinite
from featstore.store.check import check_store
from featstore.store.far import Figures, judge
from featstore.store.writer import write_arrays


def _store(path, scale: float = 1.0, far_rows: int = 0, keep_first: bool = False, keep_largest: bool = False):
    """train, validation and test of 16 columns ~1 (a dense layer); test's columns scaled by ``scale`` (all of them,
    all but the first, a constant 1.0 in every split: ``keep_first``, or all but each row's largest: ``keep_largest``,
    an underflow), its first ``far_rows`` rows 1e9 x."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 90), ("validation", 60), ("test", 60)):
        y = np.arange(n) % 2
        X = (np.abs(rng.normal(size=(n, 16))) + 1.5 * y[:, None] + 0.1).astype(np.float32)
        if keep_first:
            X[:, 0] = 1.0
        if split == "test" and keep_largest:
            top = np.abs(X).argmax(axis=1)
            kept = X[np.arange(n), top]
            X *= np.float32(scale)
            X[np.arange(n), top] = kept
        elif split == "test":
            X[:, int(keep_first) :] *= np.float32(scale)
            X[:far_rows] *= np.float32(1e9)
        write_arrays(path, "synthetic", split, X, y, ["a", "b"])
    return path


def _said(text: str | None) -> str:
    """A refusal (or check's line) as a verdict: "far" rows, splits "apart", or "" (accepted)."""
    if text is None:
        return ""
    if re.search(r"usual (feature size|largest feature) is |: its usual feature size .* apart", text):
        return "apart test" if re.search(r"most likely (test|this split)\b", text) else "apart"
    if re.search(r" \d+ rows? ?(\(s\) \(|hold features)", text):
        return "far"
    return f"other: {text}"


def _fit_says(store, runs) -> str:
    nonfinite._CACHE.clear()
    try:
        fit(store, "logreg", runs=runs)
    except StoreError as exc:
        return _said(str(exc))
    return ""


def _evaluate_says(store, runs) -> str:
    nonfinite._CACHE.clear()
    rec = fit(store, "logreg", runs=runs, test="none")  # the test split unseen by the fit
    nonfinite._CACHE.clear()
    try:
        evaluate_and_record(rec["id"], "test", store, runs)
    except StoreError as exc:
        return _said(str(exc))
    return ""


def _check_says(store) -> str:
    lines = [p for p in check_store(store) if "/synthetic/test" in p]
    return _said(lines[0]) if lines else ""


CASES = {  # name: (store options, the verdict all three callers give)
    "honest": ({}, ""),
    "three rows 1e9 x": ({"far_rows": 3}, "far"),
    "test 1e-8 x train": ({"scale": 1e-8}, "apart test"),
    "test 1e8 x train": ({"scale": 1e8}, "far"),
    # a dense train (usual size near its usual peak): a test split far under it is an underflow, refused naming test
    "sizes 1e-10 x, peaks alike, all small, train dense (79 #5)": ({"scale": 1e-10, "keep_first": True}, "apart test"),
    "all but each row's largest 1e-9 x, train dense (81 #1)": ({"scale": 1e-9, "keep_largest": True}, "apart test"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_check_and_runs_evaluate_give_one_verdict(tmp_path, case):
    options, want = CASES[case]
    store = _store(tmp_path / "s.h5", **options)
    said = {
        "fit": _fit_says(store, tmp_path / "runs"),
        "check": _check_says(store),
        "runs evaluate": _evaluate_says(store, tmp_path / "eruns"),
    }
    assert said == dict.fromkeys(said, want), said


def _softmax(path, sure: float):
    """Rows of a 20-way softmax: train and validation less sure (off-class ~1e-5), test ``sure`` (off-class ~1e-13)."""
    rng = np.random.default_rng(1)
    for split, n, logit in (("train", 80, 10.0), ("validation", 40, 10.0), ("test", 40, sure)):
        y = np.arange(n) % 2
        z = rng.normal(size=(n, 20)) * 0.1
        z[np.arange(n), y] += logit
        p = np.exp(z - z.max(axis=1, keepdims=True))
        write_arrays(path, "softmax", split, (p / p.sum(axis=1, keepdims=True)).astype(np.float32), y, ["a", "b"])
    return path


def test_honest_softmax_features_of_a_confident_test_split_are_accepted_by_fit_check_and_evaluate(tmp_path, caplog):
    """Attack 80 #4: every value in [0, 1], the usual peaks alike, the usual sizes 1e8 apart (a test of easy images):
    no overflow, so no refusal; a classifier fitted on train scores it."""
    store = _softmax(tmp_path / "s.h5", 30.0)
    nonfinite._CACHE.clear()
    with caplog.at_level(logging.WARNING):
        rec = fit(store, "logreg", runs=tmp_path / "runs")
    assert rec.accuracy("test") > 0.9
    assert _one_warning(caplog)
    assert not [p for p in check_store(store) if "/softmax/test" in p]
    nonfinite._CACHE.clear()
    rec = fit(store, "logreg", runs=tmp_path / "eruns", test="none")
    nonfinite._CACHE.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate_and_record(rec["id"], "test", store, tmp_path / "eruns")
    assert _one_warning(caplog)


def _one_warning(caplog) -> bool:
    """One warning line names both usual sizes apart, saying a confident softmax and an underflow both do this."""
    said = [r.getMessage() for r in caplog.records if "peaky" in r.getMessage()]
    return (
        len(said) == 1 and "softmax" in said[0] and "underflow" in said[0] and len(re.findall(r"e-\d\d", said[0])) >= 2
    )


def test_the_judge_accepts_sizes_apart_only_where_train_is_peaky():
    """The judge is pure. All features small, peaks alike: a split whose usual size cannot be FAR_FACTOR under train's
    needs nothing more; one that may be needs train's usual size; with it, sizes apart are accepted (``tolerated``)
    only where train is peaky (a softmax's, attack 80 #4), refused where it is dense (an underflow, attack 81 #1)."""
    ones = Figures(top=3.0, usual_peak=4.0)
    assert judge(Figures(3.0, 4.0, 1.0), ones).needs == "" and judge(Figures(5e3, 4.0), ones).needs == "ref"
    assert judge(Figures(3.0, 4.0, 1e-9), ones).needs == "ref"  # may be an underflow: train's usual size decides
    dense, soft = Figures(3.0, 4.0, 0.5), Figures(1.0, 1.0, 4e-5)
    got = judge(Figures(3.0, 4.0, 1e-9), dense, [0.5])
    assert (got.apart, got.odd, got.refused, got.tolerated) == ("size", "own", "apart", False)
    got = judge(Figures(1.0, 1.0, 1e-13), soft, [4e-5])
    assert (got.refused, got.tolerated) == ("", True)
    assert judge(Figures(1.0, 1.0, 2e-5), soft).tolerated is False  # sizes alike: no warning
    got = judge(Figures(2e3, 4.0, 2e-10), dense, [2e-10])  # another split agrees with this one: train is the odd one
    assert (got.odd, got.refused) == ("ref", "apart")
    assert judge(Figures(9e6, 4.0, 2.0), dense).refused == "far"
    assert judge(dense, dense, itself=True).refused == ""


def test_a_large_split_is_judged_from_a_sample_of_its_rows_and_binned_whole_only_where_it_is_refused(
    tmp_path, monkeypatch
):
    """The first pass bins a strided sample of a large split's rows (far.SAMPLE: the check pass ~1.2x a plain read, not
    ~2x); every row's peak is still read (a far row anywhere is seen); a split the samples do not clear is binned whole
    and judged exactly (attack 81 #1's underflow: refused naming test with the whole split's usual size)."""
    n, rng = 3 * far.SAMPLE, np.random.default_rng(2)
    path = tmp_path / "big.h5"
    for split in ("train", "validation", "test"):
        y = np.arange(n) % 2
        X = (rng.normal(size=(n, 8)) + y[:, None]).astype(np.float32)
        write_arrays(path, "dense", split, X, y, ["a", "b"])
    binned = []
    real = nonfinite.row_stats
    monkeypatch.setattr(nonfinite, "row_stats", lambda X: binned.append(len(X)) or real(X))
    nonfinite._CACHE.clear()
    fs = FeatureStore(path)
    for split in ("train", "validation", "test"):
        fs.refuse_nonfinite(split, train="train")
    assert 0 < sum(binned) < 3 * n / 2  # a sample of each split's rows, none binned whole
    X = fs.load("test", "dense")[0].copy()
    X[5, 3] = 1e9  # one far row, not in any sample: its peak is read
    write_arrays(path, "dense", "test", X, np.arange(n) % 2, ["a", "b"])
    nonfinite._CACHE.clear()
    with pytest.raises(StoreError, match=r" 1 rows?"):
        fs.refuse_nonfinite("test", train="train")
    keep = np.abs(X).argmax(axis=1)
    Z = X * np.float32(1e-9)
    Z[np.arange(n), keep] = X[np.arange(n), keep]
    Z[5, 3] = 1.0
    write_arrays(path, "dense", "test", Z, np.arange(n) % 2, ["a", "b"])
    nonfinite._CACHE.clear()
    with pytest.raises(StoreError, match=r"usual feature size is .* most likely test \(the other splits agree"):
        fs.refuse_nonfinite("test", train="train")
