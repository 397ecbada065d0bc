"""What types a run's skops file may name (:data:`ARTIFACT_TYPES`), and the types a skops file names, read from its
schema without importing or building anything (:func:`skops_types`). Below :mod:`featstore.runs.artifacts`, which
loads runs, and :mod:`featstore.runs.knn_types`, which sees before a fit what types a k-NN's fit would add."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from featstore.runs.files import BrokenRunError

# Every type named in the skops files of featstore's classifiers. Obtained by fitting each registered
# classifier except `dense` (saved as .keras) with every choice of its str parameters and every value of
# its search grid, on float16/float32/float64 features of 1-D and (h, w, c) shapes with 2 and 3 classes,
# plus a streamed (partial_fit) sgd, dumping each with skops.io and collecting (a) every
# `__module__.__class__` in the file's schema and (b) skops.io.get_untrusted_types() — scikit-learn 1.9.1,
# numpy 2.4.6, skops 0.16.0. tests/test_adversarial.py regenerates both from the registry and fails if a
# classifier needs a type missing here. Added by hand, with their reason:
#   numpy.int32: numpy's default integer on Windows before numpy 2 (where this list has numpy.int64);
#   sklearn.linear_model._sgd_fast.Log: sgd's log loss object before scikit-learn moved it to sklearn._loss.
# The optional PCA step (logreg/svm/knn `pca`) added sklearn.decomposition._pca.PCA and numpy.float32 (its
# noise_variance_ on float32 features): arrays and a scalar, no code.
# Not one of these is a function: a file that references any function is refused.
ARTIFACT_TYPES = frozenset(
    {
        "builtins.dict",
        "builtins.list",
        "builtins.str",
        "builtins.tuple",
        "numpy.ndarray",
        "numpy.float64",
        "numpy.float32",
        "numpy.int64",
        "numpy.int32",
        "featstore.models.reshape.FeatureReshape",
        "featstore.models.svm.TemperedSVC",  # the svm's head: a fitted SVC, its classes, a temperature; takes no function
        # the heads of logreg, sgd, knn and random_forest since attack 63 #1: scikit-learn's with probabilities that agree
        # with their predictions (featstore.models.agreeing); their state is their parents' (runs before load as they were)
        "featstore.models.agreeing.AgreeingLogisticRegression",
        "featstore.models.agreeing.AgreeingSGDClassifier",
        "featstore.models.agreeing.AgreeingKNeighborsClassifier",
        "featstore.models.agreeing.AgreeingRandomForestClassifier",
        "featstore.classifiers.FeatureReshape",  # its name in run folders written before the package was laid out by stage
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.decomposition._pca.PCA",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.svm._classes.SVC",
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.neighbors._classification.KNeighborsClassifier",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.tree._tree.Tree",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn.linear_model._sgd_fast.ModifiedHuber",
        "sklearn.linear_model._sgd_fast.Log",
    }
)


def _schema(path: Path) -> dict:
    """A skops file's parsed ``schema.json`` (nothing is imported or built)."""
    try:
        with zipfile.ZipFile(path) as z:
            schema = json.loads(z.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, RecursionError) as exc:
        raise BrokenRunError(
            f"run artifact {path} is not a readable skops file ({exc}); refusing to load it. Fit the classifier again."
        ) from None
    if not isinstance(schema, dict) or "__class__" not in schema:
        raise BrokenRunError(
            f"run artifact {path} has no skops object schema; refusing to load it. Fit the classifier again."
        )
    return schema


def skops_types(path: Path, schema: dict | None = None) -> set[str]:
    """Every ``module.name`` a skops file refers to, read from its schema (nothing is imported or built)."""
    found, stack = set(), [_schema(path) if schema is None else schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node or "__module__" in node:
                found.add(f"{node.get('__module__')}.{node.get('__class__')}")
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
