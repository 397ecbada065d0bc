"""find_leaks: each query row's nearest train row, flagged by a per-extractor threshold or by identical file bytes."""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
from collections.abc import Sequence

import numpy as np

from featstore.errors import ConfigError, OutputError, StoreError
from featstore.experiments.leaks.hashes import same_bytes
from featstore.experiments.leaks.record import write_record
from featstore.experiments.leaks.result import (
    DEFAULT_MAX_BYTES,
    DEFAULT_QUANTILE,
    DEFAULT_QUERY,
    DEFAULT_SAMPLE,
    NEAR_MISSES,
    Calibration,
    LeakPair,
    LeakReport,
    SplitCopies,
)
from featstore.experiments.leaks.search import nearest, query_blocks, rounded, scan
from featstore.experiments.leaks.threshold import calibrate, check_settings
from featstore.experiments.leaks.within import copies_within
from featstore.outputs import terminal_safe
from featstore.store.names import names_text
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice
from featstore.store.storage import chunk_rows, row_bytes

logger = logging.getLogger(__name__)

COMMIT_KEYS = (
    "committed_rows",
    "n_failed",
    "images_done",
    "listing_sha256",
    "finished_at",
    "rows_sha256",  # a split written from arrays: its listing is "arrays:<rows>", its finish time to the second
)  # a split changed if any differs
OPTIONAL_KEYS = ("rows_sha256",)  # recorded where the split has it; a record made before it compares the rest


def split_commit(info: dict) -> dict:
    """What identifies a split's rows, from its ``split_info``: :data:`COMMIT_KEYS`, ``rows_sha256`` only where the
    split records one (an extracted split's commit is the same as before the key was added).

    >>> sorted(split_commit({"listing_sha256": "arrays:3", "rows_sha256": "ab"})) == sorted(COMMIT_KEYS)
    True
    >>> "rows_sha256" in split_commit({"listing_sha256": "9f"})
    False
    """
    return {k: info.get(k) for k in COMMIT_KEYS if k not in OPTIONAL_KEYS or info.get(k) is not None}


def commit_changes(was: dict, now: dict) -> list[str]:
    """The keys of a split's commit that differ between a record (``was``) and the store (``now``:
    :func:`split_commit`), as ``"key 'old' -> 'new'"``. A key of :data:`OPTIONAL_KEYS` absent from the record is not compared: a record made
    before featstore recorded it stays usable (the rest of the commit is compared).

    >>> commit_changes({"committed_rows": 3}, {"committed_rows": 3, "rows_sha256": "ab"})
    []
    >>> commit_changes({"committed_rows": 3, "rows_sha256": "ab"}, {"committed_rows": 3, "rows_sha256": "cd"})
    ["rows_sha256 'ab' -> 'cd'"]
    """
    keys = [k for k in dict.fromkeys([*now, *was]) if k not in OPTIONAL_KEYS or k in was]
    return [f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in keys if was.get(k) != now.get(k)]


def find_leaks(
    store: str | os.PathLike | FeatureStore,
    extractor: str | None = None,
    query: Sequence[str] | None = None,
    reference: str = "train",
    threshold: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    record: bool = True,
    *,
    quantile: float = DEFAULT_QUANTILE,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    compare_bytes: bool = True,
) -> LeakReport:
    """For each row of the ``query`` splits, the most similar row of ``reference``; flags copies and near-copies.

    A query row is flagged when its image file has the same bytes as a reference image (sha256, found through the
    stored paths and ``source_root``; ``compare_bytes=False`` skips this) or when its nearest reference row's
    similarity (centred cosine of the features) is at or above the threshold. The same hashing groups the rows of
    each split read (``reference`` and the queries) whose files hold the same bytes: ``report.within[split]``
    (:class:`SplitCopies`: rows, distinct images, groups, a few example paths; its ``advice`` line says what the
    copies do to that split's figures); ``report.near_within[split]`` counts the rows of each query split whose
    nearest *other* row of that split is at or above the threshold (near-duplicates inside it). Without ``threshold`` it is
    calibrated on this extractor: the ``quantile`` of the similarity of ``sample`` reference rows (seeded by
    ``seed``) to their nearest *other* reference row, so the count means the same on every layer and model.
    ``query`` defaults to those of test and validation that the store has. Features are streamed in blocks (peak
    memory about ``max_bytes``). NaN or inf rows are refused (StoreError naming the splits and rows). With
    ``record`` the counts go to ``<store>.leaks.json`` (a failure to write it is logged, not raised).

    >>> report = find_leaks("features.h5")                                     # doctest: +SKIP
    >>> report.calibration.describe()                                          # doctest: +SKIP
    'threshold 0.9929 (calibrated: 0.99 quantile of the similarity of a seeded sample of 2000 train rows ...)'
    >>> [(p.query_path, p.train_path, p.same_bytes) for p in report.pairs][:1]  # doctest: +SKIP
    [('test/bag/test_00017.png', 'train/bag/train_51234.png', True)]
    >>> report.within["test"].rows, report.within["test"].distinct             # doctest: +SKIP
    (96, 12)
    """
    start = time.monotonic()
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store)
    check_settings(threshold, quantile, sample, seed)
    name = fs.resolve(extractor)
    queries = _query_splits(fs, name, query, reference)
    budget = _budget(fs, name, [reference, *queries], max_bytes)
    fingerprint = fs.metadata(name).get("fingerprint")
    commits = _commits(fs, name, [reference, *queries])  # before reading: a change meanwhile shows as stale
    centre = scan(fs, name, queries, reference, budget)
    if threshold is None:
        cal = calibrate(fs, name, reference, centre, budget, quantile, sample, seed)
    else:
        cal = Calibration("given", float(threshold))
    matches, unhashed, within, changed = _by_bytes(fs, name, queries, reference) if compare_bytes else ({}, {}, {}, {})
    ref_paths, ref_labels = fs.paths(reference, name), fs.labels(reference, name)
    found: list[LeakPair] = []
    below: list[LeakPair] = []
    counts, rows, median, exact, near_within = {}, {}, {}, {}, {}
    for split in queries:
        copies = matches.get(split, {})
        blocks = query_blocks(fs, name, split, budget)
        sims, idx, pair_sims = nearest(fs, name, blocks, reference, centre, budget, want=copies)
        sims = rounded(sims)
        paths, labels = fs.paths(split, name), fs.labels(split, name)
        flagged = sims >= cal.threshold
        flagged[list(copies)] = True
        counts[split], rows[split], exact[split] = int(flagged.sum()), len(sims), len(copies)
        median[split] = float(np.median(sims)) if len(sims) else math.nan
        inside = nearest(fs, name, query_blocks(fs, name, split, budget), split, centre, budget, skip_self=True)[0]
        near_within[split] = int((rounded(inside) >= cal.threshold).sum())  # near-duplicates inside the split
        order = np.argsort(-sims, kind="stable")
        for i in [*order[flagged[order]], *order[~flagged[order]][:NEAR_MISSES]]:
            i = int(i)
            if i in copies:  # the pair with the same bytes, with its own similarity
                j, sim = copies[i], float(rounded(np.array([pair_sims.get(i, sims[i])]))[0])
            else:
                j, sim = int(idx[i]), float(sims[i])
            pair = LeakPair(split, paths[i], ref_paths[j], sim, bool(labels[i] == ref_labels[j]), i in copies)
            (found if flagged[i] else below).append(pair)
    report = LeakReport(
        str(fs.path),
        name,
        reference,
        cal.threshold,
        sorted(found, key=lambda p: (-p.similarity, not p.same_bytes)),
        counts,
        rows,
        median,
        sorted(below, key=lambda p: -p.similarity)[:NEAR_MISSES],
        {s: str(fs.split_info(s, name).get("source_root", "")) for s in (reference, *queries)},
        time.monotonic() - start,
        cal,
        exact,
        unhashed,
        fingerprint,
        commits,
        within,
        near_within,
        changed,
    )
    logger.debug(
        "leaks: %s rows of %s flagged against %s (%s; %d %s rows, %.1f s)",
        counts,
        name,
        reference,
        cal.describe(),
        centre.rows,
        reference,
        report.seconds,
    )
    if record:
        try:
            write_record(report)
        except OutputError as exc:
            logger.warning("%s; `featstore info` will not show this result", str(exc).rstrip("."))
    return report


def _by_bytes(
    fs: FeatureStore, name: str, queries: list[str], reference: str
) -> tuple[dict[str, dict[int, int]], dict[str, list[str]], dict[str, SplitCopies], dict[str, int]]:
    """Query rows with the same file bytes as a reference row, the files not compared, each split's own copies
    (one listing of the files for both; a file read for one is not read again for the other), and per split the rows
    whose file changed since extraction (never compared)."""
    seen: dict[tuple, tuple[str, str]] = {}
    listings: dict = {}
    matches, unhashed = same_bytes(fs, name, queries, reference, seen, listings)
    within = copies_within([reference, *queries], listings, seen, unhashed)
    changed = {s: len(got.changed) for s, got in listings.items() if got is not None and len(got.changed)}
    return matches, {s: list(dict.fromkeys(v)) for s, v in unhashed.items()}, within, changed


def _query_splits(fs: FeatureStore, name: str, query: Sequence[str] | None, reference: str) -> list[str]:
    """The query splits, checked against what the store has (an unknown one lists those there)."""
    have = fs.splits(name)
    if reference not in have:
        raise StoreError(
            f"extractor {name!r} in {terminal_safe(str(fs.path))} has no {reference!r} split to compare with (it has: "
            f"{names_text(have)}); extract it first: featstore extract --split {reference}"
        )
    if query is None:
        chosen = [s for s in DEFAULT_QUERY if s in have]
        if not chosen:
            others = [s for s in have if s != reference]
            raise StoreError(
                f"extractor {name!r} in {terminal_safe(str(fs.path))} has no test or validation split; name the "
                f"splits to check with --split (it has: {names_text(others) if others else 'only ' + reference})"
            )
        return chosen
    if isinstance(query, str):
        query = [query]
    chosen = list(dict.fromkeys(query))
    unknown = [s for s in chosen if s not in have]
    if unknown:
        raise ConfigError(f"unknown split {unknown[0]!r} for extractor {name!r}; choose from: {names_text(have)}")
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
            raise StoreError(f"split {split!r} of {name!r} is not complete; {resume_advice(split)}")
        need = max(need, row_bytes(info) * chunk_rows(info))
    if max_bytes // 8 < need:
        raise ConfigError(
            f"max_bytes {max_bytes} is too small: a block must hold one chunk ({need} bytes) and may use an eighth "
            f"of the budget; use at least {8 * need}"
        )
    return int(max_bytes) // 8


def _commits(fs: FeatureStore, name: str, splits: Sequence[str]) -> dict[str, dict]:
    """What identifies each split's rows (counts, listing digest, finish time), to tell a stale record."""
    return {s: split_commit(fs.split_info(s, name)) for s in splits}
