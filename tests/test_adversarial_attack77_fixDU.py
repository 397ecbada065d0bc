"""Attack 77 #1: `runs evaluate`'s far rule held the evaluated split against the store's split *named* like the run's
training split (or the store's largest split): after train was re-written at 1e9 (or on another store holding no train,
where the reference was the evaluated split itself), a 1e9 test was scored at chance and recorded, exit 0. A fit now
records the far rule's figures of the rows it was fitted on (``inputs.far_reference``, from train's first pass), and
`runs evaluate` holds the split to them; a run recorded before uses a store's split only where it is the run's very
training split, else says in one warning line that the rule could not be applied."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest

import featstore
from featstore.experiments.evaluate import evaluate_and_record
from featstore.runs.evalrows import RowsRefused
from featstore.runs.files import RECORD
from featstore.runs.folder import get_run
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays

C = ["a", "b", "c"]


def _arrays(n: int, scale: float, seed: int, small: bool = False):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3).astype(np.int32)
    X = np.abs(rng.normal(size=(n, 8)) + y[:, None] * 1.5) * scale
    if small:  # most features tiny, one near 4: usual size ~1e-3, usual peak ~4 (the bound is the floor, 4e3)
        X[:, 1:] *= 1e-4
    return X.astype(np.float32), y


def _rewrite(store, split: str, n: int, scale: float, seed: int, small: bool = False) -> None:
    with h5py.File(store, "a") as f:
        if f"synthetic/{split}" in f:
            del f[f"synthetic/{split}"]
    write_arrays(store, "synthetic", split, *_arrays(n, scale, seed, small), C)


def _fit(tmp_path, small: bool = False):
    store, runs = tmp_path / "a.h5", tmp_path / "runs"
    for split, seed in (("train", 0), ("validation", 1)):
        write_arrays(store, "synthetic", split, *_arrays(30, 1.0, seed, small), C)
    return store, runs, featstore.fit(store, "logreg", test="none", runs=runs)


def _older(rec, store, runs) -> None:
    """The run as a featstore before this fix recorded it: no far-rule figures."""
    path = get_run(rec.id, store, runs)[1] / RECORD
    obj = json.loads(path.read_text())
    assert "far_reference" in obj["inputs"]
    del obj["inputs"]["far_reference"]
    path.write_text(json.dumps(obj))


def _peaks_only(rec, store, runs) -> None:
    """The run as a featstore before attack 79 #5 recorded it where its fit did not bin train: no usual size."""
    path = get_run(rec.id, store, runs)[1] / RECORD
    obj = json.loads(path.read_text())
    assert obj["inputs"]["far_reference"].pop("usual") is not None and obj["inputs"]["far_reference"].pop("bound")
    path.write_text(json.dumps(obj))


def _refused_unrecorded(rec, store, runs, match: str = "far over"):
    folder = get_run(rec.id, store, runs)[1]
    before = (folder / RECORD).read_bytes()
    with pytest.raises(RowsRefused, match=match):
        evaluate_and_record(rec.id, "test", store, runs)
    assert (folder / RECORD).read_bytes() == before


def test_a_train_rewritten_at_1e9_does_not_pass_a_1e9_test(tmp_path):
    store, runs, rec = _fit(tmp_path)
    _rewrite(store, "train", 30, 1e9, 0)  # re-extracted with a broken model after the fit
    _rewrite(store, "test", 30, 1e9, 2)
    _refused_unrecorded(rec, store, runs, rf"test holds 30 row\(s\).*run {rec.id}'s training split train")


def test_b_another_store_with_no_train_does_not_hold_test_to_itself(tmp_path):
    store, runs, rec = _fit(tmp_path)
    other = tmp_path / "other.h5"
    write_arrays(other, "synthetic", "validation", *_arrays(30, 1.0, 1), C)  # the run's rows: the store is accepted
    write_arrays(other, "synthetic", "test", *_arrays(60, 1e9, 2), C)
    _refused_unrecorded(rec, other, runs)


def test_an_honest_test_is_recorded_and_read_once(tmp_path, monkeypatch):
    store, runs, rec = _fit(tmp_path)
    _rewrite(store, "test", 30, 1.0, 2)
    monkeypatch.setattr(
        "featstore.experiments.evaluate.refuse_chosen_rows", lambda *a: []
    )  # its digests: not the subject
    reads: list[str] = []
    real = FeatureStore.iter_batches
    monkeypatch.setattr(
        FeatureStore, "iter_batches", lambda self, s, *a, **k: (reads.append(s), real(self, s, *a, **k))[1]
    )
    assert evaluate_and_record(rec.id, "test", store, runs)[2].startswith("recorded")
    assert reads == ["test"]  # train is not binned: its recorded figures suffice


def test_a_row_between_the_recorded_floor_and_its_most_bins_the_runs_own_train_only(tmp_path, caplog):
    store, runs, rec = _fit(tmp_path, small=True)
    _peaks_only(rec, store, runs)  # as a fit before attack 79 #5 recorded a layer under 1e3: only train's peaks
    _rewrite(store, "test", 30, 1.0, 2, small=True)
    X, y = _arrays(30, 1.0, 2, small=True)
    X[3, 2] = 1e5  # over the bound (the floor, ~4e3), under FAR_FACTOR x train's usual peak: train's size decides
    _rewrite_from(store, "test", X, y)
    _refused_unrecorded(rec, store, runs, r"test holds 1 row\(s\) \(3;")
    _rewrite(store, "train", 30, 1.0, 5, small=True)  # another train: not the run's rows, nothing else holds them
    with caplog.at_level(logging.WARNING):
        said = evaluate_and_record(rec.id, "test", store, runs)[2]
    assert said.startswith("recorded")
    lines = [r.getMessage() for r in caplog.records if "far rule" in r.getMessage()]
    assert len(lines) == 1 and "could not be applied" in lines[0] and "not the split the run was fitted on" in lines[0]


def _rewrite_from(store, split: str, X, y) -> None:
    with h5py.File(store, "a") as f:
        del f[f"synthetic/{split}"]
    write_arrays(store, "synthetic", split, X, y, C)


def test_a_run_recorded_before_uses_the_stores_train_only_when_it_is_the_runs(tmp_path, caplog):
    store, runs, rec = _fit(tmp_path)
    _older(rec, store, runs)
    _rewrite(store, "test", 30, 1e9, 2)
    _refused_unrecorded(rec, store, runs)  # the store's train is the run's: held to it
    _rewrite(store, "train", 30, 1e9, 0)
    with caplog.at_level(logging.WARNING):
        said = evaluate_and_record(rec.id, "test", store, runs)[2]
    assert said.startswith("recorded")  # not silent: one line says the rule was not applied
    lines = [r.getMessage() for r in caplog.records if "far rule" in r.getMessage()]
    assert len(lines) == 1 and "could not be applied" in lines[0] and "older featstore" in lines[0]
