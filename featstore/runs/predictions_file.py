"""A run's ``predictions.npz`` written split by split, each split's probabilities block by block, and read back in blocks.

The file is the one ``np.savez`` writes: a zip of stored (uncompressed) ``.npy`` members, ``<split>__proba``
``(N, K)`` float64 (the model's own probabilities, in store row order) and ``<split>__labels`` ``(N,)``; every reader
(``featstore.runs.folder.load_predictions``, ``np.load``, runs written before this module) reads it unchanged. What
changes is that writing it never makes an ``(N, K)`` array: a validation split of 10⁵ rows and 1,000 classes is 0.8 GB
of probabilities, 8 GB at 10⁶ rows. A member's rows are read back from the file ``rows`` at a time (plain reads,
no memory map: a mapped file's pages count in the process's memory as they are touched).

>>> import tempfile; from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "predictions.npz"
>>> w = PredictionsWriter(path)
>>> with w.probabilities("test", 3, 2) as member:
...     member.write(np.array([[0.9, 0.1], [0.2, 0.8]])); member.write(np.array([[0.5, 0.5]]))
>>> w.labels("test", np.array([0, 1, 1]), "sha-of-paths")
>>> [b.tolist() for b in w.blocks("test", 2)]
[[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5]]]
>>> w.close(); np.load(path)["test__proba"].shape
(3, 2)
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.safezip import read_npy
from featstore.store.storage import chunk_rows, row_bytes

PROBA = np.dtype("<f8")  # what a streamed split's probabilities are stored as (full_proba gives float64)
EVAL_BUDGET = 512 * 10**6  # the memory budget of a run's evaluation when its fit was given none (--memory-budget)
BLOCK_FRACTION = 4  # a block of features is budget/4: room for its float32 copy, the scaled copy and the model
PROBA_COPIES = 3  # (rows, K) arrays held at once while a block is predicted and scored (model's, padded, calibrated)
_COPY = 1 << 20  # bytes copied at a time from another run's member
KEEPALIVE_S = 60  # while a member is read back, the file's mtime is renewed this often (the orphan cleaner's clock)


def eval_rows(info: dict, budget: int, n_classes: int) -> int:
    """Rows per evaluation block of a split (its :meth:`~featstore.store.reader.FeatureStore.split_info`): whole
    chunks, as many as a quarter of ``budget`` holds with ``PROBA_COPIES`` float64 copies of their probabilities.

    >>> eval_rows({"shape": [10**6, 512], "dtype": "float16", "chunks": [1024, 512]}, 512 * 10**6, 1000)
    4096
    """
    chunk = chunk_rows(info)
    rows = (budget // BLOCK_FRACTION) // (row_bytes(info) + PROBA_COPIES * 8 * n_classes)
    return max(chunk, rows // chunk * chunk)


@dataclass(frozen=True)
class StoredSplit:
    """What the file holds of one split: its labels (O(N)) and where its probabilities lie in the file."""

    labels: np.ndarray  # (N,) class indices
    paths_sha256: str  # which images its rows are (predictions.json's entry)
    listing_sha256: str | None  # the split's listing digest, when it has one
    offset: int  # byte offset of the probabilities' first row in the file
    shape: tuple[int, int]  # (N, K)
    dtype: np.dtype  # as stored


class PredictionsWriter:
    """A new ``predictions.npz`` (see the module): :meth:`probabilities` streams a split's rows in, :meth:`labels`
    ends the split, :meth:`add` writes one from whole arrays, :meth:`copy` takes one from another run's file;
    :meth:`blocks` reads a finished split back; :meth:`close` ends the file. Example::

        w = PredictionsWriter(tmp / "predictions.npz")
        with w.probabilities("test", n, k) as member:
            for X, y in blocks: member.write(full_proba(est, X, k))
        w.labels("test", labels, paths_sha256)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "x+b")  # a new file in a new folder: never through a link
        self._zip = zipfile.ZipFile(self._fh, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._pending: dict[str, tuple[int, int]] = {}  # split -> (N, K): probabilities written, labels not yet
        self.splits: dict[str, StoredSplit] = {}
        self._touched = time.monotonic()

    def probabilities(self, split: str, n: int, k: int) -> _ProbaMember:
        """A context whose ``write(block)`` appends ``(rows, k)`` probabilities; exactly ``n`` rows must come."""
        self._check_new(split)
        return _ProbaMember(self, split, n, k)

    def labels(self, split: str, labels, paths_sha256: str, listing_sha256: str | None = None) -> None:
        """End a split whose probabilities were written: its labels, and which images its rows are."""
        n, k = self._pending.pop(split)
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise StoreError(f"split {split!r} has {n} rows of probabilities but {labels.shape} labels")
        self._array(f"{split}__labels", labels)
        offset, shape, dtype = self._locate(f"{split}__proba")
        self.splits[split] = StoredSplit(labels, paths_sha256, listing_sha256, offset, shape, dtype)

    def add(self, split: str, proba, labels, paths_sha256: str, listing_sha256: str | None = None) -> None:
        """A split from whole arrays (an ensemble's or a fine-tuning's, computed in memory)."""
        self._check_new(split)
        proba = np.asarray(proba)
        self._array(f"{split}__proba", proba)
        self._pending[split] = proba.shape
        self.labels(split, labels, paths_sha256, listing_sha256)

    def copy(self, split: str, source: zipfile.ZipFile, labels, paths_sha256: str, listing_sha256: str | None) -> None:
        """A split of another (verified) predictions file, its probabilities copied ``_COPY`` bytes at a time."""
        self._check_new(split)
        name = f"{split}__proba.npy"
        with source.open(name) as src, self._zip.open(name, "w", force_zip64=True) as dst:
            while chunk := src.read(_COPY):
                dst.write(chunk)
        _, shape, _ = self._locate(f"{split}__proba")
        self._pending[split] = shape
        self.labels(split, labels, paths_sha256, listing_sha256)

    def blocks(self, split: str, rows: int) -> Iterator[np.ndarray]:
        """A finished split's probabilities back from the file, ``rows`` rows at a time, in order."""
        s = self.splits[split]
        n, k = s.shape
        self._fh.flush()
        with open(self.path, "rb") as fh:
            for a in range(0, n, max(1, rows)):
                out = np.empty((min(rows, n - a), k), dtype=s.dtype)
                fh.seek(s.offset + a * k * s.dtype.itemsize)
                if fh.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise StoreError(f"{self.path} ended inside the probabilities of {split!r}; nothing was recorded")
                self.keepalive()
                yield out

    def close(self) -> None:
        """Write the zip's directory and close the file (no split may be left without its labels)."""
        if self._pending:
            raise StoreError(f"splits {sorted(self._pending)} of {self.path} have probabilities but no labels")
        self._zip.close()
        self._fh.close()

    def discard(self) -> None:
        """Close the file without finishing it (its folder is being removed); never raises: on a full disk even the
        flush of the closing fails, and the error that stopped the writing is the one to report."""
        try:
            self._zip.close()
        except (OSError, ValueError, zipfile.LargeZipFile):
            pass
        finally:
            try:
                self._fh.close()  # the descriptor is closed even when the flush before it fails
            except OSError:
                pass

    def _check_new(self, split: str) -> None:
        if split in self.splits or split in self._pending:
            raise StoreError(f"split {split!r} is already in {self.path}")

    def _array(self, key: str, arr: np.ndarray) -> None:
        """A whole array as one member, as np.savez writes it."""
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)

    def _locate(self, key: str) -> tuple[int, tuple[int, int], np.dtype]:
        """``(offset of the data, shape, dtype)`` of a finished ``(N, K)`` member, from its local and .npy headers."""
        self._fh.flush()
        name = f"{key}.npy"
        info = self._zip.getinfo(name)
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            head = fh.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise StoreError(f"{self.path}: member {name} has no local header where it was written")
            start = (
                info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
            )
            fh.seek(start)
            data = fh.read(min(info.file_size, 1 << 16))  # the .npy header, checked as every reader checks it
        member = io.BytesIO(data)
        version = np.lib.format.read_magic(member)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = reader(member)
        if len(shape) != 2 or fortran or dtype.kind != "f":
            raise StoreError(f"{self.path}: member {name} holds {dtype} {shape}, not (N, K) probabilities")
        return start + member.tell(), (int(shape[0]), int(shape[1])), dtype

    def keepalive(self) -> None:
        """Renew the file's mtime now and then (called per block read or scored): a run folder being evaluated for
        longer than the orphan cleaner's ``ORPHAN_AGE_S`` without a write is not taken for one a killed fit left."""
        if time.monotonic() - self._touched > KEEPALIVE_S:
            os.utime(self.path)
            self._touched = time.monotonic()


class _ProbaMember:
    """One split's probabilities being written (see :meth:`PredictionsWriter.probabilities`)."""

    def __init__(self, owner: PredictionsWriter, split: str, n: int, k: int):
        self.owner, self.split, self.n, self.k, self.rows = owner, split, n, k, 0

    def __enter__(self) -> _ProbaMember:
        self._fh = self.owner._zip.open(f"{self.split}__proba.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(PROBA), "fortran_order": False, "shape": (self.n, self.k)}
        np.lib.format.write_array_header_1_0(self._fh, header)
        return self

    def write(self, block) -> None:
        """Append ``(rows, K)`` probabilities (as float64)."""
        block = np.ascontiguousarray(block, dtype=PROBA)
        if block.ndim != 2 or block.shape[1] != self.k or self.rows + len(block) > self.n:
            raise StoreError(
                f"split {self.split!r}: a block of shape {block.shape} after {self.rows} rows does not fit the "
                f"({self.n}, {self.k}) probabilities being written (the split changed meanwhile?); run the command again"
            )
        self._fh.write(memoryview(block).cast("B"))
        self.rows += len(block)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fh.close()
        if exc_type is None and self.rows != self.n:
            raise StoreError(
                f"split {self.split!r} gave {self.rows} rows of probabilities; its record says {self.n} (it changed "
                f"meanwhile?); run the command again"
            )
        if exc_type is None:
            self.owner._pending[self.split] = (self.n, self.k)


def read_labels(source: zipfile.ZipFile, split: str, n: int, k: int) -> np.ndarray:
    """A split's labels from a verified predictions file (small: one integer a row)."""
    labels = read_npy(source, f"{split}__labels.npy", "iu", (n,))
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise StoreError(f"{split}__labels holds labels outside 0..{k - 1}")
    return labels
