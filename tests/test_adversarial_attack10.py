"""Tenth attack (issue #19, "outputs safe, inputs bounded"): the run record's ``streamed``/``memory_budget`` fields,
many-class confusion matrices, charts named inside an image folder, split folders that are one folder. Each test
failed before its fix. Stores are synthetic (``writer.write_arrays``), so no test imports TensorFlow unless it says so.
"""

from __future__ import annotations

import json

import pytest

from featstore import fit
from tests.test_adversarial_attack3 import synthetic_store, tiny_pngs
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A synthetic store and one logreg run in its default runs folder: (store, runs, run id)."""
    root = tmp_path_factory.mktemp("a10")
    store = synthetic_store(root / "f.h5")
    return store, root / "f.runs", fit(store, "logreg")["id"]


def _edit(folder, **changes) -> None:
    p = folder / "run.json"
    obj = json.loads(p.read_text())
    obj.update(changes)
    p.write_text(json.dumps(obj))


# ------------------------------------------------------------------ run.json: streamed and memory_budget
@pytest.mark.parametrize(
    "changes",
    [
        {"streamed": True, "memory_budget": None},
        {"streamed": True, "memory_budget": 10**400},
        {"streamed": True, "memory_budget": -5},
        {"streamed": False, "memory_budget": 0},
    ],
    ids=["none", "huge", "negative", "zero"],
)
def test_a_crafted_memory_budget_is_a_broken_run_not_a_traceback(one_run, tmp_path, changes):
    """run.json's ``memory_budget`` was only type-checked (an int or null): ``streamed: true`` with a null budget
    ended ``runs show`` in "TypeError: '<' not supported between 'NoneType' and 'int'", a budget of 10**400 in
    "OverflowError: int too large to convert to float", and -5 printed "streamed within -5 bytes"."""
    import shutil

    store, runs, rid = one_run
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    _edit(copy / rid, **changes)
    out = no_traceback(cli("runs", "--store", store, "--runs", copy, "show", rid))
    assert "memory_budget" in out and "remove the folder" in out, out
    listed = no_traceback(cli("runs", "--store", store, "--runs", copy))
    assert "broken" in listed, listed


# ------------------------------------------------------------------ many classes: never a dense K x K matrix
MANY = 5000  # classes: a dense int64 confusion matrix of them is 200 MB (and as much again as a Python list)


def _peak(call) -> int:
    """Bytes Python and numpy allocated at most while ``call()`` ran a second time (the first imports what it needs)."""
    import tracemalloc

    call()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_many_classes_never_make_a_dense_confusion_matrix(monkeypatch):
    """Every split's figures started from scikit-learn's dense ``confusion_matrix(...).tolist()`` (``fit``,
    ``ensemble``, ``runs evaluate``, ``sweep``), and ``runs compare A B`` of a split a run holds without metrics from
    a dense ``np.zeros((K, K))``: with 4,000 classes and 80 rows a logreg fit took 24 s and 1.2 GB (now 2 s and 0.4 GB,
    mostly imports); a crafted store of 30,000 classes asked for 7 GB. Only the non-zero cells are counted now, and
    the record is the same (its rows up to 100 classes, its cells beyond)."""
    import numpy as np

    from featstore.experiments.compare import _bare
    from featstore.experiments.evaluate import metrics
    from featstore.stats import figures
    from featstore.stats.figures import dense_confusion

    monkeypatch.setattr(figures, "_CELLS_PER_CHUNK", 100_000)  # the bootstrap's own work arrays: 2.4 MB, not 100 MB
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 6, 40), rng.integers(0, 6, 40)
    proba = np.full((40, MANY), 1e-6)
    proba[np.arange(40), pred] = 1.0
    proba /= proba.sum(axis=1, keepdims=True)
    names = [f"c{i}" for i in range(MANY)]
    for call in (lambda: metrics(y, pred, names, proba), lambda: _bare(y, proba.argmax(axis=1), MANY)):
        peak = _peak(call)
        assert peak < 48 * 2**20, f"{peak / 2**20:.0f} MiB"
        cm = call()["confusion_matrix"]
        assert cm["shape"] == [MANY, MANY] and dense_confusion(cm)[:6, :6].sum() == 40
    few = metrics(y, pred, names[:6], proba[:, :6])["confusion_matrix"]
    assert few == np.bincount(y * 6 + pred, minlength=36).reshape(6, 6).tolist()


def test_a_many_class_store_fits_ensembles_and_compares(tmp_path):
    """The same through the commands, on a store of 2,000 classes (rows in 4): each ends with its runs listed."""
    import numpy as np

    from featstore.store import writer

    store = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    names = [f"c{i:04d}" for i in range(2000)]
    for split, n in (("train", 40), ("validation", 20), ("test", 20)):
        y = (np.arange(n) % 4).astype(np.int32)
        writer.write_arrays(store, "s", split, (rng.normal(0, 1, (n, 8)) + y[:, None]).astype(np.float32), y, names)
    a, b = (fit(store, clf)["id"] for clf in ("logreg", "knn"))
    p = store.with_suffix(".runs") / a / "run.json"
    obj = json.loads(p.read_text())
    del obj["metrics"]["validation"]  # a split stored without its figures: runs compare computes them
    p.write_text(json.dumps(obj))
    assert "error" not in no_traceback(cli("ensemble", a, b, "--store", store))
    assert "error" not in no_traceback(cli("runs", "--store", store, "compare", a, b))
    assert "broken" not in no_traceback(cli("runs", "--store", store))


# ------------------------------------------------------------------ a chart named inside an image folder
@pytest.mark.parametrize("option", ["compare", "leaks", "probe"])
def test_a_new_chart_is_never_written_into_an_image_folder_of_the_store(tmp_path, option):
    """A chart under a new name inside an image folder the store was extracted from (``runs compare --out
    data/train/a/chart.png``, ``leaks --png``, ``probe --png``, ``sweep --png``, ``fewshot --png``) was written there
    without a word: the next extract of that split (a resume, ``--overwrite``, ``--augment``) took it for an image of
    class a. Attack 9 only refused replacing an existing image."""
    import h5py

    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"]}})
    store = synthetic_store(tmp_path / "f.h5")
    with h5py.File(store, "a") as f:  # as extract records it: the data folder the split's paths are relative to
        f["s"]["train"].attrs["source_root"] = str(data.resolve())
    fit(store, "logreg")
    chart = data / "train" / "a" / "chart.png"
    command = {
        "compare": ("runs", "--store", store, "compare", "--out", chart),
        "leaks": ("leaks", "--store", store, "--png", chart),
        "probe": ("probe", "--store", store, "--runs", tmp_path / "r", "--png", chart),
    }[option]
    out = no_traceback(cli(*command))
    assert "image folder" in out and "'train'" in out, out
    assert not chart.exists()
    beside = tmp_path / "chart.png"  # outside the dataset: written as before
    assert "image folder" not in no_traceback(cli(*command[:-1], beside))


def test_a_report_site_is_never_made_inside_an_image_folder(tmp_path):
    """``report --out data/train/site`` made the site's folder of PNG thumbnails and charts inside the split folder:
    the next extract listed ``site`` as a new class of the dataset (its thumbnails as its images)."""
    import h5py

    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"]}})
    store = synthetic_store(tmp_path / "f.h5")
    with h5py.File(store, "a") as f:
        f["s"]["train"].attrs["source_root"] = str(data.resolve())
    out = no_traceback(cli("report", "--store", store, "--out", data / "train" / "site"))
    assert "image folder" in out and "'train'" in out, out
    assert not (data / "train" / "site").exists()


# ------------------------------------------------------------------ --memory-budget: the NaN/inf check's blocks
def test_the_nonfinite_check_of_a_streamed_fit_reads_within_the_budget(tmp_path, monkeypatch):
    """A streamed fit (``fit --memory-budget``, and ``finetune --memory-budget``'s streamed cache) checked the
    validation and test splits (the cache's streamed splits) for NaN/inf rows in blocks of the default 64 MiB, not a
    quarter of the budget: with ``--memory-budget 256MB`` the check alone held 64 MiB of features and a 16 MiB mask
    per block, with 8 kB it read the whole split at once."""
    import numpy as np

    from featstore import FeatureStore
    from featstore.store import writer

    monkeypatch.setattr(writer, "CHUNK_BYTES", 256)  # 8 rows of 8 float32 a chunk
    store = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    for split, n in (("train", 240), ("validation", 160), ("test", 160)):
        y = (np.arange(n) % 3).astype(np.int32)
        writer.write_arrays(
            store, "s", split, (rng.normal(0, 1, (n, 8)) + y[:, None]).astype(np.float32), y, list("abc")
        )
    asked = []
    real = FeatureStore.iter_batches
    monkeypatch.setattr(
        FeatureStore, "iter_batches", lambda self, *a, **kw: asked.append(kw.get("max_bytes")) or real(self, *a, **kw)
    )
    budget = 4096  # under every split's 5,120 bytes and more
    rec = fit(store, "sgd", memory_budget=budget, runs=tmp_path / "runs")
    assert rec["streamed"] and asked
    assert all(m is not None and m <= budget for m in asked), sorted(set(asked), key=str)


def test_the_nonfinite_check_of_a_streamed_finetune_cache_reads_within_the_budget(tmp_path, monkeypatch):
    """The same for ``finetune --memory-budget``: the streamed cache's NaN/inf check read 64 MiB blocks (imports
    TensorFlow: VGG16 at 32 px with random weights, 8/4 images)."""
    pytest.importorskip("tensorflow")
    from featstore import ExtractorConfig, FeatureStore, extract
    from featstore.experiments.finetune import FinetuneConfig, finetune
    from featstore.store import writer
    from tests.conftest import write_images

    data, store = tmp_path / "data", tmp_path / "f.h5"
    for split, n, seed in (("train", 4, 1), ("validation", 2, 2), ("test", 2, 3)):
        write_images(data, split, {"cat": n, "dog": n}, seed=seed)
    for split in ("train", "validation", "test"):
        extract(data, split, store, ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7))
    dense = fit(store, "dense", {"epochs": [1], "units": [8]})["id"]
    monkeypatch.setattr(writer, "CHUNK_BYTES", 8192)  # the cut (2, 2, 512) float32 is 8 KiB a row: one row a chunk
    asked = []
    real = FeatureStore.iter_batches
    monkeypatch.setattr(
        FeatureStore, "iter_batches", lambda self, *a, **kw: asked.append(kw.get("max_bytes")) or real(self, *a, **kw)
    )
    cfg = FinetuneConfig("block5_conv2", epochs=1, batch_size=3, lr=1e-3, memory_budget="40KB")
    assert finetune(dense, cfg, store=store)["streamed"] and asked
    assert all(m is not None and m <= 40_000 for m in asked), sorted(set(asked), key=str)


# ------------------------------------------------------------------ a split replaced while it is read block by block
@pytest.mark.parametrize("rows", [64, 40], ids=["same-count", "fewer"])
@pytest.mark.parametrize("reader", ["iter_batches", "load"])
def test_a_split_replaced_while_read_in_blocks_is_refused_not_mixed(tmp_path, monkeypatch, rows, reader):
    """The store is opened once per block (so writers are not held up), but nothing checked that the split was still
    the one the first block came from: a split re-extracted with ``--overwrite`` by another process while a streamed
    fit, ``finetune --memory-budget`` or a predict read it gave 16 old rows then the new ones (64 rows: a silent mix;
    40: 40 rows of two versions, which ``stream_predict`` accepted as the split), and a run recorded figures of both."""
    import numpy as np

    from featstore import FeatureStore
    from featstore.errors import StoreError
    from featstore.store import writer

    store = tmp_path / "f.h5"
    n = 128 if reader == "load" else 64  # load reads blocks of 64 chunks: 1-row chunks make two
    monkeypatch.setattr(writer, "CHUNK_BYTES", 32 if reader == "load" else 256)  # rows of 8 float32: 1 or 8 a chunk
    y = (np.arange(n) % 2).astype(np.int32)
    writer.write_arrays(store, "s", "test", np.zeros((n, 8), np.float32), y, ["a", "b"])
    fs = FeatureStore(store)

    def replace():  # another process's `extract --overwrite` of the split, between two openings
        writer.write_arrays(store, "s", "test", np.ones((rows, 8), np.float32), y[:rows], ["a", "b"])

    if reader == "load":
        real, opened = FeatureStore._open, []
        monkeypatch.setattr(
            FeatureStore, "_open", lambda self: opened.append(1) or (len(opened) == 2 and replace()) or real(self)
        )
        with pytest.raises(StoreError, match="replaced while"):
            fs.load("test", "s")
        return
    blocks = fs.iter_batches("test", "s", max_bytes=512)
    first, _ = next(blocks)
    assert (first == 0).all()
    replace()
    with pytest.raises(StoreError, match="replaced while"):
        list(blocks)


def test_stream_predict_never_overruns_the_rows_it_allocated(tmp_path, monkeypatch):
    """``stream_predict`` allocated its (N, K) array from ``split_info(...)["committed_rows"]`` read again after the
    first block: when that count was smaller than the rows the blocks gave (the split changed in between, or the
    record lies), filling it ended in numpy's "could not broadcast" ValueError traceback instead of one line."""
    from featstore import FeatureStore
    from featstore.errors import StoreError
    from featstore.experiments.classifiers import build_classifier
    from featstore.experiments.streaming import stream_predict

    store = synthetic_store(tmp_path / "f.h5")
    fs = FeatureStore(store)
    X, y = fs.load("train", "s")
    est = build_classifier("sgd", {}).fit(X, y)
    real, calls = FeatureStore.split_info, []

    def lying(self, *a, **kw):
        info = dict(real(self, *a, **kw))
        calls.append(1)
        info["committed_rows"] = int(info["committed_rows"]) - 5 * (len(calls) == 3)  # smaller once, as the read goes
        return info

    monkeypatch.setattr(FeatureStore, "split_info", lying)
    with pytest.raises(StoreError, match="while predicting"):
        stream_predict(est, fs, "s", "test", 10**6, 3)  # the store's 15 test rows come in one block


# ------------------------------------------------------------------ --memory-budget: a size past float's range
@pytest.mark.parametrize("command", ["fit", "finetune"])
def test_a_memory_budget_past_floats_range_is_one_line(one_run, command):
    """``--memory-budget 1000...000TB`` (400 zeros: a float's inf) ended in "OverflowError: cannot convert float
    infinity to integer" (``fit``; ``finetune`` the same while checking its options), a traceback."""
    from featstore.errors import ConfigError
    from featstore.units import parse_bytes

    huge = "1" + "0" * 400 + "TB"
    with pytest.raises(ConfigError, match="--memory-budget"):
        parse_bytes(huge)
    store, _, rid = one_run
    args = (
        ("fit", "--store", store)
        if command == "fit"
        else ("finetune", "--run", rid, "--unfreeze-from", "x", "--store", store)
    )
    out = no_traceback(cli(*args, "--memory-budget", huge))
    assert "--memory-budget" in out and "error" in out.lower(), out


# ------------------------------------------------------------------ a store made inside the image folder it reads
@pytest.mark.parametrize("where", ["train/f.h5", "train/a/f.h5"])
def test_a_store_is_never_made_inside_the_image_folder_it_reads(tmp_path, where):
    """``extract --data data --split train --store data/train/f.h5`` made the store there, so its runs folder
    ``data/train/f.runs`` (with the charts ``runs show`` draws) was listed by the next extract of train as a class
    "f.runs" of four chart "images" (8 rows of 3 classes instead of 4 of 2), and a report's thumbnails the same."""
    from featstore import ConfigError, ExtractorConfig, extract

    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["1.png", "2.png"], "b": ["3.png"]}})
    store = data / where
    with pytest.raises(ConfigError, match="inside the image folder"):
        extract(data, "train", store, ExtractorConfig(model="vgg16", image_size=32, weights="none"))
    assert not store.exists()


def test_a_runs_folder_is_never_made_inside_an_image_folder_of_the_store(tmp_path):
    """``fit --runs data/train/runs`` (ensemble, finetune, probe, fewshot the same) made the runs folder inside the
    split's image folder: the next extract of train listed ``runs`` as a class, the charts ``runs show`` draws into
    each run folder as its images."""
    import h5py

    from featstore.errors import OutputError

    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"]}})
    store = synthetic_store(tmp_path / "f.h5")
    with h5py.File(store, "a") as f:
        f["s"]["train"].attrs["source_root"] = str(data.resolve())
    with pytest.raises(OutputError, match="image folder of split 'train'"):
        fit(store, "logreg", runs=data / "train" / "runs")
    assert not (data / "train" / "runs").exists()
    out = no_traceback(cli("fit", "--store", store, "--runs", data / "train" / "a" / "runs"))
    assert "image folder" in out and not (data / "train" / "a" / "runs").exists(), out
