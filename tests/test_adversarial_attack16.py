"""Attack 16 (issue 19): rows for what the sixteenth fresh attack found; reproducers on branch attack16."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from featstore.store import writer
from tests import test_adversarial_attack14 as a14
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store, run = a14.store_src, a14.store, a14.run  # the fourteenth attack's fixtures: a store and a run


def test_a_store_replaced_by_one_without_the_runs_splits_is_not_the_runs_store(run):
    """Finding 10: a store re-made at the run's path holding none of the splits the run recorded (another dataset's test
    alone) was accepted: nothing there showed it was the run's store, and its test was recorded as the run's own."""
    store, runs, rid = run
    os.unlink(store)
    rng = np.random.default_rng(7)
    y = rng.permutation(np.repeat(np.arange(3), 7)).astype(np.int32)
    writer.write_arrays(store, "s", "test", rng.normal(0, 9, (21, 8)).astype(np.float32), y, ["a", "b", "c"])
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "was replaced" in out and "none of them in the store there" in out, out
    assert "test" not in json.loads((runs / rid / "run.json").read_text())["metrics"]


def test_the_lock_pid_file_is_never_written_through_a_hard_link(tmp_path):
    """Finding 9: <store>.lock.pid was opened with O_TRUNC, so a hard link planted at that name had its other name's
    bytes replaced by the writer's pid; now a new file is renamed onto the name."""
    from featstore.store.locking import lock_holder, writer_lock

    notes = tmp_path / "notes.txt"
    notes.write_text("precious notes")
    os.link(notes, tmp_path / "f.h5.lock.pid")
    with writer_lock(tmp_path / "f.h5", True):
        assert lock_holder(tmp_path / "f.h5") == os.getpid()  # the pid is still recorded, in a file of its own
    assert notes.read_text() == "precious notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temporary file left behind


def test_a_path_under_an_unknown_users_home_is_one_line(store, tmp_path):
    """Finding 4: "~nosuchuser99/..." ended in "RuntimeError: Could not determine home directory" (info, export, report)."""
    for args in (
        ("info", "~nosuchuser99/f.h5"),
        ("export", "--store", store, "--split", "test", "--out", "~nosuchuser99/x.csv"),
    ):
        result = cli(*args)
        out = no_traceback(result)
        assert result.exit_code != 0 and "~nosuchuser99/" in out and "names no user of this machine" in out, out


def test_the_outlier_refusal_holds_when_most_rows_are_zero(tmp_path):
    """Finding 12: with 16 of 30 train rows all zero the median norm was 0 and the check was off, while one row of
    1e15 made leaks report "15 of 15 rows have a near-duplicate"; such a row is now refused (attack 16, finding 5)."""
    from featstore.errors import StoreError
    from featstore.experiments.leaks.search import scan
    from featstore.store.reader import FeatureStore

    rng = np.random.default_rng(0)
    h5 = tmp_path / "z.h5"
    for split, n in (("train", 30), ("validation", 15)):
        X = rng.normal(size=(n, 8)).astype(np.float32)
        if split == "train":
            X[:16] = 0
            X[20] = 1e15
        writer.write_arrays(h5, "s", split, X, np.repeat(np.arange(3), n // 3).astype(np.int32), ["a", "b", "c"])
    with pytest.raises(StoreError) as err:
        scan(FeatureStore(h5), "s", ["validation"], "train", 1 << 20)
    said = str(err.value)
    assert "1 row(s) of 's' in 'train' have a norm over 1000 x the median of its non-zero rows" in said, said
    assert "train/20 (train/20, norm 2.83e+15)" in said and "--split train --overwrite" in said, said


# ------------------------------------------------------------------ 7. a name over 255 bytes; a path under a file
LONG = "r" * 300  # one part of a path over the 255 bytes a file name may have (Linux file systems' NAME_MAX)


def test_a_name_over_255_bytes_is_one_line_in_every_command(run, tmp_path):
    """Finding 7: "OSError: [Errno 36] File name too long" tracebacks in info, check, export --out, report --out,
    runs --runs and fit --runs; now one line naming the path, the part and the fix (featstore.outputs.name_problem)."""
    store, runs, _ = run
    long = tmp_path / LONG
    for args in (
        ("info", f"{long}.h5"),
        ("check", f"{long}.h5"),
        ("export", "--store", store, "--split", "test", "--out", f"{long}.csv"),
        ("report", "--store", store, "--runs", runs, "--out", long),
        ("runs", "--store", store, "--runs", long),
        ("fit", "--store", store, "--runs", long),
    ):
        result = cli(*args)
        out = no_traceback(result)
        (line,) = [x for x in out.splitlines() if x.startswith("error:")]
        assert result.exit_code == 1 and str(long) in line, (args[0], out)
        assert re.search(r"its part r{24}\.\.\. is 30[034] bytes, over the 255 a name may have", line), line
        assert line.endswith("; use a shorter name"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "runs"]  # nothing made


def test_a_runs_folder_under_a_file_says_it_is_a_file(run, tmp_path):
    """Finding 7: `runs --runs notes.txt/runs` said the runs folder "does not exist" (ENOTDIR); it names the file."""
    store, _, _ = run
    (tmp_path / "notes.txt").write_text("notes")
    for args in (
        ("runs", "--store", store, "--runs", tmp_path / "notes.txt" / "runs"),
        ("info", tmp_path / "notes.txt" / "f.h5"),
    ):
        result = cli(*args)
        out = no_traceback(result)
        assert result.exit_code == 1 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in out, out
        assert "does not exist" not in out, out


def test_name_problem_reaches_what_is_at_and_check_output(tmp_path):
    """The one place of the errno handling: an output name over 255 bytes, and an input named so (--weights, --model)."""
    from featstore.errors import OutputError
    from featstore.outputs import check_output, what_is_at

    with pytest.raises(OutputError, match=r"cannot write --out .*: its part r{24}\.\.\. is 300 bytes, over the 255"):
        check_output(tmp_path / LONG, "--out")
    assert what_is_at(tmp_path / LONG).startswith("a name too long (its part rrrr")
    assert what_is_at(tmp_path / "nothing") == "nothing"


# ------------------------------------------------------------------ 8. a NaN/inf/3e38 query row from another split
@pytest.mark.parametrize(("split", "row", "value"), [("test", 3, np.nan), ("validation", 2, np.inf), ("test", 4, 3e38)])
def test_similar_refuses_a_query_row_it_cannot_measure(store, tmp_path, recwarn, split, row, value):
    """Finding 8: a query from another split than --split was never scanned: "0 nearest train images" (NaN), a raw
    RuntimeWarning (inf) or ranked answers (3e38), exit 0, and an empty --html gallery; now refused as leaks does."""
    import h5py

    with h5py.File(store, "a") as f:
        X = f[f"s/{split}/features"]
        r = X[row]
        r[0] = value
        X[row] = r
    html = tmp_path / "g.html"
    result = cli("similar", "--store", store, "-k", "3", "--html", html, f"{split}/{row}")
    out = no_traceback(result)
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    assert result.exit_code == 1 and f"the query {split}/{row} (row {row} of {split!r} in s)" in line, line
    assert "NaN or inf" in line and f"--split {split} --overwrite" in line, line
    assert not html.exists()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]


# ------------------------------------------------------------------ 11. a wrong --runs: never advice to delete
def test_a_project_folder_as_runs_is_not_a_list_of_broken_runs(run, tmp_path):
    """Finding 11: --runs naming a project folder listed src/, data/, notebooks/ as broken runs with "Remove .../src
    and fit again", exit 0. Now: a folder holding none of a run's files is not a run, and the folder is named."""
    from featstore.runs.folder import scan_runs

    store, runs, rid = run
    project = tmp_path / "project"
    for sub in ("src", "data/train", "notebooks"):
        (project / sub).mkdir(parents=True)
    (project / "src" / "main.py").write_text("print(1)")
    for args in (("runs", "--store", store, "--runs", project), ("report", "--store", store, "--runs", project)):
        result = cli(*args)
        out = no_traceback(result)
        assert result.exit_code == 1 and "Remove" not in out, out
        assert f"{project} holds no featstore runs (its folders data, notebooks, src hold no run.json)" in out, out
        assert "is it the right --runs?" in out, out
    assert scan_runs(project).broken == []
    (runs / "notes").mkdir()  # a stray folder among runs: not listed, not a reason to refuse the listing
    os.unlink(runs / rid / "run.json")  # a run folder without its record is still a (broken) run
    listing = scan_runs(runs)
    assert [n for n, _ in listing.broken] == [rid], listing.broken
    assert cli("runs", "--store", store, "--runs", runs).exit_code == 0
    assert sorted(p.name for p in project.iterdir()) == ["data", "notebooks", "src"]


# ------------------------------------------------------------------ 2. a writer's temporary file swept meanwhile
def test_a_temporary_file_removed_while_written_is_said_so(tmp_path):
    """Finding 2: another process removing the writer's temporary file gave "no file can be made in <folder> (No such
    file or directory); write to another folder", of a folder that exists and takes files."""
    from featstore.errors import OutputError
    from featstore.outputs import write_atomic

    def write(tmp):
        tmp.write_text("a,b\n")
        tmp.unlink()  # a sweep by another process

    with pytest.raises(OutputError) as err:
        write_atomic(tmp_path / "out.csv", write, "--out")
    said = str(err.value)
    assert "its temporary file .out.csv." in said and "was removed while it was written" in said, said
    assert "write again" in said and "no file can be made" not in said, said
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 1. a store re-made from other arrays, same counts
def _other_arrays(path, seed: int = 12345, labels_of=None) -> None:
    """The store at ``path`` re-made from unrelated arrays with the same row counts (30/15/15) as the run's."""
    os.unlink(path)
    rng = np.random.default_rng(seed)
    for split, n in (("train", 30), ("validation", 15), ("test", 15)):
        y = np.repeat(np.arange(3), n // 3).astype(np.int32) if labels_of is None else labels_of(split)
        writer.write_arrays(path, "s", split, rng.normal(0, 50, (n, 8)).astype(np.float32), y, ["a", "b", "c"])


def test_a_store_remade_from_other_arrays_with_the_same_counts_is_not_the_runs_store(run):
    """Finding 1: a split written from arrays recorded listing_sha256 "arrays:<rows>" and paths "<split>/<i>", so a
    store re-made at the run's path from other arrays of the same counts passed as the run's: its test (noise) was
    recorded as the run's own. Each such split now records its rows' digest."""
    store, runs, rid = run
    _other_arrays(store)
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "was replaced" in out and "15 rows here, 15 recorded, other ones" in out, out
    assert "test" not in json.loads((runs / rid / "run.json").read_text())["metrics"]


def test_compare_tells_apart_two_runs_of_two_arrays_stores_made_at_one_path(run):
    """Finding 1 (compare and ensemble): two runs fitted on two stores written from other arrays at the same path, with
    the same labels, passed their "same images" check (same paths, same counts, same store path, same labels)."""
    from featstore.errors import ConfigError
    from featstore.experiments.compare import compare_pair
    from featstore.experiments.fit import fit

    store, runs, rid = run
    _other_arrays(store)
    other = fit(store, "logreg", test=None, runs=runs)["id"]
    with pytest.raises(ConfigError, match="'validation': the same row names but other rows written from arrays"):
        compare_pair(rid, other, store, runs)


def test_the_rows_digest_is_the_rows_not_the_batches(tmp_path):
    """The digest is of the rows (dtype, shape, bytes, labels in order), whatever the batch size; one value changed, or
    the rows reversed, changes it. listing_sha256 stays "arrays:<rows>" (two extractors of the same rows share it)."""
    from featstore.store.digests import identifies_rows, split_listing
    from featstore.store.reader import FeatureStore

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 4)).astype(np.float32), np.repeat(np.arange(2), 25).astype(np.int32)
    digests = []
    for i, (Xi, yi, batch) in enumerate(
        [(X, y, 256), (X, y, 7), (np.where(np.arange(50)[:, None] == 3, X + 1e-6, X), y, 7), (X[::-1], y[::-1], 7)]
    ):
        writer.write_arrays(tmp_path / f"{i}.h5", "s", "train", Xi, yi, ["a", "b"], batch_size=batch)
        digests.append(split_listing(FeatureStore(tmp_path / f"{i}.h5").split_info("train", "s")))
    assert digests[0] == digests[1] and len(set(digests)) == 3 and digests[0].startswith("arrays:50:"), digests
    assert identifies_rows(digests[0]) and not identifies_rows("arrays:50")


def test_a_run_on_a_store_written_before_the_digest_evaluates_as_before(store, tmp_path):
    """An older store (its arrays splits record no rows_sha256) and a run fitted on it: its own store at its own path
    is still accepted (nothing tells it apart from a replacement; the docs say so)."""
    import h5py

    from featstore.experiments.fit import fit

    with h5py.File(store, "a") as f:
        for split in f["s"]:
            del f["s"][split].attrs["rows_sha256"]
    rid = fit(store, "logreg", test=None, runs=tmp_path / "runs")["id"]
    result = cli("runs", "--store", store, "--runs", tmp_path / "runs", "evaluate", rid, "--split", "test")
    assert result.exit_code == 0 and "recorded in run" in no_traceback(result), result.output


# ------------------------------------------------------------------ 4. split names ending with .oof
def test_a_split_named_like_the_out_of_fold_record_is_refused_when_written(tmp_path):
    """Finding 4 (attack 16): `runs evaluate` refuses split names ending with ".oof", but extract and write_arrays
    wrote them: a split no run could ever record."""
    from featstore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"split name 'x\.oof' is not allowed: names ending with '\.oof'"):
        writer.write_arrays(tmp_path / "s.h5", "s", "x.oof", np.zeros((3, 2), np.float32), np.zeros(3, np.int32), ["a"])
    assert not (tmp_path / "s.h5").exists()
    (tmp_path / "data" / "x.oof" / "a").mkdir(parents=True)
    result = cli("extract", "--data", tmp_path / "data", "--split", "x.oof", "--store", tmp_path / "e.h5")
    out = no_traceback(result)
    assert result.exit_code != 0 and "'x.oof' is not allowed" in out and not (tmp_path / "e.h5").exists(), out


# ------------------------------------------------------------------ 2. path columns: width, blocks, empty paths
def _fixed_paths(path, split: str, dtype: str, n: int, values=None) -> None:
    import h5py

    with h5py.File(path, "a") as f:
        del f[f"s/{split}/paths"]
        f.create_dataset(
            f"s/{split}/paths", shape=(n,), dtype=dtype, chunks=(min(n, 16),), compression="gzip", data=values
        )


def test_a_path_column_wider_than_path_max_is_refused(store, tmp_path):
    """Finding 5: the width was bounded at 64 KiB per string, not rows x width: 20,000 rows of S65536 (a 3.4 MB file)
    made export peak at 1.35 GB and fit at 1.5 GB. No path is longer than PATH_MAX (4 KiB)."""
    _fixed_paths(store, "test", "S4097", 15)
    result = cli("export", "--store", store, "--split", "test", "--out", tmp_path / "x.csv")
    out = no_traceback(result)
    assert result.exit_code == 1 and "fixed-length strings of 4097 bytes each, over the 4096-byte limit" in out, out


def test_path_columns_are_read_a_block_at_a_time(store, monkeypatch):
    """Finding 5: a fixed-length path column was read whole as bytes (rows x width at once); now a block at a time."""
    import tracemalloc

    from featstore.store import pathcols
    from featstore.store.reader import FeatureStore

    n = 2000
    _fixed_paths(store, "train", "S4096", n, np.array([f"a/{i}.png".encode() for i in range(n)], dtype="S4096"))
    import h5py

    with h5py.File(store, "a") as f:  # the split's other columns grown to the new length
        for key in ("features", "labels"):
            old = f[f"s/train/{key}"][:]
            del f[f"s/train/{key}"]
            f.create_dataset(f"s/train/{key}", data=np.resize(old, (n, *old.shape[1:])))
        f["s/train"].attrs["commit"] = np.array([n, 0, n], np.int64)
        f["s/train"].attrs["n_images"] = n
    monkeypatch.setattr(pathcols, "PATH_BLOCK_BYTES", 64 << 10)
    tracemalloc.start()
    paths = FeatureStore(store).paths("train", "s")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert paths[:2] == ["a/0.png", "a/1.png"] and len(paths) == n
    assert peak < 2 << 20, f"peak {peak / 2**20:.1f} MiB for {n} paths of 4 KiB (8 MiB read whole)"


def test_empty_paths_are_damage_named_in_one_line(store, tmp_path):
    """Finding 5: fit recorded a run on a split of 15 identical empty paths (check called it "14 duplicated paths")."""
    _fixed_paths(store, "test", "S4096", 15, np.zeros(15, "S4096"))  # written empty (never written: attack 18's 9)
    result = cli("fit", "--store", store, "--runs", tmp_path / "runs", "--validation", "none", "--test", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and "s/test: row 0 of s/test/paths is an empty path" in out, out
    assert f"Run `featstore check {store}`" in out, out
    assert not [p for p in (tmp_path / "runs").glob("*") if not p.name.startswith(".")]  # no run recorded
    out = no_traceback(cli("check", store))
    assert "/s/test: 15 empty paths (each row must name its image file)" in out, out


# ------------------------------------------------------------------ 3. check counts rows whose squared norm overflows
def test_check_counts_rows_whose_squared_norm_overflows_float32(tmp_path):
    """Finding 3 (attack 16): check counted NaN/inf rows but not finite rows of 3e38, which leaks and similar refuse
    (their message said `featstore check` counts them)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8)).astype(np.float32)
    X[4, 2], X[9] = 3e38, 1e19  # one value of 3e38; a row of 1e19 (each squared 1e38, summed over 8 columns: inf)
    X[11, 0] = np.nan
    writer.write_arrays(tmp_path / "f.h5", "s", "train", X, np.repeat(np.arange(3), 10).astype(np.int32), list("abc"))
    out = no_traceback(cli("check", tmp_path / "f.h5"))
    assert "/s/train: 1 rows contain NaN or inf" in out, out
    assert "/s/train: 2 rows hold values so large that their squared norm overflows float32" in out, out
