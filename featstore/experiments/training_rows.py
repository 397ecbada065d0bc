"""The rows rule of the commands that choose or score on a split beside the one they fit on: sweep, probe, fewshot.

A split most of whose rows are rows of the training split is refused (the choice or the score would be made on
training rows); one sharing a few (a duplicate image) is said; one that was not compared (over the rows rule's caps,
:data:`featstore.runs.fittedrows.MAX_BYTES` / :data:`~featstore.runs.fittedrows.MAX_ROWS`) is said too, once per
split and reason, with the reason: a warning and a note the command records (attack 76 #2: over the caps they chose
and scored on training rows with no word). A fit run records what its rule found (:func:`recorded`, its
``inputs.training_rows``), so a sweep that reuses it reads that instead of the features: a count only, since a
"not compared" it recorded may be its own ``--memory-budget``'s, which the sweep has not (attack 77 #3). A command
fitting on several splits (``probe --refit``: train + validation) compares a split with all of them
(:func:`compared_with`; attack 77 #8), one training split's digests at a time (attack 78 #6); where one of them is over
the caps, the count found against the others is said with it (attack 78 #5). A split a command chose on (validation:
probe's C and k, fewshot's epoch, a sweep's or a fit's settings) is compared with its test split too: test on those
rows reports the choice's own maximum (attack 78 #2); the decision is then on the union of test's rows that are rows
of a fitted split or of that one, a row counted once (:func:`verdict`'s ``chosen_on``; attack 80 #1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from featstore.errors import ConfigError
from featstore.runs.fittedrows import (
    digest_blocks,
    fitted_rows_said,
    held_rows,
    holds_rows,
    not_compared,
    optimistic_by,
    release_held,
    store_identity,
)

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


def compared_with(fs, name: str, trains: tuple[str, ...], split: str, memory_budget: int | None = None) -> dict:
    """:func:`compared` against the rows of every split of ``trains`` (a command fitting on all of them): a row of
    ``split`` is a training row when it is a row of any of them, counted once (:func:`_union`). Some of them not
    compared (over the caps): the count found against the others (``against``) is kept beside the reason
    (``not_compared``) and the splits it concerns (``unknown``), never dropped (attack 78 #5); none compared: the
    reason alone. ``memory_budget``: as :func:`compared`."""
    parts = {t: compared(fs, name, t, split, memory_budget) for t in dict.fromkeys(trains)}
    counts = {t: p for t, p in parts.items() if "shared" in p}
    skipped = {t: p["not_compared"] for t, p in parts.items() if "not_compared" in p}
    if not counts:
        return {"not_compared": "; ".join(dict.fromkeys(skipped.values()))}
    some = [t for t, p in counts.items() if p["shared"]]
    if len(some) > 1:
        got = _union(fs, name, some, split, memory_budget)
    else:
        got = max(counts.values(), key=lambda p: p["shared"])
    if not skipped:
        return got
    why = "; ".join(f"{t!r}: {w}" if len(skipped) > 1 else w for t, w in skipped.items())
    return {**got, "against": list(counts), "unknown": list(skipped), "not_compared": why}


_UNION: dict = {}  # (store identity, extractor, training splits, split) -> the union's count: once per process


def _union(fs, name: str, trains: list[str], split: str, memory_budget: int | None = None) -> dict:
    """``{"shared", "rows"}``: the rows of ``split`` that are rows of any of ``trains``, each counted once. One training
    split's digests are held at a time (:mod:`featstore.runs.fittedrows`'s own, freed before the next is built; the
    one held already first) beside a bool per row of ``split`` (its matches so far, OR-ed), within the rows rule's
    :func:`~featstore.runs.fittedrows.peak_bytes` and a byte a row of ``split`` (attack 78 #6: all of them at once, 1.75
    x that bound at 2 M rows, built again every call); the count is kept for the process, keyed by the store file's
    identity, as the rule's own. Within ``memory_budget`` (a fit's ``--memory-budget``) its blocks are the rule's
    small ones and nothing is held after the call (attack 82 #4: 64 MiB blocks, and digests kept during the fit). A
    training split given as ``(store, split)`` is another store's (finetune's phase A head fitted elsewhere: 82 #3)."""
    places = [t if isinstance(t, tuple) else (fs, t) for t in trains]
    key = (store_identity(fs.path), name, tuple((store_identity(f.path), t) for f, t in places), split)
    if key in _UNION:
        return dict(_UNION[key])
    block_bytes = 64 << 20 if memory_budget is None else max(1, min(64 << 20, memory_budget // 16))
    hit = np.zeros(int(fs.split_info(split, name)["committed_rows"]), bool)
    rows, base = 0, None
    try:
        for tfs, t in sorted(places, key=lambda p: not holds_rows(*p[:1], name, p[1])):  # the one held already first
            base = None  # no reference to the last: freed when the rule's cache drops it for the next
            base, rows = held_rows(tfs, name, t, block_bytes), 0
            for block in digest_blocks(fs, name, split, block_bytes):
                hit[rows : rows + len(block)] |= base.hits(block)
                rows += len(block)
    finally:
        base = None
        if memory_budget is not None:
            release_held()
    if len(_UNION) >= 1 << 14:
        _UNION.clear()
    _UNION[key] = {"shared": int(hit[:rows].sum()), "rows": rows}
    return dict(_UNION[key])


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


@dataclass(frozen=True)
class Verdict:
    """The rows rule's verdict on ``split`` (extractor ``name``) against ``of`` (the splits counted, quoted, joined by
    " + "), the action left to the caller (probe and fewshot refuse, a sweep withholds test's figure, a fit notes):
    ``kind`` "refuse" (over half of its rows are theirs), "note" (a few), "unknown" (not compared: ``why``; or
    ``partial``, compared with only some of them, sharing none with those) or "clean"; ``shared`` of ``rows``, and,
    compared with only some, the splits not compared (``unknown_of``) and ``why``."""

    kind: str
    split: str
    name: str
    of: str
    shared: int = 0
    rows: int = 0
    why: str = ""
    unknown_of: str = ""
    parts: tuple = ()  # with a split chosen on: the verdicts against the fitted splits and against it (attack 80 #1)

    @property
    def partial(self) -> bool:
        return bool(self.unknown_of)

    def head(self, named: bool = True) -> str:
        """The count's words, each caller's line opening: k of the n rows of 'split' (name) are rows of 'of'."""
        named = f" ({self.name})" if named else ""
        return f"{self.shared} of the {self.rows} rows of {self.split!r}{named} are rows of {self.of}"


def verdict(
    fs,
    name: str,
    on: str | tuple[str, ...],
    split: str,
    known: dict | None = None,
    memory_budget: int | None = None,
    chosen_on: str | None = None,
) -> Verdict:
    """The one rows-rule decision on ``split`` of extractor ``name`` against ``on`` (a split, or several fitted on
    together: :func:`compared_with`), from ``known`` (:func:`compared`'s dict already found, e.g. a reused run's
    record) or counted now (within ``memory_budget`` too, as :func:`compared`). ``chosen_on``: the split a choice was
    made on too: the decision is then on the union of ``split``'s rows that are rows of any of ``on`` or of it, each
    counted once (attack 80 #1: 3 of 8 train's and 3 of 8 validation's was judged as two "a few"); the verdicts
    against ``on`` and against ``chosen_on`` alone, the words' per-split counts, are its ``parts``."""
    trains = (on,) if isinstance(on, str) else tuple(on)
    if chosen_on and chosen_on not in trains:
        alone = verdict(fs, name, trains, split, known, memory_budget)
        chose = verdict(fs, name, chosen_on, split, None, memory_budget)
        if not (alone.shared and chose.shared):  # one of them shares none: the union is the other's count
            got = max((alone, chose), key=lambda v: v.shared)
            whole = replace(got, kind="refuse" if 2 * got.shared > got.rows else got.kind)
        else:
            whole = _judged(
                name, trains + (chosen_on,), split, compared_with(fs, name, trains + (chosen_on,), split, memory_budget)
            )
        return replace(whole, parts=(alone, chose))
    return _judged(name, trains, split, known or compared_with(fs, name, trains, split, memory_budget))


def _judged(name: str, trains: tuple, split: str, got: dict) -> Verdict:
    """:func:`verdict` of ``split`` from :func:`compared_with`'s dict ``got`` against ``trains``."""
    label = " + ".join(map(repr, trains))
    if "shared" not in got:
        return Verdict("unknown", split, name, label, why=got["not_compared"])
    k, n = got["shared"], got["rows"]
    of = " + ".join(map(repr, got["against"])) if "against" in got else label  # the splits counted
    rest = {"why": got["not_compared"], "unknown_of": " + ".join(map(repr, got["unknown"]))} if "unknown" in got else {}
    kind = "refuse" if k and 2 * k > n else "note" if k else "unknown" if rest else "clean"
    return Verdict(kind, split, name, of, k, n, **rest)


def joint_head(v: Verdict, named: bool = True) -> str:
    """The words of :func:`verdict`'s decision with a split chosen on (``v.parts``: the fitted splits' verdict, the
    chosen split's): the union's count, then each part's (a row of both counted once)."""
    fitted, chose = v.parts
    named = f" ({v.name})" if named else ""
    return (
        f"{v.shared} of the {v.rows} rows of {v.split!r}{named} are rows of {fitted.of} ({fitted.shared}) or of "
        f"{chose.of} ({chose.shared}), {CHOSEN} (a row of both counted once)"
    )


def unknown(
    split: str, label: str, why: str, chosen: bool = False, fitted_by: str | None = None, nor: str | None = None
) -> str:
    """The line saying ``split``'s rows were not compared with those of ``label`` (the splits fitted on, or with
    ``chosen`` the split a choice was made on), with the reason ``why``; a command's own wording (it records no run:
    ``fitted_by``, e.g. "the rows the probe is fitted on", not fittedrows' "which the run is fitted on"). ``nor``: the
    split a choice was made on, not compared with ``split`` for the same reason: said in the same line."""
    relation = CHOSEN if chosen else fitted_by or "which it fits on"
    why = why.replace("the training split ", "", 1) if chosen else why  # the rule's words: here it is not fitted on
    relation += f", nor with those of {nor!r}, {CHOSEN}" if nor else ""
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
    fitted_by: str | None = None,
    chosen_on: str | None = None,
    chosen_fix: str | None = None,
) -> list[str]:
    """ConfigError when most rows of ``split`` (of any extractor of ``names``) are rows of ``train``, which ``command``
    fits on (``what``: what it does with them, e.g. "chooses C and k"; ``fix``: the way out); else the lines to note,
    each logged once as a warning: a few shared rows (per extractor), and each reason ``split`` was not compared (once,
    naming its extractors). ``known``: ``{extractor: compared's dict}`` already found (a reused run's record).
    ``train`` a tuple: the command fits on all of those splits (:func:`compared_with`). ``chosen``: ``train`` is the
    split a choice was made on (C and k, an epoch), not fitted on: ``split``'s figure on its rows would be the choice's
    own maximum (attack 78 #2). ``fitted_by``: the words for ``train`` of a command that records no run (probe:
    "the rows the probe is fitted on"), where a split not compared is said (default: fittedrows' "which the run is
    fitted on", a sweep's). ``chosen_on``: ``split`` is compared with that split too, the one a choice was made on (as
    ``chosen``; refused with ``chosen_fix``, default ``fix``); a reason neither was compared for (``split`` over the
    caps) is said once, naming both (it was said once for each); most of ``split``'s rows being rows of ``train`` or
    of ``chosen_on``, each a minority alone, is refused too (the union, a row counted once: attack 80 #1)."""
    trains = (train,) if isinstance(train, str) else tuple(train)
    said, skipped = _counted(fs, names, trains, split, command, (what, fix), known, chosen, fitted_by)
    later, also = [], {}
    if chosen_on:
        later, also = _counted(fs, names, (chosen_on,), split, command, (what, chosen_fix or fix), None, True, None)
    label = " + ".join(map(repr, trains))
    for why, which in skipped.items():
        both = [n for n in which if n in also.get(why, ())]
        rest = [n for n in which if n not in both]
        if both:  # one reason for both (split over the caps): said once
            said.append(f"{unknown(split, label, why, chosen, fitted_by, chosen_on)} ({', '.join(both)})")
            also[why] = [n for n in also[why] if n not in both]
        if rest and (chosen or fitted_by):
            said.append(f"{unknown(split, label, why, chosen, fitted_by)} ({', '.join(rest)})")
        elif rest:
            said.append(f"{not_compared(split, trains[0] if len(trains) == 1 else label, why)} ({', '.join(rest)})")
    said += later + [f"{unknown(split, repr(chosen_on), w, True)} ({', '.join(ns)})" for w, ns in also.items() if ns]
    for n in names if chosen_on else ():  # each a minority alone, most of it together: refused (attack 80 #1)
        v = verdict(fs, n, trains, split, (known or {}).get(n), chosen_on=chosen_on)
        if v.kind == "refuse":
            raise ConfigError(
                f"{command}: {joint_head(v)}, so it would {what} on rows it fits on or chose on, not held-out rows; "
                f"{chosen_fix or fix}"
            )
    for line in said:
        logger.warning("%s: %s", command, line)
    return said


def _counted(fs, names, trains: tuple, split: str, command: str, todo: tuple, known, chosen: bool, fitted_by):
    """:func:`refuse_training_rows`' refusal and count lines of ``split`` against ``trains`` (``todo``: its ``what``
    and ``fix``), and ``{why: extractors}`` for those not compared at all (said by the caller, once per reason)."""
    (what, fix), said, skipped = todo, [], {}
    for n in names:
        v = verdict(fs, n, trains, split, (known or {}).get(n))
        if v.kind == "unknown" and not v.partial:
            skipped.setdefault(v.why, []).append(n)
            continue
        if v.kind == "refuse":
            raise ConfigError(
                f"{command}: {v.head()}, "
                + (
                    f"{CHOSEN}, so its figure there would be the choice's own maximum, not a held-out figure; {fix}"
                    if chosen
                    else f"which it fits on, so it would {what} on training rows; {fix}"
                )
            )
        rel = f", {CHOSEN}" if chosen else ""
        more = f"; {unknown(split, v.unknown_of, v.why, chosen, fitted_by)}" if v.partial else ""  # 78 #5
        if v.kind == "unknown":  # some compared, none shared: the count known, said with the part not known
            said.append(f"no row of {split!r} ({n}) is a row of {v.of}{rel}{more}")
        elif v.kind == "note":
            said.append(
                f"{v.head()}{rel} (duplicate images?): its figures there are {optimistic_by(v.shared)}"
                f"{' from those' if more else ''}{more}"
            )
    return said, skipped


def chosen_notes(
    fs, name: str, chosen_on: str, split: str, memory_budget: int | None = None, train: str | None = None
) -> list[str]:
    """A fit's notes on ``split`` (test) sharing rows with ``chosen_on`` (validation), where its settings were chosen
    (attack 78 #2): its figure on those rows is the choice's own maximum, not a held-out one; or that they were not
    compared (within ``memory_budget`` too, as :func:`compared`). ``train``: the split it is fitted on (its own note is
    :func:`~featstore.runs.fittedrows.overlap_notes`'): where ``split`` shares rows with both, the note says their union
    too, a row counted once (attack 80 #1: 3 of 8 and 3 of 8 were two "a few"); a fit notes it, never refuses."""
    v = verdict(fs, name, chosen_on, split, memory_budget=memory_budget)
    if v.kind == "unknown":
        return [unknown(split, repr(chosen_on), v.why, True)]
    both = (
        verdict(fs, name, train, split, memory_budget=memory_budget, chosen_on=chosen_on) if train and v.shared else v
    )
    if both.parts and all(p.shared for p in both.parts):  # both compared, so the union is counted
        mostly = "mostly not held-out figures" if both.kind == "refuse" else optimistic_by(both.shared)
        return [f"{joint_head(both, named=False)}: its figures there are {mostly}; judge it on a split without them"]
    head = f"{v.head(named=False)}, {CHOSEN}"
    if v.kind == "refuse":
        return [
            f"{head}: its figure there is the choice's own maximum, not a held-out figure; judge it on a split without them"
        ]
    return [f"{head} (duplicate images?): its figures there are {optimistic_by(v.shared)}"] if v.kind == "note" else []
