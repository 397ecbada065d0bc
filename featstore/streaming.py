"""Out-of-core fits: train and evaluate from the store block by block, within a memory budget.

Used by ``fit(..., memory_budget=...)`` when a split is larger than the budget. ``sgd`` learns with
``partial_fit`` (one pass to fit the scaler, then ``epochs`` passes in shuffled block order); ``dense``
trains Keras on a ``tf.data`` stream of the same blocks. Classifiers that need every row in memory
(kernel SVM, kNN, random forest, logistic regression) are refused with the streaming alternatives.

>>> parse_bytes("512MB"), parse_bytes("1.5GiB")
(512000000, 1610612736)
"""

from __future__ import annotations

import re

import numpy as np

from .classifiers import build_classifier, get_classifier
from .errors import ConfigError
from .store import FeatureStore

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BLOCK_FRACTION = 4  # a block of features is budget/4: room for its float32 copy, the scaled copy and the model


def parse_bytes(text: str | int) -> int:
    """``"512MB"`` -> 512000000; plain numbers are bytes. Clear error for anything else."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"--memory-budget {text!r} is not a size; write e.g. 512MB, 2GB or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def refuse_in_memory(clf: str, split: str, nbytes: int, budget: int) -> None:
    """Error for a classifier that must hold a split larger than the budget in memory."""
    from .classifiers import list_classifiers

    streaming = [c for c in list_classifiers() if not get_classifier(c).needs_all_data]
    raise ConfigError(
        f"split {split!r} takes {nbytes / 1e6:.0f} MB, over --memory-budget {budget / 1e6:.0f} MB, and {clf} needs all of it in "
        f"memory. Use a streaming classifier ({', '.join(streaming)}) or raise the budget."
    )


def stream_fit(fs: FeatureStore, name: str, clf: str, params: dict, train: str, validation: str | None, budget: int):
    """Fit ``clf`` (sgd or dense) reading ``train`` in blocks of at most budget/4 bytes; returns the fitted pipeline."""
    est = build_classifier(clf, params)
    block = budget // BLOCK_FRACTION
    n_classes = len(fs.class_names(name))
    reshape = est.steps[0][1]
    reshape.fit(next(fs.iter_batches(train, name, max_bytes=block))[0][:1])
    if clf == "sgd":
        scale, head = est.steps[1][1], est.steps[2][1]
        for X, _ in fs.iter_batches(train, name, max_bytes=block):
            scale.partial_fit(reshape.transform(X))
        for epoch in range(params["epochs"]):
            for X, y in fs.iter_batches(train, name, max_bytes=block, shuffle=True, seed=params["seed"] + epoch):
                head.partial_fit(scale.transform(reshape.transform(X)), y, classes=np.arange(n_classes))
        return est
    head = est.steps[-1][1]
    shape = fs.split_info(train, name)["shape"][1:]
    n_features = int(shape[-1]) if reshape.reduce != "flatten" and len(shape) == 3 else int(np.prod(shape))
    head.fit_stream(lambda seed: _blocks(fs, name, train, block, reshape, seed), fs.block_lengths(train, name, max_bytes=block),
                    n_features, n_classes, (lambda: _blocks(fs, name, validation, block, reshape, None)) if validation else None,
                    fs.block_lengths(validation, name, max_bytes=block) if validation else None)
    return est


def _blocks(fs: FeatureStore, name: str, split: str, block: int, reshape, seed):
    """(X, y) blocks transformed to vectors; shuffled when seed is not None."""
    for X, y in fs.iter_batches(split, name, max_bytes=block, shuffle=seed is not None, seed=seed or 0):
        yield reshape.transform(X), y


def stream_predict(est, fs: FeatureStore, name: str, split: str, budget: int, n_classes: int):
    """Labels, predictions and full probabilities of a split, computed block by block."""
    from .runs import full_proba

    ys, preds, probas = [], [], []
    for X, y in fs.iter_batches(split, name, max_bytes=budget // BLOCK_FRACTION):
        ys.append(y)
        preds.append(est.predict(X))
        probas.append(full_proba(est, X, n_classes))
    return np.concatenate(ys), np.concatenate(preds), np.concatenate(probas)
