"""Issue 19 outside ``leaks`` and the runs/report commands, one row per case: files others open, every output written
whole or not at all, bounded inputs, data that must not be silently wrong. (Messages, fine-tuning and the image
folders: ``tests/test_adversarial_messages.py``.)

- ``FORMULA_CASES``: text a spreadsheet would evaluate, as a class folder or file name; ``export --out x.csv`` and
  ``predict --out`` write it neutralised (OWASP's leading ``'``).
- ``BAD_OUT_CASES``: ``--out`` places that cannot take a whole file; each is one line, before any work, for ``export``
  and ``predict``.
- ``FORMATS``: a full disk (a 3 MiB tmpfs, or an ``os.replace`` that fails with ENOSPC without root) while exporting
  each format leaves nothing under the name and one line.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import featstore
from featstore import ConfigError, ExtractorConfig, FeatureStore, StoreError, extract, fit, predict
from featstore.cli import app
from featstore.errors import OutputError
from featstore.store import writer

from .conftest import write_images
from .leaks_stores import write_split

FORMULAS = ["=cmd|' -C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "+1+1", "-2+3", "\tTAB", "\rCR"]
ESCAPES = ["a\x1b]0;pwned\x07.png", "b\x1b[2J\x1b[31mred.png", "c\x9b31m.png", "d\u202egnp.exe"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r) -> str:
    """The output of a refused command: exit 1, one error line, no traceback."""
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [line for line in r.output.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, r.output
    return lines[0]


def formula_cells(rows: list[list[str]], columns: list[int]) -> list[str]:
    """Cells of ``columns`` that a spreadsheet would evaluate."""
    return [r[c] for r in rows for c in columns if r[c].startswith(("=", "+", "-", "@", "\t", "\r"))]


# ------------------------------------------------------------------ export: cells, names, bytes
@pytest.fixture
def hostile_store(tmp_path) -> Path:
    """A synthetic store (no TensorFlow) whose class names and stored paths are formulas and escape sequences."""
    names = [*FORMULAS, "ok"]
    paths = [f"{n}.png" for n in FORMULAS] + [f"train/x/{e}" for e in ESCAPES] + ["train/a/n\udcffx.png"]
    paths.append("train/a/n\\xffx.png")  # the four characters backslash, x, f, f
    X = np.random.default_rng(0).normal(size=(len(paths), 4)).astype(np.float32)
    y = np.arange(len(paths)) % len(names)
    store = tmp_path / "f.h5"
    write_split(store, "s", "train", X, y, paths, class_names=names)
    return store


def test_export_csv_neutralises_every_text_cell(hostile_store, tmp_path):
    out = tmp_path / "x.csv"
    r = run("export", "--store", hostile_store, "--split", "train", "--out", out)
    assert r.exit_code == 0, r.output
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["path", "label", "class"] and len(rows) == 1 + len(FORMULAS) + len(ESCAPES) + 2
    assert formula_cells(rows[1:], [0, 2]) == []
    assert "'=cmd|' -C calc'!A0" in {r[2] for r in rows} and "'=cmd|' -C calc'!A0.png" in {r[0] for r in rows}
    assert [float(v) for v in rows[1][3:]] == pytest.approx(FeatureStore(hostile_store).load("train")[0][0].tolist())


def test_parquet_tells_a_raw_byte_from_its_escape(hostile_store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    r = featstore.export(hostile_store, "train", tmp_path / "x.parquet")
    t = pq.read_table(r.path)
    shown, raw = t.column("path").to_pylist(), t.column("path_bytes").to_pylist()
    assert shown[-2] == shown[-1] == "train/a/n\\xffx.png"  # the text column must be UTF-8: alike there
    assert raw[-2] == b"train/a/n\xffx.png" and raw[-1] == b"train/a/n\\xffx.png"  # the bytes tell them apart
    assert [os.fsdecode(b) for b in raw] == FeatureStore(hostile_store).paths("train")


def test_names_printed_by_info_and_check_are_escaped(hostile_store):
    with h5py.File(hostile_store, "a") as f:  # the same path twice: check names it
        f["s/train/paths"][1] = f["s/train/paths"][len(FORMULAS)]
    for args in (("info", hostile_store), ("check", hostile_store)):
        r = run(*args)
        assert not any(c in r.output for c in "\x1b\x07\x9b\u202e"), repr(r.output)
    assert "a\\x1b]0;pwned\\x07.png" in run("check", hostile_store).output


# ------------------------------------------------------------------ export and predict: where --out cannot go
BAD_OUT_CASES = [
    ("missing folder", "nodir/x.csv", "folder {tmp}/nodir does not exist"),
    ("proc", "/proc/x.csv", "cannot write --out /proc/x.csv"),
    ("a folder", ".", "is a folder"),
    ("a device", "/dev/full", "is not a regular file"),
    ("a link", "link.csv", "symbolic link; featstore never writes through a link"),
    ("a dangling link", "dangling.csv", "exists and is not a regular file"),
]


@pytest.mark.parametrize("case, where, words", BAD_OUT_CASES, ids=[c[0] for c in BAD_OUT_CASES])
def test_export_out_that_cannot_be_written_is_one_line(hostile_store, tmp_path, case, where, words):
    if where.startswith("/") and not os.path.exists(os.path.dirname(where) if case == "proc" else where):
        pytest.skip(f"no {where}")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "link.csv").symlink_to(victim)
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere")
    out = where if where.startswith("/") else tmp_path / where
    for fmt in ("csv", "npz"):
        line = one_line_error(
            run("export", "--store", hostile_store, "--split", "train", "--out", out, "--format", fmt)
        )
        assert words.format(tmp=tmp_path) in line, line
    assert victim.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MiB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def big_store(tmp_path) -> Path:
    """4 MiB of features: more than the tmpfs holds in any format."""
    X = np.random.default_rng(1).normal(size=(256, 4096)).astype(np.float32)
    store = tmp_path / "big.h5"
    write_split(store, "s", "train", X, np.arange(256) % 2, [f"train/a/{i}.png" for i in range(256)])
    return store


@pytest.mark.parametrize("fmt", ["csv", "npz", "parquet"])
def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(big_store, tmpfs, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmpfs / f"x.{fmt}"
    line = one_line_error(run("export", "--store", big_store, "--split", "train", "--out", out))
    assert f"cannot write --out {out}: the disk is full" in line and "Nothing was written there" in line
    assert list(tmpfs.iterdir()) == []


@pytest.mark.parametrize("fmt", ["csv", "npz", "parquet"])
def test_export_disk_full_at_the_rename_without_root(hostile_store, tmp_path, monkeypatch, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"x.{fmt}"
    featstore.export(hostile_store, "train", out)  # an earlier export: the only file an export replaces (attack 21)
    old = out.read_bytes()

    def full(src, dst, **_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match="the disk is full"):
        featstore.export(hostile_store, "train", out)
    assert out.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", f"x.{fmt}"]


# ------------------------------------------------------------------ predict: cells, terminal, --out
@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """Images in class folders named like formulas, a logreg run on them, and new images with hostile names."""
    root = tmp_path_factory.mktemp("hostile_predict")
    data = root / "data"
    classes = {"=SUM(1+1)": 4, "@cmd": 4}
    write_images(data, "train", classes, seed=1)
    write_images(data, "validation", {k: 2 for k in classes}, seed=2)
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7, pooling="avg", layer="block1_pool")
    store = root / "f.h5"
    for split in ("train", "validation"):
        extract(data, split, store, cfg)
    rec = fit(store, "logreg")
    new = root / "new"
    new.mkdir()
    src = next((data / "train" / "@cmd").iterdir())
    for name in ["-1+1.png", "=HYPERLINK(1).png", *ESCAPES[:2], "ok.png"]:
        shutil.copy(src, new / name)
    (new / "+broken.png").write_bytes(b"not an image")
    return {"store": store, "run": rec["id"], "new": new}


def test_predict_csv_neutralises_labels_paths_and_errors(hostile_run, tmp_path):
    out = tmp_path / "p.csv"
    rows = predict(hostile_run["run"], [hostile_run["new"]], store=hostile_run["store"], out=out)
    assert {r["label"] for r in rows if not r["error"]} <= {"=SUM(1+1)", "@cmd"}  # the API returns them as they are
    with open(out, newline="", encoding="utf-8") as fh:
        cells = list(csv.reader(fh))
    assert cells[0] == ["path", "label", "probability", "error"] and len(cells) == 1 + len(rows)
    assert formula_cells(cells[1:], [0, 1, 3]) == []
    assert {c[1] for c in cells[1:]} - {""} <= {"'=SUM(1+1)", "'@cmd"}


def test_predict_prints_names_escaped(hostile_run):
    r = run("predict", "--run", hostile_run["run"], hostile_run["new"], "--store", hostile_run["store"])
    assert r.exit_code == 0, r.output
    assert not any(c in r.output for c in "\x1b\x07") and "a\\x1b]0;pwned\\x07.png" in r.output


@pytest.mark.parametrize("case, where, words", BAD_OUT_CASES[:5], ids=[c[0] for c in BAD_OUT_CASES[:5]])
def test_predict_out_that_cannot_be_written_is_one_line_before_any_work(hostile_run, tmp_path, case, where, words):
    if where.startswith("/") and not os.path.exists(os.path.dirname(where) if case == "proc" else where):
        pytest.skip(f"no {where}")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "link.csv").symlink_to(victim)
    out = where if where.startswith("/") else tmp_path / where
    r = run("predict", "--run", hostile_run["run"], hostile_run["new"], "--store", hostile_run["store"], "--out", out)
    line = one_line_error(r)
    if case == "proc":  # /proc exists and is a folder: refused when the file cannot be made, still one line
        assert "cannot be written" in line or "cannot write --out /proc/x.csv" in line, line
    else:
        assert words.format(tmp=tmp_path).split(" does not exist")[0] in line, line
    assert victim.read_text() == "precious"


def test_predict_on_a_full_disk_says_the_predictions_were_not_saved(hostile_run, tmpfs):
    with open(tmpfs / "filler", "wb") as fh:  # fill the tmpfs
        try:
            fh.write(b"\0" * (4 << 20))
        except OSError:
            pass
    out = tmpfs / "p.csv"
    r = run("predict", "--run", hostile_run["run"], hostile_run["new"], "--store", hostile_run["store"], "--out", out)
    line = one_line_error(r)
    assert f"could not write --out {out}" in line and "the predictions were made but not saved" in line.lower()
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler"]


# ------------------------------------------------------------------ bounded inputs
def _bomb(path: Path, declared: int) -> None:
    """A .keras-named zip whose config.json is ``declared`` zero bytes deflated (a real bomb: sizes that do not lie)."""
    info = zipfile.ZipInfo("config.json")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", "{}")
        with z.open(info, "w", force_zip64=True) as fh:  # streamed: 1 MiB in memory at a time
            for _ in range(declared >> 20):
                fh.write(bytes(1 << 20))


@pytest.mark.parametrize("declared_mib", [256])
def test_a_zip_bombed_model_file_is_refused_before_keras_opens_it(tmp_path, declared_mib):
    import resource

    import keras  # noqa: F401 - loaded first, so the memory below is the check's alone

    path = tmp_path / "bomb.keras"
    _bomb(path, declared_mib << 20)
    assert path.stat().st_size < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = one_line_error(run("models", path, "--layers"))
    assert "is refused before loading" in line and "zip bomb" in line, line
    with pytest.raises(ConfigError, match="zip bomb"):
        extract(tmp_path, "train", tmp_path / "f.h5", ExtractorConfig(model=str(path)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: nothing was unpacked whole


def test_a_file_named_keras_that_is_no_zip_is_one_line(tmp_path):
    path = tmp_path / "x.keras"
    path.write_bytes(b"not a zip at all")
    assert "a .keras file is a zip, and this is not one" in one_line_error(run("models", path, "--layers"))


def test_compressed_chunks_stay_under_hdf5s_limit(tmp_path):
    rows = writer.feature_chunk_rows((1024, 1024, 64), "float32", 32, compressed=True)
    assert rows == 8 and 32 % rows == 0
    with h5py.File(tmp_path / "c.h5", "w") as f:  # the shape the issue reported: HDF5 takes it now, refused it before
        f.create_dataset("ok", shape=(0, 1024, 1024, 64), maxshape=(None, 1024, 1024, 64), dtype="float32",
                         chunks=(rows, 1024, 1024, 64), compression="gzip")  # fmt: skip
        with pytest.raises(ValueError, match="4GB|4 GB|chunk size"):
            f.create_dataset("old", shape=(0, 1024, 1024, 64), maxshape=(None, 1024, 1024, 64), dtype="float32",
                             chunks=(32, 1024, 1024, 64), compression="gzip")  # fmt: skip
    with pytest.raises(StoreError, match="more than one HDF5 chunk can hold"):
        writer.feature_chunk_rows((4096, 4096, 64), "float32", 32, compressed=False)


def test_a_batch_over_the_chunk_limit_is_split_into_chunks_each_written_once(
    data_root, tiny_config, tmp_path, monkeypatch
):
    row = 512 * 4  # tiny_config's (1, 1, 512) float32 rows
    monkeypatch.setattr(writer, "MAX_CHUNK_BYTES", 3 * row)  # a batch of 4 rows would not fit one chunk
    extract(data_root, "train", tmp_path / "gz.h5", tiny_config, batch_size=4, compression="gzip")
    with h5py.File(tmp_path / "gz.h5") as f:
        assert f["vgg16/train/features"].chunks[0] == 2  # the largest divisor of the batch that fits
    assert run("check", tmp_path / "gz.h5").exit_code == 0
    extract(data_root, "train", tmp_path / "plain.h5", tiny_config, batch_size=4)
    np.testing.assert_array_equal(
        FeatureStore(tmp_path / "gz.h5").load("train")[0], FeatureStore(tmp_path / "plain.h5").load("train")[0]
    )
    monkeypatch.setattr(writer, "MAX_CHUNK_BYTES", row - 1)  # not even one row fits: refused before anything is written
    with pytest.raises(StoreError, match=r"one row of vgg16 features is \(1, 1, 512\) float32"):
        extract(data_root, "validation", tmp_path / "none.h5", tiny_config)
    assert not (tmp_path / "none.h5").exists() or "validation" not in FeatureStore(tmp_path / "none.h5").splits()
