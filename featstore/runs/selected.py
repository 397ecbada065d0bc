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
- a sweep's choice (:func:`sweep_choices`): the best single run (and the winner, and cells tied with it) of a sweep
  of several runs, chosen on the split the sweep's summary ``sweep-<id>.json`` in the runs folder names (attack 65
  #6); and, whatever built it, an ensemble of such a run, or of exactly a sweep ensemble's members and weights
  (attack 67 #6).

>>> selected_on({"kind": "fit", "selection": {"chosen_on": "validation", "candidates": [{}, {}]}})
{'validation': 'its settings'}
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from featstore.provenance import OOF
from featstore.runs.files import loads_bounded

_ACCURACY_ON = re.compile(r"accuracy on the '([^']+)' split")
_CV_ON = re.compile(r"cross-validation on '([^']+)'")
logger = logging.getLogger(__name__)


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
    the runs folder: a member a sweep chose marks its ensemble, whatever built it, and an ensemble of a sweep
    ensemble's very members and weights is that sweep's choice (attack 67 #6)."""
    out = _own(rec)
    sweeps = sweeps or {}

    def add(split: str, what: str) -> None:
        if what not in out.get(split, ""):
            out[split] = f"{out[split].rstrip(',')}, {what}" if split in out else what

    recorded = rec.get("members_selected_on")
    recorded = recorded if isinstance(recorded, Mapping) else {}
    linked = [(m, "its members' settings") for m in rec.get("members") or ()]
    linked += [(rec["from_run"], f"its phase A run {rec['from_run']}")] if rec.get("from_run") else []
    for other, what in linked:
        for split, why in (sweeps.get(str(other)) or {}).items():  # a sweep chose the member: recorded or not
            add(split, f"its member {other}'s {why.removeprefix('its ')}")
        if not (lookup or recorded):
            continue
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
    if rec.get("members"):  # the members and weights of a sweep's greedy selection, rebuilt by hand or not
        for split, why in (sweeps.get(ensemble_key(rec["members"], rec.get("weights"))) or {}).items():
            add(split, why)
    for split, what in (sweeps.get(str(rec.get("id"))) or {}).items():
        add(split, what)
    return out


def ensemble_key(members, weights) -> str:
    """The key of an ensemble's members and weights (as their ratios, in any order) in :func:`sweep_choices`."""
    try:
        w = [float(x) for x in weights] if weights is not None else [1.0] * len(members)
        total = sum(w) if len(w) == len(members) and sum(w) > 0 else None
    except (TypeError, ValueError, OverflowError):  # a weight no float holds (attack 81 #3)
        total = None
    if not total:
        return "ensemble:?"
    return "ensemble:" + json.dumps(sorted((str(m), round(x / total, 9)) for m, x in zip(members, w)))


def member_choices(
    members: list[Mapping],
    lookup: Callable[[str], Mapping | None] | None,
    sweeps: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, list[str]]:
    """Member id -> the splits it chose on (:func:`selected_on`, a sweep's choice of it included: attack 67 #6), as
    an ensemble records them when it is made."""
    return {str(m["id"]): sorted(selected_on(m, lookup, sweeps)) for m in members}


_SWEEP = re.compile(r"sweep-[0-9a-f]+\.json")
_SWEEP_BYTES = 64 << 20  # a summary larger than this is no sweep's
# what sweep_choices reads in all, newest first: 3 summaries of 58 MB cost 3.8 s and 749 MB before runs compare's
# first line, and it grew with their number (attack 67 #7)
SWEEPS_READ = 1000
SWEEPS_READ_BYTES = 16 << 20  # a sweep of 1,000 cells writes about 0.3 MB


def sweep_choices(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Run id -> {split: what} for every run a sweep in runs folder ``root`` chose among several: its best single
    run, its winner and every cell tied with it, on the split its summary ``sweep-<id>.json`` says it chose on (a
    sweep of one run chose nothing); and :func:`ensemble_key` of its ensemble's members and weights -> the same.
    A sweep of 2+ cells chose among all of them ("among N runs", with "M of them here" where some run folders are
    gone: attack 70 #1), and marks only its chosen runs whose folder is in ``root``. The newest
    :data:`SWEEPS_READ` summaries, :data:`SWEEPS_READ_BYTES` in all, are read; the others are passed over with one
    warning naming how many and why. An unreadable or malformed summary is passed over."""
    out: dict[str, dict[str, str]] = {}
    try:
        with os.scandir(root) as it:
            entries = list(it)
    except OSError:
        return out
    folders = {e.name for e in entries if not _SWEEP.fullmatch(e.name) and _is_dir(e)}
    found = []
    for e in entries:
        if _SWEEP.fullmatch(e.name):
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            found.append((-st.st_mtime, e.name, st.st_size))
    read, skipped, total = [], [], 0
    for _, name, size in sorted(found):  # the newest first
        if len(read) >= SWEEPS_READ or total + size > SWEEPS_READ_BYTES:
            skipped.append(name)
            continue
        read.append(name)
        total += size
    if skipped:
        logger.warning(
            "runs folder %s: %d sweep summaries (%s) not read: only the newest %d, %d MB in all, are read for the "
            "runs they chose, so runs those sweeps chose are not marked as selected; move old sweep-*.json files "
            "out of the runs folder",
            root,
            len(skipped),
            ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""),
            SWEEPS_READ,
            SWEEPS_READ_BYTES >> 20,
        )
    for name in sorted(read):
        _mark(out, name, Path(root), folders)
    return out


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _mark(out: dict, name: str, root: Path, folders: set[str]) -> None:
    """Add the choices of summary ``name`` to ``out`` (nothing for an unreadable or malformed one)."""
    try:
        summary = loads_bounded(_read_summary(root / name))  # integers a float holds, as run.json (attack 81 #3)
        on, winner = summary["chosen_on"], summary.get("winner") or {}
        cells = {c.get("run") for c in summary.get("cells") or () if isinstance(c, dict)}
        cells = {r for r in cells if isinstance(r, str) and r}  # the runs the sweep chose among, here or not
        runs = cells & folders  # a summary marks only runs that are here (attack 67 #7)
        ids = {summary.get("best_single"), winner.get("id"), *(summary.get("tied") or ())}
        ens = summary.get("ensemble") or {}
        ens = ens if isinstance(ens, dict) and isinstance(ens.get("members"), list) else {}
        key = ensemble_key(ens["members"], ens.get("weights")) if ens else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError, OverflowError):
        return  # a crafted summary (a link, a FIFO, too large, nested too deep) is passed over as malformed
    if not isinstance(on, str) or not on or len(cells) < 2:  # a sweep of one run chose nothing
        return
    sid = name[: -len(".json")]
    # the choice was made among every cell, whether or not its folder is still here (attack 70 #1)
    among = f"{len(cells)} runs of {sid}" + ("" if runs == cells else f" ({len(runs)} of them here)")
    for rid in sorted(i for i in ids if isinstance(i, str) and (i in runs or (i == winner.get("id") and i in folders))):
        out.setdefault(rid, {})[on] = f"its classifier and extractor, among {among},"
    if key and {str(m) for m in ens["members"]} <= runs:
        out.setdefault(key, {})[on] = f"its members and weights, {sid}'s greedy selection among {among},"


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


def selection_lines(rec: Mapping, selected: Mapping[str, str] | None = None) -> list[str]:
    """One line per split the run (or its members, or a sweep) chose on (:func:`selected_on`): ``runs show``
    said "nothing to select" for a sweep's chosen run, and nothing for its ensemble (attack 67 #9). ``selected``: what
    :func:`selected_on` read with the run's folder; None reads the run's own record only."""
    chosen = selected_on(rec) if selected is None else selected
    return [
        f"  selected on {split}: {what} chosen on these rows (its figures there are optimistic)"
        for split, what in chosen.items()
    ]
