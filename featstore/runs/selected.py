"""On which split a run chose something: its settings, its epoch, its ensemble members or weights.

A run's figures on the split that chose among its candidates are optimistic: of 1,000 seeds of a forest on pure
noise, the best on 40 validation rows scores 0.75 there, and a paired test on those rows calls its lead "larger than
chance" (attack 63 #5). ``runs compare`` and the report say so per split, read from what the run recorded:

- ``selection["chosen_on"]``: the split the search scored its settings on (validation, or ``<train>.oof`` when
  cross-validation on train chose them; a fit since attack 63), or, for an older run, the split its
  ``selection["method"]`` names when it tried more than one setting. A run of one setting chose nothing;
- a Keras head or a fine-tuned model that stopped early on ``val_loss`` (its history has one) chose its epoch on the
  validation split;
- an ensemble: the split its weights were chosen on (``selection["chosen_on"]``, a sweep's greedy selection), and,
  one level down, where each member (and a fine-tuned run's phase A run) chose its own: what the ensemble recorded
  when it was made (``members_selected_on``, since attack 65 #11: a member deleted since keeps its mark), else read
  from the member's record now; a member gone that the ensemble did not record marks every split but test
  (where it chose is unknown);
- a sweep's choice (:func:`sweep_choices`): the best single run (and the winner) of a sweep of several runs, chosen
  on the split the sweep's summary ``sweep-<id>.json`` in the runs folder names (attack 65 #6).

>>> selected_on({"kind": "fit", "selection": {"chosen_on": "validation", "candidates": [{}, {}]}})
{'validation': 'its settings'}
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from featstore.provenance import OOF

_ACCURACY_ON = re.compile(r"accuracy on the '([^']+)' split")
_CV_ON = re.compile(r"cross-validation on '([^']+)'")


def _own(rec: Mapping) -> dict[str, str]:
    """Split -> what ``rec`` itself chose there."""
    out: dict[str, str] = {}
    sel = rec.get("selection") or {}
    candidates = sel.get("candidates") or []
    chosen = sel.get("chosen_on")
    if not chosen and isinstance(candidates, list) and len(candidates) > 1:  # a run recorded before "chosen_on"
        method = str(sel.get("method", ""))
        found = _ACCURACY_ON.search(method) or _CV_ON.search(method)
        if found:
            chosen = found.group(1) + (OOF if found.re is _CV_ON else "")
    if isinstance(chosen, str) and chosen:
        out[chosen] = "its ensemble weights" if rec.get("members") else "its settings"  # an ensemble records members
    history = rec.get("history") or {}
    if isinstance(history, Mapping) and "val_loss" in history:  # early stopping on val_loss, best weights restored
        inputs = rec.get("inputs") or {}
        split = inputs.get("validation") if isinstance(inputs, Mapping) else None
        split = split if isinstance(split, str) and split else "validation"
        out[split] = f"{out[split]} and its epoch" if split in out else "its epoch (early stopping)"
    return out


def selected_on(
    rec: Mapping,
    lookup: Callable[[str], Mapping | None] | None = None,
    sweeps: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """Split -> what the run chose there, in words ("its settings", "its ensemble weights", "its members'
    settings", ...); empty for a run that chose nothing. ``lookup(run_id)``: another run's record, or None when it
    is gone, to read an ensemble's members and a fine-tuned run's phase A run; ``sweeps``: :func:`sweep_choices` of
    the runs folder."""
    out = _own(rec)

    def add(split: str, what: str) -> None:
        if what not in out.get(split, ""):
            out[split] = f"{out[split]}, {what}" if split in out else what

    recorded = rec.get("members_selected_on")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    linked = [(m, "its members' settings") for m in rec.get("members") or ()]
    linked += [(rec["from_run"], f"its phase A run {rec['from_run']}")] if rec.get("from_run") else []
    for other, what in linked if lookup or recorded else ():
        if isinstance(recorded.get(other), (list, tuple)):  # recorded when the ensemble was made
            for split in recorded[other]:
                add(str(split), what)
            continue
        try:
            got = lookup(other) if lookup else None
        except Exception:  # noqa: BLE001 - a member removed or broken since: its choice is unknown, not an error
            got = None
        if not got:  # where it chose is unknown: every split but test, as one it may have chosen on
            for split in rec.get("metrics") or ():
                if split != "test":
                    add(split, f"{what.replace('members', 'member')} {other}, gone: where it chose is unknown")
            continue
        for split in _own(got):
            add(split, what)
    for split, what in ((sweeps or {}).get(str(rec.get("id")), {}) or {}).items():
        add(split, what)
    return out


def member_choices(members: list[Mapping], lookup: Callable[[str], Mapping | None] | None) -> dict[str, list[str]]:
    """Member id -> the splits it chose on (:func:`selected_on`), as an ensemble records them when it is made."""
    return {str(m["id"]): sorted(selected_on(m, lookup)) for m in members}


_SWEEP = re.compile(r"sweep-[0-9a-f]+\.json")
_SWEEP_BYTES = 64 << 20  # a summary larger than this is no sweep's


def sweep_choices(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Run id -> {split: what} for every run a sweep in runs folder ``root`` chose among several: its best single
    run and its winner, on the split its summary ``sweep-<id>.json`` says it chose on (a sweep of one run chose
    nothing). An unreadable or malformed summary is passed over."""
    out: dict[str, dict[str, str]] = {}
    try:
        names = sorted(e.name for e in os.scandir(root) if _SWEEP.fullmatch(e.name))
    except OSError:
        return out
    for name in names:
        try:
            summary = json.loads(_read_summary(Path(root) / name))
            on, winner = summary["chosen_on"], summary.get("winner") or {}
            n = sum(1 for c in summary.get("cells") or () if isinstance(c, dict) and c.get("run"))
            ids = {summary.get("best_single"), winner.get("id")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError):
            continue  # a crafted summary (a link, a FIFO, too large, nested too deep) is passed over as malformed
        if not isinstance(on, str) or not on or n < 2:
            continue
        for rid in sorted(i for i in ids if isinstance(i, str) and i):
            what = f"its classifier and extractor, among {n} runs of {name[: -len('.json')]},"
            out.setdefault(rid, {})[on] = what
    return out


def _read_summary(path: Path) -> bytes:
    """A sweep summary's bytes: a regular file (no link, a FIFO never blocks the open), at most ``_SWEEP_BYTES``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _SWEEP_BYTES:
            raise ValueError(f"{path} is not a sweep summary")
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(_SWEEP_BYTES + 1)
    finally:
        os.close(fd)
