"""Attack 17 (issue 19), runs and records: a SIGKILL between ``runs evaluate``'s two renames hid the run, two ``leaks``
runs lost one's entry of ``<store>.leaks.json``, extreme ensemble weights under- or overflowed, a run.json's
temperature outside the bounds featstore fits within was used, and a legal 245-byte output name failed because of
featstore's longer temporary name. Reproducers on branch attack17; stores are synthetic (no TensorFlow)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from featstore.leftovers import TEMP, host_tag, replace_with_new, temp_prefix
from tests import test_adversarial_attack14 as a14
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store, run = a14.store_src, a14.store, a14.run  # the fourteenth attack's fixtures: a store and a run
REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ finding 3: a kill between add_split's two renames
_KILL_IN_SWAP = """
import os, signal, sys
store, runs, rid = sys.argv[1:]
real = os.replace
def replace(a, b, *k, **kw):  # SIGKILL right after the run folder is moved aside, before the new version moves in
    real(a, b, *k, **kw)
    if os.path.basename(str(a)) == rid and str(b).endswith(".old.tmp"):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from featstore.experiments.evaluate import evaluate_and_record
evaluate_and_record(rid, "test", store, runs)
"""


def _killed_in_swap(store, runs, rid) -> tuple[Path, Path]:
    """Run ``runs evaluate rid --split test`` in a process SIGKILLed between the two renames; (old, new) version folders."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _KILL_IN_SWAP, str(store), str(runs), rid], env=env, timeout=120)
    assert done.returncode == -9, done
    (old,) = runs.glob(f".{rid}.*.old.tmp")
    new = old.with_name(old.name[: -len(".old.tmp")] + ".tmp")
    assert not (runs / rid).exists() and new.is_dir()  # the run under no name: what the attack found
    return old, new


def test_a_run_killed_between_the_renames_is_listed_at_once_with_its_new_version(run):
    """Finding 3: for 10 minutes `runs` said "no runs yet" and `runs show` "no run with id", and the verified new version
    was later thrown away; the writer's marker names a process that is gone, so the swap is finished at once."""
    store, runs, rid = run
    _killed_in_swap(store, runs, rid)
    out = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert rid in out and "no runs yet" not in out and "broken" not in out, out
    assert "test" in json.loads((runs / rid / "run.json").read_text())["metrics"]  # the new version, not the old
    assert [p.name for p in runs.iterdir() if p.name.endswith(".tmp")] == []
    shown = cli("runs", "--store", store, "--runs", runs, "show", rid)
    assert shown.exit_code == 0, no_traceback(shown)


def test_a_hidden_run_whose_new_version_is_gone_gets_its_old_one_back(run):
    """Finding 3: when the new version cannot be used (removed by an older featstore's cleaner, or its run.json
    damaged), the old version is put back: a kill leaves the old version or the new one, never none."""
    import shutil

    store, runs, rid = run
    _, new = _killed_in_swap(store, runs, rid)
    shutil.rmtree(new)
    out = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert rid in out and "broken" not in out, out
    assert "test" not in json.loads((runs / rid / "run.json").read_text())["metrics"]  # the old version
    assert [p.name for p in runs.iterdir() if p.name.endswith(".tmp")] == []


def test_a_hidden_run_whose_writer_cannot_be_proven_gone_is_named_then_put_back(run):
    """Finding 3: a writer on another machine may still be between its renames: the run is named with the folder that
    holds it (not "no runs yet", not "no run with id"), and put back with its new version after ORPHAN_AGE_S."""
    from featstore.runs.versions import run_lock
    from featstore.runs.write import ORPHAN_AGE_S, clean_orphans

    store, runs, rid = run
    old, new = _killed_in_swap(store, runs, rid)
    marker = old / ".featstore-tmp"
    replace_with_new(marker, json.dumps({**json.loads(marker.read_text()), "host": "0" * 16}))
    listing = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert "no runs yet" not in listing and f"{rid}: hidden while a new version is swapped in" in listing, listing
    assert "on another machine" in listing and str(old) in listing, listing
    for args in (("show", rid), ("evaluate", rid, "--split", "test")):
        result = cli("runs", "--store", store, "--runs", runs, *args)
        out = no_traceback(result)
        assert result.exit_code == 1 and f"run {rid} is hidden" in out and str(old) in out, out
        assert "no run with id" not in out, out
    assert not (runs / rid).exists()  # not provably gone: left as it is
    with run_lock(runs, rid):  # another process holds the run: its copies are kept, however old
        clean_orphans(runs, now=time.time() + ORPHAN_AGE_S + 60)
    assert old.is_dir() and new.is_dir() and not (runs / rid).exists()
    clean_orphans(runs, now=time.time() + ORPHAN_AGE_S + 60)
    assert "test" in json.loads((runs / rid / "run.json").read_text())["metrics"]
    assert [p.name for p in runs.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ finding 4: two leaks runs write one record
def _report(store, extractor: str):
    from featstore.experiments.leaks.result import LeakReport

    return LeakReport(
        str(store), extractor, "train", 0.9, [], {"test": 1}, {"test": 15}, {"test": 0.5}, [], {}, 0.1, fingerprint="f"
    )


def test_two_leaks_runs_finishing_together_both_keep_their_entry(tmp_path, monkeypatch):
    """Finding 4: write_record read, changed and wrote <store>.leaks.json without a lock: a second run that read and
    wrote the record while the first was between its read and its write lost its extractor's entry. The first pauses
    after its read until the second has finished or waits for the lock (deterministic, no sleep)."""
    from featstore.experiments.leaks import record

    store = tmp_path / "f.h5"
    real, errors, turn = record.read_record, [], threading.Event()  # turn: the second finished, or waits for the lock
    second = threading.Thread(target=lambda: _write(record, store, "s2", errors, turn))

    class Waiting(logging.Handler):
        def emit(self, rec):
            if "waiting for it" in rec.getMessage():
                turn.set()

    def read(path):
        data = real(path)
        if threading.current_thread() is not second and not second.is_alive() and not turn.is_set():
            second.start()  # the first run, between its read and its write
            assert turn.wait(30)
        return data

    log, handler = logging.getLogger("featstore.runs.versions"), Waiting()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    monkeypatch.setattr(record, "read_record", read)
    try:
        record.write_record(_report(store, "s1"))
        second.join(30)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert not errors, errors
    assert sorted(json.loads(record.record_path(store).read_text())["extractors"]) == ["s1", "s2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5.leaks.json"]  # the lock file is removed


def _write(record, store, extractor: str, errors: list, done: threading.Event) -> None:
    try:
        record.write_record(_report(store, extractor))
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)
    finally:
        done.set()


# ------------------------------------------------------------------ finding 8: extreme ensemble weights
def test_ensemble_weights_act_as_their_ratios_at_any_scale(run):
    """Finding 8: `--weight 5e-324 --weight 0` underflowed (log-loss 12.0 recorded instead of the 0.49 of "1 0"), and
    `1e308 1e308` was refused as not finite; weights are now divided by the largest before use."""
    from featstore import ensemble, fit

    store, runs, rid = run
    other = fit(store, "knn", test=None, runs=runs)["id"]

    def figures(weights):
        m = ensemble([rid, other], weights, store, runs)["metrics"]["validation"]
        return m["accuracy"], round(m["log_loss"], 9), round(m["ece"], 9)

    assert figures([5e-324, 0.0]) == figures([1.0, 0.0])
    assert figures([1e308, 1e308]) == figures([1.0, 1.0])
    for bad in ([0.0, 0.0], [float("inf"), 1.0], [-1.0, 1.0]):
        with pytest.raises(Exception, match="finite and not all zero"):
            ensemble([rid, other], bad, store, runs)


# ------------------------------------------------------------------ finding 9: a temperature outside its bounds
@pytest.mark.parametrize("t", [1e308, 100.0001, 0.0099, 1e-30])
def test_a_temperature_outside_the_fitted_bounds_is_a_damaged_record(run, t):
    """Finding 9: T = 1e308 or 1e-30 in run.json (featstore fits T within [0.01, 100]) was used: `runs evaluate`
    recorded uniform or one-hot probabilities. The run is refused in one line naming its run.json."""
    store, runs, rid = run
    path = runs / rid / "run.json"
    obj = json.loads(path.read_text())
    obj["calibration"]["T"] = t
    path.write_text(json.dumps(obj))
    result = cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "test")
    out = no_traceback(result)
    assert result.exit_code == 1 and str(path) in out and "lies outside [0.01, 100]" in out, out
    assert len(out.strip().splitlines()) == 1, out


@pytest.mark.parametrize("t", [0.01, 100.0])
def test_a_temperature_on_its_bounds_is_used(run, t):
    """The bounds themselves are temperatures featstore fits (a held-out set it got all right ends on one)."""
    store, runs, rid = run
    path = runs / rid / "run.json"
    obj = json.loads(path.read_text())
    obj["calibration"]["T"] = t
    path.write_text(json.dumps(obj))
    out = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert rid in out and "broken" not in out, out


# ------------------------------------------------------------------ finding 10: the temporary name of a long name
def test_an_output_name_of_250_bytes_is_written(store, tmp_path):
    """Finding 10: a legal 245-byte --out failed with "File name too long" because the temporary name featstore writes
    first adds ~40 bytes; the name part of the temporary name is cut and digested when needed."""
    out = tmp_path / ("b" * 246 + ".csv")  # 250 bytes: the file system takes it
    result = cli("export", "--store", store, "--split", "test", "--out", out)
    assert result.exit_code == 0, no_traceback(result)
    assert out.read_text().count("\n") == 16  # a header and 15 rows
    replace_with_new(tmp_path / ("é" * 125), "text")  # 250 bytes of two-byte characters: cut at a character
    assert (tmp_path / ("é" * 125)).read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_cut_temporary_name_still_names_its_writer():
    """The sweep proves a temporary file abandoned by its pid and host tag: a cut name keeps both, and two long names
    that differ only at their end get different temporary names."""
    prefix = temp_prefix("b" * 250)
    match = TEMP.fullmatch(prefix + "abcdef123456.tmp")
    assert match and int(match["pid"]) == os.getpid() and match["host"] == host_tag()
    assert len(os.fsencode(prefix + "abcdef123456.tmp")) <= 255
    assert temp_prefix("b" * 249 + "x") != temp_prefix("b" * 249 + "y")
    assert temp_prefix("x.csv").startswith(".x.csv.fs")  # short names are as before


# ------------------------------------------------------------------ review: runs show reads a split only for a figure it lacks
def test_runs_show_reads_stored_splits_in_blocks_and_only_for_a_missing_figure(run, monkeypatch):
    """`runs show` loaded every stored split's (N, K) probabilities whole (figures_of), even with every figure
    recorded; now a split is read, a block at a time, only when one of its figures is missing, and the figures are
    those of the whole array. Every read of a stored ``__proba`` member is held to one block of 6 rows here."""
    import zipfile

    import numpy as np

    from featstore.experiments.evaluate import show_run
    from featstore.runs import folder as run_folder
    from featstore.runs.folder import calibrated_predictions, get_run
    from featstore.stats.figures import completed

    store, runs, rid = run
    block = 6 * 3 * 8  # 6 rows of 3 classes (of 15), more than a .npy header
    real, sizes = zipfile.ZipExtFile.read, []

    def bounded(self, n=-1):
        if "__proba" in self.name:
            sizes.append(n)
            assert n is not None and 0 <= n <= block, f"read {n} bytes of {self.name} at once"
        return real(self, n)

    path = runs / rid / "run.json"
    obj = json.loads(path.read_text())
    m = obj["metrics"]["validation"]
    for key in ("log_loss", "log_loss_ci", "ece", "ece_ci", "reliability"):
        m.pop(key, None)  # a run recorded before featstore recorded these
    path.write_text(json.dumps(obj))
    rec, folder = get_run(rid, store, runs)
    preds = calibrated_predictions(folder, rec)  # the whole arrays, to compare with
    want = completed(rec.to_json()["metrics"]["validation"], preds["validation__labels"], preds["validation__proba"])
    monkeypatch.setattr(run_folder, "BLOCK_BYTES", block)
    monkeypatch.setattr(zipfile.ZipExtFile, "read", bounded)
    shown, _ = show_run(rid, store, runs)
    assert sizes and max(sizes) <= block
    assert json.loads(json.dumps(shown.to_json()["metrics"]["validation"])) == json.loads(json.dumps(want))
    assert np.isclose(shown.metrics["validation"].figure("log_loss"), want["log_loss"])
