"""Choosing a classifier's setting: on a validation split, or by cross-validation on train that keeps the copies of
one image together; the out-of-fold probabilities of the choice are kept for its calibration.

Cross-validation deals whole groups to folds (``featstore.stats.folds.stratified_group_folds``): the rows of one
source image (the image and its augmented copies) are all in one fold, so a fold never scores a row whose copy
it was trained on. Each fold's model predicts its held-out *plain* rows (never a copy); the setting with the best
out-of-fold accuracy wins, and its out-of-fold probabilities calibrate the run when there is no validation split.

>>> folds_of(np.array([0, 0, 1, 1]), None)[1]
2
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from featstore.errors import ConfigError, FeatstoreError, StoreError
from featstore.experiments.calibration import _accepts_groups as takes_groups
from featstore.stats.folds import stratified_group_folds

logger = logging.getLogger(__name__)

CV_FOLDS = 5  # folds of the cross-validation on train (fewer when a class has fewer images)
CV_SEED = 0  # its seed


@dataclass
class OutOfFold:
    """Out-of-fold probabilities of train's plain rows, each from a model that saw no copy of its image."""

    proba: np.ndarray  # (n_plain, n_classes), the model's own (uncalibrated) probabilities
    folds: int  # how many folds
    grouped: bool  # copies of one image kept in one fold


@dataclass
class Fitted:
    """The chosen model and how it was chosen."""

    est: object  # the fitted pipeline
    best: int  # index of the chosen setting
    selection: dict  # the record's "selection"
    predict_split: Callable  # split -> (labels, predictions, raw probabilities); test is read here, once
    oof: OutOfFold | None = None  # train's out-of-fold probabilities (no validation split, in memory)
    # split -> iterator of (labels, predictions, raw probabilities) blocks: a streamed fit's train split is scored
    # from these, never holding its (N, K) probabilities (None: predict_split for every split)
    predict_blocks: Callable | None = None


class DivergedError(ConfigError):
    """A fit whose model gives NaN or infinite probabilities (a setting far outside its useful range): ``sweep`` leaves
    its cell out and goes on."""


def fit_one(spec_name: str, params: dict, X, y, val, groups=None, jobs: int = 1):
    """Fit one setting; a head whose fit takes the validation split (the Keras head: early stopping) gets it, one
    whose fit takes groups (the svm's calibration folds) gets them; ``jobs`` threads inside the head
    (:func:`head_threads`). The library's warnings while fitting (numpy's
    "RuntimeWarning: overflow", scikit-learn's ConvergenceWarning, each with its file and source line) are not printed
    raw: a fit that diverged is one DivergedError, any other fit logs each distinct warning as one line naming the
    setting."""
    from featstore.experiments.classifiers import build_classifier

    est = build_classifier(spec_name, params)
    head = est.steps[-1][1]
    with collected_warnings() as said, head_threads(head, jobs):
        try:
            if getattr(head, "fit_uses_validation", False) and val is not None:
                Xt = est[:-1].fit_transform(X, y)
                head.fit(Xt, y, validation_data=(est[:-1].transform(val[0]), val[1]))
            elif groups is not None and takes_groups(est):
                est.fit(X, y, **{f"{est.steps[-1][0]}__groups": groups})
            else:
                est.fit(X, y)
            refuse_diverged(est, X, spec_name, params)  # (knn's n_neighbors > rows raises only here, at predict)
        except FeatstoreError:  # its own line (DivergedError: the warnings on the way there are its symptoms; no
            raise  # private temporary folder for Keras, attack 42 #7: not "cannot be fitted on these rows")
        except ValueError as exc:  # e.g. n_neighbors > rows, more calibration folds than images of a class
            raise ConfigError(f"{spec_name} with {params} cannot be fitted on these {len(y)} rows: {exc}") from exc
    for category, text in dict.fromkeys(said):
        logger.warning("%s with %s: %s: %s", spec_name, params, category.__name__, " ".join(text.split()))
    return est


def workers(jobs: int, parallel: bool):
    """joblib's ``Parallel`` for the fits of several settings: ``jobs`` worker processes (loky) where the classifier
    may be fitted in them (``parallel``; Keras heads may not) and ``jobs > 1``, given featstore's private temporary
    folder for the training features they load by name (:func:`featstore.tmpdir.private_tempdir`; ConfigError, its
    one line, where there is none): in a team's ``TMPDIR`` (``/dev/shm`` too small for them) a teammate renamed
    joblib's folder and the fit died with a traceback, or could have put his own pickles there (attack 44 #2). Else in
    this process, which needs no folder."""
    from joblib import Parallel

    if not parallel or jobs <= 1:
        return Parallel(n_jobs=jobs if parallel else 1, backend="loky" if parallel else "threading")
    from featstore.tmpdir import private_tempdir

    return Parallel(n_jobs=jobs, backend="loky", temp_folder=private_tempdir())


@contextlib.contextmanager
def head_threads(head, jobs: int):
    """While fitting, a classifier with an ``n_jobs`` setting (sgd: its one-vs-rest classes, one binary fit each;
    forest: its trees) uses ``jobs`` threads. scikit-learn seeds each class or tree before dividing the work, so the
    model is the one a single thread fits (tests/test_streaming.py holds it for sgd); the setting is put back afterwards, so the run's model file is the
    same too. A parameter search uses ``jobs`` for its settings instead (``jobs=1`` here). Only where the setting has
    an effect (:func:`uses_n_jobs`)."""
    if jobs <= 1 or not uses_n_jobs(head):
        yield
        return
    before = head.n_jobs
    head.set_params(n_jobs=jobs)
    try:
        yield
    finally:
        head.set_params(n_jobs=before)


def uses_n_jobs(head) -> bool:
    """Whether ``head`` has an ``n_jobs`` setting that does something. LogisticRegression's has none (scikit-learn
    1.8 deprecated it, "Does not have any effect", to be removed in 1.10; before, it served only ``multi_class='ovr'``,
    which featstore never sets): setting it printed scikit-learn's FutureWarning "You provided 'n_jobs=4', please
    leave it unspecified" of a parameter the user never gave (attack 68 #9)."""
    from sklearn.linear_model import LogisticRegression

    return "n_jobs" in head.get_params(deep=False) and not isinstance(head, LogisticRegression)


_routes = threading.local()  # this thread's list of collected warnings, inside collected_warnings
_route_lock = threading.Lock()
_route_users = [0, None]  # blocks open in any thread, and the showwarning they replaced


@contextlib.contextmanager
def collected_warnings():
    """``(category, message)`` of each warning shown in this thread inside the block, collected in the list it yields
    instead of printed; other threads' warnings are shown as before. Unlike ``warnings.catch_warnings`` (one global
    state) it is safe in ``sweep --jobs N``'s threads. The warnings filters still apply (``error`` raises)."""
    got: list[tuple[type, str]] = []
    with _route_lock:
        if _route_users[0] == 0:
            _route_users[1] = warnings.showwarning
            warnings.showwarning = _route
        _route_users[0] += 1
    outer = getattr(_routes, "got", None)
    _routes.got = got
    try:
        yield got
    finally:
        _routes.got = outer
        with _route_lock:
            _route_users[0] -= 1
            if _route_users[0] == 0 and warnings.showwarning is _route:
                warnings.showwarning = _route_users[1]


def _route(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning while a :func:`collected_warnings` block is open: to this thread's list, else as before."""
    got = getattr(_routes, "got", None)
    if got is None:
        return (_route_users[1] or warnings._showwarning_orig)(message, category, filename, lineno, file, line)
    got.append((category, str(message)))


def refuse_diverged(est, X, spec_name: str, params: dict) -> None:
    """A fit that diverged (``logreg C=1e-300``, ``dense lr=1e30``) gives NaN probabilities for every row: it was
    recorded as far as the calibration, which ended in "ValueError: probabilities must be finite". A few rows tell."""
    if not isinstance(X, np.ndarray) or not len(X) or not hasattr(est, "predict_proba"):
        return
    with np.errstate(all="ignore"):
        proba = np.asarray(est.predict_proba(X[:8]), dtype=np.float64)
    if not np.isfinite(proba).all():
        unscaled = params.get("scale") is False  # logreg at its default C blamed "a regularisation" (attack 69 #7)
        why, fix = (
            (  # a sweep's --param names the classifier (attack 72 #6: "drop --param scale=false", which sweep refuses)
                "scale=false left its features unstandardised, too large for its arithmetic",
                f"drop --param scale=false (in a sweep: --param {spec_name}:scale=false)",
            )
            if unscaled
            else (
                "a regularisation or learning rate far outside its useful range",
                f"fit with other --param values (in a sweep: --param {spec_name}:NAME=VALUE; `featstore classifiers` "
                f"shows the defaults)",  # a sweep's form for every divergence, not scale=false's alone (73 #9)
            )
        )
        raise DivergedError(
            f"{spec_name} with {params} diverged: its fitted model gives NaN or infinite probabilities on the "
            f"training rows ({why}); {fix}"
        )


def check_classes(y: np.ndarray, split: str, class_names: list[str]) -> None:
    """StoreError unless ``y`` holds at least two classes."""
    present = np.unique(y)
    if len(present) < 2:
        raise StoreError(
            f"split {split!r} has only one class ({class_names[present[0]] if len(present) else 'none'}); "
            f"a classifier needs at least two class folders with images"
        )


def folds_of(y: np.ndarray, groups, train: str = "train") -> tuple[list, int]:
    """The cross-validation folds of train's rows (groups kept whole); a StoreError when a class has too few images."""
    folds, n = stratified_group_folds(y, groups, CV_FOLDS, CV_SEED)
    if not folds:
        raise StoreError(
            f"no validation split and too few images per class in {train!r} for cross-validation (every class needs "
            f"at least 2 images); extract a validation split"
        )
    return folds, n


def _fold_proba(spec_name, params, X, y, fit_rows, held, n_classes, groups):
    """Probabilities of the ``held`` rows from a model fitted on ``fit_rows`` (one column per store class)."""
    from featstore.runs.artifacts import full_proba

    try:
        with np.errstate(over="ignore"):  # an overflow on huge rows is refused below in one line, not a raw warning
            est = fit_one(
                spec_name, params, X[fit_rows], y[fit_rows], None, None if groups is None else groups[fit_rows]
            )
            return full_proba(est, X[held], n_classes)
    except (ValueError, ConfigError) as exc:
        _refuse_huge_rows(X, spec_name)  # the store's rows, not the classifier's settings
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{spec_name} with {params} cannot predict a cross-validation fold: {exc}") from exc


def _refuse_huge_rows(X, spec_name: str | None, split: str = "train", at: int = 0) -> None:
    """StoreError naming ``split``'s rows (``X`` holds rows ``at``... of it) whose finite features are too large for a
    classifier's float arithmetic (3e38 overflows a scaler to inf: "Input X contains infinity" blamed the classifier);
    nothing when there are none."""
    from featstore.store.nonfinite import large_rows, row_peaks  # the rule fit, check and predict apply

    if not isinstance(X, np.ndarray) or not len(X):
        return
    top = row_peaks(X)
    huge = large_rows(top)
    if len(huge):
        rows = ", ".join(str(at + r) for r in huge[:5].tolist())
        whose = f"{spec_name}'s" if spec_name else "the classifier's"
        raise StoreError(
            f"{split}'s row{'s' if len(huge) > 1 else ''} {rows}{' ...' if len(huge) > 5 else ''} ({len(huge)} of the {len(X)} rows read; "
            f"largest |feature| {float(top[huge].max()):.3g}) hold finite features too large for {whose} arithmetic: an "
            f"overflow in the model that extracted them, not the classifier's settings. Check those images and the "
            f"model's weights, then re-extract {split} with `featstore extract --split {split} --overwrite`"
        )


def predicted_block(est, X: np.ndarray, y: np.ndarray, n_classes: int, split: str, at: int) -> tuple:
    """``(labels, predictions, full probabilities)`` of rows ``at``... of ``split``; a block whose finite features
    overflow the classifier's arithmetic is one StoreError naming its rows (:func:`_refuse_huge_rows`), not a raw
    RuntimeWarning then "cannot predict 'test': Input X contains infinity" blaming the fit."""
    from featstore.runs.artifacts import full_proba

    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below in one line
            pred, proba = est.predict(X), full_proba(est, X, n_classes)
    except ValueError:
        _refuse_huge_rows(X, None, split, at)
        raise
    other = int(np.sum(np.asarray(pred) != proba.argmax(axis=1))) if len(pred) else 0
    if other:  # never a built-in's (featstore.models.agreeing; attack 63 #1): a registered classifier's
        logger.warning(
            "%d of %d rows of %r (from row %d): the classifier's predict is not the most probable class of its "
            "predict_proba. The run records predict's accuracy; runs compare, the reliability bins, featstore predict "
            "and the report use the most probable class. Make its predict_proba agree with its predict "
            "(featstore.models.agreeing.agree)",
            other,
            len(pred),
            split,
            at,
        )
    return y, pred, proba


def _fold_or_why(*args) -> np.ndarray | str:
    """:func:`_fold_proba`, or the DivergedError's message when that fold's fit diverged."""
    try:
        return _fold_proba(*args)
    except DivergedError as exc:
        return str(exc)


def cross_validate(
    spec_name: str, full: list[dict], X, y, n_plain: int, n_classes: int, groups, jobs: int, parallel: bool, train: str
) -> tuple[list[float], list[OutOfFold | None]]:
    """Out-of-fold accuracy on train's plain rows and out-of-fold probabilities, for every setting in ``full``; a
    setting whose fit diverged in a fold gets NaN and None (a warning names it), and when all did, DivergedError.

    Rows ``n_plain`` and after are augmented copies: trained on in the folds of other images, never scored.
    ``groups`` gives each row its source image (None: each row its own).
    """
    from joblib import delayed

    folds, n = folds_of(y, groups, train)
    jobs_list = [(i, fit_rows, held[held < n_plain]) for i in range(len(full)) for fit_rows, held in folds]
    probas = workers(jobs, parallel)(
        delayed(_fold_or_why)(spec_name, full[i], X, y, fit_rows, held, n_classes, groups)
        for i, fit_rows, held in jobs_list
    )
    out = [np.zeros((n_plain, n_classes)) for _ in full]
    why: dict[int, str] = {}
    for (i, _, held), p in zip(jobs_list, probas):
        if isinstance(p, str):
            why.setdefault(i, p)
        else:
            out[i][held] = p
    if len(why) == len(full):
        raise DivergedError(why[0] if len(full) == 1 else f"every setting diverged; the first: {why[0]}")
    for i in sorted(why):
        logger.warning("%s (in a cross-validation fold); left out of the choice", why[i])
    scores = [np.nan if i in why else float(np.mean(p.argmax(axis=1) == y[:n_plain])) for i, p in enumerate(out)]
    return scores, [None if i in why else OutOfFold(p, n, groups is not None) for i, p in enumerate(out)]


def out_of_fold(spec_name: str, params: dict, X, y, n_plain: int, n_classes: int, groups, train: str) -> OutOfFold:
    """Out-of-fold probabilities of one setting (for its calibration when there is no validation split)."""
    return cross_validate(spec_name, [params], X, y, n_plain, n_classes, groups, 1, False, train)[1][0]


def source_groups(paths: list[str], copy_paths: list[str]) -> np.ndarray:
    """The source image of each row of a split followed by its augmented copies: row i for the split's row i, and
    for a copy the row of the image it was made from (copies carry their image's path)."""
    index = {p: i for i, p in enumerate(paths)}
    missing = [p for p in copy_paths if p not in index]
    if missing:
        raise StoreError(
            f"{len(missing)} augmented copies name images that are not rows of the split (e.g. {missing[0]!r}); "
            f"run `featstore check` and re-make the copies"
        )
    return np.concatenate([np.arange(len(paths)), np.array([index[p] for p in copy_paths], dtype=np.intp)])


def describe_given(given: dict[str, list]) -> str:
    """The words a run records for a setting given by hand: "given by hand: C=10, kernel=rbf", or the defaults."""
    if not given:
        return "the classifier's defaults (nothing to select)"
    return "given by hand: " + ", ".join(f"{k}={v[0]}" for k, v in sorted(given.items()))
