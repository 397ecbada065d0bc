import os

import pytest
from typer.testing import CliRunner

from featstore import FeatureStore
from featstore.cli import app
from featstore.store.writer import writer_lock

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny(data_root, store, *extra):
    """extract of the tiny model; an option in ``extra`` replaces the default one (an option of one value given twice
    is refused: attack 65 #2)."""
    base = {"--model": "vgg16", "--weights": "none", "--image-size": 32}
    given = dict.fromkeys(a for a in extra if isinstance(a, str) and a in base)
    args = [w for k, v in base.items() if k not in given for w in (k, v)]
    return run("extract", "--data", data_root, "--store", store, *args, "--no-progress", *extra)


def test_models_and_layers():
    r = run("models")
    assert r.exit_code == 0 and "vgg16" in r.output and "(4, 4, 512)" in r.output and "efficientnet_b0" in r.output
    r = run("models", "vgg16", "--layers", "--image-size", 64)
    assert r.exit_code == 0 and "block4_pool" in r.output and "(4, 4, 512)" in r.output


def test_extract_then_info(data_root, tmp_path):
    store = tmp_path / "features.h5"
    r = tiny(data_root, store, "--split", "train")
    assert r.exit_code == 0, r.output
    assert "wrote 12 rows of (1, 1, 512)" in r.output and "0 failed" in r.output
    r = tiny(data_root, store, "--split", "validation")
    assert r.exit_code == 0, r.output
    r = tiny(data_root, store, "--split", "validation")
    assert r.exit_code == 0 and "already complete (6 rows" in r.output
    r = run("info", store)
    assert r.exit_code == 0
    for text in (
        "/vgg16",
        "/train   complete",
        "/validation   complete",
        "features (12, 1, 1, 512) float32",
        "classes (2): cat 6, dog 6",
        "weights_source: none",
        "fingerprint",
    ):
        assert text in r.output, text
    assert FeatureStore(store).splits() == ["train", "validation"]


def test_several_splits_in_one_command_equal_one_command_each(data_root, tmp_path):
    """--split repeated: the splits in order, one line each, rows bit-identical to one command per split; a bad name
    or --augment with several splits is refused before any split is written."""
    import numpy as np

    one, many = tmp_path / "one.h5", tmp_path / "many.h5"
    for split in ("train", "validation"):
        assert tiny(data_root, one, "--split", split).exit_code == 0
    r = tiny(data_root, many, "--split", "train", "--split", "validation", "--split", "train")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("wrote ")]
    assert len(lines) == 2 and "/vgg16/train" in lines[0] and "/vgg16/validation" in lines[1], r.output
    a, b = FeatureStore(one), FeatureStore(many)
    assert b.splits() == ["train", "validation"]
    for split in ("train", "validation"):
        assert np.array_equal(a.load(split)[0], b.load(split)[0])
    refused = tmp_path / "refused.h5"
    r = tiny(data_root, refused, "--split", "train", "--split", "../test")
    assert r.exit_code != 0 and "split name '../test' is not allowed" in r.output and not refused.exists(), r.output
    r = tiny(data_root, refused, "--split", "train", "--split", "validation", "--augment", "2")
    assert r.exit_code != 0 and "one training split" in r.output and not refused.exists(), r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg17"], "unknown model 'vgg17'; choose one of: vgg16"),
        (["--pooling", "mean"], "unknown pooling 'mean'; choose one of: none, avg, max"),
        (["--dtype", "int8"], "unknown dtype 'int8'; choose one of: float32, float16"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "-3"], "--batch-size must be at least 1"),
        (["--compression", "zstd"], "unknown compression 'zstd'; choose one of: none, lzf, gzip"),
        (["--image-size", "16"], "--image-size 16 is too small for vgg16"),
        (["--image-size", "5000"], "--image-size 5000 is above featstore.s largest input side, 4096 pixels"),
        (["--layer", "block9_pool"], "unknown layer 'block9_pool' for vgg16"),
        (["--split", "holdout"], "split folder .*holdout does not exist; splits found in .*: test, train, validation"),
    ],
)
def test_bad_options_give_clear_errors(data_root, tmp_path, args, message):
    import re

    r = tiny(data_root, tmp_path / "f.h5", *args)
    assert r.exit_code == 1
    assert re.search(message, r.output.replace("\n", " ")), r.output
    assert "Traceback" not in r.output


def test_bad_data_root_and_store_locations(data_root, tmp_path, monkeypatch):
    r = tiny(tmp_path / "missing", tmp_path / "f.h5")
    assert r.exit_code == 1 and "data root" in r.output and "does not exist" in r.output
    r = tiny(data_root, tmp_path / "no" / "dir" / "f.h5")
    assert r.exit_code == 1 and "mkdir -p" in r.output
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    r = tiny(data_root, not_h5)
    assert r.exit_code == 1 and "is not an HDF5 file" in r.output and not_h5.read_text() == "hello"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    r = tiny(data_root, tmp_path / "ro" / "f.h5")
    assert r.exit_code == 1 and "is read-only" in r.output


def test_second_writer_gets_a_clear_error(data_root, tmp_path):
    store = tmp_path / "f.h5"
    with writer_lock(store):
        r = tiny(data_root, store)
    assert r.exit_code == 1 and f"(pid {os.getpid()}) is writing to" in r.output


def test_wrong_weights_file(data_root, tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not weights")
    r = run(
        "extract",
        "--data",
        data_root,
        "--store",
        tmp_path / "f.h5",
        "--weights",
        bad,
        "--image-size",
        32,
        "--no-progress",
    )
    assert r.exit_code == 1 and "is not an HDF5 file" in r.output  # not "does not fit vgg16" (40 #2)
    assert not (tmp_path / "f.h5").exists() or FeatureStore(tmp_path / "f.h5").extractors() == []


def test_fit_runs_show_compare_ensemble_predict(store, tmp_path):
    runs = tmp_path / "runs"
    common = ["--store", store, "--runs", runs]
    r = run("fit", "--clf", "logreg", "--param", "C=0.1", "--param", "C=1", *common)
    assert r.exit_code == 0, r.output
    assert "selection: accuracy on the 'validation' split" in r.output and "test: accuracy" in r.output
    r = run("fit", "--clf", "dense", "--epochs", "3", *common)
    assert r.exit_code == 0, r.output
    r = run("runs", *common)
    assert r.exit_code == 0 and "logreg" in r.output and "dense" in r.output and "val_acc" in r.output
    ids = [line.split()[0] for line in r.output.splitlines()[1:]]
    dense_id = next(i for i in ids if i.startswith("dense"))
    r = run("runs", *common, "show", dense_id)  # options given to `runs` carry to its sub-commands
    assert r.exit_code == 0 and "precision" in r.output
    assert (runs / dense_id / "curves.png").stat().st_size > 1000 and (runs / dense_id / "confusion_test.png").is_file()
    r = run("runs", "compare", *common)
    assert r.exit_code == 0 and (runs / "compare.png").is_file()
    r = run("ensemble", *ids, "--weight", "1", "--weight", "2", *common)
    assert r.exit_code == 0 and "members" in r.output
    root = FeatureStore(store).split_info("test")["source_root"]
    out = tmp_path / "p.csv"
    r = run("predict", "--run", ids[0], f"{root}/test", "--out", out, *common)
    assert r.exit_code == 0 and "wrote 15 predictions" in r.output and len(out.read_text().splitlines()) == 16
    r = run("runs", "evaluate", ids[0], "--split", "validation", *common)
    assert r.exit_code == 0 and "accuracy" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "--clf", "xgb"], "unknown classifier 'xgb'; choose one of: logreg"),
        (["fit", "--param", "C=high"], "must be of type float"),
        (["fit", "--param", "depth=3"], "unknown parameter 'depth' for logreg"),
        (["runs", "show", "nope"], "no run with id 'nope'"),
        (["predict", "--run", "nope", "."], "no run with id 'nope'"),
        (["ensemble", "a"], "at least two run ids"),
        (["predict", "--run", "nope", ".", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["predict", "--run", "nope", ".", "--batch-size", "-2"], "--batch-size must be at least 1, got -2"),
        (
            ["predict", "--run", "nope", ".", "--out", "no/such/folder/p.csv"],
            "folder no/such/folder does not exist; create it first",
        ),
    ],
)
def test_experiment_errors(store, tmp_path, args, message):
    r = run(*args, "--store", store, "--runs", tmp_path)
    assert r.exit_code == 1 and message in r.output, r.output


def test_fit_without_store(tmp_path):
    r = run("fit", "--store", tmp_path / "missing.h5")
    assert r.exit_code == 1 and "does not exist; create it with `featstore extract" in r.output


def test_classifiers_listing():
    r = run("classifiers")
    assert r.exit_code == 0 and "dense:" in r.output and "search grid" in r.output
