"""Seventh attack (issue #19, "outputs safe, inputs bounded"): interrupted extract/finetune, hostile predict inputs,
crafted run folders, and ``export --rows-per-file`` output folders. Each test failed before its fix."""

from __future__ import annotations

import os

import pytest

from featstore import ConfigError, export
from tests.test_adversarial_attack3 import synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("a7") / "f.h5")


# ------------------------------------------------------------------ export --rows-per-file onto someone else's data
def test_shards_never_replace_a_folder_that_is_not_an_earlier_export(store, tmp_path):
    """Any ``part-*.parquet`` entry passed for an earlier export's shard: ``--out`` naming a pyarrow dataset
    (``write_dataset`` names its files ``part-0.parquet``) or holding a folder ``part-x.parquet`` was deleted whole
    and replaced by the export, without a word."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.dataset as ds

    mine = tmp_path / "mine"
    ds.write_dataset(pa.table({"x": [1, 2, 3]}), mine, format="parquet")
    nested = tmp_path / "nested"
    (nested / "part-x.parquet").mkdir(parents=True)
    (nested / "part-x.parquet" / "keep.txt").write_text("keep me")
    named = tmp_path / "named"
    named.mkdir()
    (named / "part-00000.parquet").write_bytes(b"not parquet")
    for out, kept in ((mine, "part-0.parquet"), (nested, "part-x.parquet"), (named, "part-00000.parquet")):
        with pytest.raises(ConfigError, match="other files than shards"):
            export(store, "train", out, rows_per_file=10)
        assert os.listdir(out) == [kept]
    assert (nested / "part-x.parquet" / "keep.txt").read_text() == "keep me"
    export(store, "train", tmp_path / "ours", rows_per_file=10)
    export(store, "train", tmp_path / "ours", rows_per_file=20)  # an earlier export's shards are still replaced
    assert sorted(os.listdir(tmp_path / "ours")) == ["part-00000.parquet", "part-00001.parquet"]
