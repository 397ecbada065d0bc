"""The similarity index of one split: its rows, centred and reduced once, so ``featstore similar`` answers at once.

``build_similarity_index`` streams the split three times (its mean; a seeded sample of rows to fit a PCA; every row centred,
L2-normalised, projected to ``dims`` components and normalised again) and writes, beside the store::

    <store>.index/<extractor>/<split>/
        vectors.npy   (N, dims) float32: the reduced rows, read as a memory map
        model.npz     mean (D,), components (dims, D), pca_mean (D,): how a query is reduced
        index.json    what it was built from: fingerprint, the split's commit (rows, listing, finish time), dims,
                      sample, seed, the files' sizes and sha256, vectors.npy's identity; signed with this user's key
                      (:func:`.similar_files.seal`); written last, so a half-built index has none. Loading compares
                      them (:mod:`.similar_files`); a search meeting a NaN score refuses it

A search is one matrix-vector product over ``vectors.npy`` for candidates (:func:`candidates`: ``10 k``, at least 100,
and one row in 800 of the split), re-ranked with their exact centred cosine read from the store, so the similarities
shown are the exact search's. An index whose
fingerprint or commit differs from the store's is refused with both sides shown (rebuild it, or search exactly).

>>> info = build_similarity_index("features.h5", split="train")        # doctest: +SKIP
>>> info["rows"], info["dims"]                              # doctest: +SKIP
(300, 256)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.caches import CacheNotMade, CacheNotTrusted, cache_folder, opened_cache, write_cached, write_cached_text
from featstore.errors import ConfigError, StoreError, check_seed
from featstore.experiments.leaks.find import commit_changes, split_commit
from featstore.experiments.leaks.search import normalised, query_blocks, scan
from featstore.experiments.similar_files import (
    FORMAT,
    NotSigned,
    check_vectors,
    identity,
    open_vectors,
    read_meta,
    read_model,
    read_rows,
    recorded,
    refuse_index_files,
    renamed_identity,
    sample_rows,
    seal,
    unsigned,
    written,
)
from featstore.keys import user_key
from featstore.outputs import output_fix, terminal_safe
from featstore.runs import made
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice
from featstore.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_DIMS = 256
DEFAULT_SAMPLE = 20_000  # rows the PCA is fitted on
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,120}")


def index_dir(store: str | os.PathLike, extractor: str, split: str) -> Path:
    """``features.h5`` -> ``features.h5.index/<extractor>/<split>/`` (names that are not plain are hashed)."""
    return Path(f"{os.fspath(store)}.index") / _safe(extractor) / _safe(split)


WHAT = "similarity index folder"
NO_KEY = "set XDG_CONFIG_HOME to a writable folder of yours, or search with --exact"
AGAIN = "the index is safe to delete: --build-index makes it again"


def _levels(folder: Path) -> tuple[Path, str, str]:
    """``(<store>.index, extractor, split)`` of an :func:`index_dir`: the levels :mod:`featstore.caches` opens one by
    one with O_NOFOLLOW (a link at ``<store>.index`` sent the index into its target, and was read through)."""
    return folder.parent.parent, folder.parent.name, folder.name


def _safe(name: str) -> str:
    """A name as one folder name: itself when plain, else a digest of it."""
    if _SAFE.fullmatch(name) and name not in (".", ".."):
        return name
    return "h-" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _commit(fs: FeatureStore, name: str, split: str) -> dict:
    """What identifies the split's rows now."""
    return split_commit(fs.split_info(split, name))


def candidates(rows: int, k: int) -> int:
    """How many rows the reduced vectors propose for the exact re-ranking: ``10 k``, at least 100, and ``rows / 800``.

    The reduction moves each similarity by about the same amount whatever the split's size, so the rows close enough
    to the k-th neighbour to be swapped with it grow with the split: with a fixed 100, recall@10 against the exact
    search was 1.00 at 80,000 rows and 0.90 at 800,000 (``benchmarks/million.py``); 1,000 there gave 1.00 on the same
    ten queries (reading 1,000 rows from the store: 0.4 s).
    """
    return max(10 * k, 100, -(-rows // 800))


@dataclass
class Index:
    """A loaded index (see the module docstring)."""

    folder: Path
    meta: dict
    vectors: np.ndarray  # (N, dims) float32, memory-mapped
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (dims, D), or (0, D) when the rows were not reduced
    pca_mean: np.ndarray  # (D,)

    @property
    def rows(self) -> int:
        return len(self.vectors)

    def reduce(self, X: np.ndarray) -> np.ndarray:
        """Centred, normalised rows in the index's space (unit length)."""
        v = normalised(X, self.mean)
        if len(self.components):
            v = (v - self.pca_mean) @ self.components.T
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), np.finfo(np.float32).tiny)

    def search(self, fs: FeatureStore, q: np.ndarray, k: int, exclude: int | None) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, rows)`` of the k nearest rows: candidates from the index, exact centred cosine from the store."""
        approx = self.vectors @ self.reduce(q[None])[0]
        finite = np.isfinite(approx)
        if exclude is not None and 0 <= exclude < len(approx):
            finite[exclude], approx[exclude] = True, -np.inf
        if not finite.all():  # NaN rows were never proposed, or none was (a ValueError traceback)
            bad = np.flatnonzero(~finite)
            raise StoreError(
                f"similarity index {terminal_safe(str(self.folder))} gives NaN or inf scores ({len(bad):,} rows, the "
                f"first row {int(bad[0])}): its files are damaged; rebuild it with `featstore similar --build-index "
                f"--split {self.meta.get('split')}`, or search with --exact"
            )
        m = min(len(approx), candidates(len(approx), k))
        cand = np.argpartition(-approx, m - 1)[:m] if m < len(approx) else np.arange(len(approx))
        cand = cand[np.isfinite(approx[cand])]
        X = read_rows(fs, self.meta["extractor"], self.meta["split"], cand)
        exact = normalised(X, self.mean) @ normalised(q[None], self.mean)[0]
        order = np.lexsort((cand, -exact))[:k]
        return exact[order], cand[order]


def build_similarity_index(
    store: str | os.PathLike | FeatureStore = "features.h5",
    extractor: str | None = None,
    split: str = "train",
    *,
    dims: int = DEFAULT_DIMS,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    max_bytes: int = 256 << 20,
    option: str = "max_bytes",
) -> dict:
    """Build (or rebuild) the similarity index of one split of an extractor; returns what ``index.json`` records.
    ``max_bytes`` bounds its memory (the PCA's sample: half of it); ``option``: how messages name it.

    Example::

        build_similarity_index("features.h5", split="train", dims=256)
    """
    start = time.monotonic()
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 2:
        raise ConfigError(f"dims must be a whole number of at least 2, not {dims!r}")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 2 * dims:  # the PCA's rows: 2 x dims
        raise ConfigError(f"sample must be a whole number of at least 2 x dims ({2 * dims}), not {sample!r}")
    check_seed(seed, "seed")
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    name = fs.resolve(extractor)
    if (key := user_key()) is None:  # (said why once) an index it cannot sign would never be used
        raise ConfigError(f"featstore has no key of yours to sign the similarity index with; {NO_KEY}")
    _refuse_unusable(fs, name, split)  # before any folder is made: a refused split left empty ones (attack 53 #7)
    target = index_dir(fs.path, name, split)
    new = [p for p in (target.parent.parent, target.parent, target) if not os.path.lexists(p)]
    with made.removed_on_failure(target):  # the levels made here, still empty, when the build fails
        try:
            folder = index_folder(target)  # before any work: what is in the way, can it be written
        finally:
            made.remember(new)
        return _write(fs, name, split, folder, dims, sample, seed, max_bytes, option, key, start)


def _refuse_unusable(fs: FeatureStore, name: str, split: str) -> None:
    """StoreError for a split (no such split: split_info's) whose attributes say no index can be built of it: not
    complete, under 2 rows (the reading refuses NaN or inf rows)."""
    info = fs.split_info(split, name)
    rows = int(info.get("committed_rows") or 0)
    if not info.get("complete") or rows < 2:
        raise StoreError(
            f"split {split!r} of {name!r} has {rows} row(s); comparing needs at least 2 (the mean is subtracted)"
            if info.get("complete")
            else f"split {split!r} of {name!r} is not complete; {resume_advice(split)}"
        )


def _write(fs, name, split, folder, dims, sample, seed, max_bytes, option, key, start) -> dict:
    """The index of :func:`build_similarity_index` written into ``folder`` (made and checked); its record."""
    from sklearn.decomposition import PCA

    budget = max(int(max_bytes) // 4, 1 << 20)
    commit = _commit(fs, name, split)
    centre = scan(fs, name, [], split, budget, "similar")  # refuses NaN/inf rows and splits of under 2 rows
    n, d = centre.rows, int(centre.mean.size)
    pca, rows = None, 0
    step = max(1, budget // 4 // (4 * d))  # rows normalised at a time: 3 float32 copies of a whole float16 block
    if d > dims and n > dims:
        rows = sample_rows(min(sample, n), d, dims, max_bytes, option)
        pick = np.sort(np.random.default_rng(seed).choice(n, size=rows, replace=False))
        S, at = np.empty((rows, d), np.float32), 0  # filled in place: a list of blocks concatenated held it twice
        for _, X in query_blocks(fs, name, split, budget, pick):  # were 6 x its bytes (attack 18: a peak of 937 MB)
            for i in range(0, len(X), step):  # a block's last part is shorter than step (attack 22: a broadcast error)
                part = normalised(X[i : i + step], centre.mean)
                S[at + i : at + i + len(part)] = part
            at += len(X)
        # copy=False: centred in place (S is ours), not copied once more
        pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed, copy=False).fit(S)
        del S
    meta_path = folder / "index.json"
    with opened_cache(*_levels(folder), what=WHAT, again=AGAIN) as at:
        if at is not None:  # an index being rebuilt is no index until its new record is written
            (at / "index.json").unlink(missing_ok=True)
    components = pca.components_.astype(np.float32) if pca is not None else np.zeros((0, d), np.float32)
    pca_mean = pca.mean_.astype(np.float32) if pca is not None else np.zeros(d, np.float32)
    index = Index(folder, {}, np.zeros((0, 1), np.float32), centre.mean, components, pca_mean)
    width = len(components) if len(components) else d

    def fill(tmp: Path) -> None:
        # written block by block through a file, not a memory map: every page of a map written stays in the process's
        # resident memory until it is unmapped (the whole (N, dims) file, 1 GB of 1.4 GB peak at 10⁶ rows)
        with open(tmp, "r+b") as fh:
            header = io.BytesIO()  # hashed as written: the signed digest, with no second read of a GB
            np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n, width)})
            fh.write(header.getvalue())
            sha, off = hashlib.sha256(header.getvalue()), 0
            for X, _ in fs.iter_batches(split, name, max_bytes=budget):
                for i in range(0, len(X), step):  # reduced a slice at a time, as the sample was
                    block = np.ascontiguousarray(index.reduce(X[i : i + step]), dtype="<f4").tobytes()
                    fh.write(block)
                    sha.update(block)
                off += len(X)
            digest["vectors.npy"] = sha.hexdigest()
            written(fh, held, "vectors.npy")  # its identity: from this descriptor, never read by name (attack 22)
            if off != n:
                raise StoreError(
                    f"{name}/{split} gave {off:,} rows while the index was written, not {n:,}; build it again"
                )

    root, digest, held = _levels(folder)[0], {}, {}  # held: name -> (descriptor that wrote it, its fstat then)

    def model(tmp: Path) -> None:
        data = io.BytesIO()  # hashed as written (hashing the temporary by name signed whatever was renamed there)
        np.savez(data, mean=centre.mean, components=components, pca_mean=pca_mean)
        digest["model.npz"] = hashlib.sha256(data.getvalue()).hexdigest()  # checked at load: it decides every score
        with open(tmp, "wb") as fh:
            fh.write(data.getvalue())
            written(fh, held, "model.npz")

    try:
        write_cached(root, folder / "vectors.npy", fill, "similarity index", AGAIN)
        write_cached(root, folder / "model.npz", model, "similarity index", AGAIN)
        stats = _stats(folder, held)
    finally:
        for fd, _ in held.values():
            os.close(fd)
    meta = {
        "format": FORMAT,
        "extractor": name,
        "split": split,
        "fingerprint": fs.metadata(name).get("fingerprint"),
        "commit": commit,
        "rows": n,
        "feature_dims": d,
        "dims": width,
        "reduced": pca is not None,
        "explained_variance": float(pca.explained_variance_ratio_.sum()) if pca is not None else 1.0,
        "sample": rows,
        "sample_asked": int(sample),
        "seed": seed,
        "files": {f: st.st_size for f, st in stats.items()},
        "model_sha256": digest["model.npz"],
        "vectors_sha256": digest["vectors.npy"],
        "vectors_identity": identity(stats["vectors.npy"]),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "featstore_version": __version__,
        "seconds": round(time.monotonic() - start, 3),
    }
    meta = seal(meta, key)
    write_cached_text(root, meta_path, json.dumps(meta, indent=1, default=str), "similarity index")
    logger.debug("similarity index of %s/%s: %d rows x %d dims in %.1f s", name, split, n, width, meta["seconds"])
    return meta


def _stats(folder: Path, held: dict) -> dict[str, os.stat_result]:
    """The stat to sign of each file written into the index folder (:func:`.similar_files.renamed_identity`)."""
    with opened_cache(*_levels(folder), what=WHAT, again=AGAIN) as at:
        return {f: renamed_identity(at or folder, folder, f, fd, st) for f, (fd, st) in held.items()}


def _cannot_write(folder: Path, exc: OSError, where: Path) -> CacheNotMade:
    """One line for an index folder no file can be made in (a read-only file system, a folder not yours; ``where``: the
    folder that refused), said before any work: the index lives beside the store only, so the fixes are searching
    without it or a writable copy of the store. ``why``: the reason alone (a plain ``similar`` says it in a warning)."""
    why = terminal_safe(output_fix(exc, where / "index.json").split(";")[0])
    error = CacheNotMade(
        f"cannot build the similarity index {terminal_safe(str(folder))}: {why}. It is kept beside the store "
        f"only: search without it (`featstore similar --exact`), or copy the store to a writable folder and build it there"
    )
    error.cause, error.level, error.why = exc, where, why
    return error


def index_folder(folder: Path) -> Path:
    """``folder`` made where missing, level by level and never through a link (:func:`featstore.caches.cache_folder`),
    and checked to take a new file, before any work (on a read-only file system the index was computed, then refused
    with "a file or link is in its way"); a folder, FIFO, device or link at one of :data:`INDEX_FILES` is refused in
    one line saying what is there (a FIFO there said only "choose another path": the name is featstore's)."""
    try:
        cache_folder(*_levels(folder), what=WHAT, again=AGAIN)
    except CacheNotTrusted:
        raise
    except CacheNotMade as exc:  # a read-only file system, a folder not writable: not "in its way"
        if exc.cause is None:
            raise
        raise _cannot_write(folder, exc.cause, exc.level.parent if exc.level else folder) from None
    with opened_cache(*_levels(folder), what=WHAT, again=AGAIN) as at:
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=at)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _cannot_write(folder, exc, folder) from None
        refuse_index_files(at, folder)
    return folder


def load_index(fs: FeatureStore, name: str, split: str, required: bool = False) -> Index | None:
    """The split's index, checked against the store now; None when there is none (``required``: ConfigError).

    Refused (ConfigError, both sides shown) when it was built from other features or other rows; a link at any level
    of its folder (``<store>.index`` included) is refused, never read through (:func:`featstore.caches.opened_cache`).
    """
    folder = index_dir(fs.path, name, split)
    with opened_cache(*_levels(folder), what=WHAT, again=AGAIN) as at:
        return _load(fs, name, split, folder, at, required)


def _load(fs: FeatureStore, name: str, split: str, folder: Path, at: Path | None, required: bool) -> Index | None:
    """:func:`load_index` with the folder open at ``at`` (None: there is none); messages name ``folder``."""
    meta_path = folder / "index.json"
    if at is None or not (at / "index.json").is_file():
        if required:
            raise ConfigError(
                f"no similarity index for {terminal_safe(name)}/{split}; build it with "
                f"`featstore similar --build-index --split {split}`"
            )
        return None
    try:
        return _checked(fs, name, split, folder, at, read_meta(at / "index.json", meta_path), required)
    except NotSigned as exc:
        raise NotSigned(f"the similarity index {terminal_safe(str(folder))} is not trusted: {exc}") from None


def _checked(fs: FeatureStore, name: str, split: str, folder: Path, at: Path, meta: dict, required: bool):
    """:func:`_load` once index.json is read; NotSigned (the reason) when it or vectors.npy is not the one signed."""
    rebuild = f"rebuild it with `featstore similar --build-index --split {split}`, or search with --exact"
    fp = fs.metadata(name).get("fingerprint")
    if meta.get("fingerprint") != fp or meta.get("extractor") != name or meta.get("split") != split:
        built = [str(meta.get(k))[:64] for k in ("extractor", "split", "fingerprint")]  # say which of them differs
        raise ConfigError(
            f"the similarity index {terminal_safe(str(folder))} was built for extractor {terminal_safe(built[0])!r}, "
            f"split {terminal_safe(built[1])!r}, fingerprint {built[2][:12]}, not {terminal_safe(name)!r}, split "
            f"{terminal_safe(split)!r}, fingerprint {str(fp)[:12]}; {rebuild}"
        )
    now = _commit(fs, name, split)
    was = meta.get("commit") if isinstance(meta.get("commit"), dict) else {}
    if changed := commit_changes(was, now):
        diff = ", ".join(changed)
        raise ConfigError(
            f"the similarity index {terminal_safe(str(folder))} is stale: split {split!r} changed since it was "
            f"built ({diff}); {rebuild}"
        )
    d, rows, width = (meta.get(k) for k in ("feature_dims", "rows", "dims"))
    shape = fs.split_info(split, name).get("shape") or [0]
    if not all(type(v) is int and v >= 0 for v in (d, rows, width)) or d != math.prod(shape[1:]) or width > d:
        raise StoreError(
            f"similarity index {terminal_safe(str(folder))}: index.json's sizes are not the split's; {rebuild}"
        )
    part, held = folder / "index.json", []  # held: vectors.npy as mapped, checked against the signed record below
    try:
        try:  # sizes, vectors.npy's header and model.npz's digest as recorded (a crafted mean read every similarity 1)
            v_size, m_size, m_digest = recorded(meta)
            part = folder / "vectors.npy"
            vectors = open_vectors(at / part.name, rows, width, v_size, lambda fh: held.append(os.dup(fh.fileno())))
            part = folder / "model.npz"
            mean, components, pca_mean = read_model(at / part.name, m_size, m_digest, d)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            why = terminal_safe(str(exc))
            raise StoreError(
                f"similarity index file {terminal_safe(str(part))} cannot be used ({why}); {rebuild}"
            ) from None
        if (
            rows != int(now["committed_rows"])
            or mean.shape != (d,)
            or pca_mean.shape != (d,)
            or components.shape not in ((width, d), (0, d))
        ):
            raise StoreError(f"similarity index {terminal_safe(str(folder))} does not fit together; {rebuild}")
        return _trusted(Index(folder, meta, vectors, mean, components, pca_mean), held[0], required)
    finally:
        for fd in held:
            os.close(fd)


def _trusted(index: Index, fd: int, required: bool) -> Index | None:
    """``index`` when its record verifies under this user's key and the vectors.npy mapped (open at ``fd``) is the
    signed one (signed again when only its identity changed); NotSigned if not; None without a key (``required``:
    ConfigError)."""
    if (key := user_key()) is None:  # (said why once) nothing cached is trusted
        if required:
            raise ConfigError(f"featstore has no key of yours to check the similarity index with; {NO_KEY}")
        return None
    if why := unsigned(index.meta, key):
        raise NotSigned(why)
    with open(fd, "rb", closefd=False) as fh:
        now = check_vectors(fh, index.meta)
    if now is not None:  # the same bytes, moved or copied (no hashing next time)
        index.meta = seal({**index.meta, "vectors_identity": now}, key)
        text, root = json.dumps(index.meta, indent=1), _levels(index.folder)[0]
        try:
            write_cached_text(root, index.folder / "index.json", text, "similarity index")
        except OSError as exc:  # a read-only copy: hashed again next time
            logger.info("the similarity index %s is not signed again: %s", terminal_safe(str(index.folder)), exc)
    return index
