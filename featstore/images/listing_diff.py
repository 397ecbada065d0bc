"""What changed between a split's recorded listing and its folders now, read in blocks and compared with numpy.

A store records, per split, the (path, label, size, mtime) of every image it was started from (``/<split>/listing``).
A re-run whose listing digest differs says what changed: :func:`diff_listing` reads the recorded listing a block of
``BLOCK`` rows at a time (:class:`ListingColumns`: numpy number columns and the paths of one block), never as one
Python tuple per row (10⁶ of them peaked a resume at 940 MB), and keeps at most ``SHOWN`` names of each kind with
the counts: a listing of millions of changed files is summarised, not held.

>>> d = ListingDiff(["a/x.png"], [], ["b/y.jpg"])
>>> bool(d), d.counts
(True, (1, 0, 1))
>>> cols = ListingColumns.of([("a/x.png", 0, 1, 2), ("a/y.png", 0, 3, 4)])
>>> [(a, paths, nums.tolist()) for a, paths, nums in cols.blocks()]
[(0, ['a/x.png', 'a/y.png'], [[0, 0], [1, 3], [2, 4]])]
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from featstore.images.decode import printable

BLOCK = 1 << 16  # recorded rows read at a time
SHOWN = 1000  # names kept of each kind (added, removed, changed); the counts are exact


@dataclass(frozen=True)
class ListingDiff:
    """What changed between a recorded listing and the folders now (paths in listing order, the first ``SHOWN`` of each
    kind; ``counts`` are all of them)."""

    added: list[str]  # listed now, not recorded
    removed: list[str]  # recorded, not listed now
    changed: list[str]  # in both, with another label, size or mtime
    reordered: bool = False  # none of these, but the same files listed in another order
    counts: tuple[int, int, int] | None = None  # (added, removed, changed) in all; None: the lists' lengths

    def __post_init__(self) -> None:
        if self.counts is None:
            object.__setattr__(self, "counts", (len(self.added), len(self.removed), len(self.changed)))

    def __bool__(self) -> bool:
        return any(self.counts)

    def summary(self, first: int = 5) -> str:
        """One line for a message.

        >>> ListingDiff(["a/x.png"], [], ["b/y.jpg"]).summary()
        '1 added, 0 removed, 1 changed (first: a/x.png, b/y.jpg)'
        """
        names = self.added + self.removed + self.changed
        if not names:
            return "the same files, listed in another order" if self.reordered else "no file added, removed or changed"
        shown = ", ".join(printable(p) for p in names[:first]) + (", ..." if sum(self.counts) > first else "")
        a, r, c = self.counts
        return f"{a} added, {r} removed, {c} changed (first: {shown})"


class ListingColumns:
    """A recorded listing as blocks of columns: ``n`` rows; ``blocks()`` yields ``(start, paths, nums)`` with ``paths``
    the block's paths (``str``) and ``nums`` its (3, rows) int64 labels, sizes and mtimes. Built from stored datasets
    (``featstore.store.layout.listing_columns``) or, for small listings and tests, from entries (:meth:`of`)."""

    def __init__(self, n: int, read: Callable[[int, int], tuple[Sequence[str], np.ndarray]], rows: int | None = None):
        self.n, self._read, self._rows = int(n), read, rows

    @property
    def rows(self) -> int:
        """Rows per block (``BLOCK`` unless given)."""
        return max(1, int(self._rows or BLOCK))

    @classmethod
    def of(cls, entries: Iterable[tuple[str | bytes, int, int, int]]) -> ListingColumns:
        """Columns of (path, label, size, mtime_ns) entries held in memory (stored ``bytes`` paths accepted)."""
        entries = entries if isinstance(entries, list) else list(entries)
        paths = [p if isinstance(p, str) else os.fsdecode(p) for p, *_ in entries]
        nums = np.array([e[1:] for e in entries], dtype=np.int64).reshape(len(entries), 3).T
        return cls(len(entries), lambda a, b: (paths[a:b], nums[:, a:b]))

    def paths_at(self, rows: np.ndarray) -> list[str]:
        """The paths of ``rows`` (sorted), reading only the blocks that hold them."""
        out: list[str] = []
        for b in np.unique(np.asarray(rows, np.int64) // self.rows):
            a = int(b) * self.rows
            paths, _ = self._read(a, min(a + self.rows, self.n))
            out += [paths[r - a] for r in rows[(rows >= a) & (rows < a + self.rows)]]
        return out

    def blocks(self) -> Iterator[tuple[int, Sequence[str], np.ndarray]]:
        for a in range(0, self.n, self.rows):
            paths, nums = self._read(a, min(a + self.rows, self.n))
            yield a, paths, np.asarray(nums, dtype=np.int64).reshape(3, len(paths))


class _Names:
    """The first ``SHOWN`` names of one kind, and how many there were."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.count = 0

    def add(self, names: Sequence[str], count: int | None = None) -> None:
        self.names.extend(names[: max(0, SHOWN - len(self.names))])
        self.count += len(names) if count is None else count


def diff_listing(new_paths: list[str], new_nums: np.ndarray, old: ListingColumns) -> ListingDiff:
    """What changed from ``old`` (recorded) to ``new_paths`` with ``new_nums`` (3, N) labels, sizes and mtimes.

    The usual case (the same paths in the same order) compares block by block; otherwise one pass over the blocks
    keeps two hashes of each recorded path and its numbers, rows are matched on the first hash (sorted) and checked
    on the second (a pair of paths sharing both 64-bit hashes, about 2⁻¹²⁸ a pair, would read as one file; a single
    shared hash or a repeated path is compared exactly). O(N) numbers are held, never a tuple per row.
    """
    if old.n == len(new_paths):
        changed = _Names()
        for a, paths, nums in old.blocks():
            if list(paths) != new_paths[a : a + len(paths)]:
                break
            rows = np.flatnonzero((nums != new_nums[:, a : a + len(paths)]).any(axis=0)) + a
            changed.add([new_paths[i] for i in rows[:SHOWN]], len(rows))
        else:
            return ListingDiff([], [], changed.names, counts=(0, 0, changed.count))
    h_old, g_old, old_nums = np.empty(old.n, np.int64), np.empty(old.n, np.int64), np.empty((3, old.n), np.int64)
    for a, paths, nums in old.blocks():  # one pass: two hashes of each path (independent keys) and its numbers
        h_old[a : a + len(paths)], g_old[a : a + len(paths)] = _hashes(paths)
        old_nums[:, a : a + len(paths)] = nums
    h_new, g_new = _hashes(new_paths)
    order_old, order_new = np.argsort(h_old), np.argsort(h_new)  # no ties: a repeated hash falls back below
    sorted_old, sorted_new = h_old[order_old], h_new[order_new]
    del h_old, h_new  # O(N) arrays dropped as soon as they are used: the peak is a few of them at once
    if (sorted_old[1:] == sorted_old[:-1]).any() or (sorted_new[1:] == sorted_new[:-1]).any():
        return _diff_dicts(new_paths, new_nums, old)  # repeated paths, or two paths sharing a hash
    pos = np.minimum(np.searchsorted(sorted_old, sorted_new), max(old.n - 1, 0))  # sorted queries: cache-friendly
    found = sorted_old[pos] == sorted_new if old.n else np.zeros(len(new_paths), bool)
    i, j = order_new[found], order_old[pos[found]]  # row listed now, recorded row: the same path
    del order_old, order_new, sorted_old, sorted_new, pos
    if (g_old[j] != g_new[i]).any():
        return _diff_dicts(new_paths, new_nums, old)  # a 64-bit hash shared by two paths: compared exactly instead
    del g_old, g_new
    hit, gone = np.zeros(len(new_paths), bool), np.ones(old.n, bool)
    hit[i], gone[j] = True, False
    changed_all = np.sort(i[(new_nums[:, i] != old_nums[:, j]).any(axis=0)])
    added_all, removed_all = np.flatnonzero(~hit), np.flatnonzero(gone)
    return _or_reordered(
        ListingDiff(
            [new_paths[k] for k in added_all[:SHOWN]],
            old.paths_at(removed_all[:SHOWN]),
            [new_paths[k] for k in changed_all[:SHOWN]],
            counts=(len(added_all), len(removed_all), len(changed_all)),
        )
    )


def _hashes(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hashes of each path (``hash`` of the path and of the path with a NUL after it: independent keys of
    SipHash), so that rows matched on the first are checked on the second without reading the paths again."""
    first = np.fromiter(map(hash, paths), np.int64, len(paths))
    second = np.fromiter(map(hash, map(str.__add__, paths, itertools.repeat("\0"))), np.int64, len(paths))
    return first, second


def _diff_dicts(new_paths: list[str], new_nums: np.ndarray, old: ListingColumns) -> ListingDiff:
    """``diff_listing`` one row at a time, for listings with repeated paths (or a hash two paths share)."""
    recorded: dict[str, tuple] = {}
    for _, paths, nums in old.blocks():
        recorded.update(zip(paths, zip(*nums.tolist())))
    new = dict(zip(new_paths, zip(*new_nums.tolist())))
    added, removed, changed = _Names(), _Names(), _Names()
    added.add([p for p in new if p not in recorded])
    removed.add([p for p in recorded if p not in new])
    changed.add([p for p, v in new.items() if p in recorded and recorded[p] != v])
    return _or_reordered(
        ListingDiff(added.names, removed.names, changed.names, counts=(added.count, removed.count, changed.count))
    )


def _or_reordered(d: ListingDiff) -> ListingDiff:
    """``d``, or (nothing added, removed or changed, though the paths differ in order) the same files reordered."""
    return d if d else ListingDiff([], [], [], reordered=True)


def changed_against(
    paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray, recorded: ListingColumns
) -> np.ndarray:
    """Which files differ from the listing recorded when their split was extracted: a bool per ``paths[i]``, True where
    the file there now (``sizes[i]``, ``mtimes[i]`` in ns, as one ``stat`` gave them) has another size or modification
    time than the recorded entry of that path, the comparison ``extract`` makes before it resumes or re-runs (a file
    rewritten with the same size and mtime is not seen, as extract does not see it). False where it cannot be told:
    ``sizes[i] < 0`` (no file to stat: the caller says it is gone), or the path is not in the recorded listing (none
    recorded: rows written from arrays). Reads the recording in blocks; holds a dict of the paths asked.

    >>> rec = ListingColumns.of([("t/a.png", 0, 10, 5), ("t/b.png", 1, 20, 6)])
    >>> changed_against(["t/b.png", "t/a.png"], np.array([20, 11]), np.array([6, 5]), rec).tolist()
    [False, True]
    """
    sizes, mtimes = np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64)
    rec_size, rec_mtime = np.full(len(paths), -1, np.int64), np.zeros(len(paths), np.int64)
    if recorded.n and len(paths):
        where = {p: i for i, p in enumerate(paths)}
        for _, block, nums in recorded.blocks():
            for k, p in enumerate(block):
                i = where.get(p)
                if i is not None:
                    rec_size[i], rec_mtime[i] = nums[1, k], nums[2, k]
    known = (rec_size >= 0) & (sizes >= 0)
    return known & ((sizes != rec_size) | (mtimes != rec_mtime))
