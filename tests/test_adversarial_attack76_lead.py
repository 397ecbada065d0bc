"""Attack 76 #4, the lead's part: ``fit --memory-budget`` holds its rows rule (the "fitted on these rows" digests, 16
bytes a training row) within the budget, and says the rows were not compared where they would not fit in it; a sweep
reusing the run reads what the fit recorded. Synthetic stores written from arrays."""

from __future__ import annotations

import numpy as np

from featstore import fit
from featstore.runs import fittedrows
from featstore.store.writer import write_arrays


def test_fit_holds_its_rows_rule_within_its_memory_budget(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(4000) % 2
    X = (rng.normal(size=(4000, 2)) + y[:, None]).astype(np.float32)  # 32 KiB of features, 64 KiB of digests
    store = tmp_path / "s.h5"
    for split in ("train", "validation"):
        write_arrays(store, "synthetic", split, X, y, ["a", "b"])  # validation: train's very rows
    fittedrows._COUNTS.clear()
    rec = fit(store, "logreg", memory_budget="48KB", runs=tmp_path / "runs", test="none")
    said = rec["inputs"]["training_rows"]["validation"]
    assert "over the memory budget" in said["not_compared"], said  # not digested outside the budget
    assert any("not compared" in n and "over the memory budget" in n for n in rec["notes"]), rec["notes"]
    fittedrows._COUNTS.clear()
    rec = fit(store, "logreg", memory_budget="1MB", runs=tmp_path / "runs", test="none")  # room: compared, marked
    assert rec["inputs"]["training_rows"]["validation"] == {"shared": 4000, "rows": 4000}
    assert any("4000 of the 4000 rows of 'validation'" in n for n in rec["notes"]), rec["notes"]


def test_a_store_whose_rows_cannot_be_read_is_said_not_dropped(tmp_path):
    store = tmp_path / "s.h5"
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    for split in ("train", "validation"):
        write_arrays(store, "synthetic", split, X, np.arange(20) % 2, ["a", "b"])
    with open(store, "r+b") as f:  # the file damaged after it was written: its rows cannot be read
        f.seek(0)
        f.write(b"\0" * 512)
    fittedrows._COUNTS.clear()
    got, skipped = fittedrows.fitted_rows_said(store, "synthetic", "train", ["validation"])
    assert got == {} and "its rows could not be read" in skipped["validation"], skipped  # was ({}, {}): no word


# ------------------------------------------------------------------ attack 77 #2, #5, #6 (the lead)
def _trainval_runs(root):
    """Two 1-NN runs fitted on trainval (train's and validation's rows) and their ensemble, in ``root``."""
    from featstore import ensemble

    rng, c = np.random.default_rng(0), ["a", "b", "c"]
    parts = {s: ((rng.normal(size=(30, 8)) + (np.arange(30) % 3)[:, None] * 0.3).astype(np.float32), np.arange(30) % 3)
             for s in ("train", "validation", "test")}  # fmt: skip
    parts["trainval"] = tuple(np.concatenate([parts["train"][i], parts["validation"][i]]) for i in (0, 1))
    store, runs = root / "s.h5", root / "runs"
    for split, (X, y) in parts.items():
        write_arrays(store, "synthetic", split, X, y, c)
    a, b = (fit(store, "knn", {"n_neighbors": [1]}, train="trainval", runs=runs) for _ in range(2))
    return store, runs, [a.id, b.id, ensemble([a.id, b.id], store=store, runs=runs).id]


def _line(output: str, run_id: str) -> str:
    return next(ln for ln in output.splitlines() if ln.startswith(run_id))


def test_the_runs_listing_marks_an_ensemble_and_a_moved_store_as_show_does(tmp_path):
    import shutil

    from typer.testing import CliRunner

    from featstore.cli import app

    def cli(*args):
        got = CliRunner().invoke(app, [str(a) for a in args])
        assert got.exit_code == 0, got.output
        return got.output

    (tmp_path / "a").mkdir()
    store, runs, ids = _trainval_runs(tmp_path / "a")
    table = cli("runs", "--store", store, "--runs", runs)
    for rid in ids:  # the ensemble's members were fitted on validation's rows: its row was unmarked (77 #2)
        assert "1.0000 [0.8865, 1.0000] (fitted on these rows: resubstitution)" in _line(table, rid), table
    shutil.move(tmp_path / "a", tmp_path / "b")  # the store moved with its runs: the recorded path is gone
    store, runs = tmp_path / "b" / "s.h5", tmp_path / "b" / "runs"
    fittedrows._COUNTS.clear()
    table = cli("runs", "--store", store, "--runs", runs)  # the store given is the run's (its split's identity)
    assert all("(fitted on these rows: resubstitution)" in _line(table, rid) for rid in ids), table
    listing = cli("runs", "compare", *ids, "--runs", runs)  # no --store: the recorded one is gone, and said so
    for rid in ids:
        assert "validation 1.0000 [0.8865, 1.0000] (rows not compared)" in _line(listing, rid), listing
    assert "rows not compared: whether they are the run's training rows is not known" in listing


def test_the_budget_reason_names_sizes_under_a_mebibyte(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 2)).astype(np.float32), np.arange(400) % 2
    store = tmp_path / "s.h5"
    for split in ("train", "validation"):
        write_arrays(store, "synthetic", split, X, y, ["a", "b"])
    fittedrows._COUNTS.clear()
    _, skipped = fittedrows.fitted_rows_said(store, "synthetic", "train", ["validation"], memory_budget=1000)
    assert "over the memory budget of 1 kB" in skipped["validation"] and "0 MiB" not in skipped["validation"], skipped


# ------------------------------------------------------------------ attack 76 #1's gap: splits apart at any magnitude
def _layer_of_ones(path, test_scale: float):
    rng = np.random.default_rng(3)
    for split, n, scale in (("train", 90, 1.0), ("validation", 60, 1.0), ("test", 60, test_scale)):
        y = np.arange(n) % 3
        X = (np.abs(rng.normal(size=(n, 16))) + y[:, None]).astype(np.float32) * np.float32(scale)
        write_arrays(path, "synthetic", split, X, y, ["a", "b", "c"])
    return path


def test_a_test_split_far_under_train_in_a_layer_of_small_values_is_refused(tmp_path):
    import pytest

    from featstore.errors import StoreError
    from featstore.experiments.evaluate import evaluate_and_record
    from featstore.store.check import check_store

    store = _layer_of_ones(tmp_path / "s.h5", 1e-8)  # every feature under FAR_FLOOR: passed at chance before
    with pytest.raises(StoreError, match=r"synthetic/test's usual feature size is .* over 1e\+06 times apart"):
        fit(store, "logreg", runs=tmp_path / "runs")
    assert any("test: its usual feature size" in p and "apart" in p for p in check_store(store))
    honest = _layer_of_ones(tmp_path / "h.h5", 1.0)
    rec = fit(honest, "logreg", runs=tmp_path / "hruns", test="none")  # an honest layer of ~1: fitted as before
    assert check_store(honest) == []
    X, y = FeatureStore_load(honest, "test")
    write_arrays(honest, "synthetic", "test", X * np.float32(1e-8), y, ["a", "b", "c"])  # after the fit
    with pytest.raises(
        StoreError, match=r"synthetic/test.s usual (largest feature|feature size) is .* most likely test,"
    ):
        evaluate_and_record(rec["id"], "test", honest, tmp_path / "hruns")
    import h5py

    with h5py.File(honest, "a") as f:  # train gone: only what its fit recorded can tell (nothing to bin)
        del f["synthetic/train"]
    with pytest.raises(  # its usual size since attack 79 #5 (a fit's first pass bins it); its usual peak before
        StoreError, match=r"h.h5:/synthetic/test's usual (feature size|largest feature) is .* most likely test,"
    ):
        evaluate_and_record(rec["id"], "test", honest, tmp_path / "hruns")


def FeatureStore_load(path, split):
    from featstore.store.reader import FeatureStore

    return FeatureStore(path).load(split, "synthetic")


def test_the_cache_delete_command_runs_as_printed_with_quotes_and_dollars_in_the_path(tmp_path):
    import os
    import subprocess
    import sys

    import h5py

    from featstore.store.metadata import delete_group_command

    folder = tmp_path / 'it\'s $HOME "x"'
    folder.mkdir()
    store = folder / "s.h5"
    with h5py.File(store, "w") as f:
        f.create_group("vgg16@block5_conv1")
        f.create_group("other")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    subprocess.run(["bash", "-c", delete_group_command(store, "vgg16@block5_conv1")], check=True, env=env)  # as printed
    with h5py.File(store, "r") as f:
        assert list(f) == ["other"]  # attack 78 #8: the quote and $ broke the double-quoted word


# ------------------------------------------------------------------ attack 78 #1, #3, #7 (the lead)
def _noise(n, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3).astype(np.int32)
    return (np.abs(rng.normal(size=(n, 8)) + y[:, None] * 1.5) * scale).astype(np.float32), y


def test_a_figure_scored_on_a_store_the_training_store_lacks_is_said_not_compared(tmp_path):
    import shutil

    from featstore.experiments.evaluate import evaluate_and_record
    from featstore.report.runs import split_marks

    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", ["a", "b", "c"]
    train = _noise(90, 0)
    write_arrays(a, "synthetic", "train", *train, c)
    write_arrays(a, "synthetic", "validation", *_noise(60, 1), c)
    rec = fit(a, "knn", {"n_neighbors": [1]}, runs=tmp_path / "runs", test="none")
    shutil.copy(a, b)
    write_arrays(b, "synthetic", "test", *train, c)  # B's test: the run's very training rows
    evaluate_and_record(rec["id"], "test", b, tmp_path / "runs")
    from featstore.runs.folder import get_run

    rec = get_run(rec["id"], a, tmp_path / "runs")[0]
    fittedrows._COUNTS.clear()
    marks = split_marks(rec)  # the run's recorded store A holds no test: said, it was dropped (78 #1)
    assert "holds no split 'test'" in (marks["test"]["rows_not_compared"] or ""), marks["test"]


def test_a_budgeted_runs_report_keeps_to_its_budget_and_its_fits_note(tmp_path):
    from featstore.report.runs import split_marks

    rng = np.random.default_rng(0)
    y = np.arange(4000) % 2
    X = (rng.normal(size=(4000, 2)) + y[:, None]).astype(np.float32)
    store = tmp_path / "s.h5"
    for split in ("train", "validation"):
        write_arrays(store, "synthetic", split, X, y, ["a", "b"])
    fittedrows._COUNTS.clear()
    rec = fit(store, "logreg", memory_budget="48KB", runs=tmp_path / "runs", test="none")
    marks = split_marks(rec)["validation"]  # the report marked "fitted on these rows" under the note (78 #3)
    assert not marks["fitted_on_these_rows"] and "over the memory budget" in marks["rows_not_compared"], marks


def test_runs_evaluate_far_apart_on_a_store_without_train_keeps_its_line(tmp_path):
    import pytest

    from featstore.errors import StoreError
    from featstore.experiments.evaluate import evaluate_and_record

    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", ["a", "b", "c"]
    for split, seed in (("train", 0), ("validation", 1)):
        write_arrays(a, "synthetic", split, *_noise(30, seed, 2000.0), c)
    rec = fit(a, "logreg", test="none", runs=tmp_path / "runs")
    write_arrays(b, "synthetic", "validation", *_noise(30, 1, 2000.0), c)  # the run's validation rows
    write_arrays(b, "synthetic", "test", *_noise(30, 2, 2000.0 * 1e-7), c)  # far under train: no train here
    with pytest.raises(StoreError, match=r"b.h5:/synthetic/test's usual .* far apart .* most likely test,"):
        evaluate_and_record(rec["id"], "test", b, tmp_path / "runs")  # was: "has no split 'train'" (78 #7)
