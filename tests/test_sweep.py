"""featstore sweep: every extractor x classifier, choice on validation only, test read once afterwards (issue 10)."""

import json
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import FeatureStore, StoreError, get_run, list_runs, sweep
from featstore.cli import app
from featstore.experiments.sweep import greedy_ensemble
from featstore.store import writer


@pytest.fixture(scope="module")
def two_extractor_store(tmp_path_factory):
    """Synthetic 'good' and 'weak' extractors of the same 4-class images (weak = much noisier features)."""
    path = tmp_path_factory.mktemp("sweep") / "f.h5"
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (4, 32)).astype(np.float32)
    for name, noise in (("good", 1.5), ("weak", 4.0)):
        for split, n in (("train", 120), ("validation", 60), ("test", 60)):
            y = np.repeat(np.arange(4), n // 4).astype(np.int32)
            noise_rng = np.random.default_rng(zlib.crc32(f"{name}/{split}".encode()))
            X = centers[y] + noise_rng.normal(0, noise, (len(y), 32)).astype(np.float32)
            writer.write_arrays(
                path, name, split, X, y, ["a", "b", "c", "d"], attrs=writer.synthetic_attrs((32,), model=name)
            )
    return path


def test_sweep_chooses_on_validation_and_reads_test_only_for_the_choice(two_extractor_store, tmp_path, monkeypatch):
    loads = []
    for method in ("load", "iter_batches"):  # whole, or in blocks (runs evaluate streams the test split)
        real = getattr(FeatureStore, method)
        monkeypatch.setattr(
            FeatureStore,
            method,
            lambda self, split="train", extractor=None, _real=real, _m=method, **k: (
                loads.append((split, extractor, _m)),
                _real(self, split, extractor, **k),
            )[1],
        )
    runs = tmp_path / "runs"
    s = sweep(two_extractor_store, ["logreg", "knn"], runs=runs)
    assert len(s["cells"]) == 4 and len(list_runs(two_extractor_store, runs)) == 4
    best = max(s["cells"], key=lambda c: c["validation"])
    assert s["winner"]["id"] == best["run"] and s["winner"]["extractor"] == "good"
    first_fit = next(
        i for i, (_, _, m) in enumerate(loads) if m == "load"
    )  # before it: the check of every split's rows
    assert {m for *_, m in loads[:first_fit]} == {"iter_batches"}, loads  # (fit's rule, before any fit: attack 68 #4)
    test_loads = [i for i, (split, *_) in enumerate(loads) if split == "test" and i > first_fit]
    assert len(test_loads) == 1 and test_loads[0] == len(loads) - 1, (
        loads
    )  # once, for the winner, after every other read
    assert s["winner"]["test"] is not None and sum(c["test"] is not None for c in s["cells"]) == 1
    rec = get_run(s["winner"]["id"], two_extractor_store, runs)[0]
    assert "test" in rec["metrics"] and "test" in rec["predictions"]  # recorded into the run, checksummed
    assert json.loads((runs / f"{s['id']}.json").read_text())["winner"]["id"] == s["winner"]["id"]
    assert (runs / f"{s['id']}.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def complementary_store(tmp_path_factory):
    """'left' tells a from b (c and d look alike), 'right' tells c from d (a and b look alike): together they tell all four."""
    path = tmp_path_factory.mktemp("ens") / "f.h5"
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, (4, 16)).astype(np.float32) * 3
    centers = {"left": base[[0, 1, 2, 2]], "right": base[[3, 3, 1, 2]]}
    for name in ("left", "right"):
        for split, n in (("train", 80), ("validation", 80), ("test", 80)):
            y = np.repeat(np.arange(4), n // 4).astype(np.int32)
            noise = (
                np.random.default_rng(zlib.crc32(f"{name}/{split}".encode()))
                .normal(0, 0.5, (len(y), 16))
                .astype(np.float32)
            )
            writer.write_arrays(
                path,
                name,
                split,
                centers[name][y] + noise,
                y,
                ["a", "b", "c", "d"],
                attrs=writer.synthetic_attrs((16,), model=name),
            )
    return path


def test_sweep_ensemble_wins_when_extractors_complement_each_other(complementary_store, tmp_path):
    runs = tmp_path / "runs"
    s = sweep(complementary_store, ["logreg"], ensemble=True, runs=runs)
    assert max(c["validation"] for c in s["cells"]) < 0.8  # each extractor alone confuses two classes
    assert s["winner"]["kind"] == "ensemble" and s["winner"]["validation"] > 0.95 and s["winner"]["test"] > 0.95
    e = get_run(s["winner"]["id"], complementary_store, runs)[0]
    assert (
        e["kind"] == "ensemble"
        and sorted(e["members"]) == sorted(c["run"] for c in s["cells"])
        and "test" in e["metrics"]
    )
    assert all(c["test"] is None for c in s["cells"])  # members' test is in their runs, the table shows only the choice


def test_show_test_evaluates_every_run_after_the_choice(two_extractor_store, tmp_path):
    s = sweep(two_extractor_store, ["logreg", "knn"], show_test=True, runs=tmp_path / "runs")
    assert all(c["test"] is not None for c in s["cells"]) and "every run" in s["selection"]


def test_greedy_ensemble_adds_only_what_improves_validation():
    y = np.array([0, 0, 1, 1])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])  # 3/4
    other = np.array([[0.6, 0.4], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])  # 3/4, wrong elsewhere
    assert greedy_ensemble([good, other], y, metric="accuracy") == [1, 1]  # together 4/4
    assert greedy_ensemble([good, good.copy()], y, metric="accuracy") == [1, 0]  # a copy adds nothing
    # the default hill-climbs on log-loss, from the best single (lowest log-loss) run, with replacement
    assert greedy_ensemble([good, good.copy()], y) == [1, 0]  # a copy lowers nothing
    assert greedy_ensemble([good, other], y) == [1, 0]  # other's confident mistakes raise the log-loss: left out
    sure = np.array([[0.99, 0.01], [0.5, 0.5], [0.5, 0.5], [0.01, 0.99]])  # sure where the other is unsure
    unsure = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    assert greedy_ensemble([sure, unsure], y) == [2, 1]  # with replacement: (2 sure + unsure) / 3 is lowest
    assert greedy_ensemble([sure * 0 + [[0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.1, 0.9]], unsure], y) == [1, 1]
    with pytest.raises(ValueError, match="choose one of: log_loss, accuracy"):
        greedy_ensemble([good], y, metric="f1")


def test_sweep_without_validation_cross_validates_on_train(tmp_path):
    """No validation split: every run is scored out of fold on train, the ensemble is selected on those predictions."""
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 20).astype(np.int32)
    for name, noise in (("good", 1.0), ("weak", 3.0)):
        X = rng.normal(0, 1, (3, 8)).astype(np.float32)[y] * 2 + rng.normal(0, noise, (60, 8)).astype(np.float32)
        writer.write_arrays(path, name, "train", X, y, ["a", "b", "c"], attrs=writer.synthetic_attrs((8,), model=name))
    s = sweep(path, ["logreg", "knn"], ensemble=True, runs=tmp_path / "runs")
    assert s["chosen_on"] == "train.oof" and "cross-validation on train" in s["selection"]
    for c in s["cells"]:
        rec = get_run(c["run"], path, tmp_path / "runs")[0]
        assert rec.accuracy("train.oof") == c["validation"] and "validation" not in rec.metrics
        assert (
            "5-fold stratified cross-validation on 'train'" in rec["selection"]["method"]
            or len(rec["selection"]["candidates"]) == 0
        )
        assert rec.calibration["fitted_on"].startswith("out-of-fold on train (5 folds")
        assert "not evaluated on 'test': the store has no 'test' split" in rec.notes
        assert c["test"] is None
    assert s["ensemble"] is not None or s["ensemble_note"]  # built on out-of-fold predictions, or it says why not
    if s["ensemble"]:
        assert "train.oof" in s["ensemble"]["vs_best_single"]
    with pytest.raises(StoreError, match="needs a complete 'train' split; empty: no 'train' split"):
        writer.write_arrays(
            path, "empty", "test", np.zeros((4, 8), np.float32), np.array([0, 1, 2, 0]), ["a", "b", "c"]
        )
        sweep(path, ["logreg"], runs=tmp_path / "runs", extractors=["weak", "empty"])


def test_sweep_cli(two_extractor_store, tmp_path):
    res = CliRunner().invoke(
        app, ["sweep", "--clf", "logreg,knn", "--store", str(two_extractor_store), "--runs", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "chosen on validation" in res.output and "good" in res.output and " *" in res.output
    bad = CliRunner().invoke(
        app, ["sweep", "--clf", "logreg,nope", "--store", str(two_extractor_store), "--runs", str(tmp_path / "r")]
    )
    assert bad.exit_code == 1 and "unknown classifier 'nope'" in bad.output


def test_sweep_passes_classifier_params_and_records_them(two_extractor_store, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            "--clf",
            "logreg,knn",
            "--param",
            "knn:n_neighbors=3",
            "--param",
            "knn:pca=4",
            "--param",
            "logreg:power=0.5",
            "--param",
            "logreg:C=0.1",
            "--param",
            "logreg:C=1",
            "--store",
            str(two_extractor_store),
            "--runs",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 0, res.output
    recs = {(r["extractor"], r["clf"]): r for r in list_runs(two_extractor_store, tmp_path / "r")}
    assert recs[("good", "knn")]["params"]["n_neighbors"] == 3 and recs[("good", "knn")]["params"]["pca"] == 4
    assert recs[("weak", "logreg")]["params"]["power"] == 0.5 and recs[("weak", "logreg")]["params"]["C"] in (0.1, 1.0)
    bad = CliRunner().invoke(
        app, ["sweep", "--clf", "logreg", "--param", "svm:C=1", "--store", str(two_extractor_store)]
    )
    assert bad.exit_code == 1 and "not swept; swept: logreg" in bad.output
    with pytest.raises(Exception, match="unknown parameter 'gamma' for logreg"):
        sweep(two_extractor_store, ["logreg"], params={"logreg": {"gamma": [1.0]}}, runs=tmp_path / "r2")
