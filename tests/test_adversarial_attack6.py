"""A sixth, independent attack (outputs safe, inputs bounded; several splits in one extract, crafted stores and run
folders): one test per problem found, each failing before its fix. Stores are synthetic (``writer.write_arrays``),
so no test imports TensorFlow unless it says so.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featstore import fit
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


# ------------------------------------------------------------------ rows with NaN or inf, which extract stores
@pytest.mark.parametrize("split", ["train", "test"])
def test_rows_with_nan_or_inf_are_named_before_any_fit(tmp_path, split):
    """extract stores rows whose features overflow ("they are stored, but fit and leaks will refuse them"); leaks
    names them, but: `probe` ended in scikit-learn's ValueError traceback, `fit` and `sweep` blamed the classifier's
    settings ("logreg with {...} cannot be fitted"; with such a row in test, after the whole fit, which was lost), and
    `runs evaluate` called a sound run's model "altered or damaged after the fit". Now each names the split, the rows
    and the fix before any work."""
    store = synthetic_store(tmp_path / "s.h5")
    runs = tmp_path / "runs"
    sound = fit(synthetic_store(tmp_path / "sound.h5"), "logreg", runs=runs)["id"]
    with h5py.File(store, "a") as f:
        f[f"s/{split}/features"][3, 2] = np.inf
    expect = f"{store}:/s/{split} holds 1 row(s) with NaN or inf features (e.g. {split}/3)"
    commands = [
        ("fit", "--store", store, "--runs", tmp_path / "new"),
        ("fit", "--store", store, "--runs", tmp_path / "new", "--memory-budget", "1KB", "--clf", "sgd"),
        ("probe", "--store", store, "--runs", tmp_path / "new"),
        ("fewshot", "--store", store, "--runs", tmp_path / "new", "--shots", "1", "--trials", "1"),
    ]
    if split == "test":
        commands.append(("runs", "--store", store, "--runs", runs, "evaluate", sound, "--split", "test"))
    for command in commands:
        result = cli(*command)
        out = no_traceback(result)
        assert result.exit_code == 1 and expect in out and "write_arrays(" in out, (
            command,
            out,
        )  # written from arrays (72 #8)
        assert "altered" not in out and "cannot be fitted" not in out, out
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


# ------------------------------------------------------------------ several --split: a later split that cannot be extracted
@pytest.mark.parametrize(
    "layout, splits, expect",
    [
        ({"train": {"a": ["1.png"], "b": ["2.png"]}}, ("train", "valdation"), "split folder"),
        (
            {"train": {"a": ["1.png"], "b": ["2.png"]}, "test": {"a": ["3.png"]}},
            ("train", "test"),
            "classes of split 'test' differ from split 'train'",
        ),
    ],
)
def test_several_splits_are_listed_before_the_first_is_extracted(tmp_path, monkeypatch, layout, splits, expect):
    """`extract --split train --split valdation` (a typo), or a last split lacking a class folder, extracted the whole
    of train (hours on a real dataset) and only then refused the next split; the names were checked first, the
    folders were not. Now every split is listed, and their classes compared, before any split is written."""
    from featstore.extraction import pipeline
    from tests.test_adversarial_attack3 import tiny_pngs

    def no_extract(*args, **kwargs):
        raise AssertionError("a split was extracted")

    monkeypatch.setattr(pipeline, "extract", no_extract)
    data = tiny_pngs(tmp_path / "data", layout)
    store = tmp_path / "f.h5"
    args = [a for s in splits for a in ("--split", s)]
    result = cli("extract", "--data", data, *args, "--weights", "none", "--image-size", "32", "--store", store)
    out = no_traceback(result)
    assert result.exit_code == 1 and expect in out, out
    assert not store.exists()


# ------------------------------------------------------------------ planted files beside the store, nested JSON
NESTED = "[" * 100_000 + "]" * 100_000  # 200 KB, far under every size bound; json.loads raises RecursionError


def test_nested_json_in_a_planted_cache_index_or_manifest_is_one_line(tmp_path):
    """run.json and the leaks record catch a nested `[[[[...` (RecursionError), but three other readers did not:
    a planted `<report>/.featstore-report.json` and a planted map cache (`<store>.cache/maps/*.npz` whose meta is such a
    string) ended `report` in a RecursionError traceback, and a planted `<store>.index/.../index.json` ended `similar`
    in one. Now the manifest and the map are ignored as damaged (as a too-large one is), and the index is named with
    the command that rebuilds it."""
    store = synthetic_store(tmp_path / "s.h5")
    runs = tmp_path / "runs"
    fit(store, "logreg", runs=runs)
    report = ("report", "--store", store, "--runs", runs)
    assert cli(*report).exit_code == 0
    (tmp_path / "s.report" / ".featstore-report.json").write_text(NESTED)
    maps = sorted((tmp_path / "s.h5.cache" / "maps").glob("*.npz"))
    assert maps
    for m in maps:
        np.savez(m, meta=np.array(NESTED))
    result = cli(*report)
    assert result.exit_code == 0 and "index.html" in no_traceback(result), result.output
    assert cli("similar", "test/0", "--store", store, "--build-index").exit_code == 0
    (index,) = (tmp_path / "s.h5.index").rglob("index.json")
    index.write_text(NESTED)
    result = cli("similar", "test/0", "--store", store)
    out = no_traceback(result)
    assert result.exit_code == 1 and "cannot be used" in out and "--build-index" in out, out


# ------------------------------------------------------------------ report --out ., with a planted manifest
def test_report_never_deletes_the_store_or_runs_a_planted_manifest_lists(tmp_path, monkeypatch):
    """`report` removes the files its earlier report listed in `<out>/.featstore-report.json` and did not write again.
    A planted manifest in a project folder listing `features.h5` and a run's files made `featstore report --out .`
    (the folder holding the store) delete the store and the run's record: every feature extracted, lost. Now no HDF5
    file, nothing of the store, its runs or its cache is removed, whatever a manifest lists."""
    import json

    monkeypatch.chdir(tmp_path)
    store = synthetic_store(tmp_path / "features.h5")
    run = fit(store, "logreg")["id"]
    other = synthetic_store(tmp_path / "other.h5")
    listed = ["features.h5", "other.h5", f"features.runs/{run}/run.json", f"features.runs/{run}/model.skops"]
    (tmp_path / "notes.txt").write_text("mine")  # the lead's follow-up: only names the report's layout can hold go
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old-run.html").write_text("<p>a page an earlier report wrote</p>")
    listed += ["notes.txt", "runs/old-run.html"]
    (tmp_path / ".featstore-report.json").write_text(json.dumps({"files": listed}))
    result = cli("report", "--out", ".")
    no_traceback(result)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "runs" / "old-run.html").exists(), "a page of the report's own layout is still cleaned"
    assert store.is_file() and other.is_file()
    assert (tmp_path / "features.runs" / run / "run.json").is_file()
    assert "error" not in no_traceback(cli("runs", "show", run)).lower()


def test_a_nested_json_node_in_a_saved_model_is_a_model_state_error():
    """The sixth attack's last lead: a JSON leaf of a model's schema (a tree's sizes) parsed without catching
    RecursionError, so a planted `[[[[...` node would surface as a traceback instead of "the model is damaged"."""
    from featstore.runs.modelcheck import ModelStateError, _value

    with pytest.raises(ModelStateError, match="cannot be read"):
        _value(None, {"__loader__": "JsonNode", "__class__": "int", "content": "[" * 100_000 + "]" * 100_000})
