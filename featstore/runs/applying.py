"""Applying a loaded run's model to features or images, its errors said as one BrokenRunError: probabilities with one
column per store class, checked to be finite probabilities of the right shape (a model altered after its fit, or one
that does not fit the features, is refused, not trusted).

>>> import numpy as np
>>> _probabilities(np.array([[0.25, 0.75]]), 1, 2)
True
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from featstore.runs.files import BrokenRunError


def full_proba(est, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` with one column per store class (classes absent from training get 0)."""
    proba = est.predict_proba(X)
    classes = np.asarray(est.classes_)
    if (
        classes.ndim != 1
        or classes.dtype.kind not in "iu"
        or len(np.unique(classes)) != len(classes)
        or (classes < 0).any()
        or (classes >= n_classes).any()
    ):
        raise ValueError(
            f"the model's classes {classes.tolist()!r} are not distinct labels of the {n_classes} store classes"
        )
    if len(classes) == n_classes and (classes == np.arange(n_classes)).all():  # every class, in order: no copy
        return np.asarray(proba, dtype=np.float64)
    out = np.zeros((len(X), n_classes), dtype=np.float64)
    out[:, classes] = proba
    return out


@contextmanager
def _applying(run_id: str):
    """Turn the errors of a loaded model that does not fit the features into one BrokenRunError."""
    try:
        yield
    except (ValueError, TypeError, IndexError, AttributeError, KeyError, ArithmeticError) as exc:
        raise BrokenRunError(
            f"the model in run {run_id} does not fit these features ({type(exc).__name__}: {exc}); it was altered or "
            f"damaged after the fit, or fitted on other features. Fit the classifier again."
        ) from None


def _probabilities(proba: np.ndarray, rows: int, n_classes: int) -> bool:
    """Whether ``proba`` is ``(rows, n_classes)`` of finite values in [0, 1] whose rows sum to 1 (to rounding)."""
    return proba.shape == (rows, n_classes) and bool(
        np.isfinite(proba).all()
        and (proba >= -1e-6).all()
        and (proba <= 1 + 1e-6).all()
        and (np.abs(proba.sum(axis=1) - 1.0) <= 1e-3).all()
    )


def checked_proba(est, X: np.ndarray, n_classes: int, run_id: str) -> np.ndarray:
    """:func:`full_proba` of a loaded model, or a BrokenRunError when its state does not fit the features.

    A loaded model may hold arrays of another size than its features (a crafted or damaged run): scikit-learn's
    ValueError/TypeError/IndexError become one clear error, and NaN, inf or out-of-range probabilities are refused.
    Example::

        proba = checked_proba(load_estimator(folder, rec["artifact"]), X, 3, rec["id"])
    """
    with _applying(run_id):
        proba = full_proba(est, X, n_classes)
    if not _probabilities(proba, len(X), n_classes):
        raise BrokenRunError(
            f"the model in run {run_id} gives NaN, inf, probabilities outside [0, 1] or rows that do not sum to 1 on these features; "
            f"its state was altered or damaged. Fit the classifier again."
        )
    return proba


def checked_finetuned(model, images: np.ndarray, n_classes: int, run_id: str) -> np.ndarray:
    """A fine-tuned model's probabilities of a uint8 batch, refused (BrokenRunError) unless they are ``(B, n_classes)`` in [0, 1]."""
    with _applying(run_id):
        proba = model.proba(images)
    if not _probabilities(proba, len(images), n_classes):
        raise BrokenRunError(
            f"the model in run {run_id} gives {proba.shape} outputs, NaN, inf, probabilities outside [0, 1] or rows that do not sum to 1 for "
            f"{len(images)} images of {n_classes} classes; it was altered or damaged. Fine-tune again."
        )
    return proba


def checked_predict(est, X: np.ndarray, n_classes: int, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, probabilities)`` of a loaded model, checked as :func:`checked_proba` does."""
    proba = checked_proba(est, X, n_classes, run_id)
    with _applying(run_id):
        pred = np.asarray(est.predict(X))
    if pred.shape != (len(X),):
        raise BrokenRunError(
            f"the model in run {run_id} gives predictions of shape {pred.shape} for {len(X)} rows; fit the classifier again"
        )
    return pred, proba
