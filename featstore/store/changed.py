"""Which stored rows' image files changed since extraction: the one check every reader of the files makes.

A split records the (path, label, size, mtime) of every image it was extracted from (``/<split>/listing``). A row's
features are those of the file that was there then; the file at its path now may be another picture (a name reused).
:func:`changed_rows` tells, for rows of a split, whether the file at the row's path (joined to the split's
``source_root``) is not the file extracted, by size and modification time as ``extract`` compares them
(:func:`featstore.images.listing_diff.changed_against`). ``leaks`` neither hashes nor pairs such a row's file as a
"same bytes" copy, ``similar PATH`` extracts such a file instead of answering with the stored row, and a picture of
the row (a report's gallery) should not be made from it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

import numpy as np

from featstore.images.listing_diff import changed_against
from featstore.store.layout import listing_columns
from featstore.store.metadata import open_split
from featstore.store.reader import FeatureStore


def file_stats(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(sizes, mtimes_ns)`` of each file by one ``stat`` (links followed); size -1 where there is no regular file."""
    sizes, mtimes = np.full(len(files), -1, np.int64), np.zeros(len(files), np.int64)
    for i, p in enumerate(files):
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


def changed_rows(
    fs: FeatureStore,
    name: str,
    split: str,
    rows: Sequence[int] | np.ndarray | None = None,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """A bool per row of ``rows`` (default: every row of the split, in order): True where the file at the row's stored
    path under the split's ``source_root`` changed since extraction (another size or mtime than the split's recorded
    listing). False where it cannot be told: no file there (gone: the caller says so), no ``source_root`` or no listing
    recorded (rows written from arrays). ``stats``: ``(sizes, mtimes_ns)`` per row already taken by the caller
    (:func:`file_stats`), so that each file is stat'ed once.

    >>> changed = changed_rows(FeatureStore("features.h5"), "vgg16", "test")   # doctest: +SKIP
    >>> int(changed.sum())                                                     # doctest: +SKIP
    1
    """
    root = str(fs.split_info(split, name).get("source_root") or "")
    paths = fs.paths(split, name)
    if rows is not None:
        paths = [paths[int(r)] for r in rows]
    if not root:
        return np.zeros(len(paths), bool)
    sizes, mtimes = stats if stats is not None else file_stats([os.path.join(root, p) for p in paths])
    with fs._open() as f:
        sg = open_split(f, fs.path, fs.resolve(name), split)[0]
        return changed_against(paths, sizes, mtimes, listing_columns(sg))
