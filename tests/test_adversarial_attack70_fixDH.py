"""Attack 70 findings 1, 4, 6 and 7 (helper fixDH): a sweep's choice keeps its mark when the sweep's other runs are
deleted, the "fitted on these rows" mark decided by rows rather than split names, calibration.model_temperature
validated as a run is read, and the default compare chart's folder error. Synthetic stores written from arrays."""

from __future__ import annotations

import json
import logging

from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.runs.fittedrows import fitted_splits
from featstore.runs.selected import selected_on, sweep_choices

from .conftest import trainval_store


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ finding 1: a sweep's losers deleted
def test_a_sweeps_choice_keeps_its_mark_when_its_other_runs_are_deleted(tmp_path):
    (tmp_path / "logreg-1").mkdir()  # the chosen run kept; knn-2 and random_forest-3 deleted, the summary kept
    cells = [{"run": "logreg-1"}, {"run": "knn-2"}, {"run": "random_forest-3"}]
    (tmp_path / "sweep-aa.json").write_text(json.dumps({"chosen_on": "validation", "best_single": "logreg-1",
                                                         "winner": {"id": "logreg-1"}, "cells": cells}))  # fmt: skip
    got = sweep_choices(tmp_path)
    assert got["logreg-1"]["validation"] == "its classifier and extractor, among 3 runs of sweep-aa (1 of them here),"
    rec = {"id": "logreg-1", "kind": "fit", "selection": {}, "metrics": {}}
    assert "validation" in selected_on(rec, None, got)
    (tmp_path / "knn-2").mkdir()
    (tmp_path / "random_forest-3").mkdir()
    assert sweep_choices(tmp_path)["logreg-1"]["validation"].endswith("among 3 runs of sweep-aa,")
    # a sweep of one run chose nothing, and a summary marks no run that is not here
    (tmp_path / "sweep-bb.json").write_text(json.dumps({"chosen_on": "validation", "best_single": "knn-9",
                                                         "cells": [{"run": "knn-9"}]}))  # fmt: skip
    assert "knn-9" not in sweep_choices(tmp_path)


# ------------------------------------------------------------------ finding 4: fitted on these rows, by rows
def test_a_split_whose_rows_are_training_rows_is_marked_whatever_its_name(tmp_path, caplog):
    store, runs = trainval_store(tmp_path / "s.h5", 30, 5), tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="featstore.experiments.fit"):
        rec = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval")
    said = "30 of the 30 rows of 'validation' are rows of 'trainval', which the run is fitted on"
    assert said in caplog.text and any(said in n for n in rec.notes)  # fit says so (and goes on)
    assert fitted_splits(rec) == {"trainval", "validation"}  # test's rows are not training rows
    out = cli("runs", "evaluate", rec.id, "--split", "train", "--store", store, "--runs", runs)
    assert out.exit_code == 0, out.output
    assert f"{rec.id} on train (fitted on these rows)" in out.output and "resubstitution" in out.output
    out = cli("runs", "show", rec.id, "--store", store, "--runs", runs)
    for split in ("trainval", "validation", "train"):
        assert f"  {split} (fitted on these rows):" in out.output
    assert "  test (fitted" not in out.output
    # a fit on train alone: trainval holds some of its rows, not all: not marked; validation shares none: no note
    rec = fit(store, "knn", {"n_neighbors": [1]}, runs=runs)
    assert fitted_splits(rec, ["trainval"]) == {"train"} and not any("rows of" in n for n in rec.notes)


# ------------------------------------------------------------------ finding 6: model_temperature checked when read
def test_a_damaged_model_temperature_is_refused_as_t_is(tmp_path):
    store, runs = trainval_store(tmp_path / "s.h5", 30, 5), tmp_path / "runs"
    rec = fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    path = runs / rec.id / "run.json"
    good = json.loads(path.read_text())
    bad = {
        "T": {"T": 1e-300, "folds": 2.5, "at_bound": True},
        "folds": {"T": 2.0, "folds": 2.5, "at_bound": False},
        "no folds": {"T": 3.0, "folds": 0, "at_bound": False},
        "at_bound": {"T": 3.0, "folds": 5, "at_bound": True},
        "dict": [1.0],
    }
    for what, own in bad.items():
        path.write_text(json.dumps({**good, "calibration": {**good["calibration"], "model_temperature": own}}))
        out = cli("runs", "show", rec.id, "--store", store, "--runs", runs)
        assert out.exit_code != 0, (what, out.output)
        assert "model_temperature" in out.output and len(out.output.strip().splitlines()) == 1, (what, out.output)
    for own in ({"T": 0.01, "folds": 5, "at_bound": True, "bounds": [0.01, 100]}, {"T": 1.0, "folds": 0}):
        path.write_text(json.dumps({**good, "calibration": {**good["calibration"], "model_temperature": own}}))
        out = cli("runs", "show", rec.id, "--store", store, "--runs", runs)
        assert out.exit_code == 0 and "the model's own are its softmax" in out.output, out.output


# ------------------------------------------------------------------ finding 7: the default chart's folder
def test_a_folder_at_the_default_chart_names_the_default_and_out(tmp_path):
    store, runs = trainval_store(tmp_path / "s.h5", 30, 5), tmp_path / "runs"
    fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    fit(store, "knn", {"n_neighbors": [5]}, runs=runs)
    (runs / "compare.png").mkdir()
    out = cli("runs", "compare", "--store", store, "--runs", runs)
    assert out.exit_code != 0
    last = out.output.strip().splitlines()[-1]
    assert f"the default chart {runs / 'compare.png'} is a folder; pass --out PATH.png (a path of yours)" in last
    assert "--out runs" not in last and "compare.png/out" not in last  # no --out was given; no file inside it
    chart = tmp_path / "mine.png"
    out = cli("runs", "compare", "--store", store, "--runs", runs, "--out", chart)  # what it advises works
    assert out.exit_code == 0 and chart.is_file(), out.output
