"""The HDF5 feature store: layout, and read access.

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
import logging
import os
from collections.abc import Iterator

import h5py
import numpy as np

from featstore.apiargs import checked
from featstore.errors import ConfigError, StoreError, renamed_argument
from featstore.provenance import AUGMENTED, check_format_version
from featstore.store.attr_values import read_attr, read_names, refuse_many_attrs
from featstore.store.augmented import copy_problems
from featstore.store.layout import (  # noqa: F401 (STR, hard_groups, read_paths, refuse_foreign, foreign_objects, split_summary: re-exported)
    AUGMENT_ATTRS,
    STR,
    Commit,
    foreign_objects,
    hard_groups,
    read_paths,
    refuse_foreign,
    same_split,
    split_summary,
    stored_listing,
    validate_labels,
)
from featstore.store.locking import (  # noqa: F401 (re-exported: the CLI sets the locking here, finetune opens here)
    StoreFile,
    lock_timeout,
    locking_default,
    open_h5,
    set_locking,
)
from featstore.store.metadata import (  # noqa: F401 (CACHE_PURPOSE: re-exported)
    CACHE_PURPOSE,
    StoreMetadata,
    delete_group_command,
    describe,
    file_state,
    open_split,
)
from featstore.store.names import names_text
from featstore.store.nonfinite import NonfiniteRows, checked_split
from featstore.store.resume import resume_advice
from featstore.store.storage import chunk_bytes, chunk_rows, row_bytes, unreadable
from featstore.units import format_bytes

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _readable(f, path, name: str, split: str, start: int, stop: int) -> Iterator[None]:
    """Turn HDF5's read errors in the open ``f`` (a damaged chunk: "filter returned failure", bad checksums; a filter
    plugin missing, named as such) into a StoreError naming the rows."""
    try:
        yield
    except OSError as exc:
        what = f"{path}:/{name}/{split}: features of rows {start}..{stop - 1}"
        raise StoreError(unreadable(f[name][split]["features"], what, exc)) from exc


class FeatureStore:
    """Read access to a store file: the store object a reading command opens once.

    The store's metadata (extractors, provenance, splits, their shapes and counts) is read once, in one opening, and
    reused while the file is unchanged on disk (:meth:`refresh` reads it again on request). Data is read per call
    and per block, each block in its own opening, so a writer appending another split is never held up for long.

    Every read validates what it touches (layout, attribute types, the commit record, label range) and
    raises :class:`StoreError` naming the problem and the fix for a damaged or crafted store.

    >>> store = FeatureStore("features.h5")          # doctest: +SKIP
    >>> store.extractors(), store.splits()           # doctest: +SKIP
    (['vgg16'], ['train', 'validation'])
    >>> X, y = store.load("train")                   # doctest: +SKIP
    """

    def __init__(
        self,
        store: str | os.PathLike | None = None,
        *,
        locking: bool | None = None,
        allow_external: bool = False,
        path: str | os.PathLike | None = None,
    ):
        """``store``: the .h5 file (``path=`` is its old name); ``locking``: this store's HDF5 locking (None: the
        process setting); ``allow_external``: accept links out of the file."""
        store = renamed_argument("FeatureStore", "path", "store", path, store)
        if store is None:
            raise TypeError("FeatureStore() needs the store file")
        self.file = StoreFile(store, locking)
        self.path = self.file.path
        self.locking = locking
        self.allow_external = allow_external
        self.file.refuse_unreadable()  # missing, not a regular file, not HDF5: one line each
        self._meta: StoreMetadata | None = None
        self.refresh()

    def _open(self):
        return self.file.open("r")

    def refresh(self) -> None:
        """Read the store's metadata again (one opening): also done by itself when the file changed on disk."""
        state = file_state(self.path)
        with self._open() as f:
            refuse_foreign(f, self.path, self.allow_external)
            refuse_many_attrs(f, f"{self.path}:/")  # as info and check do, before anything lists the root's
            if "format_version" not in f.attrs:
                raise StoreError(
                    f"{self.path} has no format_version attribute: it is not a featstore store (or it is damaged)"
                )
            check_format_version(read_attr(f, "format_version", f"{self.path}:/"), self.path)
            self._meta = StoreMetadata.read(f, self.path, state)

    @property
    def meta(self) -> StoreMetadata:
        """The store's metadata, read again first if the file changed since."""
        if self._meta is None or file_state(self.path) != self._meta.state:
            self.refresh()
        return self._meta

    def extractors(self, caches: bool = True) -> list[str]:
        """Names of the extractor groups in the store (``caches=False``: without the frozen-layer caches ``finetune`` made)."""
        meta = self.meta
        return list(meta.names) if caches else [n for n in meta.names if n not in meta.caches]

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
            caches = [n for n in names if n not in own]
            text = (
                f"store {self.path} holds several extractors ({names_text(own)}); choose one with --extractor "
                f"(extractor= in Python)"
            )
            if caches:
                text += f"; {names_text(caches)}: fine-tuning caches, not counted"
            suspects = [n for n in own if "@" in n and n.split("@")[0] in own]  # e.g. vgg16 and vgg16@block4_pool
            if suspects:
                text += (
                    f". If you did not extract {suspects[0]!r}, it is the frozen-layer cache of a fine-tuning that an "
                    f"older featstore left unmarked when it was killed: delete it "
                    f"({delete_group_command(self.path, suspects[0])}), and the next `featstore finetune` makes it "
                    f"again, marked"
                )
            raise StoreError(text)
        if extractor not in names:
            raise StoreError(f"store {self.path} has no extractor {extractor!r}; it has: {names_text(names)}")
        return extractor

    def augmentation(self, split: str, extractor: str | None = None) -> dict | None:
        """The augmented copies of a split: their attributes (augment_copies, augment_spec, augment_seed, ...), rows, complete; None if none."""
        name = self.resolve(extractor)
        if not self.meta.has_copies(name, split):
            return None
        info = self.meta.split(name, split, augmented=True)
        return {
            **{k: info[k] for k in AUGMENT_ATTRS},
            "rows": info["committed_rows"],
            "n_failed": info["n_failed"],
            "complete": bool(info["complete"]),
        }

    def copies(self, split: str, extractor: str | None = None) -> np.ndarray:
        """The copy index (1..K) of each row of a split's augmented copies (refused when their rows are not the split's)."""
        name = self.resolve(extractor)
        self.refuse_bad_copies(split, name)
        with self._open() as f:
            ag, commit = open_split(f, self.path, name, split, augmented=True)
            return ag["copy"][: commit.rows].astype(np.int64)

    def copy_problems(self, split: str, extractor: str | None = None, *, block: int = 1 << 16) -> list[str]:
        """What is wrong with the rows of a split's copies: each row must be copy k (1..K, copy-major) of a row of the split,
        with that row's path and label, in the split's order. Reads labels, paths and copy indexes in blocks, never features."""
        return copy_problems(self.file, self.resolve(extractor), split, block=block)

    def refuse_bad_copies(self, split: str, extractor: str | None = None) -> None:
        """Raise StoreError naming the first problem of :meth:`copy_problems`, so nothing trains on copies that are not the split's."""
        problems = self.copy_problems(split, extractor)
        if problems:
            raise StoreError(" ".join(problems))

    def refuse_nonfinite(
        self,
        split: str,
        extractor: str | None = None,
        X: np.ndarray | None = None,
        *,
        augmented: bool = False,
        max_bytes: int = 64 << 20,
        train: str | None = None,
    ) -> None:
        """Raise StoreError naming the split's rows with NaN or inf features (extract stores them, with a warning), or
        finite features over ``nonfinite.LARGE_FEATURE`` (one such train row set a scaler's spread: chance accuracy,
        exit 0; attack 62 #4), and the fix; ``X``: the split's features already in memory, else read in blocks of ``max_bytes`` (a streamed fit:
        its budget's block). A classifier's own error blamed its settings, or called a sound run's model altered. Rows
        with a feature far over the usual feature size of ``train`` (default: the extractor's split ``train`` if any,
        else its largest split), and a split far from it either way, are refused too (``store.far``)."""
        checked_split(self, split, self.resolve(extractor), X, augmented, max_bytes, train)

    def nonfinite_rows(
        self, split: str, extractor: str | None = None, *, augmented: bool = False, large: bool = True
    ) -> NonfiniteRows:
        """A counter of NaN/inf rows (``large``: and rows with a finite feature over ``nonfinite.LARGE_FEATURE``) fed
        the split's blocks in order by a pass that reads them anyway (a streamed fit's first pass); its ``refuse()``
        raises what :meth:`refuse_nonfinite` raises."""
        return NonfiniteRows(self, split, self.resolve(extractor), augmented, large)

    def metadata(self, extractor: str | None = None) -> dict:
        """Provenance attributes of an extractor (model, layer, weights, fingerprint, ...)."""
        return self.meta.extractor(self.resolve(extractor))

    def splits(self, extractor: str | None = None) -> list[str]:
        """Split names under an extractor."""
        return self.meta.split_names(self.resolve(extractor))

    def split_info(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> dict:
        """Attributes of one split (``augmented``: of its augmented copies) plus its feature shape and dtype."""
        return self.meta.split(self.resolve(extractor), split, augmented)

    def class_names(self, extractor: str | None = None) -> list[str]:
        """Class names (label i is class_names[i]), identical for every split."""
        name = self.resolve(extractor)
        splits = self.meta.split_names(name)
        if not splits:
            raise StoreError(f"extractor {name!r} in {self.path} has no split yet")
        return self.meta.split(name, splits[0])["class_names"]

    def _complete(self, sg: h5py.Group, commit: Commit, name: str, split: str) -> None:
        """Refuse reading a split that is not complete."""
        if not read_attr(sg, "complete", where := f"{self.path}:{sg.name}", most=1):
            raise StoreError(
                f"split {split!r} of {name!r} is not complete ({commit.rows} rows committed of "
                f"{read_attr(sg, 'n_images', where, most=1)} images); {resume_advice(split)}"
            )

    def _labels(self, sg: h5py.Group, n: int, where: str) -> np.ndarray:
        """The first n labels as int64, range-checked against the class list."""
        y = sg["labels"][:n].astype(np.int64)
        validate_labels(y, len(read_names(sg, "class_names", where)), where)
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

        The file is opened per block of ~64 chunks (the first block in the opening that checks the split), so a writer
        appending another split is never held up for long. ``augmented=True`` reads the split's augmented copies
        instead (``extract --augment K``).
        """
        name = self.resolve(extractor)
        key = f"{split}/{AUGMENTED}" if augmented else split
        i, n, seen = 0, None, None
        while n is None or i < n:
            with self._open() as f:
                if n is None:
                    sg, commit = open_split(f, self.path, name, split, augmented)
                    if not allow_incomplete:
                        self._complete(sg, commit, name, key)
                    n = commit.rows
                    X = np.empty((n, *sg["features"].shape[1:]), dtype=sg["features"].dtype)
                    step = (sg["features"].chunks or (1,))[0] * 64
                    y = self._labels(sg, n, f"{self.path}:/{name}/{key}")
                seen = same_split(f, f"{name}/{key}", seen, f"{self.path}:/{name}/{key}")
                part = np.s_[i : min(i + step, n)]
                with _readable(f, self.path, name, key, i, min(i + step, n)):
                    if i < n:
                        f[name][key]["features"].read_direct(X, part, part)
            i += step
        return X, y

    def labels(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> np.ndarray:
        """Labels of a split or its augmented copies (cheap: no features are read)."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, commit = open_split(f, self.path, name, split, augmented)
            return self._labels(
                sg, commit.rows, f"{self.path}:/{name}/{split}" + (f"/{AUGMENTED}" if augmented else "")
            )

    def nbytes(self, split: str, extractor: str | None = None, *, augmented: bool = False) -> int:
        """Bytes the committed features of a split (or its augmented copies) take in memory."""
        info = self.split_info(split, extractor, augmented=augmented)
        return int(info["committed_rows"]) * row_bytes(info)

    def _block_rows(self, split: str, name: str, max_bytes: int, augmented: bool = False) -> tuple[int, int, int]:
        """(rows in the split, rows per block of whole chunks within max_bytes, rows per chunk); errors if one chunk does not fit."""
        info = self.split_info(split, name, augmented=augmented)
        if not info["complete"]:
            raise StoreError(f"split {split!r} of {name!r} is not complete; {resume_advice(split)}")
        row, chunk, size = row_bytes(info), chunk_rows(info), chunk_bytes(info)  # size: the chunk's own bytes
        rows = (max_bytes // max(size, 1)) * chunk
        if rows < 1:
            raise ConfigError(
                f"a memory budget of {format_bytes(max_bytes)} cannot hold one chunk of {split!r} "
                f"({chunk} rows of {format_bytes(row)}); raise it to at least {format_bytes(size)}"
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
            short = [u for u in units if u[1] - u[0] != chunk]  # a short last chunk stays last
            units = [full[i] for i in rng.permutation(len(full))] + short
        per_block, where, seen = rows // chunk, f"{self.path}:/{name}/{key}", None
        for b in range(0, len(units), per_block):
            group = units[b : b + per_block]
            with self._open() as f, _readable(f, self.path, name, key, group[0][0], group[-1][1]):
                seen = same_split(f, f"{name}/{key}", seen, where)
                sg = f[name][key]
                if shuffle:
                    X = np.concatenate([sg["features"][s:e] for s, e in group])
                    y = np.concatenate([sg["labels"][s:e] for s, e in group]).astype(np.int64)
                else:  # the chunks are consecutive: one read, no copy to join them
                    X = sg["features"][group[0][0] : group[-1][1]]
                    y = sg["labels"][group[0][0] : group[-1][1]].astype(np.int64)
                validate_labels(y, len(read_names(sg, "class_names", where)), where)
            if shuffle:
                order = rng.permutation(len(y))
                X, y = X[order], y[order]
            yield X, y

    def paths(
        self,
        split: str,
        extractor: str | None = None,
        *,
        augmented: bool = False,
        start: int = 0,
        stop: int | None = None,
    ) -> list[str]:
        """Image paths (relative to the split's source_root) in row order (``augmented``: of its copies); rows from
        ``start`` to ``stop`` (default: all), counted as a Python slice counts them (``start=-3``: the last three)."""
        with self._open() as f:
            sg, commit = open_split(f, self.path, self.resolve(extractor), split, augmented)
            start, stop, _ = slice(start, stop).indices(commit.rows)  # a negative start stepped through h5py (57 #6)
            return read_paths(sg["paths"], stop, start)

    def listing(self, split: str, extractor: str | None = None) -> list[tuple[str, int, int, int]]:
        """(path, label, size, mtime_ns) of every image listed when the split was started: tells whether the folder changed since."""
        name = self.resolve(extractor)
        with self._open() as f:
            return stored_listing(open_split(f, self.path, name, split)[0])

    def failures(self, split: str, extractor: str | None = None) -> list[tuple[str, str]]:
        """(path, reason) of each image that could not be read."""
        name = self.resolve(extractor)
        with self._open() as f:
            sg, commit = open_split(f, self.path, name, split)
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
            return describe(f, self.path)


for _name in (  # a user's calls: one line each (54 #5, 57 #6)
    "load iter_batches block_lengths labels paths listing failures nbytes split_info class_names splits metadata "
    "copies copy_problems"
).split():
    setattr(FeatureStore, _name, checked(getattr(FeatureStore, _name)))
