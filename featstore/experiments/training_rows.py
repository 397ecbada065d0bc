"""The rows rule of the commands that choose or score on a split beside the one they fit on: sweep, probe, fewshot.

A split most of whose rows are rows of the training split is refused (the choice or the score would be made on
training rows); one sharing a few (a duplicate image) is said; one that was not compared (over the rows rule's caps,
:data:`featstore.runs.fittedrows.MAX_BYTES` / :data:`~featstore.runs.fittedrows.MAX_ROWS`) is said too, once per
split and reason, with the reason: a warning and a note the command records (attack 76 #2: over the caps they chose
and scored on training rows with no word). A fit run records what its rule found (:func:`recorded`, its
``inputs.training_rows``), so a sweep that reuses it reads that instead of the features: a count only, since a
"not compared" it recorded may be its own ``--memory-budget``'s, which the sweep has not (attack 77 #3). A command
fitting on several splits (``probe --refit``: train + validation) compares a split with all of them
(:func:`compared_with`; attack 77 #8).
"""

from __future__ import annotations

import logging

import numpy as np

from featstore.errors import ConfigError
from featstore.runs.fittedrows import TrainingRows, _digest_blocks, fitted_rows_said, not_compared

logger = logging.getLogger(__name__)


def compared(fs, name: str, train: str, split: str, memory_budget: int | None = None) -> dict:
    """What the rows rule found for ``split`` of extractor ``name`` against ``train``: ``{"shared": k, "rows": n}``
    (``k`` may be 0), or ``{"not_compared": why}`` (counted once per process and store version; within
    ``memory_budget``, a fit's ``--memory-budget``, as :func:`~featstore.runs.fittedrows.fitted_rows_said`)."""
    got, skipped = fitted_rows_said(fs, name, train, [split], memory_budget=memory_budget)
    if split in skipped:
        return {"not_compared": skipped[split]}
    k, n = got.get(split, (0, 0))
    return {"shared": int(k), "rows": int(n)}


def compared_with(fs, name: str, trains: tuple[str, ...], split: str) -> dict:
    """:func:`compared` against the rows of every split of ``trains`` (a command fitting on all of them): a row of
    ``split`` is a training row when it is a row of any of them, counted once. Not compared with one of them: its
    reason, unless the others already hold most of ``split``'s rows (refused all the same)."""
    parts = [compared(fs, name, t, split) for t in dict.fromkeys(trains)]
    counts = [p for p in parts if "shared" in p]
    most = max(counts, key=lambda p: p["shared"], default={"shared": 0, "rows": 0})
    skipped = [p for p in parts if "not_compared" in p]
    if skipped and not 2 * most["shared"] > most["rows"]:
        return skipped[0]
    if skipped or sum(1 for p in counts if p["shared"]) < 2:
        return most
    shared = rows = 0  # rows of several of them: the union is counted, a row once
    bases = [TrainingRows(fs, name, t) for t in dict.fromkeys(trains)]
    for block in _digest_blocks(fs, name, split, 64 << 20):
        hit = np.zeros(len(block), bool)
        for base in bases:
            hit |= base.hits(block)
        shared, rows = shared + int(hit.sum()), rows + len(block)
    return {"shared": shared, "rows": rows}


def recorded(rec, split: str) -> dict | None:
    """What fit run ``rec`` recorded of ``split``'s rows (``inputs.training_rows``: :func:`compared`'s dict, a count),
    or None where it recorded no count (a run made before runs recorded it, or whose rows were not compared: the
    fit's reason, e.g. its ``--memory-budget``, may not hold for the reader, who compares them itself: attack 77
    #3)."""
    inputs = rec.get("inputs")
    said = inputs.get("training_rows") if hasattr(inputs, "get") else None
    one = said.get(split) if hasattr(said, "get") else None
    if not hasattr(one, "get"):
        return None
    k, n = one.get("shared"), one.get("rows")
    if isinstance(k, int) and isinstance(n, int) and not isinstance(k, bool) and 0 <= k <= max(n, 0):
        return {"shared": k, "rows": n}
    return None


CHOSEN = "the rows the choice was made on"  # a split a command chose on, beside the one it fits on (attack 78 #2)


def unknown(split: str, label: str, why: str, chosen: bool = False) -> str:
    """The line saying ``split``'s rows were not compared with those of ``label`` (the splits fitted on, or with
    ``chosen`` the split a choice was made on), with the reason ``why``; a command's own wording (it records no run)."""
    relation = CHOSEN if chosen else "which it fits on"
    return (
        f"the rows of {split!r} were not compared with those of {label}, {relation} ({why}): whether any of them is "
        f"one of those rows is not known"
    )


def refuse_training_rows(
    fs,
    names,
    train: str | tuple[str, ...],
    split: str,
    command: str,
    what: str,
    fix: str,
    known: dict | None = None,
    *,
    chosen: bool = False,
) -> list[str]:
    """ConfigError when most rows of ``split`` (of any extractor of ``names``) are rows of ``train``, which ``command``
    fits on (``what``: what it does with them, e.g. "chooses C and k"; ``fix``: the way out); else the lines to note,
    each logged once as a warning: a few shared rows (per extractor), and each reason ``split`` was not compared (once,
    naming its extractors). ``known``: ``{extractor: compared's dict}`` already found (a reused run's record).
    ``train`` a tuple: the command fits on all of those splits (:func:`compared_with`). ``chosen``: ``train`` is the
    split a choice was made on (C and k, an epoch), not fitted on: ``split``'s figure on its rows would be the choice's
    own maximum (attack 78 #2)."""
    said, skipped = [], {}
    trains = (train,) if isinstance(train, str) else tuple(train)
    label = " + ".join(map(repr, trains))
    train = trains[0] if len(trains) == 1 else label
    for n in names:
        got = (known or {}).get(n) or compared_with(fs, n, trains, split)
        if "not_compared" in got:
            skipped.setdefault(got["not_compared"], []).append(n)
            continue
        k, rows = got["shared"], got["rows"]
        if k and 2 * k > rows:
            raise ConfigError(
                f"{command}: {k} of the {rows} rows of {split!r} ({n}) are rows of {label}, "
                + (
                    f"{CHOSEN}, so its figure there would be the choice's own maximum, not a held-out figure; {fix}"
                    if chosen
                    else f"which it fits on, so it would {what} on training rows; {fix}"
                )
            )
        if k:
            said.append(
                f"{k} of the {rows} rows of {split!r} ({n}) are rows of {label}"
                + (f", {CHOSEN}" if chosen else "")
                + f" (duplicate images?): its figures there are optimistic by at most {k} row{'s' if k != 1 else ''}"
            )
    for why, which in skipped.items():
        line = unknown(split, label, why, True) if chosen else not_compared(split, train, why)
        said.append(f"{line} ({', '.join(which)})")
    for line in said:
        logger.warning("%s: %s", command, line)
    return said


def chosen_notes(fs, name: str, chosen_on: str, split: str, memory_budget: int | None = None) -> list[str]:
    """A fit's notes on ``split`` (test) sharing rows with ``chosen_on`` (validation), where its settings were chosen
    (attack 78 #2): its figure on those rows is the choice's own maximum, not a held-out one; or that they were not
    compared (within ``memory_budget`` too, as :func:`compared`)."""
    got = compared(fs, name, chosen_on, split, memory_budget)
    if "not_compared" in got:
        return [unknown(split, repr(chosen_on), got["not_compared"], True)]
    k, n = got["shared"], got["rows"]
    head = f"{k} of the {n} rows of {split!r} are rows of {chosen_on!r}, {CHOSEN}"
    if not k:
        return []
    if 2 * k > n:
        return [
            f"{head}: its figure there is the choice's own maximum, not a held-out figure; judge it on a split without them"
        ]
    return [f"{head} (duplicate images?): its figures there are optimistic by at most {k} row{'s' if k != 1 else ''}"]
