"""Classifier registry: name -> scikit-learn compatible estimator factory, typed parameters and a search grid.

Every estimator is a full pipeline from stored features ``(N, ...)`` to classes: reshape (flatten or
global pooling, optionally power and L2 normalisation), standardisation where it matters, optionally PCA,
then the classifier. The pipeline is what a run saves.

>>> est = build_classifier("logreg", {"C": 0.1})
>>> [name for name, _ in est.steps]
['features', 'scale', 'clf']
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from featstore.errors import ConfigError, choices_error
from featstore.experiments.params import (
    Param,
    check_value,
    convert_value,
    refuse_huge_grid,
    refuse_param_types,
    refuse_repeated,
)
from featstore.kerasconfig import refuse_caps
from featstore.models.reshape import REDUCTIONS, FeatureReshape
from featstore.runs.files import valid_name


@dataclass(frozen=True)
class ClassifierSpec:
    """A registered classifier: how to build it, its parameters and default search grid."""

    name: str  # registry key
    description: str  # one line
    builder: Callable[[dict], object]  # full params -> unfitted estimator
    params: dict[str, Param]  # parameter name -> Param
    grid: dict[str, list] = field(default_factory=dict)  # default search grid (subset of params)
    needs_all_data: bool = True  # False for classifiers that can learn from chunks (partial_fit)
    keras: bool = False  # trained with Keras's model.fit: a cap on its epochs or steps is refused before any work
    builtin: bool = False  # featstore's own (its builder is one this module registered): a sweep reuses only its runs

    def full_params(self, given: dict) -> dict:
        """Defaults overlaid with ``given`` (already typed); unknown names list the valid ones, values out of range
        (``C=inf``, ``max_iter=0``) say the valid range."""
        for key, value in given.items():
            self.check_value(key, value)
        return {**{k: p.default for k, p in self.params.items()}, **given}

    def check_values(self, given: dict[str, list], search: bool = False) -> None:
        """Every value of a search (``{"C": [0.1, 1.0]}``) checked before any work (see :meth:`full_params`); for a
        Keras classifier, the caps Keras would cut its fit to (:func:`featstore.kerasconfig.refuse_caps`: a sweep
        fitted every other classifier first, then refused: attack 47 #8)."""
        if self.keras:
            refuse_caps()
        for key, values in given.items():
            if not values:  # C=[] (or an unknown name with []): fitted on the defaults, then an IndexError (60 #5)
                self.check_value(key, self.params[key].default if key in self.params else None)  # an unknown name
                raise ConfigError(f"parameter {key} for {self.name} is given no value; give at least one")
            for value in values:
                self.check_value(key, value)
            refuse_repeated(self.name, key, values)  # params={"C": [1, 1.0]}: one setting, fitted twice (68 #10)
        settings = candidates(self, given, search)  # at most MAX_SETTINGS of them
        if not self.builtin:  # a registered builder's estimators, each refused now if featstore cannot reload its fit
            for setting in settings:  # (its --search grid's too: attack 61 #1)
                self.builder(self.full_params(setting))

    def check_value(self, key: str, value) -> None:
        """ConfigError unless ``key`` is a parameter and ``value`` a valid value of it, naming the valid range."""
        if key not in self.params:
            raise ConfigError(f"unknown parameter {key!r} for {self.name}; valid: {', '.join(self.params)}")
        check_value(self.name, key, self.params[key], value)


_REGISTRY: dict[str, ClassifierSpec] = {}
_OWN: list = []  # the builder objects featstore registers below: built in by identity, never by a name (attack 62 #3)
_OWN_OPEN = True  # this module is registering its own classifiers (False once it is loaded: see its last line)


MAX_NAME = 200  # characters of a classifier's name: its runs' temporary folders ``.<name>-<6 hex>.<random>.old.tmp``


def register_classifier(
    name: str,
    description: str,
    params: dict[str, Param],
    grid: dict | None = None,
    needs_all_data: bool = True,
    keras: bool = False,
):
    """Decorator: register a builder ``params -> estimator`` under ``name``.

    ``name`` starts its runs' ids (``<name>-<6 hex>``), so it is refused here unless it is a plain name: letters,
    digits and ``._-``, not starting with a dot, at most :data:`MAX_NAME` characters ("my logreg" was fitted in full,
    then refused as a run id; "../x" made the run's draft folder outside the runs folder: attack 57 #7, #8). The
    builder returns a scikit-learn classifier (``fit``, ``predict``, ``predict_proba``), which is fitted on the stored
    features flattened to one vector per image (as the built-in classifiers with ``reduce=flatten``), or a
    ``Pipeline`` whose last step is such a classifier, fitted on the stored features as they are; anything else is
    refused when it is built, before any fit. Each of ``params`` is a ``Param`` of type int, float, str, bool, list or
    dict whose default is valid (:func:`featstore.experiments.params.refuse_param_types`); a list or dict parameter's
    ``--param`` value is JSON (``--param 'layers=[16, 8]'``). Example::

        @register_classifier("ridge_logreg", "logistic regression, scikit-learn defaults", {})
        def _ridge(params):
            return LogisticRegression(max_iter=500)
    """
    if not valid_name(name) or len(name) > MAX_NAME:
        plain = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._-")[:MAX_NAME] or "my_clf"
        raise ConfigError(
            f"classifier name {name!r} cannot start a run id; give letters, digits and ._- (not starting with a dot), "
            f"at most {MAX_NAME} characters, e.g. {plain!r}"
        )
    refuse_param_types(name, params)  # Param(list, ...) of text was list(text), its characters (attack 71 #6)

    def deco(builder):
        if name in _REGISTRY:
            raise ValueError(f"classifier {name!r} is already registered")
        if _OWN_OPEN:  # featstore's own (below); a functools.wraps copy of one claims its names, and is not one
            _OWN.append(builder)
        own = any(builder is b for b in _OWN)
        built = _pipeline_of(name, builder, checked=not own)
        _REGISTRY[name] = ClassifierSpec(name, description, built, params, grid or {}, needs_all_data, keras, own)
        return builder

    return deco


def _pipeline_of(name: str, builder: Callable[[dict], object], checked: bool = True) -> Callable[[dict], Pipeline]:
    """``builder`` whose result is a Pipeline whose last step is a classifier: a bare classifier is put after a
    flattening ``FeatureReshape`` (fit needs the pipeline's steps: a bare LogisticRegression was an AttributeError
    traceback, attack 57 #7); anything else is a ConfigError naming what the builder must return. ``checked`` (a
    registered builder): a pipeline whose fit featstore could not load again (:func:`featstore.runs.artifacts.
    reload_problem`) is a ConfigError too, before any fit (its runs were recorded, then refused as "altered after the
    fit": attack 60 #4)."""

    def build(params: dict) -> Pipeline:
        est = builder(params)
        steps = getattr(est, "steps", None) if isinstance(est, Pipeline) else None
        head = steps[-1][1] if steps else est
        if not all(callable(getattr(head, m, None)) for m in ("fit", "predict", "predict_proba")):
            raise ConfigError(
                f"the builder of classifier {name!r} returned {type(head).__name__}"
                f"{' as its last step' if steps else ''}, which is not a classifier with fit, predict and predict_proba; "
                f"return a scikit-learn classifier (e.g. LogisticRegression()) or a Pipeline ending in one"
            )
        est = est if steps else Pipeline([("features", FeatureReshape("flatten")), ("clf", est)])
        if checked:
            from featstore.runs.artifacts import reload_problem
            from featstore.runs.modelcheck import RELOADABLE

            problem = reload_problem(est)
            if problem:
                raise ConfigError(
                    f"classifier {name!r}: featstore could not load again the fit of what its builder returned "
                    f"({problem}); return what featstore saves and loads: {RELOADABLE}"
                )
        return est

    return build


def list_classifiers() -> list[str]:
    """Names of the registered classifiers."""
    return list(_REGISTRY)


def get_classifier(name: str) -> ClassifierSpec:
    """The spec registered under ``name``; unknown names list the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise choices_error("classifier", name, list_classifiers()) from None


def build_classifier(name: str, params: dict | None = None):
    """An unfitted estimator for ``name`` with ``params`` over its defaults."""
    spec = get_classifier(name)
    return spec.builder(spec.full_params(params or {}))


def parse_params(spec: ClassifierSpec, items: list[str]) -> dict[str, list]:
    """``["C=0.1", "C=1", "kernel=rbf"]`` -> ``{"C": [0.1, 1.0], "kernel": ["rbf"]}`` (typed, validated)."""
    out, texts = {}, {}  # by name: the values, typed and validated; as typed
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--param takes NAME=VALUE, got {item!r}; parameters of {spec.name}: {', '.join(spec.params)}"
            )
        key, text = item.split("=", 1)
        out.setdefault(key.strip(), []).append(convert_value(spec, key.strip(), text.strip()))
        texts.setdefault(key.strip(), []).append(text.strip())
        refuse_repeated(spec.name, key.strip(), out[key.strip()], texts[key.strip()])  # one setting is one fit
    return out


def parse_clf_params(clfs: list[str], items: list[str]) -> dict[str, dict[str, list]]:
    """``["svm:kernel=rbf", "svm:C=1", "svm:C=10"]`` -> ``{"svm": {"kernel": ["rbf"], "C": [1.0, 10.0]}}`` for a sweep.

    >>> parse_clf_params(["logreg", "svm"], ["svm:power=0.5"])
    {'svm': {'power': [0.5]}}
    """
    grouped: dict[str, list[str]] = {}
    for item in items:
        clf, sep, rest = item.partition(":")
        if not sep or "=" not in rest:
            raise ConfigError(f"--param takes CLASSIFIER:NAME=VALUE in a sweep, got {item!r}, e.g. svm:kernel=rbf")
        if clf.strip() not in clfs:
            raise ConfigError(
                f"--param {item!r} names classifier {clf.strip()!r}, which is not swept; swept: {', '.join(clfs)}"
            )
        grouped.setdefault(clf.strip(), []).append(rest)
    return {clf: parse_params(get_classifier(clf), rest) for clf, rest in grouped.items()}


def candidates(spec: ClassifierSpec, given: dict[str, list], search: bool) -> list[dict]:
    """Parameter settings to try: the product of given values (over the default grid when ``search``)."""
    grid = {**(spec.grid if search else {}), **given}
    keys = sorted(grid)
    refuse_huge_grid(spec.name, [len(grid[k]) for k in keys], bool(search and spec.grid))
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


# ---------------------------------------------------------------- the classifiers
_REDUCE = Param(
    str, "flatten", REDUCTIONS, "how stored features become a vector: flatten, avg or max over space (or tokens)"
)
_SEED = Param(int, 0, (), "random seed", low=0, high=2**32 - 1)
_POSITIVE = {"low": 0.0, "open_low": True}  # a finite number > 0
_COUNT = {"low": 1, "high": 10**6}  # an integer from 1 to a million (a 20-digit count would run until killed)
_VECTOR = {  # how the vector is prepared, for the classifiers that take it (logreg, svm, knn)
    "power": Param(
        float,
        1.0,
        (),
        "power normalisation: each value x becomes sign(x)|x|^power; 0.5 = square root, 1 = off",
        **_POSITIVE,
    ),
    "l2": Param(bool, False, (), "scale each feature vector to unit L2 norm (after power)"),
    "scale": Param(
        bool, True, (), "standardise each feature to mean 0, variance 1 (false: keep an L2-normalised geometry)"
    ),
    "pca": Param(
        int,
        0,
        (),
        "project onto this many principal components of train (randomized PCA; 0 = off)",
        low=0,
        range_help="0 (off) or a number of components",
    ),
}


def _pipe(params: dict, clf, scale: bool = True) -> Pipeline:
    steps = [("features", FeatureReshape(params["reduce"], params.get("power", 1.0), params.get("l2", False)))]
    if scale and params.get("scale", True):
        steps.append(("scale", StandardScaler()))
    if params.get("pca", 0):
        from sklearn.decomposition import PCA

        if params["pca"] < 0:
            raise ConfigError(f"pca must be 0 (off) or a number of components, got {params['pca']}")
        steps.append(("pca", PCA(params["pca"], svd_solver="randomized", random_state=params.get("seed", 0))))
    return Pipeline(steps + [("clf", clf)])


@register_classifier(
    "logreg",
    "multinomial logistic regression on standardised features",
    {
        "C": Param(float, 1.0, (), "inverse L2 strength", **_POSITIVE),
        "max_iter": Param(int, 2000, **_COUNT),
        "solver": Param(
            str, "newton-cg", ("newton-cg", "lbfgs"), "newton-cg: ~3x faster than lbfgs on wide CNN features"
        ),
        "reduce": _REDUCE,
        **_VECTOR,
    },
    grid={"C": [0.001, 0.01, 0.1, 1.0]},
)
def _logreg(p):
    from featstore.models.agreeing import AgreeingLogisticRegression as LogisticRegression

    return _pipe(p, LogisticRegression(C=p["C"], max_iter=p["max_iter"], solver=p["solver"]))


@register_classifier(
    "svm",
    "support vector machine (linear or RBF kernel): predicts as scikit-learn's SVC; probabilities a softmax of its decision values with a temperature fitted out of fold",
    {
        "C": Param(float, 1.0, **_POSITIVE),
        "kernel": Param(str, "linear", ("linear", "rbf")),
        "gamma": Param(str, "scale", (), "scale, auto or a positive number"),
        "calibration_folds": Param(
            int,
            3,
            (),
            "folds of the out-of-fold fit of the probabilities' temperature (0: T = 1); changes no prediction",
            low=0,
            range_help="0 (no temperature fit, T = 1) or a number of folds of at least 2",
        ),
        "reduce": _REDUCE,
        **_VECTOR,
        "seed": _SEED,
    },
    grid={"kernel": ["linear", "rbf"], "C": [0.1, 1.0, 10.0]},
)
def _svm(p):
    from featstore.models.svm import TemperedSVC

    if p["calibration_folds"] < 0 or p["calibration_folds"] == 1:
        raise ConfigError(
            f"calibration_folds must be 0 (no temperature fit, T = 1) or at least 2, got {p['calibration_folds']}"
        )
    gamma = p["gamma"] if p["gamma"] in ("scale", "auto") else float(p["gamma"])
    return _pipe(
        p,
        TemperedSVC(
            C=p["C"], kernel=p["kernel"], gamma=gamma, calibration_folds=p["calibration_folds"], random_state=p["seed"]
        ),
    )


@register_classifier(
    "knn",
    "k nearest neighbours on standardised features (Euclidean or cosine distance)",
    {
        "n_neighbors": Param(int, 5, **_COUNT),
        "weights": Param(str, "uniform", ("uniform", "distance"), "distance: each neighbour's vote weighs 1/distance"),
        "metric": Param(
            str, "euclidean", ("euclidean", "cosine"), "cosine: 1 - cosine similarity (brute-force search)"
        ),
        "reduce": _REDUCE,
        **_VECTOR,
    },
    grid={"n_neighbors": [1, 5, 15]},
)
def _knn(p):
    from featstore.models.agreeing import AgreeingKNeighborsClassifier as KNeighborsClassifier

    metric = {"metric": "cosine", "algorithm": "brute"} if p.get("metric") == "cosine" else {}  # euclidean: as before
    return _pipe(p, KNeighborsClassifier(n_neighbors=p["n_neighbors"], weights=p["weights"], **metric))


@register_classifier(
    "random_forest",
    "random forest on raw features",
    {
        "n_estimators": Param(int, 300, **_COUNT),
        "max_depth": Param(int, 0, (), "0 = unlimited", low=0),
        "max_features": Param(str, "sqrt", (), "sqrt, log2 or a fraction of the features"),
        "reduce": _REDUCE,
        "seed": _SEED,
    },
    grid={"n_estimators": [100, 300], "max_depth": [0, 20]},
)
def _forest(p):
    from featstore.models.agreeing import AgreeingRandomForestClassifier as RandomForestClassifier

    return _pipe(
        p,
        RandomForestClassifier(
            n_estimators=p["n_estimators"],
            max_depth=p["max_depth"] or None,
            max_features=p["max_features"] if p["max_features"] in ("sqrt", "log2") else float(p["max_features"]),
            random_state=p["seed"],
            n_jobs=1,
        ),
        scale=False,
    )


@register_classifier(
    "sgd",
    "linear model trained by SGD (log or modified Huber loss); learns from chunks with partial_fit",
    {
        "alpha": Param(float, 1e-4, **_POSITIVE),
        "loss": Param(str, "log_loss", ("log_loss", "modified_huber")),
        "max_iter": Param(int, 1000, **_COUNT),
        "epochs": Param(int, 5, (), "passes over the data when streaming (--memory-budget)", **_COUNT),
        "reduce": _REDUCE,
        "seed": _SEED,
    },
    grid={"alpha": [1e-5, 1e-4, 1e-3]},
    needs_all_data=False,
)
def _sgd(p):
    from featstore.models.agreeing import AgreeingSGDClassifier as SGDClassifier

    return _pipe(
        p, SGDClassifier(loss=p["loss"], alpha=p["alpha"], max_iter=p["max_iter"], tol=1e-4, random_state=p["seed"])
    )


@register_classifier(
    "dense",
    "small Keras network on the features: Flatten, Dense(units, relu), Dropout, Dense(softmax|sigmoid); RMSprop, early stopping",
    {
        "units": Param(int, 256, **_COUNT),
        "dropout": Param(float, 0.5, low=0.0, high=1.0, open_high=True),
        "lr": Param(float, 2e-5, (), "RMSprop learning rate", **_POSITIVE),
        "epochs": Param(int, 30, **_COUNT),
        "batch_size": Param(int, 20, **_COUNT),
        "patience": Param(int, 5, (), "early-stopping patience (epochs)", low=0),
        "reduce": _REDUCE,
        "seed": _SEED,
    },
    grid={"units": [128, 256], "lr": [2e-5, 1e-4]},
    needs_all_data=False,
    keras=True,
)
def _dense(p):
    from featstore.models.head import DenseHead

    head = DenseHead(
        units=p["units"],
        dropout=p["dropout"],
        lr=p["lr"],
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        patience=p["patience"],
        seed=p["seed"],
    )
    return Pipeline([("features", FeatureReshape(p["reduce"])), ("clf", head)])


_OWN_OPEN = False  # every classifier registered from now on is another's: checked, never reused by a sweep
