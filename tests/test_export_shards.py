"""featstore export --rows-per-file: Parquet shards that pyarrow datasets read back as the split.

Ray Data's read of the shards is tests/test_ray.py's test_ray_data_reads_the_exported_shards: it runs on that file's
local Ray cluster instead of starting (and stopping) a second one here, seconds of a CI run."""

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, FeatureStore, export
from featstore.cli import app
from featstore.store import writer

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """1,000 rows of (2, 2, 8) float16 in 128-row chunks, 5 classes: blocks of 128 rows cross the shard boundaries."""
    path = tmp_path_factory.mktemp("shards") / "features.h5"
    rng = np.random.default_rng(0)
    X = rng.random((1000, 2, 2, 8)).astype(np.float16)
    y = np.arange(1000) % 5
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "CHUNK_BYTES", 128 * 64)
    try:
        writer.write_arrays(path, "synthetic", "train", X, y, [f"c{i}" for i in range(5)], batch_size=128)
    finally:
        mp.undo()
    return path


def _gone_pid() -> int:
    """The pid of a process that ran and is gone."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def read_dataset(folder):
    import pyarrow.dataset as ds

    table = ds.dataset(folder, format="parquet").to_table()
    order = np.argsort([int(p.split("/")[1]) for p in table["path"].to_pylist()])  # paths are train/<row>
    X = np.stack(table["features"].to_numpy(zero_copy_only=False))[order]
    return X, np.asarray(table["label"])[order], table.schema


def test_shards_hold_every_row_once_in_files_of_at_most_n_rows(store, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "train_shards"
    r = export(store, "train", out, rows_per_file=300, max_bytes=1)  # one 128-row chunk per block
    parts = sorted(out.iterdir())
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [300, 300, 300, 100]
    assert r.rows == 1000 and r.format == "parquet"
    X, y, schema = read_dataset(out)
    X0, y0 = FeatureStore(store).load("train")
    np.testing.assert_array_equal(X, X0.reshape(1000, -1).astype(np.float32))
    np.testing.assert_array_equal(y, y0)
    assert b"featstore" in schema.metadata
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_new_export_replaces_an_earlier_one_whole(store, tmp_path):
    out = tmp_path / "s"
    export(store, "train", out, rows_per_file=100)
    assert len(list(out.iterdir())) == 10
    export(store, "train", out, rows_per_file=600, features="avg")
    assert len(list(out.iterdir())) == 2
    X, _, _ = read_dataset(out)
    assert X.shape == (1000, 8)


def test_what_a_killed_export_left_is_put_back_or_named(store, tmp_path, caplog):
    """A kill between write_shards' two renames left the earlier export only in `.<out>.*.old/shards` (the seventh
    attack): the next export puts it back first; a half-written `.<out>.*.tmp` is named with how to remove it."""
    import os

    from featstore.leftovers import host_tag

    out, tag = tmp_path / "s", f"fs{_gone_pid()}-{host_tag()}"
    export(store, "train", out, rows_per_file=100)
    aside = tmp_path / f".s.{tag}-abc.old"
    aside.mkdir()
    out.rename(aside / "shards")  # the state a kill between the renames leaves
    half = tmp_path / f".s.{tag}-def.tmp"
    half.mkdir()  # and a killed export's half-written folder (young: named, not removed)
    os.link(next((aside / "shards").iterdir()), half / "part-00000.parquet")
    with pytest.raises(ConfigError):
        export(store, "train", out, rows_per_file=0)  # refused before writing: nothing recovered yet
    assert not out.exists()
    from featstore.store.shards import _recover_shards

    _recover_shards(out)
    assert len(list(out.iterdir())) == 10 and not aside.exists(), "the earlier export is back"
    assert half.name in caplog.text and "rm -r" in caplog.text
    export(store, "train", out, rows_per_file=600)
    assert len(list(out.iterdir())) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rows_per_file": 0}, "at least 1"),
        ({"rows_per_file": 10, "format": "csv"}, "writes Parquet shards"),
    ],
)
def test_bad_requests_are_refused(store, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        export(store, "train", tmp_path / "out", **kwargs)


def test_a_folder_of_other_files_is_never_replaced(store, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="other files than shards"):
        export(store, "train", out, rows_per_file=100)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_rows_per_file(store, tmp_path):
    out = tmp_path / "cli_shards"
    res = CliRunner().invoke(
        app, ["export", "--store", str(store), "--split", "train", "--out", str(out), "--rows-per-file", "400"]
    )
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("part-*.parquet"))) == 3
    assert "1000 rows" in res.output


def test_a_long_out_name_takes_shards(store, tmp_path):
    """The shards' hidden folder was named ``.<whole --out>.XXXXXXXX.tmp``: an --out of 240 bytes or more (which the
    file system takes) failed with "File name too long". Its name is now cut as every temporary name (leftovers)."""
    out = tmp_path / ("é" * 127)  # 254 bytes
    export(store, "train", out, rows_per_file=400)
    assert len(list(out.iterdir())) == 3
    export(store, "train", out, rows_per_file=600)  # and again, over the earlier export (its aside folder too)
    assert len(list(out.iterdir())) == 2 and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_killed_exports_half_written_folder_is_removed_once_abandoned(store, tmp_path, caplog):
    """A kill while shards were written left ``.<out>.fs<pid>-<host>-XXXX.tmp``, only ever named: each kill at 10⁶
    rows leaves gigabytes. Once its process is gone and nothing in it changed for 10 minutes, the next export removes
    it; a younger one and another machine's are named and kept, one whose process runs is left to it."""
    import logging
    import os
    import subprocess
    import sys
    import time

    from featstore.leftovers import host_tag

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    out, me, other = tmp_path / "s", host_tag(), "0" * 16
    names = {
        "gone": f".s.fs{proc.pid}-{me}-abc_12.tmp",
        "young": f".s.fs{proc.pid}-{me}-young.tmp",
        "running": f".s.fs{os.getppid()}-{me}-live.tmp",
        "elsewhere": f".s.fs{proc.pid}-{other}-far.tmp",
    }
    old = time.time() - 700
    for key, name in names.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.parquet").write_bytes(b"half")
        if key == "young":
            os.utime(tmp_path / name / "part-00000.parquet", (old + 700, old + 700))  # a shard written just now
            os.utime(tmp_path / name, (old, old))
        else:
            for p in (tmp_path / name / "part-00000.parquet", tmp_path / name):
                os.utime(p, (old, old))
    with caplog.at_level(logging.WARNING):
        export(store, "train", out, rows_per_file=500)
    assert not (tmp_path / names["gone"]).exists() and f"removed {tmp_path / names['gone']}" in caplog.text
    for key in ("young", "elsewhere"):
        assert (tmp_path / names[key]).is_dir() and f"rm -r {tmp_path / names[key]}" in caplog.text, key
    assert (tmp_path / names["running"]).is_dir() and names["running"] not in caplog.text  # that export's own
