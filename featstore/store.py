"""The HDF5 feature store: layout, crash-safe appends, and read access.

Layout (``format_version`` 1)::

    store.h5                      attrs: format_version, featstore_version
    └── /<extractor>              attrs: provenance + fingerprint (see EXTRACTOR_ATTRS)
        └── /<split>              attrs: class_names, committed_rows, images_done, complete, ...
              features (N, ...)   float32|float16, chunked ~1 MiB along rows, maxshape (None, ...)
              labels   (N,)       int32, index into class_names
              paths    (N,)       UTF-8, relative to source_root
              /failed  paths, reasons of images that could not be read

The writer opens the file only for the length of one append (resize, write, update the committed
counts, flush, close), so a reader can open it between batches and a killed writer leaves at most
one uncommitted tail, which the next run truncates. Reads go through :class:`FeatureStore`.

>>> store = FeatureStore("features.h5")           # doctest: +SKIP
>>> X, y = store.load("train")                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import ConfigError, StoreBusyError, StoreError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20
LOCK_TIMEOUT_S = float(os.environ.get("FEATSTORE_LOCK_TIMEOUT", "120"))
# Fields that decide the numbers in `features`; their hash is the extractor's fingerprint.
FINGERPRINT_FIELDS = ("model", "layer", "input_size", "pooling", "preprocess", "resize", "dtype", "feature_shape", "weights_digest")
DTYPES = ("float32", "float16")
STR = h5py.string_dtype("utf-8")


def fingerprint(attrs: dict) -> str:
    """sha256 over the FINGERPRINT_FIELDS of an extractor's attributes."""
    ident = {k: _plain(attrs[k]) for k in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


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
    return {k: _plain(v) for k, v in obj.attrs.items()}


def _is_lock_error(exc: OSError) -> bool:
    text = str(exc).lower()
    return "unable to lock" in text or "resource temporarily unavailable" in text or getattr(exc, "errno", None) == errno.EAGAIN


@contextlib.contextmanager
def open_h5(path: str | os.PathLike, mode: str = "r", *, locking=None, timeout: float = LOCK_TIMEOUT_S) -> Iterator[h5py.File]:
    """Open an HDF5 file, waiting up to ``timeout`` s while another process has it open for writing."""
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


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``<store>.lock`` for a whole extraction: a second writer gets a clear error, not a corrupt file."""
    lock_path = f"{path}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StoreBusyError(
                f"another featstore process (pid {other}) is writing to {path}; wait for it to finish, "
                f"or write to another --store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a store in a missing or read-only folder, or a file that is not HDF5."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(f"folder {parent} for store {path} does not exist; create it (mkdir -p {parent}) or choose another --store")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise StoreError(f"store {path} is read-only; make it writable (chmod u+w {path}) or choose another --store")
        if not h5py.is_hdf5(path):
            raise StoreError(f"{path} exists and is not an HDF5 file; choose another --store (nothing was written)")
    elif not os.access(parent, os.W_OK):
        raise StoreError(f"folder {parent} is read-only; cannot create store {path}. Choose a writable --store")
    return path


def chunk_rows(feature_shape: Sequence[int], dtype: str) -> int:
    """Rows per chunk so that one chunk holds about 1 MiB."""
    row_bytes = int(np.prod(feature_shape)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


def _diff(a: dict, b: dict, keys: Sequence[str]) -> str:
    return "; ".join(f"{k}: store has {_plain(a.get(k))!r}, this run has {_plain(b.get(k))!r}" for k in keys if _plain(a.get(k)) != _plain(b.get(k)))


def prepare_split(path, name: str, split: str, attrs: dict, class_names: list[str], source_root: str,
                  listing_digest: str, n_images: int, overwrite: bool, locking=None) -> int | None:
    """Create or reopen ``/<name>/<split>`` for writing; returns the image index to start from, or None if complete.

    Refuses a store whose extractor of the same name has another fingerprint, a split whose classes
    differ from the other splits', and a partial split started on another image list.
    """
    shape = tuple(attrs["feature_shape"])
    with open_h5(path, "a", locking=locking) as f:
        if "format_version" not in f.attrs:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["featstore_version"] = __version__
        elif int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise StoreError(f"store {path} has format_version {f.attrs['format_version']}; this featstore reads up to {FORMAT_VERSION}. Upgrade featstore.")
        if name in f:
            old = _attrs(f[name])
            if old.get("fingerprint") != attrs["fingerprint"]:
                raise StoreError(
                    f"store {path} already holds an extractor named {name!r} with fingerprint "
                    f"{str(old.get('fingerprint'))[:12]}, this run's is {attrs['fingerprint'][:12]} "
                    f"({_diff(old, attrs, FINGERPRINT_FIELDS)}). Use --name to store it under another name, or another --store."
                )
            grp = f[name]
        else:
            grp = f.create_group(name)
            for key, value in attrs.items():
                grp.attrs[key] = np.array(value, dtype=STR) if _is_str_list(value) else value
        for other in grp:
            if other == split:
                continue
            theirs = _plain(grp[other].attrs.get("class_names", []))
            if theirs != class_names:
                raise StoreError(
                    f"classes of split {split!r} differ from split {other!r} of {name!r}: "
                    f"{split} has {class_names}, {other} has {theirs}. Every split must have the same class folders."
                )
        if split in grp and overwrite:
            del grp[split]
        if split in grp:
            sg = grp[split]
            sa = _attrs(sg)
            if sa.get("complete"):
                return None
            if sa.get("listing_sha256") != listing_digest:
                raise StoreError(
                    f"split {split!r} of {name!r} in {path} was started on another set of images "
                    f"({sa.get('n_images')} then, {n_images} now); pass --overwrite to start it again"
                )
            _truncate(sg, int(sa["committed_rows"]), int(sa["n_failed"]))
            f.flush()
            return int(sa["images_done"])
        sg = grp.create_group(split)
        rows = chunk_rows(shape, attrs["dtype"])
        sg.create_dataset("features", shape=(0, *shape), maxshape=(None, *shape), dtype=attrs["dtype"], chunks=(rows, *shape))
        sg.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int32", chunks=(max(rows, 4096),))
        sg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
        fg = sg.create_group("failed")
        fg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        fg.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        sg.attrs["class_names"] = np.array(class_names, dtype=STR)
        sg.attrs["source_root"] = source_root
        sg.attrs["listing_sha256"] = listing_digest
        sg.attrs["n_images"] = n_images
        sg.attrs["committed_rows"] = 0
        sg.attrs["images_done"] = 0
        sg.attrs["n_failed"] = 0
        sg.attrs["complete"] = False
        sg.attrs["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.flush()
        return 0


def _is_str_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)


def _truncate(sg: h5py.Group, rows: int, failed: int) -> None:
    """Drop an uncommitted tail left by a killed writer."""
    for key in ("features", "labels", "paths"):
        if sg[key].shape[0] != rows:
            logger.info("truncating %s/%s from %d to %d committed rows", sg.name, key, sg[key].shape[0], rows)
            sg[key].resize(rows, axis=0)
    for key in ("paths", "reasons"):
        sg["failed"][key].resize(failed, axis=0)


def append(path, name: str, split: str, features: np.ndarray, labels: np.ndarray, paths: list[str],
           failures: list[tuple[str, str]], images_done: int, locking=None) -> None:
    """Append one batch and commit it: data first, then the committed counts, then flush."""
    with open_h5(path, "a", locking=locking) as f:
        sg = f[name][split]
        n0 = int(sg.attrs["committed_rows"])
        n1 = n0 + len(labels)
        if len(labels):
            for key, values in (("features", features), ("labels", labels), ("paths", np.array(paths, dtype=object))):
                sg[key].resize(n1, axis=0)
                sg[key][n0:n1] = values
        k0 = int(sg.attrs["n_failed"])
        if failures:
            k1 = k0 + len(failures)
            for key, col in (("paths", 0), ("reasons", 1)):
                sg["failed"][key].resize(k1, axis=0)
                sg["failed"][key][k0:k1] = np.array([item[col] for item in failures], dtype=object)
        f.flush()
        sg.attrs["committed_rows"] = n1
        sg.attrs["n_failed"] = k0 + len(failures)
        sg.attrs["images_done"] = images_done
        f.flush()


def finish(path, name: str, split: str, seconds: float, locking=None) -> None:
    """Mark a split complete."""
    with open_h5(path, "a", locking=locking) as f:
        sg = f[name][split]
        sg.attrs["complete"] = True
        sg.attrs["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sg.attrs["seconds"] = round(float(seconds), 3)
        f.flush()


class FeatureStore:
    """Read access to a store file. Each call opens and closes the file, so writers are not blocked.

    >>> store = FeatureStore("features.h5")          # doctest: +SKIP
    >>> store.extractors(), store.splits()           # doctest: +SKIP
    (['vgg16'], ['train', 'validation'])
    >>> X, y = store.load("train")                   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, locking=None):
        self.path = Path(path)
        self.locking = locking
        if not self.path.is_file():
            raise StoreError(f"store {self.path} does not exist; create it with `featstore extract --store {self.path}`")

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
            sg = self._split(f, name, split)
            return {**_attrs(sg), "shape": list(sg["features"].shape), "dtype": str(sg["features"].dtype)}

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
        """Features and labels of a split as in-memory arrays ``(X, y)``, read chunk by chunk in row order."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg = self._split(f, name, split)
            if not sg.attrs["complete"] and not allow_incomplete:
                raise StoreError(
                    f"split {split!r} of {name!r} is not complete ({sg.attrs['committed_rows']} rows committed of "
                    f"{sg.attrs['n_images']} images); finish it by re-running the same `featstore extract`"
                )
            n = int(sg.attrs["committed_rows"])
            X = np.empty((n, *sg["features"].shape[1:]), dtype=sg["features"].dtype)
            step = sg["features"].chunks[0] * 64
            for i in range(0, n, step):
                sg["features"].read_direct(X, np.s_[i:min(i + step, n)], np.s_[i:min(i + step, n)])
            y = sg["labels"][:n].astype(np.int64)
            return X, y

    def paths(self, split: str, extractor: str | None = None) -> list[str]:
        """Image paths (relative to the split's source_root) in row order."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg = self._split(f, name, split)
            return [p.decode() if isinstance(p, bytes) else p for p in sg["paths"][: int(sg.attrs["committed_rows"])]]

    def failures(self, split: str, extractor: str | None = None) -> list[tuple[str, str]]:
        """(path, reason) of each image that could not be read."""
        name = self.resolve(extractor)
        with self._open() as f:
            fg = self._split(f, name, split)["failed"]
            n = int(f[name][split].attrs["n_failed"])
            return [(p.decode(), r.decode()) for p, r in zip(fg["paths"][:n], fg["reasons"][:n])]

    def info(self) -> dict:
        """The whole store as nested dicts: root attrs, each extractor's provenance and each split's counts."""
        with self._open() as f:
            out = {"path": str(self.path), "attrs": _attrs(f), "extractors": {}}
            for name in sorted(f):
                splits = {}
                for split in sorted(f[name]):
                    sg = f[name][split]
                    splits[split] = {**_attrs(sg), "shape": list(sg["features"].shape), "dtype": str(sg["features"].dtype),
                                     "chunks": list(sg["features"].chunks or [])}
                out["extractors"][name] = {"attrs": _attrs(f[name]), "splits": splits}
            return out
