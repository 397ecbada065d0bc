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
  one level down, where each member (and a fine-tuned run's phase A run) chose its own.

>>> selected_on({"kind": "fit", "selection": {"chosen_on": "validation", "candidates": [{}, {}]}})
{'validation': 'its settings'}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

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


def selected_on(rec: Mapping, lookup: Callable[[str], Mapping | None] | None = None) -> dict[str, str]:
    """Split -> what the run chose there, in words ("its settings", "its ensemble weights", "its members'
    settings", ...); empty for a run that chose nothing. ``lookup(run_id)``: another run's record, or None when it
    is gone, to read an ensemble's members and a fine-tuned run's phase A run."""
    out = _own(rec)
    linked = [(m, "its members' settings") for m in rec.get("members") or ()]
    linked += [(rec["from_run"], f"its phase A run {rec['from_run']}")] if rec.get("from_run") else []
    for other, what in linked if lookup else ():
        try:
            got = lookup(other)
        except Exception:  # noqa: BLE001 - a member removed or broken since: its choice is unknown, not an error
            got = None
        for split in _own(got) if got else {}:
            if what not in out.get(split, ""):
                out[split] = f"{out[split]}, {what}" if split in out else what
    return out
