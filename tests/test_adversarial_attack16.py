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
