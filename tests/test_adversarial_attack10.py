"""Tenth attack (issue #19, "outputs safe, inputs bounded"): the run record's ``streamed``/``memory_budget`` fields,
many-class confusion matrices, charts named inside an image folder, split folders that are one folder. Each test
failed before its fix. Stores are synthetic (``writer.write_arrays``), so no test imports TensorFlow unless it says so.
"""

from __future__ import annotations

import json

import pytest

from featstore import fit
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A synthetic store and one logreg run in its default runs folder: (store, runs, run id)."""
    root = tmp_path_factory.mktemp("a10")
    store = synthetic_store(root / "f.h5")
    return store, root / "f.runs", fit(store, "logreg")["id"]


def _edit(folder, **changes) -> None:
    p = folder / "run.json"
    obj = json.loads(p.read_text())
    obj.update(changes)
    p.write_text(json.dumps(obj))


# ------------------------------------------------------------------ run.json: streamed and memory_budget
@pytest.mark.parametrize(
    "changes",
    [
        {"streamed": True, "memory_budget": None},
        {"streamed": True, "memory_budget": 10**400},
        {"streamed": True, "memory_budget": -5},
        {"streamed": False, "memory_budget": 0},
    ],
    ids=["none", "huge", "negative", "zero"],
)
def test_a_crafted_memory_budget_is_a_broken_run_not_a_traceback(one_run, tmp_path, changes):
    """run.json's ``memory_budget`` was only type-checked (an int or null): ``streamed: true`` with a null budget
    ended ``runs show`` in "TypeError: '<' not supported between 'NoneType' and 'int'", a budget of 10**400 in
    "OverflowError: int too large to convert to float", and -5 printed "streamed within -5 bytes"."""
    import shutil

    store, runs, rid = one_run
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    _edit(copy / rid, **changes)
    out = no_traceback(cli("runs", "--store", store, "--runs", copy, "show", rid))
    assert "memory_budget" in out and "remove the folder" in out, out
    listed = no_traceback(cli("runs", "--store", store, "--runs", copy))
    assert "broken" in listed, listed
