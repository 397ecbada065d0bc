"""Attack round 12 (issue #19, "every file featstore writes is safe to open, every input it reads is bounded"), on the
newest code: ``predict --runtime onnx`` and the ONNX cache in ``<store>.cache/onnx/``. Each test failed on the code
before its fix. ONNX cuts planted in the cache are tiny graphs built with ``onnx.helper`` (no export needed); the
extractor is VGG16 at 32 pixels with random weights.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from featstore import ConfigError  # noqa: E402
from featstore.errors import OutputError  # noqa: E402
from featstore.models import onnx_runtime  # noqa: E402
from featstore.models.agreement import largest_difference  # noqa: E402

from .conftest import TINY_CONFIG  # noqa: E402

FEATURES = 512  # TINY_CONFIG's (1, 1, 512) rows


def cut_onnx(value: float = 1.0, double_rows: bool = False) -> bytes:
    """A planted "cut": (N, 32, 32, 3) -> (N, 1, 1, 512), each feature ``value`` times the image's mean; with
    ``double_rows`` the batch's rows come twice (2N rows)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["m", "v"], ["mv"]),
        helper.make_node("Expand", ["mv", "shape"], ["y0"]),
        helper.make_node("Concat", ["y0", "y0"], ["y"], axis=0)
        if double_rows
        else helper.make_node("Identity", ["y0"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(value, np.float32), "v"),
        numpy_helper.from_array(np.array([1, 1, 1, FEATURES], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 32, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 1, FEATURES])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def extractor():
    """TINY_CONFIG's extractor, run with Keras."""
    from featstore.models.extractor import Extractor

    return Extractor(TINY_CONFIG)


# ============================================================ 1. a NaN-emitting cut passed the start-up check
def test_an_onnx_cut_whose_features_are_nan_fails_the_start_up_check(extractor):
    """A cut planted at the cache's name whose every feature is NaN passed the check against Keras (Python's
    ``max(0.0, nan)`` is 0.0): ``extract --runtime onnx`` stored NaN features with a warning, and ``predict --runtime
    onnx`` blamed the run ("altered or damaged after the fit ... Fit the classifier again"). It must fail the check,
    so the cached file is exported again."""
    assert largest_difference(np.full((2, 3), np.nan), np.ones((2, 3)))[0] == float("inf")
    assert largest_difference(np.full((2, 3), np.nan), np.full((2, 3), np.nan)) == (0.0, 0.0)  # Keras's own NaN
    with pytest.raises(ConfigError, match="differs from Keras"):
        onnx_runtime._open_checked(extractor, cut_onnx(np.nan), 1, where="the cached model x.onnx")


# ============================================================ 2. a cut returning other rows stopped extract half-way
def test_an_onnx_cut_returning_other_rows_than_images_is_one_message(extractor):
    """A cut returning its batch's rows twice passed the check (only the first rows were compared), and a cut that does
    so only for batches over the check's four rows cannot be caught at start-up at all: extract then stopped half-way
    with h5py's "Can't broadcast (12, 1, 1, 512) -> (6, 1, 1, 512)" traceback. Each batch's rows are checked."""
    assert largest_difference(np.ones((1, 3)), np.ones((2, 3)))[0] == float("inf")  # fewer rows than the batch
    forward = onnx_runtime.OnnxForward(
        cut_onnx(double_rows=True), 1, 1, where="the cached model f.h5.cache/onnx/k.onnx"
    )
    with pytest.raises(ConfigError, match=r"f\.h5\.cache/onnx/k\.onnx returned 6 rows for a batch of 3 images"):
        forward(np.zeros((3, 32, 32, 3), np.float32))
    with pytest.raises(ConfigError):
        onnx_runtime._open_checked(extractor, cut_onnx(double_rows=True), 1)


# ============================================================ 3. a file where the cache folder goes: a traceback
@pytest.mark.parametrize("where", ["f.h5.cache", "f.h5.cache/onnx"])
def test_a_file_in_place_of_the_onnx_cache_folder_is_one_message(extractor, tmp_path, where):
    """``<store>.cache/onnx`` (or ``<store>.cache``) being a file made ``predict``/``extract --runtime onnx`` end in
    ``FileExistsError`` from ``mkdir(exist_ok=True)``, a traceback. One message naming the file."""
    (tmp_path / "f.h5.cache").mkdir()
    if where == "f.h5.cache":
        (tmp_path / "f.h5.cache").rmdir()
    (tmp_path / where).write_text("not a folder")
    with pytest.raises(OutputError, match=f"{where} is not a folder; move it away"):
        onnx_runtime.start(extractor, tmp_path / "f.h5.cache" / "onnx")
    assert (tmp_path / where).read_text() == "not a folder"


# ============================================================ 4. predict with no store wrote the cut beside it
def test_predict_with_the_onnx_runtime_writes_no_cache_beside_a_store_that_is_not_there(store, tmp_path, monkeypatch):
    """``predict --runtime onnx --store data/test/cat/x.h5 --runs RUNS`` (a store that is not there) exported the cut
    into ``data/test/cat/x.h5.cache/onnx/``: a 58 MB file inside the images it predicted on. With no store there is no
    cut extract left; it is exported into a temporary folder, not kept."""
    from featstore import fit, predict
    from featstore.outputs import cache_dir

    runs = tmp_path / "runs"
    rec = fit(store, "logreg", {}, runs=runs)
    images = store.parent / "data" / "test"
    seen = []

    def fake_start(ex, cache, threads=None):  # the cache folder it was given; the Keras pass stands in for ONNX's
        seen.append(cache)
        return ex._keras_forward, 0.0

    monkeypatch.setattr(onnx_runtime, "start", fake_start)
    missing = tmp_path / "nowhere.h5"
    rows = predict(rec["id"], [images], store=missing, runs=runs, runtime="onnx")
    assert len(rows) == 15 and seen == [None]
    assert not (tmp_path / "nowhere.h5.cache").exists()
    predict(rec["id"], [images], store=store, runs=runs, runtime="onnx")  # honest input: the store's own cache
    assert seen[-1] == cache_dir(store) / "onnx"


# ============================================================ 5. a weights file declaring arrays it does not store
def test_a_weights_file_declaring_arrays_it_does_not_store_is_refused_before_keras_reads_it(
    vgg16_weights_file, tmp_path
):
    """An HDF5 array declared huge but never written takes no bytes on disk and reads as its fill value: a 58 MB
    VGG16 ``--weights`` file whose first kernel declared 500M floats took 8 GB of memory before Keras said the shape
    did not fit (1.5G floats ran a 23 GB machine out of memory). A preset folder's ``model.weights.h5`` was counted by
    what it stores but then loaded the same way. Both are refused before Keras reads them."""
    import shutil

    import h5py

    from featstore import ExtractorConfig
    from featstore.errors import WeightsError
    from featstore.models.extractor import Extractor
    from featstore.models.preset_json import check_sizes

    path = shutil.copy(vgg16_weights_file, tmp_path / "crafted.weights.h5")
    with h5py.File(path, "a") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        kernel = next(n for n in names if n.endswith("vars/0"))  # block1_conv1's kernel
        del f[kernel]
        f.create_dataset(kernel, shape=(50_000_000,), dtype="float32")  # 200 MB declared, nothing stored
    with pytest.raises(WeightsError, match="declare 200,000,000 bytes more than the file stores"):
        Extractor(ExtractorConfig(model="vgg16", image_size=32, weights=str(path)))
    with pytest.raises(ConfigError, match="more than the file stores"):  # a preset's sizes within what it holds
        check_sizes({"hidden_dim": 8, "num_layers": 1}, tmp_path / "config.json", path, 512, "a preset")
    Extractor(ExtractorConfig(model="vgg16", image_size=32, weights=str(vgg16_weights_file)))  # honest: unchanged
