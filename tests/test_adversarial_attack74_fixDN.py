"""Attack 74 findings 1, 2, 3, 4, 5, 6, 7 and 9 (helper fixDN): the "fitted on these rows" rule for ensembles (their
members' rows), the store the command was given, a sweep's test figure, probe and fewshot, a few shared rows against
all of them, the rows cache, and the row digest (keyed, both lanes, -0.0). Synthetic stores written from arrays."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.experiments.compare import compare_pair
from featstore.experiments.ensemble import ensemble
from featstore.runs import fittedrows
from featstore.runs.fittedrows import fitted_rows, shared_rows
from featstore.runs.folder import get_run
from featstore.store.writer import write_arrays


def _fresh():
    """The rows rule's caches emptied (whatever they are)."""
    for name in ("_COUNTS", "_TRAIN", "_STORES"):
        getattr(fittedrows, name, {}).clear()
    if hasattr(fittedrows, "_cached"):
        fittedrows._cached.cache_clear()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _store(path, n=40, d=30):
    """Pure-noise train, validation and test; trainval = train's and validation's rows (a final refit's split)."""
    rng, y = np.random.default_rng(0), np.arange(n) % 2
    X = {s: rng.normal(size=(n, d)).astype(np.float32) for s in ("train", "validation", "test")}
    for s in ("train", "validation", "test"):
        write_arrays(path, "first", s, X[s], y, ["a", "b"])
    write_arrays(path, "first", "trainval", np.concatenate([X["train"], X["validation"]]), np.tile(y, 2), ["a", "b"])
    return path


# ------------------------------------------------------------------ finding 1: an ensemble's rows are its members'
def test_an_ensemble_of_runs_fitted_on_validation_gets_no_verdict_there(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    a = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval")
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs, train="trainval")
    other = fit(store, "logreg", runs=runs)
    ens = ensemble([a.id, b.id], None, store, runs)
    val = compare_pair(ens.id, other.id, store, runs).splits["validation"]
    assert val.fitted_by == (ens.id,) and val.verdict.startswith("not judged"), val.sentence()
    assert "larger than chance" not in val.sentence(), val.sentence()
    shown = cli("runs", "show", ens.id, "--store", store, "--runs", runs)
    assert "validation (fitted on these rows)" in shown.output, shown.output
    got = json.loads(cli("runs", "show", ens.id, "--store", store, "--runs", runs, "--json").output)["marks"]
    assert got["validation"]["fitted_on_these_rows"] and not got["test"]["fitted_on_these_rows"]
    rec = get_run(ens.id, store, runs)[0]
    assert "validation" in fittedrows.fitted_splits(rec, (), store, runs)  # as the site asks (a RowsPlace there)
    assert "validation" in fittedrows.fitted_splits(rec, place=fittedrows.RowsPlace(store, runs))


# ------------------------------------------------------------------ finding 3: the store the command was given
def test_the_marks_follow_the_store_given_not_the_recorded_path(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    store, runs = _store(proj / "s.h5"), proj / "runs"
    knn = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval")
    other = fit(store, "logreg", runs=runs, train="trainval")
    shutil.move(proj, tmp_path / "moved")
    store, runs = tmp_path / "moved" / "s.h5", tmp_path / "moved" / "runs"
    got = json.loads(cli("runs", "show", knn.id, "--store", store, "--runs", runs, "--json").output)["marks"]
    assert got["validation"]["fitted_on_these_rows"], got
    val = compare_pair(knn.id, other.id, store, runs).splits["validation"]
    assert val.verdict.startswith("not judged"), val.sentence()
    out = cli("report", "--store", store, "--runs", runs, "--out", tmp_path / "site")  # the site: its store's rows
    assert out.exit_code == 0, out.output
    page = (tmp_path / "site" / "runs" / f"{knn.id}.html").read_text()
    assert page.count("fitted on these rows (resubstitution)") == 2  # trainval and validation
    rec = get_run(knn.id, store, runs)[0]  # neither the given store nor the recorded one: said, not silent
    got, skipped = shared_rows(rec, (), tmp_path / "nowhere.h5")
    assert "validation" not in got and "could not be compared" in skipped["validation"], skipped
    assert str(tmp_path / "nowhere.h5") in skipped["validation"]


# ------------------------------------------------------------------ finding 7: each split digested once
def test_each_split_is_digested_once_whatever_the_runs_split_names(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.h5")
    write_arrays(store, "second", "train", np.ones((4, 3), np.float32), np.arange(4) % 2, ["a", "b"])
    write_arrays(store, "second", "validation", np.ones((4, 3), np.float32), np.arange(4) % 2, ["a", "b"])
    built, opened = [], []
    real = fittedrows.TrainingRows
    monkeypatch.setattr(fittedrows, "TrainingRows", lambda fs, n, s, *a: built.append((n, s)) or real(fs, n, s, *a))
    from featstore.store import reader

    real_open = reader.FeatureStore

    class Counted(real_open):
        def __init__(self, *a, **k):
            opened.append(a)
            super().__init__(*a, **k)

    monkeypatch.setattr(reader, "FeatureStore", Counted)
    _fresh()
    orders = (["validation"], ["validation", "test"], ["test", "validation"], ["test"])
    for _ in range(3):  # two sweeps' runs walked in turn: every order of split names, two extractors
        for name in ("first", "second"):
            for metrics in orders:
                rec = {"kind": "fit", "inputs": {"train": "train"}, "store": str(store), "extractor": name}
                rec["metrics"] = dict.fromkeys(metrics, {})
                shared_rows(rec)
    assert sorted(built) == [("first", "train"), ("second", "train")], built
    assert len(opened) <= 1, opened


# ------------------------------------------------------------------ finding 9: the digest
def test_the_digest_is_keyed_per_process():
    code = (
        "import numpy as np; from featstore.runs.fittedrows import row_digests; "
        "print(row_digests(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0])).tolist())"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(2)]
    assert runs[0].stdout.strip() and runs[0].stdout != runs[1].stdout  # fixed weights let collisions be made


def test_rows_tied_on_the_first_lane_are_all_found(tmp_path, monkeypatch):
    store, y = tmp_path / "s.h5", np.arange(10) % 2
    X = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    write_arrays(store, "x", "train", X, y, ["a", "b"])
    write_arrays(store, "x", "test", X[::-1].copy(), y[::-1].copy(), ["a", "b"])
    real = fittedrows.row_digests

    def tied(X, y):  # every row's first lane the same: only the second tells them apart
        out = real(X, y)
        out[:, 0] = 7
        return out

    monkeypatch.setattr(fittedrows, "row_digests", tied)
    _fresh()
    assert fitted_rows(store, "x", "train", ["test"]) == {"test": (10, 10)}


def test_minus_zero_is_matched_as_zero(tmp_path):
    store, y = tmp_path / "s.h5", np.arange(6) % 2
    X = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    X[:, 1] = 0.0
    write_arrays(store, "x", "train", X, y, ["a", "b"])
    write_arrays(store, "x", "test", np.where(X == 0, np.float32(-0.0), X), y, ["a", "b"])
    _fresh()
    assert fitted_rows(store, "x", "train", ["test"]) == {"test": (6, 6)}


# ------------------------------------------------------------------ finding 2: a sweep's test on training rows
def test_a_sweeps_test_figure_on_training_rows_is_withheld_with_the_reason(tmp_path):
    from featstore.experiments.sweep import sweep
    from featstore.report.runs import sweep_table

    store, y = tmp_path / "s.h5", np.arange(40) % 2
    rng = np.random.default_rng(3)
    X = {s: (rng.normal(size=(40, 8)) + y[:, None]).astype(np.float32) for s in ("train", "validation")}
    for s in ("train", "validation"):
        write_arrays(store, "x", s, X[s], y, ["a", "b"])
    write_arrays(store, "x", "test", X["train"][:30], y[:30], ["a", "b"])  # train's own rows
    s = sweep(store, ["logreg"], runs=tmp_path / "runs")
    assert s["winner"]["test"] is None and "30 of the 30 rows of 'test'" in s["winner"]["test_withheld"], s["winner"]
    assert "test figure is withheld" in sweep_table(s) and ", test 0." not in sweep_table(s)


# ------------------------------------------------------------------ finding 6: one duplicate row is not all of them
def test_one_duplicate_row_is_noted_not_refused_nor_called_resubstitution(tmp_path, caplog):
    from featstore.experiments.sweep import sweep

    store, y = tmp_path / "s.h5", np.arange(24) % 2
    rng = np.random.default_rng(4)
    X = {s: (rng.normal(size=(24, 8)) + y[:, None]).astype(np.float32) for s in ("train", "validation", "test")}
    X["validation"][5], y_val = X["train"][5], y.copy()  # one image shared (same class: a duplicate)
    for s in ("train", "test"):
        write_arrays(store, "x", s, X[s], y, ["a", "b"])
    write_arrays(store, "x", "validation", X["validation"], y_val, ["a", "b"])
    s = sweep(store, ["logreg"], runs=tmp_path / "runs")  # refused before: "the choice would be made on training rows"
    assert s["winner"]["test"] is not None
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "1 of the 24 rows of 'validation'" in said and "optimistic by at most 1 row" in said, said
    rec = get_run(s["winner"]["id"], store, tmp_path / "runs")[0]
    note = next(n for n in rec.notes if n.startswith("1 of the 24 rows of 'validation'"))
    assert "resubstitution" not in note, note


# ------------------------------------------------------------------ finding 5: probe and fewshot on training rows
def test_probe_and_fewshot_refuse_a_split_of_training_rows(tmp_path):
    import pytest

    from featstore.errors import ConfigError
    from featstore.experiments.fewshot import fewshot
    from featstore.experiments.probe import probe

    store = _store(tmp_path / "s.h5")
    with pytest.raises(ConfigError, match="40 of the 40 rows of 'validation'.*choose C and k on training rows"):
        probe(store, train="trainval", runs=tmp_path / "runs", knn=False)
    with pytest.raises(ConfigError, match="fewshot: 40 of the 40 rows of 'validation'.*score on training rows"):
        fewshot(store, shots=(1,), trials=1, train="trainval", test="validation", runs=tmp_path / "runs")


# ------------------------------------------------------------------ finding 4: what is matched, said exactly
def test_only_bit_identical_rows_are_matched_and_the_docs_say_so(tmp_path):
    from pathlib import Path

    store, y = tmp_path / "s.h5", np.arange(13) % 2
    X = np.random.default_rng(5).normal(size=(13, 16)).astype(np.float32)
    near = X.copy()
    near[-1] += np.float32(2.5e-5)  # the last image alone in its batch (attack 74 #4): near, not the same bits
    write_arrays(store, "x", "validation", X, y, ["a", "b"])
    write_arrays(store, "x", "trainval", near, y, ["a", "b"])
    _fresh()
    assert fitted_rows(store, "x", "trainval", ["validation"]) == {"validation": (12, 13)}  # said as 12 of 13
    root = Path(__file__).resolve().parents[1]
    docs = " ".join((root / "docs" / "experiments.md").read_text().split())
    assert "same bits whatever batch" not in docs and "Near-identical rows are not matched on purpose" in docs
    assert "whatever its batch" not in " ".join((fittedrows.__doc__ or "").split())
