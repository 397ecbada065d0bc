"""Attack 67 findings 6, 2, 7, 1, 9, 4 and 13 (helper fixDB): an ensemble of a sweep's chosen run, the sweep's own
verdict on the split that chose, the bound on the sweep summaries read, the advice to judge an ensemble on test,
`runs show` of a sweep's choices, tied cells, and a registered classifier that disagrees with itself. Synthetic
stores written from arrays."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from featstore import ensemble, fit
from featstore.errors import ConfigError
from featstore.experiments.compare import _disagrees, compare_pair
from featstore.experiments.evaluate import evaluate_and_record
from featstore.experiments.sweep import sweep
from featstore.experiments.sweep_summary import NOT_A_TEST, versus_best
from featstore.report.site.storeruns import mark_selected
from featstore.runs import selected
from featstore.runs.selected import ensemble_key, selected_on, sweep_choices
from tests.test_adversarial_attack65_fixCZ import _store, cli


def _mine(pair, split, rid):
    return [s for s in pair.splits[split].selected if s.startswith(f"{rid} was selected")]


# ------------------------------------------------------------------ finding 6: an ensemble of a sweep's choice
def test_an_ensemble_of_a_sweeps_chosen_run_is_chosen_on_that_split(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    summary = sweep(store, ["logreg", "knn"], runs=runs)
    best = summary["best_single"]
    other = next(c["run"] for c in summary["cells"] if c["run"] != best)
    third = fit(store, "logreg", {"C": [0.01]}, runs=runs)  # chose nothing
    ens = ensemble([best, other], None, store, runs)
    assert ens["members_selected_on"][best] == ["validation"]  # was [] (the sweep's choice was not looked up)
    pair = compare_pair(ens.id, third.id, store, runs)
    assert _mine(pair, "validation", ens.id) and pair.splits["validation"].verdict.startswith("not judged")
    # the report site marks it too
    views = [type("V", (), {"rec": r, "selected": None})() for r in (ens, third)]
    mark_selected(views, runs)
    assert "validation" in views[0].selected and not views[1].selected


def test_an_ensemble_of_a_sweep_ensembles_members_and_weights_is_that_choice(tmp_path):
    """Rebuilt by hand (the way to give it a test figure), the sweep's ensemble kept no mark: "larger than chance"."""
    for rid in ("logreg-1", "knn-2", "svm-3"):
        (tmp_path / rid).mkdir()
    ens = {"run": "ensemble-4", "members": ["logreg-1", "knn-2"], "weights": [2.0, 1.0]}
    s = {"chosen_on": "validation", "best_single": "logreg-1", "cells": [{"run": "logreg-1"}, {"run": "knn-2"}]}
    (tmp_path / "sweep-aa.json").write_text(json.dumps({**s, "ensemble": ens}))
    sweeps = sweep_choices(tmp_path)
    assert ensemble_key(["knn-2", "logreg-1"], [0.5, 1]) in sweeps  # any order, any scale
    again = {"id": "ensemble-9", "members": ["knn-2", "logreg-1"], "weights": [1.0, 2.0], "metrics": {}}
    got = selected_on(again, None, sweeps)
    assert "sweep-aa's greedy selection" in got["validation"]
    other = {"id": "ensemble-8", "members": ["knn-2", "svm-3"], "weights": [1.0, 1.0], "metrics": {}}
    assert selected_on(other, None, sweeps) == {}  # neither member chosen, other members: nothing


# ------------------------------------------------------------------ finding 2: the sweep's own verdict
def test_the_sweep_gives_no_verdict_on_the_split_that_chose_both_runs(tmp_path):
    store, runs = _store(tmp_path / "s.h5", signal=0.5), tmp_path / "runs"
    a = fit(store, "logreg", {"C": [1.0]}, runs=runs)
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    ens = ensemble([a.id, b.id], [1.0, 1.0], store, runs, "validation")
    got = versus_best(ens, a, store, runs, "validation")
    val = got["validation"]
    assert val["verdict"] == NOT_A_TEST and NOT_A_TEST in val["sentence"] and val["selected_on"]
    assert "within noise" not in val["sentence"] and "larger than chance" not in val["sentence"]
    assert got["test"]["verdict"] in ("within noise", "larger than chance", "no difference")  # judged on test


def test_a_sweep_without_test_says_its_ensembles_gain_is_not_a_test(tmp_path):
    store, runs = _store(tmp_path / "s.h5", signal=0.6, seed=3), tmp_path / "runs"
    forest = {"n_estimators": [5], "max_depth": [2]}
    summary = sweep(store, ["logreg", "knn", "random_forest"], params={"random_forest": forest}, runs=runs,
                    ensemble=True, test="none")  # fmt: skip
    if summary["ensemble"] is None:
        pytest.skip(f"no ensemble on this data: {summary['ensemble_note']}")
    for v in summary["ensemble"]["vs_best_single"].values():
        assert v["verdict"] == NOT_A_TEST
    if summary["winner"]["id"] == summary["ensemble"]["run"]:
        assert summary["winner"]["vs_best_single"]["verdict"] == NOT_A_TEST


# ------------------------------------------------------------------ finding 7: the summaries read, bounded
def test_sweep_summaries_are_read_within_a_bound_and_count_only_runs_here(tmp_path, monkeypatch, caplog):
    for rid in ("logreg-1", "knn-2"):
        (tmp_path / rid).mkdir()
    cells = [{"run": f"x{i:05d}"} for i in range(5000)] + [{"run": "logreg-1"}, {"run": "knn-2"}]
    for i, best in enumerate(("logreg-1", "knn-2", "x00001")):
        (tmp_path / f"sweep-{i:02x}.json").write_text(json.dumps({"chosen_on": "validation", "best_single": best,
                                                                   "cells": cells}))  # fmt: skip
        os.utime(tmp_path / f"sweep-{i:02x}.json", (1000 + i, 1000 + i))
    got = sweep_choices(tmp_path)
    assert set(got) == {"logreg-1", "knn-2"}  # x00001 is no run of this folder: not marked
    assert "among 5002 runs of sweep-00 (2 of them here)" in got["logreg-1"]["validation"]  # the summary's count
    monkeypatch.setattr(selected, "SWEEPS_READ", 2)
    with caplog.at_level(logging.WARNING, logger="featstore.runs.selected"):
        got = sweep_choices(tmp_path)
    assert set(got) == {"knn-2"}  # the newest two read (sweep-02, sweep-01); sweep-00 passed over, and said so
    assert "1 sweep summaries (sweep-00.json) not read" in caplog.text
    monkeypatch.setattr(selected, "SWEEPS_READ", 1000)
    monkeypatch.setattr(selected, "SWEEPS_READ_BYTES", (tmp_path / "sweep-00.json").stat().st_size + 10)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="featstore.runs.selected"):
        sweep_choices(tmp_path)
    assert "2 sweep summaries" in caplog.text


# ------------------------------------------------------------------ finding 1: judging an ensemble on test
def test_an_ensemble_without_test_is_advised_what_works(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    a = fit(store, "logreg", {"C": [1.0]}, runs=runs, test="none")
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs, test="none")
    ens = ensemble([a.id, b.id], [1.0, 3.0], store, runs, "validation")
    said = compare_pair(ens.id, a.id, store, runs).splits["validation"].elsewhere  # where to judge instead
    where = f" --store {store} --runs {runs}"
    assert f"runs evaluate {ens.id}" not in said and f"runs evaluate {b.id} --split test{where}`" in said
    assert f"`featstore ensemble {a.id} {b.id} --weight 1.0 --weight 3.0{where}`" in said
    with pytest.raises(ConfigError, match="featstore ensemble"):
        evaluate_and_record(ens.id, "test", store, runs)
    for m in (a, b):  # what the advice says works
        evaluate_and_record(m.id, "test", store, runs)
    again = ensemble([a.id, b.id], [1.0, 3.0], store, runs)
    assert "test" in again.metrics


# ------------------------------------------------------------------ finding 9: runs show of a sweep's choices
def test_the_sites_page_of_a_sweeps_choice_says_it_too(tmp_path):
    """Attack 73 #8: the report site's page of a sweep's chosen run said "(nothing to select)" beside its own
    "selected here" mark (its description was made without the folder's selection)."""
    import featstore

    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    best = sweep(store, ["logreg", "knn"], runs=runs)["best_single"]
    featstore.build_report(store, runs=runs, out=tmp_path / "site", leaks=False)
    page = (tmp_path / "site" / "runs" / f"{best}.html").read_text()
    assert "(nothing to select)" not in page and "selected on validation: its classifier and extractor" in page


def test_runs_show_says_the_sweep_chose_its_run(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    summary = sweep(store, ["logreg", "knn"], runs=runs)
    best = summary["best_single"]
    out = cli("runs", "show", best, "--store", store, "--runs", runs)
    assert out.exit_code == 0, out.output
    assert "(nothing to select)" not in out.output
    assert f"selected on validation: its classifier and extractor, among 2 runs of {summary['id']}" in out.output
    other = next(c["run"] for c in summary["cells"] if c["run"] != best)
    ens = ensemble([best, other], None, store, runs)
    out = cli("runs", "show", ens.id, "--store", store, "--runs", runs)
    assert out.exit_code == 0, out.output
    assert "selected on validation:" in out.output


# ------------------------------------------------------------------ finding 4: tied cells
def test_a_sweeps_tie_is_named_and_every_tied_cell_marked(tmp_path, caplog):
    store, runs = _store(tmp_path / "s.h5", signal=20.0), tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="featstore.experiments.sweep"):
        summary = sweep(store, ["logreg", "knn"], runs=runs)
    ids = [c["run"] for c in summary["cells"]]
    assert summary["tied"] == ids and "2 cells tie at 1.0000" in summary["selection"]
    assert f"the first in grid order (extractor, then classifier), {ids[0]}, is kept" in summary["selection"]
    assert "tie at 1.0000" in caplog.text
    assert set(sweep_choices(runs)) >= set(ids)


# ------------------------------------------------------------------ finding 13: a registered classifier
class _Named:
    """A run's record under another classifier's name (one registered in a script, unknown here)."""

    def __init__(self, rec, clf):
        self._rec, self.clf = rec, clf

    def __getattr__(self, name):
        return getattr(self._rec, name)

    def __getitem__(self, key):
        return self._rec[key]


def test_a_registered_classifier_that_disagrees_is_not_told_to_refit(tmp_path):
    store, runs = _store(tmp_path / "s.h5", signal=3.0), tmp_path / "runs"
    rec = fit(store, "logreg", {"C": [1.0]}, runs=runs)
    y = (np.arange(40) % 2).astype(np.intp)
    wrong = 1 - y
    builtin = _disagrees(rec, "validation", y, wrong, 2)
    assert "refit it" in builtin  # a built-in's run recorded before the agreeing heads
    said = _disagrees(_Named(rec, "script_only_clf"), "validation", y, wrong, 2)
    assert "refit" not in said and "featstore.models.agreeing.agree" in said and "registered classifier" in said
