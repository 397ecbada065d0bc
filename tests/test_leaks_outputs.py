"""featstore leaks, issue 19: everything it writes is whole and where asked, everything it prints or reads is safe.

Each case of the issue that names ``leaks`` is a row here: a planted link at ``--out``/``--png``, a full disk, a
FIFO, a missing folder, a folder, ``/dev/full``, a read-only store folder, ``--png NAME``, escape sequences in
stored paths, and a hostile ``<store>.leaks.json`` read by ``featstore info``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featstore.cli import app
from featstore.experiments.leaks import record_path

from .leaks_stores import blob, write_split


def run(*args):
    return CliRunner().invoke(app, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])


def one_line_error(r) -> str:
    """The output of a refused command: exit 1, one line, no traceback."""
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


@pytest.fixture
def small(tmp_path):
    """A 40-row train and 10-row test store; test/1.png holds the same bytes as train/3.png."""
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, size=(40, 16)).astype(np.float32)
    Q = rng.gamma(1.0, size=(10, 16)).astype(np.float32)
    Q[1] = X[3]
    files = [blob(i) for i in range(40)]
    store, data = tmp_path / "f.h5", tmp_path / "data"
    write_split(store, "s", "train", X, np.zeros(40), [f"train/{i}.png" for i in range(40)], data, files)
    tfiles = [blob(100 + i) for i in range(10)]
    tfiles[1] = files[3]
    write_split(store, "s", "test", Q, np.zeros(10), [f"test/{i}.png" for i in range(10)], data, tfiles)
    return store


@pytest.mark.parametrize("option", ["--out", "--png"])
def test_a_planted_link_is_never_written_through(small, tmp_path, option):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / ("x.csv" if option == "--out" else "x.png")
    link.symlink_to(victim)
    line = one_line_error(run("leaks", "--store", small, option, link))
    assert "symbolic link; featstore never writes through a link" in line
    assert victim.read_text() == "precious" and link.is_symlink()
    assert not record_path(small).exists()  # refused before the search: nothing computed, nothing recorded


def test_out_fifo_does_not_block(small, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    box, done = {}, threading.Event()

    def go():
        box["r"] = run("leaks", "--store", small, "--out", fifo)
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(30), "leaks --out FIFO blocked"
    assert "is not a regular file (a pipe, device or socket)" in one_line_error(box["r"])


@pytest.mark.parametrize(
    "option, where, words",
    [
        ("--out", "nodir/x.csv", "folder {tmp}/nodir does not exist; create it or choose another path"),
        ("--out", ".", "is a folder; give a file name inside it"),
        ("--out", "/dev/full", "--out /dev/full is not a regular file"),
        ("--png", "nodir/x.png", "folder {tmp}/nodir does not exist"),
        ("--png", ".", "is a folder"),
    ],
)
def test_bad_places_are_one_line_before_any_work(small, tmp_path, option, where, words):
    if where == "/dev/full" and not os.path.exists(where):
        pytest.skip("no /dev/full")
    path = where if where.startswith("/") else tmp_path / where
    line = one_line_error(run("leaks", "--store", small, option, path))
    assert words.format(tmp=tmp_path) in line


@pytest.fixture
def mount(tmp_path):
    """A small tmpfs (root only; skipped elsewhere); yields (folder, remount) where remount(options) changes it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)

    yield mnt, remount
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder) -> None:
    st = os.statvfs(folder)
    with open(folder / "filler.bin", "wb") as fh:
        try:
            fh.write(b"\0" * (st.f_bavail * st.f_frsize))
        except OSError:
            pass


def test_full_disk_leaves_no_truncated_csv_and_keeps_the_results(small, mount):
    mnt, _ = mount
    _fill(mnt)
    out = mnt / "pairs.csv"
    r = run("leaks", "--store", small, "--threshold", "0.999", "--out", out, "--png", small.parent / "p.png")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "test: 1 of 10 rows have a near-duplicate" in r.output  # printed before the failure
    assert f"error: cannot write --out {out}: the disk is full" in r.output
    assert not out.exists() and sorted(p.name for p in mnt.iterdir()) == ["filler.bin"]
    assert (small.parent / "p.png").is_file() and record_path(small).is_file()  # the rest was still written


def test_disk_full_while_writing_everywhere(small, tmp_path, monkeypatch):
    """The same without root: every rename fails with ENOSPC; named outputs are errors, the default ones notes."""

    def full(src, dst, **_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    r = run("leaks", "--store", small, "--threshold", "0.999", "--out", tmp_path / "x.csv")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert (
        "test: 1 of 10 rows" in r.output
        and f"error: cannot write --out {tmp_path / 'x.csv'}: the disk is full" in r.output
    )
    assert f"note: cannot write PNG {small}.leaks.png: the disk is full" in r.output
    assert "`featstore info` will not show these counts (printed above)" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "f.h5"]  # no temporary file left behind


def test_read_only_store_folder_prints_results_and_says_what_was_not_written(small, mount, tmp_path):
    mnt, remount = mount
    shutil.copy(small, mnt / "f.h5")
    store = mnt / "f.h5"
    remount("ro")
    r = run("leaks", "--store", store, "--threshold", "0.999")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert "test: 1 of 10 rows have a near-duplicate in train" in r.output
    assert f"note: cannot write PNG {store}.leaks.png: the file system of {mnt} is read-only" in r.output
    assert "Give --png PATH in a writable folder to get the picture." in r.output
    assert f"the record lives beside the store, so {mnt} must be writable to keep it" in r.output
    r = run("leaks", "--store", store, "--threshold", "0.999", "--png", tmp_path / "pairs.png")
    assert r.exit_code == 0 and f"wrote {tmp_path / 'pairs.png'}" in r.output, r.output
    line = one_line_error(run("leaks", "--store", store, "--threshold", "0.999", "--out", mnt / "x.csv"))
    assert f"cannot write --out {mnt / 'x.csv'}: folder {mnt} is not writable (read-only or not yours)" in line
    assert "leaks: not checked" in run("info", store).output


def test_png_name_is_written_exactly_and_said_truly(small, tmp_path):
    r = run("leaks", "--store", small, "--png", tmp_path / "pairs")
    assert r.exit_code == 0 and f"wrote {tmp_path / 'pairs'}; " in r.output, r.output  # placeholders: not images
    assert not (tmp_path / "pairs.png").exists()
    with Image.open(tmp_path / "pairs") as im:
        assert im.format == "PNG"
    line = one_line_error(run("leaks", "--store", small, "--png", tmp_path / "pairs.jpg"))
    assert "the chart is a PNG; give a name ending in .png" in line  # compare.check_chart_name, every chart option
    r = run("leaks", "--store", small, "--png", tmp_path / "UPPER.PNG")
    assert r.exit_code == 0 and (tmp_path / "UPPER.PNG").is_file()


HOSTILE = [
    "a/\x1b]0;pwned\x07.png",  # OSC: sets the terminal title
    "a/\x1b[2J\x1b[31mred.png",  # clears the screen
    "a/\x9b31mcsi.png",  # C1 CSI
    "a/=HYPERLINK(1).png",
    "@SUM(1+1).png",
    "a/$\\frac{1}{0}$.png",  # mathtext in a PNG title
    "a/\u202egnp.exe",  # right-to-left override
]


def test_stored_paths_never_reach_the_terminal_or_a_spreadsheet_raw(tmp_path):
    """Paths stored relative to each split's own folder, so a name can start a CSV cell; the split is named '=...'."""
    rng = np.random.default_rng(0)
    n = len(HOSTILE)
    X = rng.gamma(1.0, size=(n + 20, 8)).astype(np.float32)
    store, data = tmp_path / "f.h5", tmp_path / "data"
    train_paths = HOSTILE + [f"{i}.png" for i in range(20)]
    write_split(store, "s", "train", X, np.zeros(n + 20), train_paths, data / "train", [blob(i) for i in range(n + 20)])
    split = "=HYPERLINK(2)"
    write_split(store, "s", split, X[:n] + 1e-4, np.zeros(n), HOSTILE, data / "q", [blob(i) for i in range(n)])
    shutil.rmtree(data / "train" / "a")  # gone: named in "not compared by content" and "missing:" lines too
    r = run("leaks", "--store", store, "--split", split, "--out", tmp_path / "p.csv", "--png", tmp_path / "p.png")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert not any(c in r.output for c in "\x1b\x07\x9b\u202e"), repr(r.output)
    assert "\\x1b]0;pwned\\x07.png" in r.output and "\\x9b31mcsi.png" in r.output and "\\u202egnp.exe" in r.output
    assert "missing: " in r.output and "not compared by content (train, " in r.output
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG"
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == 1 + n
    assert "'=HYPERLINK(2),'@SUM(1+1).png,'@SUM(1+1).png,1.000000,True,True" in lines
    assert "'=HYPERLINK(2),a/=HYPERLINK(1).png,a/=HYPERLINK(1).png,1.000000,True,False" in lines
    assert not any(cell.startswith(("=", "@", "+", "-")) for line in lines[1:] for cell in line.split(","))


@pytest.fixture
def recorded(small):
    """small with a valid record; yields (store, the record as a dict)."""
    r = run("leaks", "--store", small, "--threshold", "0.999")
    assert r.exit_code == 0, r.output
    return small, json.loads(record_path(small).read_text())


def _set(rec: dict, **entry) -> str:
    out = json.loads(json.dumps(rec))
    out["extractors"]["s"].update(entry)
    return json.dumps(out)


@pytest.mark.parametrize(
    "case, words",
    [
        ("nested", "is nested deeper than 6 levels"),
        ("count 1e400", "holds the number 1e400, out of range"),
        ("count NaN", "holds NaN"),
        ("count Infinity", "holds Infinity"),
        ("count of 40 digits", "holds an integer of more than 18 digits"),
        ("count true", "has a count 'True' that is not a number of rows"),
        ("count -1", "has a count '-1' that is not a number of rows"),
        ("count text", "has a count '12' that is not a number of rows"),
        ("count over rows", "counts more 'test' rows than it checked"),
        ("threshold 5", "has a threshold outside (0, 1]"),
        ("extractors list", "is not a featstore leaks record (no 'extractors')"),
        ("entry string", "has an entry that is not an object"),
        ("not utf-8", "is not UTF-8 text"),
        ("not json", "is not JSON"),
        ("2 GiB sparse", "is 2147483648 bytes, over the 1048576 a record may take"),
        ("fifo", "is not a regular file"),
        ("folder", "is not a regular file"),
        ("escape in split name", None),
    ],
)
def test_a_hostile_record_is_one_line_in_info(recorded, case, words):
    store, rec = recorded
    path = record_path(store)
    counts = rec["extractors"]["s"]["counts"]
    text = {
        "nested": '{"extractors": {"s": ' + "[" * 100_000 + "]" * 100_000 + "}}",
        "count 1e400": _set(rec, counts={"test": 0}).replace('"test": 0', '"test": 1e400', 1),
        "count NaN": _set(rec, counts={"test": 0}).replace('"test": 0', '"test": NaN', 1),
        "count Infinity": _set(rec, counts={"test": 0}).replace('"test": 0', '"test": Infinity', 1),
        "count of 40 digits": _set(rec, counts={"test": 0}).replace('"test": 0', '"test": ' + "9" * 40, 1),
        "count true": _set(rec, counts={"test": True}),
        "count -1": _set(rec, counts={"test": -1}),
        "count text": _set(rec, counts={"test": "12"}),
        "count over rows": _set(rec, counts={"test": 11}),
        "threshold 5": _set(rec, threshold=5),
        "extractors list": json.dumps({"extractors": []}),
        "entry string": json.dumps({"extractors": {"s": "x"}}),
        "escape in split name": _set(rec, counts={"\x1b]0;t\x07": 1, **counts}, rows={"\x1b]0;t\x07": 1, "test": 10}),
    }.get(case)
    path.unlink()
    if case == "not utf-8":
        path.write_bytes(b'{"extractors": {"\xff": 1}}')
    elif case == "not json":
        path.write_text("{not json")
    elif case == "2 GiB sparse":
        with open(path, "wb") as fh:
            fh.truncate(2 << 30)
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "folder":
        path.mkdir()
    else:
        path.write_text(text)
    box, done = {}, threading.Event()

    def go():
        t = time.monotonic()
        box["r"], box["s"] = run("info", store), time.monotonic() - t
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(60), "info blocked on the record"
    r = box["r"]
    assert r.exit_code == 0 and "Traceback" not in r.output and box["s"] < 20, r.output
    lines = [line for line in r.output.splitlines() if "leaks:" in line]
    assert len(lines) == 1, r.output
    if words is None:  # a well-formed record with a hostile split name: shown escaped
        assert "\x1b" not in r.output and "1 \\x1b]0;t\\x07 / 1 test" in lines[0], lines
    else:
        assert f"leaks: record {path} is damaged: it {words}" in lines[0], lines
        assert lines[0].endswith("; re-run featstore leaks to replace it"), lines
    if case not in ("fifo", "folder"):  # leaks replaces a bad record (a FIFO or folder is refused as an output)
        assert run("leaks", "--store", store, "--threshold", "0.999").exit_code == 0
        assert "leaks: 1 test rows with a near-duplicate in train (threshold 0.999, given" in run("info", store).output


def test_record_link_is_not_written_through(small, tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    record_path(small).symlink_to(victim)
    r = run("leaks", "--store", small, "--threshold", "0.999")
    assert r.exit_code == 0 and "test: 1 of 10 rows" in r.output, r.output
    assert (
        "is a symbolic link, and featstore never writes through a link" in r.output
        and "will not show these counts" in r.output
    )
    assert victim.read_text() == "precious"
