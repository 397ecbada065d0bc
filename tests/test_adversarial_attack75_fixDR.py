"""Attack 75 #6: after `fit --test none`, `runs evaluate RUN --split test` scored a test split 1e9 x train's (which fit,
sweep, probe, fewshot and check refuse) at chance, recorded it into the run, exit 0, and a later sweep reused the
figure. It now holds the split to fit's far rule against the run's training split within its one scoring pass: refused
before anything is recorded, the evaluated split read once (a sweep still reads test once)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import featstore
from featstore.cli import app
from featstore.errors import StoreError
from featstore.experiments.evaluate import evaluate_and_record, evaluate_run
from featstore.runs.files import RECORD
from featstore.runs.folder import get_run
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays


def _store(path, scales: dict[str, float], n: int = 30):
    rng = np.random.default_rng(0)
    for split, scale in scales.items():
        y = (np.arange(n) % 3).astype(np.int32)
        X = np.abs(rng.normal(size=(n, 8)) + y[:, None] * 1.5) * scale
        write_arrays(path, "synthetic", split, X.astype(np.float32), y, ["a", "b", "c"])
    return path


def _reads(monkeypatch) -> list[str]:
    """The splits FeatureStore reads (whole or in blocks), in order: the scoring pass's (the far rule's subject here;
    the chosen-rows rule's digest passes, experiments/evaluate_rows, are left out: tests/test_adversarial_attack82_lead)."""
    monkeypatch.setattr("featstore.experiments.evaluate.refuse_chosen_rows", lambda *a: [])
    reads: list[str] = []
    for method in ("load", "iter_batches"):
        real = getattr(FeatureStore, method)
        monkeypatch.setattr(
            FeatureStore,
            method,
            lambda self, split="train", extractor=None, _real=real, **k: (
                reads.append(split),
                _real(self, split, extractor, **k),
            )[1],
        )
    return reads


def test_a_far_test_split_is_refused_before_anything_is_recorded(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.h5", {"train": 1.0, "validation": 1.0, "test": 1e9})
    runs = tmp_path / "runs"
    rec = featstore.fit(store, "logreg", test="none", runs=runs)
    folder = get_run(rec.id, store, runs)[1]
    before = (folder / RECORD).read_bytes()
    reads = _reads(monkeypatch)
    said = (
        r"s\.h5:/synthetic/test holds 30 row\(s\) \(0, 1, 2, 3, 4 \.\.\.; e\.g\. test/0\) with features far over the "
        rf"usual feature size of run {rec.id}'s training split train .*nothing was recorded.*"
        r"write_arrays\(.*'test', X, y"
    )
    with pytest.raises(StoreError, match=said):
        evaluate_and_record(rec.id, "test", store, runs)
    assert reads.count("test") == 1, reads  # refused in its one pass: not read again to show figures
    assert (folder / RECORD).read_bytes() == before and "test" not in get_run(rec.id, store, runs)[0].metrics
    with pytest.raises(StoreError, match=said):
        evaluate_run(rec.id, "test", store, runs)  # the figures alone: the same rule
    monkeypatch.undo()
    args = ["runs", "evaluate", rec.id, "--split", "test", "--store", str(store), "--runs", str(runs)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1 and "with features far over the usual feature size" in out.output, out.output
    assert (folder / RECORD).read_bytes() == before
    with pytest.raises(StoreError, match=r"synthetic/test holds 30 row\(s\)"):  # nor does a later sweep reuse it
        featstore.sweep(store, ["logreg"], runs=runs)


def test_a_split_far_below_train_is_refused_as_apart(tmp_path):
    """No row of it is over train's bound: its usual size far under train's tells (train, or it, is the overflow)."""
    store = _store(tmp_path / "s.h5", {"train": 1e5, "validation": 1e5, "test": 1e-2})
    runs = tmp_path / "runs"
    rec = featstore.fit(store, "logreg", test="none", runs=runs)
    with pytest.raises(StoreError, match=rf"synthetic/test's usual feature size is .* run {rec.id}'s training split "):
        evaluate_and_record(rec.id, "test", store, runs)
    assert "test" not in get_run(rec.id, store, runs)[0].metrics


def test_an_honest_split_is_recorded_and_read_once(tmp_path, monkeypatch):
    """Train's features over FAR_FLOOR (its usual size binned): the training split is read for the bound, before the
    evaluated split, which is read once; the figures are recorded."""
    store = _store(tmp_path / "s.h5", {"train": 5e3, "validation": 5e3, "test": 5e3})
    runs = tmp_path / "runs"
    rec = featstore.fit(store, "logreg", test="none", runs=runs)
    reads = _reads(monkeypatch)
    rec2, m, said = evaluate_and_record(rec.id, "test", store, runs)
    assert said == f"recorded in run {rec.id}" and m["n"] == 30 and "test" in rec2.metrics
    assert reads.count("test") == 1 and reads[-1] == "test", reads


def test_a_sweep_still_reads_test_once(tmp_path, monkeypatch):
    """The winner's test is read once, after every other read (tests/test_sweep.py's rule), with the far rule in
    runs evaluate's pass; here train is over FAR_FLOOR, so its usual size is binned (read before test)."""
    store = _store(tmp_path / "s.h5", {"train": 5e3, "validation": 5e3, "test": 5e3}, n=60)
    reads = _reads(monkeypatch)
    res = featstore.sweep(store, ["logreg", "knn"], runs=tmp_path / "runs")
    assert reads[-1] == "test" and reads[-2] != "test", reads  # the winner's evaluation: one read, the last (the
    # up-front check of every split's rows, before any fit, is fit's rule: store.nonfinite)
    assert res["winner"]["test"] is not None
    saved = json.loads((tmp_path / "runs" / f"{res['id']}.json").read_text())
    assert saved["winner"]["id"] == res["winner"]["id"]
