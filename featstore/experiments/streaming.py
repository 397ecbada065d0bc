"""Out-of-core fits: train and evaluate from the store block by block, within a memory budget.

Used by ``fit(..., memory_budget=...)`` when a split is larger than the budget, for the classifiers whose
spec says they can learn from chunks (``needs_all_data=False``). The pipeline says how: each step between
the reshape and the classifier learns from one pass of ``partial_fit`` (a scaler), then a classifier with
``partial_fit`` (``sgd``) takes ``epochs`` passes in shuffled block order, and one with ``fit_stream`` (the
Keras ``dense`` head) trains on a ``tf.data`` stream of the same blocks with early stopping on validation.
Classifiers that need every row in memory (kernel SVM, kNN, random forest, logistic regression) are refused
with the streaming alternatives.

Sizes: :func:`parse_bytes` reads decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units, and
every byte size featstore prints goes through :func:`format_bytes`, which shows both families, so
``4MiB`` reads back as "4.19 MB (4 MiB)" and ``4MB`` as "4 MB (3.81 MiB)".

>>> parse_bytes("512MB"), parse_bytes("1.5GiB"), parse_bytes("4 mib")
(512000000, 1610612736, 4194304)
>>> format_bytes(4 * 2**20), format_bytes(4_000_000), format_bytes(512)
('4.19 MB (4 MiB)', '4 MB (3.81 MiB)', '512 bytes')
"""

from __future__ import annotations

import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.experiments.protocol import Splits
from featstore.experiments.selection import Fitted, check_classes, describe_given, head_threads, predicted_block
from featstore.runs.predictions_file import BLOCK_FRACTION, PROBA_COPIES  # noqa: F401 - re-exported
from featstore.store.nonfinite import Reference, remember
from featstore.store.reader import FeatureStore
from featstore.store.storage import chunk_rows, row_bytes
from featstore.units import format_bytes, parse_bytes  # noqa: F401 (re-exported)

WORK_ITEMSIZE = 8  # bytes of a feature in the classifiers' working copies: scikit-learn's sgd works in float64


def train_block(budget: int, info: dict) -> int:
    """Stored bytes of one training block of a split (its :meth:`~featstore.store.reader.FeatureStore.split_info`):
    as many whole chunks as leave a quarter of the budget for the block's float64 working copy (``partial_fit``
    converts a block to float64, beside the reshaped and scaled copies: a float16 block is 4 times larger there), at
    least one chunk (:func:`check_budget_holds_chunks` makes sure a quarter of the budget holds one as stored). Sized
    by the stored bytes alone, a 10⁶-row float16 ``sgd`` fit under 512 MB peaked at +1,044 MB."""
    chunk = chunk_rows(info) * row_bytes(info)
    return max(chunk, budget // BLOCK_FRACTION * np.dtype(info["dtype"]).itemsize // WORK_ITEMSIZE)


def check_budget_holds_chunks(
    fs: FeatureStore, name: str, splits: list[str], budget: int, given: str | int, augmented: bool = False
) -> None:
    """Refuse a budget whose streaming block (budget/4) cannot hold one chunk of each split; sizes in units. Example::

    check_budget_holds_chunks(FeatureStore("features.h5"), "vgg16", ["train"], 4_000_000, "4MB")
    # ConfigError: --memory-budget 4MB is too small: ... one chunk of 'train' is 1.05 MB (1 MiB); give at least 4.19 MB (4 MiB)
    """
    for split, aug in [(s, False) for s in splits] + ([(splits[0], True)] if augmented else []):
        info = fs.split_info(split, name, augmented=aug)
        chunk_bytes = chunk_rows(info) * row_bytes(info)
        if budget // BLOCK_FRACTION < chunk_bytes:
            raise ConfigError(
                f"--memory-budget {given} is too small: streaming reads blocks of a quarter of the budget and one "
                f"chunk of {split!r} is {format_bytes(chunk_bytes)}; give at least "
                f"{format_bytes(BLOCK_FRACTION * chunk_bytes)}"
            )


def refuse_in_memory(clf: str, split: str, nbytes: int, budget: int) -> None:
    """Error for a classifier that must hold a split larger than the budget in memory."""
    from featstore.experiments.classifiers import get_classifier, list_classifiers

    streaming = [c for c in list_classifiers() if not get_classifier(c).needs_all_data]
    raise ConfigError(
        f"split {split!r} takes {format_bytes(nbytes)}, over --memory-budget {format_bytes(budget)}, and {clf} needs all of it in "
        f"memory. Use a streaming classifier ({', '.join(streaming)}) or raise the budget."
    )


def streams_by_partial_fit(est) -> bool:
    """Whether a streamed fit of this pipeline's classifier is ``epochs`` passes of ``partial_fit`` (else ``fit_stream``)."""
    return not hasattr(est.steps[-1][1], "fit_stream")


def stream_fit(
    fs: FeatureStore,
    name: str,
    clf: str,
    params: dict,
    train: str,
    validation: str | None,
    budget: int,
    augmented: bool = False,
    jobs: int = 1,
):
    """Fit ``clf`` (sgd or dense) reading ``train`` in blocks of :func:`train_block` bytes; returns the fitted pipeline.

    ``augmented``: train's augmented copies are streamed too, their blocks interleaved with train's in a seeded order.
    ``jobs``: threads for the classifier's own work (sgd's one-vs-rest classes; the same model: ``head_threads``).
    """
    from featstore.experiments.classifiers import build_classifier  # scikit-learn only when a fit needs it

    est = build_classifier(clf, params)
    block = train_block(budget, fs.split_info(train, name))
    n_classes = len(fs.class_names(name))
    reshape, middle, head = est.steps[0][1], [s for _, s in est.steps[1:-1]], est.steps[-1][1]
    first = next(fs.iter_batches(train, name, max_bytes=block))[0][:1]
    reshape.fit(first)
    lacking = [type(s).__name__ for s in middle if not hasattr(s, "partial_fit")]
    if lacking or not (hasattr(head, "partial_fit") or hasattr(head, "fit_stream")):
        raise ConfigError(
            f"{clf} with {params} cannot learn from blocks ({', '.join(lacking) or type(head).__name__} has no "
            f"partial_fit); fit it without --memory-budget, or with a budget that holds the split"
        )

    def prepared(X, steps=middle):  # a block through the reshape and the fitted steps before the classifier
        X = reshape.transform(X)
        for step in steps:
            X = step.transform(X)
        return X

    checks = [fs.nonfinite_rows(train, name, augmented=a) for a in (False, True)[: 1 + augmented]]
    for check in checks:  # the first pass over train (the first step's, else one of its own) also finds NaN/inf rows
        check.max_bytes = block  # a second pass listing far rows reads within the budget too
        for X, _ in fs.iter_batches(train, name, max_bytes=block, augmented=check.augmented):
            if check.block(X) and middle:
                middle[0].partial_fit(prepared(X, []))
    for check in checks:  # the far rule: against train's usual size (train's own first pass gave it)
        if not check.augmented and not check.bad and not check.huge:
            remember(fs, name, train, check.top)  # its largest feature: binned only as far.py needs
        check.refuse(Reference(fs, name, train, block))
    for i, step in enumerate(middle[1:], 1):  # each step learns from one pass over what the steps before it give
        for X, _ in train_blocks(fs, name, train, block, None, augmented):
            step.partial_fit(prepared(X, middle[:i]))
    if streams_by_partial_fit(est):
        with head_threads(head, jobs):
            for epoch in range(params.get("epochs", 1)):
                for X, y in train_blocks(fs, name, train, block, params.get("seed", 0) + epoch, augmented):
                    head.partial_fit(prepared(X), y, classes=np.arange(n_classes))
        return est
    lengths = fs.block_lengths(train, name, max_bytes=block) + (
        fs.block_lengths(train, name, max_bytes=block, augmented=True) if augmented else []
    )
    head.fit_stream(
        lambda seed: _blocks(fs, name, train, block, prepared, seed, augmented),
        lengths,
        int(prepared(first).shape[1]),
        n_classes,
        (lambda: _blocks(fs, name, validation, block, prepared, None)) if validation else None,
        fs.block_lengths(validation, name, max_bytes=block) if validation else None,
    )
    return est


def _blocks(fs: FeatureStore, name: str, split: str, block: int, prepared, seed, augmented: bool = False):
    """(X, y) blocks as the classifier takes them (``prepared``); shuffled when seed is not None."""
    for X, y in train_blocks(fs, name, split, block, seed, augmented):
        yield prepared(X), y


def train_blocks(fs: FeatureStore, name: str, split: str, block: int, seed, augmented: bool = False):
    """(X, y) blocks of ``split`` and, with ``augmented``, of its copies; with a seed each is shuffled and the two interleaved."""
    shuffle = seed is not None
    sources = [fs.iter_batches(split, name, max_bytes=block, shuffle=shuffle, seed=seed or 0)]
    if augmented:
        sources.append(
            fs.iter_batches(split, name, max_bytes=block, shuffle=shuffle, seed=(seed or 0) + 10**6, augmented=True)
        )
    if not shuffle:
        for source in sources:
            yield from source
        return
    counts = [len(fs.block_lengths(split, name, max_bytes=block, augmented=a)) for a in (False, True)[: len(sources)]]
    for i in np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sources)), counts)):
        yield next(sources[i])


def predict_blocks(est, fs: FeatureStore, name: str, split: str, budget: int, n_classes: int):
    """``(labels, predictions, full probabilities)`` of a split, block by block."""
    info = fs.split_info(split, name)
    row = row_bytes(info)
    chunk = chunk_rows(info) * row
    # a block's probabilities (K float64 a row, about three copies while scored) share the budget with its features:
    # at 1,000 classes they are 40 times a pooled float16 row
    share = row / (row + PROBA_COPIES * 8 * n_classes)
    at = 0
    for X, y in fs.iter_batches(split, name, max_bytes=max(chunk, int(budget // BLOCK_FRACTION * share))):
        yield predicted_block(est, X, y, n_classes, split, at)
        at += len(y)


def stream_predict(est, fs: FeatureStore, name: str, split: str, budget: int, n_classes: int):
    """Labels, predictions and full probabilities of a split, computed block by block."""
    n = int(fs.split_info(split, name)["committed_rows"])  # read before the blocks, as they read it
    ys, preds, probas, at = [], [], None, 0
    for y, pred, proba in predict_blocks(est, fs, name, split, budget, n_classes):
        if at + len(y) > n:  # the split changed meanwhile: never numpy's broadcast error
            raise StoreError(
                f"split {split!r} of {name!r} gave more than the {n} rows its record says while predicting (it "
                f"changed meanwhile?); run the command again"
            )
        if probas is None:  # filled in place: the blocks and their concatenation are never held together
            probas = np.empty((n, n_classes), dtype=proba.dtype)
        probas[at : at + len(y)] = proba
        ys.append(y)
        preds.append(pred)
        at += len(y)
    if probas is None or at != len(probas):
        expected = 0 if probas is None else len(probas)
        raise StoreError(f"split {split!r} of {name!r} gave {at} rows while predicting; its record says {expected}")
    return np.concatenate(ys), np.concatenate(preds), probas


def fit_streaming(
    fs: FeatureStore,
    name: str,
    clf: str,
    full: list[dict],
    settings: list[dict],
    given: dict,
    splits: Splits,
    budget: int,
    augmented: bool = False,
    jobs: int = 1,
) -> Fitted:
    """Fit from blocks of the store within ``budget``; several settings are chosen on a streamed validation split,
    fitted one after another (each with ``jobs`` threads inside its classifier)."""
    train, validation = splits.train, splits.validation
    class_names = fs.class_names(name)
    check_classes(fs.labels(train, name), train, class_names)
    selection: dict = {"metric": "accuracy", "candidates": [], "method": describe_given(given)}
    if len(full) > 1 and validation is None:
        raise ConfigError(
            "a parameter search with --memory-budget needs a validation split (k-fold CV would reread train k times)"
        )
    fitted = []
    for p in full:
        est = stream_fit(fs, name, clf, p, train, validation, budget, augmented, jobs)
        if len(full) > 1:  # accuracy counted block by block: never the split's (N, K) probabilities
            right = total = 0
            for yv, pv, _ in predict_blocks(est, fs, name, validation, budget, len(class_names)):
                right, total = right + int(np.sum(pv == yv)), total + len(yv)
            fitted.append((right / total, est))
        else:
            fitted.append((0.0, est))
    best = int(np.argmax([s for s, _ in fitted]))
    if len(full) > 1:
        selection["method"] = f"accuracy on the {validation!r} split (streamed)"
        selection["candidates"] = [{"params": s, "score": sc} for s, (sc, _) in zip(settings, fitted)]
    est = fitted[best][1]
    k = len(class_names)
    return Fitted(
        est,
        best,
        selection,
        lambda split: stream_predict(est, fs, name, split, budget, k),
        predict_blocks=lambda split: predict_blocks(est, fs, name, split, budget, k),
    )
