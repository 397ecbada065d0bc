"""Attack 71 #6, #7, #1 (fixDJ): a registered list parameter's text is JSON (``steps=scale`` was the five letters, and
the scaler was left out), equal list values are one setting, a parameter of another type is refused when it is
registered; a sweep whose validation rows are training rows is refused before its first fit; an ensemble's figures on
rows its members were fitted on get no rebuild advice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from featstore import fit
from featstore.errors import ConfigError
from featstore.experiments import classifiers, training_rows
from featstore.experiments.classifiers import get_classifier, parse_clf_params, parse_params, register_classifier
from featstore.experiments.ensemble import ensemble
from featstore.experiments.evaluate import evaluate_and_record
from featstore.experiments.params import Param
from featstore.experiments.sweep import sweep
from featstore.runs import fittedrows
from featstore.store.writer import write_arrays

from .conftest import trainval_store


@pytest.fixture
def steps(monkeypatch):
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))  # registered for this test only
    register_classifier("a71_steps", "list and dict parameters", {"steps": Param(list, []), "opts": Param(dict, {})})(
        lambda p: LogisticRegression(max_iter=50)
    )
    return get_classifier("a71_steps")


def test_a_list_parameter_is_json_not_its_characters(steps):
    with pytest.raises(
        ConfigError,
        match=r"""steps='scale' for a71_steps is a list, given as JSON: e\.g\. --param 'steps=\["scale"\]'""",
    ):
        parse_params(steps, ["steps=scale"])
    with pytest.raises(ConfigError, match=r"is a list, given as JSON"):
        parse_clf_params(["a71_steps"], ["a71_steps:steps=scale"])  # the sweep's parser
    assert parse_params(steps, ['steps=["scale"]', "steps=[16, 8]"]) == {"steps": [["scale"], [16, 8]]}
    assert parse_params(steps, ['opts={"a": 1}']) == {"opts": [{"a": 1}]}
    with pytest.raises(ConfigError, match=r"opts='\[1\]' for a71_steps is a dict, given as JSON"):
        parse_params(steps, ["opts=[1]"])
    with pytest.raises(ConfigError, match=r"must be a list of JSON values"):
        parse_params(steps, ["steps=[NaN]"])  # no JSON a run records


def test_equal_list_values_are_one_setting_and_mixed_keys_no_traceback(steps):
    with pytest.raises(ConfigError, match=r"steps=\[8\], steps=\[8\.0\]\); give each value once"):
        parse_params(steps, ["steps=[8]", "steps=[8.0]"])
    with pytest.raises(ConfigError, match=r"lists .* twice"):
        steps.check_values({"opts": [{"a": 1, "b": [2]}, {"b": [2.0], "a": 1.0}]})
    steps.check_values({"steps": [[1], [True]]})  # True is not 1: two settings
    with pytest.raises(ConfigError, match=r"opts=\{0: 1, 'b': 2\} for a71_steps must be a dict of str keys"):
        steps.check_values({"opts": [{0: 1, "b": 2}]})  # a run records {"0": 1}: refused, not a TypeError


@pytest.mark.parametrize(
    ("param", "says"),
    [
        (Param(tuple, ()), r"parameter p is of type tuple; a parameter is int, float, bool, str, list or dict"),
        (Param(set, set()), r"parameter p is of type set"),
        (Param(list, None), r"the default of parameter p=None for a71_bad must be a list"),
        (3, r"parameter p is 3, not a Param"),
    ],
)
def test_register_refuses_other_parameter_types(monkeypatch, param, says):
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))
    with pytest.raises(ConfigError, match=says):
        register_classifier("a71_bad", "a parameter featstore cannot convert", {"p": param})


# ------------------------------------------------------------------ finding 7: a sweep chooses on training rows
def test_a_sweep_whose_validation_rows_are_training_rows_is_refused_before_any_fit(tmp_path):
    store, runs = trainval_store(tmp_path / "s.h5", 20, 4), tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"20 of the 20 rows of 'validation' \(first\) are rows of 'trainval'.*"
                                          r"--validation none to choose by cross-validation on 'trainval'"):  # fmt: skip
        sweep(store, ["logreg", "knn"], params={"knn": {"n_neighbors": [1]}}, train="trainval", runs=runs)
    assert not runs.exists() or not any(runs.iterdir())  # no fit was recorded
    got = sweep(store, ["logreg"], train="trainval", validation="none", runs=runs, png=tmp_path / "h.png")
    assert got["chosen_on"] == "trainval.oof"  # the fix it names works
    sweep(store, ["logreg"], runs=runs, png=tmp_path / "h2.png")  # disjoint train and validation: as before


def test_a_sweep_reusing_every_cell_is_refused_by_what_its_fits_noted(tmp_path, monkeypatch):
    store, runs = trainval_store(tmp_path / "s.h5", 20, 4), tmp_path / "runs"
    fit(store, "logreg", runs=runs, train="trainval")  # a final refit: fit warns, notes it, and goes on
    read = lambda *a, **k: pytest.fail("a reused cell's rows were read")  # noqa: E731
    for module in (fittedrows, training_rows):  # the sweep's rule reads rows through fitted_rows_said (attack 76 #2)
        monkeypatch.setattr(module, "fitted_rows_said", read)
    monkeypatch.setattr(fittedrows, "fitted_rows", read)
    with pytest.raises(ConfigError, match=r"20 of the 20 rows of 'validation' \(first\) are rows of 'trainval'"):
        sweep(store, ["logreg"], train="trainval", runs=runs)  # its one cell reused: no features read, still refused


# ------------------------------------------------------------------ finding 1: an ensemble's train advice
def test_an_ensemble_on_its_members_training_rows_gets_no_rebuild_advice(tmp_path):
    store, runs = trainval_store(tmp_path / "s.h5", 20, 4), tmp_path / "runs"
    write_arrays(store, "first", "extra", np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32),
                 np.arange(20) % 2, ["a", "b"])  # fmt: skip
    a = fit(store, "knn", {"n_neighbors": [1]}, runs=runs)
    b = fit(store, "knn", {"n_neighbors": [3]}, runs=runs)
    ens = ensemble([a.id, b.id], store=store, runs=runs)
    with pytest.raises(
        ConfigError, match=r"'train' holds rows its members .* were fitted on: .* only resubstitution"
    ) as e:
        evaluate_and_record(ens.id, "train", store, runs)
    assert "make the ensemble again" not in str(e.value)  # the dead end: fit keeps no train predictions
    with pytest.raises(ConfigError, match=r"evaluate its members on extra .* make the ensemble again"):
        evaluate_and_record(ens.id, "extra", store, runs)  # a split they were not fitted on: the advice works there
    # members fitted on trainval: the ensemble's validation figures are theirs, and its record says so
    c = fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="trainval", validation="validation")
    d = fit(store, "logreg", runs=runs, train="trainval", validation="validation")
    both = ensemble([c.id, d.id], store=store, runs=runs)
    assert any(n.startswith("its figures on 'validation' are on rows") and "resubstitution" in n for n in both.notes)
    assert not any("'test'" in n for n in both.notes)
