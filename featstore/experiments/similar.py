"""Images like this one (``featstore similar``): the stored images nearest to a stored image or to a new one.

The query is a stored image (its path as stored, e.g. ``test/bag/test_00017.png``, or the file itself under the
split's ``source_root``, unchanged since extraction: its stored row's features are used) or any other image file (a
file at the path given is that file, even where its text is also a stored path), extracted on the fly through
the store's exact extractor (rebuilt from the group's provenance, refused on other weights, as ``predict`` does).

Similarity is the **centred cosine** of the flattened features, the measure ``featstore leaks`` uses: every row
minus the searched split's mean row, scaled to unit length, then the dot product. ReLU activations are all
positive, so plain cosine puts every pair of images between about 0.5 and 1 (on the Fashion-MNIST sample the median
over all test-train pairs is 0.66); centred, unrelated images sit near 0 (median -0.05) and a similarity reads the
same here as in a leak check. The ranking is as good either way (same label among the 12 nearest: 0.56 both).

Exact search streams the split in blocks of whole chunks (peak memory about ``max_bytes``): one pass for the mean,
one for the products, a running top-k. An index (:mod:`.similar_index`, ``build_similarity_index``) answers from a small
matrix instead and re-ranks its candidates exactly; it is refused when the store changed since it was built.

>>> table = similar("test/bag/test_00017.png", "features.h5", k=5)     # doctest: +SKIP
>>> [(n.label, round(n.similarity, 3)) for n in table.neighbours][:2]  # doctest: +SKIP
[('bag', 0.871), ('bag', 0.853)]
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featstore.caches import CacheNotMade
from featstore.errors import ConfigError, DataError, FeatstoreError, OutputError, StoreError, check_paths
from featstore.experiments.leaks.search import _bad_rows, _rows, normalised, scan
from featstore.experiments.similar_files import NotSigned, read_names, read_rows
from featstore.experiments.similar_index import build_similarity_index, index_dir, index_folder, load_index
from featstore.keys import user_key
from featstore.outputs import terminal_safe
from featstore.store.changed import changed_rows
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice

logger = logging.getLogger(__name__)

DEFAULT_K = 12
DEFAULT_MAX_BYTES = 256 << 20
MAX_K = 10_000


class Neighbour(NamedTuple):
    """One stored image near the query."""

    rank: int  # 1 for the nearest
    path: str  # as stored: relative to the split's source_root
    label: str  # its class
    similarity: float  # centred cosine with the query, at most 1
    row: int  # its row in the split


@dataclass(frozen=True)
class SimilarResult:
    """What :func:`similar` found: the neighbours, and how the query and the search were made."""

    query: str  # as given
    query_kind: str  # "stored" (a stored row's features) or "new" (extracted through the store's extractor)
    query_split: str | None  # the stored row's split (stored queries)
    query_row: int | None  # the stored row (stored queries)
    query_label: str | None  # the stored row's class (stored queries)
    extractor: str  # the group searched
    split: str  # the split searched
    method: str  # "exact" (streamed) or "index"
    rows: int  # rows of the split searched
    source_root: str  # the folder the neighbours' paths are relative to
    seconds: float  # time of the search (and of the extraction for a new image)
    neighbours: list[Neighbour] = field(default_factory=list)
    query_path: str | None = None  # the stored row's path (stored queries), relative to query_root
    query_root: str = ""  # the source_root of the query's own split, which may differ from the searched split's

    def query_file(self) -> str:
        """The query's image file: a stored row's from its own split's ``source_root`` (a split extracted from
        another folder than the one searched shows its own file, not one of the same name there); a new image's as
        given."""
        if self.query_kind == "stored" and self.query_path is not None:
            return os.path.join(self.query_root, self.query_path) if self.query_root else self.query_path
        return self.query

    def as_rows(self) -> list[dict]:
        """The table as dicts (rank, similarity, label, path, row)."""
        return [n._asdict() for n in self.neighbours]

    def table(self) -> str:
        """The neighbours as a text table, names escaped for a terminal.

        >>> SimilarResult("q.png", "new", None, None, None, "vgg16", "train", "exact", 3, "", 0.1).table()
        'rank  similarity  label  path'
        """
        w = max([len("label"), *(len(terminal_safe(n.label)) for n in self.neighbours)])
        lines = [f"{'rank':<4}  {'similarity':<10}  {'label':<{w}}  path"]
        lines += [
            f"{n.rank:<4}  {n.similarity:<10.4f}  {terminal_safe(n.label):<{w}}  {terminal_safe(n.path)}"
            for n in self.neighbours
        ]
        return "\n".join(lines)

    def describe(self) -> str:
        """One line: what was searched for, where, and how."""
        q = terminal_safe(self.query)
        if self.query_kind == "stored":
            q += f" (stored row {self.query_row} of {terminal_safe(self.query_split or '')}, label {terminal_safe(self.query_label or '')})"
        else:
            q += " (a new image, extracted through the store's extractor)"
        return (
            f"{len(self.neighbours)} nearest {terminal_safe(self.split)} images of {terminal_safe(self.extractor)} to "
            f"{q}: centred cosine, {self.method} search over {self.rows} rows, {self.seconds:.2f} s"
        )


def locate(fs: FeatureStore, name: str, query: str | os.PathLike) -> tuple[str, int] | None:
    """``(split, row)`` of a stored image, or None: the query is then extracted as a new image.

    A path that is a regular file here is that file (attack 64 #1: ``test/cat/0.png`` in the user's folder answered
    for the stored row of that name, another picture): its stored row is used only when the file *is* the one
    extracted, its real path being the row's path under the split's ``source_root`` and the file unchanged since
    extraction (size and mtime as the split's listing recorded them, as ``extract`` compares them:
    :func:`featstore.store.changed.changed_rows`); else it is extracted, with a note naming the stored row its text
    also names (give that row's file, under the data folder, to query the row). A path that is no file here is
    looked up as a stored path.
    """
    text = os.fspath(query)
    real = os.path.realpath(text) if os.path.isfile(text) else None
    hints = {text.split("/")[0], *Path(text).parts[-3:-2]}  # <split>/<class>/<file>: that split is read first
    named = None  # (split, row, file) of the stored row whose path is the text, when a file is at the text here
    for split in sorted(fs.splits(name), key=lambda s: s not in hints):
        try:
            paths = fs.paths(split, name)
            root = str(fs.split_info(split, name).get("source_root") or "")
        except StoreError:
            continue
        found = _index_of(paths, text)
        if real is None:
            if found is not None:
                return split, found
            continue
        if found is not None and named is None:
            named = (split, found, os.path.join(root, text) if root else text)
        rel = os.path.relpath(real, os.path.realpath(root)) if root else os.pardir
        row = None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else _index_of(paths, rel)
        if row is not None:
            if not changed_rows(fs, name, split, rows=[row])[0]:
                return split, row
            logger.warning(
                "%s changed since it was extracted as row %d of %s: it is extracted as a new image (`featstore "
                "extract --split %s --overwrite` stores it)",
                terminal_safe(text),
                row,
                terminal_safe(split),
                terminal_safe(split),
            )
            return None
    if named is not None:
        logger.warning(
            "%s is a file here, not the stored row of that path (row %d of %s, the file %s): it is extracted as a new "
            "image; give %s to query the stored row",
            terminal_safe(text),
            named[1],
            terminal_safe(named[0]),
            terminal_safe(named[2]),
            terminal_safe(named[2]),
        )
    return None


def _index_of(paths: list[str], path: str) -> int | None:
    """The row of ``path`` in a split's stored paths (paths are unique in a split), or None."""
    try:
        return paths.index(path)
    except ValueError:
        return None


def query_vector(
    fs: FeatureStore, name: str, query: str | os.PathLike, weights: str | None = None, trust_model: bool = False
) -> tuple[np.ndarray, tuple[str, int] | None]:
    """The query's flattened float32 features and, for a stored image, its ``(split, row)``.

    A new image goes through the store's exact extractor (TensorFlow is imported only then); an image that cannot
    be read is a DataError with the reason.
    """
    where = locate(fs, name, query)
    if where is not None:
        return read_rows(fs, name, where[0], np.array([where[1]]))[0], where
    path = os.fspath(query)
    if not os.path.isfile(path):
        raise ConfigError(
            f"{terminal_safe(path)} is neither an image stored in {terminal_safe(str(fs.path))}:/{terminal_safe(name)} "
            f"(give its path as stored, e.g. {_example(fs, name)}) nor an image file"
        )
    from featstore.images.decode import ImageError, load_image
    from featstore.runs.apply import rebuild_extractor

    attrs = fs.metadata(name)
    size = int(attrs.get("input_size") or 0)
    if size <= 0:
        raise ConfigError(
            f"extractor {terminal_safe(name)} was not made from images by a model featstore can rebuild "
            f"(input_size {size}); query it with a stored image instead"
        )
    try:
        img = load_image(path, size)
    except ImageError as exc:
        raise DataError(f"{terminal_safe(path)} cannot be read: {exc}") from None
    ex = rebuild_extractor(
        attrs, weights, trust_model, of=f"extractor {terminal_safe(name)!r} of {terminal_safe(str(fs.path))}"
    )
    return np.asarray(ex(img[None]), dtype=np.float32).reshape(-1), None


def _refuse_bad_query(fs: FeatureStore, name: str, query, q: np.ndarray, where: tuple[str, int] | None) -> None:
    """StoreError (DataError for a new image) when the query's features hold NaN or inf, or overflow float32 when
    squared, as ``leaks`` refuses such rows: a query from another split than the one searched was never scanned, and
    got "0 nearest images" (NaN), a raw numpy warning (inf) or ranked answers (3e38), exit 0."""
    if not len(_bad_rows(q[None])[0]):
        return
    what = (
        "hold NaN or inf, or values so large that their squared norm overflows float32; no similarity can be measured"
    )
    if where is None:
        raise DataError(
            f"the features of {terminal_safe(os.fspath(query))} from extractor {terminal_safe(name)} {what}. "
            f"Check the image and the model's weights (the same model made the store: `featstore check` counts such rows)"
        )
    split, row = where
    path = read_names(fs, name, split, np.array([row]))[0][0]
    raise StoreError(
        f"store {terminal_safe(str(fs.path))}: the query {terminal_safe(path)} (row {row} of {split!r} in {terminal_safe(name)}) "
        f"has features that {what}. Check that image, then re-extract the split with "
        f"`featstore extract --split {split} --overwrite` (`featstore check` counts such rows), or query another image"
    )


def _example(fs: FeatureStore, name: str) -> str:
    """A stored path to show in a message."""
    for split in fs.splits(name):
        paths = fs.paths(split, name)
        if paths:
            return terminal_safe(paths[0])
    return "train/cat/001.png"


def _top(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest similarities and their rows, highest first (ties: lower row first)."""
    if len(sims) > k:
        keep = np.argpartition(-sims, k - 1)[:k]
        sims, rows = sims[keep], rows[keep]
    order = np.lexsort((rows, -sims))
    return sims[order], rows[order]


def exact_search(
    fs: FeatureStore, name: str, split: str, q: np.ndarray, k: int, exclude: int | None, budget: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(similarities, rows, n)``: the k rows of ``split`` nearest to ``q``, streamed (mean first, then products)."""
    centre = scan(fs, name, [], split, budget, "similar")  # the mean; refuses NaN or inf rows
    qn = normalised(q[None], centre.mean)[0]
    # |x - mean|² cannot overflow float32 below this magnitude: then each block is centred in place and divided by
    # its row norms after the product (3 passes over a block, not normalised()'s 8); above it (and for rows whose
    # squares may underflow) normalised() rescales first
    safe = centre.scale * 2 * np.sqrt(q.size) < np.sqrt(np.finfo(np.float32).max) / 4
    best_s, best_r, off = np.zeros(0, np.float32), np.zeros(0, np.int64), 0
    for X, _ in fs.iter_batches(split, name, max_bytes=budget):
        if safe:
            R = _rows(X)
            R = R.copy() if np.shares_memory(R, X) else R  # centred in place below; X is read again for small rows
            R -= centre.mean
            norms = np.sqrt(np.einsum("ij,ij->i", R, R))
            s = (R @ qn) / np.maximum(norms, np.finfo(np.float32).tiny)
            small = np.flatnonzero(norms < 1e-15)  # squares that may have underflowed: rescaled as before
            if len(small):
                s[small] = normalised(X[small], centre.mean) @ qn
        else:
            s = normalised(X, centre.mean) @ qn
        rows = np.arange(off, off + len(s))
        if exclude is not None and off <= exclude < off + len(s):
            s[exclude - off] = -np.inf
        best_s, best_r = _top(np.concatenate([best_s, s]), np.concatenate([best_r, rows]), k)
        off += len(s)
    keep = np.isfinite(best_s)
    return best_s[keep], best_r[keep], centre.rows


def similar(
    query: str | os.PathLike,
    store: str | os.PathLike | FeatureStore = "features.h5",
    *,
    split: str = "train",
    k: int = DEFAULT_K,
    extractor: str | None = None,
    use_index: bool | None = None,
    weights: str | None = None,
    trust_model: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    option: str = "max_bytes",
) -> SimilarResult:
    """The ``k`` stored images of ``split`` most similar to ``query`` (a stored image or a new image file).

    ``use_index``: None uses the extractor's index when one was built (``build_similarity_index``) and searches exactly
    otherwise; True requires the index; False searches exactly. An index built from other features or rows than the
    store holds now is refused (rebuild it, or search exactly). A stored query is left out of its own results.
    An index not signed with this user's featstore key (planted, copied from another user, older) or whose vectors
    are not the signed ones is built again, with one warning (``max_bytes`` bounds that build and the exact search;
    ``option``: how messages name it). ``weights``/``trust_model`` as for ``predict`` (new images only). Example::

        table = similar("data/fashion_mnist/test/bag/test_00017.png", "features.h5", k=12)
        for n in table.neighbours: print(n.rank, n.similarity, n.label, n.path)
    """
    check_paths(required=True, query=query)  # '' was "' is neither an image stored in ..."
    start = time.monotonic()
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be a whole number from 1 to {MAX_K}, not {k!r}")
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    name = fs.resolve(extractor)
    if split not in fs.splits(name):
        raise ConfigError(
            f"extractor {terminal_safe(name)} has no split {split!r}; choose from: {', '.join(fs.splits(name))}"
        )
    info = fs.split_info(split, name)
    if not info.get("complete"):
        raise StoreError(f"split {split!r} of {name!r} is not complete; {resume_advice(split)}")
    q, where = query_vector(fs, name, query, weights, trust_model)
    _refuse_bad_query(fs, name, query, q, where)
    exclude = where[1] if where is not None and where[0] == split else None
    index = None if use_index is False else _index(fs, name, split, bool(use_index), max_bytes, option)
    if index is not None:
        sims, rows = index.search(fs, q, k, exclude)
        n, method = index.rows, "index"
    else:
        budget = max(int(max_bytes) // 4, 1 << 20)
        sims, rows, n = exact_search(fs, name, split, q, k, exclude, budget)
        method = "exact"
    names = fs.class_names(name)
    paths, labels = read_names(fs, name, split, rows)
    found = [
        Neighbour(i + 1, p, names[int(c)], float(min(round(float(s), 6), 1.0)), int(r))
        for i, (s, r, p, c) in enumerate(zip(sims, rows, paths, labels))
    ]
    q_label = q_path = None
    q_root = ""
    if where is not None:
        stored_paths, stored_labels = read_names(fs, name, where[0], np.array([where[1]]))
        q_path, q_label = stored_paths[0], names[int(stored_labels[0])]
        q_root = str(fs.split_info(where[0], name).get("source_root") or "")  # the query's split: its own folder
    result = SimilarResult(
        os.fspath(query),
        "stored" if where else "new",
        where[0] if where else None,
        where[1] if where else None,
        q_label,
        name,
        split,
        method,
        n,
        str(info.get("source_root") or ""),
        time.monotonic() - start,
        found,
        q_path,
        q_root,
    )
    logger.debug("%s", result.describe())
    return result


def _index(fs: FeatureStore, name: str, split: str, required: bool, max_bytes: int, option: str):
    """The split's index (:func:`load_index`); one not signed by this user's featstore is built again, said once.
    Not asked for (``required`` False), an index that cannot be loaded or built again is not used, said once with its
    reason, and the search is exact: with no key of yours (:func:`featstore.keys.user_key` says why), a folder no
    index can be written in (attack 22), a folder another user made or others may write in (CacheNotTrusted: a
    colleague's index on a shared store), or a rebuild that fails (over --memory-budget, a full disk; attack 23 #4,
    #8). Asked for, such a folder is an error that names ``--exact``."""
    try:
        return load_index(fs, name, split, required=required)
    except NotSigned as exc:
        why = str(exc)
    except CacheNotMade as exc:  # CacheNotTrusted included
        if required:
            raise OutputError(f"{exc}; or search without the index: --exact") from None
        logger.warning("the similarity index is not used (%s); the search is exact", exc)
        return None
    if not required:
        if user_key() is None:  # (it said why, once: "a similarity index is not used")
            return None
        try:
            index_folder(index_dir(fs.path, name, split))  # made and writable, as the build checks first
            build_similarity_index(fs, name, split, max_bytes=max_bytes, option=option)
            index = load_index(fs, name, split, required=True)
        except FeatstoreError as exc:
            reason = getattr(exc, "why", None) or str(exc)
            logger.warning("%s, and it cannot be built again here (%s); the search is exact", why, reason)
            return None
        logger.warning("%s; building it again: done", why)
        return index
    logger.warning("%s; building it again", why)
    build_similarity_index(fs, name, split, max_bytes=max_bytes, option=option)
    return load_index(fs, name, split, required=True)
