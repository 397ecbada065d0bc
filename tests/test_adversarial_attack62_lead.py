"""Attack 62 #4: one finite but huge train row (1e20, 3e38: an overflowing backbone's output) set a standardising
classifier's scale on its own; every other row read as about 0 and logreg, sgd and knn fitted at chance, exit 0 (the
same row in test was refused by name). Rows with a feature over LARGE_FEATURE are refused before any fit, in train,
validation and test, in memory and streamed, by fewshot and probe too; runs evaluate keeps its own check (a fitted
model that works on such rows is not refused)."""

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
        with pytest.raises(StoreError, match=SAID.format(split=split) + r".*--split " + split + " --overwrite"):
            call()
    assert not (tmp_path / "runs").exists()


def test_fewshot_and_probe_refuse_it_too(tmp_path):
    store = _store(tmp_path / "s.h5", "train", 1e20)
    with pytest.raises(StoreError, match=SAID.format(split="train")):
        featstore.fewshot(store, "logreg", shots=(1,), trials=1)
    with pytest.raises(StoreError, match=SAID.format(split="train")):
        featstore.probe(store, knn=False)


def test_rows_under_the_limit_and_runs_evaluate_are_as_before(tmp_path):
    from featstore.experiments.evaluate import evaluate_and_record

    store, runs = _store(tmp_path / "s.h5", "train", 1e14), tmp_path / "runs"  # large, not an overflow: fitted
    run = featstore.fit(store, "random_forest", runs=runs)
    X = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    X[4] = 1e16  # a forest works on it: evaluate's own check (the fitted model's) lets it through
    write_arrays(store, "synthetic", "extra", X, np.arange(30) % 3, ["a", "b", "c"])
    assert evaluate_and_record(run.id, "extra", store, runs)[1]["n"] == 30
