"""Where a run's probability calibration is fitted: on validation, or out of fold on train (copies kept together).

The temperature itself is :mod:`featstore.stats.calibration` (base layer, so runs and predict can apply a
recorded one); this module fits it on the right rows and says which in the record's ``fitted_on``:

- with a validation split: on the validation probabilities of the fitted model (:func:`calibrate_on_validation`);
- without one: on out-of-fold probabilities of train (:func:`out_of_fold_proba`), each row predicted by a
  model fitted without any row of its group, i.e. without any augmented copy of its image
  (:func:`calibrate_out_of_fold`).

Example::

    cal = calibrate_on_validation(est.predict_proba(X_val), y_val)
    cal = calibrate_out_of_fold(build_classifier("logreg"), X_train, y_train, n_classes, groups=source_ids)
"""

from __future__ import annotations

import inspect
import logging

import numpy as np

from featstore.errors import ConfigError
from featstore.stats.calibration import fit_temperature, fit_temperature_blocks, identity_calibration
from featstore.stats.folds import stratified_group_folds

logger = logging.getLogger(__name__)


def _accepts_groups(est) -> bool:
    """Whether the estimator's final step takes ``groups`` in fit (the svm does: its own folds keep copies together)."""
    last = est.steps[-1][1] if hasattr(est, "steps") else est
    return "groups" in inspect.signature(last.fit).parameters


def out_of_fold_proba(
    estimator, X, y, n_classes: int, groups=None, n_folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, int]:
    """``(proba, folds)``: probabilities ``(N, n_classes)`` of train's rows, each from a clone of ``estimator``
    fitted on the other folds; ``groups`` (e.g. the source image of each augmented copy) stay in one fold.

    Every class of ``y`` is on both sides of every fold; store classes absent from ``y`` get probability 0.
    A ConfigError when a class has fewer than 2 groups: then no row of it can be held out.
    """
    from sklearn.base import clone

    y = np.asarray(y)
    folds, n = stratified_group_folds(y, groups, n_folds, seed)
    groups = None if groups is None else np.asarray(groups)
    if not folds:
        g = np.arange(len(y)) if groups is None else groups
        counts = [len(np.unique(g[y == c])) for c in range(n_classes)]
        raise ConfigError(
            f"out-of-fold probabilities need at least 2 {'images' if groups is not None else 'rows'} of every class; "
            f"per class there are {counts}. Extract a validation split to calibrate on instead"
        )
    proba = np.zeros((len(y), n_classes))
    for train, held in folds:
        est = clone(estimator)
        kwargs = {}
        if groups is not None and _accepts_groups(est):
            kwargs = {f"{est.steps[-1][0]}__groups" if hasattr(est, "steps") else "groups": groups[train]}
        est.fit(X[train], y[train], **kwargs)
        proba[np.ix_(held, np.asarray(est.classes_))] = est.predict_proba(X[held])
    return proba, n


def calibrate_on_validation(proba, y) -> dict:
    """The temperature record fitted on a validation split's probabilities, ``fitted_on`` saying so."""
    return {**fit_temperature(proba, y), "fitted_on": "validation"}


def calibrate_on_validation_blocks(blocks, y, n_classes: int, max_bytes: int = 0) -> dict:
    """:func:`calibrate_on_validation` of probabilities read block by block (``blocks()`` yields them in order, once
    per step of the search): the same record, exactly, without an ``(N, K)`` array unless its logits fit
    ``max_bytes`` (``featstore.stats.calibration.fit_temperature_blocks``)."""
    return {**fit_temperature_blocks(blocks, y, n_classes, max_bytes=max_bytes), "fitted_on": "validation"}


def calibrate_out_of_fold(estimator, X, y, n_classes: int, groups=None, n_folds: int = 5, seed: int = 0) -> dict:
    """The temperature record fitted on out-of-fold probabilities of train (see :func:`out_of_fold_proba`)."""
    proba, n = out_of_fold_proba(estimator, X, y, n_classes, groups, n_folds, seed)
    return calibrate_on_out_of_fold(proba, y, n, seed, groups is not None)


def calibrate_on_out_of_fold(proba, y, folds: int, seed: int, grouped: bool, train: str = "train") -> dict:
    """The temperature record fitted on out-of-fold probabilities of ``train``'s rows, ``fitted_on`` saying how."""
    kept = ", copies of one image kept in one fold" if grouped else ""
    return {**fit_temperature(proba, y), "fitted_on": f"out-of-fold on {train} ({folds} folds, seed {seed}{kept})"}


def not_calibrated(why: str) -> dict:
    """The record of a run whose probabilities are used as its model gives them, ``fitted_on`` saying why."""
    return {**identity_calibration(), "fitted_on": f"not calibrated: {why}"}
