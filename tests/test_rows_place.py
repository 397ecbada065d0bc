"""houseDT: where the "fitted on these rows" marks read rows is passed down (``RowsPlace``), not set for a block of
code in process state: two calls given two places each get their own marks, in one thread or in others."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from featstore import fit
from featstore.experiments.ensemble import ensemble
from featstore.report.runs import run_report, split_marks
from featstore.runs import fittedrows
from featstore.runs.fittedrows import RowsPlace, fitted_splits
from featstore.runs.folder import get_run
from featstore.store.writer import write_arrays


def _ensemble(tmp_path):
    """An ensemble of two runs fitted on trainval (train's and validation's rows): its validation figures are on its
    members' training rows, known only where its members' runs folder is given."""
    store, runs = tmp_path / "s.h5", tmp_path / "runs"
    rng, y = np.random.default_rng(0), np.arange(30) % 2
    X = {s: rng.normal(size=(30, 8)).astype(np.float32) for s in ("train", "validation", "test")}
    for s, x in X.items():
        write_arrays(store, "first", s, x, y, ["a", "b"])
    write_arrays(store, "first", "trainval", np.concatenate([X["train"], X["validation"]]), np.tile(y, 2), ["a", "b"])
    a = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval")
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs, train="trainval")
    return get_run(ensemble([a.id, b.id], None, store, runs).id, store, runs)[0], store, runs


def test_two_places_in_one_thread_and_in_others_each_get_their_own_marks(tmp_path):
    rec, store, runs = _ensemble(tmp_path)
    here, nowhere = RowsPlace(store, runs), RowsPlace()
    assert "validation" in fitted_splits(rec, place=here)
    assert "validation" not in fitted_splits(rec, place=nowhere)  # no members' folder: not compared, said
    assert "validation" in fitted_splits(rec, place=here)  # the call between changed nothing for this one
    assert "validation" not in fitted_splits(rec)  # no place: as before any
    marks = split_marks(rec, place=nowhere)["validation"]
    assert not marks["fitted_on_these_rows"] and "runs folder was not given" in marks["rows_not_compared"]
    assert split_marks(rec, place=here)["validation"]["fitted_on_these_rows"]
    assert "validation (fitted on these rows)" in run_report(rec, [], place=here)
    assert "validation (fitted on these rows)" not in run_report(rec, [], place=nowhere)
    places = [here, nowhere] * 4
    with ThreadPoolExecutor(4) as pool:  # threads given their places: each its own (a ContextVar did not reach them)
        got = list(pool.map(lambda p: "validation" in fitted_splits(rec, place=p), places))
    assert got == [p is here for p in places]
    assert not hasattr(fittedrows, "rows_of")
