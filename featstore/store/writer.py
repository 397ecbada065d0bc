"""Writing the HDF5 store: one split of one or several extractor groups, committed batch by batch, resumed by truncation.

A :class:`SplitWriter` writes one split key (``train``, or its copies ``train/augmented``) of the extractor groups one
pass fills (one per cut layer). The command holds the writer's lock (``<store>.lock``) from start to end; the HDF5
file is opened per step: the checks before any work (:mod:`featstore.store.survey`), the preparation of every group
(:meth:`SplitWriter.prepare`), each committed batch for all groups (:meth:`SplitWriter.commit`: resize, write, flush,
update each group's commit record, flush, close), and the end (:meth:`SplitWriter.finish`), one opening each. A
reader gets in between batches; a killed writer leaves at most one uncommitted tail per group (the next run truncates).

>>> SplitWriter(StoreFile("features.h5"), ["vgg16"], "train").prepare([attrs], split_attrs, overwrite=False)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import logging
import numbers
import secrets
import time
from collections.abc import Sequence

import h5py
import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.images.listing import path_to_store
from featstore.provenance import (
    FORMAT_VERSION,
    LAYOUT_CHECKED,
    fingerprint,
    refuse_changed_listing,
    refuse_other_extractor,
    validate_extractor,
    validate_name,
)
from featstore.store.attr_values import bounded_attrs, read_attr
from featstore.store.compact import compact
from featstore.store.digests import RowsDigest
from featstore.store.layout import (
    ROW_DATASETS,
    STR,
    check_root,
    group_names,
    hard_groups,
    listing_columns,
    read_commit,
    split_summary,
    validate_split,
)
from featstore.store.locking import (  # noqa: F401 (StoreFile, lock_holder, writer_lock re-exported: the CLI, report, tests)
    DENSE_ATTRS_LIBVER,
    DENSE_ATTRS_NAMES,
    StoreFile,
    lock_holder,
    writer_lock,
)
from featstore.store.resume import refuse_resume
from featstore.store.space import check_writable, ensure_space, refuse_unstorable_strings  # noqa: F401 (re-exported)
from featstore.store.strings import MAX_REASON_BYTES, shown_list
from featstore.version import __version__

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = (1 << 32) - 1  # HDF5 refuses a chunk of 4 GiB or more ("chunk size must be < 4GB")
COMPRESSIONS = ("none", "lzf", "gzip")


def chunk_rows(feature_shape: Sequence[int], dtype: str) -> int:
    """Rows per chunk so that one chunk holds about 1 MiB."""
    row_bytes = int(np.prod(feature_shape)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


def feature_chunk_rows(feature_shape: Sequence[int], dtype: str, batch_size: int, compressed: bool) -> int:
    """Rows per chunk of a split's features: ~1 MiB uncompressed; compressed, one batch (each chunk written once), or
    the largest divisor of the batch whose chunk stays under HDF5's 4 GiB (still written once: commits stay aligned).

    >>> feature_chunk_rows((1024, 1024, 64), "float32", 32, compressed=True)   # 256 MiB rows: 8 per chunk, not 32
    8
    """
    refuse_huge_rows(feature_shape, dtype)
    if not compressed:
        return chunk_rows(feature_shape, dtype)
    fits = MAX_CHUNK_BYTES // (int(np.prod(feature_shape)) * np.dtype(dtype).itemsize)
    return next(d for d in range(min(batch_size, fits), 0, -1) if batch_size % d == 0)


def refuse_huge_rows(feature_shape: Sequence[int], dtype: str, name: str = "") -> None:
    """Refuse, before anything is written, features whose one row cannot fit in one HDF5 chunk (4 GiB)."""
    row_bytes = int(np.prod(feature_shape)) * np.dtype(dtype).itemsize
    if row_bytes > MAX_CHUNK_BYTES:
        raise StoreError(
            f"one row of {name or 'these'} features is {tuple(feature_shape)} {dtype}, {row_bytes / 2**30:.1f} GiB: "
            f"more than one HDF5 chunk can hold (4 GiB), so it cannot be stored. Cut at a later --layer, add "
            f"--pooling avg, or use a smaller --image-size or --dtype float16"
        )


class SplitWriter:
    """Writes one split key of the extractor groups ``names`` of one store, batch by batch.

    ``key`` is a split (``train``) or a path inside the extractor group (``train/augmented``); ``extra`` names more
    int32 row datasets (``copy`` of augmented copies). After :meth:`prepare`, ``starts[i]`` is the image index group
    ``i`` resumes from; a batch is committed only to the groups it is past the start of, so a group that committed one
    batch more than another before a kill is not written twice.
    """

    def __init__(self, store: StoreFile, names: list[str], key: str, extra: tuple[str, ...] = ()):
        self.store, self.names, self.key, self.extra = store, list(names), key, extra
        self.starts: list[int] = [0] * len(self.names)

    @property
    def start(self) -> int:
        """The first image some group still needs."""
        return min(self.starts)

    def compact(self, overwrite: bool = False) -> None:
        """Rewrite the store without the uncommitted tails a killed writer left (how every resume starts); with
        ``overwrite``, without this split at all (it is replaced next, so nothing of it is read)."""
        compact(self.store, frozenset((n, self.key) for n in self.names) if overwrite else frozenset())

    def prepare(self, attrs: list[dict], split_attrs: dict, overwrite: bool, listing=None) -> list[int]:
        """Create or reopen the split in every group, in one opening; returns (and keeps) each group's start.

        ``attrs[i]`` is group i's provenance; ``split_attrs`` hold class_names, source_root, n_images, n_ignored and the
        resume keys; ``listing`` (an ImageListing) is recorded under ``listing/`` and compared on every later run. A
        group whose split is complete starts at ``n_images``. Refuses a store whose extractor of the same
        name has another fingerprint, a split whose classes differ from the other splits', a complete split whose
        images changed, and a partial split started with other images or options.
        """
        total = int(split_attrs["n_images"])
        path = self.store.path
        many = len(split_attrs.get("class_names", ())) > DENSE_ATTRS_NAMES
        with self.store.open("a", libver=DENSE_ATTRS_LIBVER if many else None) as f:
            if not check_root(f, path):  # a new store
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["featstore_version"] = __version__
            starts = []
            for n, a in zip(self.names, attrs):
                starts.append(_prepare_group(f, path, n, self.key, a, split_attrs, overwrite, listing, self.extra))
                f.flush()  # each group's new or truncated split is down before the next one is touched
        self.starts = [total if s is None else s for s in starts]
        return self.starts

    def commit(
        self,
        features: list[np.ndarray] | None,
        labels: np.ndarray,
        paths: list[str],
        failures: list[tuple[str, str]],
        images_done: int,
        extra: dict | None = None,
    ) -> None:
        """Append one batch to every group past its start and commit it, in one opening: per group the data first, then
        its committed counts, each followed by a flush. ``features[i]`` is group i's (None: a batch of failures only)."""
        path = self.store.path
        try:
            with self.store.open("a") as f:
                for i, (name, start) in enumerate(zip(self.names, self.starts)):
                    if images_done > start:
                        _append(
                            f,
                            path,
                            name,
                            self.key,
                            None if features is None else features[i],
                            labels,
                            paths,
                            failures,
                            images_done,
                            extra,
                        )
        except (OSError, RuntimeError) as exc:
            if "errno = 28" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
                raise StoreError(
                    f"disk full while writing {path}. Free some space, then re-run the same command without --overwrite"
                    f": committed rows are kept and it resumes from the last committed batch (--overwrite starts again)."
                ) from exc
            raise StoreError(
                f"writing {path} failed: {exc}. Committed rows are kept; re-run the command without --overwrite to resume"
            ) from exc

    def finish(self, seconds: float, report: str | None = None, attrs: dict | None = None) -> dict:
        """Mark the split complete in every group (one opening), with ``attrs`` set on it first (what is known only
        once every row is written); returns the split summary of group ``report`` (default: the first), with its
        extractor's fingerprint under ``extractor_fingerprint``."""
        report = report or self.names[0]
        with self.store.open("a") as f:
            for name in self.names:
                sg = f[name][self.key]
                for key, value in (attrs or {}).items():
                    sg.attrs[key] = value
                sg.attrs["complete"] = True
                sg.attrs["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                sg.attrs["seconds"] = round(float(seconds), 3)
            f.flush()
            sg = f[report][self.key]
            summary = split_summary(sg, read_commit(sg, f"{self.store.path}:/{report}/{self.key}"))
            summary["extractor_fingerprint"] = read_attr(f[report], "fingerprint", self.store.path, 1, None)
        return summary


def _prepare_group(f, path, name, split, attrs, split_attrs, overwrite, listing, extra) -> int | None:
    """prepare() for one group in the open file: the image index to start from, or None if complete."""
    class_names = split_attrs["class_names"]
    if name in f and "fingerprint" not in f[name].attrs and not len(f[name]):
        del f[name]  # a run killed while creating the extractor group: start the group again
    if name in f:
        if name not in hard_groups(f):
            raise StoreError(f"{path}:/{name} is not a group of this file; choose another --name or --store")
        old = bounded_attrs(f[name], f"{path}:{f[name].name}")
        validate_extractor(old, f"{path}:/{name}")
        refuse_other_extractor(old, attrs, path, name)
        grp = f[name]
        grp.attrs[LAYOUT_CHECKED] = attrs.get(LAYOUT_CHECKED, True)  # the fingerprint is this featstore's (61 #3)
    else:
        grp = f.create_group(name)
        for key, value in attrs.items():
            grp.attrs[key] = np.array(value, dtype=STR) if _str_list(value) else value
    for other in hard_groups(grp):
        if other == split or "commit" not in grp[other].attrs:
            continue
        theirs = read_attr(grp[other], "class_names", f"{path}:/{name}/{other}", default=[])
        if theirs != class_names:
            raise StoreError(
                f"classes of split {split!r} differ from split {other!r} of {name!r}: {split} has {shown_list(class_names)}, "
                f"{other} has {shown_list(theirs)}. Every split must have the same class folders."
            )
    if split in grp and (overwrite or "commit" not in grp[split].attrs):
        del grp[split]  # replaced on request, or a run killed while creating the split: nothing was committed
    if split not in grp:
        _create_split(grp, split, attrs, split_attrs, listing, extra)
        return 0
    sg = grp[split]
    where = f"{path}:/{name}/{split}"
    commit = validate_split(sg, where, attrs)
    if listing is not None:
        digest = read_attr(sg, "listing_sha256", where, 1, None)
        refuse_changed_listing(digest, listing, lambda: listing_columns(sg), split, name, path)
    if read_attr(sg, "complete", where, most=1):
        if commit.images_done != (n_images := read_attr(sg, "n_images", where, most=1)):
            raise StoreError(
                f"{where} is marked complete with {commit.images_done} of {n_images} "
                f"images done: the store is damaged. Re-extract it with --overwrite (overwrite=True in Python)."
            )
        return None
    refuse_resume(bounded_attrs(sg, f"{path}:{sg.name}"), split_attrs, split, name, path)
    _truncate(sg, commit.rows, commit.failed)
    return commit.images_done


def _create_split(
    grp: h5py.Group, split: str, attrs: dict, split_attrs: dict, listing, extra: tuple[str, ...] = ()
) -> None:
    """The split's empty datasets, its listing and attributes (commit zero, not complete)."""
    shape = tuple(attrs["feature_shape"])
    comp = None if split_attrs["compression"] == "none" else split_attrs["compression"]
    # Compressed chunks are written once each: one per committed batch, or a divisor of it (a rewritten compressed chunk
    # leaves its old space behind; a resume would have to free a killed writer's chunks). Uncompressed: ~1 MiB chunks.
    rows = feature_chunk_rows(shape, attrs["dtype"], int(split_attrs["batch_size"]), comp is not None)
    sg = grp.create_group(split)
    try:
        _create_datasets(sg, shape, rows, comp, attrs, split_attrs, listing, extra)
    except BaseException:
        del grp[split]  # no half-made split (check would report it as damaged)
        raise


def _create_datasets(sg, shape, rows, comp, attrs, split_attrs, listing, extra) -> None:
    """The datasets, listing and attributes of a new split group."""
    sg.create_dataset(
        "features",
        shape=(0, *shape),
        maxshape=(None, *shape),
        dtype=attrs["dtype"],
        chunks=(rows, *shape),
        compression=comp,
    )
    sg.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int32", chunks=(max(rows, 4096),))
    sg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
    for key in extra:
        sg.create_dataset(key, shape=(0,), maxshape=(None,), dtype="int32", chunks=(max(rows, 4096),))
    fg = sg.create_group("failed")
    fg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
    fg.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
    if listing is not None:
        lg = sg.create_group("listing")  # column by column: no tuple per row
        n = len(listing.items)
        lg.create_dataset("paths", data=np.array([path_to_store(p) for p, _ in listing.items], dtype=object), dtype=STR)
        lg.create_dataset("labels", data=np.fromiter((label for _, label in listing.items), np.int32, n))
        lg.create_dataset("sizes", data=np.array(listing.sizes, dtype=np.int64).reshape(n))
        lg.create_dataset("mtimes_ns", data=np.array(listing.mtimes_ns, dtype=np.int64).reshape(n))
    for key, value in split_attrs.items():
        sg.attrs[key] = np.array(value, dtype=STR) if key == "class_names" else value
    sg.attrs["commit"] = np.zeros(3, dtype=np.int64)  # committed_rows, n_failed, images_done
    sg.attrs["complete"] = False
    sg.attrs["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    sg.attrs["split_id"] = secrets.token_hex(8)  # each (re)start a new one: a reader notices a split replaced meanwhile


def _truncate(sg: h5py.Group, rows: int, failed: int) -> None:
    """Drop an uncommitted tail left by a killed writer."""
    for key in (k for k in ROW_DATASETS if k in sg):
        if sg[key].shape[0] != rows:
            logger.info("truncating %s/%s from %d to %d committed rows", sg.name, key, sg[key].shape[0], rows)
            sg[key].resize(rows, axis=0)
    for key in ("paths", "reasons"):
        sg["failed"][key].resize(failed, axis=0)


def _append(f, path, name, split, features, labels, paths, failures, images_done, extra) -> None:
    """One group's part of a commit: its rows and failure records, flushed, then its commit record, flushed."""
    sg = f[name][split]
    c = read_commit(sg, f"{path}:/{name}/{split}")
    n0, k0 = c.rows, c.failed
    n1 = n0 + len(labels)
    if len(labels):
        feats = sg["features"]
        row_bytes = int(np.prod(feats.shape[1:])) * feats.dtype.itemsize
        ensure_space(path, chunk_rows(feats.shape[1:], feats.dtype) * row_bytes + features.nbytes, n0)
        rows = [
            ("features", features),
            ("labels", labels),
            ("paths", np.array([path_to_store(p) for p in paths], dtype=object)),
        ]
        for key, values in rows + list((extra or {}).items()):
            sg[key].resize(n1, axis=0)
            sg[key][n0:n1] = values
    if failures:
        k1 = k0 + len(failures)
        for key, col in (("paths", 0), ("reasons", 1)):
            sg["failed"][key].resize(k1, axis=0)
            cut = MAX_REASON_BYTES if col else None  # a reason is read back only up to that (strings.refuse_long)
            sg["failed"][key][k0:k1] = np.array([path_to_store(item[col])[:cut] for item in failures], dtype=object)
    f.flush()  # the data is down before the commit record that makes it count
    sg.attrs["commit"] = np.array([n1, k0 + len(failures), images_done], dtype=np.int64)
    f.flush()


def synthetic_attrs(feature_shape: Sequence[int], dtype: str = "float32", model: str = "synthetic") -> dict:
    """Provenance for features that did not come from a backbone (benchmarks, tests, imported arrays); fingerprinted."""
    attrs = {
        "model": model,
        "layer": "none",
        "input_size": 0,
        "pooling": "none",
        "preprocess": "none",
        "resize": "none",
        "dtype": dtype,
        "compute_dtype": dtype,
        "feature_shape": [int(d) for d in feature_shape],
        "weights": "none",
        "weights_digest": "none",
    }
    attrs["fingerprint"] = fingerprint(attrs)
    return attrs


def write_arrays(
    path,
    name: str,
    split: str,
    X: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    *,
    attrs: dict | None = None,
    batch_size: int = 256,
    compression: str = "none",
    locking=None,
) -> None:
    """Write in-memory features ``X`` and labels ``y`` as a complete split, batch by batch like an extraction.

    ``path`` is the store (a path, or a :class:`~featstore.store.locking.StoreFile`). Example (a synthetic split for a
    benchmark)::

        write_arrays("bench.h5", "synthetic", "train", X, y, ["a", "b"])

    Every argument is checked before the store is opened (one ConfigError naming it; nothing written): ``name`` and
    ``split`` as extract checks them, ``X`` float32 or float16 of 2 or more dimensions, none of size 0 but the rows;
    ``y`` 1-D, one whole number in ``[0, len(class_names))`` per row of ``X``.
    """
    y = _checked_arrays(X, y, class_names, attrs, batch_size, compression)  # all before the store is opened
    validate_name("split", split)
    store = path if isinstance(path, StoreFile) else StoreFile(path, locking)
    validate_name("extractor", name, group_names(store) if "," in name else ())  # 'a/b': a damaged group
    attrs = attrs or synthetic_attrs(X.shape[1:], str(X.dtype))
    split_attrs = {
        "class_names": list(class_names),
        "source_root": "",
        "n_images": len(y),
        "n_ignored": 0,
        "listing_sha256": f"arrays:{len(y)}",  # no image files: the rows' own digest is rows_sha256 (finish)
        "batch_size": batch_size,
        "compression": compression,
    }
    with (
        contextlib.nullcontext() if store.locked else store.lock(split, [name])
    ):  # one writer; every opening the one checked
        w = SplitWriter(store, [name], split)
        w.prepare([attrs], split_attrs, overwrite=True)
        digest = RowsDigest(X.shape[1:], str(X.dtype))
        for i in range(0, len(y), batch_size):
            j = min(i + batch_size, len(y))
            xb, yb = X[i:j], y[i:j]
            digest.update(xb, yb)
            w.commit([xb], yb, [f"{split}/{k}" for k in range(i, j)], [], j)
        w.finish(0.0, attrs={"rows_sha256": digest.hexdigest()})


def _checked_arrays(X, y, class_names, attrs, batch_size, compression) -> np.ndarray:
    """write_arrays' arguments checked (a failure inside HDF5 would leave a damaged group or an "interrupted write" that
    no extract can resume): ``y`` as int32, or one ConfigError naming the argument and the fix."""
    if np.dtype(getattr(X, "dtype", None)) not in (np.float16, np.float32):  # every reader refuses others as damage
        raise ConfigError(
            f"write_arrays stores float32 or float16 features, not {getattr(X, 'dtype', type(X).__name__)}: pass "
            f"X.astype(np.float32)"
        )
    shape = tuple(X.shape)
    if len(shape) < 2 or 0 in shape[1:]:
        raise ConfigError(f"write_arrays needs X of shape (rows, values, ...) with no size 0 but rows, not {shape}")
    refuse_unstorable_strings(class_names, attrs)  # what HDF5 or every reader (store/strings.py) would refuse
    if "" in class_names or len(set(class_names)) < len(class_names):  # every reader refuses the split as damaged
        raise ConfigError(f"write_arrays needs distinct, non-empty class names, not {shown_list(class_names)}")
    labels = np.asarray(y)
    if labels.shape != shape[:1]:
        raise ConfigError(f"write_arrays needs y of shape ({shape[0]},), one label per row of X, not {labels.shape}")
    bad = None if labels.dtype.kind != "f" else ~np.isfinite(labels) | (labels != np.round(labels))
    if labels.dtype.kind not in "iubf" or (bad is not None and bad.any()):
        at = f"{labels[bad.argmax()].item()!r} at row {bad.argmax()}" if bad is not None else str(labels.dtype)
        raise ConfigError(f"write_arrays needs labels y that are class indices 0, 1, ..., not {at}: pass whole numbers")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ConfigError(
            f"write_arrays needs labels y in 0..{len(class_names) - 1} (indices into the {len(class_names)} class "
            f"names), not {labels.min()}..{labels.max()}: pass one class name per label"
        )
    want = (attrs or {}).get("feature_shape"), (attrs or {}).get("dtype")
    if attrs and (tuple(want[0] or shape[1:]) != shape[1:] or str(want[1] or X.dtype) != str(X.dtype)):
        raise ConfigError(f"write_arrays: attrs say features {want}, X is {shape[1:]} {X.dtype}; make them agree")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(f"write_arrays needs batch_size a whole number of at least 1, not {batch_size!r}")
    if compression not in COMPRESSIONS:
        raise ConfigError(f"write_arrays compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    return labels.astype(np.int32)


def _str_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)
