"""Checks of a fitted model's arrays before scikit-learn's compiled code reads them.

A skops file can hold only featstore's own types (``artifacts.ARTIFACT_TYPES``), but the arrays inside them are
whatever the file says, and compiled prediction code trusts them: a tree node whose child index points past
the node array (or back at itself), or a split on feature 10**9, makes a random forest read outside memory
(segfault) or loop forever with the GIL released; libsvm trusts the sizes of an SVC's support-vector arrays;
a k-d tree trusts its node table. So, both on the file before it is loaded (:func:`check_skops_schema`, also
what ``featstore runs`` uses) and on the loaded objects (:func:`check_pipeline`):

- every tree: each node's children are both -1 (a leaf) or both later nodes below ``node_count``
  (scikit-learn's builders always number children after their parent, which also rules out loops), split
  features in ``[0, n_features)`` (leaves: ``[-2, n_features)``), finite thresholds, ``node_count`` equal
  to the node array's length, values of shape ``(node_count, n_outputs, max classes)``;
- every SVC: support vectors, dual coefficients, intercepts and class counts agree in size;
- a k-NN classifier's neighbour index (KDTree/BallTree) is rebuilt from its fitted rows, never used as stored;
- the pipeline is one featstore builds: reshape, an optional scaler, an optional PCA, one of its classifiers (a PCA
  whose arrays do not fit the features fails when applied, as one error naming the run).

The other types run numpy code, where a wrong shape raises ValueError: ``artifacts.checked_predict`` turns that
into a BrokenRunError when the model is applied.

>>> check_tree_arrays(4, [2], 1, 1, _leaf_only(), np.zeros((1, 1, 2)))  # a one-leaf tree is fine
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Mapping

import numpy as np

from featstore.safezip import read_npy
from featstore.stats.calibration import BOUNDS as CALIBRATION_BOUNDS

TREE_FIELDS = ("left_child", "right_child", "feature", "threshold")  # what the prediction loop reads from a node
SVM_KERNELS = ("linear", "rbf", "poly", "sigmoid")  # "precomputed" would index training rows with X's columns
_SVC_KEYS = (
    "_impl",
    "_sparse",
    "kernel",
    "degree",
    "_gamma",
    "coef0",
    "n_features_in_",
    "classes_",
    "_n_support",
    "support_",
    "support_vectors_",
    "_dual_coef_",
    "_intercept_",
    "_probA",
    "_probB",
)


class ModelStateError(ValueError):
    """A fitted model whose arrays compiled code must not read; the message says which and why."""


def _int(value, what: str) -> int:
    """``value`` as an int (a JSON or numpy integer, not a bool), else ModelStateError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ModelStateError(f"{what} is {value!r}, not an integer")
    return int(value)


def _array(value, what: str, kinds: str, ndim: int) -> np.ndarray:
    """``value`` if it is an ndarray of ``ndim`` dimensions whose dtype kind is in ``kinds``, else ModelStateError."""
    if (
        not isinstance(value, np.ndarray)
        or value.ndim != ndim
        or value.dtype.hasobject
        or value.dtype.kind not in kinds
    ):
        got = f"{value.dtype} array of shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ModelStateError(f"{what} is a {got}, expected a {ndim}-D {'integer' if kinds == 'iu' else 'float'} array")
    return value


def check_tree_arrays(n_features, n_classes, n_outputs, node_count, nodes, values, where: str = "a tree") -> None:
    """ModelStateError unless a tree's arrays are safe for scikit-learn's prediction loop (see the module docstring)."""
    n_features, n_outputs, n = (
        _int(n_features, f"{where}: n_features"),
        _int(n_outputs, f"{where}: n_outputs"),
        _int(node_count, f"{where}: node_count"),
    )
    n_classes = _array(np.asarray(n_classes), f"{where}: n_classes", "iu", 1)
    if n_features < 1 or n_outputs < 1 or len(n_classes) != n_outputs or (n_classes < 1).any():
        raise ModelStateError(
            f"{where}: n_features {n_features}, n_outputs {n_outputs} and n_classes {n_classes.tolist()} "
            f"do not describe a fitted tree"
        )
    if (
        not isinstance(nodes, np.ndarray)
        or nodes.ndim != 1
        or nodes.dtype.names is None
        or not set(TREE_FIELDS) <= set(nodes.dtype.names)
    ):
        raise ModelStateError(f"{where}: the node array is not a 1-D record array with fields {', '.join(TREE_FIELDS)}")
    if n < 1 or len(nodes) != n:
        raise ModelStateError(f"{where}: node_count {n} is not the length of its node array ({len(nodes)})")
    left, right, feature, threshold = (nodes[f] for f in TREE_FIELDS)
    for name, a in (("left_child", left), ("right_child", right), ("feature", feature)):
        _array(a, f"{where}: {name}", "iu", 1)
    _array(threshold, f"{where}: threshold", "f", 1)
    index = np.arange(n)
    leaf = (left == -1) & (right == -1)
    inner = (left > index) & (left < n) & (right > index) & (right < n)
    bad = np.flatnonzero(~(leaf | inner))
    if bad.size:
        i = bad[0]
        raise ModelStateError(
            f"{where}: node {i} has children {left[i]} and {right[i]}; each must be -1 (a leaf) or a later "
            f"node below node_count {n} (a loop or a read outside the tree)"
        )
    bad = np.flatnonzero(
        np.where(inner, (feature < 0) | (feature >= n_features), (feature < -2) | (feature >= n_features))
    )
    if bad.size:
        raise ModelStateError(
            f"{where}: node {bad[0]} splits on feature {feature[bad[0]]}, outside 0..{n_features - 1} "
            f"(a read outside the feature row)"
        )
    if not np.isfinite(threshold).all():
        raise ModelStateError(f"{where}: a threshold is not finite")
    values = _array(values, f"{where}: values", "f", 3)
    if values.shape != (n, n_outputs, int(n_classes.max())) or not np.isfinite(values).all():
        raise ModelStateError(
            f"{where}: values of shape {values.shape} (finite) expected {(n, n_outputs, int(n_classes.max()))}"
        )


def check_svc_state(d: Mapping, where: str = "the SVC") -> None:
    """ModelStateError unless a fitted SVC's attributes (name -> value) agree in size, as libsvm assumes."""
    missing = [k for k in _SVC_KEYS if k not in d and k not in ("_impl", "classes_", "n_features_in_")]
    if missing:
        raise ModelStateError(f"{where} lacks {', '.join(missing)}")
    if d.get("_impl", "c_svc") != "c_svc" or d["_sparse"] is not False or d["kernel"] not in SVM_KERNELS:
        raise ModelStateError(
            f"{where}: implementation {d.get('_impl')!r}, sparse {d['_sparse']!r}, kernel {d['kernel']!r}: "
            f"featstore writes c_svc, dense, with a kernel of {', '.join(SVM_KERNELS)}"
        )
    n_support = _array(d["_n_support"], f"{where}: _n_support", "iu", 1)
    k, n_sv = len(n_support), int(n_support.sum())
    m = k * (k - 1) // 2
    sv = _array(d["support_vectors_"], f"{where}: support_vectors_", "f", 2)
    shapes = {
        "support_": (_array(d["support_"], f"{where}: support_", "iu", 1), (n_sv,)),
        "support_vectors_": (sv, (n_sv, d.get("n_features_in_", sv.shape[1]))),
        "_dual_coef_": (_array(d["_dual_coef_"], f"{where}: _dual_coef_", "f", 2), (k - 1, n_sv)),
        "_intercept_": (_array(d["_intercept_"], f"{where}: _intercept_", "f", 1), (m,)),
    }
    for name in ("_probA", "_probB"):
        a = _array(d[name], f"{where}: {name}", "f", 1)
        shapes[name] = (a, (m,) if a.size else (0,))
    if k < 2 or (n_support < 0).any() or ("classes_" in d and len(d["classes_"]) != k):
        raise ModelStateError(
            f"{where}: class counts {n_support.tolist()} do not describe a fitted classifier of its classes"
        )
    wrong = [f"{name} {a.shape} (expected {want})" for name, (a, want) in shapes.items() if a.shape != want]
    if wrong:
        raise ModelStateError(
            f"{where}: array sizes disagree with {k} classes and {n_sv} support vectors: {', '.join(wrong)}"
        )
    if not 0 <= _int(d["degree"], f"{where}: degree") <= 1000:
        raise ModelStateError(f"{where}: degree {d['degree']} is outside 0..1000")
    numbers = [np.asarray(d["_gamma"]), np.asarray(d["coef0"])]
    if not all(np.isfinite(a).all() for a, _ in shapes.values()) or not all(
        x.shape == () and x.dtype.kind in "iuf" and np.isfinite(x) for x in numbers
    ):
        raise ModelStateError(f"{where}: an array, gamma or coef0 is not a finite number")


# ------------------------------------------------------------------ the file, before skops builds anything
def _walk(schema):
    """Every dict in a skops schema."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _value(z: zipfile.ZipFile, node: dict, kinds: str = "biufV"):
    """A schema leaf's value: JSON content, or a .npy member read with its header checked."""
    if node.get("__loader__") == "JsonNode":
        try:
            return json.loads(node["content"])
        except (TypeError, ValueError, RecursionError):  # RecursionError: a planted [[[[... thousands deep
            raise ModelStateError(f"a {node.get('__class__')} value whose JSON content cannot be read") from None
    if node.get("__loader__") == "NdArrayNode" and node.get("type") == "numpy":
        return read_npy(z, node["file"], kinds)
    raise ModelStateError(
        f"a {node.get('__class__')} value stored by {node.get('__loader__')}, not as JSON or a .npy member"
    )


def check_skops_schema(z: zipfile.ZipFile, schema: dict) -> None:
    """ModelStateError if a tree or SVC in a skops file (open zip and parsed schema) is unsafe, before skops builds it."""
    trees = 0
    for node in _walk(schema):
        kind = (node.get("__module__"), node.get("__class__"))
        if kind not in (("sklearn.tree._tree", "Tree"), ("sklearn.svm._classes", "SVC")):
            continue
        try:
            if kind[1] == "Tree":
                trees += 1
                n_features, n_classes, n_outputs = (_value(z, a) for a in node["__reduce__"]["args"]["content"])
                state = node["content"]["content"]
                check_tree_arrays(
                    n_features,
                    n_classes,
                    n_outputs,
                    _value(z, state["node_count"]),
                    _value(z, state["nodes"], "V"),
                    _value(z, state["values"], "f"),
                    where=f"tree {trees}",
                )
            elif (
                "support_vectors_" in node["content"]["content"]
            ):  # the unfitted SVC a CalibratedClassifierCV keeps as a parameter has none
                attrs = node["content"]["content"]
                check_svc_state({k: _value(z, attrs[k]) for k in _SVC_KEYS if k in attrs})
        except ModelStateError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            zipfile.BadZipFile,
        ) as exc:  # a layout skops does not write
            raise ModelStateError(
                f"its {kind[1]} is not laid out as skops writes one ({type(exc).__name__}: {exc})"
            ) from None


# ------------------------------------------------------------------ the loaded objects
def _heads() -> tuple:
    """The classifiers a pipeline featstore loads may end in."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier

    from featstore.models.agreeing import (
        AGREEING,
    )  # the built-ins' heads since attack 63 #1; older runs: scikit-learn's
    from featstore.models.svm import TemperedSVC

    older = (LogisticRegression, SGDClassifier, KNeighborsClassifier, RandomForestClassifier, CalibratedClassifierCV)
    return older + AGREEING + (TemperedSVC,)


RELOADABLE = (
    "a Pipeline of FeatureReshape, an optional StandardScaler, an optional PCA and one of LogisticRegression, "
    "SGDClassifier, KNeighborsClassifier, RandomForestClassifier (or their featstore.models.agreeing versions), "
    "CalibratedClassifierCV(SVC) or TemperedSVC (a bare one of these is put after FeatureReshape('flatten'))"
)  # what check_pipeline loads (the error of a registered classifier it could not: attack 60 #4)


def pipeline_shape(est) -> str:
    """Why ``est`` (fitted or not) is not a pipeline of the steps :func:`check_pipeline` loads ("" when it is)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from featstore.models.reshape import FeatureReshape

    steps = getattr(est, "steps", None) if type(est) is Pipeline else None
    shape = (
        [type(s[1]) if isinstance(s, tuple) and len(s) == 2 else None for s in steps] if isinstance(steps, list) else []
    )
    names = [t.__name__ if t else "?" for t in shape]
    if len(shape) < 2:
        why = f"a {type(est).__name__}" if not shape else f"the pipeline {names}"
    elif shape[0] is not FeatureReshape:
        why = f"its first step, a {names[0]}, is not a FeatureReshape"
    elif shape[-1] not in _heads():
        why = f"its classifier, a {names[-1]}, is not one featstore loads"
    elif shape[1:-1] not in ([], [StandardScaler], [PCA], [StandardScaler, PCA]):
        why = f"its middle steps {names[1:-1]} are not an optional StandardScaler then an optional PCA"
    else:
        return ""
    return f"it is not a pipeline featstore builds (reshape, optional scaler, optional PCA, classifier): {why}"


def unfitted_problem(est) -> str:
    """Why featstore could not load ``est``, an unfitted pipeline, once fitted and saved ("" when it could): its
    steps (:func:`pipeline_shape`), a calibrated classifier's estimator and an SVC's kernel (what
    :func:`check_pipeline` checks of them after a fit)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    from featstore.models.svm import TemperedSVC

    problem = pipeline_shape(est)
    if problem:
        return problem
    head = est.steps[-1][1]
    svc = head.estimator if isinstance(head, CalibratedClassifierCV) else head
    if isinstance(head, CalibratedClassifierCV) and type(svc) is not SVC:
        return f"its CalibratedClassifierCV calibrates a {type(svc).__name__}, and featstore loads only an SVC's"
    if isinstance(svc, (SVC, TemperedSVC)) and svc.kernel not in SVM_KERNELS:
        return f"its SVC's kernel is {svc.kernel!r}, and featstore loads only {', '.join(SVM_KERNELS)}"
    return ""


def check_pipeline(est):
    """The loaded skops pipeline, checked (see the module docstring), with its k-NN index rebuilt; else ModelStateError.

    Example::

        est = check_pipeline(skops.io.load(path, trusted=types))
    """
    from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    from featstore.models.svm import TemperedSVC

    problem = pipeline_shape(est)
    if problem:
        raise ModelStateError(problem)
    steps = est.steps
    head = steps[-1][1]
    if isinstance(head, RandomForestClassifier):
        _check_forest(head)
    elif isinstance(head, KNeighborsClassifier):
        _rebuild_knn(head)
    elif isinstance(head, TemperedSVC):
        _check_tempered_svc(head, SVC)
    elif isinstance(head, CalibratedClassifierCV):
        calibrated = getattr(head, "calibrated_classifiers_", None)
        if not isinstance(calibrated, list) or not calibrated:
            raise ModelStateError("its calibrated classifier holds no fitted SVC")
        for i, c in enumerate(calibrated):
            if type(c) is not _CalibratedClassifier or type(getattr(c, "estimator", None)) is not SVC:
                raise ModelStateError(f"calibrated classifier {i} is not an SVC with its calibration")
            check_svc_state(
                {k: getattr(c.estimator, k) for k in _SVC_KEYS if hasattr(c.estimator, k)},
                f"the SVC of calibrated classifier {i}",
            )
    return est


def _check_tempered_svc(head, svc_type) -> None:
    """The svm's head: a fitted one-vs-one SVC (checked as above), the same classes, a finite positive temperature."""
    svc = getattr(head, "svc_", None)
    if type(svc) is not svc_type:
        raise ModelStateError(f"the svm holds a {type(svc).__name__}, not a fitted SVC")
    check_svc_state({k: getattr(svc, k) for k in _SVC_KEYS if hasattr(svc, k)}, "the SVC of the svm")
    if svc.decision_function_shape != "ovo":  # its one-vs-one values are read pair by pair
        raise ModelStateError(f"the svm's SVC has decision_function_shape {svc.decision_function_shape!r}, not 'ovo'")
    classes = getattr(head, "classes_", None)
    if not isinstance(classes, np.ndarray) or not np.array_equal(classes, svc.classes_):
        raise ModelStateError(f"the svm's classes {classes!r} are not its SVC's {svc.classes_!r}")
    t = getattr(head, "temperature_", None)
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or not (np.isfinite(t) and t > 0):
        raise ModelStateError(f"the svm's temperature {t!r} is not a finite positive number")
    if not CALIBRATION_BOUNDS[0] <= t <= CALIBRATION_BOUNDS[1]:  # as run.json's: 1e-300 made every probability NaN
        raise ModelStateError(
            f"the svm's temperature {t!r} lies outside [{CALIBRATION_BOUNDS[0]:g}, {CALIBRATION_BOUNDS[1]:g}], the "
            "temperatures an svm fit searches"
        )


def _check_forest(forest) -> None:
    """Every tree of a random forest, through the same checks as the file's; one job (a crafted n_jobs starts no thousands of threads)."""
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    n = _int(getattr(forest, "n_features_in_", None), "the forest's n_features_in_")
    trees = getattr(forest, "estimators_", None)
    if not isinstance(trees, list) or not trees:
        raise ModelStateError("the random forest holds no fitted trees")
    for i, t in enumerate(trees, 1):
        tree = getattr(t, "tree_", None)
        if type(t) is not DecisionTreeClassifier or type(tree) is not Tree:
            raise ModelStateError(
                f"tree {i} of the random forest is a {type(t).__name__}, not a fitted DecisionTreeClassifier"
            )
        if tree.node_count != tree.capacity:  # checked before any node array is read: node_count sizes the view
            raise ModelStateError(
                f"tree {i}: node_count {tree.node_count} is not the length of its node array ({tree.capacity})"
            )
        if _int(getattr(t, "n_features_in_", None), f"tree {i}: n_features_in_") != n or tree.n_features != n:
            raise ModelStateError(
                f"tree {i} expects {t.n_features_in_} features (its tree {tree.n_features}), the forest {n}"
            )
        state = tree.__getstate__()
        check_tree_arrays(
            tree.n_features,
            tree.n_classes,
            tree.n_outputs,
            state["node_count"],
            state["nodes"],
            state["values"],
            f"tree {i}",
        )
    forest.n_jobs = 1


def _rebuild_knn(knn) -> None:
    """Refit a k-NN classifier on its own fitted rows and labels: a fresh neighbour index, never the stored one."""
    X = _array(getattr(knn, "_fit_X", None), "the k-NN training rows", "f", 2)
    classes = getattr(knn, "classes_", None)
    y = _array(getattr(knn, "_y", None), "the k-NN labels", "iu", 1)
    if not isinstance(classes, np.ndarray) or classes.ndim != 1 or not len(classes) or len(y) != len(X) or not len(X):
        raise ModelStateError(f"the k-NN classifier has {len(X)} rows, {len(y)} labels and classes {classes!r}")
    if (y < 0).any() or (y >= len(classes)).any() or not np.isfinite(X).all():
        raise ModelStateError("the k-NN labels fall outside its classes, or its rows are not finite")
    knn.n_jobs = 1
    try:
        with warnings.catch_warnings(action="ignore", category=SyntaxWarning):  # predict put p in metric_params
            knn.fit(X, classes[y])
    except (ValueError, TypeError) as exc:  # parameters scikit-learn refuses (n_neighbors 0, an unknown metric...)
        raise ModelStateError(f"the k-NN classifier cannot be rebuilt from its rows: {exc}") from None


def _leaf_only() -> np.ndarray:
    """A one-node tree's node array (for the doctest)."""
    return np.array([(-1, -1, -2, -2.0)], dtype=[(f, np.intp if f != "threshold" else np.float64) for f in TREE_FIELDS])


def fit_adds_types(est) -> str:
    """Settings whose fit adds a type a run cannot load, seen before the fit (attack 61 #4): isotonic calibration, a
    k-NN whose index a run does not load (:func:`featstore.runs.knn_types.knn_problem`: attack 62 #8, #9)."""
    from featstore.runs.knn_types import knn_problem

    for _, step in getattr(est, "steps", []):
        method = getattr(step, "method", None) if type(step).__name__ == "CalibratedClassifierCV" else None
        if method not in (None, "sigmoid"):
            return f"its CalibratedClassifierCV has method={method!r}, whose fit adds a type runs do not load; use 'sigmoid'"
        if type(step).__name__.endswith("KNeighborsClassifier") and (problem := knn_problem(step)):  # Agreeing* too
            return problem
    return ""
