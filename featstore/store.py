"""The HDF5 feature store: layout, crash-safe appends, and read access.

Layout (``format_version`` 1)::

    store.h5                      attrs: format_version, featstore_version
    └── /<extractor>              attrs: provenance + fingerprint (see EXTRACTOR_ATTRS)
        └── /<split>              attrs: class_names, commit = [committed_rows, n_failed, images_done], complete, ...
              features (N, ...)   float32|float16, chunked ~1 MiB along rows, maxshape (None, ...)
              labels   (N,)       int32, index into class_names
              paths    (N,)       UTF-8, relative to source_root
              /failed  paths, reasons of images that could not be read

Writing is in :mod:`featstore.writer`; reads go through :class:`FeatureStore`.

>>> store = FeatureStore("features.h5")           # doctest: +SKIP
>>> X, y = store.load("train")                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from .errors import ConfigError, StoreBusyError, StoreError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_TIMEOUT_S = float(os.environ.get("FEATSTORE_LOCK_TIMEOUT", "120"))
# Fields that decide the numbers in `features`; their hash is the extractor's fingerprint.
FINGERPRINT_FIELDS = ("model", "layer", "input_size", "pooling", "preprocess", "resize", "dtype", "feature_shape", "weights_digest",
                      "compute_dtype")
DTYPES = ("float32", "float16")
STR = h5py.string_dtype("utf-8")


_LOCKING: dict = {"default": None}  # None = HDF5's default (honours HDF5_USE_FILE_LOCKING)


def set_locking(value: bool | None) -> None:
    """Process-wide HDF5 file locking for featstore: False for filesystems without working locks (some NFS/Lustre).

    Also turns off featstore's own ``<store>.lock`` writer lock, so two writers on one store are then
    the user's responsibility.
    """
    _LOCKING["default"] = value


def locking_default():
    """The locking value set by :func:`set_locking` (None = HDF5's default)."""
    return _LOCKING["default"]


def fingerprint(attrs: dict) -> str:
    """sha256 over the FINGERPRINT_FIELDS of an extractor's attributes."""
    ident = {k: _plain(attrs.get(k, "float32" if k == "compute_dtype" else None)) for k in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def describe_diff(a: dict, b: dict, keys) -> str:
    """'key: store has X, this run has Y; ...' for the keys whose values differ."""
    return "; ".join(f"{k}: store has {_plain(a.get(k))!r}, this run has {_plain(b.get(k))!r}" for k in keys if _plain(a.get(k)) != _plain(b.get(k)))


def validate_dtype(dtype: str) -> None:
    """Refuse a feature dtype the store does not support."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")


def _plain(value):
    """HDF5 attribute value -> plain Python (lists, str, int, float, bool)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs(obj) -> dict:
    out = {k: _plain(v) for k, v in obj.attrs.items()}
    if "commit" in out:  # one attribute, written in one step per batch; spelled out for readers
        out["committed_rows"], out["n_failed"], out["images_done"] = (int(v) for v in out["commit"])
    return out


def commit_state(sg: h5py.Group) -> tuple[int, int, int]:
    """(committed_rows, n_failed, images_done) of a split: its one ``commit`` attribute, updated atomically per batch."""
    if "commit" not in sg.attrs:  # a split whose creation was interrupted: nothing committed yet
        return 0, 0, 0
    rows, failed, done = (int(v) for v in sg.attrs["commit"])
    return rows, failed, done


def _is_lock_error(exc: OSError) -> bool:
    text = str(exc).lower()
    return "unable to lock" in text or "resource temporarily unavailable" in text or getattr(exc, "errno", None) == errno.EAGAIN


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, mode: str = "r", *, locking=None, timeout: float = LOCK_TIMEOUT_S) -> Iterator[h5py.File]:
    """Open an HDF5 file, waiting up to ``timeout`` s while another process has it open for writing."""
    locking = locking_default() if locking is None else locking
    kwargs = {} if locking is None else {"locking": locking}
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            f = h5py.File(path, mode, **kwargs)
            break
        except FileNotFoundError:
            raise StoreError(f"store {path} does not exist; create it with `featstore extract ... --store {path}`") from None
        except OSError as exc:
            if not _is_lock_error(exc):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            if time.monotonic() > deadline:
                raise StoreBusyError(
                    f"store {path} stayed locked by another process for {timeout:.0f} s; wait for it to finish "
                    f"(or set FEATSTORE_LOCK_TIMEOUT). On a filesystem without working locks use locking=False "
                    f"(HDF5_USE_FILE_LOCKING=FALSE)."
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        yield f
    finally:
        f.close()


def foreign_objects(f: h5py.File) -> list[str]:
    """Names of external/soft links, virtual datasets and externally stored datasets: ways to reach outside the file."""
    found: list[str] = []

    def visit(name, link):
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            found.append(f"/{name} ({type(link).__name__})")
        elif isinstance(link, h5py.HardLink):
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and (obj.is_virtual or obj.external):
                found.append(f"/{name} ({'virtual dataset' if obj.is_virtual else 'external storage'})")

    f.visititems_links(visit)
    return found


def refuse_foreign(f: h5py.File, path, allow: bool = False) -> None:
    """Raise unless the file is self-contained (or ``allow``): links out of a store could read or write other files."""
    if allow:
        return
    found = foreign_objects(f)
    if found:
        raise StoreError(f"store {path} holds objects that point outside it: {', '.join(found[:5])}. featstore never writes "
                         f"these; refusing to use it. If you made them on purpose, pass allow_external=True.")


def _split_summary(sg: h5py.Group) -> dict:
    """A split's attributes plus its features' shape, dtype and chunk shape."""
    feats = sg["features"]
    return {**_attrs(sg), "shape": list(feats.shape), "dtype": str(feats.dtype), "chunks": list(feats.chunks or [])}


class FeatureStore:
    """Read access to a store file. Each call opens and closes the file, so writers are not blocked.

    >>> store = FeatureStore("features.h5")          # doctest: +SKIP
    >>> store.extractors(), store.splits()           # doctest: +SKIP
    (['vgg16'], ['train', 'validation'])
    >>> X, y = store.load("train")                   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, locking=None, allow_external: bool = False):
        self.path = Path(path)
        self.locking = locking
        if not self.path.is_file():
            raise StoreError(f"store {self.path} does not exist; create it with `featstore extract --store {self.path}`")
        if not h5py.is_hdf5(self.path):
            raise StoreError(f"{self.path} is not an HDF5 file; pass the .h5 store written by `featstore extract`")
        with self._open() as f:
            refuse_foreign(f, self.path, allow_external)

    def _open(self):
        return open_h5(self.path, "r", locking=self.locking)

    def extractors(self) -> list[str]:
        """Names of the extractor groups in the store."""
        with self._open() as f:
            return sorted(k for k in f if isinstance(f[k], h5py.Group))

    def resolve(self, extractor: str | None = None) -> str:
        """``extractor`` if present; when None, the only one there (error listing them otherwise)."""
        names = self.extractors()
        if extractor is None:
            if len(names) == 1:
                return names[0]
            if not names:
                raise StoreError(f"store {self.path} holds no extractor yet; run `featstore extract` first")
            raise StoreError(f"store {self.path} holds several extractors ({', '.join(names)}); choose one with --extractor")
        if extractor not in names:
            raise StoreError(f"store {self.path} has no extractor {extractor!r}; it has: {', '.join(names) or 'none'}")
        return extractor

    def metadata(self, extractor: str | None = None) -> dict:
        """Provenance attributes of an extractor (model, layer, weights, fingerprint, ...)."""
        name = self.resolve(extractor)
        with self._open() as f:
            return _attrs(f[name])

    def splits(self, extractor: str | None = None) -> list[str]:
        """Split names under an extractor."""
        name = self.resolve(extractor)
        with self._open() as f:
            return sorted(f[name])

    def split_info(self, split: str, extractor: str | None = None) -> dict:
        """Attributes of one split plus its feature shape and dtype."""
        name = self.resolve(extractor)
        with self._open() as f:
            return _split_summary(self._split(f, name, split))

    def class_names(self, extractor: str | None = None) -> list[str]:
        """Class names (label i is class_names[i]), identical for every split."""
        name = self.resolve(extractor)
        with self._open() as f:
            first = sorted(f[name])[0] if len(f[name]) else None
            if first is None:
                raise StoreError(f"extractor {name!r} in {self.path} has no split yet")
            return _plain(f[name][first].attrs["class_names"])

    def _split(self, f: h5py.File, name: str, split: str) -> h5py.Group:
        if split not in f[name]:
            raise StoreError(f"extractor {name!r} in {self.path} has no split {split!r}; it has: {', '.join(sorted(f[name])) or 'none'}")
        return f[name][split]

    def load(self, split: str = "train", extractor: str | None = None, *, allow_incomplete: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of a split as in-memory arrays ``(X, y)``, read in blocks of whole chunks in row order.

        The file is opened per block of ~64 chunks, so a writer appending another split is never held up for long.
        """
        name = self.resolve(extractor)
        with self._open() as f:
            sg = self._split(f, name, split)
            if not sg.attrs["complete"] and not allow_incomplete:
                raise StoreError(
                    f"split {split!r} of {name!r} is not complete ({commit_state(sg)[0]} rows committed of "
                    f"{sg.attrs['n_images']} images); finish it by re-running the same `featstore extract`"
                )
            n = commit_state(sg)[0]
            X = np.empty((n, *sg["features"].shape[1:]), dtype=sg["features"].dtype)
            step = sg["features"].chunks[0] * 64
            y = sg["labels"][:n].astype(np.int64)
        for i in range(0, n, step):
            with self._open() as f:
                part = np.s_[i:min(i + step, n)]
                f[name][split]["features"].read_direct(X, part, part)
        return X, y

    def labels(self, split: str, extractor: str | None = None) -> np.ndarray:
        """Labels of a split (cheap: no features are read)."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg = self._split(f, name, split)
            return sg["labels"][: commit_state(sg)[0]].astype(np.int64)

    def nbytes(self, split: str, extractor: str | None = None) -> int:
        """Bytes the committed features of a split take in memory."""
        info = self.split_info(split, extractor)
        return int(info["committed_rows"]) * int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize

    def _block_rows(self, split: str, name: str, max_bytes: int) -> tuple[int, int]:
        """(rows in the split, rows per block of whole chunks within max_bytes); errors if one chunk does not fit."""
        info = self.split_info(split, name)
        if not info["complete"]:
            raise StoreError(f"split {split!r} of {name!r} is not complete; finish it by re-running the same `featstore extract`")
        row_bytes = int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize
        chunk = int(info["chunks"][0]) if info.get("chunks") else 1
        rows = (max_bytes // max(row_bytes, 1)) // chunk * chunk
        if rows < 1:
            raise ConfigError(f"a memory budget of {max_bytes} bytes cannot hold one chunk of {split!r} "
                              f"({chunk} rows of {row_bytes} bytes); raise it to at least {chunk * row_bytes} bytes")
        return int(info["committed_rows"]), rows

    def block_lengths(self, split: str, extractor: str | None = None, *, max_bytes: int = 64 << 20) -> list[int]:
        """Rows in each block that :meth:`iter_batches` yields with the same ``max_bytes`` (in unshuffled order)."""
        n, rows = self._block_rows(split, self.resolve(extractor), max_bytes)
        return [min(rows, n - s) for s in range(0, n, rows)]

    def iter_batches(self, split: str = "train", extractor: str | None = None, *, max_bytes: int = 64 << 20,
                     shuffle: bool = False, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(X, y)`` blocks of whole chunks, at most ``max_bytes`` of features each, without loading the split.

        With ``shuffle`` the blocks come in a random order and rows are shuffled inside each block
        (reading random single rows from HDF5 is very slow; whole chunks are fast). The file is opened
        per block, so writers are not held up. Example::

            for X, y in store.iter_batches("train", max_bytes=256 << 20, shuffle=True, seed=epoch):
                clf.partial_fit(X.reshape(len(X), -1), y, classes=range(10))
        """
        name = self.resolve(extractor)
        n, rows = self._block_rows(split, name, max_bytes)
        starts = list(range(0, n, rows))
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(starts)
        for start in starts:
            with self._open() as f:
                sg = f[name][split]
                X = sg["features"][start:min(start + rows, n)]
                y = sg["labels"][start:min(start + rows, n)].astype(np.int64)
            if shuffle:
                order = rng.permutation(len(y))
                X, y = X[order], y[order]
            yield X, y

    def paths(self, split: str, extractor: str | None = None) -> list[str]:
        """Image paths (relative to the split's source_root) in row order."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg = self._split(f, name, split)
            return list(sg["paths"].asstr()[: commit_state(sg)[0]])

    def failures(self, split: str, extractor: str | None = None) -> list[tuple[str, str]]:
        """(path, reason) of each image that could not be read."""
        name = self.resolve(extractor)
        with self._open() as f:
            fg = self._split(f, name, split)["failed"]
            n = commit_state(f[name][split])[1]
            return list(zip(fg["paths"].asstr()[:n], fg["reasons"].asstr()[:n]))

    def info(self) -> dict:
        """The whole store as nested dicts: root attrs, each extractor's provenance and each split's counts."""
        with self._open() as f:
            out = {"path": str(self.path), "attrs": _attrs(f), "extractors": {}}
            for name in sorted(f):
                splits = {}
                for split in sorted(f[name]):
                    sg = f[name][split]
                    splits[split] = {**_split_summary(sg),
                                     "class_counts": np.bincount(sg["labels"][: commit_state(sg)[0]],
                                                                 minlength=len(sg.attrs.get("class_names", []))).tolist()}
                out["extractors"][name] = {"attrs": _attrs(f[name]), "splits": splits}
            return out
