"""Which splits of a store hold the rows a run was fitted on, decided by rows, not split names (attack 70 #4).

After ``fit --train trainval`` (train's and validation's rows, the usual final refit), ``runs evaluate --split train``
printed 1-NN's 1.000 [0.91, 1.00] as an estimate: the mark of attack 67 #5 compared split names only. A row of a split
is a training row when its features and its label are, bit for bit, those of a row of the training split (one
extractor group of one store), whether the split was written from arrays or extracted from images: a trainval folder
of hard links to train's and validation's very files (or of copies of them) is matched, as is the same folder
extracted from two data roots (attack 71 #3: images were keyed by their stored path, which names the split's own
folder, so two splits of one data root never matched). Extraction gives one image the same bits whatever its batch
(the extractor's arithmetic does not depend on the batch it is in on a CPU); an image whose features differ (another
extractor, an augmented copy, an image re-encoded, a GPU kernel whose arithmetic depends on the batch) is not matched.

Each row is digested to two 64-bit lanes with numpy, a block of rows at a time (attack 71 #5: one Python bytes digest
per row in a set cost 9.4 s and 900 MB for 8 M narrow rows): the training split's digests are kept sorted (16 bytes a
row) and every other split is streamed against them. A split of more than :data:`MAX_ROWS` rows or
:data:`MAX_BYTES` of features is not compared (:func:`fitted_rows_said` says which; fit notes it): a split holding its
rows is then not marked.

>>> keys = row_digests(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0]))
>>> keys.shape, keys.dtype, len(set(map(tuple, keys.tolist())))
((3, 2), dtype('uint64'), 3)
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from featstore.errors import FeatstoreError, StoreError
from featstore.runs.files import read_record_json
from featstore.runs.kinds import kind_of, parse_record

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 30  # features read per split compared (time: each is read once per process and store version)
MAX_ROWS = 1 << 24  # rows per split compared: the training split's digests take 16 bytes a row (256 MiB at most)
_BLOCK_BYTES = 16 << 20  # features digested at a time (a few copies of it are the temporaries)
_BLOCK_ROWS = 1 << 18  # and rows (each row's label and digests take 32 bytes of temporaries, however narrow the row)
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (a bijection that spreads every bit over all 64)."""
    x ^= x >> np.uint64(30)
    x *= _C1
    x ^= x >> np.uint64(27)
    x *= _C2
    x ^= x >> np.uint64(31)
    return x


@functools.lru_cache(maxsize=16)
def _weights(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per word position: an offset and each lane's odd multiplier (fixed: the same row always gets the same digest)."""
    r = np.random.default_rng(0x5EED).integers(0, np.iinfo(np.uint64).max, size=(3, m), dtype=np.uint64, endpoint=True)
    return r[0], r[1] | np.uint64(1), r[2] | np.uint64(1)


def row_digests(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(n, 2)`` uint64: two independent 64-bit digests of each row's bytes and label (equal rows and labels give
    equal digests; two others one pair in 2**128)."""
    n = len(X)
    raw = np.ascontiguousarray(X).reshape(n, -1).view(np.uint8)
    if raw.shape[1] % 8:  # pad each row to whole words (a float16 row of odd length)
        raw = np.concatenate([raw, np.zeros((n, 8 - raw.shape[1] % 8), np.uint8)], axis=1)
    words = raw.view(np.uint64)  # (n, m)
    off, r1, r2 = _weights(words.shape[1])
    mixed = _mix(words + off)
    label = _mix(np.asarray(y, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    out = np.empty((n, 2), np.uint64)
    for lane, r in enumerate((r1, r2)):
        out[:, lane] = _mix((mixed * r).sum(axis=1, dtype=np.uint64) ^ (label * r[0]))
    return out


def _digest_blocks(fs, name: str, split: str, max_bytes: int):
    """Each block's :func:`row_digests`, read at most ``max_bytes``, :data:`_BLOCK_BYTES` and :data:`_BLOCK_ROWS` rows
    of features at a time, never less than one chunk."""
    from featstore.store.storage import chunk_bytes, row_bytes

    info = fs.split_info(split, name)
    block = max(min(max_bytes, _BLOCK_BYTES, _BLOCK_ROWS * row_bytes(info)), chunk_bytes(info))
    for X, y in fs.iter_batches(split, name, max_bytes=block):
        yield row_digests(X, y)


def too_big(fs, name: str, split: str) -> str | None:
    """Why split ``split`` is not compared (over :data:`MAX_ROWS` rows or :data:`MAX_BYTES` of features), or None."""
    n, size = int(fs.split_info(split, name)["committed_rows"]), fs.nbytes(split, name)
    if n > MAX_ROWS:
        return f"{n:,} rows, over the {MAX_ROWS:,} the rows rule compares"
    if size > MAX_BYTES:
        return f"{size / (1 << 20):,.0f} MiB of features, over the {MAX_BYTES >> 20:,} MiB the rows rule reads"
    return None


class TrainingRows:
    """The training split's row digests, sorted by their first lane: :meth:`count` streams another split against them."""

    def __init__(self, fs, name: str, split: str, max_bytes: int = 64 << 20):
        n = int(fs.split_info(split, name)["committed_rows"])
        keys, at = np.empty((n, 2), np.uint64), 0
        for block in _digest_blocks(fs, name, split, max_bytes):
            keys[at : at + len(block)] = block
            at += len(block)
        order = np.argsort(keys[:at, 0], kind="stable")
        self.first, self.second = keys[order, 0], keys[order, 1]

    def __len__(self) -> int:
        return len(self.first)

    def hits(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` (``(n, 2)`` digests) is a training row's."""
        if not len(self.first):
            return np.zeros(len(keys), bool)
        at = np.minimum(np.searchsorted(self.first, keys[:, 0]), len(self.first) - 1)
        return (self.first[at] == keys[:, 0]) & (self.second[at] == keys[:, 1])

    def count(self, fs, name: str, split: str, max_bytes: int = 64 << 20) -> tuple[int, int]:
        """``(rows of split that are training rows, rows)``, read a block at a time."""
        shared = rows = 0
        for block in _digest_blocks(fs, name, split, max_bytes):
            shared += int(self.hits(block).sum())
            rows += len(block)
        return shared, rows


def fitted_splits(rec, splits=()) -> set[str]:
    """The splits of ``rec`` (its figures' and ``splits``) fitted on: the one it names (:func:`fitted_on`) and each
    whose rows are all rows of it in the run's store (attack 70 #4)."""
    return {s for s, (k, n) in shared_rows(rec, splits)[0].items() if k == n}


def shared_rows(rec, splits=()) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """``({split: (training rows, rows)}, {split: why not compared})`` for ``rec``'s figures' splits and ``splits``:
    the split it names as fitted on (all its rows, whatever its size) and each that shares rows with it in the run's
    store; an ensemble (fitted on nothing) or a store that cannot be read, the name alone."""
    train = fitted_on(rec)
    if train is None:
        return {}, {}
    names = [*(rec.get("metrics") or {}), *splits]
    store, name = rec.get("store"), rec.get("extractor")
    whole = {train: (1, 1)}  # the split it names: all of its rows (their count is not read)
    if not isinstance(store, str) or not isinstance(name, str):
        return whole, {}
    try:
        st = os.stat(store)
    except OSError:
        return whole, {}
    got, skipped = _cached(store, st.st_mtime_ns, st.st_size, name, train, tuple(dict.fromkeys(names)))
    return {**dict(got), **whole}, dict(skipped)


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
    got, skipped = fitted_rows_said(store, name, train, splits)
    return tuple(got.items()), tuple(skipped.items())


def fitted_rows(store, name: str, train: str, splits, max_bytes: int = 64 << 20) -> dict[str, tuple[int, int]]:
    """``{split: (rows that are training rows, rows)}`` for each of ``splits`` (other than ``train``) that shares any
    row with ``train`` in store ``store`` (a path or a FeatureStore), extractor ``name``. A store that cannot be read,
    or splits too large to compare (:func:`fitted_rows_said` names them), give nothing (the name rule alone)."""
    return fitted_rows_said(store, name, train, splits, max_bytes)[0]


def fitted_rows_said(
    store, name: str, train: str, splits, max_bytes: int = 64 << 20
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """:func:`fitted_rows`, and ``{split: why its rows were not compared}`` for each split (other than ``train``) over
    :data:`MAX_ROWS` rows or :data:`MAX_BYTES` of features, or every one when ``train`` is."""
    from featstore.store.reader import FeatureStore

    out: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    try:
        fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
        others = [s for s in dict.fromkeys(splits) if s != train and s in fs.splits(name)]
        if not others or train not in fs.splits(name):
            return out, skipped
        if why := too_big(fs, name, train):
            return out, {s: f"the training split {train!r} has {why}" for s in others}
        base = None
        for split in others:
            if why := too_big(fs, name, split):
                skipped[split] = f"{split!r} has {why}"
                continue
            if base is None:
                base = TrainingRows(fs, name, train, max_bytes)
            if len(base) and (got := base.count(fs, name, split, max_bytes))[0]:
                out[split] = got
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:  # a store that cannot be read: no mark
        logger.debug("rows of %s not compared: %s", store, e)
    return out, skipped


def overlap_notes(fs, name: str, train: str, splits, max_bytes: int = 64 << 20) -> list[str]:
    """One note per split of ``splits`` (validation, then test; None where not used) sharing rows with ``train``, the
    split a fit is fitted on: ``fit`` says it (a warning and a run note) and goes on (it does not refuse: a final refit
    on trainval may be meant); its figures there are marked where every row is a training row. A split too large to
    compare gets a note saying its rows were not compared."""
    notes = []
    got, skipped = fitted_rows_said(fs, name, train, [s for s in splits if s], max_bytes)
    for split, (k, n) in got.items():
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
    notes += [not_compared(split, train, why) for split, why in skipped.items()]
    return notes


def not_compared(split: str, train: str, why: str) -> str:
    """The line saying split ``split``'s rows were not compared with the training split's (``why``: :func:`too_big`)."""
    return (
        f"the rows of {split!r} were not compared with those of {train!r}, which the run is fitted on ({why}): "
        f"whether any of them is a training row is not known, and its figures there are not marked"
    )


def fitted_members(rec, split: str, root: Path) -> list[str]:
    """The members of ensemble ``rec`` (in runs folder ``root``) fitted on ``split``'s rows
    (:func:`fitted_splits`); a member that cannot be read is left out."""
    out = []
    for m in dict.fromkeys(rec.members):
        try:
            member = parse_record(read_record_json(Path(root) / m), Path(root) / m)
        except (StoreError, OSError):
            continue
        if split in fitted_splits(member, [split]):
            out.append(m)
    return out
