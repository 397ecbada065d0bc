"""Twelfth round (issue #19, "every file featstore writes is safe to open, every input it reads is bounded"): the
leftovers the attacks found but did not fix. A KerasHub preset's sizes that would allocate without bound, a named
preset in a store's or run's record that made featstore download, a fine-tuning's record compared with the store by
its fingerprint string alone, the default ``<store>.leaks.png`` written without the checks ``--png`` gets, and a
fine-tuning cache whose labels were trusted. Each test failed before its fix (the two honest-input guards because
what they call is new) unless its docstring says the case was already handled. Presets are tiny random-weight
towers; the fine-tuning is VGG16 at 32 pixels with random weights.
"""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from featstore import ConfigError, ExtractorConfig
from tests.test_adversarial_attack4 import cli, no_traceback


def one_line(out: str) -> str:
    """The one ``error:`` line of a refused command's output."""
    lines = [line for line in out.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].lower().startswith("error"), out
    return lines[0]


# ================================================================== 1. preset sizes bounded before anything is built
@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """The four families, tiny, each saved as a preset folder: {family: (folder, parameters)}."""
    pytest.importorskip("keras_hub")
    from tests.test_hub import save_presets

    saved = save_presets(tmp_path_factory.mktemp("a12"))
    return {name: (folder, backbone.count_params()) for name, (folder, backbone) in saved.items()}


def crafted(presets, tmp_path, family, edit, name="crafted"):
    """A copy of a preset folder with ``edit(config.json's object)`` applied."""
    folder = tmp_path / name
    shutil.copytree(presets[family][0], folder)
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def _set(key, value, tower=None):
    def edit(data):
        (data["config"][tower]["config"] if tower else data["config"])[key] = value

    return edit


def _functional_text_encoder(data):
    """CLIP's text tower swapped for a Functional model whose Dense layer alone is 10**6 x 10**6 numbers."""
    data["config"]["text_encoder"] = {
        "module": "keras",
        "class_name": "Functional",
        "registered_name": "Functional",
        "config": {"layers": [{"class_name": "Dense", "config": {"units": 10**6}}]},
    }


@pytest.mark.parametrize(
    "family,edit,needle",
    [
        ("vit", _set("mlp_dim", 10**9), "mlp_dim is 1000000000, expected a whole number from 1 to 262144"),
        ("vit", _set("mlp_dim", 200_000), "(num_layers 2, hidden_dim 32, mlp_dim 200000) build at least 6,410,752"),
        ("vit", _set("hidden_dim", 60_000), "hidden_dim 60000"),
        ("vit", _set("num_layers", 1000), "num_layers 1000"),
        ("vit", _set("num_heads", 1000), "num_heads is 1000, more than hidden_dim 32"),
        ("vit", _set("image_shape", [4096, 4096, 3]), "makes 262,144 patches per image, over 16,384"),
        ("dinov2", _set("intermediate_dim", 250_000), "intermediate_dim 250000) build at least"),
        ("dinov2", _set("position_embedding_shape", [4096, 4096, 3]), "position_embedding_shape 4096"),
        ("clip", _set("vocabulary_size", 10**7, "text_encoder"), "vocabulary_size is 10000000, expected a whole"),
        ("clip", _set("vocabulary_size", 10**6, "text_encoder"), "(vocabulary_size 1000000, width 32) build at least"),
        ("clip", _set("max_sequence_length", 10**6, "text_encoder"), "max_sequence_length is 1000000"),
        ("clip", _set("projection_dim", 60_000), "(projection_dim 60000) build at least"),
        ("siglip", _set("intermediate_dim", 250_000, "text_encoder"), "intermediate_dim 250000) build at least"),
        ("clip", _functional_text_encoder, "its text_encoder is Functional, not a KerasHub encoder"),
    ],
)
def test_preset_sizes_that_would_allocate_without_bound_are_refused_before_building(
    presets, tmp_path, family, edit, needle
):
    """A config.json edited to intermediate_dim 10**9 (or a vocabulary of 10**7, 1000 blocks, a 60000-wide projection,
    num_heads 1000, a 4096-pixel default side with 8-pixel patches, a Functional text tower) passed every check:
    ``featstore models PATH/`` listed it and ``extract`` handed it to KerasHub, which allocated the model before the
    weights were read (memory ran out, or attention over 262,144 patches did). Now each is one line naming config.json,
    the field and the fix, and ``extract`` writes nothing."""
    folder = crafted(presets, tmp_path, family, edit)
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(model=str(folder)).validated()
    msg = str(err.value)
    assert needle in msg and "config.json" in msg and "\n" not in msg, msg
    if "build at least" in msg:
        assert "Restore the preset's config.json" in msg and "model.weights.h5 holds" in msg, msg
    from tests.test_adversarial_attack3 import tiny_pngs

    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"], "b": ["y.png"]}})
    out = no_traceback(cli("extract", "--data", data, "--split", "train", "--model", f"{folder}/",
                           "--store", tmp_path / "f.h5"))  # fmt: skip
    assert needle in one_line(out), out
    assert not (tmp_path / "f.h5").exists()


def test_weights_declared_but_not_stored_do_not_count(presets, tmp_path):
    """The bound compares with what model.weights.h5 *holds*: arrays declared huge but never written (a few KiB of
    file) do not make room for a config of 6 million parameters."""
    folder = crafted(presets, tmp_path, "vit", _set("mlp_dim", 200_000))
    with h5py.File(folder / "model.weights.h5", "a") as f:
        f.create_dataset("padding", shape=(10**9,), dtype="float32", chunks=(1 << 16,))
    assert (folder / "model.weights.h5").stat().st_size < 1 << 20
    with pytest.raises(ConfigError, match="build at least 6,410,752 parameters, but model.weights.h5 holds 23,904"):
        ExtractorConfig(model=str(folder)).validated()


def test_honest_presets_build_more_than_their_bound(presets):
    """The guard on the bound: for each family it is below what KerasHub builds, which is what the weights file holds,
    so no honest preset is refused."""
    from featstore.models.hub import HubSpec
    from featstore.models.preset_json import held_parameters, implied_parameters

    for family, (folder, parameters) in presets.items():
        HubSpec.from_model(str(folder))  # accepted
        config = json.loads((folder / "config.json").read_text())["config"]
        bound, _ = implied_parameters(config, folder / "config.json", 4096)
        assert 0 < bound <= parameters == held_parameters(folder / "model.weights.h5", family), family


# ================================================================== 2. a record never makes featstore download
@pytest.fixture
def no_network(monkeypatch):
    """Every download route KerasHub has, replaced by one that records the call and fails: the list of fetches."""
    pytest.importorskip("keras_hub")
    from keras_hub.src.utils import preset_utils

    fetched = []

    local = preset_utils.get_file

    def fetch(preset, path):
        if os.path.isdir(preset):
            return local(preset, path)  # a preset folder on disk: KerasHub reads it there
        fetched.append((preset, path))
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(preset_utils, "get_file", fetch)
    return fetched


@pytest.fixture(scope="module")
def preset_run(presets, tmp_path_factory):
    """A store extracted with the ViT preset folder and a logreg run on it: (root, store, run id, images)."""
    from featstore import extract, fit
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("a12run")
    images = write_images(root / "data", "train", {"cat": 3, "dog": 3}, seed=1, size=40)
    store = root / "f.h5"
    extract(root / "data", "train", store, ExtractorConfig(model=str(presets["vit"][0]), pooling="cls"))
    return root, store, fit(store, "logreg")["id"], images


def _copy_run(preset_run, tmp_path):
    root, store, rid, images = preset_run
    shutil.copy(store, tmp_path / "f.h5")
    shutil.copytree(root / "f.runs", tmp_path / "f.runs")
    return tmp_path / "f.h5", tmp_path / "f.runs" / rid, rid, images


@pytest.mark.parametrize(
    "named", ["hub:hf://someone/not_asked_for", "hub:kaggle://someone/model/keras/variant", "hub:dinov2_small"]
)
def test_a_preset_named_by_a_run_record_is_never_downloaded(preset_run, tmp_path, no_network, monkeypatch, named):
    """An edited ``extractor_attrs.hub_preset`` in run.json (not fingerprinted: the record stayed valid) made
    ``predict`` ask KerasHub for it: hf://, kaggle:// or a built-in name were downloaded (here: the fetch was
    attempted) before the weights' digest and the fingerprint could refuse it. Now a record's named preset is read
    from KerasHub's caches only, and one line names --weights hub:<preset> for a download the command line asks."""
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    store, folder, rid, images = _copy_run(preset_run, tmp_path)
    rec = json.loads((folder / "run.json").read_text())
    rec["extractor_attrs"].update(hub_preset=named, hub_handle="hf://someone/else")
    (folder / "run.json").write_text(json.dumps(rec))
    out = no_traceback(cli("predict", "--run", rid, "--store", store, images[0]))
    line = one_line(out)
    assert "comes from a record" in line and f"Pass --weights {named} to download it" in line, line
    assert no_network == []


def test_a_preset_named_by_a_stores_attributes_is_never_downloaded(preset_run, tmp_path, no_network, monkeypatch):
    """The same through the store: ``similar NEW_IMAGE`` rebuilds the extractor from the store's attributes, and an
    edited ``hub_preset`` attribute there (not fingerprinted) was fetched."""
    from featstore.experiments.similar import similar

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle"))
    store, _, _, images = _copy_run(preset_run, tmp_path)
    with h5py.File(store, "a") as f:
        (name,) = [k for k in f if isinstance(f[k], h5py.Group)]
        f[name].attrs["hub_preset"] = "hub:hf://someone/not_asked_for"
    outside = tmp_path / "query.png"
    shutil.copy(images[0], outside)
    with pytest.raises(ConfigError, match="comes from a record .* Pass --weights hub:hf://someone/not_asked_for"):
        similar(outside, store)
    assert no_network == []


def test_a_cached_preset_named_by_a_record_still_works_offline(presets, tmp_path, monkeypatch):
    """Honest records keep working: a run made with ``hub:kaggle://o/m/keras/v`` (KerasHub's download, here served
    from a kagglehub cache) predicts from that cache with every download route failing, taking the newest version
    cached in full; ``--weights hub:<preset>`` on the command line may still download."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle
    from keras_hub.src.utils import preset_utils

    from featstore import extract, fit, predict
    from featstore.models.preset_json import PRESET_FILES
    from tests.conftest import write_images

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle"))
    handle = parse_model_handle("o/m/keras/v/3")
    cached = tmp_path / "kaggle" / "models" / "o" / "m" / "keras" / "v" / "3"
    shutil.copytree(presets["vit"][0], cached)
    for name in PRESET_FILES:
        Cache().mark_as_complete(handle, name)
    (cached.parent / "2").mkdir()  # an older version, not complete: passed over
    served, local = [], preset_utils.get_file

    def serve(preset, path):  # what KerasHub's download does once the files are cached
        if os.path.isdir(preset):
            return local(preset, path)  # building from the resolved folder
        served.append(path)
        return str(cached / path)

    monkeypatch.setattr(preset_utils, "get_file", serve)
    images = write_images(tmp_path / "data", "train", {"cat": 3, "dog": 3}, seed=1, size=40)
    store = tmp_path / "f.h5"
    extract(tmp_path / "data", "train", store, ExtractorConfig(model="hub:kaggle://o/m/keras/v", pooling="cls"))
    run = fit(store, "logreg")
    assert run["extractor_attrs"]["hub_handle"] == "kaggle://o/m/keras/v/3"
    served.clear()

    def offline(preset, path):
        if os.path.isdir(preset):
            return local(preset, path)
        raise AssertionError(f"fetched {preset} {path}")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    assert len(predict(run["id"], images[:2], store=store)) == 2
    monkeypatch.setattr(preset_utils, "get_file", serve)
    assert len(predict(run["id"], images[:2], store=store, weights="hub:kaggle://o/m/keras/v")) == 2
    assert "model.weights.h5" in served  # asked for on the command line: KerasHub's own route


# ================================================================== 3, 5. fine-tuning: the record and the cache
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """VGG16 at 32 pixels (random weights), 4/2/2 images per class, a dense run, and a fine-tuning of it that cached
    its frozen layers: (root, store, dense id, finetune id, test images)."""
    from featstore import extract, fit
    from featstore.experiments.finetune import FinetuneConfig, finetune
    from tests.conftest import write_images

    root = tmp_path_factory.mktemp("a12ft")
    for split, n, seed in (("train", 4, 1), ("validation", 2, 2), ("test", 2, 3)):
        write_images(root / "data", split, {"cat": n, "dog": n}, seed=seed, size=40)
    store = root / "f.h5"
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7)
    for split in ("train", "validation", "test"):
        extract(root / "data", split, store, cfg)
    dense = fit(store, "dense", {"epochs": [1], "units": [4]})
    ft = finetune(dense["id"], FinetuneConfig("block5_conv3", epochs=1, batch_size=4), store=store)
    assert ft["cached_cut"]
    return root, store, dense["id"], ft["id"], sorted((root / "data" / "test").rglob("*.*"))


def _copy_tuned(tuned, tmp_path):
    """A copy of the store and its runs (the images stay where the store records them)."""
    root, store, *_ = tuned
    shutil.copy(store, tmp_path / "f.h5")
    shutil.copytree(root / "f.runs", tmp_path / "f.runs")
    return tmp_path / "f.h5"


def _edit_attrs(store, rid, **changes):
    p = store.parent / "f.runs" / rid / "run.json"
    rec = json.loads(p.read_text())
    rec["extractor_attrs"].update(changes)  # the fingerprint (and the record's own) left as they were
    p.write_text(json.dumps(rec))


def test_a_finetune_runs_edited_preprocessing_under_its_fingerprint_is_refused(tuned, tmp_path):
    """A fine-tuned model is fed by ``extractor_attrs.preprocess`` of its run.json; for a base that is not a preset it
    was never checked against the fingerprint (only the fingerprint strings were compared): ``preprocess`` edited from
    imagenet-caffe to none gave predictions with rc 0 from images the model never saw that way."""
    from featstore import predict
    from featstore.runs.files import BrokenRunError

    _, _, _, ft, images = tuned
    store = _copy_tuned(tuned, tmp_path)
    assert len(predict(ft, images[:2], store=store)) == 2  # as written: accepted
    _edit_attrs(store, ft, preprocess="none")
    with pytest.raises(BrokenRunError, match="extractor_attrs do not hash to the fingerprint"):
        predict(ft, images[:2], store=store)


def test_finetune_refuses_a_phase_a_record_edited_under_its_fingerprint(tuned, tmp_path):
    """``finetune`` compared the dense run's fingerprint with the store's as strings; the extractor is rebuilt from the
    registry (a VGG16's ``preprocess`` is not read to rebuild it), so a run.json whose ``preprocess`` was edited to
    none passed, phase B trained on images prepared another way than phase A's features, and the new run recorded the
    edited provenance under the old fingerprint. Now both sides must hash to their fingerprints; nothing is written."""
    from featstore import StoreError
    from featstore.experiments.finetune import FinetuneConfig, finetune

    _, _, dense, _, _ = tuned
    store = _copy_tuned(tuned, tmp_path)
    _edit_attrs(store, dense, preprocess="none")
    before = sorted(p.name for p in (tmp_path / "f.runs").iterdir())
    with pytest.raises(StoreError, match=f"run {dense} is broken: .*extractor_attrs do not hash to the fingerprint"):
        finetune(dense, FinetuneConfig("block5_conv3", epochs=1, batch_size=4), store=store)
    assert sorted(p.name for p in (tmp_path / "f.runs").iterdir()) == before


def test_the_structured_comparison_does_not_fail_on_formatting(tuned):
    """The other half of the structured comparison: the store's attributes (numpy arrays and integers from HDF5) and
    the run's JSON copy of them compare equal field by field, so an honest record is never refused for how its
    numbers were written."""
    from featstore import FeatureStore
    from featstore.provenance import attrs_of, same_features
    from featstore.runs.folder import get_run

    _, store, dense, _, _ = tuned
    rec, _ = get_run(dense, store)
    with h5py.File(store, "r") as f:
        raw = attrs_of(f[rec["extractor"]])
    assert same_features(raw, json.loads(json.dumps(rec["extractor_attrs"])))
    assert same_features(FeatureStore(store).metadata(rec["extractor"]), rec["extractor_attrs"])


def test_a_finetune_cache_with_other_labels_is_refused(tuned, tmp_path):
    """The fine-tuning cache (the group ``<model>@<layer below>``) was reused with its own labels, trusted: labels
    flipped in it (paths and listing unchanged) trained phase B on the wrong classes without a word. Now its labels and
    classes must be the run's group's, row for row; the refusal names the command that re-makes the cache."""
    from featstore import StoreError
    from featstore.experiments.finetune import FinetuneConfig, finetune
    from featstore.runs.folder import get_run

    root, _, dense, ft, _ = tuned
    store = _copy_tuned(tuned, tmp_path)
    group = get_run(ft, store)[0]["cached_cut"]
    with h5py.File(store, "a") as f:
        labels = f[group]["train"]["labels"]
        labels[...] = 1 - labels[...]
    before = sorted(p.name for p in (tmp_path / "f.runs").iterdir())
    with pytest.raises(StoreError) as err:
        finetune(dense, FinetuneConfig("block5_conv3", epochs=1, batch_size=4), store=store)
    msg = str(err.value)
    assert f"the cached frozen layers {group!r}" in msg and "8 of its 8 labels differ" in msg, msg
    assert f"featstore extract --data {root / 'data'} --split train" in msg and "--no-cache" in msg, msg
    assert sorted(p.name for p in (tmp_path / "f.runs").iterdir()) == before


# ================================================================== 4. the default <store>.leaks.png
@pytest.fixture
def leaky(tmp_path):
    """A 40-row train and 10-row test store kept *inside* train's image folder (data/train/f.h5), as a store moved
    there would be."""
    from tests.leaks_stores import blob, write_split

    rng = np.random.default_rng(0)
    X, Q = rng.gamma(1.0, size=(40, 16)).astype(np.float32), rng.gamma(1.0, size=(10, 16)).astype(np.float32)
    Q[1] = X[3]
    data = tmp_path / "data"
    store = data / "train" / "f.h5"
    os.makedirs(store.parent)
    write_split(store, "s", "train", X, np.zeros(40), [f"train/{i}.png" for i in range(40)], data,
                [blob(i) for i in range(40)])  # fmt: skip
    write_split(store, "s", "test", Q, np.zeros(10), [f"test/{i}.png" for i in range(10)], data,
                [blob(100 + i) for i in range(10)])  # fmt: skip
    return store


def test_the_default_leaks_png_is_not_written_inside_an_image_folder(leaky):
    """``--png data/train/x.png`` is refused (the next extract would take the chart for an image), but the default
    ``<store>.leaks.png`` got no such check: with the store in train's image folder, the chart landed among the
    images. Now it is skipped with a note (the results are printed, exit 0)."""
    out = no_traceback(cli("leaks", "--store", leaky, "--threshold", "0.999"))
    assert "test: 1 of 10 rows have a near-duplicate" in out, out
    assert f"note: PNG {leaky}.leaks.png is inside {leaky.parent}, the image folder of split 'train'" in out, out
    assert not os.path.lexists(f"{leaky}.leaks.png")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n my own picture", b"notes I keep here"])
def test_the_default_leaks_png_never_replaces_a_file_featstore_did_not_draw(tmp_path, content):
    """A file of the user's at ``<store>.leaks.png`` (a picture, or anything else) was replaced by the chart without a
    word; ``--png`` of the same name refuses an image. Now the default name is only ever a chart featstore drew."""
    from tests.leaks_stores import blob, write_split

    store = tmp_path / "f.h5"
    X = np.random.default_rng(0).gamma(1.0, size=(20, 8)).astype(np.float32)
    write_split(store, "s", "train", X, np.zeros(20), [f"{i}.png" for i in range(20)], tmp_path / "d",
                [blob(i) for i in range(20)])  # fmt: skip
    write_split(store, "s", "test", X[:5], np.zeros(5), [f"{i}.png" for i in range(5)])
    mine = tmp_path / "f.h5.leaks.png"
    mine.write_bytes(content)
    out = no_traceback(cli("leaks", "--store", store))
    assert f"note: PNG {mine} already exists and was not drawn by featstore" in out, out
    assert mine.read_bytes() == content
    mine.unlink()
    no_traceback(cli("leaks", "--store", store))  # featstore's own chart is written, and replaced the next time
    out = no_traceback(cli("leaks", "--store", store))
    assert f"wrote {mine}" in out and "note: PNG" not in out, out


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_the_default_leaks_png_is_never_written_through_a_link_or_fifo(tmp_path, kind):
    """Already handled (write_atomic checks every name): a link or FIFO at ``<store>.leaks.png`` is left alone, the
    command neither follows nor blocks on it, and says so in a note."""
    from tests.leaks_stores import write_split

    store = tmp_path / "f.h5"
    X = np.random.default_rng(0).gamma(1.0, size=(20, 8)).astype(np.float32)
    write_split(store, "s", "train", X, np.zeros(20), [f"{i}.png" for i in range(20)])
    write_split(store, "s", "test", X[:5], np.zeros(5), [f"{i}.png" for i in range(5)])
    victim, name = tmp_path / "victim.txt", tmp_path / "f.h5.leaks.png"
    victim.write_text("precious")
    os.symlink(victim, name) if kind == "link" else os.mkfifo(name)
    out = no_traceback(cli("leaks", "--store", store))
    assert f"note: PNG {name} is" in out, out
    assert victim.read_text() == "precious" and (os.path.islink(name) if kind == "link" else not name.is_file())
