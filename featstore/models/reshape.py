"""Stored features to vectors: the first step of every fitted classifier's pipeline.

It lives with the models, not with the classifiers, because run artifacts name it: a saved pipeline refers to
``featstore.models.reshape.FeatureReshape`` (run folders written before the package was laid out by stage name
``featstore.classifiers.FeatureReshape``; :mod:`featstore.runs.artifacts` maps that name here when loading).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import FLOAT_DTYPES, check_is_fitted, validate_data

from featstore.errors import ConfigError
from featstore.maplayout import refuse_unknown_layout

REDUCTIONS = ("flatten", "avg", "max")
REDUCED = {"avg": "averages over", "max": "takes the largest value over"}


def pooled(reshape: FeatureReshape, ndim: int) -> bool:
    """Whether ``reshape`` averages (or maxes) features of ``ndim`` axes (the row axis included) over all but the last.
    Fitted since attack 58: whenever its reduce is avg/max and it was fitted on more than vectors. Fitted before (a run's
    pipeline saved without ``pooled_``): only a 4-D ``(N, h, w, c)`` block, the rule it was fitted with, so it still
    predicts as fitted (its ``(tokens, dims)`` were flattened)."""
    done = getattr(reshape, "pooled_", None)
    if done is None:
        return ndim == 4 and reshape.reduce != "flatten"
    return done is True and ndim >= 3


def check_reduce(
    reduce: str, shape: tuple, where: str, option: str = "--param reduce=flatten", attrs: dict | None = None
) -> None:
    """Refuse ``reduce`` avg/max on features stored with ``shape`` per row when that is a vector: nothing to reduce,
    and the run would record ``reduce: avg`` for a flatten (attack 58 #3). ``where`` names the features (extractor
    and split), ``option`` the fix in the command's own spelling. ``attrs``: the extractor's record, to refuse a map
    whose channels axis it does not say (:func:`~featstore.maplayout.refuse_unknown_layout`)."""
    if reduce != "flatten" and attrs is not None:
        refuse_unknown_layout(attrs, shape, where, option)
    if reduce != "flatten" and len(tuple(shape)) < 2:
        raise ConfigError(
            f"reduce={reduce} {REDUCED[reduce]} every axis but the last of each row, and {where} are stored as vectors "
            f"(shape {tuple(shape)} per row), with nothing to reduce; pass {option}, or extract the layer with "
            f"--pooling none to keep its map"
        )


class FeatureReshape(TransformerMixin, BaseEstimator):
    """Turn stored features ``(N, ...)`` into ``(N, d)``: flatten, or average/max over every axis but the last (over
    h and w of ``(h, w, c)`` maps, over the tokens of ``(tokens, dims)``); then, optionally, power normalisation (each
    value x becomes sign(x)|x|^power) and unit L2 norm per row.

    ``(tokens, dims)`` were flattened while the run recorded ``reduce: avg`` (attack 58 #3). On vectors ``(N, d)``
    there is nothing to reduce (they pass as they are): a command refuses a reduce its user gave there
    (:func:`check_reduce`), so that no run records ``avg`` for what was a flatten.

    >>> FeatureReshape("avg").fit_transform(np.ones((2, 4, 4, 3))).shape
    (2, 3)
    >>> FeatureReshape("max").fit_transform(np.ones((2, 7, 5))).shape
    (2, 5)
    >>> FeatureReshape(power=0.5, l2=True).fit_transform(np.array([[9.0, 16.0]]))
    array([[0.6, 0.8]])
    """

    def __init__(self, reduce: str = "flatten", power: float = 1.0, l2: bool = False):
        self.reduce = reduce
        self.power = power
        self.l2 = l2

    def fit(self, X, y=None):
        if self.reduce not in REDUCTIONS:
            raise ConfigError(f"unknown reduce {self.reduce!r}; choose one of: {', '.join(REDUCTIONS)}")
        if not (isinstance(self.power, (int, float)) and 0 < self.power <= 1):
            raise ConfigError(f"power must be in (0, 1] (1 = off, 0.5 = square root), got {self.power!r}")
        X = validate_data(self, X, allow_nd=True, dtype=FLOAT_DTYPES)
        self.pooled_ = self.reduce != "flatten" and X.ndim >= 3  # over every axis but the last (what transform does)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, allow_nd=True, dtype=FLOAT_DTYPES, reset=False)
        if pooled(self, X.ndim):
            axes = tuple(range(1, X.ndim - 1))  # (h, w) of a map, the tokens of (tokens, dims)
            X = X.mean(axis=axes) if self.reduce == "avg" else X.max(axis=axes)
        X = X.reshape(len(X), -1)
        X = X.astype(np.float32) if X.dtype == np.float16 else X  # float16 stores are computed in float32
        if self.power != 1:  # one new array (the input is never changed): 50,000 x 16,384 float32 is 3.3 GB
            Y = np.abs(X)
            np.power(Y, Y.dtype.type(self.power), out=Y)
            X = np.copysign(Y, X, out=Y)
        if self.l2:
            norms = np.maximum(np.linalg.norm(X, axis=1, keepdims=True), np.finfo(X.dtype).tiny)
            X = np.divide(X, norms, out=X) if self.power != 1 else X / norms
        return X
