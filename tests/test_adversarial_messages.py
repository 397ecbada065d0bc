"""Issue 19's cases about messages and silently wrong data outside ``leaks`` and the runs commands, and issue 18's
empty class folder (item 8) and phase B (item 10): one test per case, each checking the message names the command
that works (and, where there is one, that the command does work).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import threading
import time

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featstore
from featstore import (
    ConfigError,
    DataError,
    ExtractorConfig,
    FeatureStore,
    StoreError,
    WeightsError,
    extract,
    fit,
    get_run,
)
from featstore.cli import app
from featstore.experiments import finetune as finetune_mod
from featstore.experiments.finetune import FinetuneConfig, finetune
from featstore.images.listing import discover
from featstore.store import writer
from featstore.store.metadata import delete_group_command

from .conftest import interrupt_after_one_batch

SIZE = 32
CACHE = "vgg16@block4_pool"  # the cached cut of a fine-tuning from block5_conv1 of a store cut at block5_pool


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ fine-tuning: cache, messages, phase B
@pytest.fixture(scope="module")
def ft_src(finetune_source_32):
    """Two classes, 8/4/4 images each, VGG16@32 with seeded random weights cut at block5_pool, and a dense run."""
    return finetune_source_32  # this module's copy of the session's finetune_source(root, SIZE)


@pytest.fixture
def ft(ft_src, tmp_path):
    """A private copy of ft_src (store, runs and images), safe to change."""
    shutil.copytree(ft_src["root"], tmp_path / "c", symlinks=True)
    return {**ft_src, "root": tmp_path / "c", "data": tmp_path / "c" / "data", "store": tmp_path / "c" / "f.h5"}


@pytest.fixture(scope="module")
def cached_src(ft_src, tmp_path_factory):
    """A copy of ft_src after ``featstore finetune`` from block5_conv1 (3 epochs at --lr 1e-3, --patience 3) cached
    CACHE in its store, trained once for several tests: the CLI's result and the store's sizes around it
    (test_finetune_says_what_its_cache_costs_and_how_to_remove_it checks them), the run it recorded
    (test_phase_b_ends_on_its_best_epoch_only_when_it_beats_phase_a checks it), and a store whose cache the tests that
    need one start from, instead of each computing it by a fine-tuning."""
    root = tmp_path_factory.mktemp("ft_msgs_cached") / "c"
    shutil.copytree(ft_src["root"], root, symlinks=True)
    store = root / "f.h5"
    before = store.stat().st_size
    r = run("finetune", "--run", ft_src["dense"], "--unfreeze-from", "block5_conv1", "--epochs", "3", "--batch-size", "4",
            "--lr", "1e-3", "--patience", "3", "--store", store)  # fmt: skip
    assert r.exit_code == 0, r.output
    (made,) = [p.name for p in (root / "f.runs").iterdir() if p.name.startswith("finetune-")]
    cli = {"result": r, "size_before": before, "size_after": store.stat().st_size, "run": made}
    return {**ft_src, "root": root, "data": root / "data", "store": store, "cli": cli}


@pytest.fixture
def ft_cached(cached_src, tmp_path):
    """A private copy of cached_src (its store holds CACHE, complete and marked), safe to change; its runs folder
    without the fine-tuning that made the cache (a 57 MB model no test here reads)."""
    shutil.copytree(cached_src["root"], tmp_path / "c", symlinks=True, ignore=shutil.ignore_patterns("finetune-*"))
    c = tmp_path / "c"
    return {**cached_src, "root": c, "data": c / "data", "store": c / "f.h5"}


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig("block5_conv1", **{"epochs": 1, "batch_size": 4, **kw})


def test_a_finetune_killed_while_caching_leaves_a_marked_cache(ft, monkeypatch):
    real = writer.SplitWriter.commit

    def killed(self, *args, **kwargs):
        if self.names == [CACHE]:
            raise KeyboardInterrupt  # killed after the group exists, before its first row
        return real(self, *args, **kwargs)

    monkeypatch.setattr(writer.SplitWriter, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(ft["dense"], _config(), store=ft["store"])
    monkeypatch.undo()
    fs = FeatureStore(ft["store"])
    assert CACHE in fs.extractors() and fs.extractors(caches=False) == ["vgg16"]
    assert fs.resolve() == "vgg16"  # fit, export and sweep still find the user's extractor
    assert fit(ft["store"], "logreg")["extractor"] == "vgg16"
    assert featstore.export(ft["store"], "train", ft["root"] / "t.npz").rows == 16
    rec = finetune(ft["dense"], _config(), store=ft["store"])  # resumes the cache and finishes
    assert rec["cached_cut"] == CACHE and FeatureStore(ft["store"]).extractors(caches=False) == ["vgg16"]


def test_an_unmarked_leftover_is_named_and_marked_when_a_finetune_resumes_it(ft_cached):
    ft = ft_cached  # a fine-tuning's complete cache, then made into an older featstore's leftover
    with h5py.File(ft["store"], "a") as f:  # as an older featstore's fine-tuning, killed mid-way, left it
        del f[CACHE].attrs["purpose"]
        sg = f[CACHE]["train"]
        # killed before its first commit (a commit of 8 of these 16 rows cannot be: the cache went through in one batch
        # of 16, and a resume computes its first batch again: 8 rows alone give other last digits, refused)
        sg.attrs["complete"], sg.attrs["commit"] = False, np.array([0, 0, 0], dtype=np.int64)
    with pytest.raises(StoreError) as err:
        FeatureStore(ft["store"]).resolve()
    msg = str(err.value)
    assert f"several extractors (vgg16, {CACHE}); choose one with --extractor (extractor= in Python)" in msg
    assert f"If you did not extract '{CACHE}', it is the frozen-layer cache of a fine-tuning" in msg
    assert delete_group_command(ft["store"], CACHE) in msg  # one shell word (attack 79 #4)
    finetune(ft["dense"], _config(), store=ft["store"])  # resumes the leftover: now it is marked
    assert FeatureStore(ft["store"]).resolve() == "vgg16"


def test_a_stale_cache_names_the_extract_command_that_works(ft_cached):
    ft = ft_cached  # the cache of a fine-tuning, then the train split grows
    src = ft["data"] / "train" / "cat" / "img_000.png"
    shutil.copy(src, src.with_name("img_new.png"))  # one more train image, then the store's group re-extracted
    extract(ft["data"], "train", ft["store"], ExtractorConfig("vgg16", SIZE, weights="none", seed=7), overwrite=True)
    with pytest.raises(StoreError) as err:
        finetune(ft["dense"], _config(), store=ft["store"])
    msg = str(err.value)
    assert "A fine-tuning never replaces its cache by itself: re-extract it with" in msg
    command = next(line.strip() for line in msg.splitlines() if line.strip().startswith("featstore extract"))
    assert f"--name {CACHE}" in command and "--layer block4_pool" in command and command.endswith("--overwrite")
    assert "--weights none --seed 7" in command and "--image-size 32" in command
    r = run(*shlex.split(command)[1:])
    assert r.exit_code == 0, r.output
    rec = finetune(ft["dense"], _config(), store=ft["store"])
    assert rec["cached_cut"] == CACHE and rec["splits"]["train"] == 17


@pytest.mark.parametrize("name", ["input_layer", "numbered"])
def test_unfreeze_from_the_input_layer_is_called_below_the_cut(ft_src, name):
    if name == "numbered":  # the name Keras gave it in this process (input_layer_4, ...)
        rec, _ = get_run(ft_src["dense"], ft_src["store"])
        name = finetune_mod.rebuild_extractor(rec["extractor_attrs"]).base_layer_names[0]
    with pytest.raises(ConfigError, match=f"--unfreeze-from {name} is below the store's cut 'block5_pool', but it is "
                       "the model's input layer, which has no weights; choose one of the layers"):  # fmt: skip
        finetune(ft_src["dense"], FinetuneConfig(name), store=ft_src["store"])


def test_phase_b_that_beats_nothing_keeps_phase_a_and_says_so(ft_cached):
    ft = ft_cached  # trains on the cut cached already (as a second fine-tuning would)
    rec = finetune(ft["dense"], _config(lr=1e-30, epochs=2), store=ft["store"])  # updates below float32's resolution
    assert rec["restored_epoch"] == 0 and rec["history"]["val_loss"][0] >= rec["phase_a_val_loss"]
    assert any("no epoch beat phase A's validation loss" in n and "keeps phase A's weights" in n for n in rec["notes"])
    assert any("its score is optimistic; judge by test" in n for n in rec["notes"])
    dense = get_run(ft["dense"], ft["store"])[0]
    for split in ("validation", "test"):
        assert rec["metrics"][split]["accuracy"] == dense["metrics"][split]["accuracy"]


def test_phase_b_ends_on_its_best_epoch_only_when_it_beats_phase_a(cached_src):
    rec, _ = get_run(cached_src["cli"]["run"], cached_src["store"])  # block5_conv1, --lr 1e-3, 3 epochs, patience 3
    assert (rec["params"]["lr"], rec["params"]["epochs"], rec["params"]["patience"]) == (1e-3, 3, 3)
    losses, base = rec["history"]["val_loss"], rec["phase_a_val_loss"]
    if rec["restored_epoch"]:
        assert losses[rec["restored_epoch"] - 1] == min(losses) < base
    else:
        assert min(losses) >= base


def test_finetune_says_what_its_cache_costs_and_how_to_remove_it(cached_src, ft_cached):
    ft, cli = ft_cached, cached_src["cli"]  # cli: the store's first fine-tuning, which made the cache
    r = cli["result"]
    assert r.exit_code == 0, r.output
    assert cli["size_after"] > cli["size_before"]
    assert f"cached in the store as the group '{CACHE}'" in r.output and "grew from" in r.output
    assert "h5repack" in r.output and "--no-cache" in r.output
    assert "train accuracy is the training curve's (dropout on)" in r.output and "augmented" not in r.output
    r = run("finetune", "--run", ft["dense"], "--unfreeze-from", "block5_conv1", "--epochs", "1", "--augment",
            "flip", "--store", ft["store"])  # fmt: skip
    assert r.exit_code == 0 and "(augmented: flip=horizontal, dropout on)" in r.output, r.output


# ------------------------------------------------------------------ extraction: --jit, inf/NaN, images/s, folders
def test_a_resume_with_jit_of_a_split_started_without_is_refused_both_sides_shown(data_root, tiny_config, tmp_path, monkeypatch):  # fmt: skip
    store = tmp_path / "f.h5"
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, batch_size=4)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4, jit=True)
    msg = str(err.value)
    assert "was started without --jit (jit=False) and this run is with --jit (jit=True)" in msg
    assert "Resume it without --jit" in msg and "--overwrite (overwrite=True)" in msg
    assert FeatureStore(store).split_info("train")["committed_rows"] == 4  # untouched
    extract(data_root, "train", store, tiny_config, batch_size=4)  # the command that works
    extract(data_root, "train", tmp_path / "clean.h5", tiny_config, batch_size=4)
    np.testing.assert_array_equal(FeatureStore(store).load("train")[0], FeatureStore(tmp_path / "clean.h5").load("train")[0])  # fmt: skip


def test_extract_warns_about_rows_with_inf_and_stores_them(tmp_path, caplog):
    import keras

    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Rescaling(1e38), keras.layers.Flatten(name="flat"), keras.layers.Dense(2)]
    )
    model.save(tmp_path / "overflow.keras")  # 255 x 1e38 is inf in float32: a white image overflows
    data = tmp_path / "data"
    for cls, values in (("a", (255, 0)), ("b", (0, 1))):
        (data / "train" / cls).mkdir(parents=True)
        for i, v in enumerate(values):
            Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(
                data / "train" / cls / f"{'white' if v == 255 else i}.png"
            )
    with caplog.at_level(logging.WARNING, logger="featstore"):
        r = extract(data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(tmp_path / "overflow.keras")))
    assert r.rows == 4
    assert (
        "batch 1 (images 1-4) of train (overflow) holds 1 rows with NaN or inf features (e.g. train/a/white.png); "
        "they are stored, but fit and leaks will refuse them" in caplog.text
    )
    assert np.isinf(FeatureStore(tmp_path / "f.h5").load("train")[0]).any(axis=1).sum() == 1


def test_extract_says_what_its_rate_measures(data_root, tmp_path):
    r = run("extract", "--data", data_root, "--store", tmp_path / "f.h5", "--weights", "none", "--image-size", SIZE,
            "--no-progress")  # fmt: skip
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("wrote 12 rows"))
    assert ": start-up " in line and "(listing, checks, model built), then " in line
    assert " img/s over " in line and "(decode, model, write)" in line


def test_an_empty_class_folder_is_refused_with_its_name(data_root, tiny_config, tmp_path):
    (data_root / "train" / "empty").mkdir()
    (data_root / "train" / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        extract(data_root, "train", tmp_path / "f.h5", tiny_config)
    msg = str(err.value)
    assert f"1 class folder(s) of {data_root / 'train'} hold no images: {data_root / 'train' / 'empty'}" in msg
    assert "Put images in it, or move the folder out of every split" in msg
    assert not (tmp_path / "f.h5").exists()


def test_a_split_given_as_data_is_called_one_split(data_root):
    with pytest.raises(DataError) as err:
        discover(data_root / "train", "train")
    msg = str(err.value)
    assert "looks like one split itself: its folders cat, dog hold images" in msg and "splits found" not in msg
    assert f"pass --data {data_root} if this is its 'train' split" in msg and "<data>/validation/<class>/" in msg


def test_tiff_files_are_images_and_ignored_files_are_named_by_kind(data_root, caplog):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data_root / "train" / "cat" / "x.tif")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(data_root / "train" / "cat" / "y.TIFF")
    (data_root / "train" / "cat" / "notes.txt").write_text("x")
    with caplog.at_level(logging.INFO, logger="featstore"):
        listing = discover(data_root, "train")
    assert {"train/cat/x.tif", "train/cat/y.TIFF"} <= {p for p, _ in listing.items}
    assert "ignored 1 files that are not images by their extension (.txt x1); featstore reads" in caplog.text
    assert ".tif, .tiff" in caplog.text


# ------------------------------------------------------------------ weights offline, API wording, CLI basics
def test_offline_imagenet_fails_fast(monkeypatch, tmp_path):
    from featstore.models import weights
    from featstore.models.backbones import BackboneSpec, get_backbone

    monkeypatch.setattr(weights, "keras_cache_dir", lambda: tmp_path / "keras" / "models")  # nothing cached
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(weights, "PROBE_TIMEOUT_S", 0.5)

    released = threading.Event()

    def hang(*args, **kwargs):  # a resolver that hangs (until the test ends: the probe's thread then exits), times out
        released.wait(10)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(BackboneSpec, "build", lambda *a, **k: pytest.fail("Keras was asked to download"))
    t = time.monotonic()
    try:
        with pytest.raises(WeightsError) as err:
            weights.load_base(get_backbone("vgg16"), 32, "imagenet")
        assert time.monotonic() - t < 5
    finally:
        released.set()
    assert "storage.googleapis.com did not answer within 0.5 s: no network?" in str(err.value)
    assert "--weights PATH" in str(err.value) and "--weights hed-bsds500" in str(err.value)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # through a proxy: nothing is probed, Keras downloads
    assert weights.download_problem() is None


def test_errors_name_the_python_argument_too(tmp_path):
    store = tmp_path / "f.h5"
    for name in ("a", "b"):
        writer.write_arrays(store, name, "train", np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), ["x", "y"])
    with pytest.raises(StoreError, match=r"choose one with --extractor \(extractor= in Python\)"):
        FeatureStore(store).resolve()


def test_version_and_short_help():
    r = run("--version")
    from featstore.version import __version__

    assert r.exit_code == 0 and r.output.strip() == f"featstore {__version__}"
    assert run("-h").exit_code == 0 and "Usage" in run("-h").output
    assert "--unfreeze-from" in run("finetune", "-h").output


def test_log_lines_and_errors_reach_the_terminal_escaped():
    from featstore.cli.main import _SafeFormatter, safe

    rec = logging.LogRecord("featstore", logging.WARNING, __file__, 1, "skipped %s", ("a\x1b]0;x\x07.png",), None)
    assert _SafeFormatter("%(message)s").format(rec) == "skipped a\\x1b]0;x\\x07.png"
    assert safe("two\nlines \x1b[2J") == "two\nlines \\x1b[2J"


def test_ray_noise_is_dropped_and_real_errors_pass(capfd, caplog):
    from featstore.extraction.ray import RayNoise

    quiet = RayNoise()
    quiet.filter_fd2()
    try:
        logging.getLogger("ray.data._internal.progress").warning("Progress bars disabled. To enable, set ...")
        for name, line in [  # a dataset's end, and a batch's error (featstore says each in its own words)
            ("ray.data._internal.execution.streaming_executor", "✔️  Dataset dataset_03_0 execution finished in 6.15 s"),
            ("ray.data._internal.execution.streaming_executor", "⚠️  Dataset dataset_03_0 execution failed"),
            (
                "ray.data._internal.execution.streaming_executor_state",
                "An exception was raised from a task of operator",
            ),
            ("ray.data.exceptions", "Exception occurred in user code, with the abbreviated stack trace below. ..."),
        ]:
            logging.getLogger(name).warning(line)
        os.write(2, b"[2026-12-04 20:52:57,022 E 12540 12540] core_worker.cc:2465: Actor with class name: 'MapWorker"
                    b"(MapBatches(Forward))' and ID: '6d07' has constructor arguments in the object store and "
                    b"max_restarts > 0.\n")  # fmt: skip
        os.write(2, b"[2026-12-04 20:52:58,000 E 12540 12540] core_worker.cc:100: a real error\n")
    finally:
        quiet.close()
    err = capfd.readouterr().err
    assert "a real error" in err and "constructor arguments" not in err
    assert "Progress bars disabled" not in err
    assert "Dataset dataset_03_0" not in err and "user code" not in err and "from a task" not in err
    assert not [r for r in caplog.records if r.name.startswith("ray")]  # dropped at the logger, not only hidden
    assert not logging.getLogger("ray.data._internal.progress").filters  # and the filters are gone afterwards
