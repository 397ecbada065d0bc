"""The HDF5 feature store: layout, crash-safe appends, and read access.

Layout (``format_version`` 2)::

    store.h5                      attrs: format_version, featstore_version
    └── /<extractor>              attrs: provenance + fingerprint (see featstore.provenance)
        └── /<split>              attrs: class_names, commit = [committed_rows, n_failed, images_done], complete, ...
              features (N, ...)   float32|float16, chunked ~1 MiB along rows, maxshape (None, ...)
              labels   (N,)       int32, index into class_names
              paths    (N,)       UTF-8, relative to source_root
              /failed  paths, reasons of images that could not be read
              /listing paths, labels, sizes, mtimes_ns of every image found when the split was started

Writing is in :mod:`featstore.store.writer`; reads go through :class:`FeatureStore`.

>>> store = FeatureStore("features.h5")           # doctest: +SKIP
>>> X, y = store.load("train")                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from featstore.errors import ConfigError, StoreBusyError, StoreError
from featstore.provenance import (
    AUGMENTED,
    attrs_of,
    check_format_version,
    plain,
    validate_extractor,
)
from featstore.store.layout import (
    AUGMENT_ATTRS,
    Commit,
    validate_augmented,
    validate_labels,
    validate_split,
)
from featstore.units import format_bytes

logger = logging.getLogger(__name__)

STR = h5py.string_dtype("utf-8")
PATH_ERRORS = (
    "surrogateescape"  # stored paths are the file system's bytes; names that are not UTF-8 round-trip losslessly
)


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


def lock_timeout() -> float:
    """Seconds to wait for a store another process holds: ``FEATSTORE_LOCK_TIMEOUT`` (default 120), checked when used."""
    text = os.environ.get("FEATSTORE_LOCK_TIMEOUT", "120")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(
            f"FEATSTORE_LOCK_TIMEOUT={text!r} is not a number of seconds; set it to e.g. 120, or unset it"
        )
    return value


def read_paths(ds, stop: int, start: int = 0) -> list[str]:
    """Stored paths ``start:stop`` as str (names that are not UTF-8 come back as written, via surrogateescape)."""
    return list(ds.asstr(errors=PATH_ERRORS)[start:stop]) if stop > start else []


def _is_lock_error(exc: OSError) -> bool:
    text = str(exc).lower()
    return (
        "unable to lock" in text
        or "resource temporarily unavailable" in text
        or getattr(exc, "errno", None) == errno.EAGAIN
    )


@contextlib.contextmanager
def open_h5(
    path: str | os.PathLike, mode: str = "r", *, locking=None, timeout: float | None = None
) -> Iterator[h5py.File]:
    """Open an HDF5 file, waiting up to ``timeout`` s (FEATSTORE_LOCK_TIMEOUT) while another process writes it."""
    locking = locking_default() if locking is None else locking
    kwargs = {} if locking is None else {"locking": locking}
    timeout = lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            f = h5py.File(path, mode, **kwargs)
            break
        except FileNotFoundError:
            raise StoreError(
                f"store {path} does not exist; create it with `featstore extract ... --store {path}`"
            ) from None
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
    """Names of external/soft links, virtual datasets and externally stored datasets: ways to reach outside the file.

    Links are inspected, never followed (a dangling or external link is reported, not opened).
    """
    found: list[str] = []

    def visit(name, link):
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            found.append(f"/{name} ({type(link).__name__})")
        elif isinstance(link, h5py.HardLink):
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and (obj.is_virtual or obj.external):
                found.append(f"/{name} ({'virtual dataset' if obj.is_virtual else 'external storage'})")

    try:
        f.visititems_links(visit)
    except (
        SystemError,
        UnicodeDecodeError,
    ) as exc:  # h5py cannot decode an object name: featstore never writes such names
        raise StoreError(
            f"{f.filename} holds an object whose name is not UTF-8 ({exc}); it was not written by featstore. "
            f"Refusing to use it."
        ) from None
    return found


def refuse_foreign(f: h5py.File, path, allow: bool = False) -> None:
    """Raise unless the file is self-contained (or ``allow``): links out of a store could read or write other files."""
    if allow:
        return
    found = foreign_objects(f)
    if found:
        raise StoreError(
            f"store {path} holds objects that point outside it: {', '.join(found[:5])}. featstore never writes "
            f"these; refusing to use it. If you made them on purpose, pass allow_external=True."
        )


@contextlib.contextmanager
def _readable(path, name: str, split: str, start: int, stop: int) -> Iterator[None]:
    """Turn HDF5's read errors (a damaged chunk: "filter returned failure", bad checksums) into a StoreError naming the rows."""
    try:
        yield
    except OSError as exc:
        raise StoreError(
            f"{path}:/{name}/{split}: features of rows {start}..{stop - 1} cannot be read ({exc}): the file is damaged "
            f"(disk or copy error). `featstore check` lists every damaged block; re-extract this split with --overwrite."
        ) from exc


def hard_groups(g: h5py.Group) -> list[str]:
    """Names of the sub-groups of ``g`` reached through hard links (links are not followed)."""
    return sorted(k for k in g if isinstance(g.get(k, getlink=True), h5py.HardLink) and isinstance(g[k], h5py.Group))


def split_summary(sg: h5py.Group, commit: Commit) -> dict:
    """A split's attributes plus its features' shape, dtype and chunk shape, and its commit spelled out."""
    feats = sg["features"]
    return {
        **attrs_of(sg),
        "committed_rows": commit.rows,
        "n_failed": commit.failed,
        "images_done": commit.images_done,
        "shape": list(feats.shape),
        "dtype": str(feats.dtype),
        "chunks": list(feats.chunks or []),
    }


CACHE_PURPOSE = (
    "finetune-cache"  # the `purpose` attribute of a group `featstore finetune` made to cache its frozen layers
)


class FeatureStore:
    """Read access to a store file. Each call opens and closes the file, so writers are not blocked.

    Every read validates what it touches (layout, attribute types, the commit record, label range) and
    raises :class:`StoreError` naming the problem and the fix for a damaged or crafted store.

    >>> store = FeatureStore("features.h5")          # doctest: +SKIP
    >>> store.extractors(), store.splits()           # doctest: +SKIP
    (['vgg16'], ['train', 'validation'])
    >>> X, y = store.load("train")                   # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, *, locking=None, allow_external: bool = False):
        self.path = Path(path)
        self.locking = locking
        if not self.path.is_file():
            raise StoreError(
                f"store {self.path} does not exist; create it with `featstore extract --store {self.path}`"
            )
        if not h5py.is_hdf5(self.path):
            raise StoreError(f"{self.path} is not an HDF5 file; pass the .h5 store written by `featstore extract`")
        with self._open() as f:
            refuse_foreign(f, self.path, allow_external)
            if "format_version" not in f.attrs:
                raise StoreError(
                    f"{self.path} has no format_version attribute: it is not a featstore store (or it is damaged)"
                )
            check_format_version(f.attrs["format_version"], self.path)

    def _open(self):
        return open_h5(self.path, "r", locking=self.locking)

    def extractors(self, caches: bool = True) -> list[str]:
        """Names of the extractor groups in the store (``caches=False``: without the frozen-layer caches ``finetune`` made)."""
        with self._open() as f:
            names = hard_groups(f)
            return names if caches else [n for n in names if plain(f[n].attrs.get("purpose", "")) != CACHE_PURPOSE]

    def resolve(self, extractor: str | None = None) -> str:
        """``extractor`` if present; when None, the only one there, not counting finetune's caches (error listing them otherwise)."""
        names = self.extractors()
        if extractor is None:
            if len(names) == 1:
                return names[0]
            own = self.extractors(caches=False)
            if len(own) == 1:
                return own[0]
            if not names:
                raise StoreError(f"store {self.path} holds no extractor yet; run `featstore extract` first")
            raise StoreError(
                f"store {self.path} holds several extractors ({', '.join(names)}); choose one with --extractor"
            )
        if extractor not in names:
            raise StoreError(f"store {self.path} has no extractor {extractor!r}; it has: {', '.join(names) or 'none'}")
        return extractor

    def _extractor(self, f: h5py.File, name: str) -> tuple[h5py.Group, dict]:
        """The extractor group and its validated provenance attributes."""
        attrs = attrs_of(f[name])
        validate_extractor(attrs, f"{self.path}:/{name}")
        return f[name], attrs

    def _split(self, f: h5py.File, name: str, split: str, augmented: bool = False) -> tuple[h5py.Group, Commit]:
        """A validated split group and its commit (``augmented``: its augmented copies, checked against it)."""
        g, attrs = self._extractor(f, name)
        if split not in hard_groups(g):
            raise StoreError(
                f"extractor {name!r} in {self.path} has no split {split!r}; it has: {', '.join(hard_groups(g)) or 'none'}"
            )
        sg = g[split]
        commit = validate_split(sg, f"{self.path}:/{name}/{split}", attrs)
        if not augmented:
            return sg, commit
        if AUGMENTED not in hard_groups(sg):
            raise StoreError(
                f"split {split!r} of {name!r} in {self.path} has no augmented copies; make them with "
                f"`featstore extract --split {split} --augment K` (same options as the split)"
            )
        return sg[AUGMENTED], validate_augmented(
            sg[AUGMENTED], f"{self.path}:/{name}/{split}/{AUGMENTED}", attrs, commit
        )

    def augmentation(self, split: str, extractor: str | None = None) -> dict | None:
        """The augmented copies of a split: their attributes (augment_copies, augment_spec, augment_seed, ...), rows, complete; None if none."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, _ = self._split(f, name, split)
            if AUGMENTED not in hard_groups(sg):
                return None
            ag, commit = self._split(f, name, split, augmented=True)
            return {
                **{k: plain(ag.attrs[k]) for k in AUGMENT_ATTRS},
                "rows": commit.rows,
                "n_failed": commit.failed,
                "complete": bool(plain(ag.attrs["complete"])),
            }

    def copies(self, split: str, extractor: str | None = None) -> np.ndarray:
        """The copy index (1..K) of each row of a split's augmented copies (refused when their rows are not the split's)."""
        name = self.resolve(extractor)
        self.refuse_bad_copies(split, name)
        with self._open() as f:
            ag, commit = self._split(f, name, split, augmented=True)
            return ag["copy"][: commit.rows].astype(np.int64)

    def copy_problems(self, split: str, extractor: str | None = None, *, block: int = 1 << 16) -> list[str]:
        """What is wrong with the rows of a split's copies: each row must be copy k (1..K, copy-major) of a row of the split,
        with that row's path and label, in the split's order. Reads labels, paths and copy indexes in blocks, never features."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, plain_commit = self._split(f, name, split)
            ag, commit = self._split(f, name, split, augmented=True)
            index = {p: i for i, p in enumerate(read_paths(sg["paths"], plain_commit.rows))}
            y = sg["labels"][: plain_commit.rows]
            k = int(plain(ag.attrs["augment_copies"]))
        where, bad_copy, unknown, wrong_label, order = f"{self.path}:/{name}/{split}/{AUGMENTED}", 0, 0, 0, 0
        last = (0, -1)
        for i in range(0, commit.rows, block):
            j = min(i + block, commit.rows)
            with self._open() as f:
                ag = f[name][split][AUGMENTED]
                paths, labels, copy = read_paths(ag["paths"], j, i), ag["labels"][i:j], ag["copy"][i:j]
            for p, lab, c in zip(paths, labels.tolist(), copy.tolist()):
                src = index.get(p)
                if not 1 <= c <= k:
                    bad_copy += 1
                elif src is None:
                    unknown += 1
                elif lab != int(y[src]):
                    wrong_label += 1
                elif (c, src) <= last:
                    order += 1
                else:
                    last = (c, src)
        out = []
        if bad_copy:
            out.append(f"{where}: {bad_copy} rows have a copy index outside 1..{k}")
        if unknown:
            out.append(f"{where}: {unknown} rows have a path that is not one of the split's rows")
        if wrong_label:
            out.append(f"{where}: {wrong_label} rows have another label than the split's row of the same image")
        if order:
            out.append(f"{where}: {order} rows are out of order (copy-major, in the split's row order) or repeated")
        return [f"{p}; make the copies again with --augment and --overwrite" for p in out]

    def refuse_bad_copies(self, split: str, extractor: str | None = None) -> None:
        """Raise StoreError naming the first problem of :meth:`copy_problems`, so nothing trains on copies that are not the split's."""
        problems = self.copy_problems(split, extractor)
        if problems:
            raise StoreError(" ".join(problems))

    def metadata(self, extractor: str | None = None) -> dict:
        """Provenance attributes of an extractor (model, layer, weights, fingerprint, ...)."""
        name = self.resolve(extractor)
        with self._open() as f:
            return self._extractor(f, name)[1]

    def splits(self, extractor: str | None = None) -> list[str]:
        """Split names under an extractor."""
        name = self.resolve(extractor)
        with self._open() as f:
            return hard_groups(f[name])

    def split_info(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> dict:
        """Attributes of one split (``augmented``: of its augmented copies) plus its feature shape and dtype."""
        name = self.resolve(extractor)
        with self._open() as f:
            return split_summary(*self._split(f, name, split, augmented))

    def class_names(self, extractor: str | None = None) -> list[str]:
        """Class names (label i is class_names[i]), identical for every split."""
        name = self.resolve(extractor)
        with self._open() as f:
            splits = hard_groups(f[name])
            if not splits:
                raise StoreError(f"extractor {name!r} in {self.path} has no split yet")
            return plain(self._split(f, name, splits[0])[0].attrs["class_names"])

    def _complete(self, sg: h5py.Group, commit: Commit, name: str, split: str) -> None:
        """Refuse reading a split that is not complete."""
        if not sg.attrs["complete"]:
            raise StoreError(
                f"split {split!r} of {name!r} is not complete ({commit.rows} rows committed of "
                f"{plain(sg.attrs['n_images'])} images); finish it by re-running the same `featstore extract`"
            )

    def _labels(self, sg: h5py.Group, n: int, where: str) -> np.ndarray:
        """The first n labels as int64, range-checked against the class list."""
        y = sg["labels"][:n].astype(np.int64)
        validate_labels(y, len(plain(sg.attrs["class_names"])), where)
        return y

    def load(
        self,
        split: str = "train",
        extractor: str | None = None,
        *,
        allow_incomplete: bool = False,
        augmented: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of a split as in-memory arrays ``(X, y)``, read in blocks of whole chunks in row order.

        The file is opened per block of ~64 chunks, so a writer appending another split is never held up for long.
        ``augmented=True`` reads the split's augmented copies instead (``extract --augment K``).
        """
        name = self.resolve(extractor)
        key = f"{split}/{AUGMENTED}" if augmented else split
        with self._open() as f:
            sg, commit = self._split(f, name, split, augmented)
            if not allow_incomplete:
                self._complete(sg, commit, name, key)
            n = commit.rows
            X = np.empty((n, *sg["features"].shape[1:]), dtype=sg["features"].dtype)
            step = (sg["features"].chunks or (1,))[0] * 64
            y = self._labels(sg, n, f"{self.path}:/{name}/{key}")
        for i in range(0, n, step):
            with self._open() as f:
                part = np.s_[i : min(i + step, n)]
                with _readable(self.path, name, key, i, min(i + step, n)):
                    f[name][key]["features"].read_direct(X, part, part)
        return X, y

    def labels(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> np.ndarray:
        """Labels of a split or its augmented copies (cheap: no features are read)."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, commit = self._split(f, name, split, augmented)
            return self._labels(
                sg, commit.rows, f"{self.path}:/{name}/{split}" + (f"/{AUGMENTED}" if augmented else "")
            )

    def nbytes(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> int:
        """Bytes the committed features of a split (or its augmented copies) take in memory."""
        info = self.split_info(split, extractor, augmented=augmented)
        return int(info["committed_rows"]) * int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize

    def _block_rows(self, split: str, name: str, max_bytes: int, augmented: bool = False) -> tuple[int, int, int]:
        """(rows in the split, rows per block of whole chunks within max_bytes, rows per chunk); errors if one chunk does not fit."""
        info = self.split_info(split, name, augmented=augmented)
        if not info["complete"]:
            raise StoreError(
                f"split {split!r} of {name!r} is not complete; finish it by re-running the same `featstore extract`"
            )
        row_bytes = int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize
        chunk = int(info["chunks"][0]) if info.get("chunks") else 1
        rows = (max_bytes // max(row_bytes, 1)) // chunk * chunk
        if rows < 1:
            raise ConfigError(
                f"a memory budget of {format_bytes(max_bytes)} cannot hold one chunk of {split!r} "
                f"({chunk} rows of {format_bytes(row_bytes)}); raise it to at least {format_bytes(chunk * row_bytes)}"
            )
        return int(info["committed_rows"]), rows, chunk

    def block_lengths(
        self, split: str, extractor: str | None = None, *, max_bytes: int = 64 << 20, augmented: bool = False
    ) -> list[int]:
        """Rows in each block that :meth:`iter_batches` yields with the same ``max_bytes`` (shuffled or not)."""
        n, rows, _ = self._block_rows(split, self.resolve(extractor), max_bytes, augmented)
        return [min(rows, n - s) for s in range(0, n, rows)]

    def iter_batches(
        self,
        split: str = "train",
        extractor: str | None = None,
        *,
        max_bytes: int = 64 << 20,
        shuffle: bool = False,
        seed: int = 0,
        augmented: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(X, y)`` blocks of whole chunks, at most ``max_bytes`` of features each, without loading the split.

        With ``shuffle``, each block is made of chunks drawn at random from the *whole* split and its rows are
        shuffled, so a streamed fit sees classes mixed even though rows are stored class by class (reading
        random single rows from HDF5 is very slow; whole chunks are fast). Block sizes are the same as
        unshuffled (:meth:`block_lengths`). The file is opened per block, so writers are not held up. ``augmented=True``
        reads the split's augmented copies. Example::

            for X, y in store.iter_batches("train", max_bytes=256 << 20, shuffle=True, seed=epoch):
                clf.partial_fit(X.reshape(len(X), -1), y, classes=range(10))
        """
        name = self.resolve(extractor)
        n, rows, chunk = self._block_rows(split, name, max_bytes, augmented)
        key = f"{split}/{AUGMENTED}" if augmented else split
        units = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        rng = np.random.default_rng(seed)
        if shuffle:
            full = [u for u in units if u[1] - u[0] == chunk]
            order = rng.permutation(len(full))
            units = [full[i] for i in order] + [
                u for u in units if u[1] - u[0] != chunk
            ]  # a short last chunk stays last
        per_block = rows // chunk
        where = f"{self.path}:/{name}/{key}"
        for b in range(0, len(units), per_block):
            group = units[b : b + per_block]
            with self._open() as f, _readable(self.path, name, key, group[0][0], group[-1][1]):
                sg = f[name][key]
                X = np.concatenate([sg["features"][s:e] for s, e in group])
                y = np.concatenate([sg["labels"][s:e] for s, e in group]).astype(np.int64)
                validate_labels(y, len(plain(sg.attrs["class_names"])), where)
            if shuffle:
                order = rng.permutation(len(y))
                X, y = X[order], y[order]
            yield X, y

    def paths(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> list[str]:
        """Image paths (relative to the split's source_root) in row order (``augmented``: of its copies)."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, commit = self._split(f, name, split, augmented)
            return read_paths(sg["paths"], commit.rows)

    def listing(self, split: str, extractor: str | None = None) -> list[tuple[str, int, int, int]]:
        """(path, label, size, mtime_ns) of every image listed when the split was started: tells whether the folder changed since."""
        from featstore.store.writer import stored_listing

        name = self.resolve(extractor)
        with self._open() as f:
            return stored_listing(self._split(f, name, split)[0])

    def failures(self, split: str, extractor: str | None = None) -> list[tuple[str, str]]:
        """(path, reason) of each image that could not be read."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, commit = self._split(f, name, split)
            return list(
                zip(
                    read_paths(sg["failed"]["paths"], commit.failed), read_paths(sg["failed"]["reasons"], commit.failed)
                )
            )

    def info(self) -> dict:
        """The whole store as nested dicts: root attrs, each extractor's provenance and each split's counts.

        A damaged extractor or split is reported under ``"error"`` with the reason instead of failing the whole listing.
        """
        with self._open() as f:
            out = {"path": str(self.path), "attrs": attrs_of(f), "extractors": {}}
            for name in hard_groups(f):
                entry: dict = {"attrs": attrs_of(f[name]), "splits": {}}
                try:
                    self._extractor(f, name)
                except StoreError as exc:
                    entry["error"] = str(exc)
                for split in hard_groups(f[name]):
                    try:
                        sg, commit = self._split(f, name, split)
                        entry["splits"][split] = {
                            **split_summary(sg, commit),
                            "class_counts": np.bincount(
                                self._labels(sg, commit.rows, f"{self.path}:/{name}/{split}"),
                                minlength=len(plain(sg.attrs["class_names"])),
                            ).tolist(),
                        }
                    except StoreError as exc:
                        entry["splits"][split] = {"error": str(exc)}
                        continue
                    if AUGMENTED in hard_groups(sg):
                        try:
                            entry["splits"][split]["augmented"] = split_summary(
                                *self._split(f, name, split, augmented=True)
                            )
                        except StoreError as exc:
                            entry["splits"][split]["augmented"] = {"error": str(exc)}
                out["extractors"][name] = entry
            return out
