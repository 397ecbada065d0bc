"""Attack 62 #4: one finite but huge train row (1e20, 3e38: an overflowing backbone's output) set a standardising
classifier's scale on its own; every other row read as about 0 and logreg, sgd and knn fitted at chance, exit 0 (the
same row in test was refused by name). Rows with a feature over LARGE_FEATURE are refused before any fit, in train,
validation and test, in memory and streamed, by fewshot and probe too; runs evaluate keeps its own check (a fitted
model that works on such rows is not refused) for rows not far from the run's training split (fit's far rule holds
there since attack 75 #6)."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore.errors import StoreError
from featstore.store.writer import write_arrays

SAID = r"s\.h5:/synthetic/{split} holds 1 row\(s\) \(4; e\.g\. {split}/4\) with finite features over 1e\+15"


def _store(path, split: str, value: float):
    rng = np.random.default_rng(0)
    for s in ("train", "validation", "test"):
        y = np.arange(30) % 3
        X = (rng.normal(size=(30, 8)) + y[:, None] * 1.5).astype(np.float32)
        if s == split:
            X[4] = value
        write_arrays(path, "synthetic", s, X, y, ["a", "b", "c"])
    return path


@pytest.mark.parametrize(("split", "value"), [("train", 1e20), ("validation", 3e38), ("test", 1e16)])
def test_a_huge_row_is_refused_before_any_fit(tmp_path, split, value):
    store = _store(tmp_path / "s.h5", split, value)
    for call in (
        lambda: featstore.fit(store, "logreg", runs=tmp_path / "runs"),
        lambda: featstore.fit(store, "knn", runs=tmp_path / "runs", memory_budget="1MiB"),  # streamed
    ):
        with pytest.raises(StoreError, match=SAID.format(split=split) + r".*write_arrays\(.*'" + split + "', X, y"):
            call()  # written from arrays: write_arrays makes it again, not extract (attack 72 #8)
    assert not (tmp_path / "runs").exists()


def test_fewshot_and_probe_refuse_it_too(tmp_path):
    store = _store(tmp_path / "s.h5", "train", 1e20)
    with pytest.raises(StoreError, match=SAID.format(split="train")):
        featstore.fewshot(store, "logreg", shots=(1,), trials=1)
    with pytest.raises(StoreError, match=SAID.format(split="train")):
        featstore.probe(store, knn=False)


def test_rows_under_the_limit_and_runs_evaluate_are_as_before(tmp_path):
    from featstore.experiments.evaluate import evaluate_and_record

    store, runs = _store(tmp_path / "s.h5", "train", 900.0), tmp_path / "runs"  # large, not an overflow: fitted
    run = featstore.fit(store, "random_forest", runs=runs)
    X = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    X[4] = 1e16
    write_arrays(store, "synthetic", "extra", X, np.arange(30) % 3, ["a", "b", "c"])
    # 1e16 x train's usual size: fit's far rule holds in runs evaluate too since attack 75 #6 (a forest scored such
    # rows, at chance for a split of them, and it was recorded), whatever the fitted model makes of it
    with pytest.raises(StoreError, match=r"synthetic/extra holds 1 row\(s\) \(4; e\.g\. extra/4\) with features far"):
        evaluate_and_record(run.id, "extra", store, runs)
    # over 1e15 but not far from a train split of features near 1e11: evaluate's own check (the fitted model's) lets a
    # forest that works on it through
    big, rng = tmp_path / "big.h5", np.random.default_rng(0)
    for s in ("train", "validation", "test", "extra"):
        y = np.arange(30) % 3
        Xs = (np.abs(rng.normal(size=(30, 8))) + y[:, None] * 1.5 + 1) * 1e11
        Xs[4] = 1e16 if s == "extra" else Xs[4]
        write_arrays(big, "synthetic", s, Xs.astype(np.float32), y, ["a", "b", "c"])
    run = featstore.fit(big, "random_forest", runs=tmp_path / "big")
    assert evaluate_and_record(run.id, "extra", big, tmp_path / "big")[1]["n"] == 30


def test_a_bad_augmented_copy_names_the_extract_that_makes_the_copies_again(tmp_path):
    """Attack 66 #5: the refusal named `extract --split train --overwrite`, which re-extracts train without its
    augmented copies (the next `fit --augmented` found none)."""
    import h5py

    from tests.conftest import TINY_CONFIG, write_data_root

    data, store = write_data_root(tmp_path / "data"), tmp_path / "f.h5"
    for split in ("train", "validation", "test"):
        featstore.extract(data, split, store, TINY_CONFIG)
    featstore.extract(data, "train", store, TINY_CONFIG, augment=2, augment_seed=3)
    with h5py.File(store, "r+") as f:
        (name,) = list(f)
        f[name]["train"]["augmented"]["features"][1] = 1e20
    with pytest.raises(StoreError, match=r"train/augmented holds 1 row\(s\)") as e:
        featstore.fit(store, "logreg", augmented=True, runs=tmp_path / "runs")
    assert " --split train --model " in str(e.value) and " --augment 2 --augment-spec " in str(e.value)
    assert "--augment-seed 3 --overwrite`" in str(e.value)


def test_export_avg_of_vectors_records_what_it_wrote(tmp_path):
    """Attack 66 #6: --features max on features stored as vectors wrote them as they are, and the result and the
    export's metadata said "max"."""
    store = _store(tmp_path / "s.h5", "none", 0.0)
    got = featstore.export(store, "train", tmp_path / "t.npz", features="max")
    assert got.features == "flat" and got.n_features == 8  # the Parquet metadata's "features" is this one


def test_check_counts_the_rows_fit_refuses(tmp_path):
    """Attack 66 #4: a train row with a feature of 1e16 made `check` say OK, exit 0, while fit refused the store."""
    from featstore.store.check import check_store

    store = _store(tmp_path / "s.h5", "train", 1e16)
    found = " ".join(check_store(store))
    assert "1 rows hold finite features over 1e+15" in found and "fit, sweep, fewshot and probe refuse them" in found
    assert not check_store(_store(tmp_path / "ok.h5", "train", 900.0))


FAR = r"s\.h5:/synthetic/{split} holds 1 row\(s\) \(4; e\.g\. {split}/4\) with features over 1e\+06 times the training"


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_row_far_larger_than_the_others_is_refused_too(tmp_path, split):
    """Attack 66 #4's second half: one train row of 1e14 among rows near 1 (under LARGE_FEATURE) set the scaler's
    spread as 1e20 did, and logreg fitted at chance, exit 0. A row over 1e6 times its split's usual size (and over
    1e3) is refused the same way, in memory and streamed, and `check` counts it."""
    from featstore.store.check import check_store

    store = _store(tmp_path / "s.h5", split, 1e14)
    for call in (
        lambda: featstore.fit(store, "logreg", runs=tmp_path / "runs"),
        lambda: featstore.fit(store, "sgd", runs=tmp_path / "runs", memory_budget="1MiB"),  # streamed
        *([lambda: featstore.fewshot(store, "logreg", shots=(1,), trials=1)] if split == "train" else []),
    ):  # (fewshot reads train and test: logreg uses no validation)
        with pytest.raises(StoreError, match=FAR.format(split=split) + r".*write_arrays\(.*'" + split + "', X, y"):
            call()
    assert not (tmp_path / "runs").exists()
    assert "1 rows hold features over 1e+06 times the usual feature size of the training split train" in " ".join(
        check_store(store)
    )


def test_far_rows_rule():
    """The far rule against the training split's usual size (attack 72 moved it from each split's row peaks; attack
    75 made it the median over rows of each row's typical size)."""
    from featstore.store.far import LayerSizes

    def bounds(train):
        cs = LayerSizes()
        cs.add(np.asarray(train, np.float32).reshape(-1, 1))
        return cs.bound()

    assert bounds([1.0, 2.0, 3.0] * 10) == 4e6  # the median (2) to within its bin (0.5..4): 1e6 x 4
    # tiny rows count at their own size (attack 76 #1: under 2^-10 they were left out, the bound fell to FAR_FLOOR)
    assert bounds([1e-9] * 20 + [3e-4]) == 1e6 * 2.0**-29  # the median 1e-9 within its bin (2^-30..2^-29)
    assert bounds([1e-9] * 20 + [1.0]) == 1e6 * 2.0**-29  # (the 1.0 is one row of 21: far)
    assert bounds([0.0] * 20) == 1e3  # no non-zero row: only the floor
    assert bounds([0.0] * 20 + [1.0] * 3 + [1e9]) == 2e6  # zero rows left out of the median
    assert bounds([1.0] * 6 + [1e14] * 5) == 2e6  # under half of them: far
    assert bounds([1.0] * 5 + [1e14] * 5) == 2e6  # exactly half: still far (the lower median)


def test_a_class_of_far_rows_is_refused(tmp_path):
    """Attack 69 #2: the 90th percentile let a tenth of the rows through: one class of 9 whose train rows were all
    about 1e14 fitted logreg at chance (0.11), exit 0, and check said OK."""
    from featstore.store.check import check_store

    rng = np.random.default_rng(0)
    for s in ("train", "validation", "test"):
        y = np.arange(90) % 9
        X = (rng.normal(size=(90, 8)) + y[:, None]).astype(np.float32)
        if s == "train":
            X[y == 8] *= 1e13
        write_arrays(tmp_path / "s.h5", "synthetic", s, X, y, list("abcdefghi"))
    with pytest.raises(
        StoreError, match=r"holds 10 row\(s\) \(8, 17, 26, 35, 44 \.\.\.; .*times the training split's usual"
    ):
        featstore.fit(tmp_path / "s.h5", "logreg", runs=tmp_path / "runs")
    assert "10 rows hold features over 1e+06 times" in " ".join(check_store(tmp_path / "s.h5"))
