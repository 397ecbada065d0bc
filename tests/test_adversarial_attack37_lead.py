"""Attack 37: crafted run folders and presets that passed every check and still ended in a traceback or a false line."""

from __future__ import annotations

import json

import pytest

from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.mark.parametrize("value", [None, 3, True, ["x"]])
def test_a_run_whose_predictions_entry_is_not_an_object_is_listed_as_broken(tmp_path, value):
    """#2: `predictions.test` null or a number: `runs` and `report` ended in a TypeError for every user of the folder."""
    from featstore import fit

    store, runs = synthetic_store(tmp_path / "s.h5"), tmp_path / "runs"
    bad, good = fit(store, "logreg", runs=runs)["id"], fit(store, "svm", runs=runs)["id"]
    record = runs / bad / "run.json"
    obj = json.loads(record.read_text())
    obj["predictions"]["test"] = value
    record.write_text(json.dumps(obj))
    out = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert "1 broken run folder(s), not used" in out and f"{bad}: " in out and "predictions of 'test'" in out, out
    assert good in out, out
