"""Attack 58 #4-#5: export's Parquet shards keep row order in name order past 100,000 shards (and an earlier export of
6-digit shards is replaced, not refused as "other files"); probe refuses one class or constant rows in train in one
line naming the extractor and split, before the first fit (fewshot the one class too)."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.store.writer import write_arrays


def _rows_store(path, n: int):
    """Split train of ``n`` rows whose one value is the row's number."""
    write_arrays(path, "e", "train", np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 2, ["a", "b"])
    return path


def _read_in_name_order(folder) -> list[float]:
    import pyarrow.dataset as ds

    return ds.dataset(folder, format="parquet").to_table(columns=["features"])["features"].to_pylist()


def test_shard_width_grows_past_the_five_digits_only_then():
    from featstore.store.shard_names import is_shard_name, shard_name, shard_width

    assert shard_width(100_000, 1) == 5 and shard_width(100_001, 1) == 6 and shard_width(1_000_001, 10) == 6
    assert shard_width(0, 7) == 5 and shard_name(3, 5) == "part-00003.parquet"
    assert is_shard_name("part-00003.parquet") and is_shard_name("part-100000.parquet")  # earlier exports' and wide
    assert not is_shard_name("part-0.parquet") and not is_shard_name("part-00003.parquet.tmp")


def test_more_shards_than_the_width_holds_read_back_in_row_order(tmp_path, monkeypatch):
    """#4 (a): the 100,001st shard was part-100000.parquet, read between part-10000 and part-10001. Here the least width
    is 1, so 12 shards are more than 1 digit numbers: every name takes 2 digits and name order is row order."""
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from featstore import export
    from featstore.store import shard_names

    monkeypatch.setattr(shard_names, "MIN_WIDTH", 1)
    store, out = _rows_store(tmp_path / "f.h5", 12), tmp_path / "sh"
    export(store, "train", out, rows_per_file=1)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:02d}.parquet" for i in range(12)]
    assert _read_in_name_order(out) == [[float(i)] for i in range(12)]
    assert pq.read_table(out)["features"].to_pylist() == [[float(i)] for i in range(12)]
    export(store, "train", out, rows_per_file=5)  # #4 (b): its own earlier export is replaced, here by 1-digit ones
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i}.parquet" for i in range(3)]
    assert _read_in_name_order(out) == [[float(i)] for i in range(12)]


def test_an_earlier_export_of_six_digit_shards_is_replaced_and_five_digit_ones_still_are(tmp_path):
    """#4 (b): "--out sh is a folder holding other files than shards (part-100000.parquet)": featstore's own shard. A
    file of that name that is not featstore's is still refused."""
    pytest.importorskip("pyarrow")
    from featstore import export

    store, out = _rows_store(tmp_path / "f.h5", 12), tmp_path / "sh"
    export(store, "train", out, rows_per_file=5)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(3)]
    (out / "part-00002.parquet").rename(out / "part-100000.parquet")  # as an export of 100,001 shards left it
    export(store, "train", out, rows_per_file=4)
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(3)]
    (out / "part-100000.parquet").write_text("not a shard")
    with pytest.raises(ConfigError, match=r"other files than shards \(part-100000\.parquet\)"):
        export(store, "train", out, rows_per_file=4)
