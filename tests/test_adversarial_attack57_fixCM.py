"""Attack 57's findings 7, 8, 9 and 11, fixed on branch fixCM: register_classifier's names and builders, a draft run
folder outside its runs folder, the Ctrl-C line naming another process's runs, and classifier parameters of the wrong
type (a bool or a float where a count belongs)."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore.errors import ConfigError
from featstore.experiments import classifiers


def _synthetic(path, n=30, d=8, seed=0):
    from featstore.store.writer import write_arrays

    rng = np.random.default_rng(seed)
    for split in ("train", "validation", "test"):
        y = np.arange(n) % 3
        X = (rng.normal(size=(n, d)) + y[:, None] * 1.5).astype(np.float32)
        write_arrays(path, "synthetic", split, X, y, ["a", "b", "c"])
    return path


@pytest.fixture
def registry(monkeypatch):
    """The classifier registry, restored after the test (the classifiers a test registers are forgotten)."""
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))
    return classifiers._REGISTRY


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
