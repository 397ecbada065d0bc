"""Writing the HDF5 store: one writer per store, batch appends committed one by one, resume by truncation.

The writer opens the file only for the length of one append (resize, write, flush, update the
committed counts, flush, close), so a reader can open it between batches and a killed writer leaves at
most one uncommitted tail, which the next run truncates.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from featstore.errors import StoreBusyError, StoreError
from featstore.images.listing import path_to_store
from featstore.provenance import (
    FORMAT_VERSION,
    attrs_of,
    check_format_version,
    plain,
    refuse_other_extractor,
    refuse_resume,
    validate_extractor,
)
from featstore.store.compact import compact, hard_group  # noqa: F401 (re-exported: extract and augcopies call writer.compact)
from featstore.store.layout import ROW_DATASETS, read_commit, validate_split
from featstore.store.reader import STR, hard_groups, locking_default, open_h5, refuse_foreign
from featstore.units import format_bytes
from featstore.version import __version__

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
SPACE_MARGIN = 1 << 20  # room kept for HDF5 metadata on top of the data itself


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, locking=None) -> Iterator[None]:
    """Hold ``<store>.lock`` for a whole extraction: a second writer gets a clear error, not a corrupt file.

    Uses the ``filelock`` package (flock on POSIX, msvcrt on Windows). The lock file holds the writer's pid and
    is removed when the lock is released, also after a failure; a SIGKILLed writer leaves it behind, unlocked
    and harmless (the next run takes it over).
    """
    from filelock import FileLock, Timeout

    locking = locking_default() if locking is None else locking
    if locking is False or os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        yield  # --no-locking: the filesystem's locks are not trusted; one writer per store is up to the user
        return
    lock_path = f"{path}.lock"
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise StoreBusyError(
            f"another featstore process (pid {lock_holder(path) or 'unknown'}) is writing to {path}; wait for "
            f"it to finish, or write to another --store"
        ) from None
    except OSError as exc:
        raise StoreError(
            f"cannot lock {lock_path} ({exc}); make the folder writable, or on a filesystem without working locks run "
            f"`featstore --no-locking ...` (one writer per store is then up to you)"
        ) from exc
    pid_path = f"{lock_path}.pid"
    try:
        _write_pid(pid_path)
        yield
    finally:
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        with contextlib.suppress(OSError):
            if not os.path.islink(pid_path):
                os.unlink(pid_path)
            if fd is not None and os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                os.unlink(
                    lock_path
                )  # still ours and still locked: a process that opens it now finds it gone and makes its own
        lock.release()


def _write_pid(pid_path: str) -> None:
    """Record the writer's pid beside the lock; never through a link planted there (O_NOFOLLOW, a fresh file)."""
    with contextlib.suppress(OSError):
        if os.path.islink(pid_path) or (os.path.exists(pid_path) and not os.path.isfile(pid_path)):
            return  # not ours: leave it; `info` then cannot name the writer, nothing else changes
        fd = os.open(pid_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))


def lock_holder(path: str | os.PathLike) -> int | None:
    """Pid of the process writing the store now, from ``<store>.lock.pid`` (None when no live writer is recorded)."""
    try:
        pid = int(Path(f"{path}.lock.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)  # signal 0: is it alive?
    except ProcessLookupError:
        return None  # a killed writer's leftover
    except (PermissionError, OSError):
        pass  # alive but not ours (or not checkable here)
    return pid


def ensure_space(path, nbytes: int, committed: int = 0) -> None:
    """Refuse to start a write that the store's filesystem has no room for (a full disk mid-write is worse)."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    free = shutil.disk_usage(folder).free
    if free < nbytes + SPACE_MARGIN:
        raise StoreError(
            f"not enough disk space for {path}: the next write needs about {format_bytes(nbytes + SPACE_MARGIN)}, "
            f"{format_bytes(free)} are free. Free some space or choose another --store, then re-run the same command"
            + (f": the {committed} rows already committed are kept and it resumes." if committed else ".")
        )


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a store in a missing or read-only folder, or a file that is not HDF5."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise StoreError(
            f"folder {parent} for store {path} does not exist; create it (mkdir -p {parent}) or choose another --store"
        )
    if path.exists():
        if not os.access(path, os.W_OK):
            raise StoreError(
                f"store {path} is read-only; make it writable (chmod u+w {path}) or choose another --store"
            )
        if not h5py.is_hdf5(path):
            raise StoreError(f"{path} exists and is not an HDF5 file; choose another --store (nothing was written)")
    elif not os.access(parent, os.W_OK):
        raise StoreError(f"folder {parent} is read-only; cannot create store {path}. Choose a writable --store")
    return path


def chunk_rows(feature_shape: Sequence[int], dtype: str) -> int:
    """Rows per chunk so that one chunk holds about 1 MiB."""
    row_bytes = int(np.prod(feature_shape)) * np.dtype(dtype).itemsize
    return max(1, CHUNK_BYTES // max(row_bytes, 1))


COMPRESSIONS = ("none", "lzf", "gzip")


def stored_listing(sg: h5py.Group) -> list[tuple[str, int, int, int]]:
    """The (path, label, size, mtime_ns) entries recorded when the split was started ([] for a split without them).

    The listing's layout is checked by :func:`layout.validate_split`, which every caller runs first.
    """
    from featstore.store.reader import read_paths

    if "listing" not in sg:
        return []
    lg = sg["listing"]
    n = lg["paths"].shape[0]
    return list(
        zip(read_paths(lg["paths"], n), lg["labels"][:].tolist(), lg["sizes"][:].tolist(), lg["mtimes_ns"][:].tolist())
    )


def refuse_changed_listing(sg: h5py.Group, listing, split: str, name: str, path) -> None:
    """Refuse to treat a split as done (or resume it) when its images changed since it was started: say what changed."""
    if plain(sg.attrs.get("listing_sha256")) == listing.digest():
        return
    summary = listing.diff(stored_listing(sg)).summary()
    raise StoreError(
        f"the images of split {split!r} changed since {name!r}/{split} in {path} was extracted: {summary}. "
        f"Re-extract it with --overwrite."
    )


def prepare_split(
    path,
    name: str,
    split: str,
    attrs: dict,
    split_attrs: dict,
    overwrite: bool,
    locking=None,
    listing=None,
    extra: tuple[str, ...] = (),
) -> int | None:
    """Create or reopen ``/<name>/<split>`` for writing; returns the image index to start from, or None if complete.

    ``attrs`` are the extractor's provenance; ``split_attrs`` hold class_names, source_root, n_images,
    n_ignored and the resume keys; ``listing`` (an ImageListing) is recorded under ``listing/`` and compared
    on every later run. Refuses a store whose extractor of the same name has another fingerprint, a split
    whose classes differ from the other splits', a complete split whose images changed, and a partial
    split started with other images or options. ``extra`` names more int32 row datasets (``copy`` of augmented
    copies); ``split`` may be a path inside the extractor group (``train/augmented``).
    """
    class_names = split_attrs["class_names"]
    with open_h5(path, "a", locking=locking) as f:
        refuse_foreign(f, path)
        if "format_version" not in f.attrs:
            if len(f):
                raise StoreError(
                    f"{path} is an HDF5 file without featstore's format_version: not a featstore store. "
                    f"Choose another --store (nothing was written)."
                )
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["featstore_version"] = __version__
        check_format_version(f.attrs["format_version"], path)
        if name in f and "fingerprint" not in f[name].attrs and not len(f[name]):
            del f[name]  # a run killed while creating the extractor group: start the group again
        if name in f:
            if name not in hard_groups(f):
                raise StoreError(f"{path}:/{name} is not a group of this file; choose another --name or --store")
            old = attrs_of(f[name])
            validate_extractor(old, f"{path}:/{name}")
            refuse_other_extractor(old, attrs, path, name)
            grp = f[name]
        else:
            grp = f.create_group(name)
            for key, value in attrs.items():
                grp.attrs[key] = np.array(value, dtype=STR) if _is_str_list(value) else value
        for other in hard_groups(grp):
            if other == split or "commit" not in grp[other].attrs:
                continue
            theirs = plain(grp[other].attrs.get("class_names", []))
            if theirs != class_names:
                raise StoreError(
                    f"classes of split {split!r} differ from split {other!r} of {name!r}: "
                    f"{split} has {class_names}, {other} has {theirs}. Every split must have the same class folders."
                )
        if split in grp and (overwrite or "commit" not in grp[split].attrs):
            del grp[split]  # replaced on request, or a run killed while creating the split: nothing was committed
        if split in grp:
            sg = grp[split]
            where = f"{path}:/{name}/{split}"
            commit = validate_split(sg, where, attrs)
            if listing is not None:
                refuse_changed_listing(sg, listing, split, name, path)
            if plain(sg.attrs["complete"]):
                if commit.images_done != int(plain(sg.attrs["n_images"])):
                    raise StoreError(
                        f"{where} is marked complete with {commit.images_done} of {plain(sg.attrs['n_images'])} "
                        f"images done: the store is damaged. Re-extract it with --overwrite."
                    )
                return None
            refuse_resume(attrs_of(sg), split_attrs, split, name, path)
            _truncate(sg, commit.rows, commit.failed)
            f.flush()
            return commit.images_done
        _create_split(grp, split, attrs, split_attrs, listing, extra)
        f.flush()
        return 0


def _create_split(
    grp: h5py.Group, split: str, attrs: dict, split_attrs: dict, listing, extra: tuple[str, ...] = ()
) -> None:
    """The split's empty datasets, its listing and attributes (commit zero, not complete)."""
    shape = tuple(attrs["feature_shape"])
    sg = grp.create_group(split)
    comp = None if split_attrs["compression"] == "none" else split_attrs["compression"]
    # Compressed chunks are written once each: one chunk per committed batch (a rewritten compressed chunk leaves its old
    # space behind, and a resume would have to free chunks a killed writer allocated). Uncompressed: ~1 MiB chunks.
    rows = int(split_attrs["batch_size"]) if comp else chunk_rows(shape, attrs["dtype"])
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
        entries = listing.entries()
        lg = sg.create_group("listing")
        lg.create_dataset("paths", data=np.array([path_to_store(e[0]) for e in entries], dtype=object), dtype=STR)
        for key, col, dt in (("labels", 1, "int32"), ("sizes", 2, "int64"), ("mtimes_ns", 3, "int64")):
            lg.create_dataset(key, data=np.array([e[col] for e in entries], dtype=dt))
    for key, value in split_attrs.items():
        sg.attrs[key] = np.array(value, dtype=STR) if key == "class_names" else value
    sg.attrs["commit"] = np.zeros(3, dtype=np.int64)  # committed_rows, n_failed, images_done
    sg.attrs["complete"] = False
    sg.attrs["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")


def interrupted(path, names: list[str], split: str, locking=None) -> bool:
    """True when one of the extractor groups' ``split`` exists and is not complete: a run of it was interrupted.

    Only hard-linked groups are visited; the caller has refused a store with links out of it already. ``split`` may be a
    path inside the extractor group (``train/augmented``).
    """
    if not Path(path).exists():
        return False
    with open_h5(path, "r", locking=locking) as f:
        for name in names:
            sg = hard_group(f, f"{name}/{split}")
            if sg is not None:
                complete = sg.attrs.get("complete")
                # a partial split with committed state; a damaged one is left to prepare_split's check, which names the
                # problem, and one whose creation was interrupted (no commit yet) is simply started again
                if isinstance(complete, (bool, np.bool_)) and not complete and "commit" in sg.attrs:
                    validate_split(sg, f"{path}:/{name}/{split}")
                    return True
    return False


def _is_str_list(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)


def _truncate(sg: h5py.Group, rows: int, failed: int) -> None:
    """Drop an uncommitted tail left by a killed writer."""
    for key in (k for k in ROW_DATASETS if k in sg):
        if sg[key].shape[0] != rows:
            logger.info("truncating %s/%s from %d to %d committed rows", sg.name, key, sg[key].shape[0], rows)
            sg[key].resize(rows, axis=0)
    for key in ("paths", "reasons"):
        sg["failed"][key].resize(failed, axis=0)


def append(
    path,
    name: str,
    split: str,
    features: np.ndarray,
    labels: np.ndarray,
    paths: list[str],
    failures: list[tuple[str, str]],
    images_done: int,
    locking=None,
    extra: dict | None = None,
) -> None:
    """Append one batch and commit it: data first, then the committed counts, then flush (``extra``: more row datasets)."""
    try:
        with open_h5(path, "a", locking=locking) as f:
            sg = f[name][split]
            c = read_commit(sg, f"{path}:/{name}/{split}")
            n0, k0 = c.rows, c.failed
            feats = sg["features"]
            if len(labels):
                ensure_space(
                    path,
                    chunk_rows(feats.shape[1:], feats.dtype) * int(np.prod(feats.shape[1:])) * feats.dtype.itemsize
                    + features.nbytes,
                    n0,
                )
            n1 = n0 + len(labels)
            if len(labels):
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
                    sg["failed"][key][k0:k1] = np.array([path_to_store(item[col]) for item in failures], dtype=object)
            f.flush()  # the data is down before the commit record that makes it count
            sg.attrs["commit"] = np.array([n1, k0 + len(failures), images_done], dtype=np.int64)
            f.flush()
    except (OSError, RuntimeError) as exc:
        if "errno = 28" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
            raise StoreError(
                f"disk full while writing {path}. Free some space, then re-run the same command: "
                f"committed rows are kept and it resumes from the last committed batch."
            ) from exc
        raise StoreError(
            f"writing {path} failed: {exc}. Committed rows are kept; re-run the same command to resume"
        ) from exc


def finish(path, name: str, split: str, seconds: float, locking=None) -> None:
    """Mark a split complete."""
    with open_h5(path, "a", locking=locking) as f:
        sg = f[name][split]
        sg.attrs["complete"] = True
        sg.attrs["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sg.attrs["seconds"] = round(float(seconds), 3)
        f.flush()


def synthetic_attrs(feature_shape: Sequence[int], dtype: str = "float32", model: str = "synthetic") -> dict:
    """Provenance for features that did not come from a backbone (benchmarks, tests, imported arrays); fingerprinted."""
    from featstore.provenance import fingerprint

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

    Example (a synthetic split for a benchmark)::

        write_arrays("bench.h5", "synthetic", "train", X, y, ["a", "b"])
    """
    attrs = attrs or synthetic_attrs(X.shape[1:], str(X.dtype))
    split_attrs = {
        "class_names": list(class_names),
        "source_root": "",
        "n_images": len(y),
        "n_ignored": 0,
        "listing_sha256": f"arrays:{len(y)}",
        "batch_size": batch_size,
        "compression": compression,
    }
    prepare_split(path, name, split, attrs, split_attrs, overwrite=True, locking=locking)
    for i in range(0, len(y), batch_size):
        j = min(i + batch_size, len(y))
        append(
            path,
            name,
            split,
            X[i:j],
            np.asarray(y[i:j], dtype=np.int32),
            [f"{split}/{k}" for k in range(i, j)],
            [],
            j,
            locking,
        )
    finish(path, name, split, 0.0, locking)
