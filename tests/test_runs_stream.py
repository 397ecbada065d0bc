"""Commands that use runs' stored predictions read them a block at a time (issue 21): ``runs compare``, ``ensemble``,
a sweep's ensemble selection and the report's run pages keep O(N) numbers a row, never a split's (N, K)
probabilities, and give exactly the figures the whole arrays gave. Each test fails any read of a stored
``__proba`` member larger than the block (``featstore.runs.folder.BLOCK_BYTES``, made small here)."""

import zipfile

import numpy as np
import pytest

from featstore import get_run
from featstore.experiments import sweep as sweep_mod
from featstore.experiments.classifiers import build_classifier
from featstore.experiments.compare import compare_pair
from featstore.experiments.ensemble import ensemble, greedy_ensemble
from featstore.experiments.evaluate import metrics
from featstore.report.site.runpages import RunView
from featstore.runs import folder as run_folder
from featstore.runs import predictions_file
from featstore.runs.folder import load_predictions
from featstore.runs.kinds import calibrated
from featstore.runs.write import write_run
from featstore.stats import figures
from featstore.stats.calibration import fit_temperature
from featstore.stats.figures import completed, confusion_of
from featstore.stats.paired import compare_predictions
from featstore.store.writer import synthetic_attrs

N, K, ROWS = 1500, 7, 64  # 7 classes: top-5 accuracy is recorded too
NAMES = [f"c{i}" for i in range(K)]


def _proba(seed: int, y: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(K), size=len(y))
    p[np.arange(len(y)), y] += rng.uniform(0, 1.5, len(y))  # right more often than not, not always
    return p / p.sum(axis=1, keepdims=True)


def _runs(root, n_runs: int = 3, calibrate: tuple = (0,)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs r0, r1, ... on the same N validation and test rows; those in ``calibrate`` record a temperature. Returns
    the labels and each run's raw probabilities (the same on both splits)."""
    y = np.arange(N) % K
    est = build_classifier("logreg").fit(np.arange(2.0 * K).reshape(K, 2), np.arange(K))
    probas = [_proba(i, y) for i in range(n_runs)]
    for i, p in enumerate(probas):
        record = {
            "kind": "fit",
            "id": f"r{i}",
            "clf": "logreg",
            "created_at": f"2026-01-01T00:00:0{i}",
            "store": "s",
            "extractor": "e",
            "fingerprint": synthetic_attrs((2,))["fingerprint"],
            "class_names": NAMES,
            "metrics": {},
            "params": {},
            "extractor_attrs": synthetic_attrs((2,)),
        }
        if i in calibrate:
            record["calibration"] = {**fit_temperature(p, y), "fitted_on": "validation"}
        write_run(root, record, est, {s: (p, y, "paths", "listing") for s in ("validation", "test")})
    return y, probas


def _calibrated(run_id: str, root, proba: np.ndarray) -> np.ndarray:
    return calibrated(get_run(run_id, runs=root)[0], proba)


@pytest.fixture
def bounded_reads(monkeypatch):
    """Every read of a stored ``__proba`` member is at most one block of ``ROWS`` rows (or the test fails); returns
    the sizes read. Labels (one integer a row) may be read whole."""
    monkeypatch.setattr(figures, "_CELLS_PER_CHUNK", 100_000)
    monkeypatch.setattr(run_folder, "BLOCK_BYTES", ROWS * K * 8)
    real, sizes = zipfile.ZipExtFile.read, []

    def bounded(self, n=-1):
        if "__proba" in self.name:
            sizes.append(n)
            assert n is not None and 0 <= n <= ROWS * K * 8, f"read {n} bytes of {self.name} at once"
        return real(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", bounded)
    return sizes


def test_compare_reads_blocks_and_gives_the_whole_arrays_figures(tmp_path, bounded_reads):
    y, (pa, pb, _) = _runs(tmp_path)
    ca, cb = _calibrated("r0", tmp_path, pa), _calibrated("r1", tmp_path, pb)
    pair = compare_pair("r0", "r1", runs=tmp_path)
    assert bounded_reads and max(bounded_reads) <= ROWS * K * 8
    for split in ("validation", "test"):
        c = pair.splits[split]
        want = compare_predictions(y, ca.argmax(axis=1), cb.argmax(axis=1), "r0", "r1")
        assert c.comparison.to_dict() == want.to_dict()
        for got, cal in zip(c.figures, (ca, cb)):  # the recorded metrics are empty: every figure computed now
            bare = {"n": N, "accuracy": float(np.mean(cal.argmax(axis=1) == y))}
            assert got == completed({**bare, "confusion_matrix": confusion_of(y, cal.argmax(axis=1), K)}, y, cal)
            assert "log_loss" in got and "top5" in got


def test_ensemble_averages_block_by_block_and_writes_blocks(tmp_path, bounded_reads, monkeypatch):
    y, (pa, pb, _) = _runs(tmp_path)
    avg = (1.0 * _calibrated("r0", tmp_path, pa) + 2.0 * _calibrated("r1", tmp_path, pb)) / 3.0
    written = []
    real_write = predictions_file._ProbaMember.write
    monkeypatch.setattr(
        predictions_file._ProbaMember, "write", lambda self, b: written.append(len(b)) or real_write(self, b)
    )
    rec = ensemble(["r0", "r1"], weights=[1, 2], runs=tmp_path)
    assert bounded_reads and max(bounded_reads) <= ROWS * K * 8
    assert written and max(written) <= ROWS and sum(written) == 2 * N  # validation and test, block by block
    for split in ("validation", "test"):
        assert rec.to_json()["metrics"][split] == _json(metrics(y, avg.argmax(axis=1), NAMES, avg))
    monkeypatch.setattr(zipfile.ZipExtFile, "read", _real_read)  # the whole member, to compare
    stored = load_predictions(get_run(rec.id, runs=tmp_path)[1], rec)
    assert np.array_equal(stored["test__proba"], avg) and np.array_equal(stored["test__labels"], y)


_real_read = zipfile.ZipExtFile.read


def _json(m: dict) -> dict:
    """Metrics as run.json holds them (tuples as lists, numpy numbers as Python's)."""
    import json

    from featstore.runs.files import json_default

    return json.loads(json.dumps(m, default=json_default))


def test_a_sweeps_selection_reads_blocks_and_chooses_as_the_whole_arrays(tmp_path, bounded_reads):
    y, raw = _runs(tmp_path, n_runs=3, calibrate=(0, 2))
    cal = [_calibrated(f"r{i}", tmp_path, p) for i, p in enumerate(raw)]
    counts = greedy_ensemble(cal, y)
    recs = [get_run(f"r{i}", runs=tmp_path)[0] for i in range(3)]
    chosen, note, acc = sweep_mod._select(recs, "s.h5", tmp_path, "validation")
    assert bounded_reads and max(bounded_reads) <= ROWS * K * 8
    assert sum(1 for k in counts if k) > 1, "the case should keep an ensemble"
    assert chosen == [(f"r{i}", k) for i, k in enumerate(counts) if k] and note == ""
    avg = sum(k * p for p, k in zip(cal, counts) if k) / sum(counts)
    assert acc == float(np.mean(avg.argmax(axis=1) == y))


def test_greedy_from_true_class_columns_is_the_whole_arrays_choice():
    rng = np.random.default_rng(1)
    y = rng.integers(0, K, 300)
    probas = [rng.dirichlet(np.ones(K) * a, size=300) for a in (0.3, 1.0, 3.0, 0.5)]
    from featstore.stats.metrics import log_loss

    counts = [0] * 4
    first = int(np.argmax([-log_loss(y, p) for p in probas]))
    counts[first], total, best = 1, probas[first].copy(), -log_loss(y, probas[first])
    for _ in range(25):
        scores = [-log_loss(y, (total + p) / (sum(counts) + 1)) for p in probas]
        j = int(np.argmax(scores))
        if scores[j] <= best:
            break
        counts[j], total, best = counts[j] + 1, total + probas[j], scores[j]
    assert greedy_ensemble(probas, y) == counts  # the selection as it was written on whole arrays


def test_report_run_pages_read_blocks(tmp_path, bounded_reads):
    y, (pa,) = _runs(tmp_path, n_runs=1)
    rec, folder = get_run("r0", runs=tmp_path)
    view = RunView(rec, "p", "", [], [], preds=load_predictions(folder, rec))
    rows = view.rows("test")
    assert bounded_reads and max(bounded_reads) <= ROWS * K * 8
    assert np.array_equal(rows.y, y) and np.array_equal(rows.pred, pa.argmax(axis=1))
    assert np.array_equal(rows.conf, pa.max(axis=1)) and np.array_equal(rows.p_true, pa[np.arange(N), y])
    assert view.rows("train") is None and view.rows("test") is rows  # read once
