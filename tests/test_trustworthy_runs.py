"""Trustworthy figures in runs (issue 18 items 1, 4, 5, 8; issue 19 cases in experiments and runs).

Every figure a run records comes with its 95 % interval and is shown so by every output; `runs compare` runs a
paired test on the same rows; every run's probabilities are calibrated and the calibration is what predict and
ensembles use; cross-validation and calibration keep an image and its copies on one side; the protocol never
changes silently; outputs fail with one line. Interval arithmetic itself is tested in test_stats.py.
"""

from __future__ import annotations

import errno
import json
import os
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, ExtractorConfig, FeatureStore, StoreError, ensemble, extract, fit, get_run, predict
from featstore.cli import app
from featstore.errors import OutputError
from featstore.experiments import selection
from featstore.experiments.compare import compare_pair
from featstore.experiments.evaluate import evaluate_and_record, evaluate_run, show_run
from featstore.report.tables import run_report, runs_table
from featstore.runs.folder import calibrated_predictions, list_runs, load_predictions
from featstore.runs.write import write_run
from featstore.stats import apply_calibration
from featstore.store import writer
from featstore.store.writer import synthetic_attrs

from .conftest import write_images

CFG = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=3, pooling="avg", layer="block3_pool")
INTERVALS = ("accuracy_ci", "balanced_accuracy_ci", "macro_f1_ci", "log_loss_ci", "ece_ci")


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def confusable(tmp_path_factory):
    """Images of 4 classes where a and d carry the same colour signal: some validation rows are wrong, so a fitted
    temperature lies inside its bounds. Returns (store, data root)."""
    root = tmp_path_factory.mktemp("confusable")
    data = root / "data"
    for (split, seed), n in zip((("train", 1), ("validation", 2), ("test", 3)), (8, 5, 5)):
        write_images(data, split, {"a": n, "b": n, "c": n, "d": n}, seed=seed)
    path = root / "features.h5"
    for split in ("train", "validation", "test"):
        extract(data, split, path, CFG)
    return path, data


def _synthetic(path: Path, k: int, noise: float = 2.0, splits=(("train", 60), ("validation", 60), ("test", 60))):
    """A store of ``k`` classes of noisy synthetic features (one extractor 's')."""
    rng = np.random.default_rng(k)
    centers = rng.normal(0, 1, (k, 16)).astype(np.float32)
    names = [f"c{i}" for i in range(k)]
    for split, n in splits:
        y = np.repeat(np.arange(k), n // k).astype(np.int32)
        X = centers[y] + np.random.default_rng(zlib.crc32(split.encode())).normal(0, noise, (len(y), 16))
        writer.write_arrays(path, "s", split, X.astype(np.float32), y, names)
    return path


# ------------------------------------------------------------------ item 1: every figure with its interval
def test_records_carry_every_figure_with_its_interval(tmp_path):
    path = _synthetic(tmp_path / "six.h5", 6)
    rec = fit(path, "logreg", runs=tmp_path / "runs")
    for split in ("train", "validation", "test"):
        m = rec["metrics"][split]
        for key in INTERVALS + ("top5_ci",):
            ci = m[key]
            assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["level"] == 0.95, (split, key, ci)
        assert m["accuracy_ci"]["method"] == "wilson" and m["accuracy_ci"]["estimate"] == m["accuracy"]
        every = m["accuracy"] in (0.0, 1.0)  # every row right or wrong: bounded, not a bootstrap (attack 67 #3)
        assert m["log_loss_ci"]["method"].startswith("bounded:" if every else "percentile bootstrap")
        assert m["macro_f1_ci"]["estimate"] == pytest.approx(m["macro_f1"])
        assert sum(b["count"] for b in m["reliability"]) == m["n"] and len(m["reliability"]) == 15
        assert np.sum(m["confusion_matrix"]) == m["n"] and set(m["per_class"]) == {f"c{i}" for i in range(6)}
        assert 0 <= m["ece"] <= 1 and m["top5"] >= m["accuracy"]
    three = fit(_synthetic(tmp_path / "three.h5", 3), "logreg", runs=tmp_path / "r3")
    assert "top5" not in three["metrics"]["test"] and "log_loss" in three["metrics"]["test"]  # top-5 needs 6 classes
    # the same figures from evaluate (as run.json records them), and in every output
    assert evaluate_run(rec.id, "test", path, tmp_path / "runs") == rec["metrics"]["test"]
    table = runs_table([rec])
    lo, hi = rec.metrics["test"].accuracy_interval()
    assert f"{rec.accuracy('test'):.4f} [{lo:.4f}, {hi:.4f}]" in table and "val_acc [95% CI]" in table
    report = run_report(rec, [])
    assert "log-loss" in report and "ECE" in report and "top-5" in report and "calibration: temperature" in report
    shown = cli("runs", "show", rec.id, "--store", path, "--runs", tmp_path / "runs", "--json")
    assert shown.exit_code == 0, shown.output
    as_json = json.loads(shown.output)
    assert as_json["metrics"]["test"]["accuracy_ci"] == rec["metrics"]["test"]["accuracy_ci"]
    assert any(p.endswith("reliability_test.png") for p in as_json["pngs"])
    listed = json.loads(cli("runs", "--store", path, "--runs", tmp_path / "runs", "--json").output)
    assert listed["runs"][0]["metrics"]["validation"]["log_loss_ci"]["high"] > 0


def test_old_run_json_still_reads_and_shows(tmp_path):
    """A run.json without the new fields (and no calibration): listed with intervals computed from n, shown with
    log-loss and ECE computed from its stored predictions, train's shown as "-"."""
    path = _synthetic(tmp_path / "f.h5", 4)
    runs = tmp_path / "runs"
    rec = fit(path, "knn", runs=runs)
    folder = runs / rec.id
    old = rec.to_json()
    new_keys = {"balanced_accuracy", "before_calibration", "reliability", "ece", "log_loss", "top5"}
    for m in old["metrics"].values():
        for key in list(m):
            if key.endswith("_ci") or key in new_keys:
                del m[key]
    del old["calibration"]
    old["metrics"].pop("train.oof", None)
    for p in old["predictions"].values():
        p.pop("listing_sha256", None)
    (folder / "run.json").write_text(json.dumps(old))
    again = get_run(rec.id, path, runs)[0]
    assert again.calibration["method"] == "none" and again.metrics["test"].figure("log_loss") is None
    assert again.metrics["test"].accuracy_interval() == pytest.approx(rec.metrics["test"].accuracy_interval())
    table = cli("runs", "--store", path, "--runs", runs)
    assert table.exit_code == 0 and f"{rec.accuracy('test'):.4f} [" in table.output
    shown, pngs = show_run(rec.id, path, runs)
    raw = load_predictions(folder, again)
    from featstore.stats import log_loss

    assert shown.metrics["test"].figure("log_loss") == pytest.approx(log_loss(raw["test__labels"], raw["test__proba"]))
    assert any("computed now from the stored predictions" in n for n in shown.notes)
    text = run_report(shown, pngs)
    assert (
        "train (fitted on these rows): accuracy" in text and "log-loss -, ECE -" in text
    )  # train's probabilities are not stored
    assert "calibration: none (recorded before featstore calibrated fit runs)" in text
    assert json.loads((folder / "run.json").read_text()) == old  # showing writes no figure into run.json


# ------------------------------------------------------------------ item 2: a paired test on the same rows
def _pair(tmp_path: Path, wrong_b: int, n: int = 200, **extra_b):
    """Runs 'a' (right on every row but the first 5) and 'b' (wrong on the first ``wrong_b`` rows) on the same rows."""
    y = np.arange(n) % 2
    est = __import__("featstore.experiments.classifiers", fromlist=["x"]).build_classifier("logreg")
    est.fit(np.arange(8.0).reshape(4, 2), [0, 1, 0, 1])
    base = {
        "kind": "fit",
        "created_at": "2026-01-01T00:00:00",
        "store": "s",
        "extractor": "e",
        "fingerprint": synthetic_attrs((2,))["fingerprint"],
        "class_names": ["x", "z"],
        "metrics": {},
        "params": {},
        "extractor_attrs": synthetic_attrs((2,)),  # hashes to the fingerprint, as a fit records it
    }

    def proba(wrong):
        p = np.eye(2)[y] * 0.8 + 0.1
        p[:wrong] = p[:wrong, ::-1]
        return p

    write_run(tmp_path, {**base, "id": "a", "clf": "logreg"}, est, {"test": (proba(5), y, "paths", "listing")})
    b_test = extra_b.pop("test", (proba(wrong_b), y, "paths", "listing"))
    write_run(tmp_path, {**base, "id": "b", "clf": "svm", **extra_b}, est, {"test": b_test})


@pytest.mark.parametrize("wrong_b,verdict", [(40, "larger than chance"), (7, "within noise")])
def test_compare_says_whether_a_difference_is_larger_than_chance(tmp_path, wrong_b, verdict):
    _pair(tmp_path, wrong_b)
    pair = compare_pair("a", "b", runs=tmp_path)
    c = pair.splits["test"].comparison
    assert (c.mcnemar.b, c.mcnemar.c) == (wrong_b - 5, 0) and c.verdict == verdict  # a alone right on wrong_b - 5
    out = cli("runs", "compare", "a", "b", "--runs", tmp_path)
    assert out.exit_code == 0, out.output
    assert f"a beats b by {(wrong_b - 5) / 2:.1f} points" in out.output and verdict in out.output
    assert "accuracy 0.9750 [" in out.output and "log-loss" in out.output and "ECE" in out.output
    js = json.loads(cli("runs", "compare", "a", "b", "--runs", tmp_path, "--json").output)
    got, want = js["splits"]["test"]["comparison"], c.to_dict()
    assert {k: v for k, v in got.items() if k != "sentence"} == {k: v for k, v in want.items() if k != "sentence"}
    # no store here: the sentence also says the runs' rows could not be compared with their training rows (74 #3)
    assert got["sentence"].startswith(want["sentence"]) and js["splits"]["test"]["a"]["accuracy_ci"]["low"] < 0.975


def test_compare_refuses_runs_not_on_the_same_rows_and_names_the_mismatch(tmp_path):
    y = np.arange(200) % 2
    p = np.eye(2)[y] * 0.8 + 0.1
    cases = [
        ({"test": (p, y, "other-paths", "listing")}, "other images, or another order"),
        ({"test": (p, y, "paths", "other-listing")}, "the same file names but other image files"),
        ({"test": (p, 1 - y, "paths", "listing")}, "the same file names with other labels"),
    ]
    for i, (probas, said) in enumerate(cases):
        root = tmp_path / str(i)
        _pair(root, 7, test=probas["test"])
        with pytest.raises(ConfigError, match=f"runs a and b were not evaluated on the same rows.*'test'.*{said}"):
            compare_pair("a", "b", runs=root)
        with pytest.raises(ConfigError, match="different images of 'test'"):
            ensemble(["a", "b"], runs=root)  # the same check keeps ensembles to the same images
        res = cli("runs", "compare", "a", "b", "--runs", root)
        assert res.exit_code == 1 and "Traceback" not in res.output


def test_ensemble_refuses_two_datasets_laid_out_alike(tmp_path):
    """Two stores of two datasets with the same file layout, one --runs folder: the listing digest tells them apart."""
    data_a, data_b = tmp_path / "a", tmp_path / "b"
    for data, seed in ((data_a, 1), (data_b, 7)):
        for split, n in (("train", 4), ("validation", 2)):
            write_images(data, split, {"cat": n, "dog": n}, seed=seed + n)
    runs = tmp_path / "runs"
    recs = []
    for data, store in ((data_a, tmp_path / "a.h5"), (data_b, tmp_path / "b.h5")):
        for split in ("train", "validation"):
            extract(data, split, store, CFG)
        recs.append(fit(store, "logreg", runs=runs))
    assert recs[0]["predictions"]["validation"]["paths_sha256"] == recs[1]["predictions"]["validation"]["paths_sha256"]
    with pytest.raises(ConfigError, match="different images of 'validation'.*other image files"):
        ensemble([r.id for r in recs], runs=runs)


# ------------------------------------------------------------------ item 3: calibrated probabilities everywhere
def test_calibration_is_recorded_and_used_by_predict_and_ensembles(confusable, tmp_path):
    store, data = confusable
    runs = tmp_path / "runs"
    a = fit(store, "logreg", runs=runs)
    b = fit(store, "knn", {"n_neighbors": [5]}, runs=runs)
    for rec in (a, b):
        cal = rec.calibration
        assert cal["method"] == "temperature" and cal["fitted_on"] == "validation" and not cal["at_bound"], cal
        assert any("calibrated on 'validation'" in n and "optimistic" in n for n in rec.notes)
    raw = load_predictions(runs / a.id, a)["test__proba"]
    cal = calibrated_predictions(runs / a.id, a)["test__proba"]
    np.testing.assert_allclose(cal, apply_calibration(dict(a.calibration), raw))
    assert not np.allclose(raw, cal) and (raw.argmax(axis=1) == cal.argmax(axis=1)).all()
    # predict gives the calibrated probability of each image (the stored rows are the same images)
    fs = FeatureStore(store)
    rows = predict(a.id, [data / "test"], store=store, runs=runs)
    by_path = {os.path.relpath(r["path"], data): r["probability"] for r in rows}
    np.testing.assert_allclose([by_path[p] for p in fs.paths("test")], cal.max(axis=1), rtol=1e-5)
    # an ensemble averages its members' calibrated probabilities (and predict does the same)
    ens = ensemble([a.id, b.id], runs=runs, store=store)
    cal_b = calibrated_predictions(runs / b.id, b)["test__proba"]
    np.testing.assert_allclose(load_predictions(runs / ens.id, ens)["test__proba"], (cal + cal_b) / 2)
    assert ens.calibration["method"] == "none" and "calibrated" in ens.calibration["fitted_on"]
    rows = predict(ens.id, [data / "test"], store=store, runs=runs)
    by_path = {os.path.relpath(r["path"], data): r["probability"] for r in rows}
    np.testing.assert_allclose([by_path[p] for p in fs.paths("test")], ((cal + cal_b) / 2).max(axis=1), rtol=1e-5)
    # the recorded test log-loss is the calibrated one; the model's own is kept beside it
    m = a["metrics"]["test"]
    assert m["before_calibration"]["log_loss"] != pytest.approx(m["log_loss"])
    shown = cli("runs", "show", a.id, "--store", store, "--runs", runs)
    assert "calibration: temperature" in shown.output and "reliability_test.png" in shown.output
    assert (runs / a.id / "reliability_validation.png").stat().st_size > 1000


def test_without_validation_the_temperature_is_fitted_out_of_fold(tmp_path):
    path = _synthetic(tmp_path / "f.h5", 3, splits=(("train", 60), ("test", 30)))
    rec = fit(path, "logreg", runs=tmp_path / "runs")
    assert rec.calibration["fitted_on"] == "out-of-fold on train (5 folds, seed 0)"
    assert rec["selection"]["method"] == "the classifier's defaults (nothing to select)"
    assert rec.accuracy("train.oof") is not None and rec["metrics"]["train.oof"]["n"] == 60
    assert rec["predictions"]["train.oof"]["n"] == 60  # what a sweep without validation chooses and ensembles on


def test_a_temperature_that_would_sharpen_without_limit_is_not_applied(store, tmp_path):
    rec = fit(store, "logreg", runs=tmp_path)  # the session store: every validation row is right
    assert rec.calibration["method"] == "none" and "sharpens without limit" in rec.calibration["fitted_on"]


# ------------------------------------------------------------------ item 5: groups respected
@pytest.fixture(scope="module")
def copies_store(tmp_path_factory):
    """train (4 images per class of 3, with 2 augmented copies each) and test; no validation split."""
    root = tmp_path_factory.mktemp("copies")
    data = root / "data"
    write_images(data, "train", {"cat": 4, "dog": 4, "fox": 4}, seed=1)
    write_images(data, "test", {"cat": 2, "dog": 2, "fox": 2}, seed=3)
    path = root / "features.h5"
    extract(data, "train", path, CFG, batch_size=4, augment=2)
    extract(data, "test", path, CFG, batch_size=4)
    return path


def test_cross_validation_and_calibration_keep_copies_together(copies_store, tmp_path, monkeypatch):
    fs = FeatureStore(copies_store)
    source = fs.paths("train") + fs.paths("train", augmented=True)  # each row's image
    seen, svm_groups = [], []
    real_fold = selection._fold_proba

    def spy_fold(spec, params, X, y, fit_rows, held, n_classes, groups):
        seen.append(({source[i] for i in fit_rows}, {source[i] for i in held}))
        return real_fold(spec, params, X, y, fit_rows, held, n_classes, groups)

    from featstore.models.svm import TemperedSVC

    real_svm_fit = TemperedSVC.fit

    def spy_svm(self, X, y, groups=None):
        svm_groups.append(groups)
        return real_svm_fit(self, X, y, groups)

    monkeypatch.setattr(selection, "_fold_proba", spy_fold)
    monkeypatch.setattr(TemperedSVC, "fit", spy_svm)
    rec = fit(copies_store, "svm", {"C": [0.1, 1.0]}, augmented=True, runs=tmp_path / "r", jobs=1)
    assert "copies of one image kept in one fold" in rec["selection"]["method"]
    assert len(seen) == 2 * 4 and all(not (trained & held) for trained, held in seen)  # no image on both sides
    assert all(len(held) == 3 for _, held in seen)  # 4 folds of 12 images: 3 held out per fold, a copy never scored
    assert svm_groups and all(g is not None for g in svm_groups)  # the svm's own calibration folds get the groups too
    cal = rec.calibration
    assert cal["method"] == "none" or "copies of one image kept in one fold" in cal["fitted_on"]


# ------------------------------------------------------------------ item 8: protocol honesty
def test_named_splits_that_do_not_exist_are_errors_and_notes_name_the_missing_split(store, tmp_path):
    with pytest.raises(
        ConfigError, match=r"--validation 'val': .* no such split; splits there: test, train, validation"
    ):
        fit(store, "logreg", validation="val", runs=tmp_path)
    with pytest.raises(ConfigError, match=r"--test 'tst': .* no such split; splits there: test, train, validation"):
        fit(store, "logreg", test="tst", runs=tmp_path)
    res = cli("fit", "--clf", "logreg", "--validation", "val", "--store", store, "--runs", tmp_path)
    assert res.exit_code == 1 and "--validation none" in res.output and "Traceback" not in res.output
    rec = fit(store, "logreg", {"C": [10.0]}, test="none", runs=tmp_path)
    assert rec["selection"]["method"] == "given by hand: C=10.0" and "test" not in rec.metrics
    assert not any("not evaluated" in n for n in rec.notes)  # asked for no test: nothing to say
    path = _synthetic(tmp_path / "f.h5", 3, splits=(("train", 60), ("validation", 30)))
    rec = fit(path, "logreg", runs=tmp_path / "r")
    assert rec.notes[0] == "not evaluated on 'test': the store has no 'test' split"


def test_sweep_records_test_and_drops_the_note_and_says_why_no_ensemble(tmp_path):
    path = _synthetic(tmp_path / "f.h5", 4)
    s = cli("sweep", "--clf", "logreg", "--store", path, "--runs", tmp_path / "runs", "--ensemble")
    assert s.exit_code == 0, s.output
    assert "no ensemble: one run only: nothing to ensemble" in s.output
    summary = json.loads(next((tmp_path / "runs").glob("sweep-*.json")).read_text())
    assert summary["ensemble"] is None and summary["ensemble_note"]
    assert summary["cells"][0]["validation_ci"][0] < summary["cells"][0]["validation"]
    winner = get_run(summary["winner"]["id"], path, tmp_path / "runs")[0]
    assert "test" in winner.metrics and not any("not evaluated on 'test'" in n for n in winner.notes)
    js = cli("sweep", "--clf", "logreg,knn", "--store", path, "--runs", tmp_path / "r2", "--ensemble", "--json")
    assert js.exit_code == 0, js.output
    out = json.loads(js.output)
    assert out["ensemble"] is not None or "greedy selection kept" in out["ensemble_note"]
    if out["ensemble"]:
        versus = out["ensemble"]["vs_best_single"]
        assert versus["validation"]["selected_on"] and versus["test"]["verdict"] in (
            "larger than chance",
            "within noise",
            "borderline",
        )


def test_sweep_on_an_interrupted_train_split_names_it(tmp_path):
    path = _synthetic(tmp_path / "f.h5", 3)
    with h5py.File(path, "a") as f:
        f["s/train"].attrs["complete"] = False
    with pytest.raises(
        StoreError,
        match=r"s: 'train' is not complete .*re-run `featstore extract` with the options that started it \(--split train\) but without --overwrite",
    ) as err:
        from featstore import sweep

        sweep(path, ["logreg"], runs=tmp_path / "runs")
    assert "--split validation" not in str(err.value)


def test_sweep_ensemble_over_extractors_of_other_rows_is_refused_before_any_fit(tmp_path):
    path = tmp_path / "f.h5"
    for name, n in (("a", 60), ("b", 48)):
        for split in ("train", "validation"):
            y = np.repeat(np.arange(3), n // 3).astype(np.int32)
            X = np.random.default_rng([n, int(split == "validation")]).normal(size=(n, 4)).astype(np.float32)  # 71 #7
            writer.write_arrays(path, name, split, X, y, ["x", "y", "z"], attrs=synthetic_attrs((4,), model=name))
    from featstore import sweep

    with pytest.raises(ConfigError, match=r"--ensemble averages runs row by row.*a \(60 rows\) vs b \(48 rows\)"):
        sweep(path, ["logreg"], ensemble=True, runs=tmp_path / "runs")
    assert list_runs(path, tmp_path / "runs") == []  # refused before any fit was recorded
    for png, said in (("map.txt", "--png .*map.txt: the chart is a PNG"), ("nodir/m.png", "nodir does not exist")):
        with pytest.raises(OutputError, match=said):
            sweep(path, ["logreg"], runs=tmp_path / "runs", png=tmp_path / png)
    assert list_runs(path, tmp_path / "runs") == []
    assert len(sweep(path, ["logreg"], runs=tmp_path / "runs")["cells"]) == 2  # without --ensemble: fine


# ------------------------------------------------------------------ issue 19: one line each
def test_classifier_parameters_out_of_range_are_refused_with_the_range(store, tmp_path):
    for param, said in (
        ("C=inf", "C must be a finite number > 0"),
        ("max_iter=0", "max_iter must be an integer in [1, 1000000]"),
        ("C=nan", "C must be a finite number > 0"),
        ("C=-1", "C must be a finite number > 0"),
    ):
        res = cli("fit", "--clf", "logreg", "--param", param, "--store", store, "--runs", tmp_path)
        assert res.exit_code == 1 and said in res.output and "Traceback" not in res.output, res.output
    with pytest.raises(ConfigError, match=r"dropout must be a finite number in \[0, 1\)"):
        fit(store, "dense", {"dropout": [1.0]}, runs=tmp_path)
    with pytest.raises(ConfigError, match=r"gamma is scale or auto, or a number in \(0, inf\)"):
        fit(store, "svm", {"gamma": ["0"]}, runs=tmp_path)
    assert list_runs(store, tmp_path) == []


def test_compare_out_names_missing_folders_and_full_disks_are_one_line(tmp_path, monkeypatch):
    _pair(tmp_path, 7)
    for out, said in (
        ("chart.txt", "the chart is a PNG; give a name ending in .png"),
        ("nodir/c.png", "nodir does not exist; create it or choose another path"),
    ):
        res = cli("runs", "compare", "a", "b", "--runs", tmp_path, "--out", tmp_path / out)
        assert res.exit_code == 1 and said in res.output and "Traceback" not in res.output, res.output
    res = cli("runs", "compare", "a", "b", "--runs", tmp_path, "--out", tmp_path / "chart")
    assert res.exit_code == 0 and (tmp_path / "chart").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from featstore import plots

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "compare_png", full)
    res = cli("runs", "compare", "a", "b", "--runs", tmp_path, "--out", tmp_path / "c.png")
    assert res.exit_code == 1 and "the disk is full" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "c.png").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".c.png")]


def test_fit_on_a_full_disk_says_what_was_fitted_and_that_nothing_was_recorded(store, tmp_path, monkeypatch):
    from featstore.runs import write as write_mod

    def full(est, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(write_mod, "save_estimator", full)
    with pytest.raises(
        OutputError,
        match=r"logreg was fitted in .* \(accuracy: train 1.000, validation .*the disk is full.*Nothing was recorded",
    ):
        fit(store, "logreg", runs=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == []  # no run folder, no temporary folder left
    res = cli("fit", "--clf", "logreg", "--store", store, "--runs", tmp_path)
    assert res.exit_code == 1 and "Nothing was recorded" in res.output and "Traceback" not in res.output


def test_ctrl_c_during_fit_says_nothing_was_recorded(store, tmp_path, monkeypatch):
    from featstore.experiments import fit as fit_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_mod, "fit", interrupted)
    res = cli("fit", "--clf", "logreg", "--store", store, "--runs", tmp_path)
    assert res.exit_code == 130
    assert (
        "interrupted: nothing was recorded (no run folder was written); re-run the same `featstore fit`" in res.output
    )


def test_runs_evaluate_records_the_split_or_says_why_not(tmp_path):
    path = _synthetic(tmp_path / "f.h5", 3)
    runs = tmp_path / "runs"
    rec = fit(path, "logreg", test="none", runs=runs)
    res = cli("runs", "evaluate", rec.id, "--split", "test", "--store", path, "--runs", runs)
    assert res.exit_code == 0 and f"recorded in run {rec.id}" in res.output and "[" in res.output, res.output
    again = get_run(rec.id, path, runs)[0]
    assert "test" in again.metrics and again["predictions"]["test"]["n"] == 60
    res = cli("runs", "evaluate", rec.id, "--split", "test", "--store", path, "--runs", runs)
    assert f"already recorded in run {rec.id} (the same images)" in res.output
    other = _synthetic(tmp_path / "other.h5", 3, splits=(("train", 60), ("validation", 60), ("test", 30)))
    _, _, said = evaluate_and_record(rec.id, "test", other, runs)
    assert said.startswith(f"not recorded: run {rec.id} already holds 'test' evaluated on other images")


def test_predict_from_another_folder_names_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("predict", "--run", "logreg", str(tmp_path))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "the runs folder features.runs does not exist" in res.output and "--runs DIR" in res.output
