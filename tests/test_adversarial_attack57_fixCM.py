"""Attack 57's findings 7, 8, 9 and 11, fixed on branch fixCM: register_classifier's names and builders, a draft run
folder outside its runs folder, the Ctrl-C line naming another process's runs, and classifier parameters of the wrong
type (a bool or a float where a count belongs)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import featstore
from featstore.errors import ConfigError
from featstore.experiments import classifiers

from .test_adversarial_attack54_fixCI import _synthetic


@pytest.fixture
def registry(monkeypatch):
    """The classifier registry, restored after the test (the classifiers a test registers are forgotten)."""
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))
    return classifiers._REGISTRY


# 7: register_classifier -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "./../x", "my logreg", ".hidden", "", "a/b", "x" * 201])
def test_register_refuses_a_name_that_cannot_start_a_run_id(registry, name):
    """A name with a space was fitted in full, then refused as a run id; "../x" was fitted, then blamed on --runs."""
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(ConfigError, match="cannot start a run id") as info:
        featstore.register_classifier(name, "a user's classifier", {})(lambda p: LogisticRegression())
    assert "\n" not in str(info.value) and name not in registry


def test_bare_estimator_is_fitted_as_the_builtins(registry, tmp_path):
    """A builder returning LogisticRegression() (what a scikit-learn user writes) was an AttributeError traceback
    ("no attribute 'steps'"); it is fitted on the flattened features, as the built-ins with reduce=flatten."""
    from sklearn.linear_model import LogisticRegression

    featstore.register_classifier("bare_lr", "plain logistic regression", {})(
        lambda p: LogisticRegression(max_iter=200)
    )
    assert [n for n, _ in classifiers.build_classifier("bare_lr").steps] == ["features", "clf"]
    run = featstore.fit(_synthetic(tmp_path / "s.h5"), "bare_lr", runs=tmp_path / "runs")
    assert run.id.startswith("bare_lr-") and (tmp_path / "runs" / run.id).is_dir()


@pytest.mark.parametrize("returns", ["scaler", "no_proba", "none", "pipeline_of_scaler"])
def test_builder_of_no_classifier_refused_before_any_fit(registry, tmp_path, monkeypatch, returns):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from featstore.experiments import selection

    made = {
        "scaler": StandardScaler,
        "no_proba": LinearSVC,
        "none": lambda: None,
        "pipeline_of_scaler": lambda: Pipeline([("s", StandardScaler())]),
    }[returns]
    featstore.register_classifier("odd", "not a classifier", {})(lambda p: made())
    monkeypatch.setattr(selection, "collected_warnings", lambda: pytest.fail("a fit started"))
    with pytest.raises(ConfigError, match="return a scikit-learn classifier") as info:
        featstore.fit(_synthetic(tmp_path / "s.h5"), "odd", runs=tmp_path / "runs")
    assert "predict_proba" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()


# 8: a draft folder is always inside its runs folder -----------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["./../x.", "../../x.", "/tmp/x.", "a/b."])
def test_own_folder_refuses_a_name_leaving_its_folder(tmp_path, prefix):
    """mkdtemp joins its prefix to its folder: ".<clf>." with clf "./../x" made the draft two folders up."""
    from featstore.renames import OwnFolder
    from featstore.runs.write import _make_temp

    root = tmp_path / "a" / "runs"
    root.mkdir(parents=True)
    with pytest.raises(ConfigError, match="path separator"):
        OwnFolder(root, prefix, ".tmp")
    with pytest.raises(ConfigError, match="path separator"):
        OwnFolder(root, ".x.", "/.tmp")
    with pytest.raises(ConfigError, match="path separator"):
        _make_temp(root, prefix.rstrip("."))
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "runs"]
    assert not list(tmp_path.parent.glob("x.*.tmp"))


# 9: the Ctrl-C line lists only this command's runs ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["sweep", "fit"])
def test_interrupt_line_names_only_this_commands_runs(tmp_path, capsys, command):
    """Another process's run recorded in the shared runs folder during a sweep was listed as the sweep's own, to
    delete. Here a run copied into the runs folder meanwhile stands for it."""
    import typer

    from featstore.cli.fit_cmds import _interruptible

    store, root = _synthetic(tmp_path / "s.h5"), tmp_path / "shared"
    theirs = featstore.fit(store, "logreg", runs=tmp_path / "elsewhere")

    def work():
        shutil.copytree(tmp_path / "elsewhere" / theirs.id, root / theirs.id)  # another process's, meanwhile
        mine.append(featstore.fit(store, "logreg", runs=root).id)
        raise KeyboardInterrupt

    mine: list[str] = []
    with pytest.raises(typer.Exit):
        _interruptible(root, command, work)
    line = capsys.readouterr().err
    assert f"run {mine[0]} recorded in {root}" in line and theirs.id not in line, line
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted([theirs.id, mine[0]])


def test_interrupt_before_any_run_says_nothing_was_recorded(tmp_path, capsys):
    import typer

    from featstore.cli.fit_cmds import _interruptible

    store, root = _synthetic(tmp_path / "s.h5"), tmp_path / "shared"
    theirs = featstore.fit(store, "logreg", runs=root)

    def work():
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit):
        _interruptible(root, "sweep", work)
    line = capsys.readouterr().err
    assert "nothing was recorded" in line and theirs.id not in line


# 11: classifier parameters of the wrong type ------------------------------------------------------------------------
WRONG = [
    ("svm", "pca", True),  # "PCA on": fitted on one component, recorded pca=True
    ("logreg", "pca", np.True_),
    ("dense", "units", True),  # a 1-unit hidden layer
    ("sgd", "epochs", 2.5),  # recorded as it is
    ("dense", "epochs", 2.5),  # a Keras traceback
    ("random_forest", "max_depth", 2.5),  # blamed on "these 24 rows"
    ("sgd", "seed", 2.5),
    ("logreg", "max_iter", 2.0),  # the CLI refuses --param max_iter=2.0 too
    ("knn", "n_neighbors", 0),  # had no range at all
    ("logreg", "C", True),
    ("logreg", "C", "1"),
    ("svm", "C", "0.1"),
    ("dense", "lr", False),
    ("logreg", "l2", "no"),  # a non-empty str: L2 on
    ("svm", "scale", 1),
    ("svm", "kernel", "poly"),  # not among its choices
    ("logreg", "reduce", "mean"),
    ("svm", "gamma", True),
    ("random_forest", "max_features", True),
    ("random_forest", "max_features", 3),  # a fraction of the features: (0, 1]
]


@pytest.mark.parametrize("clf,key,value", WRONG)
def test_wrong_type_refused_before_any_work(tmp_path, clf, key, value):
    missing = tmp_path / "no-such-store.h5"  # a check after any work would say the store is missing
    for call in (
        lambda: featstore.fit(missing, clf, {key: [value]}),
        lambda: featstore.sweep(missing, [clf], params={clf: {key: [value]}}),
        lambda: classifiers.build_classifier(clf, {key: value}),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        said = str(info.value)
        assert f"parameter {key}=" in said and f"for {clf}" in said and "\n" not in said, said


def test_an_integral_float_says_the_int_to_give():
    with pytest.raises(ConfigError, match="give 2$"):
        classifiers.get_classifier("sgd").check_value("epochs", 2.0)


@pytest.mark.parametrize(
    "clf,key,value",
    [
        ("svm", "pca", np.int64(3)),
        ("logreg", "C", 1),
        ("logreg", "C", np.float32(0.5)),
        ("logreg", "l2", np.True_),
        ("svm", "gamma", 0.1),
        ("svm", "gamma", "0.5"),
        ("random_forest", "max_features", 0.5),
        ("random_forest", "max_features", "log2"),
        ("dense", "dropout", 0),
    ],
)
def test_values_of_the_right_type_taken(clf, key, value):
    classifiers.get_classifier(clf).check_values({key: [value]})


def test_every_default_and_grid_value_is_valid():
    """The parameter tables agree with their own check: each classifier's defaults and default search grid pass."""
    for name in classifiers.list_classifiers():
        spec = classifiers.get_classifier(name)
        for key, p in spec.params.items():
            spec.check_value(key, p.default)
        spec.check_values(spec.grid)
        assert set(spec.grid) <= set(spec.params), name


def test_cli_params_still_typed():
    spec = classifiers.get_classifier("svm")
    assert classifiers.parse_params(spec, ["pca=3", "l2=true", "gamma=0.1", "C=2"]) == {
        "pca": [3],
        "l2": [True],
        "gamma": ["0.1"],
        "C": [2.0],
    }
    with pytest.raises(ConfigError, match="choose one of"):
        classifiers.parse_params(spec, ["kernel=poly"])
