"""Which runs a store's report shows, and what each chose on which split (attack 63 #4, #5; attack 65 #8).

A ``--runs`` folder shared by several stores holds runs scored on other images: the site of one store leaves them
out (and says how many) rather than list and chart them beside its own. A run is this store's when it records this
store's path, or when what identifies the store's rows says so whatever path it records (a project folder moved or
copied since, attack 65 #8): every fingerprint it was made on is one of the store's extractors', and every split it
recorded names the image listing (or the digest of the rows written from arrays) that split has in the store now, as
``runs compare`` tells the same rows apart. The others are left out with a note; ``featstore report --store`` of
their store is advised only where that store still exists. Where no run is this store's (the store re-made, runs
from before listings were recorded), none is left out, and the page carries the runs table's note when they come
from several stores. Each shown run knows the splits it chose its settings, epoch, ensemble members or weights on
(``featstore.runs.selected``): its figures there are marked optimistic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from featstore.report.runs import stores_note
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord
from featstore.runs.selected import selected_on, sweep_choices
from featstore.store.digests import identifies_rows, split_listing


def store_rows(fs) -> dict[str, dict[str, str]]:
    """What identifies the rows of ``fs`` (a FeatureStore): fingerprint -> {split: its listing digest, as a run records
    it (:func:`featstore.store.digests.split_listing`)}, for every extractor group (fine-tuning caches included)."""
    rows: dict[str, dict[str, str]] = {}
    for name in fs.extractors():
        splits = rows.setdefault(str(fs.metadata(name).get("fingerprint")), {})
        for split in fs.splits(name):
            splits[split] = split_listing(fs.split_info(split, name))
    return rows


def _recorded_listings(rec: RunRecord) -> dict[str, str | None]:
    """split -> the listing digest ``rec`` recorded for it: its stored predictions' splits and its inputs' splits."""
    got: dict[str, str | None] = {s: p.listing_sha256 for s, p in rec.predictions.items()}
    inputs = rec.get("inputs")
    splits = inputs.get("splits") if isinstance(inputs, Mapping) else None
    for s, v in splits.items() if isinstance(splits, Mapping) else ():
        if isinstance(v, Mapping):
            got.setdefault(str(s), v.get("listing_sha256"))
    return got


def same_rows(rec: RunRecord, rows: dict[str, dict[str, str]]) -> bool:
    """Whether ``rec`` was scored on the store's rows (``rows``: :func:`store_rows`): each of its fingerprints is one
    of the store's, and each split it recorded has the listing that split has in the store; False where it records
    no split whose listing tells rows apart (a run made before listings were recorded)."""
    fps = rec.fingerprint.split("+")
    if not all(f in rows for f in fps):
        return False
    listings = _recorded_listings(rec)
    if not listings or not all(identifies_rows(v) for v in listings.values()):
        return False
    return all(any(rows[f].get(s) == v for f in fps) for s, v in listings.items())


def runs_of_store(records: list[RunRecord], store: str | os.PathLike, fs=None) -> tuple[list[RunRecord], list[str]]:
    """``(the runs to show, notes)``: the runs of ``store`` (recording its path, or where ``fs``, the store opened, is
    given, scored on its rows: :func:`same_rows`) and those recording no store; the others left out with a note
    naming how many and their stores; all of them, with the runs table's note, where none is this store's."""
    here = str(Path(store).resolve())
    rows = store_rows(fs) if fs is not None else {}
    at = {r.id: str(r.get("store")) for r in records if r.get("store")}
    own = {i for i, s in at.items() if s == here}
    moved = {r.id for r in records if r.id in at and r.id not in own and same_rows(r, rows)}
    if not own | moved:  # no run is known to be this store's: every run shown, as the runs table shows them
        return records, [n for n in [stores_note(records)] if n]
    kept = [r for r in records if r.id not in at or r.id in own | moved]
    notes = (
        [_left_out([r for r in records if r.id in at and r.id not in own | moved], at)]
        if len(kept) < len(records)
        else []
    )
    if moved:
        paths = sorted({at[i] for i in moved})
        notes.append(
            f"{len(moved)} run(s) record this store at another path ({_names(paths)}): the project was moved or the "
            f"store copied since; they are shown, scored on this store's rows (the same extractor fingerprint and "
            f"image listings)"
        )
    return kept, notes


def _names(paths: list[str]) -> str:
    """The first five of ``paths``, comma-separated."""
    return ", ".join(paths[:5]) + (", ..." if len(paths) > 5 else "")


def _left_out(others: list[RunRecord], at: dict[str, str]) -> str:
    """The note on the runs of other stores left out: how many, which stores, and the report that shows them where
    their store is still there (a store no longer there cannot be reported: ``featstore runs`` lists its runs)."""
    stores = sorted({at[r.id] for r in others})
    gone = [s for s in stores if not Path(s).exists()]
    there = [s for s in stores if s not in gone]
    text = (
        f"{len(others)} run(s) of {len(stores)} other store(s) in this runs folder are not shown ({_names(stores)}): "
        f"they were scored on other images (their extractor fingerprint or image listings are not this store's)"
    )
    if there:
        text += f"; `featstore report --store {there[0]}`" + (" (and of the others)" if len(there) > 1 else "")
        text += " shows them"
    if gone:
        text += (
            f"; {_names(gone)} no longer exist{'s' if len(gone) == 1 else ''}, so no report shows "
            f"{'its' if len(gone) == 1 else 'their'} runs: `featstore runs` lists them"
        )
    return text


def mark_selected(views: list, root=None) -> None:
    """Set each run view's ``selected`` (split -> what the run chose there), members read from the listed runs, a
    sweep's choice from the summaries in runs folder ``root`` (attack 65 #6), and its description's lines with them
    (its page said "(nothing to select)" beside its own "selected here" mark: attack 73 #8)."""
    by_id = {v.rec.id: v.rec for v in views}
    sweeps = sweep_choices(root) if root is not None else None
    for v in views:
        v.selected = selected_on(v.rec, by_id.get, sweeps)
        v.lines = kind_of(v.rec).describe(v.rec, v.selected)
