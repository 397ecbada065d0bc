"""Attack 76 #1 #7: the far rule's usual size left out every magnitude under 2^-10, so a split (or most of a split, or
a whole layer) of small values had no usual size: a test split 1e-8 x train passed fit and check at chance, and in a
layer of values ~1e-4 train rows at 900 or 1e12 passed (#1); a train split 1e-8 x the others was reported as overflow
rows in validation and test, never naming train (#7). Every non-zero magnitude now counts (down to float32's smallest
subnormal), the bound is FAR_FACTOR x train's usual size or FAR_FLOOR x its rows' usual largest magnitude, and splits
apart name the odd one out."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore import FeatureStore
from featstore.errors import StoreError
from featstore.store import far
from featstore.store.check import check_store
from featstore.store.nonfinite import refuse_in_every
from featstore.store.writer import write_arrays

CLASSES = ["a", "b", "c"]


def _rows(n, base, rng):
    y = np.arange(n) % 3
    return ((np.abs(rng.normal(size=(n, 8))) + y[:, None] * 1.5) * base).astype(np.float32), y


def _store(path, base=2000.0, scale=None, edit=None):
    """train (90 rows), validation and test (60) of 8 features ~``base``, each split times ``scale[split]``; ``edit``:
    (split, X) -> X."""
    rng = np.random.default_rng(1)
    for s in ("train", "validation", "test"):
        X, y = _rows(90 if s == "train" else 60, base, rng)
        X = X * np.float32((scale or {}).get(s, 1.0))
        write_arrays(path, "synthetic", s, edit(s, X) if edit else X, y, CLASSES)
    return path


def _fit_refusal(store):
    with pytest.raises(StoreError) as got:
        refuse_in_every(FeatureStore(store), ["synthetic"], ["train", "validation", "test"], "fit")
    return str(got.value)


def test_a_test_split_of_tiny_values_is_refused_as_apart(tmp_path):
    """#1 (a): test all 1e-8 x train (values ~2e-5) had no usual size: fit passed at chance, check OK. Sabotage: the
    old cut-off (_LO = -10 in row_stats' exponent count) passes it."""
    store = _store(tmp_path / "s.h5", scale={"test": 1e-8})
    line = _fit_refusal(store)
    assert "/synthetic/test's usual feature size" in line and "over 1e+06 times apart" in line
    assert "most likely test (the other splits agree with train)" in line and "'test', X, y" in line
    probs = check_store(store)
    assert [p for p in probs if "apart" in p] == [p for p in probs if p.startswith("/synthetic/test:")] != []
    assert "most likely this split (the other splits agree with the training split train)" in probs[0]
    with pytest.raises(StoreError, match="test's usual feature size"):
        featstore.fit(store, "logreg", runs=tmp_path / "runs")


def test_a_test_split_mostly_tiny_is_refused(tmp_path):
    """#1 (c): 50 of test's 60 rows 1e-8 x: only the 10 others counted, so test's usual size was train's."""

    def edit(s, X):
        if s == "test":
            X[10:] *= np.float32(1e-8)
        return X

    store = _store(tmp_path / "s.h5", edit=edit)
    assert "/synthetic/test's usual feature size" in _fit_refusal(store)
    assert any(p.startswith("/synthetic/test:") and "apart" in p for p in check_store(store))


@pytest.mark.parametrize("value", [900.0, 1e12])
def test_a_layer_of_small_values_is_held_to_its_own_size(tmp_path, value):
    """#1 (d), (e): a layer whose honest features are ~1e-4: no row counted, the bound fell to FAR_FLOOR (900 passed),
    or the 12 rows at 1e12 were the only ones counted (train's usual size was theirs)."""

    def edit(s, X):
        if s == "train":
            X[-12:] = value
        return X

    store = _store(tmp_path / "s.h5", base=1e-4, edit=edit)
    line = _fit_refusal(store)
    assert "/synthetic/train holds 12 row(s) (78, 79" in line, line
    assert any(p.startswith("/synthetic/train: 12 rows hold features over 1e+06") for p in check_store(store))


def test_honest_layers_pass(tmp_path):
    """The floor: a layer of values ~1 with a few rows at 1e3, a layer all ~1e-4, and softmax-like rows (one value
    ~1, the others down to 1e-30: a geometric mean ~1e-20) are not refused, by fit nor by check."""

    def at_1e3(s, X):
        X[:3] = np.float32(1e3) if s == "train" else X[:3]
        return X

    def softmax(s, X):
        rng = np.random.default_rng(len(s))
        return (10.0 ** -rng.uniform(10, 30, X.shape) + (X > X.mean()) * 0.9).astype(np.float32)

    for tag, base, edit in (("ones", 1.0, at_1e3), ("small", 1e-4, None), ("softmax", 1.0, softmax)):
        store = _store(tmp_path / f"{tag}.h5", base=base, edit=edit)
        refuse_in_every(FeatureStore(store), ["synthetic"], ["train", "validation", "test"], "fit")
        assert check_store(store) == [], tag


def test_every_non_zero_magnitude_counts():
    """Subnormals and values under 2^-10 are counted at their own exponent; a row of zeros has no size."""
    X = np.array([[2.0**-140, 0, 0], [2.0**-20, 2.0**-30, 0], [0, 0, 0], [2.0**-149, 2.0**-127, 2.0**-126]], np.float32)
    assert far.row_exponents(X)[[0, 1, 3]].tolist() == [-140.0, -25.0, (-149 - 127 - 126) / 3]
    assert np.isnan(far.row_exponents(X)[2])
    s = far.LayerSizes()
    s.add(np.full((4, 3), 1e-8, np.float32))
    assert 1e-8 <= s.usual() <= 4e-8 and s.bound() < 1.0  # held to its own size, not the absolute FAR_FLOOR


def test_a_tiny_train_split_is_named(tmp_path):
    """#7: train all 1e-8 x validation and test was refused as 60 overflow rows of validation (and check: of both),
    advising to rewrite them; train, the split that is wrong, was never named. Sabotage: far rows listed before the
    apart check (nonfinite.far) or far_lines' far-rows branch first."""
    store = _store(tmp_path / "s.h5", scale={"train": 1e-8})
    line = _fit_refusal(store)
    assert "/synthetic/validation's usual feature size" in line and "holds 60 row" not in line
    assert "most likely train (the other splits agree with validation)" in line and "'train', X, y" in line
    probs = check_store(store)
    assert {p.split(":")[0] for p in probs} == {"/synthetic/validation", "/synthetic/test"}, probs
    assert all("most likely the training split train (the other splits agree with this one)" in p for p in probs)
    assert not any("rows hold features" in p for p in probs)
    with pytest.raises(StoreError, match="most likely train"):
        featstore.fit(store, "logreg", runs=tmp_path / "runs")
