"""Classifiers whose most probable class is always their prediction, also after a run's temperature calibration.

A run records the accuracy of ``predict``; everything after it (``runs compare``'s paired test, the reliability bins,
``featstore predict``'s labels, the report's galleries, out-of-fold selection) takes the most probable class of the
run's (calibrated) probabilities. The two must be one prediction. scikit-learn's do not always agree:

- ``SGDClassifier(loss="modified_huber")`` clips its decision values to [-1, 1] before it normalises them, so every
  class past the clip ties (and a row of all-negative values becomes uniform): the first tied class is the argmax,
  the largest decision value the prediction (attack 63 #1: 139 of 300 rows);
- a linear model's probabilities of two classes whose decision values differ by a rounding error are equal (or in the
  other order), and a k-NN's distance-weighted votes are summed in another order by ``predict`` and
  ``predict_proba``;
- a temperature (``featstore.stats.calibration``) keeps the order of unequal values, but a log, a division and an
  exp can round two values one ulp apart to one value, and the argmax of a tie is the first class.

So :func:`agree` lifts, in the rows that need it, the predicted class's probability to ``1 + MARGIN`` times the
largest other one (then renormalises): ties are broken toward the prediction (the decision function's largest value
for the linear models), and the lead is far above what a temperature's rounding can undo. No other row changes; a
changed row moves by about ``MARGIN``. The classes below are scikit-learn's with ``predict_proba`` passed through it
(the svm's :class:`featstore.models.svm.TemperedSVC` does the same); ``predict`` is scikit-learn's, except the k-NN's
and the forest's, which are the argmax of their agreeing probabilities (their votes are the decision).

>>> agree(np.array([[1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3]]), np.array([2, 1])).argmax(axis=1)
array([2, 1])
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier

MARGIN = 1e-9  # relative lead of the predicted class: ~10^6 ulps of a log-probability, 1e-9 of a log-loss


def agree(proba, winner, copy: bool = True) -> np.ndarray:
    """``proba`` ``(N, K)`` as float64 whose most probable class is ``winner`` (column indices ``(N,)``), even after a
    temperature calibration; rows where the winner already leads by ``MARGIN`` are unchanged. ``copy=False``: a
    float64 ``proba`` is changed in place (no second ``(N, K)`` array: a split's blocks budget their copies)."""
    out = np.array(proba, dtype=np.float64) if copy else np.asarray(proba, dtype=np.float64)
    winner = np.asarray(winner, dtype=np.intp)
    if out.ndim != 2 or out.shape[1] < 2 or not len(out):
        return out
    rows = np.arange(len(out))
    top = out[rows, winner]  # a copy (fancy indexing)
    out[rows, winner] = -np.inf
    rival = out.max(axis=1)
    out[rows, winner] = top
    need = np.flatnonzero(top < rival * (1 + MARGIN))  # NaN rows compare False: left as they are
    if len(need):
        out[need, winner[need]] = rival[need] * (1 + MARGIN)
        out[need] /= out[need].sum(axis=1, keepdims=True)
    return out


def _winner(est, X) -> np.ndarray:
    """Column of each row's prediction: the largest decision value (the first of equal ones), as ``predict`` gives;
    for two classes the second when the decision value is positive."""
    d = est.decision_function(X)
    return (d > 0).astype(np.intp) if d.ndim == 1 else d.argmax(axis=1)


class _LeadsByDecision:
    """``predict_proba`` whose most probable class is ``predict``'s, the decision function's largest (:func:`agree`)."""

    def predict_proba(self, X):
        return agree(super().predict_proba(X), _winner(self, X), copy=False)


class _LeadsByVotes:
    """``predict_proba`` lifted toward its own most probable class (:func:`agree`), and ``predict`` that class: the
    votes (a k-NN's, a forest's trees') are the decision, computed once."""

    def predict_proba(self, X):
        proba = super().predict_proba(X)
        return agree(proba, proba.argmax(axis=1), copy=False)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class AgreeingLogisticRegression(_LeadsByDecision, LogisticRegression):
    """``LogisticRegression`` whose ``predict_proba`` agrees with ``predict`` (:func:`agree`)."""


class AgreeingSGDClassifier(_LeadsByDecision, SGDClassifier):
    """``SGDClassifier`` (log or modified Huber loss) whose ``predict_proba`` agrees with ``predict`` (:func:`agree`)."""


class AgreeingKNeighborsClassifier(_LeadsByVotes, KNeighborsClassifier):
    """``KNeighborsClassifier`` predicting the argmax of its (agreeing) vote shares."""


class AgreeingRandomForestClassifier(_LeadsByVotes, RandomForestClassifier):
    """``RandomForestClassifier`` whose averaged tree probabilities lead with its prediction (:func:`agree`)."""


AGREEING = (
    AgreeingLogisticRegression,
    AgreeingSGDClassifier,
    AgreeingKNeighborsClassifier,
    AgreeingRandomForestClassifier,
)  # the heads of featstore's built-in logreg, sgd, knn and random_forest (svm: TemperedSVC; dense: DenseHead)
