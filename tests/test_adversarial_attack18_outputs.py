"""Attack 18, outputs: the ``.npz`` paths column, ``write_arrays``' unchecked arguments and the runs table's interval
digits (findings 8, 12 and 14; reproducers on branch attack18). Stores are synthetic (no TensorFlow); each test
failed before its fix."""

from __future__ import annotations

import hashlib
import re
import tracemalloc
import zipfile
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.report import runs as runs_report
from featstore.runs.record import SplitMetrics
from featstore.store import export as export_mod
from featstore.store import writer
from tests import test_adversarial_attack14 as a14
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store, run = a14.store_src, a14.store, a14.run  # a synthetic 3-split store (+ 'extra'), a logreg run


# ------------------------------------------------------------------ 8. the .npz paths column
def _one_long_path(path, n: int) -> None:
    """A split 'wide' of ``n`` one-value rows whose row 3 has a 4,000-character path (the others are ~10)."""
    writer.write_arrays(path, "s", "wide", np.zeros((n, 8), np.float32), np.arange(n) % 3, ["a", "b", "c"])
    with h5py.File(path, "a") as f:
        f["s/wide/paths"][3] = "d/" * 1998 + "x.png"


def test_a_paths_column_of_mostly_padding_is_refused_before_anything_is_written(tmp_path):
    """Finding 8: one 4,000-byte path among 40,000 rows made a 641 MB .npz (721 MB peak; 16 GB at 10^6 rows): every
    path was stored as wide as the widest. Refused now, before any file is made, naming the row, its width and the
    formats that store each path at its own length."""
    store_path = tmp_path / "p.h5"
    _one_long_path(store_path, 40_000)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("export", "--store", store_path, "--split", "wide", "--out", tmp_path / "p.npz")
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert "640 MB" in out and "row 3, 4,001 characters" in out and "40,000 paths" in out, out
    assert ".parquet or .csv" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .npz, no temporary file left


def test_the_npz_paths_are_written_block_by_block_and_read_back_unchanged(tmp_path, monkeypatch):
    """Finding 8: ``np.array(paths, dtype=str)`` was built whole (here 48 MB for 12,000 1,000-character paths, paths
    all alike in width: not refused). paths.npy is now made 16 MB at a time, and holds the same bytes as before:
    ``np.load(out)["paths"]`` is unchanged for every reader."""
    n, width = 12_000, 1_000
    paths = [f"{i:0{width}d}" for i in range(n)]
    paths[7] = "é\udcff😀"  # non-ASCII, a non-UTF-8 byte, a character past the BMP
    meta = {"extractor": "s", "split": "train", "class_names": ["a", "b"]}
    labels = np.arange(n) % 2
    blocks = iter([(np.zeros((n, 1), np.float32), labels, paths, None)])
    tracemalloc.start()
    try:
        export_mod._write_npz(tmp_path / "o.npz", blocks, n, 1, meta, labels, paths)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32e6, f"{peak / 1e6:.0f} MB traced while writing a 48 MB paths column"
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        assert list(z.keys()) == ["features", "labels", "paths", "class_names", "featstore"]  # the last: its mark
        assert z["paths"].dtype == np.dtype(f"<U{width}") and z["paths"].tolist() == paths
    with zipfile.ZipFile(tmp_path / "o.npz") as zf, zf.open("paths.npy") as fh:
        import io

        want = io.BytesIO()
        np.lib.format.write_array(want, np.array(paths, dtype=str), allow_pickle=False)
        assert fh.read() == want.getvalue()  # byte for byte what np.savez writes


# ------------------------------------------------------------------ 12. write_arrays' arguments
_X = np.zeros((10, 4), np.float32)
_Y = np.arange(10) % 2
_BAD = {
    "x_zero_width": (np.zeros((10, 0), np.float32), _Y, {}, "X of shape"),
    "x_1d": (np.zeros(10, np.float32), _Y, {}, "X of shape"),
    "more_labels": (_X, np.arange(12) % 2, {}, "y of shape (10,)"),
    "labels_2d": (_X, _Y.reshape(5, 2), {}, "y of shape (10,)"),
    "labels_5_6": (_X, _Y + 5, {}, "labels y in 0..1"),
    "negative_label": (_X, _Y - 1, {}, "labels y in 0..1"),
    "float_labels": (_X, _Y + 0.5, {}, "not 0.5 at row 0"),
    "nan_label": (_X, np.where(_Y == 1, np.nan, 0.0), {}, "not nan at row 1"),
    "string_labels": (_X, np.array(["a", "b"] * 5), {}, "class indices"),
    "attrs_other_shape": (_X, _Y, {"attrs": writer.synthetic_attrs((5,))}, "attrs say features"),
    "batch_size_0": (_X, _Y, {"batch_size": 0}, "batch_size"),
    "compression": (_X, _Y, {"compression": "zstd"}, "compression must be one of"),
}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", list(_BAD))
def test_write_arrays_refuses_bad_arguments_before_writing_a_byte(store, case):
    """Finding 12: these inputs left damaged groups in a good store ("Extract again into a new --store"), an
    "interrupted write" that check said to resume with an extract that never made it, out-of-range labels written as
    complete, and 0.5/1.5 stored as 0/1. Each is one ConfigError line now, and the store is not touched."""
    X, y, kwargs, said = _BAD[case]
    before = _digest(store)
    with pytest.raises(ConfigError, match=re.escape(said)) as err:
        writer.write_arrays(store, "new", "train", X, y, ["a", "b"], **kwargs)
    assert "\n" not in str(err.value) and "write_arrays" in str(err.value)
    assert _digest(store) == before
    result = cli("check", store)
    assert result.exit_code == 0, no_traceback(result)


def test_write_arrays_takes_whole_number_labels_of_any_number_type(tmp_path):
    """Finding 12: float labels were cast to int32 (0.5 became 0); whole-number floats and bools are still taken, as
    the class indices they are, and a new store is not even made for bad ones."""
    path = tmp_path / "s.h5"
    with pytest.raises(ConfigError):
        writer.write_arrays(path, "s", "train", _X, _Y * 1.5, ["a", "b"])  # 0, 1.5, ...
    assert not path.exists()
    writer.write_arrays(path, "s", "train", _X, _Y.astype(np.float64), ["a", "b"])
    writer.write_arrays(path, "s", "test", _X, _Y.astype(bool), ["a", "b"])
    with h5py.File(path, "r") as f:
        assert f["s/train/labels"][:].tolist() == _Y.tolist() == f["s/test/labels"][:].tolist()


# ------------------------------------------------------------------ 14. the runs table's interval digits
def test_the_runs_table_shows_an_interval_to_the_accuracys_digits(run):
    """Finding 14: `featstore runs` printed "0.9974 [1.00, 1.00]": the figure outside its own interval, which looked
    zero-wide (the interval was [0.9961, 0.9983]). Both now to 4 decimals, in the table, `runs compare` and sweeps."""
    metrics = SplitMetrics(10_000, 0.9974, 0.997, {}, [[5000, 13], [13, 4974]])
    shown = runs_report._acc(SimpleNamespace(metrics={"test": metrics}), "test")
    lo, hi = metrics.accuracy_interval()
    assert shown == f"0.9974 [{lo:.4f}, {hi:.4f}]" and lo < 0.9974 < hi and f"{lo:.4f}" != f"{hi:.4f}", shown
    assert runs_report._range((0.99551, 0.99862)) == " [0.9955, 0.9986]"
    store_path, runs, _ = run
    table = cli("runs", "--store", store_path, "--runs", runs)
    found = re.findall(r"(\d\.\d+) \[(\d\.\d+), (\d\.\d+)\]", no_traceback(table))
    assert found, table.output
    for figures in found:
        assert {len(f.split(".")[1]) for f in figures} == {4}, figures
        assert float(figures[1]) <= float(figures[0]) <= float(figures[2]), figures
