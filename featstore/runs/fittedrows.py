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
fixed public weights let two different rows be made to collide): the training split's digests are sorted in place and
kept (16 bytes a row) and every other split is streamed against them, matched on both lanes. The most held is
:func:`peak_bytes`: 16 bytes a training row and one block's temporaries (at most 4 copies of a block of features and
96 bytes a row of it; the block is at most 16 MiB and 2^18 rows), so under :data:`MAX_ROWS` about 256 MiB and 90 MiB
(attack 76 #4: 38 bytes a row, 608 MiB for 2^24 rows, before); given a ``memory_budget`` a comparison over it is not
made, and said. A split of more than :data:`MAX_ROWS` rows or :data:`MAX_BYTES` of features is not compared
(:func:`fitted_rows_said` says which; fit notes it): a split holding its rows is then not marked. Each split's count
is computed once per process and store version (keyed by the store file's identity, the extractor, the training split
and the split: attack 74 #7); one training split's digests are kept between calls (none within a budget).

The training split is the run's, not one named like it (attack 76 #3): :mod:`featstore.runs.trainstore` takes it from
the store a command was given only where it is the split the run recorded, else from the run's recorded store.

>>> keys = row_digests(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0]))
>>> keys.shape, keys.dtype, len(set(map(tuple, keys.tolist())))
((3, 2), dtype('uint64'), 3)
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import FeatstoreError, StoreError
from featstore.outputs import terminal_safe
from featstore.runs.files import read_record_json
from featstore.runs.kinds import kind_of, parse_record
from featstore.runs.rowbudget import _FENCE, ROW_BYTES, _block, over_budget, peak_bytes  # noqa: F401 - re-exported
from featstore.runs.trainstore import _identity, _open, _splits, same_file, scored_elsewhere, training_store

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 30  # features read per split compared (time: each is read once per process and store version)
MAX_ROWS = 1 << 24  # rows per split compared: the training split's digests take 16 bytes a row (256 MiB at most)
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


def digest_blocks(fs, name: str, split: str, max_bytes: int):
    """Each block's :func:`row_digests`, read :func:`_block` at a time."""
    for X, y in fs.iter_batches(split, name, max_bytes=_block(fs, name, split, max_bytes)[0]):
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
    """The training split's row digests, sorted by both lanes in place: :meth:`count` streams another split against
    them. Held: :data:`ROW_BYTES` a row (and a fence of one lane-0 value every :data:`_FENCE` rows); built with one
    block's temporaries beside them (:func:`peak_bytes`; attack 76 #4: 38 bytes a row before)."""

    def __init__(self, fs, name: str, split: str, max_bytes: int = 64 << 20):
        n = int(fs.split_info(split, name)["committed_rows"])
        keys, at = np.empty((n, 2), np.uint64), 0
        for block in digest_blocks(fs, name, split, max_bytes):
            keys[at : at + len(block)] = block
            at += len(block)
            del block  # the next block's temporaries are made without this one
        keys = keys[:at]
        keys.byteswap(inplace=True)  # big-endian: their bytes compare as the numbers, lane 0 then lane 1
        keys.view("V16").reshape(-1).sort()  # in place: by both lanes (a tie on the first hid a row: 74 #9)
        keys.byteswap(inplace=True)
        self.keys, self.fence = keys, np.ascontiguousarray(keys[::_FENCE, 0])

    def __len__(self) -> int:
        return len(self.keys)

    def hits(self, keys: np.ndarray) -> np.ndarray:
        """Whether each of ``keys`` (``(n, 2)`` digests) is a training row's: the first training key not below it (by
        both lanes), between the fence's bounds, is it."""
        n = len(self.keys)
        if not n:
            return np.zeros(len(keys), bool)
        q0, q1 = keys[:, 0], keys[:, 1]
        lo = np.maximum(np.searchsorted(self.fence, q0, "left") - 1, 0) * _FENCE  # every row before is below it
        hi = np.minimum(np.searchsorted(self.fence, q0, "right") * _FENCE, n)  # the row at hi (if any) is above it
        while (open_ := lo < hi).any():  # a binary search per key, all at once (ties on lane 0 too)
            mid = np.where(open_, (lo + hi) // 2, 0)
            at = self.keys[mid]
            below = open_ & ((at[:, 0] < q0) | ((at[:, 0] == q0) & (at[:, 1] < q1)))
            lo = np.where(below, mid + 1, lo)
            hi = np.where(open_ & ~below, mid, hi)
        at = self.keys[np.minimum(lo, n - 1)]
        return (lo < n) & (at[:, 0] == q0) & (at[:, 1] == q1)

    def count(self, fs, name: str, split: str, max_bytes: int = 64 << 20) -> tuple[int, int]:
        """``(rows of split that are training rows, rows)``, read a block at a time."""
        shared = rows = 0
        for block in digest_blocks(fs, name, split, max_bytes):
            shared += int(self.hits(block).sum())
            rows += len(block)
        return shared, rows


@dataclass(frozen=True)
class RowsPlace:
    """Where the marks read rows, made by the command that shows them and passed down (attack 74 #1, #3; 76 #3): runs'
    training rows are taken from ``store`` (a path or an open FeatureStore: the store the command was given; None for
    none, or a default the user did not name) where its training split is the one each run was fitted on, else from
    the run's recorded store (:func:`featstore.runs.trainstore.training_store`), an ensemble's members are read from
    runs folder ``root``, and the splits compared are ``scored``'s (the store whose split a command scored: ``runs
    evaluate --store``), default the training rows' store. A value, not process state: two calls given two places
    each get their own marks, whatever thread makes them. No place (None): each run's recorded store, no runs folder."""

    store: object = None
    root: Path | str | None = None
    scored: object = None


def _at(place: RowsPlace | None, store, root, scored) -> tuple:
    """``(store, root, scored)``: each given one, else ``place``'s."""
    p = place or RowsPlace()
    return tuple(a if a is not None else b for a, b in zip((store, root, scored), (p.store, p.root, p.scored)))


def fitted_splits(rec, splits=(), store=None, root=None, *, scored=None, place: RowsPlace | None = None) -> set[str]:
    """The splits of ``rec`` (its figures' and ``splits``) fitted on: the one it names (:func:`fitted_on`) and each
    whose rows are all rows of it (attack 70 #4); an ensemble's, its members' (attack 74 #1); as :func:`shared_rows`."""
    return {s for s, (k, n) in shared_rows(rec, splits, store, root, scored=scored, place=place)[0].items() if k == n}


RESUBSTITUTION = "fitted on these rows: resubstitution"  # a listing's mark (the site's runs table's: 873cd05)
NOT_COMPARED = "rows not compared"  # a listing's mark where whether they are training rows is not known (attack 77 #2)


def figure_marks(rec, splits, *, place: RowsPlace | None = None) -> dict[str, str]:
    """The mark of ``rec``'s figure on each of ``splits`` in a listing (runs table, compare of several runs, chart):
    :data:`RESUBSTITUTION` (each row a training row), :data:`NOT_COMPARED` (a moved store, members not found, caps)."""
    got, skipped = shared_rows(rec, splits, place=place)
    marks = {s: RESUBSTITUTION for s, (k, n) in got.items() if k == n}
    marks.update({s: NOT_COMPARED for s in skipped if s not in marks})
    return {s: marks[s] for s in splits if s in marks and s in (rec.get("metrics") or {})}


def shared_rows(
    rec, splits=(), store=None, root=None, *, scored=None, place: RowsPlace | None = None
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """``({split: (training rows, rows)}, {split: why not compared})`` for ``rec``'s figures' splits and ``splits``:
    the split it names as fitted on (all its rows, whatever its size) and each that shares rows with it. The training
    rows are those of ``store`` (default: ``place``'s, a :class:`RowsPlace`) where its training split is the run's, else
    of the run's recorded store (:func:`featstore.runs.trainstore.training_store`: where neither is, every split is
    said not compared); the splits are ``scored``'s (default ``place``'s, else the training rows' store: there a split
    named like the training split is compared by rows too). An ensemble's are its members' (read from runs folder
    ``root``, default ``place``'s), each split taking the member with the most of its rows."""
    store, root, scored = _at(place, store, root, scored)
    names = list(dict.fromkeys([*(rec.get("metrics") or {}), *splits]))
    members = rec.get("members")
    if isinstance(members, list) and members and fitted_on(rec) is None:
        return _ensemble_rows(members, names, store, root, scored)
    train = fitted_on(rec)
    if train is None:
        return {}, {}
    name = rec.get("extractor")
    fs, why = training_store(rec, store, name, train) if isinstance(name, str) else (None, "")
    own = scored is None or (fs is not None and same_file(scored, fs))  # its splits are the training split's store's
    whole = {train: (1, 1)} if own else {}  # the split it names there: all of its rows (their count is not read)
    others = [s for s in names if s not in whole and not s.endswith(".oof")]  # an out-of-fold split is no store's
    if not isinstance(name, str) or not others:
        return whole, {}
    if fs is None:  # said, not silent (attack 74 #3, 76 #3)
        return whole, dict.fromkeys(others, why)
    budget = rec.get("memory_budget")  # the run's --memory-budget: its report is held to it as its fit was (78 #3)
    budget = budget if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 else None
    # recorded figures (no ``scored``: runs evaluate's are of the split as it is now) on other rows: said (78 #1b)
    moved = scored_elsewhere(rec, fs, name, others, root) if scored is None else {}
    rest = [s for s in others if s not in moved]
    got, skipped = fitted_rows_said(fs, name, train, rest, scored=None if own else scored, memory_budget=budget)
    return {**got, **whole}, {**skipped, **moved}


def _ensemble_rows(members: list, names: list, store, root, scored) -> tuple[dict, dict]:
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
        mgot, mskipped = shared_rows(member, names, store, root, scored=scored)
        for s, (k, n) in mgot.items():
            if s in names and (s not in got or k * got[s][1] > got[s][0] * n):
                got[s] = (k, n)
        skipped.update({s: f"for its member {m}, {why}" for s, why in mskipped.items() if s not in skipped})
    return got, {s: why for s, why in skipped.items() if s not in got or got[s][0] < got[s][1]}


_TRAIN: dict = {}  # (identity, extractor, train) -> TrainingRows: the last one (evicted before the next is built)
_COUNTS: dict = {}  # (identities, extractor, train, split) -> ((k, n) | None, why | None): each split digested once


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


def fitted_rows(store, name: str, train: str, splits, max_bytes: int = 64 << 20, **kw) -> dict[str, tuple[int, int]]:
    """``{split: (rows that are training rows, rows)}`` for each of ``splits`` (other than ``train``) that shares any
    row with ``train`` in store ``store`` (a path or a FeatureStore), extractor ``name``. A store that cannot be read,
    or splits too large to compare (:func:`fitted_rows_said` names them, and takes the same keywords), give nothing
    (the name rule alone)."""
    return fitted_rows_said(store, name, train, splits, max_bytes, **kw)[0]


def fitted_rows_said(
    store, name: str, train: str, splits, max_bytes: int = 64 << 20, *, scored=None, memory_budget: int | None = None
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """:func:`fitted_rows`, and ``{split: why its rows were not compared}`` for each split (other than ``train``) over
    :data:`MAX_ROWS` rows or :data:`MAX_BYTES` of features, or every one when ``train`` is, or whose comparison takes
    more than ``memory_budget`` bytes (:func:`peak_bytes`: 16 bytes a training row and a block's temporaries; none is
    then kept for the process after the call, attack 76 #4). ``scored``: the store whose splits are compared with
    ``store``'s training split (default ``store``; another store's split named ``train`` is compared too). Each
    split's count is kept for the process, keyed by the store files' identity (attack 74 #7)."""
    out: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    try:
        fs, why = _open(store)
        sfs, swhy = _open(scored) if scored is not None else (fs, why)
        if fs is None or sfs is None:
            raise StoreError(why or swhy)
        cross = not same_file(fs, sfs)
        present = _splits(sfs, name)
        wanted = [s for s in dict.fromkeys(splits) if s and s != "none" and (cross or s != train)]
        others = [s for s in wanted if s in present]
        for s in (s for s in wanted if s not in present):  # figures scored elsewhere: said, not dropped (78 #1)
            where = terminal_safe(str(sfs.path))
            skipped[s] = f"{where} holds no split {s!r} of {name!r} (pass --store with the store it was scored on)"
        if not others or train not in _splits(fs, name):
            return out, skipped
        ident = (_identity(fs.path), _identity(sfs.path) if cross else None)
        if memory_budget is not None:
            max_bytes = max(1, min(max_bytes, memory_budget // 16))  # small blocks: the digests take the rest
        for split in others:
            key = (ident, name, train, split)
            if key not in _COUNTS:
                if memory_budget is not None and (why := over_budget(fs, name, train, split, max_bytes, memory_budget)):
                    skipped[split] = why  # said, not kept: another call may be given more
                    continue
                if len(_COUNTS) >= 1 << 14:
                    _COUNTS.clear()
                _COUNTS[key] = _count(fs, ident[0], name, train, split, max_bytes, sfs)
            got, why = _COUNTS[key]
            if why:
                skipped[split] = why
            elif got and got[0]:
                out[split] = got
    except (OSError, KeyError, ValueError, TypeError, FeatstoreError) as e:  # a store that cannot be read: no mark,
        logger.debug("rows of %s not compared: %s", store, e)  # said for each split not yet counted (not silent)
        for split in (s for s in dict.fromkeys(splits) if s != train and s not in out and s not in skipped):
            skipped[split] = f"its rows could not be read: {terminal_safe(str(e))}"
    finally:
        if memory_budget is not None:
            _TRAIN.clear()  # within a budget nothing is held after the call (a streamed fit follows)
    return out, skipped


def _count(fs, ident, name: str, train: str, split: str, max_bytes: int, sfs=None):
    """``((k, n), None)`` or ``(None, why not compared)`` for split ``split`` of ``sfs`` (default ``fs``) against
    the training split of ``fs``."""
    sfs = fs if sfs is None else sfs
    if why := too_big(fs, name, train):
        return None, f"the training split {train!r} has {why}"
    if why := too_big(sfs, name, split):
        return None, f"{split!r} has {why}"
    base = held_rows(fs, name, train, max_bytes, ident)
    return (base.count(sfs, name, split, max_bytes) if len(base) else (0, 0)), None


def held_rows(fs, name: str, train: str, max_bytes: int = 64 << 20, ident=None) -> TrainingRows:
    """The training split's digests, one training split's held at a time for the process (freed before the next is
    built: a caller drops its reference to the last first). ``ident``: the store file's identity, when known."""
    key = (_identity(fs.path) if ident is None else ident, name, train)
    if key not in _TRAIN:
        _TRAIN.clear()
        _TRAIN[key] = TrainingRows(fs, name, train, max_bytes)
    return _TRAIN[key]


def release_held() -> None:
    """Drop the training split's digests :func:`held_rows` holds for the process (a caller within a memory budget)."""
    _TRAIN.clear()


def holds_rows(fs, name: str, train: str) -> bool:
    """Whether :func:`held_rows` of ``train`` is held now (built already: no read)."""
    return (_identity(fs.path), name, train) in _TRAIN


def store_identity(path):
    """The store file's identity that the rule's process caches are keyed by."""
    return _identity(path)


def optimistic_by(k: int) -> str:
    """The bound a few shared rows put on a figure, one wording for every command that says it.

    >>> optimistic_by(1), optimistic_by(3)
    ('optimistic by at most 1 row', 'optimistic by at most 3 rows')
    """
    return f"optimistic by at most {k} row{'s' if k != 1 else ''}"


def overlap_notes(
    fs, name: str, train: str, splits, max_bytes: int = 64 << 20, *, memory_budget: int | None = None
) -> list[str]:
    """One note per split of ``splits`` (validation, then test; None where not used) sharing rows with ``train``, the
    split a fit is fitted on: ``fit`` says it (a warning and a run note) and goes on (it does not refuse: a final refit
    on trainval may be meant); its figures there are marked where every row is a training row. A split too large to
    compare (or to compare within ``memory_budget``: :func:`fitted_rows_said`) gets a note saying its rows were not
    compared."""
    notes = []
    got, skipped = fitted_rows_said(fs, name, train, [s for s in splits if s], max_bytes, memory_budget=memory_budget)
    for split, (k, n) in got.items():
        head = f"{k} of the {n} rows of {split!r} are rows of {train!r}, which the run is fitted on"
        chose = split == splits[0]
        if k < n:  # some rows (a duplicate image): its figures are partly on training rows (attack 74 #6)
            notes.append(
                f"{head} (duplicate images?): its figures there are {optimistic_by(k)}"
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


def not_compared(split: str, train: str, why: str) -> str:
    """The line saying split ``split``'s rows were not compared with the training split's (``why``: :func:`too_big`)."""
    return (
        f"the rows of {split!r} were not compared with those of "
        f"{train if ' ' in train else repr(train)}, which the run is fitted on ({why}): "
        f"whether any of them is a training row is not known, and its figures there are not marked"
    )


def fitted_members(
    rec, split: str, root: Path | None = None, store=None, *, scored=None, place: RowsPlace | None = None
) -> list[str]:
    """The members of ensemble ``rec`` (in runs folder ``root``, default ``place``'s) fitted on ``split``'s rows
    (:func:`fitted_splits`, with ``store`` and ``scored`` as there); a member that cannot be read is left out."""
    store, root, scored = _at(place, store, root, scored)
    out = []
    if root is None:
        return out
    for m in dict.fromkeys(rec.members):
        try:
            member = parse_record(read_record_json(Path(root) / m), Path(root) / m)
        except (StoreError, OSError):
            continue
        if split in fitted_splits(member, [split], store, root, scored=scored):
            out.append(m)
    return out
