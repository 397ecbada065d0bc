"""Writing the HDF5 store: one writer per store, batch appends committed one by one, resume by truncation.

The writer opens the file only for the length of one append (resize, write, flush, update the
committed counts, flush, close), so a reader can open it between batches and a killed writer leaves at
most one uncommitted tail, which the next run truncates.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import StoreBusyError, StoreError
from .store import FINGERPRINT_FIELDS, FORMAT_VERSION, STR, _attrs, _plain, commit_state, describe_diff, locking_default, open_h5, refuse_foreign

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
SPACE_MARGIN = 1 << 20  # room kept for HDF5 metadata on top of the data itself


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, locking=None) -> Iterator[None]:
    """Hold ``<store>.lock`` for a whole extraction: a second writer gets a clear error, not a corrupt file."""
    locking = locking_default() if locking is None else locking
    if locking is False or os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE":
        yield  # --no-locking: the filesystem's locks are not trusted; one writer per store is up to the user
        return
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create the writer lock {lock_path}: {exc}. Make the folder writable or choose another --store") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StoreBusyError(
                f"another featstore process (pid {other}) is writing to {path}; wait for it to finish, "
                f"or write to another --store"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot lock {lock_path} ({exc}); on a filesystem without working locks run "
                             f"`featstore --no-locking ...` (one writer per store is then up to you)") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def ensure_space(path, nbytes: int, committed: int = 0) -> None:
    """Refuse to start a write that the store's filesystem has no room for (a full disk mid-write is worse)."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < nbytes + SPACE_MARGIN:
        raise StoreError(
            f"not enough disk space for {path}: the next write needs about {(nbytes + SPACE_MARGIN) / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB are free. Free some space or choose another --store, then re-run the same command"
            + (f": the {committed} rows already committed are kept and it resumes." if committed else ".")
        )


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


COMPRESSIONS = ("none", "lzf", "gzip")
# Split attributes that must be the same to resume a partial split (the rest describe the run).
RESUME_KEYS = {"listing_sha256": "set of images", "batch_size": "--batch-size", "compression": "--compression"}


def prepare_split(path, name: str, split: str, attrs: dict, split_attrs: dict, overwrite: bool, locking=None) -> int | None:
    """Create or reopen ``/<name>/<split>`` for writing; returns the image index to start from, or None if complete.

    ``attrs`` are the extractor's provenance; ``split_attrs`` hold class_names, source_root, n_images,
    n_ignored and the RESUME_KEYS. Refuses a store whose extractor of the same name has another
    fingerprint, a split whose classes differ from the other splits', and a partial split started with
    other images or options.
    """
    shape = tuple(attrs["feature_shape"])
    class_names = split_attrs["class_names"]
    with open_h5(path, "a", locking=locking) as f:
        refuse_foreign(f, path)
        if "format_version" not in f.attrs:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["featstore_version"] = __version__
        elif int(f.attrs["format_version"]) > FORMAT_VERSION:
            raise StoreError(f"store {path} has format_version {f.attrs['format_version']}; this featstore reads up to {FORMAT_VERSION}. Upgrade featstore.")
        if name in f and "fingerprint" not in f[name].attrs and not len(f[name]):
            del f[name]  # a run killed while creating the extractor group: start the group again
        if name in f:
            old = _attrs(f[name])
            if old.get("fingerprint") != attrs["fingerprint"]:
                raise StoreError(
                    f"store {path} already holds an extractor named {name!r} with fingerprint "
                    f"{str(old.get('fingerprint'))[:12]}, this run's is {attrs['fingerprint'][:12]} "
                    f"({describe_diff(old, attrs, FINGERPRINT_FIELDS)}). Use --name to store it under another name, or another --store."
                )
            grp = f[name]
        else:
            grp = f.create_group(name)
            for key, value in attrs.items():
                grp.attrs[key] = np.array(value, dtype=STR) if _is_str_list(value) else value
        for other in grp:
            if other == split or "commit" not in grp[other].attrs:
                continue
            theirs = _plain(grp[other].attrs.get("class_names", []))
            if theirs != class_names:
                raise StoreError(
                    f"classes of split {split!r} differ from split {other!r} of {name!r}: "
                    f"{split} has {class_names}, {other} has {theirs}. Every split must have the same class folders."
                )
        if split in grp and (overwrite or "commit" not in grp[split].attrs):
            del grp[split]  # replaced on request, or a run killed while creating the split: nothing was committed
        if split in grp:
            sg = grp[split]
            sa = _attrs(sg)
            if sa.get("complete"):
                return None
            changed = [f"set of images ({sa.get('n_images')} images then, {split_attrs['n_images']} now)" if key == "listing_sha256"
                       else f"{what} ({_plain(sa.get(key))} then, {split_attrs[key]} now)"
                       for key, what in RESUME_KEYS.items() if _plain(sa.get(key)) != split_attrs[key]]
            if changed:
                raise StoreError(
                    f"split {split!r} of {name!r} in {path} was started with another {', '.join(changed)}; resuming would "
                    f"mix two different runs. Re-run with the same options, or pass --overwrite to start it again"
                )
            rows, failed, done = commit_state(sg)
            _truncate(sg, rows, failed)
            f.flush()
            return done
        sg = grp.create_group(split)
        rows = chunk_rows(shape, attrs["dtype"])
        comp = None if split_attrs["compression"] == "none" else split_attrs["compression"]
        sg.create_dataset("features", shape=(0, *shape), maxshape=(None, *shape), dtype=attrs["dtype"], chunks=(rows, *shape), compression=comp)
        sg.create_dataset("labels", shape=(0,), maxshape=(None,), dtype="int32", chunks=(max(rows, 4096),))
        sg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(1024,))
        fg = sg.create_group("failed")
        fg.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        fg.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        for key, value in split_attrs.items():
            sg.attrs[key] = np.array(value, dtype=STR) if key == "class_names" else value
        sg.attrs["commit"] = np.zeros(3, dtype=np.int64)  # committed_rows, n_failed, images_done
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
    try:
        with open_h5(path, "a", locking=locking) as f:
            sg = f[name][split]
            n0, k0, _ = commit_state(sg)
            feats = sg["features"]
            if len(labels):
                ensure_space(path, chunk_rows(feats.shape[1:], feats.dtype) * int(np.prod(feats.shape[1:])) * feats.dtype.itemsize
                             + features.nbytes, n0)
            n1 = n0 + len(labels)
            if len(labels):
                for key, values in (("features", features), ("labels", labels), ("paths", np.array(paths, dtype=object))):
                    sg[key].resize(n1, axis=0)
                    sg[key][n0:n1] = values
            if failures:
                k1 = k0 + len(failures)
                for key, col in (("paths", 0), ("reasons", 1)):
                    sg["failed"][key].resize(k1, axis=0)
                    sg["failed"][key][k0:k1] = np.array([item[col] for item in failures], dtype=object)
            f.flush()  # the data is down before the commit record that makes it count
            sg.attrs["commit"] = np.array([n1, k0 + len(failures), images_done], dtype=np.int64)
            f.flush()
    except (OSError, RuntimeError) as exc:
        if "errno = 28" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
            raise StoreError(f"disk full while writing {path}. Free some space, then re-run the same command: "
                             f"committed rows are kept and it resumes from the last committed batch.") from exc
        raise StoreError(f"writing {path} failed: {exc}. Committed rows are kept; re-run the same command to resume") from exc


def finish(path, name: str, split: str, seconds: float, locking=None) -> None:
    """Mark a split complete."""
    with open_h5(path, "a", locking=locking) as f:
        sg = f[name][split]
        sg.attrs["complete"] = True
        sg.attrs["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sg.attrs["seconds"] = round(float(seconds), 3)
        f.flush()


