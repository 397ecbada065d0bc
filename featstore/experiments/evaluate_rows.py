"""``runs evaluate``'s rows rule on the split a run chose on (attack 82 #1): a test split made of the rows a run chose
its settings, epoch or temperature on (validation's very images) was scored and recorded as a held-out figure, with
no word, where ``fit`` given the same test notes that its figure there is the choice's own maximum.

Before a new split is scored, its rows are compared with the run's training split and the split it chose on
together (:func:`featstore.experiments.training_rows.verdict`, the rule of fit, sweep, probe, fewshot and finetune: a
row of both counted once): most of them being such rows is refused, a few are said (a warning), as finetune does.
Rows shared with the training split alone are left to the "fitted on these rows" marks, as before.
"""

from __future__ import annotations

import logging

from featstore.errors import ConfigError
from featstore.experiments.training_rows import CHOSEN, joint_head, unknown, verdict
from featstore.provenance import OOF
from featstore.runs.fittedrows import fitted_on, optimistic_by
from featstore.runs.selected import selected_on
from featstore.runs.trainstore import training_store

logger = logging.getLogger(__name__)


def chosen_splits(rec, present) -> dict[str, str]:
    """``{split: what run rec chose there}`` of the splits of ``present`` it chose on: its settings, epoch
    (:func:`featstore.runs.selected.selected_on`) and its probabilities' temperature (``calibration.fitted_on``).

    >>> chosen_splits({"kind": "fit", "calibration": {"fitted_on": "validation"}}, ["train", "validation"])
    {'validation': 'its temperature'}
    """
    out = {s: w for s, w in selected_on(rec).items() if s in present and not s.endswith(OOF)}
    cal = rec.get("calibration")
    on = cal.get("fitted_on") if hasattr(cal, "get") else None
    if isinstance(on, str) and on in present:
        out[on] = f"{out[on]} and its temperature" if on in out else "its temperature"
    return out


def refuse_chosen_rows(fs, rec, split: str) -> list[str]:
    """ConfigError where most of the rows of ``split`` (a split run ``rec`` is about to be evaluated on for the first
    time, of store ``fs``) are rows of its training split or of a split it chose on, at least one of them a row it
    chose on; the warning lines where a few are (their figures there are optimistic by at most that many rows)."""
    name, train = rec.extractor, fitted_on(rec)
    present = list(fs.splits(name)) if name in fs.extractors() else []
    said = []
    for on, what in chosen_splits(rec, present).items():
        if on == split:
            continue
        trains = (train,) if train and train in present and train != split else ()
        v = verdict(fs, name, trains or (on,), split, chosen_on=on if trains else None)
        chose = v.parts[1] if v.parts else v
        if chose.kind == "unknown" and not chose.partial:  # said, not passed silently (over the rule's caps)
            said.append(unknown(split, repr(on), chose.why, True))
            continue
        if not chose.shared or v.kind == "unknown":
            continue  # no row of the split it chose on (the training rows alone: the fitted-on marks say them)
        head = joint_head(v) if v.parts and v.parts[0].shared else f"{chose.head()}, {CHOSEN} ({what})"
        if v.kind == "refuse":
            raise ConfigError(
                f"runs evaluate: {head}, so {rec.id}'s figure there would be the choice's own maximum, not a held-out "
                f"figure; evaluate it on a split of other images (featstore extract --split {split} --overwrite, from "
                f"a folder without them)"
            )
        said.append(f"{head}: its figures there are {optimistic_by(v.shared)}")
    for line in said:
        logger.warning("runs evaluate: %s", line)
    return said


def chosen_rows_notes(rec, split: str, store) -> list[str]:
    """The notes of an ensemble on ``split``'s rows that member run ``rec`` chose its settings, epoch or temperature
    on (attack 83 #3: a test of validation's rows got an ensemble figure with no word, where each member's fit noted
    it), read where its training rows are (``store``, else its recorded store: ``trainstore.training_store``)."""
    name, train = rec.extractor, fitted_on(rec)
    fs, _ = training_store(rec, store, name, train) if train else (None, "")
    if fs is None or split not in fs.splits(name):
        return []
    out = []
    for on, what in chosen_splits(rec, list(fs.splits(name))).items():
        if on == split:
            continue
        v = verdict(fs, name, on, split)
        if v.shared and v.kind != "unknown":
            out.append(
                f"{v.head()}, the rows member {rec.id} chose {what} on: its figures there are "
                + ("the choice's own maximum, not held-out figures" if v.kind == "refuse" else optimistic_by(v.shared))
            )
    return out
