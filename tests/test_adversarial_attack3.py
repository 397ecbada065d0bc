"""A third, independent attack (files others open, output paths, bounded inputs, silently wrong data, tracebacks):
one test per problem found, each failing before its fix. Stores are synthetic (``writer.write_arrays``) or a few
tiny PNGs extracted with VGG16's random weights at 32 px.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.store import writer
from tests.test_adversarial_attack2 import cli, no_traceback


def synthetic_store(path: Path, splits=("train", "validation", "test"), classes=("a", "b", "c")) -> Path:
    """Three noisy classes of 8 values per row in ``splits`` (names as the store allows them)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (len(classes), 8)).astype(np.float32)
    for split, n in zip(splits, (30, 15, 15)):
        y = np.repeat(np.arange(len(classes)), n // len(classes)).astype(np.int32)
        X = centers[y] + np.random.default_rng(zlib.crc32(split.encode())).normal(0, 1.5, (len(y), 8))
        writer.write_arrays(path, "s", split, X.astype(np.float32), y, list(classes))
    return path


# ------------------------------------------------------------------ split names the store allows, runs must too
@pytest.mark.parametrize("test_split", ["test+ood", "ood@2024", "a=b", "x,y"])
def test_fit_records_a_run_on_any_split_name_the_store_allows(tmp_path, test_split):
    """extract accepts split names with + @ = , (provenance.validate_name), but run.json accepted only ._-: `fit
    --test test+ood` fitted, then refused its own record ("remove the folder", a folder that was never written), so
    the fit was lost and no run on such a split could ever be recorded."""
    store = synthetic_store(tmp_path / "s.h5", splits=("train", "validation", test_split))
    runs = tmp_path / "runs"
    out = no_traceback(cli("fit", "--store", store, "--runs", runs, "--test", test_split))
    assert "error" not in out, out
    (run,) = [p.name for p in runs.iterdir()]
    shown = no_traceback(cli("runs", "--store", store, "--runs", runs, "show", run))
    assert test_split in shown and "broken" not in shown.lower(), shown


def tiny_pngs(root: Path, layout: dict) -> Path:
    """``root/<split>/<class>/<name>`` PNGs of 8 x 8 random pixels; keys may be bytes (names that are not UTF-8)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls, names in classes.items():
            folder = os.path.join(os.fsencode(root), os.fsencode(split), os.fsencode(cls))
            os.makedirs(folder, exist_ok=True)
            for name in names:
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, os.fsencode(name)), format="PNG")
    return root


# ------------------------------------------------------------------ class folder names that are not UTF-8
def test_class_folder_name_that_is_not_utf8_is_one_line(tmp_path):
    """A class folder named with the byte 0xff (file names may be any bytes) made extract end in h5py's
    UnicodeEncodeError traceback when it wrote the class names."""
    data = tiny_pngs(tmp_path / "data", {"train": {b"bad\xff": ["a.png"], "good": ["b.png"]}})
    out = no_traceback(
        cli("extract", "--data", data, "--split", "train", "--model", "vgg16", "--weights", "none",
            "--image-size", "32", "--store", tmp_path / "f.h5")
    )  # fmt: skip
    assert "error:" in out and "bad\\xff" in out and "UTF-8" in out, out


# ------------------------------------------------------------------ names from a crafted store in probe and fewshot
HOSTILE = "e\x1b]0;pwn\x07\u202ex"  # an OSC title sequence, a bell and a bidi override in an extractor name


def hostile_store(tmp_path: Path) -> Path:
    """The synthetic store with its extractor group renamed to ``HOSTILE`` (HDF5 allows any name without '/')."""
    import h5py

    store = synthetic_store(tmp_path / "s.h5")
    with h5py.File(store, "a") as f:
        f.move("s", HOSTILE)
    return store


@pytest.mark.parametrize(
    "args", [("probe", "--no-knn"), ("fewshot", "--shots", "1", "--trials", "1")], ids=["probe", "fewshot"]
)
def test_probe_and_fewshot_escape_extractor_names(tmp_path, args):
    """probe's and fewshot's tables printed a crafted store's extractor name raw (escape sequences reached the
    terminal), and their charts' labels too (matplotlib warned with the raw name: 'Glyph 27 missing')."""
    import warnings

    store = hostile_store(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a label with control characters makes matplotlib warn about glyphs
        out = no_traceback(cli(*args, "--store", store, "--runs", tmp_path / "runs"))
    assert "wrote" in out, out
    assert not any(c in out for c in "\x1b\x07\u202e"), ascii(out)
    assert "\\x07" in out, out


# ------------------------------------------------------------------ odd option values: one line, never a traceback
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """Three 3-class splits of 8-value rows, and one logreg run: (store, runs, run id)."""
    from featstore import fit

    root = tmp_path_factory.mktemp("attack3")
    store = synthetic_store(root / "s.h5")
    runs = root / "runs"
    return store, runs, fit(store, "logreg", runs=runs)["id"]


@pytest.mark.parametrize("value", ["-1", "99999999999999999999"])
@pytest.mark.parametrize(
    "command",
    [
        ("fewshot", "--shots", "1", "--trials", "1", "--seed"),
        ("report", "--map-rows", "10", "--seed"),
        ("extract", "--data", "{data}", "--split", "train", "--weights", "none", "--image-size", "32", "--seed"),
    ],
    ids=["fewshot", "report", "extract"],
)
def test_seed_out_of_range_is_one_line(tiny_store, tmp_path, command, value):
    """--seed -1 (and a 20-digit seed) reached numpy's seeding or scikit-learn's PCA(random_state=) as a traceback."""
    store, runs, _ = tiny_store
    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["1.png"], "b": ["2.png"]}})
    args = [a.format(data=data) for a in command]
    where = ["--store", tmp_path / "e.h5"] if command[0] == "extract" else ["--store", store, "--runs", runs]
    if command[0] == "report":
        where += ["--out", tmp_path / "site"]
    out = no_traceback(cli(*args, value, *where))
    assert "--seed" in out and "0 to 4294967295" in out, out


@pytest.mark.parametrize("command", ["extract", "predict"])
def test_batch_size_too_large_is_one_line(tiny_store, tmp_path, command):
    """A 20-digit --batch-size reached h5py as an object-dtype attribute (extract) or itertools.islice (predict)."""
    store, runs, run = tiny_store
    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["1.png"], "b": ["2.png"]}})
    huge = "99999999999999999999"
    if command == "extract":
        args = ("extract", "--data", data, "--split", "train", "--weights", "none", "--image-size", "32",
                "--store", tmp_path / "e.h5", "--batch-size", huge)  # fmt: skip
    else:
        args = ("predict", "--store", store, "--runs", runs, "--run", run, data / "train", "--batch-size", huge)
    out = no_traceback(cli(*args))
    assert "--batch-size must be at most" in out, out


# ------------------------------------------------------------------ probe --png and fewshot --png
PROTOCOLS = {"probe": ("probe", "--no-knn"), "fewshot": ("fewshot", "--shots", "1", "--trials", "1")}


def _bad_png_targets(tmp_path: Path, store: Path) -> dict:
    """Names no chart may be written at: (path, what the refusal says)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "link.png").symlink_to(victim)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "created-through-the-link.png")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    store_copy = tmp_path / "store.png"
    store_copy.write_bytes(store.read_bytes())
    return {
        "link": (tmp_path / "link.png", "symbolic link"),
        "dangling": (tmp_path / "dangling.png", "symbolic link"),
        "fifo": (tmp_path / "fifo.png", "not a regular file"),
        "folder": (tmp_path / "dir.png", "is a folder"),
        "missing": (tmp_path / "missing" / "x.png", "does not exist"),
        "device": (Path("/dev/full"), "not a regular file"),
        "store": (store_copy, "HDF5 file"),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("target", ["link", "dangling", "fifo", "folder", "missing", "device", "store"])
def test_protocol_charts_refuse_what_outputs_refuse(tiny_store, tmp_path, protocol, target):
    """probe --png and fewshot --png were written with matplotlib's savefig straight at the name: through a symbolic
    link (a file it pointed at was overwritten with a PNG), over a feature store, to /dev/full ("wrote /dev/full"),
    and a FIFO, folder or missing folder ended in a traceback after every fit."""
    store, _, _ = tiny_store
    path, said = _bad_png_targets(tmp_path, store)[target]
    before = store.read_bytes()
    out = no_traceback(cli(*PROTOCOLS[protocol], "--store", store, "--runs", tmp_path / "runs", "--png", path))
    assert said in out and "wrote" not in out, out
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert not (tmp_path / "created-through-the-link.png").exists()
    assert (tmp_path / "store.png").read_bytes() == before
    assert not list(tmp_path.glob("runs/*")), "refused before any work: nothing in the runs folder"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_summary_named_where_it_was_written(tiny_store, tmp_path, protocol):
    """probe printed 'wrote <png> and <png's folder>/probe-<id>.json', but the JSON went into the runs folder: with
    --png elsewhere it named a file that does not exist."""
    store, _, _ = tiny_store
    (tmp_path / "charts").mkdir()
    out = no_traceback(
        cli(*PROTOCOLS[protocol], "--store", store, "--runs", tmp_path / "runs", "--png", tmp_path / "charts" / "c.png")
    )
    assert (tmp_path / "charts" / "c.png").read_bytes()[:4] == b"\x89PNG"
    (summary,) = (tmp_path / "runs").glob("*.json")
    assert str(summary) in out, out


# ------------------------------------------------------------------ predict with a run of imported features
def test_predict_with_a_run_of_arrays_is_one_line(tiny_store, tmp_path):
    """A run fitted on features written with write_arrays (no backbone) made predict raise KeyError 'weights_sha256'
    while it phrased its error about the unknown model 'synthetic'."""
    store, runs, run = tiny_store
    data = tiny_pngs(tmp_path / "data", {"new": {"a": ["1.png"]}})
    out = no_traceback(cli("predict", "--store", store, "--runs", runs, "--run", run, data / "new"))
    assert "error:" in out and "not made from images" in out, out


# ------------------------------------------------------------------ sweep: a test split that could not be recorded
def test_sweep_says_when_the_test_of_its_choice_was_not_recorded(tiny_store, tmp_path, monkeypatch):
    """sweep read test for its choice through evaluate_and_record and dropped the 'not recorded: ...' it returned: a
    run folder that could not take the test split (full disk, read-only) gave a summary that said test was evaluated
    after the choice and showed no test figure, without a word."""
    from featstore.errors import OutputError
    from featstore.experiments import evaluate

    store, _, _ = tiny_store

    def full_disk(*args, **kwargs):
        raise OutputError("cannot write run.json: the disk is full; free some space or write to another folder")

    monkeypatch.setattr(evaluate, "add_split", full_disk)
    out = no_traceback(cli("sweep", "--store", store, "--runs", tmp_path / "runs", "--clf", "logreg"))
    assert "the disk is full" in out and "runs evaluate" in out, out


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 1 MiB tmpfs left with 8 KiB free (root only; skipped elsewhere)."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    (mnt / "fill").write_bytes(b"\0" * ((1 << 20) - (8 << 10)))
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_table_survives_a_full_disk(tiny_store, tmp_path, full_tmpfs, protocol):
    """A chart that could not be written at the end (disk full) lost the whole computed table: probe and fewshot
    print it first, then one line saying what was not saved; nothing is left half-written under the name."""
    store, _, _ = tiny_store
    png = full_tmpfs / "chart.png"
    result = CliRunner().invoke(
        app, [str(a) for a in (*PROTOCOLS[protocol], "--store", store, "--runs", tmp_path / "runs", "--png", png)]
    )
    out = no_traceback(result)
    assert result.exit_code == 1 and "| test" in out.replace("test accuracy", "| test"), out
    assert "disk is full" in out and "not saved" in out, out
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["fill"]


# ------------------------------------------------------------------ runs of two stores in one folder
def test_runs_listing_says_when_runs_come_from_several_stores(tmp_path):
    """Two stores with the same extractor fingerprint, fitted into one --runs folder: `runs` listed both runs in one
    table of accuracies on different images, without a word (compare and ensemble refuse such pairs)."""
    from featstore import fit

    runs = tmp_path / "runs"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        fit(synthetic_store(tmp_path / name / "s.h5", classes=("x", "y", "z")), "logreg", runs=runs)
    out = no_traceback(cli("runs", "--store", tmp_path / "a" / "s.h5", "--runs", runs))
    assert "2 stores" in out and str(tmp_path / "b" / "s.h5") in out, out


# ------------------------------------------------------------------ a store that exists but is no file
@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_store_that_is_not_a_regular_file_is_named_so(tmp_path, kind):
    """info/check/fit on a FIFO, a folder or /dev/null said 'store ... does not exist; create it with featstore
    extract', sending the user to extract over a path that exists."""
    store = {"fifo": tmp_path / "s.h5", "folder": tmp_path, "device": Path("/dev/null")}[kind]
    if kind == "fifo":
        os.mkfifo(store)
    for args in (("info", store), ("check", store), ("fit", "--store", store, "--runs", tmp_path / "runs")):
        out = no_traceback(cli(*args))
        assert "not a regular file" in out and "does not exist" not in out, out


# ------------------------------------------------------------------ decoding threads
@pytest.mark.parametrize("threads", [-1, 10**6, 99999999999999999999])
def test_decode_thread_count_is_bounded(monkeypatch, threads):
    """finetune --workers 99999999999999999999 started threads until the kernel killed the process (24 GB); a negative
    count made a pool with no thread, whose decodes never ran. Threads are refused before any is started."""
    import threading

    from featstore.errors import ConfigError
    from featstore.images import decode

    def no_thread(*args, **kwargs):
        raise AssertionError("a thread was started before the count was checked")

    monkeypatch.setattr(threading, "Thread", no_thread)
    with pytest.raises(ConfigError, match="decoding threads"):
        decode.DaemonPool(threads)
    with pytest.raises(ConfigError, match="decoding threads"):
        list(decode.iter_decoded(["x.png"], 32, threads, 4))


def test_extract_refuses_decode_threads_before_making_the_split(tmp_path):
    """extract --decode-threads 99999999999999999999 was refused only once the split existed: an INCOMPLETE split
    was left in a new store for a command that never started."""
    data = tiny_pngs(tmp_path / "data", {"train": {"a": ["1.png"], "b": ["2.png"]}})
    out = no_traceback(
        cli("extract", "--data", data, "--split", "train", "--weights", "none", "--image-size", "32",
            "--store", tmp_path / "e.h5", "--decode-threads", "99999999999999999999")
    )  # fmt: skip
    assert "decoding threads" in out and not (tmp_path / "e.h5").exists(), out


@pytest.mark.parametrize(
    "command, expect",
    [
        (("fewshot", "--shots", "1", "--trials", "99999999999999999999"), "--trials must be from 1 to 10,000"),
        (("fit", "--clf", "random_forest", "--param", "n_estimators=99999999999999999999"), "in [1, 1000000]"),
        (("fit", "--clf", "sgd", "--param", "epochs=10000001"), "in [1, 1000000]"),
    ],
    ids=["fewshot-trials", "forest-trees", "sgd-epochs"],
)
def test_counts_have_an_upper_bound(tiny_store, command, expect):
    """A 20-digit --trials or n_estimators ran until the machine killed it, memory growing, with no output."""
    store, runs, _ = tiny_store
    out = no_traceback(cli(*command, "--store", store, "--runs", runs))
    assert expect in out, out
