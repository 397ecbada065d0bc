"""Attack 83 #1, #2 (the lead): the far rule's first pass bins a sample of a large split's rows; it took every k-th
row from row 0, so rows laid out with period k were all missed (an underflow of 2/3 of test passed fit, exit 0) or all
sampled (train's sampled rows 1e3 x the rest raised the bound: a 1e8 overflow passed). The sample is drawn at random
with a key per check: no layout steers it."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import fit
from featstore.errors import StoreError
from featstore.store import far, nonfinite
from featstore.store.writer import write_arrays

N = 3 * far.SAMPLE  # a stride of 3


def _store(path, test_rows=None, train_rows=None):
    rng, y = np.random.default_rng(2), np.arange(N) % 2
    for split in ("train", "validation", "test"):
        X = (rng.normal(size=(N, 8)) + 3 * y[:, None]).astype(np.float32)
        if split == "test" and test_rows is not None:  # every feature but each row's largest 1e-9 x (attack 81 #1)
            keep = np.abs(X).argmax(axis=1)
            Z = X * np.float32(1e-9)
            Z[np.arange(N), keep] = X[np.arange(N), keep]
            X[test_rows] = Z[test_rows]
        if split == "train" and train_rows is not None:
            X[train_rows] *= np.float32(1e3)
        if split == "test" and train_rows is not None:
            X[7] *= np.float32(1e8)  # one overflowed row
        write_arrays(path, "dense", split, X, y, ["a", "b"])
    return path


@pytest.mark.parametrize("phase", [0, 1, 2])
def test_an_underflow_laid_out_between_any_stride_is_refused(tmp_path, phase):
    rows = np.arange(N) % 3 != phase  # two thirds of test, every third row honest
    nonfinite._CACHE.clear()
    with pytest.raises(StoreError, match=r"dense/test's usual feature size is .* over 1e\+06 times apart"):
        fit(_store(tmp_path / "s.h5", test_rows=rows), "logreg", runs=tmp_path / "runs")


@pytest.mark.parametrize("phase", [0, 1])
def test_train_rows_on_the_stride_do_not_raise_the_bound(tmp_path, phase):
    rows = np.arange(N) % 3 == phase  # a third of train 1e3 x the rest
    nonfinite._CACHE.clear()
    with pytest.raises(StoreError, match=r"dense/test holds 1 row"):
        fit(_store(tmp_path / "s.h5", train_rows=rows), "logreg", runs=tmp_path / "runs")


def test_an_ensemble_notes_test_rows_a_member_chose_its_temperature_on(tmp_path):
    """Attack 83 #3: test = validation's rows, each member's temperature fitted there: the ensemble's test figure was
    recorded with no note (each member's fit noted it)."""
    from featstore import ensemble

    rng, y = np.random.default_rng(4), np.arange(40) % 2
    val = (rng.normal(size=(40, 8)) + y[:, None]).astype(np.float32)
    for split, X in (("train", (rng.normal(size=(40, 8)) + y[:, None]).astype(np.float32)), ("validation", val)):
        write_arrays(tmp_path / "f.h5", "first", split, X, y, ["a", "b"])
    write_arrays(tmp_path / "f.h5", "first", "test", val, y, ["a", "b"])
    runs = tmp_path / "runs"
    a, b = (fit(tmp_path / "f.h5", c, runs=runs) for c in ("logreg", "knn"))
    rec = ensemble([a.id, b.id], store=tmp_path / "f.h5", runs=runs)
    said = [n for n in rec["notes"] if "the rows member" in n and "'test'" in n]
    assert len(said) == 2 and all("chose its temperature on" in n and "own maximum" in n for n in said), rec["notes"]
