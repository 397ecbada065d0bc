"""A fit's evaluation streams (issue 21): a split's probabilities are computed, written to predictions.npz and scored a
block of rows at a time, never (rows x classes) at once; its figures and temperature are exactly the in-memory ones;
predictions.npz keeps its format, so runs written before read (and take a new split) unchanged."""

from __future__ import annotations

import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from featstore import FeatureStore, evaluate_run, record_split
from featstore.errors import StoreError
from featstore.experiments import fit as fit_mod
from featstore.experiments.calibration import calibrate_on_validation
from featstore.experiments.evaluate import run_metrics
from featstore.experiments.fit import fit
from featstore.runs import artifacts
from featstore.runs.files import PREDICTIONS, RECORD, sha256_of
from featstore.runs.folder import get_run, load_predictions
from featstore.runs.predictions_file import PredictionsWriter
from featstore.stats import figures
from featstore.stats.calibration import fit_temperature, fit_temperature_blocks
from featstore.store import writer

K, D = 512, 16  # classes, features: a split's probabilities (2,000 x 512 float64, 8 MB) dwarf its features (128 kB)
ROWS = {"train": 2000, "validation": 2000, "test": 2000}
CHUNK = 128  # rows per stored chunk (8 kB)
SMALL = {"train": 400, "validation": 300, "test": 250}  # the exactness checks' store: 12 classes, 8 features


def _store(path, rows: dict, k: int, d: int, chunk: int):
    """Class centres plus noise, ``chunk``-row chunks (tiny budgets then give one-chunk evaluation blocks)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "CHUNK_BYTES", chunk * d * 4)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (k, d))
    try:
        for split, n in rows.items():
            y = rng.permutation(np.arange(n) % k).astype(np.int32)
            X = (centres[y] + rng.normal(0, 0.7, (n, d))).astype(np.float32)
            writer.write_arrays(path, "wide", split, X, y, [f"c{i:03d}" for i in range(k)])
    finally:
        mp.undo()
    return path


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    """Many classes, few features, 128-row chunks (8 kB)."""
    return _store(tmp_path_factory.mktemp("wide") / "wide.h5", ROWS, K, D, CHUNK)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """12 classes (top-5 is recorded), 32-row chunks: a 64KB budget scores 32-row blocks, the temperature streamed."""
    return _store(tmp_path_factory.mktemp("small") / "small.h5", SMALL, 12, 8, 32)


def _evaluation_peak(monkeypatch) -> list[int]:
    """Peak traced bytes of each fit's evaluation step (``fit._record``) above what was held when it began."""
    import skops.io  # noqa: F401 (saving the model imports scikit-learn whole: 18 MB of modules, not the evaluation's)

    from featstore.runs.record import versions

    versions()
    peaks = []
    real = fit_mod._record

    def traced(*args, **kwargs):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            return real(*args, **kwargs)
        finally:
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            tracemalloc.stop()

    monkeypatch.setattr(fit_mod, "_record", traced)
    return peaks


def _largest_proba_blocks(monkeypatch) -> list[tuple]:
    """Shapes of every block of probabilities the model is asked for (the chunk reader's output, instrumented)."""
    shapes, real = [], artifacts.full_proba
    monkeypatch.setattr(artifacts, "full_proba", lambda est, X, k: shapes.append((len(X), k)) or real(est, X, k))
    return shapes


@pytest.mark.slow
@pytest.mark.parametrize("clf, params, budget", [("sgd", {"epochs": [1]}, "64KB"), ("logreg", None, "1MB")])
def test_evaluation_never_holds_rows_by_classes(wide_store, tmp_path, monkeypatch, clf, params, budget):
    """Streamed (sgd over the budget) or in memory (logreg: its features fit the budget, its 12 MB of probabilities per
    split do not), the evaluation asks the model for one-chunk blocks, and its traced peak (writing run.json
    included) stays under one split's (rows x classes) float64 array: none is ever held. Before, it held validation's
    and test's whole, and calibrated copies (35 MB traced)."""
    monkeypatch.setattr(figures, "_CELLS_PER_CHUNK", 40_000)  # the bootstrap's own work arrays kept small, same draws
    peaks, shapes = _evaluation_peak(monkeypatch), _largest_proba_blocks(monkeypatch)
    rec = fit(wide_store, clf, params, memory_budget=budget, runs=tmp_path)
    assert rec["streamed"] == (clf == "sgd") and set(rec["metrics"]) == set(ROWS)
    whole = ROWS["test"] * K * 8
    assert max(rows for rows, _ in shapes) <= CHUNK, shapes
    assert peaks[0] < whole, f"the evaluation peaked at {peaks[0]} bytes; one split's probabilities are {whole}"


def test_streamed_figures_and_temperature_equal_the_in_memory_ones(small_store, tmp_path):
    """Every recorded figure of validation and test, and the temperature, equal exactly what the in-memory code gives
    on the stored probabilities; train's equal the saved run applied to the whole split; the stored rows are the
    model's own probabilities of the whole split, in store order."""
    rec = fit(small_store, "logreg", None, memory_budget="64KB", runs=tmp_path)
    _, folder = get_run(rec["id"], small_store, tmp_path)
    stored = load_predictions(folder, rec)
    names = list(rec.class_names)
    val_p, val_y = stored["validation__proba"], stored["validation__labels"]
    cal = calibrate_on_validation(val_p, val_y)
    assert cal["method"] == "temperature" and {k: rec["calibration"][k] for k in cal} == cal
    fs = FeatureStore(small_store)
    for split in ("validation", "test"):
        proba, y = stored[f"{split}__proba"], stored[f"{split}__labels"]
        np.testing.assert_array_equal(y, fs.labels(split))
        whole = run_metrics(y, proba.argmax(axis=1), names, proba, cal)
        assert json.loads(json.dumps(whole)) == rec["metrics"][split], split
        _, _, _, _, again = evaluate_run_parts(rec["id"], split, small_store, tmp_path)
        np.testing.assert_allclose(again, proba, rtol=1e-12, atol=1e-15)
    assert evaluate_run(rec["id"], "train", small_store, tmp_path) == rec["metrics"]["train"]


def evaluate_run_parts(run_id, split, store, runs):
    from featstore.experiments.evaluate import apply_run

    return apply_run(run_id, split, store, runs, raw=True)


def test_temperature_from_blocks_is_the_whole_arrays(tmp_path):
    """fit_temperature_blocks, streamed (one pass per step) or with the logits kept, gives fit_temperature's record
    exactly, exact zeros (the floor) included."""
    rng = np.random.default_rng(5)
    proba = rng.dirichlet(np.ones(7) * 0.4, size=301)
    proba[::9, 2] = 0.0
    proba /= proba.sum(axis=1, keepdims=True)
    y = rng.integers(0, 7, 301)
    whole = fit_temperature(proba, y)
    cuts = [0, 1, 64, 65, 200, 301]

    def blocks():
        return (proba[a:b] for a, b in zip(cuts, cuts[1:]))

    assert fit_temperature_blocks(blocks, y, 7) == whole
    assert fit_temperature_blocks(blocks, y, 7, max_bytes=10**9) == whole
    with pytest.raises(ValueError, match="gave 300 rows for 301 labels"):
        fit_temperature_blocks(lambda: (proba[a:b] for a, b in [(0, 100), (100, 300)]), y, 7)


def test_predictions_file_is_what_np_savez_writes(tmp_path):
    """Written block by block, predictions.npz has np.savez's members, dtypes and values; a wrong row count is refused."""
    rng = np.random.default_rng(1)
    proba, y = rng.dirichlet(np.ones(5), size=23), rng.integers(0, 5, 23)
    w = PredictionsWriter(tmp_path / "p.npz")
    with w.probabilities("test", 23, 5) as member:
        for a in range(0, 23, 4):
            member.write(proba[a : a + 4])
    w.labels("test", y, "sha")
    np.testing.assert_array_equal(np.concatenate(list(w.blocks("test", 6))), proba)
    with pytest.raises(StoreError, match="gave 2 rows of probabilities; its record says 3"):
        with w.probabilities("validation", 3, 5) as member:
            member.write(proba[:2])
    w.close()
    np.savez(tmp_path / "old.npz", test__proba=proba, test__labels=y)
    with zipfile.ZipFile(tmp_path / "p.npz") as new, zipfile.ZipFile(tmp_path / "old.npz") as old:
        assert {"test__proba.npy", "test__labels.npy"} <= set(new.namelist())
        assert new.read("test__proba.npy") == old.read("test__proba.npy")
        assert new.read("test__labels.npy") == old.read("test__labels.npy")
        assert all(i.compress_type == zipfile.ZIP_STORED for i in new.infolist())


def test_a_run_written_by_np_savez_takes_a_new_split(small_store, tmp_path):
    """A run whose predictions.npz np.savez wrote whole (every run before this change) is read and extended: its
    stored split is copied into the new file, unchanged, beside the new split's."""
    rec = fit(small_store, "logreg", None, test="none", runs=tmp_path)
    _, folder = get_run(rec["id"], small_store, tmp_path)
    old = load_predictions(folder, rec)
    np.savez(folder / PREDICTIONS, **old)  # the old writer: every array whole, members in its own order
    obj = json.loads((folder / RECORD).read_text())
    obj["predictions_sha256"] = sha256_of(folder / PREDICTIONS)
    (folder / RECORD).write_text(json.dumps(obj))
    new = record_split(rec["id"], "test", small_store, tmp_path)
    now = load_predictions(get_run(rec["id"], small_store, tmp_path)[1], new)
    np.testing.assert_array_equal(now["validation__proba"], old["validation__proba"])
    np.testing.assert_array_equal(now["validation__labels"], old["validation__labels"])
    assert now["test__proba"].shape == (SMALL["test"], 12) and new["metrics"]["test"]["n"] == SMALL["test"]


def test_a_long_evaluation_is_not_taken_for_an_orphan(small_store, tmp_path, monkeypatch):
    """Train is scored without a write to the draft folder; a fit elsewhere cleaning orphans (folders untouched for
    ORPHAN_AGE_S) meanwhile must not remove it: each scored block renews its predictions' mtime."""
    import os
    import time

    from featstore.experiments import scoring
    from featstore.runs import predictions_file, write

    monkeypatch.setattr(predictions_file, "KEEPALIVE_S", -1)  # renewed at every block
    real, calls = scoring.run_metrics_blocks, []

    def aged_then_cleaned(blocks, *a):
        calls.append(1)
        if len(calls) < 3:  # validation, test; then train, scored from the model's blocks
            return real(blocks, *a)
        (draft,) = [d for d in tmp_path.iterdir() if d.name.endswith(".tmp")]
        old = time.time() - 2 * write.ORPHAN_AGE_S
        for p in [draft, *draft.iterdir()]:
            os.utime(p, (old, old))  # as if the evaluation had run for twenty minutes without a write

        def then_clean():
            for i, block in enumerate(blocks):
                if i == 1:
                    write.clean_orphans(tmp_path)  # another fit's start, one block into train
                yield block

        return real(then_clean(), *a)

    monkeypatch.setattr(scoring, "run_metrics_blocks", aged_then_cleaned)
    rec = fit(small_store, "logreg", None, memory_budget="64KB", runs=tmp_path)
    assert len(calls) == 3 and (tmp_path / rec["id"] / "run.json").is_file()


def test_the_bootstraps_work_size_never_changes_an_interval(monkeypatch):
    """The bootstraps resample in chunks of _CELLS_PER_CHUNK cells (now 10⁶, 25 MB of work arrays, was 4 x 10⁶):
    the draws are those of one call whatever the chunk, so every recorded interval stays the same."""
    rng = np.random.default_rng(2)
    proba, y = rng.dirichlet(np.ones(9) * 0.5, size=997), rng.integers(0, 9, 997)
    cm = np.bincount(y * 9 + proba.argmax(axis=1), minlength=81).reshape(9, 9)
    got = []
    for cells in (4_000_000, 1_000_000, 3_001):
        monkeypatch.setattr(figures, "_CELLS_PER_CHUNK", cells)
        got.append((figures.probability_figures(y, proba), figures.confusion_figures(cm)))
    assert got[0] == got[1] == got[2]
