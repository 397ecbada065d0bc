"""Attack 70 findings 1, 4, 6 and 7 (helper fixDH): a sweep's choice keeps its mark when the sweep's other runs are
deleted, the "fitted on these rows" mark decided by rows rather than split names, calibration.model_temperature
validated as a run is read, and the default compare chart's folder error. Synthetic stores written from arrays."""

from __future__ import annotations

import json

from featstore.runs.selected import selected_on, sweep_choices


# ------------------------------------------------------------------ finding 1: a sweep's losers deleted
def test_a_sweeps_choice_keeps_its_mark_when_its_other_runs_are_deleted(tmp_path):
    (tmp_path / "logreg-1").mkdir()  # the chosen run kept; knn-2 and random_forest-3 deleted, the summary kept
    cells = [{"run": "logreg-1"}, {"run": "knn-2"}, {"run": "random_forest-3"}]
    (tmp_path / "sweep-aa.json").write_text(json.dumps({"chosen_on": "validation", "best_single": "logreg-1",
                                                         "winner": {"id": "logreg-1"}, "cells": cells}))  # fmt: skip
    got = sweep_choices(tmp_path)
    assert got["logreg-1"]["validation"] == "its classifier and extractor, among 3 runs of sweep-aa (1 of them here),"
    rec = {"id": "logreg-1", "kind": "fit", "selection": {}, "metrics": {}}
    assert "validation" in selected_on(rec, None, got)
    (tmp_path / "knn-2").mkdir()
    (tmp_path / "random_forest-3").mkdir()
    assert sweep_choices(tmp_path)["logreg-1"]["validation"].endswith("among 3 runs of sweep-aa,")
    # a sweep of one run chose nothing, and a summary marks no run that is not here
    (tmp_path / "sweep-bb.json").write_text(json.dumps({"chosen_on": "validation", "best_single": "knn-9",
                                                         "cells": [{"run": "knn-9"}]}))  # fmt: skip
    assert "knn-9" not in sweep_choices(tmp_path)
