"""Attack 80 #2 and #3 (the lead): a run.json integer no float holds is a broken record named in one line (it ended
`runs evaluate` and the whole `featstore runs` listing in an OverflowError), and a recorded figure's split extracted
again from the same image paths is said to be that, with the command that scores it as it is now (it said "other
rows" and advised the very --store given)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.runs import record, selected, trainstore
from featstore.runs.schema import finite
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays

C = ["a", "b"]


def _store(path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("validation", 20), ("test", 20)):
        y = np.arange(n) % 2
        write_arrays(path, "synthetic", split, (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32), y, C)
    return path


@pytest.mark.parametrize("where", [("inputs", "far_reference", "floor"), ("calibration", "floor")])
def test_an_integer_no_float_holds_is_one_line_naming_the_run(tmp_path, where):
    store = _store(tmp_path / "s.h5")
    rec = fit(store, "logreg", runs=tmp_path / "runs", test="none")
    path = tmp_path / "runs" / rec.id / "run.json"
    text = path.read_text()
    data = json.loads(text)
    node = data
    for key in where[:-1]:
        node = node[key]
    assert where[-1] in node, node
    node[where[-1]] = 12345
    path.write_text(json.dumps(data).replace("12345", "9" * 401))
    got = CliRunner().invoke(app, ["runs", "--store", str(store), "--runs", str(tmp_path / "runs")])
    assert got.exception is None or isinstance(got.exception, SystemExit), got.output
    assert "401 digits" in got.output and rec.id in got.output, got.output
    got = CliRunner().invoke(
        app, ["runs", "evaluate", rec.id, "--split", "test", "--store", str(store), "--runs", str(tmp_path / "runs")]
    )
    assert got.exit_code == 1 and "401 digits" in got.output and "Traceback" not in got.output, got.output
    assert not finite(10**400) and finite(3)


def test_a_split_extracted_again_from_the_same_paths_is_said_so(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.h5")
    fs = FeatureStore(store)
    paths, _ = record.split_identity(fs, "synthetic", "test")
    rec = {
        "id": "logreg-1",
        "store": str(store),
        "predictions": {"test": {"paths_sha256": paths, "listing_sha256": "9f"}},
    }
    monkeypatch.setattr(record, "split_identity", lambda *a: (paths, "8e"))  # an image listing, another one
    trainstore._NOW.clear()
    why = trainstore.scored_elsewhere(rec, fs, "synthetic", ["test"])["test"]
    assert "was extracted again since the run's figures there were recorded" in why, why
    assert f"featstore runs evaluate logreg-1 --split test --store {store}`" in why and "or pass --store" not in why
    why = trainstore.scored_elsewhere(rec, fs, "synthetic", ["test"], tmp_path / "my runs")["test"]  # attack 81 #2
    assert f"--store {store} --runs '{tmp_path / 'my runs'}'`" in why, why
    monkeypatch.setattr(record, "split_identity", lambda *a: ("0" * 64, "8e"))  # other paths
    trainstore._NOW.clear()
    why = trainstore.scored_elsewhere({**rec, "store": "/elsewhere/f.h5"}, fs, "synthetic", ["test"])["test"]
    assert "holds other images" in why and "or pass --store /elsewhere/f.h5" in why, why


def test_the_split_as_it_is_now_is_read_once_whatever_the_runs_recorded(tmp_path, monkeypatch):
    """Attack 81 #4: one read of the split's paths per recorded digest (runs x rows for `featstore runs`)."""
    store = _store(tmp_path / "s.h5")
    fs, calls = FeatureStore(store), []
    real = record.split_identity
    monkeypatch.setattr(record, "split_identity", lambda *a: calls.append(a) or real(*a))
    trainstore._NOW.clear()
    for i in range(5):  # five runs, each recording another version of test
        rec = {"id": f"r{i}", "predictions": {"test": {"paths_sha256": f"{i:064d}", "listing_sha256": f"l{i}"}}}
        assert "test" in trainstore.scored_elsewhere(rec, fs, "synthetic", ["test"])
    assert len(calls) == 1


def test_a_sweep_summary_weight_no_float_holds_is_passed_over(tmp_path):
    """Attack 81 #3: an ensemble weight of 401 digits ended runs show/compare/ensemble in an OverflowError."""
    assert selected.ensemble_key(["a", "b"], [10**400, 1]) == "ensemble:?"
    (tmp_path / "sweep-0123abcd.json").write_text(
        '{"chosen_on": "validation", "cells": [{"run": "a"}, {"run": "b"}], "winner": {"id": "a"}, '
        '"ensemble": {"members": ["a", "b"], "weights": [1' + "0" * 400 + ", 1]}}"
    )
    out: dict = {}
    selected._mark(out, "sweep-0123abcd.json", tmp_path, {"a", "b"})
    assert out == {}


def test_a_reliability_bin_count_over_2_53_is_a_broken_record(tmp_path):
    """Attack 81 #5: a bin's count of 10**19 passed the schema and ended `runs show` in matplotlib's OverflowError."""
    store = _store(tmp_path / "s.h5")
    rec = fit(store, "logreg", runs=tmp_path / "runs")
    path = tmp_path / "runs" / rec.id / "run.json"
    text = path.read_text()
    assert text.count('"count": ') > 0
    path.write_text(text.replace('"count": ', '"count": 10000000000000000000 + 0 * ', 1).replace(" + 0 * ", ', "x": '))
    got = CliRunner().invoke(app, ["runs", "--runs", str(tmp_path / "runs"), "show", rec.id])
    assert got.exit_code == 1 and "is broken" in got.output and "Traceback" not in got.output, got.output
