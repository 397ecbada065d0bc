"""Attack 77 #3 #4 #8: the rows rule where a command fits (or reuses a fit) on rows it did not compare.

#3: a fit with --memory-budget recorded "not compared (over the memory budget)" in ``inputs.training_rows``; a sweep
reusing it took the record as the rows' state and chose on a validation split of training rows. The record is a
cache of a count: a "not compared" is compared by the sweep. #4: a sweep reusing a run that already held test figures
never compared test with train (a 1-NN's resubstitution 1.0 was the winner's test figure). #8: ``probe --refit`` fits
on train + validation but compared test with train only."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore import FeatureStore
from featstore.errors import ConfigError
from featstore.experiments.training_rows import compared_with, recorded
from featstore.store.writer import write_arrays

CLASSES = ["a", "b", "c"]


def _arrays(n, seed, dim=8):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3).astype(np.int32)
    return (rng.normal(size=(n, dim)) + y[:, None] * 0.3).astype(np.float32), y


def test_a_sweep_compares_rows_a_budgeted_fit_did_not(tmp_path):
    """#3: the reused run's "not compared" (its --memory-budget) was trusted and the sweep chose on training rows.
    Sabotage: ``recorded`` returning the "not compared" dict again lets the sweep choose."""
    s, runs = tmp_path / "s.h5", tmp_path / "runs"
    tr, va = _arrays(300, 0), _arrays(300, 1)
    write_arrays(s, "synthetic", "validation", *va, CLASSES)
    write_arrays(s, "synthetic", "trainval", np.concatenate([tr[0], va[0]]), np.concatenate([tr[1], va[1]]), CLASSES)
    rec = featstore.fit(s, "knn", train="trainval", test="none", runs=runs, memory_budget=40_000)
    assert "not_compared" in rec.get("inputs")["training_rows"]["validation"]  # the fit's budget: not a finding
    assert recorded(rec, "validation") is None  # no count: the reader compares the rows itself
    with pytest.raises(ConfigError, match=r"300 of the 300 rows of 'validation' .* rows of 'trainval'"):
        featstore.sweep(s, ["knn"], train="trainval", test="none", runs=runs)


def test_a_recorded_count_is_still_read(tmp_path):
    """A count the fit recorded is what a reusing sweep reads (no features): unchanged by #3."""
    rec = {"inputs": {"training_rows": {"validation": {"shared": 2, "rows": 30}}}}
    assert recorded(rec, "validation") == {"shared": 2, "rows": 30}
    assert recorded({"inputs": {"training_rows": {"validation": {"not_compared": "over"}}}}, "validation") is None


@pytest.mark.parametrize("how", ["fit", "evaluate"])
def test_a_reused_runs_test_on_train_rows_is_withheld(tmp_path, how):
    """#4: `featstore fit` (its default --test) or `runs evaluate --split test` recorded test = train's rows; a sweep
    reusing the run reported that 1.0 as its winner's test. Sabotage: the old ``later`` (reused runs without test only)
    reports it."""
    s, runs = tmp_path / "s.h5", tmp_path / "runs"
    tr, va = _arrays(60, 0), _arrays(60, 1)
    write_arrays(s, "synthetic", "train", *tr, CLASSES)
    write_arrays(s, "synthetic", "validation", *va, CLASSES)
    if how == "fit":
        write_arrays(s, "synthetic", "test", *tr, CLASSES)
        rec = featstore.fit(s, "knn", {"n_neighbors": [1]}, runs=runs)
    else:
        from featstore.experiments.evaluate import evaluate_and_record

        rec = featstore.fit(s, "knn", {"n_neighbors": [1]}, test="none", runs=runs)
        write_arrays(s, "synthetic", "test", *tr, CLASSES)
        rec = evaluate_and_record(rec.id, "test", s, runs)[0]
    assert rec.accuracy("test") == 1.0
    res = featstore.sweep(s, ["knn"], params={"knn": {"n_neighbors": [1]}}, runs=runs)
    w = res["winner"]
    assert w["id"] == rec.id and rec.id in [r["run"] for r in res["reused"]]
    assert "60 of the 60 rows of 'test'" in w["test_withheld"]
    assert w.get("test") is None


def test_a_reused_runs_test_sharing_a_few_rows_is_noted(tmp_path):
    """#4: a few of test's rows are train's: the reused run's test figure carries the note, as a fresh sweep's."""
    s, runs = tmp_path / "s.h5", tmp_path / "runs"
    tr, va, te = _arrays(60, 0), _arrays(60, 1), _arrays(60, 2)
    X, y = te[0].copy(), te[1].copy()
    X[:3], y[:3] = tr[0][:3], tr[1][:3]
    for split, (a, b) in (("train", tr), ("validation", va), ("test", (X, y))):
        write_arrays(s, "synthetic", split, a, b, CLASSES)
    rec = featstore.fit(s, "knn", {"n_neighbors": [1]}, runs=runs)
    res = featstore.sweep(s, ["knn"], params={"knn": {"n_neighbors": [1]}}, runs=runs)
    assert rec.id in [r["run"] for r in res["reused"]]
    assert "3 of the 60 rows of 'test'" in res["winner"]["test_note"]


def _probe_store(path, test):
    rng = np.random.default_rng(0)
    tr = (rng.normal(size=(90, 16)).astype(np.float32), rng.integers(0, 3, 90).astype(np.int32))
    va = (rng.normal(size=(90, 16)).astype(np.float32), rng.integers(0, 3, 90).astype(np.int32))
    write_arrays(path, "synthetic", "train", *tr, CLASSES)
    write_arrays(path, "synthetic", "validation", *va, CLASSES)
    write_arrays(path, "synthetic", "test", *test(tr, va, rng), CLASSES)
    return path


def test_probe_refit_refuses_a_test_of_validation_rows(tmp_path):
    """#8: --refit fits on train + validation; a test of validation's rows scored kNN 1.0, unrefused. Sabotage:
    comparing test with train only (``fitted = (train,)``) scores it."""
    s = _probe_store(tmp_path / "s.h5", lambda tr, va, rng: va)
    with pytest.raises(ConfigError, match="the rows the choice was made on"):  # chosen on them (attack 78 #2)
        featstore.probe(s, refit=False, ks=(1,), runs=tmp_path / "r0")
    with pytest.raises(ConfigError, match=r"90 of the 90 rows of 'test' .* rows of 'train' \+ 'validation'"):
        featstore.probe(s, refit=True, ks=(1,), runs=tmp_path / "r1")


def test_probe_refit_notes_a_few_validation_rows_in_test(tmp_path):
    """#8: a few of validation's rows in test: noted with --refit (the summary's notes) as training rows; without it
    as the rows the choice was made on (attack 78 #2)."""

    def test(tr, va, rng):
        X, y = rng.normal(size=(60, 16)).astype(np.float32), rng.integers(0, 3, 60).astype(np.int32)
        X[:4], y[:4] = va[0][:4], va[1][:4]
        return X, y

    s = _probe_store(tmp_path / "s.h5", test)
    plain = featstore.probe(s, refit=False, ks=(1,), runs=tmp_path / "r0")
    assert "rows of 'train'" not in str(plain.get("notes"))  # validation's: the rows C and k were chosen on (78 #2)
    assert "4 of the 60 rows of 'test' (synthetic) are rows of 'validation', the rows the choice" in str(plain["notes"])
    refit = featstore.probe(s, refit=True, ks=(1,), runs=tmp_path / "r1")
    assert "4 of the 60 rows of 'test' (synthetic) are rows of 'train' + 'validation'" in str(refit.get("notes"))


def test_rows_of_several_training_splits_are_counted_once(tmp_path):
    """#8: test's rows in train and in validation are counted once each, a row in both once (the sum said 24)."""
    s = tmp_path / "s.h5"
    tr, va, other = _arrays(30, 0), _arrays(30, 1), _arrays(8, 2)
    va[0][:2], va[1][:2] = tr[0][:2], tr[1][:2]  # two of validation's rows are train's
    X = np.concatenate([tr[0][:12], va[0][2:12], other[0]])  # 2 in both, 10 train's, 10 validation's, 8 neither
    y = np.concatenate([tr[1][:12], va[1][2:12], other[1]])
    for split, (a, b) in (("train", tr), ("validation", va), ("test", (X, y))):
        write_arrays(s, "synthetic", split, a, b, CLASSES)
    got = compared_with(FeatureStore(s), "synthetic", ("train", "validation"), "test")
    assert got == {"shared": 22, "rows": 30}
