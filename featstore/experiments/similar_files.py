"""The similarity index's bounds and checks (:mod:`.similar_index`): its PCA sample sized from the memory budget
(:func:`sample_rows`), its data files checked against its ``index.json`` before use.

``index.json`` records the sizes of ``vectors.npy`` and ``model.npz`` and the sha256 of ``model.npz`` (a few MB: the
mean, the PCA's components). Loading compares both sizes, reads ``vectors.npy``'s header (little-endian float32, C
order, the recorded rows x dims, nothing after the rows) before mapping it, and hashes ``model.npz`` before unpacking
it. A crafted index whose mean was altered read every similarity as 1.0000; NaN in ``vectors.npy`` ended in a
ValueError traceback (attack 18); a non-finite score met by a search refuses the index.

``index.json`` is signed (:func:`seal`): an HMAC-SHA256 under this user's key (:mod:`featstore.keys`) of its whole
content, which holds the sha256 of both data files and ``vectors.npy``'s identity when it was last checked (size,
inode, device, mtime and ctime in ns; a user cannot set a ctime), taken by the build from the descriptor that wrote
the file, after its rename, never by name (:func:`renamed_identity`; attack 22). A query trusts ``vectors.npy`` (N x dims, up to a
GB) without hashing it while its identity is the signed one; otherwise it is hashed once (:func:`check_vectors`): the
signed digest re-signs the record with the new identity (an index copied with ``cp -a``), any other one is
:class:`NotSigned`, as an index.json that does not verify (planted, copied from another user, older format): ``similar``
builds such an index again with one warning (a planted ``vectors.npy`` of the same size silently changed which
neighbours came back; attack 20).

Example::

    vectors = open_vectors(Path("features.h5.index/vgg16/train/vectors.npy"), rows, dims, recorded(meta)[0])
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

from featstore import keys
from featstore.caches import open_cached, read_small
from featstore.errors import ConfigError, OutputError, StoreError
from featstore.outputs import terminal_safe
from featstore.renames import same_file
from featstore.safezip import check_zip, read_npy
from featstore.store.layout import PATH_ERRORS, validate_labels
from featstore.store.reader import FeatureStore
from featstore.store.strings import refuse_long
from featstore.units import format_bytes

logger = logging.getLogger(__name__)

FORMAT = 2  # 2: index.json signed (key_id, hmac, vectors_sha256, vectors_identity); 1 (unsigned) is built again
MAX_META_BYTES = 1 << 20
KIND = "similarity-index"  # what featstore.keys.sign is told the record is


class NotSigned(StoreError):
    """An index that is not this user's featstore's (its record does not verify, or vectors.npy is not the signed
    one): ``similar`` builds it again with one warning."""


def identity(st: os.stat_result) -> list[int]:
    """What says a file was not replaced nor written since it was checked: size, inode, device, mtime, ctime (ns)."""
    return [st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns]


def seal(meta: dict, key: bytes) -> dict:
    """``meta`` signed with this user's ``key`` (:func:`featstore.keys.seal`)."""
    return keys.seal(key, KIND, "index.json", meta)


def unsigned(meta: dict, key: bytes) -> str | None:
    """Why ``meta`` is not an index record this user's featstore signed; None when it is."""
    why = keys.unsealed(key, KIND, "index.json", meta)
    return f"its index.json {why.removeprefix('it ')}" if why else None


def written(fh, held: dict, name: str) -> None:
    """Record the index file ``name`` that ``fh`` has just written (its last write): flushed, fsync'ed, its fstat and
    a duplicate of its descriptor kept in ``held`` for :func:`renamed_identity` (held open, its inode cannot be freed
    and given to another file before the identity is taken)."""
    fh.flush()
    os.fsync(fh.fileno())
    held[name] = (os.dup(fh.fileno()), os.fstat(fh.fileno()))


def renamed_identity(at: Path, folder: Path, name: str, fd: int, before: os.stat_result) -> os.stat_result:
    """The stat to sign for the index file ``name`` renamed into the folder open at ``at`` (shown as ``folder``): the
    fstat of the descriptor ``fd`` that wrote it (:func:`written`), taken after the rename (which changes its ctime on
    Linux), never a stat read by name. OutputError when the name does not hold that same file (inode and device) or the
    file's size or mtime changed since its last write: another process renamed a file onto it, or wrote into it, while
    the index was built (attack 22: a planted vectors.npy was signed and trusted unhashed from then on)."""
    after = same_file(fd, at / name)  # featstore's one check of "the file at this name is the one written"
    if after is None or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise OutputError(
            f"the similarity index file {terminal_safe(str(folder / name))} is not the file featstore just wrote "
            f"(another process replaced or changed it while the index was built); nothing was signed. Build it again "
            f"once nothing else writes into {terminal_safe(str(folder))}, or search with --exact"
        )
    return after


def check_vectors(fh, meta: dict) -> list[int] | None:
    """None when ``vectors.npy`` (open at ``fh``) has the identity the signed ``meta`` records (nothing read); else
    it is hashed once: its new identity when its sha256 is the signed one (to sign again), :class:`NotSigned` if not."""
    st = os.fstat(fh.fileno())
    if identity(st) == meta.get("vectors_identity"):
        return None
    fh.seek(0)
    if hashlib.file_digest(fh, "sha256").hexdigest() != meta.get("vectors_sha256"):
        raise NotSigned("its vectors.npy is not the file featstore wrote and signed (it was changed or replaced)")
    return identity(st)


def read_meta(path: Path, shown: Path) -> dict:
    """index.json (at ``path``, named ``shown``), bounded; StoreError when it is not a JSON object, NotSigned when it
    is a record of another format."""
    try:  # opened once, checked on its descriptor: a FIFO renamed there after a check by name hung `similar`
        raw = read_small(path, MAX_META_BYTES)
        if raw is None:
            raise ValueError("it was removed meanwhile")
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict) or "format" not in meta:
            raise ValueError("not an index record of this featstore")
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: a nested [[[[...
        raise StoreError(
            f"similarity index {terminal_safe(str(shown))} cannot be used ({exc}); rebuild it with "
            f"`featstore similar --build-index`"
        ) from None
    if meta["format"] != FORMAT:
        raise NotSigned(f"it was built by an older featstore (format {str(meta['format'])[:8]}), unsigned")
    return meta


INDEX_FILES = ("vectors.npy", "model.npz", "index.json")  # what build_similarity_index writes into the index folder


def refuse_index_files(at: Path, folder: Path) -> None:
    """OutputError naming a non-regular file at one of :data:`INDEX_FILES` in the index folder open at ``at``."""
    for file in INDEX_FILES:
        try:
            mode = os.lstat(at / file).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode):
            continue
        what = (
            "a symbolic link"
            if stat.S_ISLNK(mode)
            else "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO, device or socket, not a regular file"
        )
        raise OutputError(
            f"the similarity index file {terminal_safe(str(folder / file))} is {what}; featstore writes its index "
            f"under that name only. Remove it (the index is safe to delete: --build-index makes it again), or search "
            f"without an index: `featstore similar --exact` without --build-index"
        )


def recorded(meta: dict) -> tuple[int, int, str]:
    """``(vectors.npy's size, model.npz's size, model.npz's sha256)`` as index.json records them; ValueError when it
    records none (an index built before featstore checked its files) or they are not sizes and a digest."""
    files, digest = meta.get("files"), meta.get("model_sha256")
    sizes = [files.get(f) if isinstance(files, dict) else None for f in ("vectors.npy", "model.npz")]
    if not all(type(s) is int and s >= 0 for s in sizes) or not isinstance(digest, str) or len(digest) != 64:
        raise ValueError("index.json records no sizes of its files or no digest of model.npz (an older index)")
    return sizes[0], sizes[1], digest


def _open_regular(path: Path, size: int):
    """``path`` opened for reading (never through a link, never waiting on a FIFO: :func:`featstore.caches.open_cached`),
    checked to be a regular file of the recorded ``size``."""
    fh = open_cached(path)
    if (got := os.fstat(fh.fileno()).st_size) != size:
        fh.close()
        raise ValueError(f"it is {got:,} bytes, index.json records {size:,}")
    return fh


def open_vectors(path: Path, rows: int, width: int, size: int, check=None) -> np.ndarray:
    """``vectors.npy`` memory-mapped, read-only, after its size and header were checked: ``(rows, width)`` little-endian
    float32 in C order, and the file ends with the last row. ValueError saying what differs. ``check(fh)``: called on
    the file opened, before it is mapped (:func:`check_vectors`)."""
    with _open_regular(path, size) as fh:
        if check is not None:
            check(fh)
            fh.seek(0)
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
        if dtype != np.dtype("<f4") or fortran or shape != (rows, width):
            raise ValueError(
                f"its header says {dtype} {'Fortran' if fortran else 'C'} order {shape}; index.json says float32 "
                f"({rows}, {width})"
            )
        if fh.tell() + rows * width * 4 != size:
            raise ValueError(f"{size:,} bytes is not a header and {rows} x {width} float32 values")
        if rows * width == 0:
            return np.zeros((rows, width), np.float32)
        return np.memmap(fh, dtype="<f4", mode="r", offset=fh.tell(), shape=(rows, width))


def read_model(path: Path, size: int, digest: str, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, components, pca_mean)`` of ``model.npz`` as float32, once its size and sha256 match the recorded ones,
    its zip passed :func:`featstore.safezip.check_zip` and every value is finite. ValueError saying what differs."""
    check_zip(path)  # a crafted model.npz is refused before anything is unpacked (no zip bombs)
    with _open_regular(path, size) as fh:
        data = fh.read(size + 1)
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise ValueError("its sha256 is not the one index.json records: it was changed since the index was built")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        mean, pca_mean = (read_npy(z, f"{k}.npy", "f", (d,)).astype(np.float32) for k in ("mean", "pca_mean"))
        components = read_npy(z, "components.npy", "f", (None, d)).astype(np.float32)
    if not all(np.isfinite(a).all() for a in (mean, components, pca_mean)):
        raise ValueError("it holds NaN or inf")
    return mean, components, pca_mean


def sample_rows(asked: int, d: int, dims: int, max_bytes: int, option: str = "max_bytes") -> int:
    """Rows of the PCA's sample: ``asked``, or fewer so that they take at most half of ``max_bytes`` as float32 (the
    PCA centres them in place; the other half holds a block read and the PCA's (dims, d) matrices): a 10,000-row sample
    of 8,192 values (328 MB) was held whole with a 256 MB budget, a build peaking at 937 MB (attack 18). ``option``:
    how messages name the budget (``--memory-budget`` on the command line, which has no ``--dims``). Fewer rows
    are said in one info line and in index.json (``sample`` against ``sample_asked``); under ``2 dims`` rows (the PCA
    would fit its sample, not the split) it is refused.

    >>> sample_rows(20_000, 512, 256, 256 << 20), sample_rows(20_000, 8192, 256, 256 << 20)
    (20000, 4096)
    """
    fit = int(max_bytes) // 2 // (4 * d)
    if fit >= asked:
        return asked
    if fit < min(asked, 2 * dims):
        need = 2 * min(asked, 2 * dims) * 4 * d
        fewer = ", or fewer dims" if option == "max_bytes" else ""  # the command line has no --dims
        raise ConfigError(
            f"a PCA sample of {min(asked, 2 * dims):,} rows x {d:,} values (at least 2 x dims) needs {need:,} bytes "
            f"of {option} ({int(max_bytes):,}): give {option} at least {need:,} ({format_bytes(need)}){fewer}"
        )
    say = f"{fit:,} rows, not {asked:,}: {fit:,} rows x {d:,} values fill half of {option} ({int(max_bytes):,} bytes)"
    logger.info("the similarity index's PCA is fitted on %s", say)
    return fit


def read_rows(fs: FeatureStore, name: str, split: str, rows: np.ndarray) -> np.ndarray:
    """The flattened float32 features of some rows of a split (any order; each chunk read once), in ``rows`` order."""
    rows = np.asarray(rows, dtype=np.int64)
    n = int(fs.split_info(split, name)["committed_rows"])
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise StoreError(f"rows outside 0..{n - 1} of {split!r} requested")
    uniq, back = np.unique(rows, return_inverse=True)
    with fs.file.open("r") as f:
        X = f[name][split]["features"][uniq] if len(uniq) else np.zeros((0, 1), np.float32)
    X = np.asarray(X, dtype=np.float32).reshape(len(uniq), -1)
    return X[back]


def read_names(fs: FeatureStore, name: str, split: str, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``(paths, labels)`` of some rows of a split (read by row: naming 12 neighbours needs not every path)."""
    rows = np.asarray(rows, dtype=np.int64)
    info = fs.split_info(split, name)
    if len(rows) and (rows.min() < 0 or rows.max() >= int(info["committed_rows"])):
        raise StoreError(f"rows outside the committed rows of {split!r} requested")
    uniq, back = np.unique(rows, return_inverse=True)
    if not len(uniq):
        return [], np.zeros(0, np.int64)
    with fs.file.open("r") as f:
        sg = f[name][split]
        refuse_long(sg["paths"], int(uniq[0]), int(uniq[-1]) + 1)  # heap IDs first: rows sharing one huge string
        paths = list(sg["paths"].asstr(errors=PATH_ERRORS)[uniq])
        labels = np.asarray(sg["labels"][uniq], dtype=np.int64)
    validate_labels(labels, len(info["class_names"]), f"{fs.path}:/{name}/{split}")
    return [paths[i] for i in back], labels[back]
