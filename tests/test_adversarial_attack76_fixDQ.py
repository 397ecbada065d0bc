"""Attack 76, findings 2 and 6 (fixDQ): over the rows rule's caps, sweep, probe and fewshot say a split was not
compared (a warning and a recorded note); a sweep reusing a run reads the rows rule's recorded count, not its note's
text; the CLI's runs table and a compare of several runs mark a figure on a run's own training rows."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.runs import fittedrows
from featstore.runs.folder import get_run
from featstore.store.writer import write_arrays
from tests.conftest import trainval_store

NOT_COMPARED = "were not compared with those of 'train'"


def _same_rows(path, n=30, d=6):
    """train, validation and test all the same rows (noisy classes): the rule refuses every split when it compares."""
    rng, y = np.random.default_rng(0), np.arange(n) % 3
    X = (rng.normal(size=(n, d)) + y[:, None] * 0.7).astype(np.float32)
    for s in ("train", "validation", "test"):
        write_arrays(path, "x", s, X, y, ["a", "b", "c"])
    return path


@pytest.fixture
def over_the_caps(monkeypatch):
    """The caps lowered to 256 bytes: stands for a split over 1 GiB of features (fresh per-process counts)."""
    monkeypatch.setattr(fittedrows, "MAX_BYTES", 256)
    monkeypatch.setattr(fittedrows, "_COUNTS", {})
    monkeypatch.setattr(fittedrows, "_TRAIN", {})


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if NOT_COMPARED in r.getMessage()]


# ------------------------------------------------------------------ finding 2: not compared, said
def test_fewshot_over_the_caps_says_test_was_not_compared_and_records_it(tmp_path, caplog, over_the_caps):
    from featstore.experiments.fewshot import fewshot

    store = _same_rows(tmp_path / "s.h5")
    with caplog.at_level(logging.WARNING):
        got = fewshot(store, shots=(1,), trials=1, runs=tmp_path / "runs")
    said = _said(caplog)
    assert len(said) == 1 and said[0].startswith("fewshot: the rows of 'test'"), said  # once
    assert any(NOT_COMPARED in n and "MiB" in n for n in got["notes"]), got["notes"]


def test_probe_over_the_caps_says_each_split_once_in_its_summary_and_table(tmp_path, caplog, over_the_caps):
    from featstore.experiments.probe import probe
    from featstore.report.protocols import probe_table

    store = _same_rows(tmp_path / "s.h5")
    with caplog.at_level(logging.WARNING):
        got = probe(store, runs=tmp_path / "runs", knn=False)
    said = _said(caplog)
    assert [s.split("'")[1] for s in said] == ["validation", "test"], said  # each split once, with its reason
    assert len(got["notes"]) == 3 and all(NOT_COMPARED in n for n in got["notes"][:2]), got.get("notes")
    assert "with those of 'validation', the rows the choice was made on" in got["notes"][2]  # attack 78 #2
    assert probe_table(got).count(NOT_COMPARED) == 2


def test_sweep_over_the_caps_notes_validation_and_test_in_its_summary(tmp_path, caplog, over_the_caps):
    from featstore.experiments.sweep import sweep
    from featstore.report.runs import sweep_table

    store = _same_rows(tmp_path / "s.h5")
    with caplog.at_level(logging.WARNING):
        got = sweep(store, ["logreg"], runs=tmp_path / "runs", reuse=False, png=tmp_path / "h.png")
    win = got["winner"]
    assert NOT_COMPARED in win.get("validation_note", "") and NOT_COMPARED in win.get("test_note", ""), win
    assert [m for m in _said(caplog) if m.startswith("sweep: ")], _said(caplog)  # the sweep's own, not only fit's
    table = sweep_table(got)
    assert table.count(NOT_COMPARED) == 2, table


# ------------------------------------------------------------------ house: one rule, a recorded count
def test_a_fit_records_the_rows_rules_count_and_a_reusing_sweep_reads_it(tmp_path, monkeypatch):
    from featstore import fit
    from featstore.experiments import training_rows
    from featstore.experiments.sweep import sweep

    store, runs = trainval_store(tmp_path / "s.h5", 20, 4), tmp_path / "runs"
    rec = fit(store, "logreg", runs=runs, train="trainval")
    got = get_run(rec.id, store, runs)[0]
    assert got.get("inputs")["training_rows"] == {"validation": {"shared": 20, "rows": 20}}
    monkeypatch.setattr(
        training_rows, "fitted_rows_said", lambda *a, **k: pytest.fail("a reused cell's rows were read")
    )
    with pytest.raises(ConfigError, match=r"sweep: 20 of the 20 rows of 'validation' \(first\) are rows of 'trainval'"):
        sweep(store, ["logreg"], train="trainval", runs=runs)


def test_a_reused_run_recorded_as_not_compared_is_said_by_the_sweep(tmp_path, caplog, over_the_caps):
    from featstore import fit
    from featstore.experiments.sweep import sweep

    store, runs = _same_rows(tmp_path / "s.h5"), tmp_path / "runs"
    fit(store, "logreg", runs=runs, test="none")  # over the caps: fit notes validation as not compared
    fittedrows._COUNTS.clear()
    with caplog.at_level(logging.WARNING):
        got = sweep(store, ["logreg"], runs=runs, test="none", png=tmp_path / "h.png")
    assert got["reused"] and NOT_COMPARED in got["winner"].get("validation_note", ""), got["winner"]


# ------------------------------------------------------------------ finding 6: the runs table and compare of 3+ runs
RESUB = "fitted on these rows: resubstitution"


def _resubstituted(tmp_path):
    """Three runs of a store whose test holds train's very rows (validation its own): a 1-NN's test is 1.0000."""
    from featstore import fit

    store, runs = tmp_path / "s.h5", tmp_path / "runs"
    rng, y = np.random.default_rng(1), np.arange(45) % 3
    X = {s: (rng.normal(size=(45, 6)) + y[:, None] * 0.5).astype(np.float32) for s in ("train", "validation")}
    for s in X:
        write_arrays(store, "x", s, X[s], y, ["a", "b", "c"])
    write_arrays(store, "x", "test", X["train"], y, ["a", "b", "c"])
    ids = [
        fit(store, c, p, runs=runs).id
        for c, p in (("knn", {"n_neighbors": [1]}), ("knn", {"n_neighbors": [3]}), ("logreg", None))
    ]
    return store, runs, ids


def test_the_runs_table_and_a_compare_of_three_runs_mark_a_resubstitution_figure(tmp_path):
    import json

    from typer.testing import CliRunner

    from featstore.cli import app

    store, runs, ids = _resubstituted(tmp_path)
    env = {"COLUMNS": "250"}
    table = CliRunner().invoke(app, ["runs", "--store", str(store), "--runs", str(runs)], env=env)
    assert table.exit_code == 0, table.output
    knn = next(line for line in table.output.splitlines() if line.startswith(ids[0]))
    assert "1.0000 [" in knn and RESUB in knn and knn.count(RESUB) == 1, knn  # test marked, validation not
    listed = json.loads(CliRunner().invoke(app, ["runs", "--store", str(store), "--runs", str(runs), "--json"]).output)
    marks = {r["id"]: r["marks"] for r in listed["runs"]}
    assert marks[ids[0]]["test"]["fitted_on_these_rows"] and not marks[ids[0]]["validation"]["fitted_on_these_rows"]
    args = ["runs", "compare", *ids, "--store", str(store), "--runs", str(runs), "--out", str(tmp_path / "c.png")]
    many = CliRunner().invoke(app, args, env=env)
    assert many.exit_code == 0, many.output
    lines = [line for line in many.output.splitlines() if line.startswith(tuple(ids))]
    assert len(lines) == 3 and all(line.count(RESUB) == 1 for line in lines), many.output
    got = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert all(r["marks"]["test"]["fitted_on_these_rows"] for r in got["runs"]), got["runs"]


def test_the_compare_chart_of_several_runs_labels_a_resubstitution_bar(tmp_path, monkeypatch):
    from featstore import plots
    from featstore.experiments.compare import compare_runs

    store, runs, ids = _resubstituted(tmp_path)
    seen = {}
    monkeypatch.setattr(plots, "compare_png", lambda labels, scores, path, iv=None: seen.setdefault("labels", labels))
    compare_runs(ids, tmp_path / "c.png", store, runs)
    assert all(f"(test: {RESUB})" in label for label in seen["labels"]), seen
