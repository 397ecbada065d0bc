"""Attack 39 #3 and #10: what a colleague's files beside a shared store or run cost a user who did the work.

#3: a hard link or FIFO at ``<store>.leaks.json.lock`` ended ``featstore leaks`` with "error:", exit 1 and no record,
after it had computed and printed everything: now the lock's reason is a note (as any record failure), exit 0.
#10: ``runs evaluate`` of a colleague's run named his run folder only; once he shared it, the next try met his runs
folder with "make it writable": now the first line names both, and a refusal by the runs folder says whose it is.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.experiments.leaks import find_leaks, record_path
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack36_lead import COLLEAGUE, TEAM, colleagues_run, needs_root

from .leaks_stores import blob, write_split


@pytest.fixture
def small(tmp_path):
    """A 20-row train and 5-row test store."""
    rng = np.random.default_rng(0)
    X = rng.gamma(1.0, size=(20, 8)).astype(np.float32)
    Q = rng.gamma(1.0, size=(5, 8)).astype(np.float32)
    store, data = tmp_path / "f.h5", tmp_path / "data"
    write_split(
        store, "s", "train", X, np.zeros(20), [f"train/{i}.png" for i in range(20)], data, [blob(i) for i in range(20)]
    )
    write_split(
        store, "s", "test", Q, np.zeros(5), [f"test/{i}.png" for i in range(5)], data, [blob(50 + i) for i in range(5)]
    )
    return store


def _plant(store, kind: str):
    lock = record_path(store).with_name(record_path(store).name + ".lock")
    if kind == "hard link":
        os.link(store, lock)  # a colleague's second name of the (group-writable) store
    else:
        os.mkfifo(lock)
    return lock


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_a_refused_leaks_lock_is_a_note_and_the_results_are_kept(small, tmp_path, kind):
    """#3: the CLI: printed results, --out and the PNG written, the lock's reason said as a note, exit 0."""
    lock = _plant(small, kind)
    out = tmp_path / "pairs.csv"
    r = CliRunner().invoke(app, ["leaks", "--store", str(small), "--threshold", "0.999", "--out", str(out)])
    assert r.exit_code == 0 and "Traceback" not in r.output and "error:" not in r.output, r.output
    assert "test: " in r.output and out.is_file() and os.path.isfile(f"{small}.leaks.png"), r.output
    said = [line for line in r.output.splitlines() if line.startswith("note: leaks record not written: ")]
    assert len(said) == 1 and f"{lock} is not " in said[0], r.output
    assert "`featstore info` will not show these counts (printed above)." in said[0]
    assert "must be writable to keep it" not in said[0]  # the folder is: that is not why
    assert not record_path(small).exists()


def test_find_leaks_warns_of_a_refused_lock_and_returns_its_report(small, caplog):
    """#3: the library: find_leaks (record=True) returned nothing, raising StoreError, for a record it calls secondary."""
    lock = _plant(small, "hard link")
    with caplog.at_level("WARNING", logger="featstore"):
        report = find_leaks(small, threshold=0.999)
    assert report.rows == {"test": 5}
    said = [r.getMessage() for r in caplog.records if "leaks record not written" in r.getMessage()]
    assert len(said) == 1 and str(lock) in said[0] and said[0].endswith("; `featstore info` will not show this result")
    assert os.stat(lock).st_nlink == 2  # the colleague's link is left as it is


@needs_root
@pytest.mark.parametrize("member", [True, False], ids=["in its group", "not in its group"])
def test_a_colleagues_run_in_his_runs_folder_names_both_folders_and_one_command(tmp_path, monkeypatch, member):
    """#10: the first line named the run folder only; shared as it said, the next try met his runs folder with "make it
    writable". Both are named now, with one command that opens both (chgrp first where the user is not in the group)."""
    from featstore import sticky
    from featstore.experiments import evaluate

    store, runs, run = colleagues_run(tmp_path, 0o755)
    group = os.getegid() if member else TEAM
    os.chown(run, COLLEAGUE, group)
    os.chown(runs, COLLEAGUE, group)
    runs.chmod(0o755)
    monkeypatch.setattr(sticky, "privileged", lambda: False)  # an ordinary user, whom the folders' modes stop
    real, closed = os.access, {str(run), str(runs)}
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: False if os.fspath(p) in closed and m & os.W_OK else real(p, m, **k)
    )
    scored = []
    monkeypatch.setattr(evaluate, "add_split", lambda *a, **k: scored.append(1))  # reached only if not refused
    out = no_traceback(cli("runs", "--store", store, "--runs", runs, "evaluate", run.name, "--split", "v2"))
    who = f"uid {COLLEAGUE}"
    assert f"runs folder {runs} is {who}'s (mode 0755) and run folder {run} is {who}'s (mode 0755)" in out, out
    both = f"chmod g+w {runs} && chmod -R g+w {run}"
    if not member:
        both = f"chgrp <a group you both are in> {runs} && chmod g+w {runs} && chgrp -R <a group you both are in> {run} && chmod -R g+w {run}"
    assert f"ask {who} to run `featstore runs evaluate {run.name}`, or to make them group-writable ({both})" in out
    assert "is not writable" not in out and not scored
    closed.discard(str(run))  # he shares the run folder only: the runs folder is still named, whose, and its fix
    out = no_traceback(cli("runs", "--store", store, "--runs", runs, "evaluate", run.name, "--split", "v2"))
    assert (
        f"runs folder {runs} is {who}'s (mode 0755), which you may not change" in out and f"run folder {run}" not in out
    )
    assert not scored


def test_a_runs_folder_refusing_a_write_says_whose_it_is_not_make_it_writable(tmp_path, monkeypatch):
    """#10: an EACCES of a colleague's runs folder met while writing (its mode let her, an ACL or a race did not): "make
    it writable", of a folder she cannot change; now whose it is, and the command for him."""
    from featstore import sticky
    from featstore.runs.refusals import not_written

    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    monkeypatch.setattr(sticky, "privileged", lambda: False)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(runs).st_uid + 1)  # someone else's runs folder and run
    exc = PermissionError(13, "Permission denied", str(runs / ".tmp-x"))
    line = str(not_written(exc, runs, "r1", update=True))
    assert "make it writable" not in line, line
    assert f"runs folder {runs} is {sticky.owner_name(os.stat(runs).st_uid)}'s (mode " in line, line
    assert "to make it group-writable (" in line and " g+w " in line and "-R" not in line, line
    assert not_written(exc, runs, "r1").args[0].count("pass --runs DIR with a writable folder") == 1  # a fit: as before


@pytest.mark.parametrize("whose", ["own", "colleague's"])
def test_a_link_at_the_leaks_record_is_said_for_a_record(small, tmp_path, whose):
    """Attack 40 #6: a link at ``<store>.leaks.json`` gave the output line "Remove it or choose another name" (no option
    names the record) run together with the next sentence, and "must be writable" of a folder that is; a colleague's
    link is said as his."""
    if whose != "own" and os.geteuid() != 0:
        pytest.skip("a link owned by another user needs root to make (lchown)")
    link = record_path(small)
    link.symlink_to(os.devnull)
    if whose != "own":
        os.lchown(link, COLLEAGUE, COLLEAGUE)
    r = CliRunner().invoke(app, ["leaks", "--store", str(small), "--threshold", "0.999"])
    assert r.exit_code == 0 and "Traceback" not in r.output and "test: " in r.output, r.output
    said = [line for line in r.output.splitlines() if line.startswith("note: leaks record not written: ")]
    assert len(said) == 1, r.output
    assert f"{link} is a symbolic link" in said[0] and "choose another name" not in said[0], said[0]
    assert ("it is " in said[0]) == (whose != "own"), said[0]
    assert "run featstore leaks again. `featstore info` will not show these counts (printed above)." in said[0]
    assert "must be writable" not in said[0] and os.path.islink(link)
