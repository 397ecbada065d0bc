"""Seventh attack (issue #19, "outputs safe, inputs bounded"): interrupted extract/finetune, hostile predict inputs,
crafted run folders, and ``export --rows-per-file`` output folders. Each test failed before its fix."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from featstore import ConfigError, export
from tests.test_adversarial_attack3 import no_traceback, synthetic_store, tiny_pngs
from tests.test_adversarial_attack4 import cli


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("a7") / "f.h5")


# ------------------------------------------------------------------ export --rows-per-file onto someone else's data
def test_shards_never_replace_a_folder_that_is_not_an_earlier_export(store, tmp_path):
    """Any ``part-*.parquet`` entry passed for an earlier export's shard: ``--out`` naming a pyarrow dataset
    (``write_dataset`` names its files ``part-0.parquet``) or holding a folder ``part-x.parquet`` was deleted whole
    and replaced by the export, without a word."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.dataset as ds

    mine = tmp_path / "mine"
    ds.write_dataset(pa.table({"x": [1, 2, 3]}), mine, format="parquet")
    nested = tmp_path / "nested"
    (nested / "part-x.parquet").mkdir(parents=True)
    (nested / "part-x.parquet" / "keep.txt").write_text("keep me")
    named = tmp_path / "named"
    named.mkdir()
    (named / "part-00000.parquet").write_bytes(b"not parquet")
    for out, kept in ((mine, "part-0.parquet"), (nested, "part-x.parquet"), (named, "part-00000.parquet")):
        with pytest.raises(ConfigError, match="other files than shards"):
            export(store, "train", out, rows_per_file=10)
        assert os.listdir(out) == [kept]
    assert (nested / "part-x.parquet" / "keep.txt").read_text() == "keep me"
    export(store, "train", tmp_path / "ours", rows_per_file=10)
    export(store, "train", tmp_path / "ours", rows_per_file=20)  # an earlier export's shards are still replaced
    assert sorted(os.listdir(tmp_path / "ours")) == ["part-00000.parquet", "part-00001.parquet"]


def test_files_put_in_the_shard_folder_during_an_export_are_never_deleted(store, tmp_path, monkeypatch):
    """The folder was checked once, before the export: a file saved into it (or a link put there) while the shards
    were written was deleted with the earlier export's shards when the new ones replaced them."""
    pytest.importorskip("pyarrow")
    from featstore.store import export as ex

    out = tmp_path / "shards"
    export(store, "train", out, rows_per_file=10)
    write = ex._write_shards

    def meanwhile(folder, *args):
        write(folder, *args)
        (out / "notes.txt").write_text("keep me")

    monkeypatch.setattr(ex, "_write_shards", meanwhile)
    with pytest.raises(ConfigError, match="other files than shards"):
        export(store, "train", out, rows_per_file=20)
    assert (out / "notes.txt").read_text() == "keep me" and len(os.listdir(out)) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_shard_folder_that_cannot_be_made_is_named_as_given(store, tmp_path):
    """``export --rows-per-file --out afile/sub`` said "cannot write --out afile/sub.shards": a name the user never
    gave (the probe's)."""
    pytest.importorskip("pyarrow")
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile" / "sub", tmp_path / "missing" / "sub"):
        text = no_traceback(cli("export", "--store", store, "--split", "train", "--out", out, "--rows-per-file", "5"))
        assert f"--out {out}:" in text and ".shards" not in text, text


# ------------------------------------------------------------------ a table's --out naming one of the images
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A run fitted on vgg16 (random weights, 32 px) features of tiny PNGs: one predict can apply to images."""
    root = tmp_path_factory.mktemp("a7img")
    names = {c: [f"{c}{i}.png" for i in range(6)] for c in ("a", "b")}
    data = tiny_pngs(root / "data", {"train": names, "validation": names, "test": names})
    store = root / "f.h5"
    no_traceback(
        cli("extract", "--data", data, "--split", "train", "--split", "validation", "--split", "test",
            "--model", "vgg16", "--weights", "none", "--image-size", "32", "--store", store, "--no-progress")
    )  # fmt: skip
    no_traceback(cli("fit", "--store", store))
    (run,) = os.listdir(root / "f.runs")
    return store, run, data


def test_a_table_never_replaces_an_image(image_run, tmp_path):
    """``predict --run R photos/ --out photos/cat.png`` (a slip of the shell's completion) predicted, then replaced
    the image cat.png with the CSV: an input lost, reported as "wrote 2 predictions". ``leaks --out`` and ``export
    --out`` naming one of the dataset's images replaced it with their table too."""
    store, run, data = image_run
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.png", "dog.png"):
        shutil.copy(data / "test" / "a" / "a0.png", photos / name)
    before = (photos / "cat.png").read_bytes()
    out = no_traceback(cli("predict", "--store", store, "--run", run, photos, "--out", photos / "cat.png"))
    assert "error:" in out and "is an image (PNG)" in out, out
    image = data / "test" / "b" / "b1.png"
    kept = image.read_bytes()
    for args in (("leaks", "--store", store), ("export", "--store", store, "--split", "test", "--format", "csv")):
        out = no_traceback(cli(*args, "--out", image))
        assert "error:" in out and "is an image (PNG)" in out, out
    assert (photos / "cat.png").read_bytes() == before and image.read_bytes() == kept
    out = no_traceback(cli("predict", "--store", store, "--run", run, photos, "--out", tmp_path / "p.csv"))
    assert "wrote 2 predictions" in out, out


# ------------------------------------------------------------------ finetune and a changed test folder
def dense_run(store) -> str:
    """The store's dense run (phase A of a fine-tuning), fitted once."""
    runs = store.parent / "f.runs"
    dense = [r for r in os.listdir(runs) if r.startswith("dense-")]
    if not dense:
        no_traceback(cli("fit", "--store", store, "--clf", "dense", "--param", "epochs=1"))
        dense = [r for r in os.listdir(runs) if r.startswith("dense-")]
    return dense[0]


@pytest.fixture(scope="module")
def finetuned(image_run):
    """``(dense run id, record)``: one fine-tuning from block5_conv1 (1 epoch) of image_run's dense run, which also
    cached its frozen layers (vgg16@block4_pool) in the store."""
    from featstore.experiments import finetune as ft

    store, _, _ = image_run
    dense = dense_run(store)
    return dense, ft.finetune(dense, ft.FinetuneConfig(unfreeze_from="block5_conv1", epochs=1), store=store)


def test_finetune_refuses_a_changed_test_folder_before_training(image_run, tmp_path, monkeypatch):
    """The test split's images were checked against the store only after every epoch had trained: one changed test
    image ended a fine-tuning (hours on a GPU) in "the images of data/test changed", nothing recorded."""
    from featstore.errors import DataError
    from featstore.experiments import finetune as ft

    store, _, data = image_run
    dense = dense_run(store)
    copy = tmp_path / "data"
    shutil.copytree(data, copy)  # copy2: sizes and times kept, so train and validation still match the store
    with open(copy / "test" / "a" / "a0.png", "ab") as fh:
        fh.write(b"changed")

    def trained(*args, **kwargs):
        raise AssertionError("trained before the test folder was checked")

    monkeypatch.setattr(ft, "train", trained)
    with pytest.raises(DataError, match="images of .*test changed"):
        ft.finetune(dense, ft.FinetuneConfig(unfreeze_from="block5_conv1"), data=copy, store=store)


def test_a_finetune_run_records_which_image_files_it_saw(image_run, finetuned):
    """A fine-tuning checks its folders against the store's listing, but recorded no listing digest: compare and
    ensemble then refused it beside a run of another store with the same images, saying it was "made by an older
    featstore, or on features imported without images"."""
    import json

    store, _, _ = image_run
    dense, rec = finetuned
    runs = store.parent / "f.runs"
    phase_a = json.loads((runs / dense / "run.json").read_text())["predictions"]
    tuned = json.loads((runs / rec.id / "run.json").read_text())["predictions"]
    for split in ("validation", "test"):
        assert tuned[split].get("listing_sha256") == phase_a[split]["listing_sha256"], (split, tuned[split])


def test_a_cached_cut_with_nan_rows_is_refused_before_training(image_run, finetuned, tmp_path, monkeypatch):
    """A row of NaN in the cached frozen layers (a killed or overflowing extraction, a damaged store) trained every
    epoch, then ended in "fine-tuning diverged ... Lower --lr": the wrong cause and the wrong fix."""
    import h5py

    from featstore.errors import StoreError
    from featstore.experiments import finetune as ft

    src, _, _ = image_run
    dense, _ = finetuned  # its fine-tuning made the cache in src
    store = tmp_path / "f.h5"
    shutil.copy(src, store)
    shutil.copytree(src.parent / "f.runs" / dense, tmp_path / "f.runs" / dense)  # the phase A run it needs
    with h5py.File(store, "a") as f:
        f["vgg16@block4_pool/train/features"][3, 0, 0, 0] = np.nan

    def trained(*args, **kwargs):
        raise AssertionError("trained on NaN features")

    monkeypatch.setattr(ft, "train", trained)
    with pytest.raises(
        StoreError, match=r"(?s)vgg16@block4_pool/train holds 1 row.*--name vgg16@block4_pool.*--no-cache"
    ):
        ft.finetune(dense, ft.FinetuneConfig(unfreeze_from="block5_conv1", epochs=1), store=store)


def test_an_image_named_directly_and_inside_a_named_folder_is_predicted_once(tmp_path):
    """The seventh attack's note: `predict photos/ photos/a.png` listed a.png twice (two rows for one file)."""
    from featstore.experiments.predict import collect_images

    (tmp_path / "photos").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "photos" / name).write_bytes(b"\x89PNG")
    found = collect_images([tmp_path / "photos", tmp_path / "photos" / "a.png", tmp_path / "photos" / ".." / "photos"])
    assert sorted(p.name for p in found) == ["a.png", "b.png"]
