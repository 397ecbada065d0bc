"""Attack 60's findings 3 and 4, fixed on branch fixCQ: a sweep reused a run that was not the fit its cell would make
(a registered classifier's builder changed, a default changed, another featstore version), and register_classifier
took classifiers whose runs featstore could never load again ("altered after the fit or damaged")."""

from __future__ import annotations

import json

import pytest

import featstore
from featstore.errors import ConfigError
from featstore.experiments import classifiers, selection, sweep_reuse
from featstore.experiments.params import Param

from .test_sweep_reuse import _runs, _store, counted, why  # noqa: F401 (fixtures)


@pytest.fixture
def registry(monkeypatch):
    """The classifier registry, restored after the test (the classifiers a test registers are forgotten)."""
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))
    return classifiers._REGISTRY


# 3: sweep reuse -----------------------------------------------------------------------------------------------------
def test_a_registered_classifiers_run_is_never_reused(registry, tmp_path, counted, why):  # noqa: F811
    """The builder registered again as another classifier: its old runs were reused as "the very fit" of the new."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.register_classifier("myclf", "a forest", {})(lambda p: RandomForestClassifier(1, max_depth=1))
    featstore.sweep(store, ["myclf", "logreg"], runs=root)
    del registry["myclf"]  # a later process registers another builder under the same name
    featstore.register_classifier("myclf", "logistic regression", {})(lambda p: LogisticRegression(max_iter=200))
    again = featstore.sweep(store, ["myclf", "logreg"], runs=root)
    assert [c for _, c in counted] == ["myclf", "logreg", "myclf"]  # logreg (built in) reused, myclf fitted again
    assert [r["clf"] for r in again["reused"]] == ["logreg"]
    assert any("myclf" in m and "registered in the process" in m for m in why())


def test_a_changed_default_is_another_fit(tmp_path, monkeypatch, counted, why):  # noqa: F811
    """A default the run was fitted with (a featstore upgrade, or a registered Param's) is compared, not only `given`."""
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], runs=root)
    rec = json.loads((root / _runs(root)[0] / "run.json").read_text())
    assert rec["inputs"].get("full_settings") == [classifiers.get_classifier("logreg").full_params({})]
    spec = classifiers.get_classifier("logreg")
    monkeypatch.setitem(spec.params, "C", Param(float, spec.params["C"].default * 10, low=0.0, open_low=True))
    featstore.sweep(store, ["logreg"], runs=root)
    assert len(counted) == 2 and any("another full_settings" in m for m in why())


def test_a_run_of_another_featstore_version_is_fitted_again(tmp_path, monkeypatch, counted, why):  # noqa: F811
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], runs=root)
    assert featstore.sweep(store, ["logreg"], runs=root)["reused"] and len(counted) == 1  # the same version: reused
    monkeypatch.setattr(sweep_reuse, "__version__", "0.0.0-other", raising=False)
    assert featstore.sweep(store, ["logreg"], runs=root)["reused"] == [] and len(counted) == 2
    assert any("another featstore_version" in m for m in why())


# 4: only classifiers featstore can load again are registered ---------------------------------------------------------
def _gnb(p):
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


def _scaled(p):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])


def _calibrated_logreg(p):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    return CalibratedClassifierCV(LogisticRegression())


def _int_keys(p):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight={0: 1.0, 1: 2.0})  # skops writes builtins.int, featstore's never do


def _callable_metric(p):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(3, metric=lambda a, b: float(abs(a - b).sum()))


@pytest.mark.parametrize(
    "builder, names",
    [
        (_gnb, "GaussianNB"),
        (_scaled, "first step, a StandardScaler"),
        (_calibrated_logreg, "calibrates a LogisticRegression"),
        (_callable_metric, "<lambda>"),
        (_int_keys, "builtins.int"),
    ],
)
def test_a_classifier_featstore_cannot_reload_is_refused_before_any_fit(
    registry, tmp_path, monkeypatch, builder, names
):
    """Its runs were recorded, then every evaluate, predict and a sweep's end refused them as "altered after the fit or
    damaged... fit the classifier again" (a sweep fitted every cell first)."""
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.register_classifier("mine", "a user's classifier", {})(builder)
    monkeypatch.setattr(selection, "collected_warnings", lambda: pytest.fail("a fit started"))
    for call in (lambda: featstore.fit(store, "mine", runs=root), lambda: featstore.sweep(store, ["mine"], runs=root)):
        with pytest.raises(ConfigError, match="featstore could not load again") as info:
            call()
        said = str(info.value)
        assert names in said and "FeatureReshape" in said and "\n" not in said and "altered" not in said
        assert not root.exists()


def test_what_registration_takes_loads_again(registry, tmp_path):
    """The classifiers it accepts (bare or in featstore's pipeline shape) are evaluated from their saved runs."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from featstore.models.reshape import FeatureReshape

    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.register_classifier("weighted", "", {})(lambda p: LogisticRegression(class_weight="balanced"))
    featstore.register_classifier("trees", "", {})(
        lambda p: Pipeline(
            [("f", FeatureReshape()), ("s", StandardScaler()), ("p", PCA(3)), ("c", RandomForestClassifier(3))]
        )
    )
    for name in ("weighted", "trees"):
        run = featstore.fit(store, name, test=None, runs=root)
        assert 0 <= featstore.evaluate_run(run.id, "test", store=store, runs=root)["accuracy"] <= 1


def test_a_fit_featstore_could_not_load_is_not_recorded(registry, tmp_path, monkeypatch):
    """The last guard, after the fit (what the build-time check did not see): no run is recorded that featstore would
    call "altered after the fit or damaged"."""
    from featstore.runs import artifacts

    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.register_classifier("mine", "a user's classifier", {})(_int_keys)
    monkeypatch.setattr(artifacts, "reload_problem", lambda est: "")
    with pytest.raises(ConfigError, match="was not recorded: featstore could not load it again") as info:
        featstore.fit(store, "mine", runs=root)
    assert "builtins.int" in str(info.value) and not (root.exists() and _runs(root))


def test_builtins_pass_the_reload_check():
    """Every built-in builds what featstore loads again (the check is skipped for them as their own)."""
    from featstore.runs.artifacts import reload_problem

    for name in classifiers.list_classifiers():
        assert classifiers.get_classifier(name).builtin
        assert reload_problem(classifiers.build_classifier(name)) == ""
