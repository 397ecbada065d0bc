"""Attack 58 #4-#5: export's Parquet shards keep row order in name order past 100,000 shards (and an earlier export of
6-digit shards is replaced, not refused as "other files"); probe refuses one class or constant rows in train in one
line naming the extractor and split, before the first fit (fewshot the one class too)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.errors import ConfigError, StoreError
from featstore.store.writer import write_arrays

runner = CliRunner()


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


def _probe_store(path, bad: str, dims: int = 20, names=("a_first", "b_second")):
    """Extractors ``names`` with train, validation and test of 6 rows; the last one's train ``bad``: "one" class only,
    "same" rows (``dims`` values each) or rows that differ only by where their values are ("moved": equal once
    max-pooled over space)."""
    rng = np.random.default_rng(0)
    for name in names:
        for split in ("train", "validation", "test"):
            y = np.arange(6) % 2
            X = rng.normal(size=(6, 2, 2, dims)).astype(np.float32)
            if name == names[-1] and split == "train":
                if bad == "one":
                    y = np.zeros(6, int)
                elif bad == "same":
                    X[:] = X[0]
                else:
                    X = np.stack([np.roll(X[0].reshape(4, dims), i, axis=0).reshape(2, 2, dims) for i in range(6)])
            write_arrays(path, name, split, X, y, ["a", "b"])
    return path


@pytest.mark.parametrize(
    "bad, line",
    [
        ("one", r"extractor 'b_second': split 'train' has only one class \(a\); a classifier needs at least two"),
        ("same", r"extractor 'b_second': every row of split 'train' holds the same features: train's features are "),
    ],
    ids=["one_class", "constant"],
)
def test_probe_refuses_one_class_or_constant_train_before_the_first_fit(tmp_path, monkeypatch, bad, line):
    """#5: scikit-learn's traceback ("needs samples of at least 2 classes", "Found array with 0 feature(s)"), after the
    extractors before it were probed. Now one line naming the extractor, the split and the others, before any fit."""
    from featstore.experiments import probe as probe_mod

    store = _probe_store(tmp_path / "f.h5", bad)
    fitted = []
    real = probe_mod._probe_one
    monkeypatch.setattr(probe_mod, "_probe_one", lambda fs, n, *a: fitted.append(n) or real(fs, n, *a))
    with pytest.raises(StoreError, match=line) as e:
        probe_mod.probe(store, knn=False, runs=tmp_path / "new" / "runs")
    assert str(e.value).endswith("; or probe the others: --extractor a_first") and "\n" not in str(e.value)
    assert fitted == [] and not (tmp_path / "new").exists()


def test_probe_of_one_extractor_says_it_in_one_line(tmp_path):
    """#5: alone or first, the traceback was all the user got; constant rows of fewer values than rows too."""
    store = _probe_store(tmp_path / "f.h5", "same", dims=1, names=("e",))  # 4 values, 6 rows: no row space
    got = runner.invoke(app, ["probe", "--store", str(store), "--no-knn"])
    assert got.exit_code == 1 and "Traceback" not in got.output
    assert got.output.strip().splitlines()[-1].startswith("error: extractor 'e': every row of split 'train' holds")


def test_probe_rows_equal_once_pooled_keep_the_finished_extractors(tmp_path):
    """#5: rows that differ as stored but not once max-pooled over space (--reduce max) are found at their fit: a row space
    of rank 0 ended in a traceback; now the same line, the extractors before it kept (ProbeStopped)."""
    from featstore.experiments import probe as probe_mod

    store = _probe_store(tmp_path / "f.h5", "moved")
    with pytest.raises(probe_mod.ProbeStopped, match=r"'b_second': extractor 'b_second': every row of split 'train'"):
        probe_mod.probe(store, knn=False, reduce="max", runs=tmp_path / "runs")
    with pytest.raises(StoreError, match=r"^extractor 'b_second': every row of split 'train' holds the same"):
        probe_mod.probe(store, ["b_second"], knn=False, reduce="max", runs=tmp_path / "runs")


def test_fewshot_refuses_one_class_in_train_naming_the_extractor(tmp_path):
    """#5, fewshot: "holds only 0 images of class 'b' ... drop the larger shots", advice that cannot work."""
    from featstore.experiments.fewshot import fewshot

    store = _probe_store(tmp_path / "f.h5", "one", names=("e",))
    with pytest.raises(StoreError, match=r"^extractor 'e': split 'train' has only one class \(a\); a classifier"):
        fewshot(store, "logreg", shots=(1,), trials=1, runs=tmp_path / "runs")
