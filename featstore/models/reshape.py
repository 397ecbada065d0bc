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

REDUCTIONS = ("flatten", "avg", "max")


class FeatureReshape(TransformerMixin, BaseEstimator):
    """Turn stored features ``(N, h, w, c)`` into ``(N, d)``: flatten, or global average/max over h and w; then,
    optionally, power normalisation (each value x becomes sign(x)|x|^power) and unit L2 norm per row.

    >>> FeatureReshape("avg").fit_transform(np.ones((2, 4, 4, 3))).shape
    (2, 3)
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
        validate_data(self, X, allow_nd=True, dtype=FLOAT_DTYPES)
        return self

    def transform(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, allow_nd=True, dtype=FLOAT_DTYPES, reset=False)
        if X.ndim == 4 and self.reduce != "flatten":
            X = X.mean(axis=(1, 2)) if self.reduce == "avg" else X.max(axis=(1, 2))
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
