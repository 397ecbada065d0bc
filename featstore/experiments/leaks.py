"""Near-duplicate images between splits, found from the cached features (``featstore leaks``).

A test image that is a copy of a training image (exact, resized, re-encoded) inflates test accuracy.
For every row of the query splits this finds the most similar training row: cosine similarity of the
flattened features after subtracting the training split's mean feature vector ("centred cosine").
Centring matters: ReLU activations are all positive, so plain cosine puts every pair near 1 (0.99 for
distinct images with random weights); flattening keeps the spatial layout, which separated copies from
look-alikes better than global average pooling in every configuration measured (README, *Leakage
between splits*). Both splits are streamed in blocks of whole chunks, so the check works beyond memory.

>>> report = find_leaks("features.h5")                       # doctest: +SKIP
>>> report.counts, report.pairs[0]                           # doctest: +SKIP
({'test': 3, 'validation': 0}, LeakPair(query_split='test', query_path='cat/copy.png', ...))
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95  # centred cosine; measured on Fashion-MNIST with pretrained VGG16 features (README)
DEFAULT_QUERY = ("test", "validation")  # checked against train when no split is named (those the store has)
DEFAULT_MAX_BYTES = 256 << 20
RECORD_SUFFIX = ".leaks.json"
NEAR_MISSES = 10  # most similar pairs below the threshold kept for context
COMMIT_KEYS = (
    "committed_rows",
    "n_failed",
    "images_done",
    "listing_sha256",
    "finished_at",
)  # a split changed if any differs


class LeakPair(NamedTuple):
    """A query row and its most similar training row."""

    query_split: str  # e.g. "test"
    query_path: str  # as stored: relative to the query split's source_root (e.g. "test/cat/001.png")
    train_path: str  # as stored, relative to the reference split's source_root
    similarity: float  # centred cosine, at most 1.0
    same_label: bool  # both rows carry the same class


@dataclass(frozen=True)
class LeakReport:
    """What :func:`find_leaks` found."""

    store: str  # the store file
    extractor: str  # extractor group whose features were compared
    reference: str  # split searched for neighbours ("train")
    threshold: float  # pairs at or above this similarity are reported
    pairs: list[LeakPair]  # every query row with a near-duplicate, most similar first
    counts: dict[str, int]  # query split -> rows with a near-duplicate
    rows: dict[str, int]  # query split -> rows checked
    median: dict[str, float]  # query split -> median nearest-neighbour similarity (where distinct rows lie)
    near_misses: list[LeakPair]  # the most similar pairs below the threshold, for context
    source_roots: dict[str, str]  # split -> folder its stored paths are relative to
    seconds: float  # time the search took


def record_path(store: str | os.PathLike) -> Path:
    """Where the result of ``featstore leaks`` is recorded: ``features.h5`` -> ``features.h5.leaks.json``."""
    return Path(f"{os.fspath(store)}{RECORD_SUFFIX}")


def find_leaks(
    store: str | os.PathLike | FeatureStore,
    extractor: str | None = None,
    query: Sequence[str] | None = None,
    reference: str = "train",
    threshold: float = DEFAULT_THRESHOLD,
    max_bytes: int = DEFAULT_MAX_BYTES,
    record: bool = True,
) -> LeakReport:
    """For each row of the ``query`` splits, the most similar row of ``reference``; pairs at or above ``threshold``.

    ``query`` defaults to those of test and validation that the store has. Features are streamed in blocks
    (peak memory about ``max_bytes``). With ``record`` the counts go to ``<store>.leaks.json`` (with the
    fingerprint and split commits, so ``featstore info`` can show them and notice when they went stale).

    >>> report = find_leaks("features.h5", threshold=0.9)                      # doctest: +SKIP
    >>> [(p.query_path, p.train_path, round(p.similarity, 3)) for p in report.pairs][:1]   # doctest: +SKIP
    [('test/bag/test_00017.png', 'train/bag/train_51234.png', 1.0)]
    """
    start = time.monotonic()
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise ConfigError(
            f"threshold {threshold!r} is not in (0, 1]; use e.g. {DEFAULT_THRESHOLD} (1 = exact copies only)"
        )
    name = fs.resolve(extractor)
    queries = _query_splits(fs, name, query, reference)
    budget = _budget(fs, name, [reference, *queries], max_bytes)
    seen = {
        "fingerprint": fs.metadata(name).get("fingerprint"),
        "commits": _commits(fs, name, [reference, *queries]),
    }  # before reading
    mean, n_ref = _mean(fs, name, reference, budget)
    ref_paths, ref_labels = fs.paths(reference, name), fs.labels(reference, name)
    found: list[LeakPair] = []
    below: list[LeakPair] = []
    counts, rows, median = {}, {}, {}
    for split in queries:
        sims, idx = _nearest(fs, name, split, reference, mean, budget)
        sims = np.minimum(sims.astype(np.float64).round(6), 1.0)  # float32 sums: an exact copy may come out 0.99999994
        paths, labels = fs.paths(split, name), fs.labels(split, name)
        counts[split], rows[split] = int(np.sum(sims >= threshold)), len(sims)
        median[split] = float(np.median(sims)) if len(sims) else math.nan
        pairs = [
            LeakPair(split, paths[i], ref_paths[idx[i]], float(sims[i]), bool(labels[i] == ref_labels[idx[i]]))
            for i in np.argsort(-sims, kind="stable")[: counts[split] + NEAR_MISSES]
        ]
        found += [p for p in pairs if p.similarity >= threshold]
        below += [p for p in pairs if p.similarity < threshold]
    report = LeakReport(
        str(fs.path),
        name,
        reference,
        float(threshold),
        sorted(found, key=lambda p: -p.similarity),
        counts,
        rows,
        median,
        sorted(below, key=lambda p: -p.similarity)[:NEAR_MISSES],
        {s: str(fs.split_info(s, name).get("source_root", "")) for s in (reference, *queries)},
        time.monotonic() - start,
    )
    logger.debug(
        "leaks: %s rows of %s have a near-duplicate in %s (>= %.3f; %d %s rows, %.1f s)",
        counts,
        name,
        reference,
        threshold,
        n_ref,
        reference,
        report.seconds,
    )
    if record:
        _record(report, seen)
    return report


def _query_splits(fs: FeatureStore, name: str, query: Sequence[str] | None, reference: str) -> list[str]:
    """The query splits, checked against what the store has (an unknown one lists those there)."""
    have = fs.splits(name)
    if reference not in have:
        raise StoreError(
            f"extractor {name!r} in {fs.path} has no {reference!r} split to compare with (it has: "
            f"{', '.join(have) or 'none'}); extract it first: featstore extract --split {reference}"
        )
    if query is None:
        chosen = [s for s in DEFAULT_QUERY if s in have]
        if not chosen:
            others = [s for s in have if s != reference]
            raise StoreError(
                f"extractor {name!r} in {fs.path} has no test or validation split; name the splits to check with "
                f"--split (it has: {', '.join(others) or 'only ' + reference})"
            )
        return chosen
    if isinstance(query, str):
        query = [query]
    chosen = list(dict.fromkeys(query))
    unknown = [s for s in chosen if s not in have]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r} for extractor {name!r}; choose from: {', '.join(have)}")
    if reference in chosen:
        raise ConfigError(
            f"split {reference!r} is the reference; check the other splits against it (choose from: "
            f"{', '.join(s for s in have if s != reference) or 'none'})"
        )
    if not chosen:
        raise ConfigError("no split to check; name at least one, e.g. --split test")
    return chosen


def _budget(fs: FeatureStore, name: str, splits: list[str], max_bytes: int) -> int:
    """Bytes per feature block read (an eighth of max_bytes: two blocks, their float32 copies and a tile fit)."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
        raise ConfigError(f"max_bytes must be a number of bytes, not {max_bytes!r}")
    need = 0
    for split in splits:
        info = fs.split_info(split, name)
        if not info.get("complete"):
            raise StoreError(
                f"split {split!r} of {name!r} is not complete; finish it by re-running the same `featstore extract`"
            )
        row = int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize
        need = max(need, row * int((info.get("chunks") or [1])[0]))
    if max_bytes // 8 < need:
        raise ConfigError(
            f"max_bytes {max_bytes} is too small: a block must hold one chunk ({need} bytes) and may use an eighth "
            f"of the budget; use at least {8 * need}"
        )
    return int(max_bytes) // 8


def _rows(X: np.ndarray) -> np.ndarray:
    """Feature blocks as float32 rows (flattened)."""
    return np.asarray(X, dtype=np.float32).reshape(len(X), -1)


def _mean(fs: FeatureStore, name: str, split: str, budget: int) -> tuple[np.ndarray, int]:
    """Mean row of a split, summed block by block in float64; refuses fewer than two rows."""
    total, n = None, 0
    for X, _ in fs.iter_batches(split, name, max_bytes=budget):
        part = _rows(X).sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        n += len(X)
    if n < 2:
        raise StoreError(
            f"split {split!r} of {name!r} has {n} row(s); comparing needs at least 2 (the mean is subtracted)"
        )
    return (total / n).astype(np.float32), n


def _normalised(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus the reference mean, scaled to unit length (a row equal to the mean stays zero)."""
    R = _rows(X) - mean
    norms = np.linalg.norm(R, axis=1, keepdims=True)
    return R / np.maximum(norms, np.finfo(np.float32).tiny)


def _nearest(
    fs: FeatureStore, name: str, split: str, reference: str, mean: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: the highest similarity to any reference row, and that row's index (blocked products)."""
    sims, idx = [], []
    for Q, _ in fs.iter_batches(split, name, max_bytes=budget):
        q = _normalised(Q, mean)
        best = np.full(len(q), -np.inf, dtype=np.float32)
        arg = np.zeros(len(q), dtype=np.int64)
        offset = 0
        for T, _ in fs.iter_batches(reference, name, max_bytes=budget):
            t = _normalised(T, mean)
            step = max(1, budget // (4 * len(t)))  # similarity tiles of at most `budget` bytes
            for s in range(0, len(q), step):
                S = q[s : s + step] @ t.T
                j = S.argmax(axis=1)
                v = S[np.arange(len(j)), j]
                better = v > best[s : s + step]
                best[s : s + step][better] = v[better]
                arg[s : s + step][better] = j[better] + offset
            offset += len(t)
        sims.append(best)
        idx.append(arg)
    return (np.concatenate(sims), np.concatenate(idx)) if sims else (np.zeros(0, np.float32), np.zeros(0, np.int64))


def _commits(fs: FeatureStore, name: str, splits: Sequence[str]) -> dict[str, dict]:
    """What identifies each split's rows (counts, listing digest, finish time), to tell a stale record."""
    return {s: {k: fs.split_info(s, name).get(k) for k in COMMIT_KEYS} for s in splits}


def _record(report: LeakReport, seen: dict) -> None:
    """Write this extractor's counts into ``<store>.leaks.json`` atomically (temp file + os.replace); a failure is logged.

    ``seen`` holds the fingerprint and split commits read before the search, so a change made meanwhile shows as stale.
    """
    path = record_path(report.store)
    data = _read_record(path) or {"format": 1, "extractors": {}}
    data["extractors"][report.extractor] = {
        **seen,
        "reference": report.reference,
        "threshold": report.threshold,
        "counts": report.counts,
        "rows": report.rows,
        "median": report.median,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        logger.warning("could not record the result in %s (%s); `featstore info` will not show it", path, exc)


def _read_record(path: Path) -> dict | None:
    """The record file as a dict, or None if absent or unreadable (logged)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("extractors"), dict):
        logger.warning("ignoring %s: not a featstore leaks record", path)
        return None
    return data


def leaks_line(store: str | os.PathLike, extractor: str, entry: dict) -> str:
    """One line for ``featstore info``: the recorded counts, "not checked", or STALE with the reason.

    ``entry`` is the extractor's part of :meth:`FeatureStore.info` (its fingerprint and split summaries).

    >>> leaks_line("/nonexistent.h5", "vgg16", {"attrs": {}, "splits": {}})
    'leaks: not checked (featstore leaks)'
    """
    data = _read_record(record_path(store))
    rec = (data or {}).get("extractors", {}).get(extractor)
    if not isinstance(rec, dict):
        return "leaks: not checked (featstore leaks)"
    try:
        counts = " / ".join(f"{int(n)} {s}" for s, n in rec["counts"].items())
        said = f"{counts} rows with a near-duplicate in {rec['reference']} (threshold {float(rec['threshold']):g}"
        why = _stale_reason(rec, entry)
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"leaks: record in {record_path(store)} is damaged; re-run featstore leaks"
    if why:
        return f"leaks: STALE ({why}); re-run featstore leaks. It found {said})"
    return f"leaks: {said}, featstore leaks)"


def _stale_reason(rec: dict, entry: dict) -> str:
    """Why a record no longer describes the store's features ('' if it still does)."""
    if rec["fingerprint"] != entry.get("attrs", {}).get("fingerprint"):
        return "recorded for other features: the fingerprint differs"
    for split, commit in rec["commits"].items():
        now = entry.get("splits", {}).get(split)
        if now is None or "error" in now:
            return f"split {split!r} is gone or damaged"
        if any(now.get(k) != v for k, v in commit.items()):
            return f"split {split!r} was re-extracted or changed since"
    return ""


def leaks_csv(report: LeakReport, out: str | os.PathLike) -> Path:
    """Every reported pair as CSV ``query_split,query_path,train_path,similarity,same_label``.

    >>> leaks_csv(find_leaks("features.h5"), "leaks.csv")       # doctest: +SKIP
    PosixPath('leaks.csv')
    """
    out = Path(out)
    with open(out, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(LeakPair._fields)
        w.writerows(
            (p.query_split, p.query_path, p.train_path, f"{p.similarity:.6f}", p.same_label) for p in report.pairs
        )
    return out


def _short(text: str, n: int = 38) -> str:
    """A path shortened from the left to n characters."""
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def _picture(root: str, rel: str, side: int) -> tuple[np.ndarray, str]:
    """The image as shown (square, like the model saw it), or a grey placeholder and the reason it is missing."""
    from featstore.images.listing import ImageError, load_image

    path = os.path.join(root, rel)
    try:
        return load_image(path, side), ""
    except (ImageError, OSError) as exc:
        why = "not found" if not os.path.lexists(path) else str(exc) or type(exc).__name__
        return np.full((side, side, 3), 200, np.uint8), why


def leaks_png(report: LeakReport, out: str | os.PathLike, top: int = 10) -> tuple[Path, list[str]]:
    """The ``top`` most similar pairs side by side (query left, training image right) as a PNG.

    With no pair above the threshold, the nearest pairs below it are drawn (titled so). Images are read
    from each split's ``source_root``; one that cannot be read becomes a placeholder naming the reason,
    and is listed in the second return value.

    >>> png, missing = leaks_png(find_leaks("features.h5"), "leaks.png")   # doctest: +SKIP
    """
    from featstore.plots import pyplot

    plt = pyplot()
    pairs, note = (report.pairs[:top], "") if report.pairs else (report.near_misses[:top], " (below the threshold)")
    missing: list[str] = []
    height = 0.5 + 2.6 * max(len(pairs), 1)
    fig, axes = plt.subplots(max(len(pairs), 1), 2, figsize=(6, height), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if not pairs:
        axes[0, 0].text(0.5, 0.5, "no rows to compare", ha="center", va="center", transform=axes[0, 0].transAxes)
    for row, p in zip(axes, pairs):
        for ax, split, rel in ((row[0], p.query_split, p.query_path), (row[1], report.reference, p.train_path)):
            img, why = _picture(report.source_roots.get(split, ""), rel, 128)
            ax.imshow(img)
            if why:
                missing.append(f"{split}:{rel} ({why})")
                ax.text(
                    0.5,
                    0.5,
                    "image missing:\n" + why[:40],
                    ha="center",
                    va="center",
                    fontsize=7,
                    transform=ax.transAxes,
                )
            ax.set_title(_short(rel), fontsize=7)
        row[0].text(
            1.1,
            -0.08,
            f"similarity {p.similarity:.4f}" + ("" if p.same_label else ", OTHER LABEL"),
            ha="center",
            fontsize=8,
            transform=row[0].transAxes,
        )
    fig.suptitle(
        f"{report.extractor}: nearest {report.reference} rows{note}, threshold {report.threshold:g}", fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # leave the suptitle its own strip
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    for m in missing:
        logger.debug("leaks PNG: placeholder for %s", m)
    return out, missing
