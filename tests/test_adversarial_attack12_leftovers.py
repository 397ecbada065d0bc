"""What attack 12 (issue #19) left open, each fixed with a test that failed before its fix: a symlinked
``<store>.cache`` (or a folder in it) was written through; KerasHub read a preset's ``config.json`` again after
featstore's bounded read; NaN features from the extractor made ``predict`` blame the fit; a fit run's provenance could
be edited under its fingerprint (and an ensemble's fingerprint at will); a damaged ``<store>.leaks.json`` was replaced.
Synthetic stores and tiny models throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore.errors import OutputError
from featstore.runs.files import BrokenRunError
from tests.test_adversarial_attack2 import cli, no_traceback
from tests.test_adversarial_attack3 import synthetic_store


def _elsewhere(tmp_path: Path) -> Path:
    """An empty folder a planted link points to."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    return target


def _leaks_store(tmp_path: Path) -> Path:
    """A synthetic store of train and test (8 + 2 rows, with their image files) and its leaks record."""
    from tests.leaks_stores import eight_and_two

    return eight_and_two(tmp_path)


# ============================================================ 1. a linked <store>.cache: refused, never written through
def _thumbs(store: Path, cache: Path) -> None:
    from featstore.report.site.thumbs import ThumbCache

    image = store.parent / "a.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(image)
    ThumbCache(cache / "thumbs").make([str(image)])


def _maps(store: Path, cache: Path) -> None:
    from featstore.experiments.projection import project

    project(store, max_rows=20, method="pca", cache=cache / "maps")


def _leak_pairs(store: Path, cache: Path) -> None:
    from featstore import FeatureStore
    from featstore.report.site.storeview import leak_view

    leak_view(FeatureStore(store), "s", cache, "")


def _onnx(store: Path, cache: Path) -> None:
    from featstore.models import onnx_runtime

    onnx_runtime._make_folder(cache / onnx_runtime.CACHE_FOLDER)


@pytest.mark.parametrize("use", [_thumbs, _maps, _leak_pairs, _onnx], ids=lambda f: f.__name__.strip("_"))
def test_no_cache_is_written_through_a_linked_store_cache(tmp_path, use):
    """``<store>.cache`` a link to another folder: thumbnails, map layouts, leak pairs and ONNX cuts were made in that
    folder (``mkdir(parents=True, exist_ok=True)`` follows a link, and the writer checked only the final name). Each
    cache now refuses it with one message naming the link and the fix; nothing is written where it points."""
    store = _leaks_store(tmp_path)
    target = _elsewhere(tmp_path)
    cache = tmp_path / "f.h5.cache"
    cache.symlink_to(target)
    with pytest.raises(OutputError, match=f"{cache} is a symbolic link; .*Remove the link .*or choose another --store"):
        use(store, cache)
    assert not list(target.iterdir())


def test_a_linked_thumbnail_bucket_is_refused(tmp_path):
    """A link one level down, at ``<store>.cache/thumbs/<ab>/`` (the key is a digest anyone can compute), took the
    thumbnail too."""
    from featstore.report.site.thumbs import SIDE, ThumbCache, _key

    target, cache = _elsewhere(tmp_path), tmp_path / "f.h5.cache"
    image = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(image)
    (cache / "thumbs").mkdir(parents=True)
    bucket = cache / "thumbs" / _key(str(image), SIDE)[:2]
    bucket.symlink_to(target)
    with pytest.raises(OutputError, match=f"{bucket} is a symbolic link"):
        ThumbCache(cache / "thumbs").make([str(image)])
    assert not list(target.iterdir())


@pytest.mark.parametrize("where", ["f.h5.cache", "f.h5.cache/maps", "f.h5.cache/thumbs"])
def test_report_refuses_a_linked_cache_folder_before_any_work(tmp_path, where):
    store = synthetic_store(tmp_path / "f.h5")
    target = _elsewhere(tmp_path)
    (tmp_path / "f.h5.cache").mkdir(exist_ok=where != "f.h5.cache")
    if where == "f.h5.cache":
        (tmp_path / where).rmdir()
    (tmp_path / where).symlink_to(target)
    r = cli("report", "--store", store, "--map-method", "pca")
    out = no_traceback(r)
    assert r.exit_code == 1 and f"{tmp_path / where} is a symbolic link" in out, out
    assert not list(target.iterdir()) and not (tmp_path / "f.report").exists()


# ============================================================ 2. KerasHub read config.json again
def test_keras_hub_builds_the_config_featstore_read_and_checked(tmp_path, monkeypatch):
    """featstore read ``config.json`` with bounds and checked its sizes, then ``Backbone.from_preset(folder)`` read the
    file again, whole: one swapped in between (here over the 1 MiB bound, and with another ``num_layers``) was what
    KerasHub built. KerasHub now loads a private snapshot of the checked config (the weights hashed again after)."""
    keras_hub = pytest.importorskip("keras_hub")
    from featstore.errors import WeightsError
    from featstore.models.hub import HubSpec
    from featstore.models.preset_json import MAX_PRESET_JSON_BYTES
    from tests.test_hub import save_presets

    folder, backbone = save_presets(tmp_path, ("vit",))["vit"]
    spec = HubSpec.from_model(str(folder))
    swapped = json.loads((folder / "config.json").read_text())
    swapped["config"]["num_layers"] = 1
    (folder / "config.json").write_text(json.dumps(swapped) + " " * MAX_PRESET_JSON_BYTES)
    model, _ = spec.build(spec.default_size)
    assert sorted(model.output) == ["block1", "block2", "tokens"] and spec.prefix_tokens() == 1
    x = np.random.default_rng(0).normal(0, 1, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)["tokens"]), np.asarray(backbone(x)), atol=1e-5)

    real = keras_hub.models.Backbone.from_preset

    def changing(preset, **kwargs):  # the weights file changed in place while KerasHub loaded it
        built = real(preset, **kwargs)
        with open(folder / "model.weights.h5", "ab") as fh:
            fh.write(b"\0")
        return built

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", changing)
    with pytest.raises(WeightsError, match="model.weights.h5 changed while it was being loaded"):
        spec.build(spec.default_size)  # the weights are still hashed again after loading


# ============================================================ 3. NaN features on new images: "fit again"
def test_predict_names_the_images_whose_features_are_not_finite(store, tmp_path, monkeypatch):
    """An extractor giving NaN features for one new image (a model overflowing on it) ended ``predict`` with "the
    model in run ... its state was altered or damaged. Fit the classifier again": the fit was blamed and no image got a
    prediction. That image now gets a row naming the extractor as the cause; the others are predicted."""
    from featstore import fit, predict
    from featstore.runs import apply
    from tests.conftest import write_images

    runs = tmp_path / "runs"
    rid = fit(store, "logreg", runs=runs)["id"]
    images = tmp_path / "new"
    write_images(images, "x", {"a": 2})
    white = images / "white.png"
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(white)
    real = apply.rebuild_extractor

    def overflowing(*args, **kwargs):  # NaN for an all-white image, as a model that overflows on it gives
        ex = real(*args, **kwargs)

        def features(x):
            out = np.array(ex(x), dtype=np.float32)
            out[(x == 255).reshape(len(x), -1).all(axis=1)] = np.nan
            return out

        return features

    monkeypatch.setattr(apply, "rebuild_extractor", overflowing)
    rows = {Path(r["path"]).name: r for r in predict(rid, [images], store=store, runs=runs)}
    assert len(rows) == 3 and rows["white.png"]["label"] == "", rows
    why = rows["white.png"]["error"]
    assert "gave NaN or infinite features for this image" in why and "not of the fitted classifier" in why, why
    assert all(r["label"] and not r["error"] for n, r in rows.items() if n != "white.png"), rows


# ============================================================ 4. fit and ensemble records not re-hashed
@pytest.mark.parametrize("edit", ["field", "fingerprint"])
def test_a_fit_record_edited_under_its_fingerprint_is_refused_naming_run_json(tmp_path, edit):
    """Only finetune runs (and presets') had their ``extractor_attrs`` hashed against the fingerprint when read; a fit
    run's could be edited (a field, or both fingerprints replaced) and was listed, shown, ensembled and reported."""
    from featstore import fit, get_run
    from featstore.runs.folder import scan_runs_of

    store, runs = synthetic_store(tmp_path / "f.h5"), tmp_path / "runs"
    rid = fit(store, "logreg", runs=runs)["id"]
    record = runs / rid / "run.json"
    rec = json.loads(record.read_text())
    if edit == "field":
        rec["extractor_attrs"]["pooling"] = "avg"
    else:
        rec["fingerprint"] = rec["extractor_attrs"]["fingerprint"] = "0" * 64
    record.write_text(json.dumps(rec))
    with pytest.raises(BrokenRunError, match=f"{record}: extractor_attrs do not hash to the fingerprint"):
        get_run(rid, store, runs)
    assert [name for name, _ in scan_runs_of(store, runs).broken] == [rid]


def test_an_ensemble_whose_fingerprint_is_not_its_members_is_refused(tmp_path):
    """An ensemble's ``extractor`` and ``fingerprint`` (its members', joined) were never compared with its members:
    edited, ``predict`` went on to other errors and reports showed them."""
    from featstore import ensemble, fit, predict

    store, runs = synthetic_store(tmp_path / "f.h5"), tmp_path / "runs"
    members = [fit(store, clf, runs=runs)["id"] for clf in ("logreg", "knn")]
    ens = ensemble(members, store=store, runs=runs)
    record = runs / ens["id"] / "run.json"
    rec = json.loads(record.read_text())
    rec["fingerprint"] = "0" * 64
    record.write_text(json.dumps(rec))
    with pytest.raises(BrokenRunError, match=f"{record}: its extractor and fingerprint are not its members'"):
        predict(ens["id"], [tmp_path], store=store, runs=runs)


# ============================================================ 5. a damaged leaks record replaced
def test_a_damaged_leaks_record_is_kept_aside_not_lost(tmp_path, caplog):
    """``leaks`` replaced a ``<store>.leaks.json`` it could not read with a warning: a record edited by hand (a
    stray comma) lost every extractor's counts. It is now kept as ``<store>.leaks.json.damaged`` (``.damaged.1``
    next), named in the warning, and a new record is written."""
    from featstore import find_leaks
    from featstore.experiments.leaks import read_record, record_path

    store = _leaks_store(tmp_path)
    path = record_path(store)
    first = path.read_text().replace("{", "{,", 1)
    path.write_text(first)
    find_leaks(store, threshold=0.99)
    assert f"kept it as {path}.damaged; wrote a new record" in caplog.text, caplog.text
    assert Path(f"{path}.damaged").read_text() == first and "s" in read_record(path)["extractors"]
    path.write_text("[]")
    assert cli("leaks", "--store", store, "--threshold", "0.99").exit_code == 0
    assert Path(f"{path}.damaged").read_text() == first and Path(f"{path}.damaged.1").read_text() == "[]"
    assert "s" in read_record(path)["extractors"]
