import numpy as np
import pytest

from featstore import ConfigError, FeatureStore, fit
from featstore.experiments.streaming import parse_bytes
from featstore.runs.artifacts import load_estimator
from featstore.store import writer

from .conftest import make_store


@pytest.fixture(scope="module")
def chunky_store(tmp_path_factory):
    """A store with 4-row chunks (1 KiB rows), so tiny budgets force streaming: 45 train rows = 45 KiB."""
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "CHUNK_BYTES", 4096)
    try:
        return make_store(tmp_path_factory.mktemp("stream"), (15, 6, 6))
    finally:
        mp.undo()


def test_iter_batches_reads_whole_chunks_in_shuffled_order(chunky_store):
    fs = FeatureStore(chunky_store)
    X, y = fs.load("train")
    blocks = list(fs.iter_batches("train", max_bytes=8 * 1024))
    assert [len(b[1]) for b in blocks][:-1] == [8] * (len(blocks) - 1)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), X)
    shuffled = list(fs.iter_batches("train", max_bytes=8 * 1024, shuffle=True, seed=1))
    Xs = np.concatenate([b[0] for b in shuffled])
    assert not np.array_equal(Xs, X)
    assert sorted(map(bytes, Xs)) == sorted(map(bytes, X))  # same rows, another order
    with pytest.raises(ConfigError, match="cannot hold one chunk"):
        next(fs.iter_batches("train", max_bytes=100))


def test_sgd_streams_within_budget_and_matches_in_memory_quality(chunky_store, tmp_path):
    rec = fit(chunky_store, "sgd", {"epochs": [20]}, memory_budget="32KB", runs=tmp_path)
    assert rec["streamed"] and rec["memory_budget"] == 32000
    assert rec["metrics"]["train"]["n"] == 45 and rec["metrics"]["test"]["n"] == 18
    assert rec["metrics"]["train"]["accuracy"] > 0.8
    big = fit(chunky_store, "sgd", memory_budget="1GB", runs=tmp_path)
    assert big["streamed"] is False  # fits in the budget: loaded as usual


def test_dense_streams(chunky_store, tmp_path):
    rec = fit(chunky_store, "dense", {"epochs": [3], "lr": [1e-3]}, memory_budget="32KB", runs=tmp_path)
    assert rec["streamed"] and len(rec["history"]["loss"]) >= 1 and "val_loss" in rec["history"]


def test_in_memory_classifiers_refuse_over_budget(chunky_store, tmp_path):
    with pytest.raises(
        ConfigError,
        match="over --memory-budget 32 kB \\(31.2 KiB\\), and svm needs all of it in memory. Use a streaming classifier \\(sgd, dense\\)",
    ):
        fit(chunky_store, "svm", memory_budget="32KB", runs=tmp_path)
    with pytest.raises(ConfigError, match="--memory-budget 1KB is too small: .* give at least 16.4 kB \\(16 KiB\\)"):
        fit(chunky_store, "sgd", memory_budget="1KB", runs=tmp_path)
    with pytest.raises(ConfigError, match="not a size"):
        fit(chunky_store, "sgd", memory_budget="lots", runs=tmp_path)


def test_parse_bytes():
    assert parse_bytes("512MB") == 512 * 10**6 and parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("100") == 100


def test_figures_from_blocks_equal_the_whole_splits():
    """A streamed fit scores its train split block by block, keeping O(N) numbers per row (issue 21: 10⁶ rows of
    1,000 classes held 8 GB of probabilities, several times over); every figure must be the one the whole split gives,
    calibrated or not, top-5 (8 classes) and the bootstrap intervals included."""
    from featstore.experiments.evaluate import run_metrics, run_metrics_blocks

    rng = np.random.default_rng(3)
    k, n = 8, 97
    proba = rng.dirichlet(np.ones(k) * 0.3, size=n)
    y = rng.integers(0, k, n)
    pred = proba.argmax(axis=1)
    names = [f"c{i}" for i in range(k)]
    for cal in ({"method": "none"}, {"method": "temperature", "T": 1.7, "input": "probabilities", "floor": 1e-4}):
        whole = run_metrics(y, pred, names, proba, cal)
        cuts = [0, 10, 11, 60, n]
        blocks = [(y[a:b], pred[a:b], proba[a:b]) for a, b in zip(cuts, cuts[1:])]
        yb, pb, from_blocks = run_metrics_blocks(iter(blocks), names, cal)
        np.testing.assert_array_equal(yb, y)
        np.testing.assert_array_equal(pb, pred)
        assert from_blocks == whole
        assert "top5_ci" in whole and ("before_calibration" in whole) == (cal["method"] != "none")


def test_streamed_fit_never_holds_the_train_splits_probabilities(chunky_store, tmp_path, monkeypatch):
    """Every split is scored from blocks (never through stream_predict, which concatenates a split's (N, K)
    probabilities); train's recorded figures are the ones the saved run gives when applied to train afterwards."""
    from featstore import evaluate_run
    from featstore.experiments import streaming

    whole_splits = []
    real = streaming.stream_predict
    monkeypatch.setattr(
        streaming,
        "stream_predict",
        lambda est, fs, name, split, *a: whole_splits.append(split) or real(est, fs, name, split, *a),
    )
    rec = fit(chunky_store, "sgd", {"epochs": [5]}, memory_budget="32KB", runs=tmp_path)
    assert rec["streamed"] and whole_splits == []
    again = evaluate_run(rec["id"], "train", chunky_store, tmp_path)
    for key in ("n", "accuracy", "accuracy_ci", "log_loss", "log_loss_ci", "ece", "ece_ci", "macro_f1_ci"):
        assert rec["metrics"]["train"][key] == again[key], key


@pytest.mark.parametrize("budget", ["32KB", None], ids=["streamed", "in-memory"])
def test_jobs_fit_sgd_classes_on_threads_and_give_the_same_model(chunky_store, tmp_path, monkeypatch, budget):
    """`--jobs 2` runs sgd's one-vs-rest classes on two threads inside one fit; scikit-learn seeds each class first,
    so the probabilities are the ones one thread gives, and the saved model keeps its own n_jobs."""
    from sklearn.linear_model import SGDClassifier

    seen = []
    for method in ("partial_fit", "fit"):
        real = getattr(SGDClassifier, method)

        def spy(self, *a, _real=real, **kw):
            seen.append(self.n_jobs)
            return _real(self, *a, **kw)

        monkeypatch.setattr(SGDClassifier, method, spy)
    probas = []
    for jobs in (1, 2):
        rec = fit(chunky_store, "sgd", {"epochs": [3]}, memory_budget=budget, runs=tmp_path / str(jobs), jobs=jobs)
        assert rec["streamed"] is (budget is not None)
        with np.load(tmp_path / str(jobs) / rec["id"] / "predictions.npz") as z:
            probas.append(z["test__proba"])
        model = load_estimator(tmp_path / str(jobs) / rec["id"], rec["artifact"])
        assert model.steps[-1][1].n_jobs is None  # the saved model is the one a 1-job fit saves
    assert set(seen) == {None, 2}
    np.testing.assert_array_equal(probas[0], probas[1])


def test_sgd_blocks_leave_a_quarter_of_the_budget_for_their_float64_copy(chunky_store, tmp_path, monkeypatch):
    """partial_fit converts each block to float64 (a float16 store's block 4 times larger, float32's twice): blocks
    are sized so that copy fits a quarter of the budget (a 10⁶-row float16 fit under 512 MB peaked at +1,044 MB)."""
    from sklearn.linear_model import SGDClassifier

    seen, real = [], SGDClassifier.partial_fit

    def spy(self, X, *a, **kw):
        seen.append(np.asarray(X, dtype=np.float64).nbytes)
        return real(self, X, *a, **kw)

    monkeypatch.setattr(SGDClassifier, "partial_fit", spy)
    rec = fit(chunky_store, "sgd", {"epochs": [1]}, memory_budget="40KB", runs=tmp_path)
    assert rec["streamed"] and seen and max(seen) <= 40_000 // 4, seen
