"""What identifies a split written from arrays: the digest of its rows, recorded as its ``rows_sha256``.

A split extracted from images records the digest of its image listing (paths, sizes, times) as ``listing_sha256``; a
split written from arrays (:func:`featstore.store.writer.write_arrays`) names no image files (its rows are
``<split>/<i>``, its ``listing_sha256`` is ``arrays:<rows>``, the same for two extractors of the same rows), so it
also records the digest of its features and labels as ``rows_sha256``. A run records both as the split's listing
(:func:`split_listing`: ``arrays:<rows>:<rows digest>``), so a store re-made from other arrays with the same row
counts is told apart. Stores written before featstore recorded ``rows_sha256`` identify nothing
(:func:`identifies_rows`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

ARRAYS = "arrays:"  # listing_sha256 of a split written from arrays: "arrays:<rows>"


class RowsDigest:
    """The ``rows_sha256`` of a split written from arrays: sha256 of the features' dtype and row shape, then of every
    row's bytes and of its label, in row order; fed one batch at a time (no copy of the whole array), and the same
    whatever the batch size.

    >>> d = RowsDigest((2,), "float32"); d.update(np.zeros((3, 2), np.float32), np.zeros(3, np.int32))
    >>> len(d.hexdigest())
    64
    """

    def __init__(self, row_shape: Sequence[int], dtype: str):
        self.head = f"{np.dtype(dtype).str}{tuple(int(d) for d in row_shape)}".encode()
        self.x, self.y = hashlib.sha256(), hashlib.sha256()

    def update(self, X: np.ndarray, y: np.ndarray) -> None:
        self.x.update(np.ascontiguousarray(X))  # a view when X is already contiguous: nothing copied
        self.y.update(np.ascontiguousarray(y, dtype="<i4"))

    def hexdigest(self) -> str:
        return hashlib.sha256(self.head + self.x.digest() + self.y.digest()).hexdigest()


def split_listing(info: dict) -> str:
    """The listing digest a run records for a split, from its ``split_info``: the image listing's digest, or for rows
    written from arrays ``arrays:<rows>:<rows_sha256>`` (``arrays:<rows>`` from a store written before the rows'
    digest).

    >>> split_listing({"listing_sha256": "arrays:3", "rows_sha256": "ab12"}), split_listing({"listing_sha256": "9f"})
    ('arrays:3:ab12', '9f')
    """
    listing = str(info.get("listing_sha256", ""))
    rows = info.get("rows_sha256")
    return f"{listing}:{rows}" if listing.startswith(ARRAYS) and rows else listing


def identifies_rows(listing: str | None) -> bool:
    """Whether a recorded listing digest tells the split's rows apart from others': an image listing's digest, or
    ``arrays:<rows>:<rows digest>``; not ``arrays:<rows>`` (a store written from arrays before the rows' digest was
    recorded), nor nothing (a run made before listings were recorded).

    >>> identifies_rows("arrays:30"), identifies_rows("arrays:30:ab12"), identifies_rows("9f"), identifies_rows(None)
    (False, True, True, False)
    """
    if not listing:
        return False
    return not listing.startswith(ARRAYS) or listing.count(":") >= 2


def rows_differ(a: str | None, b: str | None) -> bool:
    """Whether two recorded listings of one extractor's split name other rows written from arrays (both with their rows'
    digest; another extractor's rows of the same images have other features, so only one extractor's compare)."""
    return (
        a != b
        and bool(a and b)
        and a.startswith(ARRAYS)
        and b.startswith(ARRAYS)
        and identifies_rows(a)
        and identifies_rows(b)
    )
