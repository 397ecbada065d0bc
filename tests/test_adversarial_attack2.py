"""An independent attack on the newest surfaces (runs compare/show/evaluate, ensembles, report, similar, outputs):
one test per problem found, each failing before its fix. Run folders here are copies of two runs fitted once on a
small synthetic store, then edited as an attacker (or a damaged disk) would edit them.
"""

from __future__ import annotations

import json
import shutil
import traceback
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.store import writer


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def no_traceback(result) -> str:
    """The output of a CLI call that ended by itself or with one line (never an uncaught exception)."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return result.output


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A synthetic store of 3 classes (noisy, so runs differ) and a logreg and a knn run; returns (store, runs)."""
    root = tmp_path_factory.mktemp("attack2")
    store = root / "s.h5"
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 8)).astype(np.float32)
    for split, n in (("train", 60), ("validation", 30), ("test", 30)):
        y = np.repeat(np.arange(3), n // 3).astype(np.int32)
        X = centers[y] + np.random.default_rng(zlib.crc32(split.encode())).normal(0, 1.5, (n, 8))
        writer.write_arrays(store, "s", split, X.astype(np.float32), y, ["a", "b", "c"])
    runs = root / "runs"
    a = fit(store, "logreg", runs=runs)["id"]
    b = fit(store, "knn", runs=runs)["id"]
    return store, runs, a, b


@pytest.fixture
def runs_copy(two_runs, tmp_path):
    """A private copy of the two runs: (store, runs folder, logreg id, knn id)."""
    store, runs, a, b = two_runs
    return store, Path(shutil.copytree(runs, tmp_path / "runs")), a, b


def edit_record(folder: Path, change) -> None:
    p = folder / "run.json"
    obj = json.loads(p.read_text())
    change(obj)
    p.write_text(json.dumps(obj))


# ------------------------------------------------------------------ crafted run.json: calibration and metrics
@pytest.mark.parametrize("t", [5e-324, 1e-310])
def test_temperature_that_gives_nan_probabilities_is_refused(runs_copy, t):
    """A finite positive T so small that logits / T overflow gave NaN probabilities: `runs compare` then declared a
    66-point win between two runs of equal accuracy (argmax of NaN is 0), and evaluate/ensemble raised a traceback."""
    store, runs, a, b = runs_copy
    edit_record(runs / a, lambda o: o.update(calibration={"method": "temperature", "T": t, "input": "probabilities"}))
    for args in (
        ("runs", "compare", a, b),
        ("runs", "evaluate", a, "--split", "test"),
        ("ensemble", a, b),
        ("runs", "show", a),
    ):
        r = cli(*args[:1], "--store", store, "--runs", runs, *args[1:]) if args[0] == "ensemble" else None
        r = r or cli("runs", "--store", store, "--runs", runs, *args[1:])
        out = no_traceback(r)
        assert r.exit_code == 1, (args, out)
        assert "calibration" in out and "run.json" in out and a in out, (args, out)
    listing = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert "broken" in listing and a in listing.split("broken")[1]


@pytest.mark.parametrize(
    "change",
    [
        {"accuracy": 5.0},
        {"accuracy": float("nan")},
        {"accuracy": -0.5},
        {"macro_f1": float("inf")},
        {"n": -3},
    ],
    ids=["accuracy-5", "accuracy-nan", "accuracy-negative", "macro_f1-inf", "n-negative"],
)
def test_headline_metrics_out_of_range_make_the_run_broken(runs_copy, change):
    """accuracy, macro_f1 and n were only type-checked: NaN was listed as 'nan', and an accuracy of 5 made `runs
    compare` end in matplotlib's traceback ('yerr' must not contain negative values)."""
    store, runs, a, b = runs_copy
    edit_record(runs / a, lambda o: o["metrics"]["test"].update(change))
    listing = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert "broken" in listing and "metrics" in listing, listing
    r = cli("runs", "--store", store, "--runs", runs, "compare", a, b)
    assert r.exit_code == 1 and "run.json" in no_traceback(r)


def test_compare_chart_with_an_interval_that_misses_its_accuracy(runs_copy):
    """A recorded accuracy interval that does not contain the accuracy (hand-edited, or another estimator's) gave
    negative error bars, and `runs compare` died in matplotlib; the chart now draws the bar and clips the bar's
    error at zero."""
    store, runs, a, b = runs_copy

    def change(o):
        acc = o["metrics"]["test"]["accuracy"]
        o["metrics"]["test"]["accuracy_ci"] = {"estimate": acc, "low": 0.0, "high": acc / 2, "level": 0.95}

    edit_record(runs / a, change)
    r = cli("runs", "--store", store, "--runs", runs, "compare", a, b, "--out", runs / "c.png")
    assert r.exit_code == 0, no_traceback(r)
    assert (runs / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ crafted folders beside the store
def _index_folder(store: Path) -> Path:
    r = cli("similar", "--store", store, "--split", "train", "--build-index", "-k", "2", "train/0")
    assert r.exit_code == 0 or "neither" in r.output, no_traceback(r)
    (folder,) = [p.parent for p in Path(f"{store}.index").rglob("index.json")]
    return folder


@pytest.fixture
def store_copy(two_runs, tmp_path):
    store = Path(shutil.copy2(two_runs[0], tmp_path / "s.h5"))
    return store


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(feature_dims="abc"),
        lambda m: m.update(rows=None),
        lambda m: m.update(dims=[1]),
        lambda m: m.update(commit=[1]),
        lambda m: m.update(feature_dims=10**12, dims=10**12),
    ],
    ids=["dims-string", "rows-null", "dims-list", "commit-list", "dims-huge"],
)
def test_crafted_similarity_index_json_is_one_line(store_copy, change):
    """index.json's sizes were passed to int() outside the try and its commit was assumed a dict: `similar` ended in
    ValueError, TypeError or AttributeError tracebacks."""
    folder = _index_folder(store_copy)
    meta = json.loads((folder / "index.json").read_text())
    change(meta)
    (folder / "index.json").write_text(json.dumps(meta))
    r = cli("similar", "--store", store_copy, "--split", "train", "--index", "-k", "2", "train/0")
    out = no_traceback(r)
    assert r.exit_code == 1 and "--build-index" in out, out


def test_similarity_index_model_zip_bomb_is_refused_unread(store_copy):
    """model.npz was read with np.load: a member declaring 12 GB of float32 (a few MB of deflated zeros) was
    allocated and unpacked before any check. It is now checked like a run folder's zips before anything is unpacked."""
    import io
    import zipfile

    folder = _index_folder(store_copy)
    with np.load(folder / "model.npz") as z:
        keep = {k: z[k] for k in ("components", "pca_mean")}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (3_000_000_000,)})
    with zipfile.ZipFile(folder / "model.npz", "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in keep.items():
            b = io.BytesIO()
            np.save(b, v)
            z.writestr(f"{k}.npy", b.getvalue())
        with z.open("mean.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            for _ in range(8):
                fh.write(b"\0" * (1 << 24))  # 128 MiB of zeros in about 130 KB
    r = cli("similar", "--store", store_copy, "--split", "train", "--index", "-k", "2", "train/0")
    out = no_traceback(r)
    assert r.exit_code == 1 and "model.npz" in out and "--build-index" in out, out


def test_crafted_map_cache_rows_are_not_used(store_copy):
    """The report's cached map layout (features.h5.cache/maps/*.npz) was trusted for its sampled rows: a row index
    past the split's end ended `featstore report` in IndexError. A layout is reused only for exactly the rows
    sampled now."""
    from featstore.experiments.projection import project

    cache = Path(f"{store_copy}.cache") / "maps"
    first = project(store_copy, max_rows=50, method="pca", cache=cache)
    (path,) = cache.glob("*.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["rows_0"] = arrays["rows_0"].copy()
    arrays["rows_0"][0] = 10**9
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    again = project(store_copy, max_rows=50, method="pca", cache=cache)
    assert not again.cached and all(np.array_equal(again.sample[s], first.sample[s]) for s in first.sample)
    r = cli("report", "--store", store_copy, "--no-leaks", "--map-method", "pca", "--out", store_copy.parent / "site")
    assert r.exit_code == 0, no_traceback(r)


# ------------------------------------------------------------------ names from files printed to a terminal
HOSTILE = ["\x1b]0;owned\x07cat", "d\u202eog", "fox\x1b[2J"]  # a title escape, a bidi override, a clear-screen


def test_run_reports_escape_class_and_extractor_names(tmp_path):
    """`info` escaped class names, but the run reports printed them raw: `fit`, `runs show`, `runs evaluate`, `runs
    compare`, `runs` and `sweep` sent a store's escape sequences and bidi overrides to the terminal."""
    store = tmp_path / "s.h5"
    rng = np.random.default_rng(1)
    name = "x\x1b[31m"
    for split, n in (("train", 30), ("validation", 15), ("test", 15)):
        y = np.repeat(np.arange(3), n // 3).astype(np.int32)
        writer.write_arrays(store, "x", split, (rng.normal(0, 1, (n, 4)) + y[:, None]).astype(np.float32), y, HOSTILE)
    with h5py.File(store, "a") as f:  # a crafted store's group name (write_arrays refuses it, as extract does)
        f.move("x", name)
    runs = tmp_path / "runs"
    outputs = [cli("fit", "--store", store, "--runs", runs, "--clf", "knn")]
    rid = json.loads(no_traceback(cli("runs", "--store", store, "--runs", runs, "--json")))["runs"][0]["id"]
    outputs += [
        cli("runs", "--store", store, "--runs", runs),
        cli("runs", "--store", store, "--runs", runs, "show", rid),
        cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "train"),
        cli("sweep", "--store", store, "--runs", runs, "--clf", "knn", "--png", tmp_path / "s.png"),
    ]
    for r in outputs:
        out = no_traceback(r)
        assert r.exit_code == 0, out
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out, out


# ------------------------------------------------------------------ outputs onto the store
def test_outputs_never_replace_the_store(two_runs, tmp_path):
    """`export` refused --out naming the store, but `leaks --out features.h5`, `similar --html features.h5` and
    `predict --out` replaced the store with a CSV or a page (each through a clean atomic rename: the store was gone).
    Every output now refuses an existing HDF5 file."""
    store = Path(shutil.copy2(two_runs[0], tmp_path / "s.h5"))
    other = Path(shutil.copy2(two_runs[0], tmp_path / "other.h5"))
    before = store.read_bytes()
    for args in (
        ("leaks", "--store", store, "--out", store),
        ("leaks", "--store", store, "--out", other),
        ("similar", "--store", store, "--split", "train", "-k", "2", "--exact", "--html", store, "train/0"),
        ("export", "--store", store, "--split", "test", "--out", other, "--format", "csv"),
    ):
        r = cli(*args)
        out = no_traceback(r)
        assert r.exit_code == 1 and ("HDF5" in out or "store itself" in out), (args, out)
    assert store.read_bytes() == before and other.read_bytes() == before
