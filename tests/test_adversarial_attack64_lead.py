"""Attack 64 #3, #4(a): `featstore runs --store X` with X a typo, a folder, a FIFO or /dev/null (and no runs folder
beside it) said "no runs yet; fit one with `featstore fit --clf logreg`", exit 0, the fit it named going into
features.h5; the runs table's note said `runs compare` and `ensemble` refuse runs of two stores, which they take where
both scored the same image files."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.report.runs import stores_note


@pytest.mark.parametrize("kind", ["typo", "folder", "fifo", "device"])
def test_runs_of_a_store_that_is_not_there_is_one_line(tmp_path, kind):
    store = {"typo": tmp_path / "feature.h5", "folder": tmp_path / "adir.h5", "fifo": tmp_path / "f.h5"}.get(kind)
    if kind == "folder":
        store.mkdir()
    elif kind == "fifo":
        os.mkfifo(store)
    elif kind == "device":
        store = "/dev/null"
    got = CliRunner().invoke(app, ["runs", "--store", str(store)])
    said = "does not exist" if kind == "typo" else "is not a regular file"
    assert got.exit_code == 1 and f"store {store} {said}" in got.output and ", and no runs folder" in got.output
    assert "no runs yet" not in got.output and "--runs with their folder" in got.output


def test_runs_of_a_store_link_to_nothing_says_so(tmp_path):
    """Attack 66 #3: a link to a moved store was "not a regular file (a folder, FIFO or device)"."""
    (tmp_path / "s.h5").symlink_to(tmp_path / "moved" / "s.h5")
    got = CliRunner().invoke(app, ["runs", "--store", str(tmp_path / "s.h5")])
    assert got.exit_code == 1 and "s.h5 is a link to nothing (" in got.output and "FIFO" not in got.output, got.output


def test_runs_of_a_store_gone_but_its_runs_there_are_listed(tmp_path):
    (tmp_path / "s.runs").mkdir()  # the store moved away, its runs folder is here: listed (none yet)
    got = CliRunner().invoke(app, ["runs", "--store", str(tmp_path / "s.h5")])
    assert got.exit_code == 0 and "no runs yet" in got.output, got.output


def test_the_note_on_two_stores_says_what_compare_takes():
    note = stores_note([{"store": "/a.h5"}, {"store": "/b.h5"}])  # what it reads of a RunRecord
    assert "may have been scored on different images" in note and "refuse such pairs" not in note
    assert "only where both scored the same image files, in the same order, with the same labels" in note
