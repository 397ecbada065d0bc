"""Attack 78 #1b (the lead): a recorded figure is marked by the rows it was scored on, not by the split of that name
as the store holds it now. A fit whose test was train's very rows is a resubstitution figure; once test is re-made
with other rows the listing no longer holds those rows, so the figure is "rows not compared" (not an estimate)."""

from __future__ import annotations

import h5py
import numpy as np

from featstore import fit
from featstore.runs.fittedrows import NOT_COMPARED, RESUBSTITUTION, RowsPlace, figure_marks, shared_rows
from featstore.store.writer import write_arrays

C = ["a", "b", "c"]


def _rows(seed, n=60):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype(np.float32), (np.arange(n) % 3).astype(np.int32)


def _replace_test(path, X, y):
    with h5py.File(path, "a") as f:
        del f["synthetic/test"]
    write_arrays(path, "synthetic", "test", X, y, C)


def test_a_split_re_made_since_its_figures_is_not_compared(tmp_path):
    store, train = tmp_path / "s.h5", _rows(0)
    for split, (X, y) in (("train", train), ("validation", _rows(1)), ("test", train)):
        write_arrays(store, "synthetic", split, X, y, C)
    rec = fit(store, "knn", {"n_neighbors": [1]}, runs=tmp_path / "runs")
    place = RowsPlace(store, tmp_path / "runs")
    assert figure_marks(rec, ["test"], place=place) == {"test": RESUBSTITUTION}
    _replace_test(store, *train)  # written again from the same rows: the same split by its rows' digest
    assert figure_marks(rec, ["test"], place=place) == {"test": RESUBSTITUTION}
    _replace_test(store, *_rows(7))  # other rows now: the recorded 1.000 was train's rows, not these
    assert figure_marks(rec, ["test"], place=place) == {"test": NOT_COMPARED}
    why = shared_rows(rec, ["test"], place=place)[1]["test"]
    assert "holds other rows than the run's figures there were scored on" in why and "runs evaluate" in why


def test_the_split_scored_now_is_marked_by_its_rows(tmp_path):
    """runs evaluate's figure is of the split as it is now (``scored`` given): its rows are compared, not refused."""
    store, train = tmp_path / "s.h5", _rows(0)
    for split, (X, y) in (("train", train), ("validation", _rows(1)), ("test", _rows(2))):
        write_arrays(store, "synthetic", split, X, y, C)
    rec = fit(store, "knn", {"n_neighbors": [1]}, runs=tmp_path / "runs")
    _replace_test(store, *train)
    assert figure_marks(rec, ["test"], place=RowsPlace(store, tmp_path / "runs")) == {"test": NOT_COMPARED}
    got, skipped = shared_rows(rec, ["test"], place=RowsPlace(store, tmp_path / "runs", store))
    assert got["test"] == (60, 60) and "test" not in skipped
