"""The embedding map of an extractor: a 2-D projection of a seeded sample of its splits' rows.

At most ``max_rows`` rows are drawn (seeded, every split in proportion to its size; all rows when there are fewer)
and read in blocks of whole chunks, so memory is the sample, never the store. Each row is flattened and scaled to
unit length (the cosine geometry ``similar`` and ``leaks`` use), reduced by PCA to at most 50 components, then laid
out in 2-D: UMAP (``umap-learn``, cosine) where it is installed, else t-SNE from scikit-learn (Barnes-Hut, PCA
initialisation); a sample of under 5 rows is drawn on its first two principal components. The sample (its rows per
split), the method and its settings are recorded with the layout, and a layout is cached beside the store
(``<store>.cache/maps/``), keyed by everything that decides it, so the next report reuses it.

>>> proj = project("features.h5", max_rows=2000)                  # doctest: +SKIP
>>> proj.method, proj.xy.shape, sorted(proj.sample)              # doctest: +SKIP
('t-SNE', (500, 2), ['test', 'train', 'validation'])
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.caches import cache_folder, open_cached, write_cached
from featstore.errors import ConfigError, StoreError
from featstore.experiments.leaks.find import split_commit
from featstore.experiments.leaks.search import query_blocks
from featstore.keys import sign, user_key, verifies
from featstore.outputs import terminal_safe
from featstore.safezip import check_zip, npy_header, read_npy
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 5000
METHODS = ("auto", "umap", "tsne", "pca")
PCA_DIMS = 50
LAYOUT_VERSION = 1  # bump when the preprocessing or a method's settings change: old cached layouts are not reused


@dataclass
class Projection:
    """A 2-D layout of sampled rows of one extractor (see the module docstring)."""

    extractor: str
    fingerprint: str
    method: str  # "UMAP", "t-SNE" or "PCA"
    settings: dict  # the method's settings, as recorded
    seed: int
    rows: dict[str, int]  # split -> rows it has
    sample: dict[str, np.ndarray]  # split -> sorted sampled row indices
    xy: np.ndarray  # (n, 2) float32, in the order of the splits in ``sample``, each split's rows ascending
    seconds: float = 0.0  # time the layout took (when it was made)
    cached: bool = False  # reused from the cache

    @property
    def splits(self) -> list[str]:
        """The split of each point, in the order of ``xy``."""
        return [s for s, rows in self.sample.items() for _ in rows]

    @property
    def points(self) -> list[tuple[str, int]]:
        """(split, row) of each point, in the order of ``xy``."""
        return [(s, int(r)) for s, rows in self.sample.items() for r in rows]

    def describe(self) -> str:
        """One line: how many rows of how many, which method, seed."""
        total, n = sum(self.rows.values()), sum(len(r) for r in self.sample.values())
        drawn = f"all {n} rows" if n == total else f"a seeded sample of {n} of {total} rows (seed {self.seed})"
        return f"{self.method} of {drawn} of {', '.join(self.sample)}"


def choose_method(method: str = "auto") -> str:
    """The method a request means: "umap" where umap-learn is installed, else "tsne" (an unknown name lists them)."""
    if method not in METHODS:
        raise ConfigError(f"unknown map method {method!r}; choose from: {', '.join(METHODS)}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ConfigError("the map method umap needs umap-learn: pip install 'featstore[umap]' (or use tsne)")
    if method == "auto":
        return "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    return method


def sample_rows(rows: dict[str, int], max_rows: int, seed: int) -> dict[str, np.ndarray]:
    """Sorted row indices per split: all rows, or ``max_rows`` drawn in proportion to each split's size (seeded).

    >>> {s: len(r) for s, r in sample_rows({"train": 900, "test": 100}, 100, 0).items()}
    {'train': 90, 'test': 10}
    """
    total = sum(rows.values())
    if total <= max_rows:
        return {s: np.arange(n, dtype=np.int64) for s, n in rows.items()}
    rng = np.random.default_rng(seed)
    quota = {s: int(np.floor(max_rows * n / total)) for s, n in rows.items()}
    for s in sorted(rows, key=lambda s: -(max_rows * rows[s] / total - quota[s]))[: max_rows - sum(quota.values())]:
        quota[s] += 1
    return {s: np.sort(rng.choice(n, size=min(quota[s], n), replace=False)).astype(np.int64) for s, n in rows.items()}


def _key(fs: FeatureStore, name: str, splits: list[str], max_rows: int, method: str, seed: int) -> str:
    """What decides a layout, hashed: fingerprint, each split's commit, sample size, method, seed, layout version."""
    infos = {s: fs.split_info(s, name) for s in splits}
    what = {
        "fingerprint": fs.metadata(name).get("fingerprint"),
        "commits": {s: split_commit(infos[s]) for s in splits},  # rows_sha256 where recorded: same-second rewrites
        "max_rows": max_rows,
        "method": method,
        "seed": seed,
        "version": LAYOUT_VERSION,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _layout(V: np.ndarray, method: str, seed: int, jobs: int) -> tuple[np.ndarray, str, dict]:
    """``(xy, method shown, settings)`` of unit rows ``V``, BLAS and OpenMP limited to ``jobs`` threads."""
    import sklearn.decomposition  # noqa: F401 (loaded before the limit: threadpoolctl limits loaded libraries only)
    import sklearn.manifold  # noqa: F401
    from threadpoolctl import threadpool_limits

    if method == "umap":
        import umap  # noqa: F401

    with threadpool_limits(jobs):
        return _layout_in(V, method, seed)


def _layout_in(V: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str, dict]:
    """:func:`_layout` within the thread limit."""
    from sklearn.decomposition import PCA

    n = len(V)
    dims = max(1, min(PCA_DIMS, n - 1, V.shape[1]))
    P = PCA(n_components=dims, random_state=seed).fit_transform(V) if n > 1 else np.zeros((n, 1))
    if n < 5 or method == "pca":
        xy = np.zeros((n, 2))
        xy[:, : min(2, P.shape[1])] = P[:, :2]
        return xy, "PCA", {"components": 2}
    if method == "umap":
        import umap

        neighbours = min(15, n - 1)
        xy = umap.UMAP(n_neighbors=neighbours, metric="cosine", random_state=seed, n_jobs=1).fit_transform(P)
        return xy, "UMAP", {"pca": dims, "n_neighbors": neighbours, "metric": "cosine"}
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (n - 1) / 3))
    xy = TSNE(perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto").fit_transform(P)
    return xy, "t-SNE", {"pca": dims, "perplexity": perplexity, "init": "pca"}


def project(
    store: str | os.PathLike | FeatureStore = "features.h5",
    extractor: str | None = None,
    splits: list[str] | None = None,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    method: str = "auto",
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    max_bytes: int = 64 << 20,
    jobs: int = 1,
) -> Projection:
    """A 2-D layout of at most ``max_rows`` sampled rows of the extractor's complete splits (see the module docstring).

    ``cache``: a folder where layouts are kept and reused (None: none); made where missing, refused when it or its
    parent is a link (:func:`featstore.outputs.cache_folder`). ``jobs``: threads for the layout (BLAS,
    OpenMP); on a shared or busy machine more threads than free cores made t-SNE 20 times slower, so 1 by default.
    Example::

        proj = project("features.h5", max_rows=5000, cache="features.h5.cache/maps")
    """
    start = time.monotonic()
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 2:
        raise ConfigError(f"the map needs at least 2 rows; max_rows {max_rows!r} is not a number of rows")
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    name = fs.resolve(extractor)
    chosen = splits or [s for s in fs.splits(name) if _complete(fs, name, s)]
    if not chosen:
        raise StoreError(f"extractor {name!r} has no complete split to map")
    rows = {s: int(fs.split_info(s, name)["committed_rows"]) for s in chosen}
    how = choose_method(method)
    key = _key(fs, name, chosen, max_rows, how, seed)
    sample = sample_rows(rows, max_rows, seed)
    if cache:  # a link is refused before anything is read from it or written through it
        cache = cache_folder(Path(cache).parent, Path(cache).name, what="map cache")
    hit = _cached(cache, name, key, sample) if cache else None
    if hit is not None:
        shown, settings, seed_, seconds, xy = hit
        fp = fs.metadata(name).get("fingerprint")
        return Projection(name, fp, shown, settings, seed_, rows, sample, xy, seconds, cached=True)
    parts = []
    for s in chosen:
        if len(sample[s]):
            parts += [_unit(X) for _, X in query_blocks(fs, name, s, max_bytes, sample[s])]
    V = np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
    if not np.isfinite(V).all():
        raise StoreError(f"extractor {name!r} holds NaN or inf features in the sampled rows; `featstore check`")
    xy, shown, settings = _layout(V, how, seed, jobs)
    xy = np.asarray(xy, dtype=np.float32)
    fp = fs.metadata(name).get("fingerprint")
    proj = Projection(name, fp, shown, settings, seed, rows, sample, xy, time.monotonic() - start)
    if cache:
        _store(cache, name, key, proj)
    return proj


def _complete(fs: FeatureStore, name: str, split: str) -> bool:
    """Whether a split is sound and complete."""
    try:
        return bool(fs.split_info(split, name).get("complete"))
    except StoreError:
        return False


def _unit(X: np.ndarray) -> np.ndarray:
    """Flattened float32 rows scaled to unit length (a zero row stays zero)."""
    R = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    R /= np.maximum(np.abs(R).max(axis=1, keepdims=True, initial=0.0), np.finfo(np.float32).tiny)
    return R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def _cache_file(cache: str | os.PathLike, name: str, key: str) -> Path:
    return Path(cache) / f"map-{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}-{key}.npz"


def _signed(path: Path, meta: str, xy: np.ndarray, sample: dict[str, np.ndarray]) -> bytes:
    """What a layout's HMAC covers (:mod:`featstore.keys`): its file name, record, points and sampled rows."""
    rows = [np.ascontiguousarray(r, np.int64).tobytes() for r in sample.values()]
    return b"\0".join([os.fsencode(path.name), meta.encode(), np.ascontiguousarray(xy, np.float32).tobytes(), *rows])


def _cached(cache, name: str, key: str, sample: dict[str, np.ndarray]):
    """``(method, settings, seed, seconds, xy)`` of a cached layout of exactly the rows ``sample``, or None. A damaged or
    crafted file is made again, with one warning: each member is read through :mod:`featstore.safezip` with the shape
    and dtype this layout must have, its header checked before anything is allocated (``np.load`` allocated the 10^12
    values a planted 2 KB file's header declared), its rows must be the ones sampled now, its points finite, and its
    HMAC the one this user's featstore signed it with (a layout planted or copied with a store from elsewhere)."""
    path = _cache_file(cache, name, key)
    splits = list(sample)
    secret = user_key()
    if secret is None or not os.path.lexists(path):  # (said once) nothing cached is trusted; nothing cached
        return None
    n = sum(len(r) for r in sample.values())
    try:
        check_zip(path)  # before anything is unpacked: no zip bombs
        with open_cached(path) as fh, zipfile.ZipFile(fh) as z:  # one open: ZipFile(path) met a FIFO renamed there
            text = _small_text(z, "meta")
            mac = _small_text(z, "mac") if "mac.npy" in z.namelist() else None
            rows = [read_npy(z, f"rows_{i}.npy", "iu", (len(sample[s]),)) for i, s in enumerate(splits)]
            same = all(np.array_equal(r, sample[s]) for r, s in zip(rows, splits))
            xy = read_npy(z, "xy.npy", "f", (n, 2)).astype(np.float32, copy=False)
        meta = json.loads(text)
        if not same or not np.isfinite(xy).all() or meta["splits"] != splits:
            raise ValueError("its rows are not the ones sampled now")
        if not verifies(secret, "maps", path.name, _signed(path, text, xy, sample), mac):
            logger.warning(
                "the cached map layout %s is made again: it is not signed with your featstore key",
                terminal_safe(str(path)),
            )
            return None
        if not (isinstance(meta["method"], str) and isinstance(meta["settings"], dict)):
            raise ValueError("its record is not a layout's")
        return meta["method"], meta["settings"], int(meta["seed"]), float(meta["seconds"]), xy
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, RecursionError, MemoryError) as exc:
        why = terminal_safe(f"{type(exc).__name__}: {exc}"[:200])
        logger.warning(
            "the cached map layout %s is made again: it cannot be read as one (%s)", terminal_safe(str(path)), why
        )
        return None


_MAX_TEXT = 1 << 16  # characters of a layout's record or HMAC (a few hundred in a layout featstore wrote)


def _small_text(z: zipfile.ZipFile, member: str) -> str:
    """The text array ``member``.npy of a layout (shape ()), its header checked first: at most :data:`_MAX_TEXT`."""
    _, _, dtype, _ = npy_header(z, f"{member}.npy", "U", ())
    if dtype.itemsize > 4 * _MAX_TEXT:
        raise ValueError(f"{member}.npy declares {dtype.itemsize // 4:,} characters, more than a layout holds")
    return str(read_npy(z, f"{member}.npy", "U", ()))


def _store(cache, name: str, key: str, proj: Projection) -> None:
    """Keep a layout in the cache (a cache that cannot be written is logged, never fatal)."""
    from featstore.errors import OutputError

    meta = {
        "method": proj.method,
        "settings": proj.settings,
        "seed": proj.seed,
        "seconds": proj.seconds,
        "splits": list(proj.sample),
    }
    arrays = {f"rows_{i}": r for i, r in enumerate(proj.sample.values())}
    secret, path, text = user_key(), _cache_file(cache, name, key), json.dumps(meta)
    if secret is None:  # (said once) a layout that could not be signed would never be reused
        return
    mac = sign(secret, "maps", path.name, _signed(path, text, proj.xy, proj.sample))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(text), xy=proj.xy, mac=np.array(mac), **arrays)

    try:
        write_cached(Path(cache).parent, path, write, "map cache")
    except (OSError, OutputError) as exc:
        logger.warning("the map's layout is not cached: %s", exc)
