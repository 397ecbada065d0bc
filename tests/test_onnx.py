"""--runtime onnx: the cut exported once to ONNX, cached beside the store, checked against Keras at start-up; recorded
per split, not fingerprinted. One tiny VGG16 (32 px, random weights) cut at block2_pool is exported once for the whole
module: the same conv, ReLU and pooling ops as the default cut at block5_pool with under 2% of its weights, so an export
takes a fraction of a second, not several (the tests that export again on purpose stay cheap)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from featstore import ConfigError, FeatureStore, StoreError, extract  # noqa: E402
from featstore.models import onnx_runtime  # noqa: E402
from featstore.models.extractor import Extractor  # noqa: E402

from .conftest import TINY_CONFIG, interrupt_after_one_batch, write_data_root  # noqa: E402
from .test_cli import run  # noqa: E402

# block2_pool: (8, 8, 128) features; tf2onnx's export time grows with the weights it folds in (measured: 0.3 s here,
# 7 s for TINY_CONFIG's whole conv base)
CUT = replace(TINY_CONFIG, layer="block2_pool")
ONNX = replace(CUT, runtime="onnx")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """The tiny images; the train split extracted with Keras and with ONNX Runtime (exported once), and the exports counted."""
    root = tmp_path_factory.mktemp("onnx")
    data = write_data_root(root / "data")
    exports, real = [], onnx_runtime.export_cut
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_runtime, "export_cut", lambda *a, **k: exports.append(1) or real(*a, **k))
        keras_run = extract(data, "train", root / "keras.h5", CUT, batch_size=5)
        onnx_run = extract(data, "train", root / "onnx.h5", ONNX, batch_size=5)
    return {"data": data, "root": root, "keras": keras_run, "onnx": onnx_run, "exports": exports}


@pytest.fixture
def counted(monkeypatch) -> list:
    """Every export from now on, counted (each one still runs)."""
    calls, real = [], onnx_runtime.export_cut
    monkeypatch.setattr(onnx_runtime, "export_cut", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def with_cache(made: dict, tmp_path: Path) -> Path:
    """A new store path whose ``.cache/`` is a copy of the module's (the export already made)."""
    shutil.copytree(made["root"] / "onnx.h5.cache", tmp_path / "f.h5.cache")
    return tmp_path / "f.h5"


def cached_files(store: Path) -> list[Path]:
    """The exported files in a store's cache (each with its record, ``<key>.json``, beside it)."""
    files = sorted((Path(f"{store}.cache") / onnx_runtime.CACHE_FOLDER).iterdir())
    assert sorted(f.stem for f in files if f.suffix == ".json") == sorted(f.stem for f in files if f.suffix != ".json")
    return [f for f in files if f.suffix != ".json"]


def test_onnx_features_equal_keras_within_tolerance_same_rows_same_fingerprint(made):
    k, o = made["keras"], made["onnx"]
    assert made["exports"] == [1] and len(cached_files(made["root"] / "onnx.h5")) == 1
    assert o.runtime == "onnx" and 0 <= o.runtime_max_abs_diff and k.runtime_max_abs_diff is None
    a, b = FeatureStore(made["root"] / "keras.h5"), FeatureStore(made["root"] / "onnx.h5")
    assert o.fingerprint == k.fingerprint == b.metadata()["fingerprint"]  # the features the fingerprint describes
    assert a.paths("train") == b.paths("train") and (o.rows, o.failed) == (k.rows, k.failed) == (12, 0)
    (xa, ya), (xb, yb) = a.load("train")[:2], b.load("train")[:2]
    np.testing.assert_array_equal(ya, yb)
    assert 0 < np.abs(xa).max() and np.abs(xa - xb).max() <= onnx_runtime.ONNX_TOLERANCE * np.abs(xa).max()


def test_the_runtime_is_recorded_per_split(made):
    with h5py.File(made["root"] / "onnx.h5", "r") as f, h5py.File(made["root"] / "keras.h5", "r") as g:
        assert f["vgg16/train"].attrs["runtime"] == "onnx" and g["vgg16/train"].attrs["runtime"] == "keras"
        assert "runtime" not in f["vgg16"].attrs  # extractor attributes (fingerprinted) do not name it


def test_the_cached_export_is_reused_and_keyed_by_the_exporter_version(made, tmp_path, counted, monkeypatch):
    store = with_cache(made, tmp_path)
    extract(made["data"], "validation", store, ONNX)
    assert counted == [] and len(cached_files(store)) == 1  # loaded, checked, not exported again
    monkeypatch.setattr(onnx_runtime, "exporter_version", lambda: "tf2onnx 99")
    extract(made["data"], "test", store, ONNX)
    assert counted == [1] and len(cached_files(store)) == 2  # another exporter: another file


def test_a_mismatch_beyond_the_tolerance_is_refused_before_any_row(made, tmp_path, monkeypatch):
    store = with_cache(made, tmp_path)
    monkeypatch.setattr(onnx_runtime, "ONNX_TOLERANCE", -1.0)  # any difference, even 0, is over it
    with pytest.raises(
        ConfigError, match=r"ONNX Runtime's vgg16 differs from Keras's by up to .* Run with --runtime keras$"
    ):
        extract(made["data"], "validation", store, ONNX)
    assert not store.exists()  # refused before the store was made


def test_a_session_output_that_differs_is_refused(made, tmp_path):
    (cached,) = cached_files(made["root"] / "onnx.h5")
    keras_pass = Extractor(CUT)
    session = onnx_runtime.OnnxForward(cached.read_bytes(), 1)
    ok = onnx_runtime.check_agreement(keras_pass._prepare, keras_pass._forward, session, 32, "vgg16")
    assert 0 <= ok <= onnx_runtime.ONNX_TOLERANCE
    with pytest.raises(ConfigError, match="refusing to write features that would not match the fingerprint"):
        onnx_runtime.check_agreement(keras_pass._prepare, keras_pass._forward, lambda x: session(x) * 1.01, 32, "vgg16")


def test_an_export_failure_stops_the_cli_in_one_line_naming_keras(made, tmp_path, monkeypatch):
    import keras

    def fails(self, *args, **kwargs):
        raise ValueError("Required inputs (['normalization/Sub/y:0']) are missing\nsecond line")

    monkeypatch.setattr(keras.Model, "export", fails)
    store = tmp_path / "f.h5"
    r = run("extract", "--data", made["data"], "--store", store, "--model", "vgg16", "--image-size", "32",
            "--weights", "none", "--split", "train", "--runtime", "onnx")  # fmt: skip
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: --runtime onnx: vgg16 could not be exported to ONNX (Required inputs")
    assert lines[-1].endswith("). Run with --runtime keras") and "second line" not in r.output
    assert not store.exists() and list((tmp_path / "f.h5.cache" / "onnx").iterdir()) == []  # no half-written file


def test_a_graph_with_constants_as_inputs_is_refused(made):
    import onnx
    from onnx import TensorProto, helper

    x, c = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 2]) for n in ("x", "mean"))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Sub", ["x", "mean"], ["y"])], "g", [x, c], [y])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(data)
    with pytest.raises(ConfigError, match=r"has 2 input\(s\) .* graph inputs: mean\); .* Run with --runtime keras"):
        onnx_runtime.OnnxForward(data, 1)


def test_a_resume_with_another_runtime_is_refused_both_sides_shown(made, tmp_path, monkeypatch):
    store = with_cache(made, tmp_path)
    interrupt_after_one_batch(monkeypatch, made["data"], "train", store, CUT, batch_size=4)
    with pytest.raises(StoreError) as err:
        extract(made["data"], "train", store, ONNX, batch_size=4)
    msg = str(err.value)
    assert "was started with --runtime keras (runtime='keras' in Python) and this run is with --runtime onnx" in msg
    assert "Resume it with --runtime keras" in msg and "--overwrite (overwrite=True)" in msg
    assert FeatureStore(store).split_info("train")["committed_rows"] == 4  # untouched
    r = extract(made["data"], "train", store, ONNX, batch_size=4, overwrite=True)  # the fix it names
    assert r.rows == 12 and FeatureStore(store).split_info("train")["runtime"] == "onnx"


def test_a_complete_split_is_not_redone_and_nothing_is_exported(made, tmp_path, counted):
    store = tmp_path / "f.h5"
    shutil.copy2(made["root"] / "keras.h5", store)
    assert extract(made["data"], "train", store, ONNX).skipped and counted == []  # stores are interchangeable
    assert not Path(f"{store}.cache").exists()


def test_a_linked_cache_file_is_refused(made, tmp_path):
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    target = tmp_path / "elsewhere.onnx"
    cached.rename(target)
    cached.symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link, which featstore does not follow; remove it"):
        extract(made["data"], "validation", store, ONNX)
    assert cached.is_symlink() and not store.exists()


def test_a_fifo_cache_file_is_refused_without_blocking(made, tmp_path):
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    cached.unlink()
    os.mkfifo(cached)  # opening it for a blocking read would hang the run
    with pytest.raises(ConfigError, match="is not a regular file; remove it"):
        extract(made["data"], "validation", store, ONNX)


def test_a_recorded_cache_file_onnx_runtime_cannot_load_is_exported_again_with_a_warning(
    made, tmp_path, counted, caplog
):
    """Its record says featstore wrote these bytes (another onnxruntime cannot load them, say); a file changed behind
    its record is the planted cases' below."""
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    cached.write_bytes(b"not an onnx model")
    record(cached, b"not an onnx model")
    with caplog.at_level(logging.WARNING, logger="featstore.models.onnx_runtime"):
        r = extract(made["data"], "validation", store, ONNX)
    assert r.rows == 6 and counted == [1] and cached.stat().st_size > 1000
    assert any("is exported again: --runtime onnx: ONNX Runtime cannot run vgg16" in m for m in caplog.messages)
    assert onnx_runtime.unrecorded(cached, cached.read_bytes()) is None  # the new export is recorded


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"runtime": "tensorrt"}, "runtime 'tensorrt'.*keras, onnx"),
        ({"runtime": "onnx", "mixed_precision": True}, "--runtime onnx computes in float32"),
        ({"runtime": "onnx", "jit": True}, "--jit compiles the Keras forward pass; --runtime onnx runs another one"),
    ],
)
def test_bad_runtime_requests_are_refused_before_any_work(made, tmp_path, kwargs, message):
    jit = kwargs.pop("jit", False)
    with pytest.raises(ConfigError, match=message):
        extract(made["data"], "train", tmp_path / "f.h5", replace(TINY_CONFIG, **kwargs), jit=jit)
    assert not (tmp_path / "f.h5").exists()


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "_importable", lambda m: m != "onnxruntime")
    with pytest.raises(
        ConfigError, match=r'needs onnxruntime, which is not installed: pip install "featstore\[onnx\]"'
    ):
        onnx_runtime.check_runtime("onnx")


def test_the_thread_setting_is_checked(monkeypatch):
    monkeypatch.setenv(onnx_runtime.THREADS_ENV, "3")
    assert onnx_runtime.default_threads() == 3
    monkeypatch.setenv(onnx_runtime.THREADS_ENV, "0")
    with pytest.raises(ConfigError, match="FEATSTORE_ONNX_THREADS must be a whole number of threads, at least 1"):
        onnx_runtime.default_threads()


def test_several_layers_pooled_and_stored_as_float16_in_one_pass(made, tmp_path):
    config = replace(TINY_CONFIG, layers=("block1_pool", "block2_pool"), pooling="avg", dtype="float16")
    plain = extract(made["data"], "validation", tmp_path / "k.h5", config)
    r = extract(made["data"], "validation", tmp_path / "o.h5", replace(config, runtime="onnx"))
    assert r.extractors == plain.extractors == ["vgg16@block1_pool", "vgg16@block2_pool"]
    for name in r.extractors:
        a, b = FeatureStore(tmp_path / "k.h5"), FeatureStore(tmp_path / "o.h5")
        xa, xb = a.load("validation", name)[0], b.load("validation", name)[0]
        assert xb.dtype == np.float16 and xa.shape == xb.shape
        assert a.metadata(name)["fingerprint"] == b.metadata(name)["fingerprint"]
        assert np.abs(xa.astype(np.float32) - xb).max() <= 1e-3 * np.abs(xa).max()  # float16's own rounding


# ---- the cache holds only what featstore wrote: a file that agrees on the 4 check images is not enough ----


def record(cached: Path, data: bytes) -> None:
    """Rewrite ``cached``'s record (``<key>.json``) to say this user's featstore wrote ``data`` (signed with the key)."""
    from featstore.keys import sign, user_key

    rec = json.loads(onnx_runtime.record_path(cached).read_text())
    rec |= {"sha256": hashlib.sha256(data).hexdigest(), "hmac": sign(user_key(), "onnx", cached.name, data)}
    onnx_runtime.record_path(cached).write_text(json.dumps(rec))


def perturbed_off_the_check_batch(data: bytes, lo: float, hi: float) -> bytes:
    """The exported cut plus ``relu(lo - m) + relu(m - hi)`` on every feature, where ``m`` is the image's mean input:
    the same features for images whose mean lies in ``[lo, hi]`` (the 4 seeded check images), others elsewhere."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    g = model.graph
    out = g.output[0].name
    for node in g.node:  # the real cut now ends at "real"; the planted tail writes the graph's output
        node.output[:] = ["real" if o == out else o for o in node.output]
        node.input[:] = ["real" if i == out else i for i in node.input]
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    consts = {"lo": lo, "hi": hi}
    if opset >= 18:  # ReduceMean's axes became an input
        mean = helper.make_node("ReduceMean", [g.input[0].name, "axes"], ["m"], keepdims=1)
        g.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    else:
        mean = helper.make_node("ReduceMean", [g.input[0].name], ["m"], axes=[1, 2, 3], keepdims=1)
    g.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items())
    g.node.extend(
        [
            mean,
            helper.make_node("Sub", ["lo", "m"], ["below"]),
            helper.make_node("Sub", ["m", "hi"], ["above"]),
            helper.make_node("Relu", ["below"], ["below_r"]),
            helper.make_node("Relu", ["above"], ["above_r"]),
            helper.make_node("Add", ["below_r", "above_r"], ["off"]),
            helper.make_node("Add", ["real", "off"], [out]),
        ]
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def planted(made) -> bytes:
    """A cut that passes the start-up check and gives other features on the dataset's images (checked here)."""
    (cached,) = cached_files(made["root"] / "onnx.h5")
    keras_pass = Extractor(CUT)
    check = keras_pass._prepare(onnx_runtime.seeded_images(onnx_runtime.ONNX_CHECK_ROWS, 32)).mean(axis=(1, 2, 3))
    # (widened a little: ONNX Runtime's ReduceMean sums in another order than numpy)
    data = perturbed_off_the_check_batch(cached.read_bytes(), float(check.min()) - 1e-3, float(check.max()) + 1e-3)
    session = onnx_runtime.OnnxForward(data, 1)
    onnx_runtime.check_agreement(keras_pass._prepare, keras_pass._forward, session, 32, "vgg16")  # passes: no error
    from featstore import load_image

    images = np.stack([load_image(p, 32) for p in sorted((made["data"] / "train").glob("*/*"))])
    x = keras_pass._prepare(images)
    assert np.abs(session(x) - keras_pass._forward(x)).min() > 1  # every feature of every image is off
    return data


@pytest.mark.parametrize("how", ["replaced", "unrecorded", "linked-record"])
def test_a_planted_cut_that_passes_the_check_is_exported_again(made, tmp_path, counted, caplog, planted, how):
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    cached.write_bytes(planted)  # "replaced": the record still names the bytes featstore wrote
    if how == "unrecorded":
        onnx_runtime.record_path(cached).unlink()
    if how == "linked-record":  # a record featstore did not write, at least not there
        onnx_runtime.record_path(cached).unlink()
        (tmp_path / "rec.json").write_text("{}")
        onnx_runtime.record_path(cached).symlink_to(tmp_path / "rec.json")
        with pytest.raises(ConfigError, match=r"\.json is a symbolic link, which featstore does not follow"):
            extract(made["data"], "validation", store, ONNX)
        return
    with caplog.at_level(logging.WARNING, logger="featstore.models.onnx_runtime"):
        r = extract(made["data"], "train", store, ONNX)
    assert counted == [1] and r.rows == 12
    why = "its HMAC does not verify" if how == "replaced" else "no record"
    assert any(f"is exported again: {why}" in m for m in caplog.messages), caplog.messages
    xa, xb = FeatureStore(made["root"] / "keras.h5").load("train")[0], FeatureStore(store).load("train")[0]
    assert np.abs(xa - xb).max() <= onnx_runtime.ONNX_TOLERANCE * np.abs(xa).max()
    assert cached.read_bytes() != planted and onnx_runtime.unrecorded(cached, cached.read_bytes()) is None


def test_a_ray_actor_runs_the_drivers_file_verified_by_its_digest_and_never_exports(
    made, tmp_path, counted, monkeypatch
):
    from featstore.extraction.ray import Forward

    monkeypatch.setenv("FEATSTORE_VERBOSE", "1")  # Forward hides TensorFlow's lines in its own process; not here
    (cached,) = cached_files(made["root"] / "onnx.h5")
    driver = Extractor(ONNX, runtime_cache=cached.parent)
    assert driver.runtime_file == (str(cached), hashlib.sha256(cached.read_bytes()).hexdigest()) and counted == []
    fingerprints = [a["fingerprint"] for _, a in driver.outputs]
    actor = Forward(driver.config, False, 4, fingerprints, 0, 1, driver.runtime_file)
    assert counted == [] and actor.ex.runtime_file == driver.runtime_file and actor.ex.config.runtime == "onnx"
    assert 0 <= actor.ex.runtime_max_abs_diff <= onnx_runtime.ONNX_TOLERANCE
    with pytest.raises(
        ConfigError, match=r"read the driver's ONNX file .* not the 0000000000000000 the driver checked"
    ):
        onnx_runtime.load_exported(driver, str(cached), "0" * 64)  # what Forward runs (no Keras build per case)
    with pytest.raises(ConfigError, match=r"cannot find the driver's ONNX file .*nowhere\.onnx; the store's folder"):
        onnx_runtime.load_exported(driver, str(tmp_path / "nowhere.onnx"), "0" * 64)
    with pytest.raises(ConfigError, match="on Ray needs the driver's checked file; none was given"):
        Forward(driver.config, False, 4, fingerprints, 0, 1)
    assert counted == []
