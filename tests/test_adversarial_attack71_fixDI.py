"""Attack 71 findings 9, 3, 5 and 8 (helper fixDI): `runs compare` withholds its verdict on rows a run was fitted on,
image rows matched by what the image gives (its features and label) rather than its stored path, the rows rule's cost
bounded by rows (numpy digests, a stated cap), and the marks in `runs evaluate --json` and `runs show --json`.
Synthetic stores written from arrays, and one tiny VGG16@32 random-weight extraction."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from typer.testing import CliRunner

from featstore import extract, fit
from featstore.cli import app
from featstore.experiments.compare import compare_pair
from featstore.runs import fittedrows
from featstore.runs.fittedrows import fitted_rows, fitted_rows_said, fitted_splits, row_digests
from featstore.store.writer import write_arrays

from .conftest import TINY_CONFIG


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _store(path, n=40):
    """Pure-noise train, validation and test; trainval = train's and validation's rows (a final refit's split); mixed =
    half of train's rows and half new ones."""
    rng, y = np.random.default_rng(0), np.arange(n) % 2
    X = {s: rng.normal(size=(n, 30)).astype(np.float32) for s in ("train", "validation", "test", "new")}
    for s in ("train", "validation", "test"):
        write_arrays(path, "first", s, X[s], y, ["a", "b"])
    write_arrays(path, "first", "trainval", np.concatenate([X["train"], X["validation"]]), np.tile(y, 2), ["a", "b"])
    half = n // 2
    write_arrays(path, "first", "mixed", np.concatenate([X["train"][:half], X["new"][half:]]), y, ["a", "b"])
    return path


# ------------------------------------------------------------------ finding 9: no verdict on a run's training rows
def test_compare_gives_no_verdict_on_rows_a_run_was_fitted_on(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    knn = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval")
    logreg = fit(store, "logreg", runs=runs)
    val = compare_pair(knn.id, logreg.id, store, runs).splits["validation"]
    assert val.comparison.verdict == "larger than chance"  # the 1-NN memorised validation's rows
    assert val.verdict == "not judged (fitted on these rows)" and val.fitted_by == (knn.id,)
    said = val.sentence()
    assert "larger than chance" not in said and f"no verdict here ({knn.id} was fitted on these rows)" in said
    assert "judge on the 'test' split" in said
    out = cli("runs", "compare", knn.id, logreg.id, "--store", store, "--runs", runs)
    assert out.exit_code == 0, out.output
    text = out.output.split("test (")[0]
    assert "larger than chance" not in text and f"{knn.id} was fitted on these rows" in text
    out = cli("runs", "compare", knn.id, logreg.id, "--store", store, "--runs", runs, "--json")
    got = json.loads(out.output)["splits"]["validation"]
    assert got["fitted_on_these_rows"] == [knn.id] and got["verdict"].startswith("not judged")
    assert got["comparison"]["verdict"].startswith("not judged") and "larger than chance" not in json.dumps(got)
    assert json.loads(out.output)["splits"]["test"]["fitted_on_these_rows"] == []


def test_compare_says_beside_the_verdict_when_some_rows_are_training_rows(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    knn = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, test="mixed")  # half of mixed is train's rows
    logreg = fit(store, "logreg", runs=runs, test="mixed")
    c = compare_pair(knn.id, logreg.id, store, runs).splits["mixed"]
    assert c.fitted == () and c.verdict == c.comparison.verdict  # judged: not every row is a training row
    for rec in (knn, logreg):
        assert f"20 of these 40 rows are rows {rec.id} was fitted on ('train')" in c.sentence()
    out = cli("runs", "compare", knn.id, logreg.id, "--store", store, "--runs", runs, "--json")
    got = json.loads(out.output)["splits"]["mixed"]
    assert any("20 of these 40 rows" in n for n in got["fitted_notes"]) and "20 of these" in got["sentence"]


# ------------------------------------------------------------------ finding 3: image rows by what the image gives
def test_a_trainval_of_hard_links_to_the_same_images_is_marked(tiny_train):
    data, store = tiny_train
    for split in ("train", "validation"):
        for f in sorted((data / split).rglob("*.*")):
            (data / "trainval" / f.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(f, data / "trainval" / f.parent.name / f"{split}_{f.name}")
    for split in ("validation", "trainval"):
        extract(data, split, store, TINY_CONFIG)
    got = fitted_rows(store, "vgg16", "trainval", ["train", "validation"])
    assert got == {"train": (12, 12), "validation": (6, 6)}  # every file is one of trainval's (paths differ)
    rec = fit(store, "knn", {"n_neighbors": [1]}, runs=store.parent / "runs", train="trainval", test=None)
    assert any("6 of the 6 rows of 'validation' are rows of 'trainval'" in n for n in rec.notes)
    assert fitted_splits(rec, ["train"]) == {"trainval", "train", "validation"}


# ------------------------------------------------------------------ finding 5: bounded by rows, numpy digests
def test_row_digests_tell_rows_and_labels_apart_and_match_equal_ones():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, 3)).astype(np.float16)  # 6 bytes a row: padded to a word
    k = row_digests(X, np.zeros(5000, int))
    assert len(np.unique(k, axis=0)) == len(np.unique(X, axis=0))
    assert np.array_equal(row_digests(X[::-1], np.zeros(5000, int)), k[::-1])  # a row's digest is its own
    assert not (row_digests(X, np.ones(5000, int)) == k).all(axis=1).any()  # another label: another key
    Y = X.copy()
    Y[:, 2] = -Y[:, 2]  # one half-float's sign bit
    assert not (row_digests(Y, np.zeros(5000, int)) == k).all(axis=1)[Y[:, 2] != X[:, 2]].any()


def test_a_split_over_the_row_cap_is_said_not_compared(tmp_path, monkeypatch, caplog):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    monkeypatch.setattr(fittedrows, "MAX_ROWS", 60)  # trainval (80 rows) is over it; validation (40) is not
    got, skipped = fitted_rows_said(store, "first", "train", ["trainval", "validation"])
    assert got == {} and skipped == {"trainval": "'trainval' has 80 rows, over the 60 the rows rule compares"}
    got, skipped = fitted_rows_said(store, "first", "trainval", ["validation", "test"])
    assert (
        got == {}
        and set(skipped) == {"validation", "test"}
        and "the training split 'trainval' has 80" in skipped["test"]
    )
    with caplog.at_level(logging.WARNING, logger="featstore.experiments.fit"):
        rec = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval")
    assert any("the rows of 'validation' were not compared with those of 'trainval'" in n for n in rec.notes)
    out = cli("runs", "evaluate", rec.id, "--split", "mixed", "--store", store, "--runs", runs)
    assert "rows not compared with the training split's" in out.output, out.output
    got = json.loads(
        cli("runs", "evaluate", rec.id, "--split", "mixed", "--store", store, "--runs", runs, "--json").output
    )
    assert got["fitted_on_these_rows"] is False and "80 rows, over the 60" in got["rows_not_compared"]


def test_the_training_digests_are_read_once_and_other_splits_streamed(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.h5")
    made = []
    real = fittedrows.TrainingRows.__init__
    monkeypatch.setattr(fittedrows.TrainingRows, "__init__", lambda self, *a: made.append(a[2]) or real(self, *a))
    assert fitted_rows(store, "first", "trainval", ["train", "validation", "test", "mixed"]) == {
        "train": (40, 40), "validation": (40, 40), "mixed": (20, 40)}  # fmt: skip
    assert made == ["trainval"]


# ------------------------------------------------------------------ finding 8: the marks in --json
def test_json_outputs_carry_the_fitted_and_selected_marks(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    rec = fit(store, "knn", {"n_neighbors": [1, 3]}, runs=runs, train="trainval")  # chose k on validation
    out = cli("runs", "evaluate", rec.id, "--split", "train", "--store", store, "--runs", runs, "--json")
    got = json.loads(out.output)
    assert got["fitted_on_these_rows"] is True and got["selected_on"] is None
    out = cli("runs", "show", rec.id, "--store", store, "--runs", runs, "--json")
    marks = json.loads(out.output)["marks"]
    assert marks["validation"]["fitted_on_these_rows"] and "its settings" in marks["validation"]["selected_on"]
    assert marks["test"] == {"fitted_on_these_rows": False, "training_rows": None, "rows_not_compared": None,
                             "selected_on": None}  # fmt: skip
    assert marks["trainval"]["fitted_on_these_rows"] and marks["train"]["fitted_on_these_rows"]
