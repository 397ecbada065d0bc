"""Byte-identical files inside one split: rows that are copies of one image, counted as independent rows.

A test split of 12 distinct images saved 8 times each has 96 rows; its accuracy intervals and paired tests count 96
independent rows. :func:`copies_within` groups a split's rows by the sha256 of their files, from the listing
:func:`~featstore.experiments.leaks.hashes.same_bytes` made (one ``stat`` per row): only files whose size occurs twice
in the split are read, each distinct file once (rows naming one file, by a link or another spelling, are one file:
grouped without reading), and a file read for the comparison with train is not read again. Memory is a few numpy
arrays per split (32 bytes of digest and four integers per candidate row), never a dict of paths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from featstore.experiments.leaks.hashes import Listing, _sha256
from featstore.experiments.leaks.result import LeakReport, SplitCopies
from featstore.outputs import terminal_safe

EXAMPLE_GROUPS = 3  # groups of copies named per split (the largest)
EXAMPLE_PATHS = 3  # stored paths named per group


def copies_within(
    splits: Sequence[str],
    listings: dict[str, Listing | None],
    seen: dict[tuple, tuple[str, str]],
    unhashed: dict[str, list[str]],
) -> dict[str, SplitCopies]:
    """Per split with a listing: its rows, distinct images and groups of byte-identical files (:class:`SplitCopies`).

    A file that cannot be read counts as a distinct image (and is listed in ``unhashed``); a split whose files cannot
    be found (no ``source_root``) is left out.

    >>> copies_within(["test"], listings, {}, {})["test"]   # doctest: +SKIP
    SplitCopies(rows=96, distinct=12, groups=12, in_groups=96, largest=8, examples=(('test/a/000_0.png', ...),))
    """
    out = {}
    for split in dict.fromkeys(splits):
        got = listings.get(split)
        if got is not None:
            out[split] = _split_copies(split, got, seen, unhashed)
    return out


def _repeated(values: np.ndarray) -> np.ndarray:
    """Mask of the entries whose value occurs at least twice."""
    _, inv, cnt = np.unique(values, return_inverse=True, return_counts=True)
    return cnt[inv.reshape(-1)] >= 2


def _stored(got: Listing, row: int) -> str:
    """Row ``row``'s path as stored (relative to ``source_root``), from its joined path: the split's paths are not read
    a second time."""
    path, root = got.files[row], os.path.join(got.root, "")
    return path[len(root) :] if path.startswith(root) else path


def _split_copies(
    split: str,
    got: Listing,
    seen: dict[tuple, tuple[str, str]],
    unhashed: dict[str, list[str]],
) -> SplitCopies:
    """The groups of one split (see :func:`copies_within`)."""
    n = len(got.files)
    valid = np.flatnonzero(got.size >= 0)
    cand = valid[_repeated(got.size[valid])] if len(valid) else valid
    if len(cand) < 2:
        return SplitCopies(n, n, 0, 0, 0)
    keys = np.stack([got.dev[cand], got.ino[cand], got.size[cand].view(np.uint64), got.mtime[cand].view(np.uint64)], 1)
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    files = len(first)  # distinct files among the candidates
    label = np.arange(files, dtype=np.int64) + files  # a file not read is its own image
    read = np.flatnonzero(_repeated(got.size[cand[first]]))  # files whose size another file has: read these
    digests = np.zeros((len(read), 32), np.uint8)
    ok = np.zeros(len(read), bool)
    for k, f in enumerate(read):
        row = int(cand[first[f]])
        digest, why = _sha256(got.files[row], int(got.size[row]), seen, keep=False)
        if why:
            unhashed.setdefault(split, []).append(f"{got.files[row]} ({why})")
        elif digest:
            digests[k], ok[k] = np.frombuffer(bytes.fromhex(digest), np.uint8), True
    if ok.any():
        _, same = np.unique(digests[ok], axis=0, return_inverse=True)
        label[read[ok]] = same.reshape(-1)
    ids, where, counts = np.unique(label[inv], return_index=True, return_counts=True)
    many = counts >= 2
    groups, in_groups = int(many.sum()), int(counts[many].sum())
    if not groups:
        return SplitCopies(n, n, 0, 0, 0)
    order = np.lexsort((where[many], -counts[many]))[:EXAMPLE_GROUPS]  # the largest groups, the earliest first
    examples = tuple(
        tuple(_stored(got, int(r)) for r in np.sort(cand[label[inv] == ids[many][g]])[:EXAMPLE_PATHS]) for g in order
    )
    sizes = tuple(int(counts[many][g]) for g in order)
    return SplitCopies(n, n - in_groups + groups, groups, in_groups, int(counts[many].max()), examples, sizes)


def copies_lines(report: LeakReport) -> list[str]:
    """What ``featstore leaks`` prints of the copies inside each split: its advice line, then a few groups (escaped
    for the terminal); then, per split whose files changed since extraction, the count and the re-extraction to run.

    >>> copies_lines(find_leaks("features.h5"))[:2]   # doctest: +SKIP
    ['copies: test holds 96 rows of 12 distinct images (...)', '  8 copies  a/000_0.png = a/000_1.png = ...']
    """
    lines = []
    for split, c in report.within.items():
        if c.groups:
            lines.append("copies: " + terminal_safe(c.advice(split, split == report.reference)))
            for paths, n in zip(c.examples, c.example_rows):
                more = f" (and {n - len(paths)} more)" if n > len(paths) else ""
                lines.append(f"  {n} copies  " + " = ".join(terminal_safe(p) for p in paths) + more)
    for split, n in report.changed.items():  # the features are of the files extracted, not of these (attack 64 #10)
        lines.append(
            f"changed since extraction: {n} file(s) of {terminal_safe(split)} are not the images its rows were "
            f"extracted from (another size or time), so they were not compared by content; re-extract with "
            f"`featstore extract --split {terminal_safe(split)} --overwrite` to compare them"
        )
    return lines
