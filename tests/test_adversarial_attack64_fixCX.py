"""Attack 64 (a newcomer walking the docs), findings 1, 2, 4(b), 6, 7, 8, 9 and the leaks half of 10."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featstore.cli import app
from featstore.errors import ConfigError, OutputError, StoreError
from featstore.experiments.similar import locate
from featstore.images.listing import discover
from featstore.runs import folder as runs_folder
from featstore.store.changed import changed_rows
from featstore.store.check import check_store
from featstore.store.locking import StoreFile
from featstore.store.reader import FeatureStore
from featstore.store.writer import SplitWriter, synthetic_attrs

from .report_stores import CLASSES, write_split

NAME = "synthetic"


def _picture(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)).save(path)


def _listed_store(tmp_path: Path, per_class: dict[str, int] | None = None, finish: bool = True) -> Path:
    """A store of real little PNGs under data/, each split written with its listing recorded (as extract records it)."""
    root, store = tmp_path / "data", tmp_path / "features.h5"
    per_class = per_class or {"train": 3, "test": 2}
    seed = 0
    for split, n in per_class.items():
        for c in CLASSES:
            for i in range(n):
                seed += 1
                _picture(root / split / c / f"{i}.png", seed)
    rng = np.random.default_rng(1)
    for split in per_class:
        listing = discover(root, split)
        paths, y = [p for p, _ in listing.items], np.array([c for _, c in listing.items], np.int32)
        X = rng.normal(0, 1, (len(y), 6)).astype(np.float32) + y[:, None]
        attrs = {
            "class_names": list(listing.class_names),
            "source_root": str(root),
            "n_images": len(y),
            "n_ignored": 0,
            "listing_sha256": listing.digest(),
            "batch_size": 64,
            "compression": "none",
        }
        w = SplitWriter(StoreFile(store), [NAME], split)
        w.prepare([synthetic_attrs(X.shape[1:], "float32", NAME)], attrs, overwrite=True, listing=listing)
        done = len(y) if finish or split != "train" else len(y) // 2
        w.commit([X[:done]], y[:done], paths[:done], [], done)
        if finish or split != "train":
            w.finish(0.0)
    return store


def _replace(path: Path, seed: int) -> None:
    """Another picture under the same name, with a later modification time."""
    before = path.stat().st_mtime_ns
    _picture(path, seed)
    os.utime(path, ns=(before + 10**9, before + 10**9))


# 1. similar PATH: a file at PATH is that file


def test_a_file_here_is_the_users_not_the_stored_row_of_that_name(tmp_path, monkeypatch, caplog):
    store = _listed_store(tmp_path)
    fs = FeatureStore(store)
    stored = fs.paths("test", NAME).index("test/cat/0.png")
    away = tmp_path / "away"
    away.mkdir()
    monkeypatch.chdir(away)
    assert locate(fs, NAME, "test/cat/0.png") == ("test", stored)  # no file here: the stored path
    _picture(away / "test/cat/0.png", 999)  # the user's own, other picture at that relative path
    with caplog.at_level(logging.WARNING):
        assert locate(fs, NAME, "test/cat/0.png") is None  # extracted as a new image, not the stored row
    assert str(tmp_path / "data/test/cat/0.png") in caplog.text  # named, with how to query the stored row
    assert locate(fs, NAME, tmp_path / "data/test/cat/0.png") == ("test", stored)  # the stored file itself
    _replace(tmp_path / "data/test/cat/0.png", 1000)  # changed since extraction: no longer the row's image
    assert locate(fs, NAME, tmp_path / "data/test/cat/0.png") is None
    assert changed_rows(fs, NAME, "test").tolist() == [i == stored for i in range(len(fs.paths("test", NAME)))]


# 2. --store . / / ./ Path(""): one line, never a traceback


@pytest.mark.parametrize("store", [".", "/", "./", Path(""), ".."])
def test_a_store_with_no_file_name_is_refused_in_one_line(store):
    with pytest.raises(StoreError, match=r"is not a regular file \(a folder"):
        runs_folder.runs_root(store, None)
    with pytest.raises(StoreError, match="is not a regular file"):
        runs_folder.list_runs(store)


@pytest.mark.parametrize("args", [["runs"], ["runs", "show", "x"], ["fit", "--clf", "logreg"], ["ensemble", "a", "b"]])
def test_the_cli_says_store_dot_is_not_a_regular_file(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, [*args, "--store", "."])
    assert r.exit_code == 1, r.output
    assert "store . is not a regular file" in r.output and "Traceback" not in r.output


# 6. an ambiguous run-id prefix lists the matches only, from folder names


def test_an_ambiguous_prefix_lists_only_the_matching_runs_bounded(tmp_path, monkeypatch):
    root = tmp_path / "f.runs"
    names = ["logreg-aaaaaa", "svm-111111", "svm-222222"] + [f"knn-{i:06d}" for i in range(14)]
    for n in names:
        (root / n).mkdir(parents=True)
        (root / n / "run.json").write_text("{}")
    monkeypatch.setattr(runs_folder, "scan_runs", lambda *a, **k: pytest.fail("every run.json read"))
    with pytest.raises(ConfigError) as exc:
        runs_folder.find_run("svm", root, verify=False)
    said = str(exc.value)
    assert "svm-111111, svm-222222" in said and "logreg" not in said and "knn" not in said
    with pytest.raises(ConfigError) as exc:
        runs_folder.find_run("knn", root, verify=False)
    said = str(exc.value)
    assert "knn-000009" in said and "knn-000010" not in said and "4 more" in said and "(14 in all)" in said


# 7. --runs DATA/train named as given


def test_runs_in_an_image_folder_names_the_folder_given(tmp_path):
    store = _listed_store(tmp_path)
    given = tmp_path / "data" / "train"
    with pytest.raises(OutputError) as exc:
        runs_folder.ensure_writable(given, store)
    assert f"--runs {given} is the image folder of split 'train'" in str(exc.value) and f"{given}/run" not in str(
        exc.value
    )


# 8. check lists a split a killed extract left incomplete


def test_check_lists_an_incomplete_split_and_exits_1(tmp_path):
    store = _listed_store(tmp_path, finish=False)
    problems = check_store(store)
    assert any("split train is not complete (4 of 9 images)" in p and "`featstore extract`" in p for p in problems)
    r = CliRunner().invoke(app, ["check", str(store)])
    assert r.exit_code == 1 and "not complete" in r.output
    import h5py

    from featstore.store.metadata import CACHE_PURPOSE

    with h5py.File(store, "a") as f:  # a half-made fine-tuning cache: fit passes it over, finetune resumes it
        f[NAME].attrs["purpose"] = CACHE_PURPOSE
    assert not any("not complete" in p for p in check_store(store))


# 9. models NAME --image-size N


def test_models_image_size_is_used_or_refused():
    runner = CliRunner()
    r = runner.invoke(app, ["models", "vgg16", "--image-size", "64"])
    assert r.exit_code == 0 and "64x64" in r.output and "(2, 2, 512)" in r.output, r.output
    r = runner.invoke(app, ["models", "vgg16", "--image-size", "16"])
    assert r.exit_code == 1 and "too small for vgg16" in r.output
    r = runner.invoke(app, ["models", "--image-size", "16"])
    assert r.exit_code == 1 and "give the model" in r.output


def test_models_file_layers_at_another_image_size_is_refused(tmp_path):
    """`models FILE.keras --layers --image-size 48` listed the 32 px model's shapes, 48 ignored (the last closing note's
    Left): a saved model takes its own input size only, so another N is refused as extract refuses it."""
    import keras

    path = tmp_path / "m.keras"
    inp = keras.Input((32, 32, 3))
    keras.Model(inp, keras.layers.Conv2D(4, 3, name="c")(inp)).save(path)
    runner = CliRunner()
    r = runner.invoke(app, ["models", str(path), "--layers", "--image-size", "48"])
    assert r.exit_code == 1 and "takes 32x32 images; --image-size 48 does not fit it" in r.output, r.output
    r = runner.invoke(app, ["models", str(path), "--layers", "--image-size", "32"])
    assert r.exit_code == 0 and "(30, 30, 4)" in r.output, r.output


# 4(b). runs evaluate of an ensemble: the ensemble refused first


def test_evaluating_an_ensemble_on_another_store_says_it_is_an_ensemble(tmp_path):
    from featstore.experiments.evaluate import evaluate_and_record

    from .report_stores import make_report_store

    store = make_report_store(tmp_path / "a")
    ens = next(r.id for r in runs_folder.list_runs(store) if r.get("kind") == "ensemble")
    other = tmp_path / "other.h5"
    rng = np.random.default_rng(0)
    y = np.arange(6) % 3
    write_split(other, "extra", rng.normal(0, 1, (6, 16)).astype(np.float32), y, [f"x/{i}.png" for i in range(6)],
                tmp_path, name="other")  # fmt: skip
    with pytest.raises(ConfigError, match="is an ensemble; evaluate its members"):
        evaluate_and_record(ens, "extra", store=other, runs=runs_folder.runs_dir(store))


# 10. leaks: a file changed since extraction is no "same bytes" copy


def test_leaks_does_not_call_a_changed_file_a_copy(tmp_path):
    from featstore.experiments.leaks import find_leaks
    from featstore.experiments.leaks.draw import leaks_png
    from featstore.experiments.leaks.within import copies_lines

    store = _listed_store(tmp_path)
    data = tmp_path / "data"
    target = data / "test/cat/0.png"
    before = target.stat().st_mtime_ns
    shutil.copyfile(data / "train/fox/0.png", target)  # the name reused: now a copy of a train image's bytes
    os.utime(target, ns=(before + 10**9, before + 10**9))
    r = find_leaks(store, threshold=1.0, record=False)  # nothing flagged: every test row is drawn as a near miss
    assert r.same_bytes.get("test", 0) == 0 and not any(p.same_bytes for p in r.pairs)
    assert r.changed == {"test": 1}
    assert any("changed since extraction" in f for f in r.unhashed["test"])
    assert any("--split test --overwrite" in line for line in copies_lines(r))
    _, missing = leaks_png(r, tmp_path / "leaks.png")  # a placeholder, not the picture there now
    assert "test:test/cat/0.png (changed since extraction)" in missing
