"""Attack 65 findings 6, 11, 9, 4 and 3 (helper fixCZ): `runs compare` on the split a sweep chose its run on, an
ensemble whose member was deleted, a run whose stored probabilities disagree with its recorded figures, the nested
JSON verdict and the advised `runs evaluate` command. Synthetic stores written from arrays."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import numpy as np
from typer.testing import CliRunner

from featstore import ensemble, fit
from featstore.cli import app
from featstore.experiments.compare import compare_pair
from featstore.experiments.sweep import sweep
from featstore.report.tables import pair_report
from featstore.store import writer
from featstore.store.writer import synthetic_attrs


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _store(path, sizes=(("train", 60), ("validation", 40), ("test", 60)), seed=1, signal=1.0):
    """Labels a/b in turn; features noise plus ``signal`` times the label."""
    rng = np.random.default_rng(seed)
    for split, n in sizes:
        y = (np.arange(n) % 2).astype(np.int32)
        X = (rng.normal(size=(n, 6)) + signal * y[:, None]).astype(np.float32)
        writer.write_arrays(path, "syn", split, X, y, ["a", "b"], attrs=synthetic_attrs(X.shape[1:], model="synthetic"))
    return path


FOREST = {"n_estimators": [3], "max_depth": [1]}


# ------------------------------------------------------------------ finding 6: a sweep's choice
def test_the_run_a_sweep_chose_is_marked_selected_on_validation(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    summary = sweep(
        store, ["logreg", "knn", "random_forest"], params={"random_forest": FOREST}, runs=runs, show_test=True
    )
    best = summary["winner"]["id"]
    assert summary["best_single"] == best and summary["chosen_on"] == "validation"
    other = next(c["run"] for c in summary["cells"] if c["run"] != best)
    pair = compare_pair(best, other, store, runs)
    val = pair.splits["validation"]
    assert len(val.selected) == 1 and val.selected[0].startswith(f"{best} was selected on validation")
    assert summary["id"] in val.selected[0] and "among 3 runs of" in val.selected[0]
    assert val.verdict.startswith("not judged") and "larger than chance" not in val.sentence()
    assert pair.splits["test"].selected == ()  # test was read after the choice: judged
    assert f"{other} was selected" not in pair_report(pair)  # only the chosen run is marked


def test_a_sweep_of_one_run_marks_nothing(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    one = sweep(store, ["logreg"], runs=runs)["winner"]["id"]
    other = fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    assert compare_pair(one, other.id, store, runs).splits["validation"].selected == ()


# ------------------------------------------------------------------ finding 11: a member deleted
def test_an_ensemble_keeps_its_members_selection_after_a_member_is_deleted(tmp_path):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    searched = fit(store, "logreg", {"C": [0.01, 1.0, 100.0]}, runs=runs)  # chose C on validation
    plain = fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    other = fit(store, "random_forest", FOREST, runs=runs)
    e = ensemble([searched.id, plain.id], store=store, runs=runs)
    assert e["members_selected_on"] == {searched.id: ["validation"], plain.id: []}
    shutil.rmtree(runs / searched.id)
    val = compare_pair(e.id, other.id, store, runs).splits["validation"]
    assert val.selected and val.selected[0].startswith(f"{e.id} was selected on validation")
    assert "its members' settings" in val.selected[0] and val.verdict.startswith("not judged")


def test_an_older_ensemble_with_a_member_gone_marks_every_split_but_test():
    from featstore.runs.selected import selected_on

    old = {"id": "ensemble-1", "members": ["m1", "m2"], "metrics": {"validation": {}, "test": {}}}
    got = selected_on(old, {"m2": {"kind": "fit", "selection": {}}}.get)
    assert list(got) == ["validation"] and "m1, gone: where it chose is unknown" in got["validation"]


# ------------------------------------------------------------------ finding 9: probabilities and figures disagree
def test_a_run_whose_recorded_figures_are_not_its_probabilities_gets_no_verdict(tmp_path):
    store, runs = _store(tmp_path / "s.h5", signal=0.5), tmp_path / "runs"
    a = fit(store, "logreg", runs=runs)
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    path = runs / a.id / "run.json"
    obj = json.loads(path.read_text())
    m = obj["metrics"]["test"]
    m["confusion_matrix"], m["accuracy"] = [[30, 0], [0, 30]], 1.0  # as an old sgd run recorded its own predictions
    path.write_text(json.dumps(obj))
    pair = compare_pair(a.id, b.id, store, runs)
    test, val = pair.splits["test"], pair.splits["validation"]
    assert len(test.disagree) == 1 and test.disagree[0].startswith(f"no verdict: {a.id}'s recorded figures on test")
    assert "refit it" in test.sentence() and "beats" not in test.sentence()
    assert test.verdict.startswith("not judged") and val.disagree == ()  # validation agrees: judged
    assert test.figures[0]["accuracy"] < 1.0  # the figures shown are those of the probabilities compared
    js = pair.to_dict()["splits"]["test"]
    assert js["comparison"]["verdict"] == js["verdict"] and js["probabilities_disagree"] == list(test.disagree)
    text = pair_report(pair)
    assert sum(line.strip().startswith("no verdict:") for line in text.splitlines()) == 1


# ------------------------------------------------------------------ findings 4 and 3: nested JSON, the advice
def test_the_nested_json_comparison_withholds_the_verdict_where_the_split_does(tmp_path):
    store, runs = _store(tmp_path / "s.h5", signal=2.0), tmp_path / "my.runs"
    a = fit(store, "random_forest", {**FOREST, "seed": list(range(6))}, runs=runs, test="none")
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs, test="none")
    pair = compare_pair(a.id, b.id, store, runs)
    js = pair.to_dict()["splits"]["validation"]
    assert js["verdict"].startswith("not judged")
    assert js["comparison"]["verdict"] == js["verdict"] and js["comparison"]["sentence"] == js["sentence"]
    assert "larger than chance" not in json.dumps(js["comparison"])


def test_the_advised_runs_evaluate_names_the_store_and_runs_folder_and_works_as_printed(tmp_path):
    store, runs = _store(tmp_path / "s.h5", signal=2.0), tmp_path / "my.runs"
    a = fit(store, "random_forest", {**FOREST, "seed": list(range(6))}, runs=runs, test="none")
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs, test="none")
    pair = compare_pair(a.id, b.id, store, runs)
    commands = re.findall(r"`(featstore runs evaluate [^`]+)`", pair.splits["validation"].sentence())
    assert len(commands) == 2 and all(f"--runs {runs}" in c and f"--store {store}" in c for c in commands)
    out = cli(*shlex.split(commands[0])[1:])  # works as printed
    assert out.exit_code == 0, out.output
    assert "test" in json.loads((runs / a.id / "run.json").read_text())["metrics"]


def test_sweep_choices_reads_best_single_and_winner_and_passes_over_bad_summaries(tmp_path):
    from featstore.runs.selected import sweep_choices

    cells = [{"run": "logreg-1"}, {"run": "knn-2"}, {"run": None, "diverged": "nan"}]
    good = {"chosen_on": "validation", "best_single": "logreg-1", "winner": {"id": "ensemble-3"}, "cells": cells}
    (tmp_path / "sweep-aa.json").write_text(json.dumps(good))
    one = {"chosen_on": "train.oof", "winner": {"id": "svm-4"}, "cells": [{"run": "svm-4"}]}  # one run: no choice
    (tmp_path / "sweep-bb.json").write_text(json.dumps(one))
    (tmp_path / "sweep-cc.json").write_text("{not json")
    (tmp_path / "sweep-dd.json").write_text(json.dumps({"cells": cells}))
    for rid in ("logreg-1", "knn-2", "ensemble-3", "svm-4"):  # only runs of this folder count (attack 67 #7)
        (tmp_path / rid).mkdir()
    got = sweep_choices(tmp_path)
    assert set(got) == {"logreg-1", "ensemble-3"} and list(got["logreg-1"]) == ["validation"]
    assert "among 2 runs of sweep-aa" in got["logreg-1"]["validation"]
    assert sweep_choices(tmp_path / "absent") == {}


def test_crafted_sweep_summaries_are_passed_over(tmp_path):
    """A summary that is a FIFO, a link or nested too deep is malformed, never a hang or a RecursionError."""
    import os

    from featstore.runs.selected import sweep_choices

    os.mkfifo(tmp_path / "sweep-aa.json")
    (tmp_path / "sweep-bb.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "sweep-cc.json").symlink_to(tmp_path / "sweep-bb.json")
    good = {"chosen_on": "validation", "best_single": "logreg-1", "cells": [{"run": "logreg-1"}, {"run": "knn-2"}]}
    (tmp_path / "sweep-dd.json").write_text(__import__("json").dumps(good))
    (tmp_path / "logreg-1").mkdir(), (tmp_path / "knn-2").mkdir()  # only runs of this folder count (attack 67 #7)
    assert list(sweep_choices(tmp_path)) == ["logreg-1"]
