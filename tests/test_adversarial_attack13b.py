"""Attack 13b (issue #19, #23) on what the morning of the ONNX cache digest, ``--engine ray --runtime onnx``, the
cache-folder helper, KerasHub's preset snapshot and the leaks set-aside brought. Each test failed before its fix:

- a Ray actor refusing with a featstore error other than ConfigError/DataError (the weights: WeightsError) reached the
  driver as Ray's ActorDiedError holding the worker's whole traceback;
- KerasHub's snapshot fell back to a symbolic link to the weights' *name* when no hard link could be made (another file
  system, protected hard links): a file swapped in for the load and swapped back before the re-hash was loaded and
  passed the check;
- a folder (or FIFO, link) at an ONNX cut's record name ``<key>.json`` was found only after the export, with "give a
  file name inside it, e.g. .../<key>.json/out", the fresh export left unrecorded;
- a damaged ``<store>.leaks.json`` was moved to ``.damaged`` and, when the new record could not be written, the error
  did not say where the old one went;
- an ensemble ``run.json`` naming one member thousands of times made each use read and verify it once per mention;
- a preset's weights replaced by a FIFO after hashing reached h5py; a worker's error message was cut at a line break;
- finite features too large for a fit's model (3e38) made ``predict`` blame the fit for the whole batch;
- a planted huge file under a thumbnail's name went into the report site whole;
- a store in a read-only folder: ``report``, ``similar --html`` and ``predict --runtime onnx`` stopped with "cannot make
  the cache folder" (no option moves it); they now use a temporary cache, with a note.

Synthetic stores and tiny models (32 px random-weight VGG16 cut at block2_pool; a 2-layer ViT preset)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import ConfigError, OutputError
from featstore.runs.files import BrokenRunError

from .conftest import TINY_CONFIG, ray_actor_died

# ============================================================ 1. a Ray actor's WeightsError: one line, not a traceback


def _read_only(monkeypatch, folder: Path):
    """Folders cannot be made under ``folder`` (os.mkdir raises EACCES there), as in a read-only folder for root;
    returns the real os.mkdir."""
    mkdir = os.mkdir

    def read_only(path, *a, **k):
        if str(_full(path, k.get("dir_fd"))).startswith(str(folder)):
            raise PermissionError(13, "Permission denied", str(path))
        return mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only)
    return mkdir


def _full(path, dir_fd: int | None) -> str:
    """``path`` as a full path, also when it is relative to a folder's descriptor (featstore.caches makes its folders
    with ``os.mkdir(name, dir_fd=...)``)."""
    return str(path) if dir_fd is None else os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)


def test_an_actor_refusing_its_weights_is_one_line_at_the_driver():
    ray = pytest.importorskip("ray")
    from featstore.errors import StoreError, WeightsError
    from featstore.extraction.ray import worker_errors

    def batches(error: Exception):
        raise error
        yield

    for kind in (WeightsError, StoreError, OutputError, ConfigError):
        message = f"weights file /w/vgg16.h5 on the worker has sha256 0123, not the driver's 4567 ({kind.__name__})"
        if kind is ConfigError:  # a store folder whose name holds a line break: the whole message, not its first line
            message = (
                "--runtime onnx: the worker cannot find the driver's ONNX file /data/a\nb/f.h5.cache/onnx/k.onnx; run"
            )
        with pytest.raises(kind) as err:
            list(worker_errors(ray, batches(ray_actor_died(ray, kind(message)))))
        assert str(err.value) == message


# ============================================================ 2. KerasHub's snapshot through a symbolic link
@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    """A 2-layer ViT preset folder (seeded random weights) and its backbone, saved once for the module."""
    pytest.importorskip("keras_hub")
    from tests.test_hub import save_presets

    return save_presets(tmp_path_factory.mktemp("presets"), ("vit",))["vit"]


@pytest.mark.parametrize("held", ["proc-fd", "copy"])  # Linux's /proc/self/fd, else (macOS) a copy
def test_a_weights_file_swapped_for_the_load_is_refused_when_no_hard_link_can_be_made(
    tmp_path, monkeypatch, vit_preset, held
):
    keras_hub = pytest.importorskip("keras_hub")
    import h5py

    from featstore.errors import WeightsError
    from featstore.models import hub
    from featstore.models.hub import HubSpec

    folder, backbone = shutil.copytree(vit_preset[0], tmp_path / "vit"), vit_preset[1]
    spec = HubSpec.from_model(str(folder))
    weights = folder / hub.WEIGHTS_FILE
    other = tmp_path / "other.weights.h5"  # the same layout, other numbers
    other.write_bytes(weights.read_bytes())
    with h5py.File(other, "r+") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size > 1 else None)
        f[names[0]][...] = np.asarray(f[names[0]]) + 1.0

    def no_hard_link(*a, **k):  # TMPDIR on another file system than the preset (tmpfs /tmp): EXDEV
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(hub.os, "link", no_hard_link)
    if held == "copy":
        isdir = os.path.isdir
        monkeypatch.setattr(hub.os.path, "isdir", lambda p: False if p == "/proc/self/fd" else isdir(p))
    real, loaded = keras_hub.models.Backbone.from_preset, []

    def swapped_for_the_load(preset, **kwargs):
        os.rename(weights, tmp_path / "kept.h5")
        shutil.copyfile(other, weights)
        try:
            built = real(preset, **kwargs)
            loaded.append(built)
        finally:
            os.replace(tmp_path / "kept.h5", weights)  # back before featstore hashes the name again
        return built

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", swapped_for_the_load)
    x = np.random.default_rng(0).normal(0, 1, (1, 32, 32, 3)).astype(np.float32)
    try:
        model, _ = spec.build(spec.default_size)
    except WeightsError as exc:  # refused: also right
        assert "model.weights.h5 changed while it was being loaded" in str(exc)
    else:  # built: from the weights featstore hashed, not the swapped-in file
        np.testing.assert_allclose(np.asarray(model(x)["tokens"]), np.asarray(backbone(x)), atol=1e-5)
    assert loaded
    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", real)
    model, _ = spec.build(spec.default_size)  # unchanged weights, still no hard link: built, the same model
    np.testing.assert_allclose(np.asarray(model(x)["tokens"]), np.asarray(backbone(x)), atol=1e-5)


def test_a_weights_file_replaced_by_a_fifo_before_the_build_is_refused_not_opened(tmp_path, vit_preset):
    pytest.importorskip("keras_hub")
    import threading

    from featstore.errors import WeightsError
    from featstore.models import hub
    from featstore.models.hub import HubSpec

    folder = shutil.copytree(vit_preset[0], tmp_path / "vit")
    spec = HubSpec.from_model(str(folder))
    weights = folder / hub.WEIGHTS_FILE
    weights.unlink()
    os.mkfifo(weights)

    def writer():  # opening a FIFO blocks until the other end opens: a reader that opened it gets EOF at once
        with open(weights, "wb"):
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(
            WeightsError,
            match="model.weights.h5 is now a FIFO \\(named pipe\\), not the regular file featstore looked at",
        ):
            spec.build(spec.default_size)
    finally:
        fd = os.open(weights, os.O_RDONLY | os.O_NONBLOCK)  # releases the writer when nothing opened the FIFO
        thread.join(5)
        os.close(fd)


# ============================================================ 3. something at the ONNX record's name
CUT = replace(TINY_CONFIG, layer="block2_pool")


@pytest.mark.parametrize("what", ["folder", "fifo", "link"])
def test_a_non_file_at_the_onnx_record_name_is_refused_before_exporting(tmp_path, monkeypatch, what):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from featstore.models import onnx_runtime
    from featstore.models.extractor import Extractor

    exports, real = [], onnx_runtime.export_cut
    monkeypatch.setattr(onnx_runtime, "export_cut", lambda *a, **k: exports.append(1) or real(*a, **k))
    keras = Extractor(CUT)
    cache = tmp_path / "f.h5.cache" / onnx_runtime.CACHE_FOLDER
    cache.mkdir(parents=True)
    record = cache / f"{onnx_runtime.cache_key([a['fingerprint'] for _, a in keras.outputs])}.json"
    if what == "folder":
        record.mkdir()
    elif what == "fifo":
        os.mkfifo(record)
    else:
        record.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(ConfigError) as err:
        keras.use_runtime("onnx", cache)
    assert f"the ONNX cache's record {record} is" in str(err.value) and "remove it" in str(err.value), err.value
    assert "give a file name inside it" not in str(err.value)
    assert exports == []  # refused before the export's seconds were spent


def test_predict_runtime_onnx_on_a_store_whose_folder_takes_no_cache_exports_for_the_process(
    tmp_path, monkeypatch, caplog
):
    """``predict --runtime onnx`` only reads the store; in a read-only folder ``<store>.cache/onnx`` cannot be made and
    it stopped with "cannot make the ONNX cache folder ...; or run with --runtime keras". The cut is now exported into a
    temporary folder for this process (checked as always), with a warning; a link there is still refused."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import logging

    from featstore.models import onnx_runtime
    from featstore.models.extractor import Extractor

    (tmp_path / "ro").mkdir()
    mkdir = _read_only(monkeypatch, tmp_path / "ro")
    with caplog.at_level(logging.WARNING, logger="featstore.models.onnx_runtime"):
        ex = Extractor(replace(CUT, runtime="onnx"), runtime_cache=tmp_path / "ro" / "f.h5.cache" / "onnx")
    assert ex.config.runtime == "onnx" and ex.runtime_file is None and 0 <= ex.runtime_max_abs_diff
    assert "the exported cut is not kept (cannot make the ONNX cache folder" in caplog.text, caplog.text
    assert not (tmp_path / "ro" / "f.h5.cache").exists()
    monkeypatch.setattr(os, "mkdir", mkdir)
    (tmp_path / "ro" / "f.h5.cache").symlink_to(tmp_path)
    with pytest.raises(OutputError, match="is a symbolic link"):
        onnx_runtime.start(ex, tmp_path / "ro" / "f.h5.cache" / "onnx")


# ============================================================ 4. the .damaged set-aside named when writing fails
def test_a_damaged_leaks_record_kept_aside_is_named_when_the_new_one_cannot_be_written(tmp_path, monkeypatch):
    from featstore.experiments.leaks import record as leaks_record
    from featstore.experiments.leaks.result import record_path

    class Report:  # what write_record reads of a LeakReport
        store, extractor, fingerprint, threshold, reference = tmp_path / "f.h5", "e", "f" * 64, 0.9, "train"
        counts, rows, commits, same_bytes, median = {"test": 0}, {"test": 2}, {"test": {}}, {}, 0.5
        within, near_within = {}, {}  # format 3 (attack 63 #10)
        calibration = type("Cal", (), {"as_dict": staticmethod(lambda: {"method": "given"})})

    path = record_path(Report.store)
    path.write_text("{not json")

    def full(*a, **k):
        raise OutputError(f"cannot write leaks record {path}: the disk is full; free some space. Nothing was written")

    monkeypatch.setattr(leaks_record, "write_text", full)
    with pytest.raises(OutputError) as err:
        leaks_record.write_record(Report())
    aside = path.with_name(path.name + ".damaged")
    assert aside.read_text() == "{not json" and not path.exists()
    assert str(aside) in str(err.value), err.value  # the user learns where the old record went


# ============================================================ 5. an ensemble record naming one member many times
def test_an_ensemble_record_naming_a_member_twice_is_broken_before_any_member_is_read(tmp_path, monkeypatch):
    """``featstore ensemble`` refuses a run named twice, but a ``run.json`` saying so was accepted: each use read and
    verified that member once per mention (50,000 mentions fit in a run.json of under 1 MB; the ensemble check added
    this morning reads each member's run.json again)."""
    from featstore import ensemble, fit, get_run
    from featstore.runs import kinds
    from tests.test_adversarial_attack3 import synthetic_store

    store, runs = synthetic_store(tmp_path / "f.h5"), tmp_path / "runs"
    members = [fit(store, clf, runs=runs)["id"] for clf in ("logreg", "knn")]
    ens = ensemble(members, store=store, runs=runs)
    record = runs / ens["id"] / "run.json"
    rec = json.loads(record.read_text())
    rec["members"], rec["weights"] = [members[0]] * 2000 + [members[1]], [1.0] * 2001
    record.write_text(json.dumps(rec))
    reads = []
    real = kinds.read_record_json
    monkeypatch.setattr(kinds, "read_record_json", lambda *a: reads.append(1) or real(*a))
    with pytest.raises(BrokenRunError, match=rf"{record}: .*{members[0]}.* more than once"):
        get_run(ens["id"], store, runs)
    assert len(reads) < 10


# ============================================================ 6. finite features too large for the fitted model
@pytest.mark.parametrize("clf", ["logreg", "svm"])
def test_predict_names_the_image_whose_finite_features_overflow_the_model(store, tmp_path, monkeypatch, clf):
    """This morning's fix names an image whose features are NaN or inf; one whose features are finite but huge (3e38,
    a float32 near its limit, as an overflowing backbone gives) still overflowed the run's scaler to inf, and the whole
    batch ended with "the model in run ... does not fit these features ... Fit the classifier again". That image now
    gets a row naming the extractor; the others are predicted."""
    from PIL import Image

    from featstore import fit, predict
    from featstore.runs import apply
    from tests.conftest import write_images

    runs = tmp_path / "runs"
    rid = fit(store, clf, runs=runs)["id"]
    images = tmp_path / "new"
    write_images(images, "x", {"a": 2})
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(images / "white.png")
    real = apply.rebuild_extractor

    def overflowing(*args, **kwargs):  # 3e38 (finite) for an all-white image
        ex = real(*args, **kwargs)

        def features(x):
            out = np.array(ex(x), dtype=np.float32)
            out[(x == 255).reshape(len(x), -1).all(axis=1)] = 3e38
            return out

        return features

    monkeypatch.setattr(apply, "rebuild_extractor", overflowing)
    rows = {os.path.basename(r["path"]): r for r in predict(rid, [images], store=store, runs=runs)}
    assert len(rows) == 3 and rows["white.png"]["label"] == "", rows
    why = rows["white.png"]["error"]
    assert "gave features this run's model cannot use for this image (largest |feature| 3e+38" in why, why
    assert all(r["label"] and not r["error"] for n, r in rows.items() if n != "white.png"), rows


def test_a_model_refusing_features_of_a_usual_size_is_still_the_runs_fault(store, tmp_path, monkeypatch):
    """The other side of the overflow rule: a model that refuses one image's ordinary features (damaged, crafted) is
    not excused by the extractor; predict ends with the run's own message, as before."""
    from PIL import Image

    from featstore import fit, predict
    from featstore.runs import artifacts
    from tests.conftest import write_images

    runs = tmp_path / "runs"
    rid = fit(store, "logreg", runs=runs)["id"]
    images = tmp_path / "new"
    write_images(images, "x", {"a": 2})
    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(images / "white.png")
    real, seen = artifacts.checked_proba, []

    def damaged_on_one_row(est, X, k, run_id):  # refuses the first row it is given alone after the batch
        seen.append(len(X))
        if len(seen) in (1, 2):
            raise BrokenRunError(f"the model in run {run_id} gives NaN ...; it was altered. Fit the classifier again.")
        return real(est, X, k, run_id)

    monkeypatch.setattr(artifacts, "checked_proba", damaged_on_one_row)
    with pytest.raises(BrokenRunError, match="Fit the classifier again"):
        predict(rid, [images], store=store, runs=runs)


# ============================================================ 7. a planted huge "thumbnail" in the cache
def test_a_cached_thumbnail_over_its_bound_is_made_again_never_put_into_a_site(tmp_path):
    """The thumbnail cache read a cached file's bytes with a bound for ``similar --html`` only: the report hard-linked
    (or, across file systems, copied) whatever regular file had the thumbnail's name into its site, a planted
    multi-gigabyte file included. A cached file over the bound is now made again."""
    from PIL import Image

    from featstore.report.site import thumbs

    src = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src)
    cache = thumbs.ThumbCache(tmp_path / "f.h5.cache" / "thumbs")
    key = cache.make([str(src)])[str(src)].key
    with open(cache.path(key), "r+b") as fh:  # 64 MiB, sparse
        fh.truncate(64 << 20)
    again = thumbs.ThumbCache(tmp_path / "f.h5.cache" / "thumbs")
    thumb = again.make([str(src)])[str(src)]
    site = tmp_path / "site"
    site.mkdir()
    name = again.export(thumb, site)
    assert (site / name).stat().st_size <= thumbs.MAX_THUMB_BYTES and again.made == 1


# ============================================================ 8. a store in a folder where no cache can be made
def test_a_report_of_a_store_whose_folder_takes_no_cache_is_made_with_a_note(tmp_path, monkeypatch):
    """``report`` now makes ``<store>.cache`` (and refuses a link there) before any work; in a folder the user cannot
    write (a shared, read-only dataset) that ended the report with "cannot make the cache folder ...: write to another
    folder", which no option allows (the cache's place follows the store). The report is now made with its caches in a
    temporary folder, removed after, and a note saying so; a link there is still refused."""
    from featstore.outputs import cache_dir
    from featstore.report.site.build import build_report
    from tests.test_adversarial_attack3 import synthetic_store

    (tmp_path / "ro").mkdir()
    store = synthetic_store(tmp_path / "ro" / "f.h5")
    mkdir = os.mkdir

    def read_only(path, *a, **k):  # (the suite runs as root, for whom chmod 555 does not stop mkdir)
        if _full(path, k.get("dir_fd")).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(path))
        return mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only)
    result = build_report(store, out=tmp_path / "site", map_method="pca")
    assert (tmp_path / "site" / "index.html").is_file() and not cache_dir(store).exists()
    assert any("caches are not kept" in n and "cannot make" in n for n in result.notes), result.notes
    scratch = Path(tempfile.gettempdir()) / f"featstore-{os.geteuid()}"  # its scratch folder (models/scratch.py)
    assert not list(scratch.glob(f"report-{os.getpid()}-*"))


def test_similar_html_of_a_store_whose_folder_takes_no_cache_is_written(tmp_path, monkeypatch):
    """``similar --html`` on the same store: "cannot make the thumbnail cache"; its thumbnails now go through a
    temporary cache, removed after the page is written (they are inlined into it)."""
    import io

    from PIL import Image

    from tests.leaks_stores import write_split
    from tests.test_adversarial_attack2 import cli, no_traceback

    def png(i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    (tmp_path / "ro").mkdir()
    store = tmp_path / "ro" / "f.h5"
    X = np.random.default_rng(0).normal(0, 1, (6, 4)).astype(np.float32)
    names = [f"train/{i}.png" for i in range(6)]
    write_split(
        store, "s", "train", X, np.array([0, 1] * 3), names, tmp_path / "ro" / "data", [png(i) for i in range(6)]
    )
    _read_only(monkeypatch, tmp_path / "ro")
    page = tmp_path / "similar.html"
    r = cli("similar", "--store", store, "--split", "train", "-k", "2", "--exact", "--html", page, "train/0.png")
    out = no_traceback(r)
    assert r.exit_code == 0 and page.read_text().count("data:image/png;base64,") >= 3, out
    assert not Path(f"{store}.cache").exists()
