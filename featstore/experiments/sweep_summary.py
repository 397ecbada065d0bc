"""A sweep's summary (``sweep-<id>.json``) and heat map, and its ensemble against the best single run.

On the split the sweep chose on, the ensemble (its members and weights) and the best single run (the grid's best)
were both chosen: their paired test there is no test, so no verdict is given or recorded there ("not a test"); the
verdict is the test split's, where there is one (attack 67 #2). Cells tied at the best score are named, with the
rule that kept the first (attack 67 #4).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import numpy as np

from featstore.errors import OutputError
from featstore.experiments.compare import _withheld, compare_pair, wilson_of
from featstore.outputs import write_atomic, write_text
from featstore.provenance import OOF
from featstore.runs.folder import runs_root
from featstore.runs.record import RunRecord

NOT_A_TEST = "not a test (no verdict): both runs were chosen on these rows"


def tie_note(recs: list[RunRecord], scores: np.ndarray, score: str) -> tuple[list[str], str]:
    """``(ids of every cell at the best score, the sentence naming them)``: ``([], "")`` when one cell is best."""
    tied = [recs[i] for i in np.flatnonzero(scores == scores.max())]
    if len(tied) < 2:
        return [], ""
    names = ", ".join(f"{r.id} ({r.clf} on {r.extractor})" for r in tied)
    return [r.id for r in tied], (
        f"{len(tied)} cells tie at {float(scores.max()):.4f} on {score!r}: {names}; the first in grid order "
        f"(extractor, then classifier), {tied[0].id}, is kept: the choice among them is the grid's order, not the data's"
    )


def versus_best(ens: RunRecord, best: RunRecord, store, runs, score: str) -> dict:
    """The ensemble against the best single run, per split both were evaluated on: ``PairedComparison.to_dict()``,
    and whether the split chose the ensemble (its gain there is optimistic)."""
    pair = compare_pair(ens.id, best.id, store, runs)
    out = {}
    for s, c in pair.splits.items():
        if s != score and s.endswith(OOF):
            continue
        got = _withheld(c)  # a split another choice was made on: runs compare's withheld verdict
        if s == score:  # the members, weights and best single run were all chosen here: no verdict (attack 67 #2)
            text, m = c.comparison.sentence(), c.comparison.mcnemar
            head, sep, _ = text.rpartition("): ")
            said = f"{head})" if sep and m.b + m.c else text.rpartition(": ")[0] or text
            got = {**got, "verdict": NOT_A_TEST, "sentence": f"{said}: {NOT_A_TEST}"}
        out[s] = {**got, "selected_on": s == score}
    return out


def summary_of(
    store, runs, png, clfs, names, recs, winner, ens, versus, note, test_of, test, score, search, secs, diverged, kept
):
    """Write sweep-<id>.json and the heat map into the runs folder; return the summary (``test_of``: run -> record;
    ``diverged``: (extractor, classifier) -> why, cells left out, drawn blank; ``kept``: the runs reused, not fitted)."""
    from featstore.plots import heatmap_png

    root = runs_root(store, runs)
    sid = f"sweep-{secrets.token_hex(3)}"

    def figures(rec: RunRecord, split: str | None) -> tuple[float | None, list | None]:
        if rec is None or split is None or split not in rec.metrics:
            return None, None
        return rec.accuracy(split), list(wilson_of(rec.metrics[split]))

    winner["test"], winner["test_ci"] = figures(test_of.get(winner["id"]), test)
    if ens is not None and winner["id"] == ens.id and versus:  # is the ensemble's gain over the best single run real?
        split = test if test in versus else score
        winner["vs_best_single"] = {"split": split, "run": versus[split]["name_b"], "verdict": versus[split]["verdict"]}
    winner["validation_ci"] = figures(next((r for r in [*recs, ens] if r and r.id == winner["id"]), None), score)[1]
    tied, tie = tie_note(recs, np.array([r.accuracy(score) for r in recs]), score)
    k = len(clfs)
    fitted = iter(recs)
    at = [[None if (n, c) in diverged else next(fitted) for c in clfs] for n in names]  # the grid's cells, in order
    grid = np.array([[np.nan if r is None else r.accuracy(score) for r in row] for row in at])
    cis = np.array([[(np.nan, np.nan) if r is None else wilson_of(r.metrics[score]) for r in row] for row in at])
    where = next(
        ((i, j) for i in range(len(names)) for j in range(k) if at[i][j] and at[i][j].id == winner["id"]), None
    )
    out = Path(png) if png else root / f"{sid}.png"
    on = "validation" if not score.endswith(OOF) else "out-of-fold"
    summary = {
        "id": sid,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": str(Path(store).resolve()),
        "classifiers": clfs,
        "extractors": names,
        "search": search,
        "chosen_on": score,
        "reused": [{"extractor": r.extractor, "clf": r.clf, "run": r.id} for r in recs if r.id in kept],
        "seconds": round(secs, 2),
        "cells": [
            {
                "extractor": r.extractor,
                "clf": r.clf,
                "run": r.id,
                "params": r["params"],
                "validation": r.accuracy(score),
                "validation_ci": figures(r, score)[1],
                "reused": r.id in kept,
                "test": figures(test_of.get(r.id), test)[0],
                "test_ci": figures(test_of.get(r.id), test)[1],
            }
            for r in recs
        ]
        + [
            {"extractor": n, "clf": c, "run": None, "diverged": why, "validation": None, "test": None}
            for (n, c), why in diverged.items()
        ],
        "ensemble": None
        if ens is None
        else {
            "run": ens.id,
            "members": list(ens.members),
            "weights": list(ens.weights),
            "validation": ens.accuracy(score),
            "validation_ci": figures(ens, score)[1],
            "test": ens.accuracy(test) if test else None,
            "test_ci": figures(ens, test)[1],
            "vs_best_single": versus,
        },
        "ensemble_note": note,
        "winner": winner,
        "best_single": max(recs, key=lambda r: r.accuracy(score)).id,  # chosen on score: runs compare says so there
        **({"tied": tied} if tied else {}),  # every cell at the best score (runs compare marks each chosen there)
        "selection": f"accuracy on {score!r}"
        + (" (cross-validation on train: no validation split)" if score.endswith(OOF) else "")
        + (f"; {test!r} evaluated after the choice, for the chosen runs only" if test else "; no test split evaluated")
        + (" (and every run: --show-test)" if len(test_of) > 1 else "")
        + (f"; {tie}" if tie else ""),
        "png": str(out),
    }
    title = f"{sid}: {on} accuracy [95 % interval] (winner {winner['id']}" + (
        f", test {winner['test']:.3f})" if winner["test"] is not None else ")"
    )
    write_text(root / f"{sid}.json", json.dumps(summary, indent=1), "sweep summary")
    try:
        write_atomic(out, lambda tmp: heatmap_png(names, clfs, grid, title, tmp, where, cis, f"{on} accuracy"), "--png")
    except OutputError as exc:
        raise OutputError(f"{exc} The sweep's runs and its summary {root / f'{sid}.json'} are recorded") from None
    return summary
