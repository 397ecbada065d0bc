"""Runs have kinds (issue 17): one typed record, a registry of kinds, listings that read run.json only, run folders
written before the package was laid out by stage, streaming through partial_fit, and one Dense head."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import FeatureStore, StoreError, ensemble, evaluate_run, fit, get_run, list_runs, predict
from featstore.cli import app
from featstore.models.weights import sha256_file
from featstore.runs import artifacts, files
from featstore.runs import folder as runfolder
from featstore.runs.kinds import kind_of, list_kinds, parse_record
from featstore.runs.record import RunRecord
from featstore.store import writer

PACKAGE = Path(__file__).resolve().parents[1] / "featstore"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A store of synthetic 3-class 16-d features (no TensorFlow), in 4-row chunks so small budgets stream it."""
    path = tmp_path_factory.mktemp("kinds") / "f.h5"
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 16)).astype(np.float32)
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "CHUNK_BYTES", 256)
    try:
        for split, n in (("train", 90), ("validation", 30), ("test", 30)):
            y = np.arange(n) % 3
            X = centers[y] + rng.normal(0, 1, (n, 16)).astype(np.float32)
            writer.write_arrays(path, "syn", split, X, y, ["a", "b", "c"], attrs=writer.synthetic_attrs((16,)))
    finally:
        mp.undo()
    return path


def test_the_record_is_typed_immutable_and_still_reads_as_its_json(synthetic, tmp_path):
    rec = fit(synthetic, "logreg", runs=tmp_path)
    assert isinstance(rec, RunRecord) and rec.kind == "fit" and rec.class_names == ("a", "b", "c")
    assert rec.metrics["test"].accuracy == rec["metrics"]["test"]["accuracy"] == rec.accuracy("test")
    assert json.loads((tmp_path / rec.id / "run.json").read_text()) == rec.to_json() == dict(rec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        rec.params["C"] = 2.0  # type: ignore[index]
    rec["metrics"]["test"]["accuracy"] = 2.0  # a copy: the record does not change
    assert rec.metrics["test"].accuracy < 1.01 and rec["metrics"]["test"]["accuracy"] < 1.01
    assert get_run(rec.id, synthetic, tmp_path)[0].to_json() == rec.to_json()


def test_every_kind_reads_back_exactly_what_was_written(synthetic, tmp_path):
    a, b = fit(synthetic, "logreg", runs=tmp_path), fit(synthetic, "knn", runs=tmp_path)
    ens = ensemble([a.id, b.id], weights=[1, 2], store=synthetic, runs=tmp_path)
    fine = tmp_path / "finetune-000001"  # the record a fine-tuning writes (made from the logreg run's files)
    fine.mkdir()
    for f in (a["artifact"]["file"], "predictions.npz"):
        (fine / f).write_bytes((tmp_path / a.id / f).read_bytes())
    params = {"lr": 1e-5, "optimizer": "rmsprop", "epochs": 2, "batch_size": 4, "patience": 1, "augment": ""}
    params |= {"seed": 0, "from_scratch_head": False, "cache": True}
    changes = {"id": fine.name, "kind": "finetune", "clf": "finetune", "params": params, "from_run": a.id}
    (fine / "run.json").write_text(json.dumps({**a.to_json(), **changes, "unfreeze_from": "block5_conv1"}, indent=1))
    listed = {r.id: r for r in list_runs(synthetic, tmp_path)}
    assert sorted(r.kind for r in listed.values()) == ["ensemble", "finetune", "fit", "fit"]
    for rec in listed.values():
        assert rec.to_json() == json.loads((tmp_path / rec.id / "run.json").read_text()), rec.id
        assert kind_of(rec).name == rec.kind in list_kinds()
    assert listed[ens.id].members == (a.id, b.id) and listed[ens.id].weights == (1.0, 2.0)
    assert listed[ens.id]["members"] == [a.id, b.id]  # the JSON view keeps JSON's lists
    table = CliRunner().invoke(app, ["runs", "--store", str(synthetic), "--runs", str(tmp_path)])
    assert table.exit_code == 0 and f"from={a.id},unfreeze=block5_conv1,lr=1e-05" in table.output, table.output


def test_an_unknown_kind_lists_the_kinds(tmp_path):
    (tmp_path / "x-1").mkdir()
    with pytest.raises(StoreError, match="kind 'model' is not fit, ensemble or finetune"):
        parse_record({"kind": "model"}, tmp_path / "x-1")
    assert list_kinds() == ["fit", "ensemble", "finetune"]


def test_listing_reads_run_json_only_and_using_a_run_verifies_it(synthetic, tmp_path, monkeypatch):
    """A huge (sparse) model in one run folder costs the listing nothing; the run is refused when used."""
    rec = fit(synthetic, "logreg", runs=tmp_path)
    other = fit(synthetic, "knn", runs=tmp_path)
    model = tmp_path / rec.id / rec["artifact"]["file"]
    os.truncate(model, 2 << 30)  # 2 GiB, sparse: hashing or unzipping it would take seconds
    read = []
    real_read = runfolder.read_record_json
    monkeypatch.setattr(runfolder, "read_record_json", lambda folder: read.append(folder.name) or real_read(folder))
    for module, name in (
        (files, "sha256_of"),
        (files, "check_zip"),
        (artifacts, "check_artifact"),
        (runfolder, "load_predictions"),
    ):
        monkeypatch.setattr(module, name, lambda *a, name=name: pytest.fail(f"the listing called {name}{a}"))
    t0 = time.perf_counter()
    assert {r.id for r in list_runs(synthetic, tmp_path)} == {rec.id, other.id}
    table = CliRunner().invoke(app, ["runs", "--store", str(synthetic), "--runs", str(tmp_path)])
    assert table.exit_code == 0 and rec.id in table.output and "broken" not in table.output, table.output
    assert time.perf_counter() - t0 < 5 and sorted(read) == sorted([rec.id, other.id] * 2)
    monkeypatch.undo()
    os.truncate(model, 100)  # damaged, small: the refusal is quick to reach
    with pytest.raises(StoreError, match=f"run {rec.id} is broken: run artifact .* is 100 bytes, the run recorded"):
        get_run(rec.id, synthetic, tmp_path)
    with pytest.raises(StoreError, match="changed after the fit"):
        evaluate_run(rec.id, "test", synthetic, tmp_path)
    assert evaluate_run(other.id, "test", synthetic, tmp_path)["n"] == 30  # only the run used is read


def test_a_huge_run_json_is_refused_before_it_is_read(synthetic, tmp_path):
    rec = fit(synthetic, "logreg", runs=tmp_path)
    os.truncate(tmp_path / rec.id / "run.json", files.MAX_RECORD_BYTES + 1)  # sparse
    table = CliRunner().invoke(app, ["runs", "--store", str(synthetic), "--runs", str(tmp_path)])
    assert table.exit_code == 0 and "broken run folder" in table.output
    assert re.search(r"run\.json is 67.1 MB .*, more than the 67.1 MB", table.output.replace("\n", " ")), table.output
    with pytest.raises(StoreError, match="more than the"):
        get_run(rec.id, synthetic, tmp_path)


def _rename_module(path: Path, old: str, new: str) -> None:
    """Rewrite a skops file with every ``old`` module name in its schema.json changed to ``new``."""
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename == "schema.json":
                data = data.replace(f'"{old}"'.encode(), f'"{new}"'.encode())
            z.writestr(info, data)


def test_a_run_folder_naming_the_modules_of_before_the_stage_layout_still_loads(store, tmp_path):
    """Run folders written before the package was laid out by stage name featstore.classifiers.FeatureReshape."""
    rec = fit(store, "logreg", runs=tmp_path)
    folder = tmp_path / rec.id
    model = folder / rec["artifact"]["file"]
    _rename_module(model, "featstore.models.reshape", "featstore.classifiers")
    with zipfile.ZipFile(model) as z:
        assert b'"featstore.classifiers"' in z.read("schema.json")
    old = json.loads((folder / "run.json").read_text())
    old["artifact"]["sha256"] = sha256_file(model)  # as the old featstore recorded it (no size)
    del old["artifact"]["size"]
    (folder / "run.json").write_text(json.dumps(old, indent=1))
    assert get_run(rec.id, store, tmp_path)[0].id == rec.id
    assert evaluate_run(rec.id, "test", store, tmp_path) == rec["metrics"]["test"]
    data_root = FeatureStore(store).split_info("test")["source_root"]
    rows = predict(rec.id, [os.path.join(data_root, "test")], store=store, runs=tmp_path)
    assert len(rows) == 15 and all(r["label"] in ("cat", "dog", "fox") for r in rows)
    assert "featstore.classifiers" not in sys.modules  # the alias lives only while the file loads


def _counting_nb():
    """GaussianNB that records the rows of every partial_fit call (a classifier featstore does not know by name)."""
    from sklearn.naive_bayes import GaussianNB

    class CountingNB(GaussianNB):
        calls: list = []

        def partial_fit(self, X, y, classes=None, sample_weight=None):
            CountingNB.calls.append(len(X))
            return super().partial_fit(X, y, classes=classes, sample_weight=sample_weight)

    return CountingNB


def test_streaming_goes_through_partial_fit_whatever_the_classifier(synthetic, tmp_path, monkeypatch):
    """A classifier registered as able to learn from chunks streams by its pipeline's partial_fit, not by its name."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from featstore.experiments import classifiers
    from featstore.models.reshape import FeatureReshape
    from featstore.runs import artifacts

    CountingNB = _counting_nb()
    calls = CountingNB.calls
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))  # removed again after the test
    # featstore cannot load a naive Bayes run again (attack 60 #4), and this test never does: both checks are off
    monkeypatch.setattr(artifacts, "reload_problem", lambda est: "")
    monkeypatch.setattr(artifacts, "_refuse_unloadable", lambda path, est: None)
    classifiers.register_classifier("nb", "naive Bayes", {"epochs": classifiers.Param(int, 2)}, needs_all_data=False)(
        lambda p: Pipeline([("features", FeatureReshape()), ("scale", StandardScaler()), ("clf", CountingNB())])
    )
    rec = fit(synthetic, "nb", memory_budget="4KB", runs=tmp_path)
    assert rec["streamed"] and rec.metrics["test"].accuracy > 0.8
    assert any("nb ran `epochs` partial_fit passes" in n for n in rec.notes) and not any(
        "max_iter" in n for n in rec.notes
    )
    assert sum(calls) == 2 * 90 and max(calls) <= 4 * 4  # two epochs of train, in blocks of budget/4 (16 rows)


def test_the_dense_head_is_built_in_one_place_and_its_weights_move_by_name():
    import keras

    from featstore.models.head import HEAD_LAYERS, DenseHead

    rng = np.random.default_rng(0)
    head = DenseHead(units=4, epochs=1).fit(rng.normal(size=(12, 3)), np.arange(12) % 3)
    assert [lyr.name for lyr in head.model_.layers] == list(HEAD_LAYERS)
    weights = head.layer_weights()
    assert list(weights) == ["head_dense", "head_out"] and weights["head_dense"][0].shape == (3, 4)
    keras.utils.set_random_seed(0)  # a head saved before the layers were named: read by order
    head.model_ = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dropout(0.5), keras.layers.Dense(3)]
    )
    legacy = head.layer_weights()
    np.testing.assert_array_equal(legacy["head_out"][0], head.model_.layers[-1].get_weights()[0])


NAMES = "fit|ensemble|finetune|dense|sgd|logreg|svm|knn|random_forest"  # kinds of run, and classifiers
BRANCH = re.compile(
    rf"""\[["'](kind|clf)["']\]\s*(==|!=)|\bclf\s*(==|!=)|(==|!=)\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)"""
)


def test_no_kind_or_classifier_name_branch_outside_the_registry():
    found = [
        f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).as_posix() not in ("runs/kinds.py", "experiments/classifiers.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if BRANCH.search(line)
    ]
    assert not found, "ask the run's kind (featstore.runs.kinds) or the classifier's spec instead:\n" + "\n".join(found)
