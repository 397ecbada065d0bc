"""``featstore sweep``: every extractor x classifier, chosen strictly on validation, test read once for the choice.

Every fit is recorded as a run (fitted on train, scored on validation; test is *not* read while fitting).
The winner is the best validation accuracy; with ``ensemble=True`` a greedy ensemble selection (Caruana et al.
2004: start from the best run, repeatedly add, with replacement, the run whose averaged probabilities raise
validation accuracy most; stop when nothing helps) competes too and is recorded as an ensemble run. Only
then is the test split evaluated: for the winner (its members, for an ensemble), or for every run with
``show_test=True``. A summary (``sweep-<id>.json``) and a heat map (``sweep-<id>.png``) go into the runs folder.

>>> result = sweep("features.h5", ["logreg", "svm"], ensemble=True)   # doctest: +SKIP
>>> result["winner"]["id"], result["winner"]["test"]                  # doctest: +SKIP
('ensemble-1a2b3c', 0.91)
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.experiments.ensemble import ensemble as record_ensemble
from featstore.experiments.ensemble import greedy_ensemble
from featstore.experiments.evaluate import record_split
from featstore.experiments.fit import fit
from featstore.runs.folder import load_predictions, runs_root
from featstore.runs.record import RunRecord
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)


def sweep(
    store: str | os.PathLike = "features.h5",
    clfs: list[str] | tuple[str, ...] = ("logreg",),
    *,
    extractors: list[str] | None = None,
    params: dict[str, dict[str, list]] | None = None,
    search: bool = False,
    jobs: int = 1,
    ensemble: bool = False,
    show_test: bool = False,
    train: str = "train",
    validation: str = "validation",
    test: str = "test",
    runs: str | os.PathLike | None = None,
    png: str | os.PathLike | None = None,
    augmented: bool = False,
) -> dict:
    """Fit each classifier on each extractor, choose on validation, evaluate test once for the choice; returns the summary.

    ``params`` maps a classifier name to its parameter lists, as ``fit`` takes them (several values: the
    best on validation is kept, per extractor). Example::

        sweep("features.h5", ["logreg", "svm", "dense"], ensemble=True, jobs=2)
        sweep("features.h5", ["svm"], params={"svm": {"kernel": ["rbf"], "power": [0.5], "l2": [True], "pca": [256]}})

    ``augmented=True`` fits every run on train plus its cached augmented copies (``featstore fit --augmented``).
    """
    from featstore.experiments.classifiers import get_classifier

    clfs = list(dict.fromkeys(clfs))
    if not clfs:
        raise ConfigError("give at least one classifier, e.g. --clf logreg,svm")
    params = params or {}
    for c in clfs:
        get_classifier(c).full_params(
            {k: v[0] for k, v in params.get(c, {}).items()}
        )  # unknown names fail before any work
    if set(params) - set(clfs):
        raise ConfigError(
            f"parameters given for {', '.join(sorted(set(params) - set(clfs)))}, which is not swept; swept: {', '.join(clfs)}"
        )
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    names = _extractors(FeatureStore(store), extractors, train, validation)
    cells = [(n, c) for n in names for c in clfs]
    started = time.perf_counter()

    def one(cell):
        n, c = cell
        return fit(
            store,
            c,
            params.get(c),
            extractor=n,
            search=search,
            train=train,
            validation=validation,
            test=None,
            runs=runs,
            augmented=augmented,
        )

    if jobs > 1 and len(cells) > 1:
        from joblib import Parallel, delayed

        recs = Parallel(n_jobs=jobs, backend="threading")(delayed(one)(cell) for cell in cells)
    else:
        recs = [one(cell) for cell in cells]
    val = np.array([r.accuracy(validation) for r in recs])
    best = int(np.argmax(val))
    winner = {
        "id": recs[best].id,
        "kind": recs[best].kind,
        "extractor": recs[best].extractor,
        "clf": recs[best].clf,
        "validation": float(val[best]),
    }
    ens, chosen, to_test, ensemble_wins = None, [], {winner["id"]}, False
    if ensemble:
        stored = [_stored(r, store, runs, validation) for r in recs]
        counts = greedy_ensemble([p for p, _ in stored], stored[0][1])
        chosen = [(r.id, k) for r, k in zip(recs, counts) if k]
        if len(chosen) == 1:
            logger.info(
                "greedy ensemble selection kept one run (%s): no average of runs beat it on validation", chosen[0][0]
            )
        else:
            avg = sum(k * p for (p, _), k in zip(stored, counts) if k) / sum(counts)
            ens_val = float(np.mean(avg.argmax(axis=1) == stored[0][1]))
            ensemble_wins = ens_val > winner["validation"]
            if ensemble_wins:  # the ensemble's test needs its members' test probabilities
                winner = {
                    "id": None,
                    "kind": "ensemble",
                    "validation": ens_val,
                    "clf": "ensemble",
                    "extractor": "+".join(dict.fromkeys(r.extractor for r, k in zip(recs, counts) if k)),
                }
                to_test = {rid for rid, _ in chosen}
    if show_test:
        to_test |= {r.id for r in recs}
    tested_recs = {}
    for rid in sorted(to_test - {None}):  # test is read here, after the choice, once per run
        tested_recs[rid] = record_split(rid, test, store, runs)
    if len(chosen) > 1:
        ens = record_ensemble([rid for rid, _ in chosen], [float(k) for _, k in chosen], store, runs)
        tested_recs[ens.id] = ens
        if ensemble_wins:
            winner["id"] = ens.id
    tested = {winner["id"]} | ({r.id for r in recs} if show_test else set())  # what the table shows test for
    test_of = {rid: tested_recs[rid].accuracy(test) for rid in tested}
    seconds = time.perf_counter() - started
    return _summary(store, runs, png, clfs, names, recs, winner, ens, test_of, test, validation, search, seconds)


def _extractors(fs: FeatureStore, wanted: list[str] | None, train: str, validation: str) -> list[str]:
    """The extractors to sweep: those named (or all), each with complete train and validation splits."""
    names = (
        [fs.resolve(n) for n in wanted] if wanted else fs.extractors(caches=False)
    )  # finetune's caches only when named
    if not names:
        raise StoreError(f"store {fs.path} holds no extractor yet; run `featstore extract` first")
    lacking = [
        n for n in names if not all(s in fs.splits(n) and fs.split_info(s, n)["complete"] for s in (train, validation))
    ]
    if lacking:
        raise StoreError(
            f"extractors {', '.join(lacking)} have no complete {train!r} and {validation!r} splits; a sweep chooses on "
            f"validation. Extract it (`featstore extract --split {validation} ...`), leave them out with --extractor, or "
            f"fit them one by one with `featstore fit`, which chooses by cross-validation on {train!r} when there is no "
            f"validation split."
        )
    return names


def _stored(rec: RunRecord, store, runs, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A run just fitted: its stored probabilities and labels on ``split`` (checked against the sha256 it recorded)."""
    data = load_predictions(runs_root(store, runs) / rec.id, rec)
    return data[f"{split}__proba"], data[f"{split}__labels"]


def _summary(store, runs, png, clfs, names, recs, winner, ens, test_of, test, validation, search, seconds) -> dict:
    """Write sweep-<id>.json and the heat map into the runs folder; return the summary (``test_of``: run -> test accuracy)."""
    from featstore.plots import heatmap_png

    root = runs_root(store, runs)
    sid = f"sweep-{secrets.token_hex(3)}"
    winner["test"] = test_of.get(winner["id"])
    grid = np.array(
        [[r.accuracy(validation) for r in recs[i * len(clfs) : (i + 1) * len(clfs)]] for i in range(len(names))]
    )
    where = next(
        ((i, j) for i in range(len(names)) for j in range(len(clfs)) if recs[i * len(clfs) + j].id == winner["id"]),
        None,
    )
    out = Path(png) if png else root / f"{sid}.png"
    heatmap_png(
        names,
        clfs,
        grid,
        f"{sid}: validation accuracy (winner {winner['id']}"
        + (f", test {winner['test']:.3f})" if winner["test"] is not None else ")"),
        out,
        where,
    )
    summary = {
        "id": sid,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": str(Path(store).resolve()),
        "classifiers": clfs,
        "extractors": names,
        "search": search,
        "seconds": round(seconds, 2),
        "cells": [
            {
                "extractor": r.extractor,
                "clf": r.clf,
                "run": r.id,
                "params": r["params"],
                "validation": r.accuracy(validation),
                "test": test_of.get(r.id),
            }
            for r in recs
        ],
        "ensemble": None
        if ens is None
        else {
            "run": ens.id,
            "members": list(ens.members),
            "weights": list(ens.weights),
            "validation": ens.accuracy(validation),
            "test": ens.accuracy(test),
        },
        "winner": winner,
        "selection": f"accuracy on {validation!r}; {test!r} evaluated after the choice, for the winner only"
        + (" (and every run: --show-test)" if len(test_of) > 1 else ""),
        "png": str(out),
    }
    (root / f"{sid}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
