"""Attack 62's findings 3, 5, 6, 7, 8 and 9 (fixed on branch fixCW): a functools.wraps copy of a built-in's builder
counted as built in (#3); a sweep reused runs fitted under another scikit-learn, numpy or Keras (#5), made a traceback
of a run.json whose versions was not an object (#6), reused a colleague's runs it could not add test to and then said
"the sweep's runs are recorded" (#7); k-NN settings whose fit adds a type runs cannot load passed the check (#8), and
settings that load were refused (#9)."""

from __future__ import annotations

import functools
import json
from copy import deepcopy

import numpy as np
import pytest

import featstore
from featstore import sticky
from featstore.errors import ConfigError, StoreError
from featstore.experiments import classifiers, selection, sweep_reuse

from .test_sweep_reuse import _runs, _store, counted, why  # noqa: F401 (fixtures)


@pytest.fixture
def registry(monkeypatch):
    """The classifier registry, restored after the test (the classifiers a test registers are forgotten)."""
    monkeypatch.setattr(classifiers, "_REGISTRY", dict(classifiers._REGISTRY))
    return classifiers._REGISTRY


@pytest.fixture
def fits(monkeypatch):
    calls, real = [], selection.fit_one
    monkeypatch.setattr(selection, "fit_one", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


# 3: built in by identity --------------------------------------------------------------------------------------------
def test_featstores_own_classifiers_are_built_in():
    own = {"logreg", "svm", "knn", "random_forest", "sgd", "dense"}
    assert {n for n in classifiers.list_classifiers() if classifiers.get_classifier(n).builtin} >= own


@pytest.mark.parametrize("disguise", ["wraps_raw", "wraps_registered", "names"])
def test_a_builder_claiming_featstores_names_is_checked_before_the_fit(registry, tmp_path, fits, disguise):
    from sklearn.naive_bayes import GaussianNB

    def mine(params):
        return GaussianNB()

    if disguise == "wraps_raw":
        mine = functools.wraps(classifiers._logreg)(mine)
    elif disguise == "wraps_registered":
        mine = functools.wraps(classifiers.get_classifier("logreg").builder)(mine)
    else:
        mine.__module__, mine.__qualname__ = classifiers.__name__, "_logreg"
    featstore.register_classifier("mine", "naive Bayes", {})(mine)
    assert not classifiers.get_classifier("mine").builtin
    with pytest.raises(ConfigError, match=r"could not load again the fit of what its builder returned.*GaussianNB"):
        featstore.fit(_store(tmp_path / "s.h5", names=("one",)), "mine")
    assert not fits and not (tmp_path / "s.runs").exists()


def test_a_wraps_copy_of_a_builtin_is_never_reused_by_a_sweep(registry, tmp_path, counted, why):  # noqa: F811
    from sklearn.ensemble import RandomForestClassifier

    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    base = classifiers.get_classifier("logreg").builder
    stump = functools.wraps(base)(lambda p: RandomForestClassifier(1, max_depth=1, random_state=0))
    featstore.register_classifier("mine", "a stump", {})(stump)
    featstore.sweep(store, ["mine"], runs=root)
    del registry["mine"]  # another process registers another builder, wrapped the same way
    featstore.register_classifier("mine", "logreg", {})(functools.wraps(base)(lambda p: base({**p, **_LOGREG})))
    again = featstore.sweep(store, ["mine"], runs=root)
    assert len(counted) == 2 and again["reused"] == [], why()
    assert any("registered in the process" in m for m in why())


_LOGREG = classifiers.get_classifier("logreg").full_params({})


# 5, 6: the versions a run records ------------------------------------------------------------------------------------
def _edit(root, edit):
    (run,) = _runs(root)
    path = root / run / "run.json"
    rec = json.loads(path.read_text())
    edit(rec)
    path.write_text(json.dumps(rec))


@pytest.mark.parametrize(
    ("lib", "refit"),
    [("scikit-learn", True), ("numpy", True), ("keras", False), ("tensorflow", False), ("h5py", False)],
)
def test_a_run_fitted_under_other_libraries_is_fitted_again(tmp_path, counted, why, lib, refit):  # noqa: F811
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], runs=root)
    _edit(root, lambda rec: rec["versions"].update({lib: "0.0.1"}))
    again = featstore.sweep(store, ["logreg"], runs=root)
    assert len(counted) == 1 + refit and bool(again["reused"]) is not refit  # logreg uses neither Keras nor h5py's fit
    assert any(f"another {lib}_version (fitted under '0.0.1'" in m for m in why()) is refit, why()


@pytest.mark.parametrize("lib", ["keras", "tensorflow"])
def test_a_keras_classifiers_run_compares_keras_and_tensorflow(tmp_path, counted, why, lib):  # noqa: F811
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    params = {"dense": {"epochs": [1], "units": [4], "batch_size": [8]}}
    featstore.sweep(store, ["dense"], params=params, runs=root)
    assert featstore.sweep(store, ["dense"], params=params, runs=root)["reused"] and len(counted) == 1
    _edit(root, lambda rec: rec["versions"].update({lib: "1.0"}))
    assert featstore.sweep(store, ["dense"], params=params, runs=root)["reused"] == [] and len(counted) == 2
    assert any(f"another {lib}_version" in m for m in why())


@pytest.mark.parametrize("versions", [["0.1.0"], "0.1.0", None, 3, {"featstore": ["0.1.0"]}])
def test_a_run_whose_versions_is_not_an_object_is_fitted_again(tmp_path, counted, why, versions):  # noqa: F811
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], runs=root)
    _edit(root, lambda rec: rec.update({"versions": versions}))
    assert featstore.sweep(store, ["logreg"], runs=root)["reused"] == [] and len(counted) == 2
    assert any("not reused" in m for m in why()), why()


@pytest.mark.parametrize("field", ["given", "settings", "full_settings", "splits", "augmented", "train", "search"])
@pytest.mark.parametrize("value", [["x"]])
def test_a_run_whose_inputs_have_the_wrong_type_is_fitted_again(tmp_path, counted, why, field, value):  # noqa: F811
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], runs=root)
    _edit(root, lambda rec: rec["inputs"].update({field: value}))
    assert featstore.sweep(store, ["logreg"], runs=root)["reused"] == [] and len(counted) == 2


# 7: a colleague's runs the sweep cannot complete ------------------------------------------------------------------
def test_a_colleagues_run_without_test_is_not_reused(tmp_path, counted, why, monkeypatch):  # noqa: F811
    """Alice's runs (no test) in a sticky runs folder: Bob's sweep fits its own, chooses, tests and records them."""
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg", "knn"], runs=root, test=None)
    alices = set(_runs(root))
    real = sticky.ahead

    def ahead(path):
        name = str(path).rsplit("/", 1)[-1]
        return sticky.Sticky(str(path), "alice", str(root), "root", 0o1777) if name in alices else real(path)

    monkeypatch.setattr(sticky, "ahead", ahead)
    out = featstore.sweep(store, ["logreg", "knn"], runs=root)
    assert out["reused"] == [] and len(counted) == 4
    assert out["winner"]["id"] not in alices and out["winner"].get("test") is not None
    assert any("another user's run, which only they may add 'test' to" in m for m in why()), why()
    assert featstore.sweep(store, ["logreg", "knn"], runs=root)["reused"] and len(counted) == 4  # his, next time


def test_a_colleagues_run_that_holds_test_is_reused(tmp_path, counted, monkeypatch):  # noqa: F811
    """Nothing is written into her run: it is reused, its test figures read from it."""
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    first = featstore.sweep(store, ["logreg"], runs=root)
    monkeypatch.setattr(sticky, "ahead", lambda path: sticky.Sticky(str(path), "alice", str(root), "root", 0o1777))
    again = featstore.sweep(store, ["logreg"], runs=root)
    assert len(counted) == 1 and again["winner"]["id"] == first["winner"]["id"] and again["reused"]


def test_a_reused_run_test_could_not_be_added_to_names_no_reuse(tmp_path, counted, monkeypatch):  # noqa: F811
    store, root = _store(tmp_path / "s.h5", names=("one",)), tmp_path / "runs"
    featstore.sweep(store, ["logreg"], runs=root, test=None)
    monkeypatch.setattr(
        sweep_reuse, "evaluate_and_record", lambda rid, *a: (None, {}, "not recorded: [Errno 28] No space left")
    )
    with pytest.raises(StoreError) as exc:
        featstore.sweep(store, ["logreg"], runs=root)
    said = str(exc.value)
    assert len(counted) == 1 and "--no-reuse" in said and "reused, recorded by an earlier fit" in said, said
    assert "The sweep's runs are recorded" not in said
    with pytest.raises(StoreError, match=r"The sweep's runs are recorded: once that is fixed, `featstore runs eval"):
        featstore.sweep(store, ["logreg"], runs=root, reuse=False)  # its own run, fitted and recorded: true
    assert len(counted) == 2


# 8, 9: which k-NN settings a run loads, seen from what loads -----------------------------------------------------
_W = {"w": np.linspace(0.5, 2.0, 4)}
KNN_SETTINGS = [
    {},
    {"metric": "l2"},
    {"metric": "euclidean", "algorithm": "kd_tree"},
    {"metric": "minkowski", "p": 2, "algorithm": "kd_tree", "leaf_size": 5},
    {"algorithm": "ball_tree"},
    {"metric": "euclidean", "algorithm": "ball_tree"},
    {"metric": "manhattan"},
    {"metric": "manhattan", "algorithm": "kd_tree"},
    {"metric": "manhattan", "algorithm": "brute"},
    {"metric": "minkowski", "p": 1, "algorithm": "brute"},
    {"metric": "minkowski", "p": 3},
    {"metric": "minkowski", "p": 3, "algorithm": "brute"},
    {"metric": "chebyshev", "algorithm": "brute"},
    {"metric": "minkowski", "p": 2, "metric_params": _W},
    {"metric": "minkowski", "p": 2, "metric_params": _W, "algorithm": "brute"},
    {"metric": "seuclidean", "metric_params": {"V": np.ones(4)}, "algorithm": "brute"},
    {"metric": "mahalanobis", "metric_params": {"VI": np.eye(4)}, "algorithm": "brute"},
    {"metric": "cosine"},
    {"metric": "cosine", "algorithm": "brute"},
    {"metric": "canberra"},
]


def _rows():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    return (rng.normal(size=(40, 4)) + y[:, None]).astype(np.float32), y


def _loads(est, folder) -> bool:
    """Whether featstore's run loading takes ``est``'s fitted skops file, and gives its probabilities."""
    import skops.io as sio

    from featstore.runs.artifacts import _written, load_estimator

    X, y = _rows()
    est.fit(X, y)
    folder.mkdir()
    sio.dump(est, folder / "model.skops")
    try:
        loaded = load_estimator(folder, {"file": "model.skops", "format": "skops", **_written(folder / "model.skops")})
    except StoreError:
        return False
    return np.allclose(loaded.predict_proba(X), est.predict_proba(X))


@pytest.mark.parametrize(
    "kw",
    KNN_SETTINGS,
    ids=lambda kw: (
        "-".join(f"{k}={v}" for k, v in kw.items() if k != "metric_params")
        + ("-params" if "metric_params" in kw else "")
        or "default"
    ),
)
def test_a_knn_setting_is_refused_before_the_fit_exactly_when_its_run_does_not_load(registry, tmp_path, fits, kw):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    from featstore.models.reshape import FeatureReshape
    from featstore.runs.artifacts import reload_problem

    def build():  # scikit-learn's fit writes p into metric_params: a copy each time
        return Pipeline([("features", FeatureReshape("flatten")), ("clf", KNeighborsClassifier(3, **deepcopy(kw)))])

    loads = _loads(build(), tmp_path / "by_hand")
    refused = reload_problem(build())
    assert bool(refused) is not loads, refused
    featstore.register_classifier("k", "a k-NN", {})(lambda p: build())
    X, y = _rows()
    from featstore.store.writer import synthetic_attrs, write_arrays

    for split in ("train", "validation"):
        write_arrays(tmp_path / "s.h5", "one", split, X, y.astype(np.int32), ["a", "b"], attrs=synthetic_attrs((4,)))
    if refused:
        assert "whose fit adds a type runs do not load" in refused and "algorithm='brute'" in refused
        with pytest.raises(ConfigError, match="whose fit adds a type runs do not load"):
            featstore.fit(tmp_path / "s.h5", "k", test=None)
        assert not fits
    else:  # fitted, recorded and loaded by featstore's own run writing and loading
        from featstore.runs.artifacts import load_estimator

        run = featstore.fit(tmp_path / "s.h5", "k", test=None)
        folder = tmp_path / "s.runs" / run.id
        assert load_estimator(folder, dict(run.artifact)).predict_proba(X).shape == (40, 2)
