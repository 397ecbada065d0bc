"""`runs evaluate` (and a sweep's test evaluation, record_split) read a split's paths, then its rows: a split re-written
between the two by another process (`extract --overwrite`) was recorded as the old paths' digest with the new rows'
figures. The split's version is now taken before either is read and compared before the record is written, as fit
does (attack 54 #2; Left of stop 40: "the split-version check covers fit only")."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore.experiments import evaluate
from featstore.store.writer import write_arrays

from .test_adversarial_attack54_fixCI import _synthetic


def test_a_split_rewritten_while_evaluated_is_not_recorded(tmp_path, monkeypatch):
    store, runs = _synthetic(tmp_path / "s.h5"), tmp_path / "runs"
    run = featstore.fit(store, "logreg", test=None, runs=runs)
    real = evaluate.digest_paths

    def digest(paths):  # another process re-writes test after its paths were read, before its rows are
        value = real(paths)
        y = (np.arange(30) + 1) % 3
        write_arrays(store, "synthetic", "test", np.ones((30, 8), np.float32), y, ["a", "b", "c"])
        return value

    monkeypatch.setattr(evaluate, "digest_paths", digest)
    with pytest.raises(featstore.StoreError, match=r"s\.h5:/synthetic/test was re-written .* while this evaluation"):
        evaluate.evaluate_and_record(run.id, "test", store, runs)
    assert "test" not in featstore.get_run(run.id, store, runs)[0].metrics
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == [run.id]  # no version left aside
    monkeypatch.setattr(evaluate, "digest_paths", real)
    rec, m, said = evaluate.evaluate_and_record(run.id, "test", store, runs)
    assert said == f"recorded in run {run.id}" and m["n"] == 30
