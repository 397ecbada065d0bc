"""What the index and the leaks page show about the store: provenance, splits, counts, failures, near-duplicates.

The leaks page shows the pairs of the last ``featstore leaks`` of each extractor, side by side. The record beside the
store (``<store>.leaks.json``) keeps counts only, so the pairs are found again with the recorded threshold and splits
(the same search, ``record=False``) and kept in the report's cache, keyed by the record's entry: the next report
reuses them until ``featstore leaks`` runs again, when they are signed with this user's key (:func:`featstore.keys.seal`:
pairs planted there, or copied with a store, showed the planter's pairs, similarities and flags; they are found again,
with one warning). A record that is stale (the features changed since) or damaged is
said so, and nothing is searched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from featstore.caches import cache_folder, read_small, write_cached_text
from featstore.errors import FeatstoreError, OutputError
from featstore.experiments.leaks import BadRecord, find_leaks, leaks_line, read_record, record_path
from featstore.experiments.leaks.find import COMMIT_KEYS
from featstore.experiments.leaks.record import check_entry
from featstore.keys import seal, unsealed, user_key
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)

PROVENANCE = (
    "model",
    "layer",
    "input_size",
    "pooling",
    "feature_shape",
    "dtype",
    "preprocess_description",
    "resize_description",
    "weights_description",
    "weights_sha256",
    "fingerprint",
    "created_at",
    "keras_version",
    "tensorflow_version",
    "featstore_version",
)
MAX_FAILURES = 50  # per split, on the index
MAX_PAIRS = 200  # per extractor, on the leaks page
MAX_CACHE_BYTES = 64 << 20
PAIRS = "leak-pairs"  # what their cache's HMAC is signed as (featstore.keys)


@dataclass
class Pair:
    """A flagged (or nearest) pair: a query image and the reference image it is closest to."""

    split: str
    query: str  # as stored
    reference: str  # as stored
    query_source: str
    reference_source: str
    similarity: float
    same_label: bool
    same_bytes: bool
    query_thumb: str | None = None
    reference_thumb: str | None = None
    query_reason: str = ""
    reference_reason: str = ""


@dataclass
class LeakView:
    """The leaks of one extractor."""

    extractor: str
    line: str  # the line `featstore info` prints
    reference: str = "train"
    threshold: float | None = None
    pairs: list[Pair] = field(default_factory=list)
    total: int = 0  # flagged pairs (shown: at most MAX_PAIRS)
    below: bool = False  # no pair flagged: the pairs are the nearest below the threshold
    note: str = ""  # why no pairs are shown


def overview(fs: FeatureStore) -> dict:
    """The store for the index: root attributes and, per extractor, provenance rows, splits, class counts, failures."""
    info = fs.info()
    out = {"path": str(fs.path), "attrs": info.get("attrs", {}), "extractors": []}
    for name, entry in info["extractors"].items():
        attrs = entry.get("attrs", {})
        splits, counts, failures = [], {}, []
        classes: list[str] = []
        for split, s in entry.get("splits", {}).items():
            if "error" in s:
                splits.append({"name": split, "error": s["error"]})
                continue
            classes = classes or list(s.get("class_names", []))
            counts[split] = s.get("class_counts", [])
            splits.append({"name": split, **{k: s.get(k) for k in ("committed_rows", "n_images", "n_failed")}})
            splits[-1].update(
                complete=bool(s.get("complete")), shape=s.get("shape"), source_root=s.get("source_root", "")
            )
            splits[-1]["augmented"] = (s.get("augmented") or {}).get("committed_rows")
            if s.get("n_failed"):
                try:
                    found = fs.failures(split, name)
                except FeatstoreError as exc:
                    found = [("", str(exc))]
                failures += [(split, p, r) for p, r in found[:MAX_FAILURES]]
                if len(found) > MAX_FAILURES:
                    failures.append((split, "", f"... and {len(found) - MAX_FAILURES} more (featstore info)"))
        out["extractors"].append(
            {
                "name": name,
                "error": entry.get("error"),
                "provenance": [(k, attrs[k]) for k in PROVENANCE if k in attrs],
                "splits": splits,
                "classes": classes,
                "counts": counts,
                "failures": failures,
                "leaks": leaks_line(fs.path, name, entry),
            }
        )
    return out


def _fresh_entry(fs: FeatureStore, name: str) -> tuple[dict | None, str]:
    """The extractor's leaks record entry if it still describes the store, else (None, why not)."""
    try:
        data = read_record(record_path(fs.path))
        entry = (data or {}).get("extractors", {}).get(name)
        if entry is None:
            return None, "not checked: run `featstore leaks` to find near-duplicates between splits"
        entry = check_entry(entry)
    except BadRecord as exc:
        return None, f"the leaks record is damaged: it {exc}; re-run `featstore leaks`"
    if entry["fingerprint"] != fs.metadata(name).get("fingerprint"):
        return None, "the leaks record is stale (other features); re-run `featstore leaks`"
    for split, commit in entry["commits"].items():
        try:
            now = fs.split_info(split, name)
        except FeatstoreError:
            return None, f"the leaks record is stale (split {split!r} is gone); re-run `featstore leaks`"
        if any(now.get(k) != commit.get(k) for k in COMMIT_KEYS if k in commit):
            return None, f"the leaks record is stale (split {split!r} changed); re-run `featstore leaks`"
    return entry, ""


def leak_view(fs: FeatureStore, name: str, cache: Path | None, line: str) -> LeakView:
    """The pairs of the extractor's last leak check (from the cache, or found again with its threshold)."""
    view = LeakView(name, line)
    entry, why = _fresh_entry(fs, name)
    if entry is None:
        view.note = why
        return view
    view.reference, view.threshold = entry["reference"], float(entry["threshold"])
    key = hashlib.sha256(json.dumps([name, entry], sort_keys=True, default=str).encode()).hexdigest()[:24]
    secret = user_key() if cache else None  # None: (said once) nothing cached is trusted, nor kept
    file = cache_folder(cache, what="report cache") / f"leaks-{key}.json" if secret else None  # never through a link
    found = _read_cache(file) if file else None
    if found is not None and (why := unsealed(secret, PAIRS, file.name, found)):
        logger.warning("cached leak pairs %s are found again: %s", file, why)
        found = None
    if found is not None and not _of_store(found, fs, name, entry["reference"], list(entry["counts"])):
        logger.warning("cached leak pairs %s name files that are not the store's; finding them again", file)
        found = None
    if found is None:
        try:
            report = find_leaks(
                fs, name, list(entry["counts"]), entry["reference"], float(entry["threshold"]), record=False
            )
        except FeatstoreError as exc:
            view.note = f"the pairs cannot be found again: {exc}"
            return view
        found = {
            "pairs": [list(p) for p in report.pairs],
            "near": [list(p) for p in report.near_misses],
            "roots": report.source_roots,
        }
        if file:
            try:
                write_cached_text(cache, file, json.dumps(seal(secret, PAIRS, file.name, found)), "report cache")
            except (OSError, OutputError) as exc:
                logger.warning("leak pairs not cached: %s", exc)
    pairs, view.below = (found["pairs"], False) if found["pairs"] else (found["near"], True)
    view.total = len(pairs)
    roots = found["roots"]
    for split, q, t, sim, same_label, same_bytes in pairs[:MAX_PAIRS]:
        view.pairs.append(
            Pair(
                split,
                q,
                t,
                _join(roots.get(split, ""), q),
                _join(roots.get(view.reference, ""), t),
                float(sim),
                bool(same_label),
                bool(same_bytes),
            )
        )
    return view


def _of_store(found: dict, fs: FeatureStore, name: str, reference: str, queries: list[str]) -> bool:
    """Whether cached pairs name only the store's files: each split's recorded folder, each path one of the split's
    stored paths (a planted cache could otherwise make the report show any image on the machine)."""
    try:
        splits = {s: set(fs.paths(s, name)) for s in (reference, *queries)}
        roots = {s: str(fs.split_info(s, name).get("source_root", "")) for s in splits}
    except FeatstoreError:
        return False
    return found["roots"] == roots and all(
        p[0] in splits and p[1] in splits[p[0]] and p[2] in splits[reference]
        for key in ("pairs", "near")
        for p in found[key]
    )


def _join(root: str, path: str) -> str:
    return os.path.join(root, path) if root else path


def _read_cache(file: Path) -> dict | None:
    """Cached pairs, checked field by field (anything else: None, found again). Opened once and checked on that
    descriptor (:func:`featstore.caches.read_small`): a FIFO renamed there after a check by name hung `report`."""
    try:
        raw = read_small(file, MAX_CACHE_BYTES)
        if raw is None:
            return None
        data = json.loads(raw.decode("utf-8", errors="surrogateescape"))
        ok = (
            isinstance(data, dict)
            and isinstance(data.get("roots"), dict)
            and all(isinstance(v, str) for v in data["roots"].values())
        )
        for key in ("pairs", "near"):
            ok = ok and isinstance(data.get(key), list)
            for p in data.get(key, []) if ok else []:
                ok = ok and isinstance(p, list) and len(p) == 6 and all(isinstance(x, str) for x in p[:3])
                ok = ok and isinstance(p[3], (int, float)) and all(isinstance(x, bool) for x in p[4:])
        return data if ok else None
    except (OSError, ValueError, RecursionError):
        return None
