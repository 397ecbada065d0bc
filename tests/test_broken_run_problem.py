"""A run record that does not validate is refused as ``BrokenRunError(problem, fix)``: a run folder's record names
its fix (remove the folder, restore its run.json), a record featstore was writing names none (no folder was written;
runs/write.py used a regex over the message to cut the fix off, which missed "Remove the folder" after a full stop
and left "restore that run.json, or" dangling)."""

from __future__ import annotations

import json

import pytest

from featstore import fit
from featstore.runs import write
from featstore.runs.files import BrokenRunError
from featstore.runs.kinds import parse_record


@pytest.fixture(scope="module")
def good(store, tmp_path_factory):
    """A valid fit record and its folder."""
    runs = tmp_path_factory.mktemp("good")
    rec = fit(store, "logreg", runs=runs)
    folder = runs / rec.id
    return json.loads((folder / "run.json").read_text()), folder


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.update(kind="nope"),
        lambda r: r.update(memory_budget=0),
        lambda r: r.update(class_names=[1, 2, 3]),
        lambda r: r.pop("created_at"),
        lambda r: r.update(created_at=3),
        lambda r: r.update(fingerprint="0" * 64),
        lambda r: r["extractor_attrs"].update(input_size=10**9),
        lambda r: r["extractor_attrs"].update(layer="other"),
        lambda r: r.update(artifact={"format": "what"}),
        lambda r: r.update(calibration={"method": "temperature", "T": -1.0}),
    ],
    ids=["kind", "budget", "class_names", "missing", "type", "fingerprint", "input_size", "attrs", "artifact", "T"],
)
def test_each_refusal_of_a_record_keeps_its_problem_apart_from_its_fix(good, edit):
    obj, folder = json.loads(json.dumps(good[0])), good[1]
    edit(obj)
    with pytest.raises(BrokenRunError) as got:
        parse_record(obj, folder)
    problem, line = got.value.problem, str(got.value)
    assert line.startswith(problem) and len(line) > len(problem), line  # the folder's fix follows the problem
    assert "remove the folder" not in problem.lower() and "restore" not in problem, problem


def test_a_record_refused_while_written_names_no_folder_to_remove(store, tmp_path, monkeypatch):
    made = write._with_figures

    def huge_side(
        record, preds
    ):  # a side no image has: refused after a full stop ("... of any size. Remove the folder")
        record = made(record, preds)
        return {**record, "extractor_attrs": {**record["extractor_attrs"], "input_size": 10**9}}

    monkeypatch.setattr(write, "_with_figures", huge_side)
    with pytest.raises(
        BrokenRunError, match=r"was not recorded \(no run folder was written\): .*input_size 1000000000"
    ) as e:
        fit(store, "logreg", runs=tmp_path)
    assert "remove the folder" not in str(e.value).lower() and "restore" not in str(e.value), e.value
    assert not any(tmp_path.iterdir())  # nothing left
