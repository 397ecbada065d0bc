"""A fourth, independent attack (silently wrong data, computed-then-lost work, late refusals): one test per problem
found, each failing before its fix. Stores are synthetic (``writer.write_arrays``), so no test imports TensorFlow.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from featstore.cli import app
from tests.test_adversarial_attack3 import no_traceback, synthetic_store


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """Three 3-class splits of 8-value rows, and two runs: (store, runs, [run ids])."""
    from featstore import fit

    root = tmp_path_factory.mktemp("attack4")
    store = synthetic_store(root / "s.h5")
    runs = root / "runs"
    return store, runs, [fit(store, clf, runs=runs)["id"] for clf in ("logreg", "knn")]


# ------------------------------------------------------------------ fewshot scored on the images it drew from
def test_fewshot_refuses_to_score_on_the_split_it_draws_from(tiny_store, tmp_path):
    """probe and fit refuse --train and --test naming one split; fewshot drew its k images from test and scored
    on test (rc 0, an accuracy that includes the training images), a silently optimistic curve."""
    store, _, _ = tiny_store
    result = cli("fewshot", "--store", store, "--runs", tmp_path / "r", "--shots", "1", "--trials", "1",
                 "--train", "test", "--test", "test")  # fmt: skip
    out = no_traceback(result)
    assert result.exit_code == 1 and "different splits" in out, out
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


# ------------------------------------------------------------------ finetune's --workers refused after training
def test_finetune_refuses_decode_threads_before_any_work(tiny_store):
    """finetune --workers -1 (or 100000) trained every epoch from the cache, then was refused when it decoded
    validation: the whole training lost for an option it could check first (extract checks it first)."""
    store, runs, _ = tiny_store
    for workers in ("-1", "100000"):
        out = no_traceback(cli("finetune", "--store", store, "--runs", runs, "--run", "no-such-run",
                               "--unfreeze-from", "block5_conv1", "--workers", workers))  # fmt: skip
        assert "decoding threads" in out and "no run" not in out, out


# ------------------------------------------------------------------ read-only runs folder: show and compare
@pytest.fixture
def read_only_runs(tiny_store, tmp_path):
    """The store and its runs copied onto a tmpfs then made read-only (root only; skipped elsewhere)."""
    store, runs, ids = tiny_store
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    shutil.copy(store, mnt / "s.h5")
    shutil.copytree(runs, mnt / "runs")
    for png in (mnt / "runs").rglob("*.png"):
        png.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt / "s.h5", mnt / "runs", ids
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_runs_show_prints_the_figures_when_its_pngs_cannot_be_written(read_only_runs):
    """`runs show` on a read-only runs folder (a colleague's, a mounted archive) printed only "cannot write PNG":
    the figures it had read were not shown at all. They are printed, then one line says the PNGs were not written."""
    store, runs, ids = read_only_runs
    result = cli("runs", "--store", store, "--runs", runs, "show", ids[0])
    out = no_traceback(result)
    assert "test: accuracy" in out, out
    assert result.exit_code == 1 and "read-only" in out and "not written" in out, out


def test_runs_compare_prints_the_test_when_its_chart_cannot_be_written(read_only_runs):
    """`runs compare A B` computed the paired test, then lost it when the default chart (<runs>/compare.png) could
    not be written: only the error was printed. The comparison is printed, then one line about the chart."""
    store, runs, ids = read_only_runs
    result = cli("runs", "--store", store, "--runs", runs, "compare", *ids)
    out = no_traceback(result)
    assert "McNemar" in out, out
    assert result.exit_code == 1 and "read-only" in out and "not saved" in out, out
    assert not (runs / "compare.png").exists()


# ------------------------------------------------------------------ an ensemble of one run twice
def test_an_ensemble_of_one_run_named_twice_is_refused(tiny_store):
    """`ensemble knn knn` recorded the single run as an 'ensemble' that listed as a distinct run."""
    store, runs, (logreg, knn) = tiny_store
    before = sorted(p.name for p in runs.iterdir())
    result = cli("ensemble", knn, knn[:-1], logreg, "--store", store, "--runs", runs)  # an id and its own prefix
    out = no_traceback(result)
    assert result.exit_code == 1 and f"{knn} named more than once" in out, out
    assert sorted(p.name for p in runs.iterdir()) == before  # nothing recorded
