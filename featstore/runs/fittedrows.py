"""Which splits of a store hold the rows a run was fitted on, decided by rows, not split names (attack 70 #4).

After ``fit --train trainval`` (train's and validation's rows, the usual final refit), ``runs evaluate --split train``
printed 1-NN's 1.000 [0.91, 1.00] as an estimate: the mark of attack 67 #5 compared split names only. A row of a split
is a training row when its features and its label are, bit for bit, those of a row of the training split (one
extractor group of one store), whether the split was written from arrays or extracted from images: a trainval split
written from train's and validation's very feature rows is matched (attack 71 #3 too: images are not keyed by their
stored path). Only bit-identical rows are matched (-0.0 is taken as 0.0): extraction does not promise one image the
same bits in every batch (attack 74 #4: the last image of a batch of one differed by 2.5e-5), nor on another thread
count, CPU or engine, so a trainval extracted again from the same images may share only some rows, or none, with
train and validation: those figures are then not marked (a "k of n rows" note where some are). Near-identical rows
are not matched on purpose: a tolerance would mark a foreign near-duplicate image as a training row.

Each row is digested to two 64-bit lanes with numpy, a block of rows at a time (attack 71 #5: one Python bytes digest
per row in a set cost 9.4 s and 900 MB for 8 M narrow rows), under a key drawn once per process (attack 74 #9: the
fixed public weights let two different rows be made to collide): the training split's digests are kept sorted (16
bytes a row) and every other split is streamed against them, matched on both lanes. A split of more than
:data:`MAX_ROWS` rows or :data:`MAX_BYTES` of features is not compared (:func:`fitted_rows_said` says which; fit notes
it): a split holding its rows is then not marked. Each split's count is computed once per process and store version
(keyed by the store file's identity, the extractor, the training split and the split: attack 74 #7).

>>> keys = row_digests(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0]))
>>> keys.shape, keys.dtype, len(set(map(tuple, keys.tolist())))
((3, 2), dtype('uint64'), 3)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import secrets
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, FeatstoreError, StoreError
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


_SEED = int.from_bytes(secrets.token_bytes(16), "little")  # the key: drawn once per process (attack 74 #9)


@functools.lru_cache(maxsize=16)
def _weights(m: int) -> tuple[np.ndarray, ...]:
    """Per word position: two keyed offsets and each lane's odd multiplier (the same within a process)."""
    top = np.iinfo(np.uint64).max
    r = np.random.default_rng(_SEED).integers(0, top, size=(4 * m + 3), dtype=np.uint64, endpoint=True)
    return r[:m], r[m : 2 * m], r[2 * m : 3 * m] | np.uint64(1), r[3 * m : 4 * m] | np.uint64(1), r[4 * m :]


def row_digests(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(n, 2)`` uint64: two keyed 64-bit digests of each row's bytes and label (equal rows and labels give equal
    digests, -0.0 taken as 0.0; the key is secret to the process, so two different rows cannot be made to collide)."""
    n = len(X)
    X = np.ascontiguousarray(X).reshape(n, -1)
    if X.dtype.kind == "f":
        X = X + X.dtype.type(0)  # -0.0 + 0.0 is 0.0: a copy differing only in the sign of a zero is matched
    raw = X.view(np.uint8)
    if raw.shape[1] % 8:  # pad each row to whole words (a float16 row of odd length)
        raw = np.concatenate([raw, np.zeros((n, 8 - raw.shape[1] % 8), np.uint8)], axis=1)
    words = raw.view(np.uint64)  # (n, m)
    k1, k2, r1, r2, k3 = _weights(words.shape[1])
    mixed = _mix(_mix(words ^ k1) + k2)  # keyed and non-linear per word: its differences cannot be chosen
    label = _mix(np.asarray(y, dtype=np.int64).astype(np.uint64) ^ k3[0])
    out = np.empty((n, 2), np.uint64)
    for lane, r in enumerate((r1, r2)):
        out[:, lane] = _mix(_mix((mixed * r).sum(axis=1, dtype=np.uint64) ^ k3[lane + 1]) + label)
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
        order = np.lexsort((keys[:at, 1], keys[:at, 0]))  # by both lanes: a tie on the first hid a row (74 #9)
        first, second = keys[order, 0], keys[order, 1]
        new = np.ones(len(first), bool)
        new[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])  # a row met twice is kept once
        self.first, self.second = first[new], second[new]

    def __len__(self) -> int:
        return len(self.first)

    def hits(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` (``(n, 2)`` digests) is a training row's."""
        if not len(self.first):
            return np.zeros(len(keys), bool)
        lo = np.searchsorted(self.first, keys[:, 0], "left")
        hi = np.searchsorted(self.first, keys[:, 0], "right")
        out = np.zeros(len(keys), bool)
        one = hi - lo == 1
        out[one] = self.second[lo[one]] == keys[one, 1]
        for i in np.flatnonzero(hi - lo > 1):  # first lanes tied: search the second among them (sorted there)
            seconds = self.second[lo[i] : hi[i]]
            at = int(np.searchsorted(seconds, keys[i, 1]))
            out[i] = at < len(seconds) and seconds[at] == keys[i, 1]
        return out

    def count(self, fs, name: str, split: str, max_bytes: int = 64 << 20) -> tuple[int, int]:
        """``(rows of split that are training rows, rows)``, read a block at a time."""
        shared = rows = 0
        for block in _digest_blocks(fs, name, split, max_bytes):
            shared += int(self.hits(block).sum())
            rows += len(block)
        return shared, rows


_WHERE: contextvars.ContextVar = contextvars.ContextVar("featstore_rows_of", default=(None, None))


@contextlib.contextmanager
def rows_of(store, root=None):
    """Within it, runs' rows are compared in ``store`` (a path or an open FeatureStore: the store the command was given,
    whose rows its runs folder's runs were scored on; attack 74 #3: the run's recorded path could be a moved or another
    store), and an ensemble's members are read from runs folder ``root``."""
    token = _WHERE.set((store, root))
    try:
        yield
    finally:
        _WHERE.reset(token)


def fitted_splits(rec, splits=(), store=None, root=None) -> set[str]:
    """The splits of ``rec`` (its figures' and ``splits``) fitted on: the one it names (:func:`fitted_on`) and each
    whose rows are all rows of it (attack 70 #4); an ensemble's, its members' (attack 74 #1)."""
    return {s for s, (k, n) in shared_rows(rec, splits, store, root)[0].items() if k == n}


def shared_rows(rec, splits=(), store=None, root=None) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """``({split: (training rows, rows)}, {split: why not compared})`` for ``rec``'s figures' splits and ``splits``:
    the split it names as fitted on (all its rows, whatever its size) and each that shares rows with it, in ``store``
    (default: :func:`rows_of`'s, else the run's recorded store); an ensemble's are its members' (read from runs folder
    ``root``, default :func:`rows_of`'s), each split taking the member with the most of its rows."""
    store = store if store is not None else _WHERE.get()[0]
    root = root if root is not None else _WHERE.get()[1]
    names = list(dict.fromkeys([*(rec.get("metrics") or {}), *splits]))
    members = rec.get("members")
    if isinstance(members, list) and members and fitted_on(rec) is None:
        return _ensemble_rows(members, names, store, root)
    train = fitted_on(rec)
    if train is None:
        return {}, {}
    whole = {train: (1, 1)}  # the split it names: all of its rows (their count is not read)
    name, others = rec.get("extractor"), [s for s in names if s != train]
    if not isinstance(name, str) or not others:
        return whole, {}
    fs, why = _store_of(rec, store, name, train)
    if fs is None:  # said, not silent (attack 74 #3); an out-of-fold split is no split of a store
        return whole, {s: why for s in others if not s.endswith(".oof")}
    got, skipped = fitted_rows_said(fs, name, train, others)
    return {**got, **whole}, skipped


def _ensemble_rows(members: list, names: list, store, root) -> tuple[dict, dict]:
    """:func:`shared_rows` of an ensemble: per split, the member fitted on the most of its rows (attack 74 #1)."""
    got: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    if root is None:
        return {}, {s: "its members' runs folder was not given, so their rows were not compared" for s in names}
    for m in dict.fromkeys(members):
        try:
            member = parse_record(read_record_json(Path(root) / m), Path(root) / m)
        except (StoreError, OSError) as e:
            skipped.update({s: f"its member {m} cannot be read ({e})" for s in names if s not in skipped})
            continue
        mgot, mskipped = shared_rows(member, names, store, root)
        for s, (k, n) in mgot.items():
            if s in names and (s not in got or k * got[s][1] > got[s][0] * n):
                got[s] = (k, n)
        skipped.update({s: f"for its member {m}, {why}" for s, why in mskipped.items() if s not in skipped})
    return got, {s: why for s, why in skipped.items() if s not in got or got[s][0] < got[s][1]}


def _store_of(rec, store, name: str, train: str):
    """``(FeatureStore, "")``: ``store`` (the command's), else the run's recorded store, the first that can be read and
    holds split ``train`` of extractor ``name``; ``(None, why)`` where neither can (attack 74 #3: said, not silent)."""
    recorded = rec.get("store")
    tried = []
    for cand in dict.fromkeys(c for c in (store, recorded) if c is not None and not isinstance(c, (bool, int))):
        fs, why = _open(cand)
        label = getattr(cand, "path", cand)
        if fs is None:
            tried.append(f"{label} cannot be read ({why})")
        elif train not in _splits(fs, name):
            tried.append(f"{label} holds no split {train!r} of {name!r}")
        else:
            return fs, ""
    if not tried:
        return None, "the run records no store"
    return None, "its rows could not be compared: " + "; ".join(tried)


def _splits(fs, name: str) -> list[str]:
    try:
        return list(fs.splits(name)) if name in fs.extractors() else []
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError):
        return []


_STORES: dict = {}  # path -> (file identity, FeatureStore): a store opened once per process and version (74 #7)
_TRAIN: dict = {}  # (identity, extractor, train) -> TrainingRows: the last two
_COUNTS: dict = {}  # (identity, extractor, train, split) -> ((k, n) | None, why | None): each split digested once


def _identity(path) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _open(store):
    """``(FeatureStore, "")`` for a path or FeatureStore, opened once per file version; ``(None, why)``."""
    from featstore.store.reader import FeatureStore

    if isinstance(store, FeatureStore):
        return store, ""
    try:
        key = str(store)
        ident = _identity(key)
        if key in _STORES and _STORES[key][0] == ident:
            return _STORES[key][1], ""
        fs = FeatureStore(key)
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    if len(_STORES) >= 4:
        _STORES.clear()
    _STORES[key] = (ident, fs)
    return fs, ""


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


def fitted_rows(store, name: str, train: str, splits, max_bytes: int = 64 << 20) -> dict[str, tuple[int, int]]:
    """``{split: (rows that are training rows, rows)}`` for each of ``splits`` (other than ``train``) that shares any
    row with ``train`` in store ``store`` (a path or a FeatureStore), extractor ``name``. A store that cannot be read,
    or splits too large to compare (:func:`fitted_rows_said` names them), give nothing (the name rule alone)."""
    return fitted_rows_said(store, name, train, splits, max_bytes)[0]


def fitted_rows_said(
    store, name: str, train: str, splits, max_bytes: int = 64 << 20
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """:func:`fitted_rows`, and ``{split: why its rows were not compared}`` for each split (other than ``train``) over
    :data:`MAX_ROWS` rows or :data:`MAX_BYTES` of features, or every one when ``train`` is. Each split's count is
    kept for the process, keyed by the store file's identity (attack 74 #7)."""
    out: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    try:
        fs, why = _open(store)
        if fs is None:
            raise StoreError(why)
        present = _splits(fs, name)
        others = [s for s in dict.fromkeys(splits) if s != train and s in present]
        if not others or train not in present:
            return out, skipped
        ident = _identity(fs.path)
        for split in others:
            key = (ident, name, train, split)
            if key not in _COUNTS:
                if len(_COUNTS) >= 1 << 14:
                    _COUNTS.clear()
                _COUNTS[key] = _count(fs, ident, name, train, split, max_bytes)
            got, why = _COUNTS[key]
            if why:
                skipped[split] = why
            elif got and got[0]:
                out[split] = got
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:  # a store that cannot be read: no mark
        logger.debug("rows of %s not compared: %s", store, e)
    return out, skipped


def _count(fs, ident, name: str, train: str, split: str, max_bytes: int):
    """``((k, n), None)`` or ``(None, why not compared)`` for one split against the training split."""
    if why := too_big(fs, name, train):
        return None, f"the training split {train!r} has {why}"
    if why := too_big(fs, name, split):
        return None, f"{split!r} has {why}"
    key = (ident, name, train)
    if key not in _TRAIN:
        if len(_TRAIN) >= 2:
            _TRAIN.pop(next(iter(_TRAIN)))
        _TRAIN[key] = TrainingRows(fs, name, train, max_bytes)
    base = _TRAIN[key]
    return (base.count(fs, name, split, max_bytes) if len(base) else (0, 0)), None


def overlap_notes(fs, name: str, train: str, splits, max_bytes: int = 64 << 20) -> list[str]:
    """One note per split of ``splits`` (validation, then test; None where not used) sharing rows with ``train``, the
    split a fit is fitted on: ``fit`` says it (a warning and a run note) and goes on (it does not refuse: a final refit
    on trainval may be meant); its figures there are marked where every row is a training row. A split too large to
    compare gets a note saying its rows were not compared."""
    notes = []
    got, skipped = fitted_rows_said(fs, name, train, [s for s in splits if s], max_bytes)
    for split, (k, n) in got.items():
        head = f"{k} of the {n} rows of {split!r} are rows of {train!r}, which the run is fitted on"
        chose = split == splits[0]
        if k < n:  # some rows (a duplicate image): its figures are partly on training rows (attack 74 #6)
            notes.append(
                f"{head} (duplicate images?): its figures there are optimistic by at most {k} row{'s' if k != 1 else ''}"
                + (", and a setting chosen on them was chosen partly on training rows" if chose else "")
                + f"; remove them from {split!r} to judge on held-out rows only"
            )
            continue
        fix = (
            "pass --validation none (cross-validation on the training split chooses instead) or fit on a split"
            " without them"
            if chose
            else "judge it on a split without them"
        )
        notes.append(
            f"{head}: its figures there are resubstitution figures"
            + (", and a setting, temperature or epoch chosen on them was chosen on training rows" if chose else "")
            + f"; {fix}"
        )
    notes += [not_compared(split, train, why) for split, why in skipped.items()]
    return notes


def refuse_training_rows(fs, names, train: str, split: str, command: str, what: str, fix: str) -> list[str]:
    """ConfigError when most rows of ``split`` (of any extractor of ``names``) are rows of ``train``, which ``command``
    fits on (``what``: what it does with them, e.g. "chooses C and k"); else one warning line per extractor sharing a
    few (a duplicate image), returned and logged (attack 74 #5, #6: probe and fewshot never asked, sweep refused one
    duplicate)."""
    said = []
    for n in names:
        shared = fitted_rows(fs, n, train, [split]).get(split)
        if shared and 2 * shared[0] > shared[1]:
            raise ConfigError(
                f"{command}: {shared[0]} of the {shared[1]} rows of {split!r} ({n}) are rows of {train!r}, which it "
                f"fits on, so it would {what} on training rows; {fix}"
            )
        if shared:
            said.append(
                f"{shared[0]} of the {shared[1]} rows of {split!r} ({n}) are rows of {train!r} (duplicate images?): "
                f"its figures there are optimistic by at most {shared[0]} row{'s' if shared[0] != 1 else ''}"
            )
            logger.warning("%s: %s", command, said[-1])
    return said


def not_compared(split: str, train: str, why: str) -> str:
    """The line saying split ``split``'s rows were not compared with the training split's (``why``: :func:`too_big`)."""
    return (
        f"the rows of {split!r} were not compared with those of "
        f"{train if ' ' in train else repr(train)}, which the run is fitted on ({why}): "
        f"whether any of them is a training row is not known, and its figures there are not marked"
    )


def fitted_members(rec, split: str, root: Path | None = None, store=None) -> list[str]:
    """The members of ensemble ``rec`` (in runs folder ``root``, default :func:`rows_of`'s) fitted on ``split``'s rows
    (:func:`fitted_splits`, in ``store`` as there); a member that cannot be read is left out."""
    root = root if root is not None else _WHERE.get()[1]
    out = []
    if root is None:
        return out
    for m in dict.fromkeys(rec.members):
        try:
            member = parse_record(read_record_json(Path(root) / m), Path(root) / m)
        except (StoreError, OSError):
            continue
        if split in fitted_splits(member, [split], store, root):
            out.append(m)
    return out
