"""Ninth attack (issue #19, "outputs safe, inputs bounded"): outputs named inside run folders, runs folders and image
folders, crafted run.json confusion matrices, ``extract --split`` names, the listing digest. Each test failed before
its fix. Stores are synthetic (``writer.write_arrays``), so no test imports TensorFlow unless it says so.
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
    root = tmp_path_factory.mktemp("a9")
    store = synthetic_store(root / "f.h5")
    return store, root / "f.runs", fit(store, "logreg")["id"]


# ------------------------------------------------------------------ outputs named inside a run folder
def test_an_output_never_replaces_a_file_of_a_run(one_run):
    """``predict --out f.runs/<id>/run.json`` (and ``export --out f.runs/<id>/predictions.npz``, ``leaks --out``)
    replaced the run's own files with a table: the run was listed as broken afterwards, its record lost."""
    store, runs, rid = one_run
    record = runs / rid / "run.json"
    before = record.read_bytes(), (runs / rid / "predictions.npz").read_bytes()
    for command in (
        ("predict", "--run", rid, "--store", store, "--out", record, store),
        ("export", "--store", store, "--split", "train", "--out", runs / rid / "predictions.npz"),
        ("leaks", "--store", store, "--out", record),
    ):
        out = no_traceback(cli(*command))
        assert "run folder" in out and str(runs / rid) in out, (command, out)
    assert (record.read_bytes(), (runs / rid / "predictions.npz").read_bytes()) == before
    assert no_traceback(cli("runs", "--store", store)).count("broken") == 0


def test_export_shards_are_never_written_into_a_runs_folder(one_run):
    """``export --rows-per-file 10 --out f.runs/shards`` made a shard folder inside the runs folder: ``featstore runs``
    then listed it as a broken run ("no run.json") and every later command warned about it."""
    pytest.importorskip("pyarrow")
    store, runs, _ = one_run
    out = no_traceback(cli("export", "--store", store, "--split", "train", "--rows-per-file", "10",
                           "--out", runs / "shards"))  # fmt: skip
    assert "runs folder" in out and not (runs / "shards").exists(), out


# ------------------------------------------------------------------ a chart onto an image of the dataset
@pytest.mark.parametrize("option", ["compare", "leaks", "probe"])
def test_a_chart_never_replaces_an_image_that_featstore_did_not_draw(one_run, tmp_path, option):
    """``runs compare --out data/train/a/x.png`` (``leaks --png``, ``probe --png``, ``sweep --png``, ``fewshot
    --png``) replaced one of the dataset's images with a chart without a word: the next extract trained on it."""
    store, runs, rid = one_run
    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"]}})
    image = data / "train" / "a" / "x.png"
    before = image.read_bytes()
    command = {
        "compare": ("runs", "--store", store, "compare", "--out", image),
        "leaks": ("leaks", "--store", store, "--png", image),
        "probe": ("probe", "--store", store, "--runs", tmp_path / "r", "--png", image),
    }[option]
    out = no_traceback(cli(*command))
    assert "image" in out and "not drawn by featstore" in out, out
    assert image.read_bytes() == before
    # a chart featstore drew is still replaced
    chart = tmp_path / "chart.png"
    no_traceback(cli("runs", "--store", store, "compare", "--out", chart))
    again = no_traceback(cli(*command[:-1], chart))
    assert "not drawn by featstore" not in again, again


# ------------------------------------------------------------------ a changed listing digest with no changed file
def test_a_listing_digest_that_differs_with_no_changed_file_says_why():
    """When a split's recorded listing digest differed from today's but ``diff`` found no added, removed or changed
    file (the same files listed in another order, or a damaged record), the refusal read "the images of split
    'train' changed since ...: 0 added, 0 removed, 0 changed. Re-extract it with --overwrite", naming no cause."""
    from pathlib import Path

    from featstore.errors import StoreError
    from featstore.images.listing import ImageListing
    from featstore.provenance import refuse_changed_listing

    listing = ImageListing(Path("data"), "train", ["a", "b"], [("train/a/1.png", 0), ("train/b/2.png", 1)],
                           sizes=[10, 20], mtimes_ns=[1, 2])  # fmt: skip
    same = listing.entries()
    for stored, cause in ((same, "damaged"), (same[::-1], "another order")):
        with pytest.raises(StoreError) as err:
            refuse_changed_listing("0" * 64, listing, lambda s=stored: s, "train", "x", "f.h5")
        assert "0 added, 0 removed, 0 changed" not in str(err.value) and cause in str(err.value), str(err.value)


# ------------------------------------------------------------------ runs evaluate across stores made from arrays
def test_runs_evaluate_never_calls_another_arrays_store_the_same_images(one_run, tmp_path):
    """Two stores written by ``write_arrays`` (their listing digest is only ``arrays:<rows>``, their paths are row
    numbers) sharing one runs folder: ``runs evaluate <run> --store other.h5`` said "already recorded in run ... (the
    same images)" although the other store's rows are other features (another accuracy was printed above it)."""
    import numpy as np

    from featstore.store import writer

    store, runs, rid = one_run
    other = tmp_path / "other.h5"
    rng = np.random.default_rng(7)
    for split in ("train", "validation", "test"):
        y = np.repeat(np.arange(3), 5).astype(np.int32)
        writer.write_arrays(other, "s", split, rng.normal(0, 1, (15, 8)).astype(np.float32), y, ["a", "b", "c"])
    out = no_traceback(cli("runs", "--store", other, "--runs", runs, "evaluate", rid, "--split", "test"))
    # since attack 16 each split records its rows' digest: the other store's rows are told apart as such
    assert "the same images" not in out and "not recorded" in out and "evaluated on other images" in out, out


# ------------------------------------------------------------------ a planted leak-pairs cache
def test_a_planted_leak_pairs_cache_cannot_make_report_show_any_file(tmp_path):
    """``report`` took the pairs and their folders from ``<store>.cache/leaks-<key>.json`` as found (the key is a
    hash of the leaks record, which anyone who can read the store can compute): a planted file made the report
    thumbnail and publish any image on the machine (``/home/me/private.png``) as a "leak"."""

    from featstore import FeatureStore
    from featstore.report.site.storeview import leak_view
    from tests.leaks_stores import eight_and_two

    store = eight_and_two(tmp_path)
    cache = tmp_path / "cache"
    honest = leak_view(FeatureStore(store), "s", cache, "")
    assert honest.pairs and not honest.note
    (planted,) = cache.glob("leaks-*.json")
    secret = tmp_path / "private" / "me.png"
    found = json.loads(planted.read_text())
    found["roots"] = {"test": str(secret.parent), "train": str(secret.parent)}
    found["pairs"] = [["test", "me.png", "../private/me.png", 1.0, True, True]]
    planted.write_text(json.dumps(found))
    view = leak_view(FeatureStore(store), "s", cache, "")
    shown = {p for pair in view.pairs for p in (pair.query_source, pair.reference_source)}
    assert shown == {p for pair in honest.pairs for p in (pair.query_source, pair.reference_source)}, shown


# ------------------------------------------------------------------ report of a run with many classes
def test_report_draws_no_grid_of_a_run_with_too_many_classes(tmp_path):
    """``report`` built the dense K x K confusion matrix of every run whatever K: a run.json of 30,000 class names
    with one sparse cell (a few hundred KB, accepted by ``featstore runs``) asked for a 6.7 GiB matrix (a MemoryError
    traceback under a 4 GiB limit, else 900 million table cells); the grid and cell galleries are now drawn up to
    1,000 classes, and the page says why there is none."""
    import resource
    import subprocess
    import sys

    store = synthetic_store(tmp_path / "f.h5")
    rid = fit(store, "logreg")["id"]
    record = tmp_path / "f.runs" / rid / "run.json"
    rec = json.loads(record.read_text())
    k = 30_000
    rec["class_names"] = [f"c{i}" for i in range(k)]
    for m in rec["metrics"].values():
        m["confusion_matrix"] = {"shape": [k, k], "cells": [[0, 0, m["n"]]]}
    record.write_text(json.dumps(rec))
    assert rid in no_traceback(cli("runs", "--store", store))  # listed: the record itself is valid

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "featstore.cli", "report", "--store", str(store), "--map-method", "pca",
         "--map-rows", "20"], capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    page = (tmp_path / "f.report" / "runs" / f"{rid}.html").read_text()
    assert "30000 classes is not drawn" in page


# ------------------------------------------------------------------ crafted confusion-matrix counts in run.json
@pytest.mark.parametrize("count", [10**20, -5, 7])
@pytest.mark.parametrize("packed", [False, True])
def test_confusion_counts_out_of_range_or_not_summing_to_n_mark_the_run_broken(tmp_path, count, packed):
    """run.json's confusion-matrix counts were only checked to be integers not negative: a count of 10**20 made
    ``runs show`` and ``report`` end in numpy's OverflowError traceback (the listing called the run fine), a count
    that no longer summed to the split's ``n`` gave figures of other rows, and a negative count was blamed on "n"."""
    store = synthetic_store(tmp_path / "f.h5")
    rid = fit(store, "logreg")["id"]
    record = tmp_path / "f.runs" / rid / "run.json"
    rec = json.loads(record.read_text())
    m = rec["metrics"]["test"]
    for key in ("accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1_ci"):
        m.pop(key)  # figures that `runs show` then computes from the matrix
    m["confusion_matrix"][0][0] = count if count != 7 else m["confusion_matrix"][0][0] + count
    if packed:
        k = len(m["confusion_matrix"])
        cells = [[i, j, c] for i, row in enumerate(m["confusion_matrix"]) for j, c in enumerate(row) if c]
        m["confusion_matrix"] = {"shape": [k, k], "cells": cells}
    record.write_text(json.dumps(rec))
    for command in (("runs", "--store", store), ("runs", "--store", store, "show", rid)):
        out = no_traceback(cli(*command))
        assert "confusion_matrix" in out and "summing to n" in out, out


def test_report_never_makes_its_site_inside_another_stores_runs_folder(one_run, tmp_path):
    """``report --out`` inside the store's own runs folder was refused, but not inside another store's (or a
    ``--runs`` folder the command was not given): ``featstore runs`` of that store then listed the site as a broken
    run ("run.json is missing ... Remove it and fit again")."""
    store, runs, _ = one_run
    mine = synthetic_store(tmp_path / "mine.h5")
    out = no_traceback(
        cli("report", "--store", mine, "--out", runs / "site", "--map-method", "pca", "--map-rows", "20")
    )
    assert "runs folder" in out and not (runs / "site").exists(), out


# ------------------------------------------------------------------ similar --html onto an image or a run's record
def test_similar_html_never_replaces_an_image_or_a_runs_record(one_run, tmp_path):
    """``similar --html`` was checked only for links, FIFOs, folders and stores: ``--html data/train/a/x.png``
    replaced one of the dataset's images with a web page, ``--html f.runs/<id>/run.json`` the run's record."""
    import numpy as np

    from tests.leaks_stores import blob, write_split

    _, runs, rid = one_run
    store = tmp_path / "s.h5"
    X = np.random.default_rng(0).normal(0, 1, (6, 4)).astype(np.float32)
    write_split(store, "s", "train", X, np.array([0, 1] * 3), [f"train/{i}.png" for i in range(6)], tmp_path / "d",
                [blob(i) for i in range(6)])  # fmt: skip
    image = tiny_pngs(tmp_path / "data", {"train": {"a": ["x.png"]}}) / "train" / "a" / "x.png"
    for target in (image, runs / rid / "run.json"):
        before = target.read_bytes()
        out = no_traceback(cli("similar", "train/0.png", "--store", store, "-k", "2", "--html", target))
        assert "--html" in out and ("image" in out or "run folder" in out), out
        assert target.read_bytes() == before


# ------------------------------------------------------------------ runs show of a run with many classes
def _limited(*args: str):
    """A featstore command in a process of at most 4 GiB of address space: (returncode, stderr)."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    done = subprocess.run([sys.executable, "-m", "featstore.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_runs_show_never_makes_a_dense_matrix_of_many_classes(tmp_path):
    """``runs show`` made each split's K x K matrix dense, to compute the figures a run lacks and to draw it: a run of
    30,000 classes (here crafted: one-row-per-class predictions, a packed matrix, run.json's sha256 rewritten) ended in
    a MemoryError traceback asking for 6.7 GiB. Figures now come from the non-zero cells, and no matrix is drawn
    beyond 2,000 classes."""
    import hashlib

    import numpy as np

    store = synthetic_store(tmp_path / "f.h5")
    rid = fit(store, "logreg")["id"]
    folder = tmp_path / "f.runs" / rid
    rec = json.loads((folder / "run.json").read_text())
    k = 30_000
    rec["class_names"] = [f"c{i}" for i in range(k)]
    for m in rec["metrics"].values():
        m["confusion_matrix"] = {"shape": [k, k], "cells": [[0, 0, m["n"]]]}
        for key in ("accuracy_ci", "balanced_accuracy", "balanced_accuracy_ci", "macro_f1_ci"):
            m.pop(key)
    arrays = {}
    for split, info in rec["predictions"].items():
        proba = np.zeros((info["n"], k), np.float32)
        proba[:, 0] = 1
        arrays[f"{split}__proba"], arrays[f"{split}__labels"] = proba, np.zeros(info["n"], np.int64)
    np.savez(folder / "predictions.npz", **arrays)
    rec["predictions_sha256"] = hashlib.sha256((folder / "predictions.npz").read_bytes()).hexdigest()
    (folder / "run.json").write_text(json.dumps(rec))
    code, out = _limited("runs", "--store", store, "show", rid, "--json")
    assert code == 0 and "Traceback" not in out, out[-2000:]
    shown = json.loads(out[out.index("{") :])
    assert shown["metrics"]["test"]["balanced_accuracy"] == 1.0 and not any("confusion_" in p for p in shown["pngs"])
