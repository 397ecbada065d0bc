"""Which splits of a store hold the rows a run was fitted on, decided by rows, not split names (attack 70 #4).

After ``fit --train trainval`` (train's and validation's rows, the usual final refit), ``runs evaluate --split train``
printed 1-NN's 1.000 [0.91, 1.00] as an estimate: the mark of attack 67 #5 compared split names only. A split's rows
are the training split's when each is one of them:

- a split extracted from images: its image files (``source_root`` joined with each stored path, so ``train/cat/1.jpg``
  and ``test/cat/1.jpg`` differ);
- a split written from arrays (its stored paths are ``<split>/<i>``, naming nothing): its rows' features and labels,
  bit for bit, read in blocks, when the two splits hold at most :data:`MAX_BYTES` of features (else nothing is said).

>>> overlap({b"a", b"b"}, {b"b", b"c", b"a"})
2
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os

import numpy as np

from featstore.errors import FeatstoreError
from featstore.runs.kinds import kind_of

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 30  # features read to compare two splits written from arrays (a split of images reads its paths)
_PATHS_BLOCK = 1 << 16


def row_keys(fs, name: str, split: str, max_bytes: int = 64 << 20) -> set[bytes] | None:
    """The keys of split ``split``'s rows (its image files, or its rows' digests), or None where they say nothing."""
    info = fs.split_info(split, name)
    n, root = int(info["committed_rows"]), str(info.get("source_root") or "")
    if root:  # extracted from images: by file
        keys: set[bytes] = set()
        for at in range(0, n, _PATHS_BLOCK):
            for p in fs.paths(split, name, start=at, stop=min(at + _PATHS_BLOCK, n)):
                keys.add(os.fsencode(os.path.normpath(os.path.join(root, p))))
        return keys
    if fs.nbytes(split, name) > MAX_BYTES:
        return None
    keys = set()
    for X, y in fs.iter_batches(split, name, max_bytes=max_bytes):  # a streamed fit's block (its budget)
        X = np.ascontiguousarray(X)
        for row, label in zip(X.reshape(len(X), -1), y):
            keys.add(
                hashlib.blake2b(row.tobytes() + int(label).to_bytes(8, "little", signed=True), digest_size=16).digest()
            )
    return keys


def overlap(rows: set[bytes], train: set[bytes]) -> int:
    """How many of ``rows`` are among ``train``."""
    return len(rows & train)


def fitted_splits(rec, splits=()) -> set[str]:
    """The splits of ``rec`` (its figures' and ``splits``) fitted on: the one it names (:func:`fitted_on`) and each
    whose rows are all rows of it in the run's store (attack 70 #4)."""
    train = fitted_on(rec)
    if train is None:
        return set()
    names = [*(rec.get("metrics") or {}), *splits]
    store, name = rec.get("store"), rec.get("extractor")
    if not isinstance(store, str) or not isinstance(name, str):
        return {train}
    try:
        st = os.stat(store)
    except OSError:
        return {train}
    got = _cached(store, st.st_mtime_ns, st.st_size, name, train, tuple(dict.fromkeys(names)))
    return {train, *(s for s, (k, n) in got if k == n)}


def fitted_on(rec) -> str | None:
    """The split a run's classifier was fitted on by name (a fit's ``inputs.train``; a fine-tuned run's ``train``), or
    None (an ensemble fits nothing): its figures there are resubstitution figures (attack 67 #5).

    >>> fitted_on({"kind": "fit", "inputs": {"train": "trainval"}}), fitted_on({"kind": "ensemble"})
    ('trainval', None)
    """
    inputs = rec.get("inputs")
    train = inputs.get("train") if hasattr(inputs, "get") else None
    if isinstance(train, str):
        return train
    return "train" if kind_of(rec).fits_train else None


@functools.lru_cache(maxsize=64)
def _cached(store: str, _mtime: int, _size: int, name: str, train: str, splits: tuple) -> tuple:
    return tuple(fitted_rows(store, name, train, splits).items())


def fitted_rows(store, name: str, train: str, splits, max_bytes: int = 64 << 20) -> dict[str, tuple[int, int]]:
    """``{split: (rows that are training rows, rows)}`` for each of ``splits`` (other than ``train``) that shares any
    row with ``train`` in store ``store`` (a path or a FeatureStore), extractor ``name``. A store that cannot be read,
    or splits too large to compare, give nothing (the name rule alone)."""
    from featstore.store.reader import FeatureStore

    out: dict[str, tuple[int, int]] = {}
    try:
        fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
        others = [s for s in dict.fromkeys(splits) if s != train and s in fs.splits(name)]
        if not others or train not in fs.splits(name):
            return out
        base = row_keys(fs, name, train, max_bytes)
        if not base:
            return out
        for split in others:
            rows = row_keys(fs, name, split, max_bytes)
            if rows and (k := overlap(rows, base)):
                out[split] = (k, len(rows))
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:  # a store that cannot be read: no mark
        logger.debug("rows of %s not compared: %s", store, e)
    return out


def overlap_notes(fs, name: str, train: str, splits, max_bytes: int = 64 << 20) -> list[str]:
    """One note per split of ``splits`` (validation, then test; None where not used) sharing rows with ``train``, the
    split a fit is fitted on: ``fit`` says it (a warning and a run note) and goes on (it does not refuse: a final refit
    on trainval may be meant); its figures there are marked where every row is a training row."""
    notes = []
    for split, (k, n) in fitted_rows(fs, name, train, [s for s in splits if s], max_bytes).items():
        fix = (
            "pass --validation none (cross-validation on the training split chooses instead) or fit on a split"
            " without them"
            if split == splits[0]
            else "judge it on a split without them"
        )
        notes.append(
            f"{k} of the {n} rows of {split!r} are rows of {train!r}, which the run is fitted on: its figures there are"
            " resubstitution figures"
            + (
                ", and a setting, temperature or epoch chosen on them was chosen on training rows"
                if split == splits[0]
                else ""
            )
            + f"; {fix}"
        )
    return notes
