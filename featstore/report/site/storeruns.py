"""Which runs a store's report shows, and what each chose on which split (attack 63 #4, #5).

A ``--runs`` folder shared by several stores holds runs scored on other images: the site of one store leaves them
out (and says how many) rather than list and chart them beside its own. Where no run records this very store (a
project folder moved since: every run names the old path), none is left out, and the page carries the runs
table's note when they come from several stores. Each shown run knows the splits it chose its settings, epoch,
ensemble members or weights on (``featstore.runs.selected``): its figures there are marked optimistic.
"""

from __future__ import annotations

import os
from pathlib import Path

from featstore.report.runs import stores_note
from featstore.runs.record import RunRecord
from featstore.runs.selected import selected_on


def runs_of_store(records: list[RunRecord], store: str | os.PathLike) -> tuple[list[RunRecord], list[str]]:
    """``(the runs to show, notes)``: the runs of ``store`` (and those recording no store), the others left out
    with a note naming how many and their stores; all of them, with the runs table's note, where none records
    ``store`` itself."""
    here = str(Path(store).resolve())
    stores = {str(r.get("store")) for r in records if r.get("store")}
    if len(stores) <= 1 or here not in stores:
        return records, [n for n in [stores_note(records)] if n]
    kept = [r for r in records if not r.get("store") or str(r.get("store")) == here]
    others = sorted(stores - {here})
    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    note = (
        f"{len(records) - len(kept)} run(s) of {len(others)} other store(s) in this runs folder are not shown "
        f"({shown}): they were scored on other images; `featstore report --store` of that store shows them"
    )
    return kept, [note]


def mark_selected(views: list) -> None:
    """Set each run view's ``selected`` (split -> what the run chose there), members read from the listed runs."""
    by_id = {v.rec.id: v.rec for v in views}
    for v in views:
        v.selected = selected_on(v.rec, by_id.get)
