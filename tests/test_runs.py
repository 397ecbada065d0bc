import hashlib
import importlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from featstore import (
    ConfigError,
    DataError,
    ExtractorConfig,
    FeatureStore,
    StoreError,
    WeightsError,
    ensemble,
    evaluate_run,
    extract,
    fit,
    get_run,
    list_runs,
    predict,
)
from featstore.experiments import fit as runs_mod
from featstore.experiments.classifiers import build_classifier
from featstore.experiments.predict import rebuild_extractor
from featstore.runs.folder import load_predictions
from featstore.runs.write import write_run
from featstore.store.writer import synthetic_attrs

from .conftest import write_images


def test_fit_records_a_complete_run(store, tmp_path):
    runs = tmp_path / "runs"
    rec = fit(store, "logreg", {"C": [0.01, 1.0]}, runs=runs)
    assert rec["kind"] == "fit" and rec["clf"] == "logreg" and rec["params"]["C"] in (0.01, 1.0)
    assert rec["fingerprint"] == FeatureStore(store).metadata()["fingerprint"]
    assert (
        rec["selection"]["method"] == "accuracy on the 'validation' split" and len(rec["selection"]["candidates"]) == 2
    )
    for split in ("train", "validation", "test"):
        m = rec["metrics"][split]
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(m)
        assert np.sum(m["confusion_matrix"]) == m["n"]
    assert set(rec["metrics"]["test"]["per_class"]) == {"cat", "dog", "fox"}
    assert rec["fit_seconds"] > 0 and rec["versions"]["scikit-learn"]
    folder = runs / rec["id"]
    assert json.loads((folder / "run.json").read_text())["id"] == rec["id"]
    assert (folder / rec["artifact"]["file"]).is_file()
    assert [r["id"] for r in list_runs(store, runs)] == [rec["id"]]
    assert get_run(rec["id"][:9], store, runs)[0]["id"] == rec["id"]
    with pytest.raises(ConfigError, match=f"no run with id 'nope' .*runs there: {rec['id']}"):
        get_run("nope", store, runs)


def test_test_split_never_used_for_selection(store, tmp_path, monkeypatch):
    loads, scored = [], []
    real_load, real_score = FeatureStore.load, runs_mod._score_one

    def spy_load(self, split="train", extractor=None, **kw):
        loads.append((split, len(scored)))
        return real_load(self, split, extractor, **kw)

    def spy_score(name, params, X, y, val, *rest):
        scored.append(params)
        return real_score(name, params, X, y, val, *rest)

    real_blocks = runs_mod.stream_blocks  # the test split's features, read in blocks for the chosen model's evaluation

    def spy_blocks(est, fs, name, split, *rest):
        loads.append((split, len(scored)))
        return real_blocks(est, fs, name, split, *rest)

    monkeypatch.setattr(FeatureStore, "load", spy_load)
    monkeypatch.setattr(runs_mod, "stream_blocks", spy_blocks)
    monkeypatch.setattr(runs_mod, "_score_one", spy_score)
    rec = fit(store, "knn", {"n_neighbors": [1, 3, 5]}, runs=tmp_path)
    assert len(scored) == 3
    test_loads = [after for split, after in loads if split == "test"]
    assert test_loads == [3]  # read once, after every candidate was scored
    best = max(rec["selection"]["candidates"], key=lambda c: c["score"])
    assert rec["params"]["n_neighbors"] == best["params"]["n_neighbors"]


def test_cross_validation_when_no_validation_split(store, tmp_path):
    rec = fit(store, "logreg", {"C": [0.1, 1.0]}, validation="none", runs=tmp_path)
    assert "fold stratified cross-validation on 'train'" in rec["selection"]["method"]
    assert "validation" not in rec["metrics"] or rec["metrics"].get("validation") is None


def test_fit_errors(store, tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter 'depth' for logreg"):
        fit(store, "logreg", {"depth": [3]}, runs=tmp_path)
    with pytest.raises(ConfigError, match="choose one of: logreg"):
        fit(store, "boost", runs=tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        fit(tmp_path / "none.h5", "logreg", runs=tmp_path)
    with pytest.raises(StoreError, match="has no 'holdout' split"):
        fit(store, "logreg", train="holdout", runs=tmp_path)


def test_one_class_and_several_extractors(tmp_path, tiny_config):
    data = tmp_path / "data"
    write_images(data, "train", {"only": 4})
    path = tmp_path / "f.h5"
    extract(data, "train", path, tiny_config)
    with pytest.raises(StoreError, match="only one class"):
        fit(path, "logreg", runs=tmp_path / "r")
    extract(data, "train", path, ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=9), name="other")
    with pytest.raises(StoreError, match=r"several extractors \(other, vgg16\); choose one with --extractor"):
        fit(path, "logreg", runs=tmp_path / "r")


def test_run_refused_on_features_with_another_fingerprint(store, tmp_path):
    rec = fit(store, "logreg", runs=tmp_path / "runs")
    assert evaluate_run(rec["id"], "test", store, tmp_path / "runs")["accuracy"] == rec["metrics"]["test"]["accuracy"]
    other = tmp_path / "other.h5"
    data = tmp_path / "d"
    write_images(data, "test", {"cat": 2, "dog": 2, "fox": 2})
    extract(
        data,
        "test",
        other,
        ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=4, pooling="avg", layer="block3_pool"),
    )
    with pytest.raises(
        StoreError,
        match=rf"fingerprint \w{{12}}, run {rec['id']} was made on {rec['fingerprint'][:12]} \(weights_digest: here '\w{{12}}', run {rec['id']} '\w{{12}}'\)",
    ):
        evaluate_run(rec["id"], "test", other, tmp_path / "runs")


def test_tampered_artifact_is_refused(store, tmp_path):
    rec = fit(store, "logreg", runs=tmp_path)
    model = tmp_path / rec["id"] / rec["artifact"]["file"]
    model.write_bytes(model.read_bytes() + b"x")
    with pytest.raises(StoreError, match="was changed after the fit"):
        evaluate_run(rec["id"], "test", store, tmp_path)


def test_ensemble_math_by_hand(tmp_path):
    a = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    b = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    y = np.array([0, 1, 0])
    est = build_classifier("logreg").fit(
        np.arange(8.0).reshape(4, 2), [0, 1, 0, 1]
    )  # any fitted model: members need one

    def member(run_id, clf, model, probas):
        attrs = synthetic_attrs((2,), model=model)  # what rebuilding an extractor reads; it hashes to its fingerprint
        base = {
            "kind": "fit",
            "created_at": "2026-01-01T00:00:00",
            "store": "s",
            "extractor": "e",
            "class_names": ["x", "z"],
            "metrics": {},
            "params": {},
            "extractor_attrs": attrs,
        }
        write_run(tmp_path, {**base, "id": run_id, "clf": clf, "fingerprint": attrs["fingerprint"]}, est, probas)
        return attrs["fingerprint"]

    fa = member("a", "logreg", "f", {"test": (a, y, "paths")})
    fb = member("b", "svm", "g", {"test": (b, y, "paths")})
    rec = ensemble(["a", "b"], weights=[1, 3], runs=tmp_path)
    # (a + 3b) / 4 = [[0.375, 0.625], [0.325, 0.675], [0.8, 0.2]] -> predicts [1, 1, 0]: 2 of 3 right
    expected = np.array([[0.375, 0.625], [0.325, 0.675], [0.8, 0.2]])
    np.testing.assert_allclose(load_predictions(tmp_path / rec["id"], rec)["test__proba"], expected)
    assert rec["metrics"]["test"]["accuracy"] == pytest.approx(2 / 3)
    assert rec["metrics"]["test"]["confusion_matrix"] == [[1, 1], [0, 1]]
    assert rec["members"] == ["a", "b"] and rec["weights"] == [1.0, 3.0]
    assert rec["extractor"] == "e+e" and rec["fingerprint"] == f"{fa}+{fb}"  # one name per distinct fingerprint
    member("c", "knn", "h", {"test": (b, y, "other-images")})
    with pytest.raises(ConfigError, match="different images"):
        ensemble(["a", "c"], runs=tmp_path)
    with pytest.raises(ConfigError, match="one non-negative weight per member"):
        ensemble(["a", "b"], weights=[1], runs=tmp_path)


def test_ensemble_of_real_runs_and_predict_with_it(store, tmp_path):
    r1 = fit(store, "logreg", runs=tmp_path)
    r2 = fit(store, "knn", runs=tmp_path)
    ens = ensemble([r1["id"], r2["id"]], runs=tmp_path)
    assert set(ens["metrics"]) == {"validation", "test"}
    data_root = FeatureStore(store).split_info("test")["source_root"]
    rows = predict(ens["id"], [os.path.join(data_root, "test")], store=store, runs=tmp_path)
    assert len(rows) == 15 and all(r["label"] in ("cat", "dog", "fox") for r in rows)


def test_predict_reproduces_store_features_and_labels(store, tmp_path):
    fs = FeatureStore(store)
    rec = fit(store, "logreg", runs=tmp_path)
    ex = rebuild_extractor(rec["extractor_attrs"])
    from featstore import load_image

    root = fs.split_info("validation")["source_root"]
    paths = fs.paths("validation")
    X, _ = fs.load("validation")
    feats = ex(np.stack([load_image(os.path.join(root, p), 32) for p in paths]))
    np.testing.assert_array_equal(feats, X)  # identical rows
    out = tmp_path / "pred.csv"
    (tmp_path / "bad.jpg").write_text("nope")
    rows = predict(
        rec["id"], [os.path.join(root, "validation"), tmp_path / "bad.jpg"], store=store, runs=tmp_path, out=out
    )
    from featstore.runs.artifacts import load_estimator

    est = load_estimator(tmp_path / rec["id"], rec["artifact"])
    expected = [fs.class_names()[k] for k in est.predict(X)]
    assert [r["label"] for r in rows[:-1]] == expected
    assert rows[-1]["error"] and out.read_text().splitlines()[0] == "path,label,probability,error"


def test_predict_refuses_other_weights_and_bad_inputs(tmp_path, vgg16_weights_file, data_root):
    path = tmp_path / "f.h5"
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights=str(vgg16_weights_file))
    for split in ("train", "validation"):
        extract(data_root, split, path, cfg)
    rec = fit(path, "logreg", runs=tmp_path / "runs")
    import keras

    other = tmp_path / "other.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    with pytest.raises(WeightsError, match="are not the ones the run was fitted on"):
        predict(rec["id"], [data_root / "test"], store=path, runs=tmp_path / "runs", weights=str(other))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images in"):
        predict(rec["id"], [tmp_path / "empty"], store=path, runs=tmp_path / "runs")


@pytest.mark.slow
def test_fit_while_another_process_extracts(store, tmp_path):
    """A fit reads train/validation/test while a subprocess appends a new split into the same store."""
    import shutil

    path = tmp_path / "f.h5"
    shutil.copy(store, path)
    data = tmp_path / "data"
    write_images(data, "extra", {"cat": 30, "dog": 30, "fox": 30}, seed=5)
    code = (
        "import sys; from featstore import extract, ExtractorConfig; "
        "extract(sys.argv[1], 'extra', sys.argv[2], ExtractorConfig(model='vgg16', image_size=32, weights='none', seed=3, "
        "pooling='avg', layer='block3_pool'), batch_size=2)"
    )
    log = tmp_path / "writer.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, str(data), str(path)], stderr=err)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"extraction ended before the fit could overlap it: {log.read_text()}")
            try:
                if FeatureStore(path).split_info("extra")["committed_rows"] > 0:
                    break
            except StoreError:
                pass
            time.sleep(0.2)
        before = FeatureStore(path).split_info("extra")["committed_rows"]
        assert before < 90 and proc.poll() is None  # the fit starts while the writer is alive and mid-split
        rec = fit(path, "logreg", runs=tmp_path / "runs")
    finally:
        assert proc.wait(timeout=300) == 0, log.read_text()
    assert rec["metrics"]["test"]["n"] == 15
    assert FeatureStore(path).load("extra")[0].shape[0] == 90


def test_review_guards(store, tmp_path):
    with pytest.raises(ConfigError, match="three different splits"):
        fit(store, "logreg", validation="test", runs=tmp_path)
    with pytest.raises(ConfigError, match="must be one of scale, auto or a number"):
        from featstore.experiments.classifiers import get_classifier, parse_params

        parse_params(get_classifier("svm"), ["gamma=big"])
    with pytest.raises(ConfigError, match=r"knn with .*'n_neighbors': 100.* cannot"):
        fit(store, "knn", {"n_neighbors": [100]}, runs=tmp_path)
    r1, r2 = fit(store, "logreg", runs=tmp_path), fit(store, "knn", runs=tmp_path)
    ens = ensemble([r1["id"], r2["id"]], runs=tmp_path)
    with pytest.raises(ConfigError, match="are ensembles"):
        ensemble([ens["id"], r1["id"]], runs=tmp_path)
    dense = fit(store, "dense", {"epochs": [2]}, runs=tmp_path)
    assert any("optimistic" in n for n in dense["notes"])


def test_fit_refuses_a_runs_folder_it_cannot_create_before_fitting(store, tmp_path, monkeypatch):
    monkeypatch.setattr(
        runs_mod, "_fit_in_memory", lambda *a, **k: pytest.fail("fitted before checking the runs folder")
    )
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(
        StoreError,
        match=r"--runs .*a_file/runs: .*a_file is a file, not a folder; give a path inside a folder",
    ):
        fit(store, "logreg", runs=tmp_path / "a_file" / "runs")


def test_fit_refuses_a_read_only_runs_folder_before_fitting(store, tmp_path, monkeypatch):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    monkeypatch.setattr(
        runs_mod, "_fit_in_memory", lambda *a, **k: pytest.fail("fitted before checking the runs folder")
    )
    try:
        for runs in (mnt, mnt / "runs"):  # an existing read-only folder, and one that cannot be created
            with pytest.raises(StoreError, match=r"cannot write runs into .*\(Read-only file system\)"):
                fit(store, "logreg", runs=runs)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ensemble_refuses_non_finite_weights(store, tmp_path, bad):
    r1, r2 = fit(store, "logreg", runs=tmp_path), fit(store, "knn", runs=tmp_path)
    with pytest.raises(ConfigError, match="finite"):
        ensemble([r1["id"], r2["id"]], weights=[bad, 1.0], runs=tmp_path)
    assert len(list_runs(store, tmp_path)) == 2  # nothing recorded


def test_predict_takes_trust_model_from_the_caller_never_from_the_run(tmp_path):
    """A run whose features came from a legacy .h5 model (extracted with --trust-model) records trust_model=true; predict ignores that."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, name="conv")(keras.layers.Rescaling(1 / 255.0)(inp)))
    model_file = tmp_path / "m.h5"
    keras.Model(inp, keras.layers.Dense(2, name="out")(keras.layers.Dense(4, name="hidden")(x))).save(model_file)
    data = tmp_path / "data"
    for split, seed in (("train", 1), ("validation", 2)):
        write_images(data, split, {"a": 4, "b": 4}, seed=seed, size=16)
        extract(data, split, tmp_path / "f.h5", ExtractorConfig(model=str(model_file), trust_model=True))
    rec = fit(tmp_path / "f.h5", "logreg", runs=tmp_path / "runs")
    assert rec["extractor_attrs"]["trust_model"] is True  # what a crafted run.json can say about any file
    images = [data / "validation" / "a"]
    with pytest.raises(ConfigError, match=r"legacy \.h5 model.*--trust-model"):
        predict(rec["id"], images, store=tmp_path / "f.h5", runs=tmp_path / "runs")
    assert len(predict(rec["id"], images, store=tmp_path / "f.h5", runs=tmp_path / "runs", trust_model=True)) == 4
    from typer.testing import CliRunner

    from featstore.cli import app

    r = CliRunner().invoke(
        app,
        [
            "predict",
            "--run",
            rec["id"],
            str(images[0]),
            "--store",
            str(tmp_path / "f.h5"),
            "--runs",
            str(tmp_path / "runs"),
        ],
    )
    assert r.exit_code == 1 and "--trust-model" in r.output and "Traceback" not in r.output


def test_non_utf8_file_names_fit_and_hash_as_their_bytes(tmp_path, tiny_config):
    assert (
        runs_mod._digest_paths(["a/x.png", "b/é.png"]) == hashlib.sha256("a/x.png\nb/é.png".encode()).hexdigest()
    )  # as before
    data = tmp_path / "data"
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        paths = write_images(data, split, {"a": 3, "b": 3}, seed=seed)
        os.rename(paths[0], os.fsdecode(os.fsencode(paths[0].parent) + b"/\xff.png"))  # not valid UTF-8
        extract(data, split, tmp_path / "f.h5", tiny_config)
    rec = fit(tmp_path / "f.h5", "logreg", runs=tmp_path / "runs")
    assert rec["metrics"]["test"]["n"] == 6
    assert runs_mod._digest_paths(["a/\udcff.png"]) == hashlib.sha256(b"a/\xff.png").hexdigest()


def test_predict_out_must_be_a_regular_file_and_write_errors_are_clear(store, tmp_path, monkeypatch):
    rec = fit(store, "logreg", runs=tmp_path / "runs")
    images = [os.path.join(FeatureStore(store).split_info("test")["source_root"], "test", "cat")]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    predict_mod = importlib.import_module("featstore.experiments.predict")

    monkeypatch.setattr(predict_mod, "collect_images", lambda *a: pytest.fail("did work before refusing --out"))
    for out in (fifo, "/dev/full"):
        with pytest.raises(ConfigError, match="is not a regular file"):
            predict(rec["id"], images, store=store, runs=tmp_path / "runs", out=out)
    monkeypatch.undo()

    def full(path, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict_mod, "_write_csv", full)
    out = tmp_path / "p.csv"
    with pytest.raises(StoreError, match=r"could not write --out .*p\.csv \(No space left on device\)"):
        predict(rec["id"], images, store=store, runs=tmp_path / "runs", out=out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_folders_and_pngs_get_the_usual_permissions(store, tmp_path):
    from featstore import show_run

    old = os.umask(0o022)
    try:
        rec = fit(store, "logreg", runs=tmp_path)
        _, pngs = show_run(rec["id"], store, tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / rec["id"]).stat().st_mode & 0o777 == 0o755  # not the 0700 of a temporary folder
    assert {p.stat().st_mode & 0o777 for p in pngs} == {0o644}


def test_a_many_class_run_keeps_its_confusion_matrices_as_non_zero_cells(tmp_path):
    """issue 21: a 1,000-class run.json held three dense K x K matrices (24 MB of JSON, read again by every
    `featstore runs`); over DENSE_CLASSES classes only the non-zero cells are kept, and every reader gets the same
    counts back; a crafted cell list is refused like a crafted dense matrix."""
    from typer.testing import CliRunner

    from featstore.cli import app
    from featstore.runs.folder import find_run
    from featstore.runs.kinds import parse_record
    from featstore.stats.figures import DENSE_CLASSES, dense_confusion
    from featstore.store.writer import write_arrays

    k, rng = DENSE_CLASSES + 20, np.random.default_rng(0)
    store, names = tmp_path / "many.h5", [f"c{i}" for i in range(k)]
    for split, per in (("train", 3), ("validation", 1), ("test", 1)):
        y = np.repeat(np.arange(k), per).astype(np.int32)
        X = np.eye(k, 16, dtype=np.float32)[y % 16] * 3 + y[:, None] / k + rng.normal(0, 0.3, (len(y), 16))
        write_arrays(store, "synthetic", split, X.astype(np.float32), y, names)
    rec = fit(store, "knn", {"n_neighbors": [1]}, runs=tmp_path / "runs")
    _, folder = find_run(rec["id"], tmp_path / "runs")
    raw = json.loads((folder / "run.json").read_text())
    cm = raw["metrics"]["test"]["confusion_matrix"]
    assert set(cm) == {"shape", "cells"} and cm["shape"] == [k, k] and len(cm["cells"]) <= k
    assert all(c[2] > 0 for c in cm["cells"])
    dense = rec.metrics["test"].confusion_matrix
    assert dense.shape == (k, k) and dense.sum() == k and np.array_equal(dense, dense_confusion(cm))
    assert np.trace(dense) / k == pytest.approx(rec.metrics["test"].accuracy)
    r = CliRunner().invoke(app, ["runs", "show", rec["id"], "--runs", str(tmp_path / "runs"), "--store", str(store)])
    assert r.exit_code == 0, r.output
    from PIL import Image

    pngs = list(folder.glob("confusion*.png"))
    assert pngs
    for png in pngs:  # a 120-class matrix drawn cell by cell was 7,300 px a side and took 40 s
        with Image.open(png) as im:
            assert max(im.size) <= 1500, im.size
    for bad in ([[0, 0, 1], [0, 0, 1]], [[k, 0, 1]], [[0, 0, -1]], [[0, 0, 1.5]]):
        broken = json.loads(json.dumps(raw))
        broken["metrics"]["test"]["confusion_matrix"] = {"shape": [k, k], "cells": bad}
        with pytest.raises(Exception, match=f"{k}x{k} integer confusion matrix|finite numbers"):
            parse_record(broken, folder)
