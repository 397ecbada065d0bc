"""Ensembles of runs: the (weighted) average of their stored probabilities, recorded as a run; greedy selection.

Members may be runs of any kind an ensemble can average (fitted classifiers and fine-tuned models, of
different extractors of the same images); each is verified before its stored probabilities are read.
:func:`greedy_ensemble` is the forward selection with replacement of Caruana et al. (2004) that
``featstore sweep --ensemble`` uses: start from the best run, repeatedly add the run whose averaged
probabilities raise validation accuracy most, stop when nothing helps.

>>> y = np.array([0, 1, 1])
>>> a = np.array([[.9, .1], [.6, .4], [.4, .6]]); b = np.array([[.6, .4], [.2, .8], [.6, .4]])
>>> greedy_ensemble([a, b], y)
[1, 1]
"""

from __future__ import annotations

import os

import numpy as np

from featstore.errors import ConfigError
from featstore.experiments.evaluate import metrics
from featstore.runs.folder import ensure_writable, find_run, load_predictions, runs_root
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord, check_weights, draft
from featstore.runs.write import write_run

MAX_ENSEMBLE_STEPS = 25  # additions (with replacement) in the greedy ensemble selection


def ensemble(
    run_ids: list[str],
    weights: list[float] | None = None,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
) -> RunRecord:
    """Average the members' predicted probabilities (optionally weighted) and record it as a run.

    Members may come from different classifiers and different extractors of the same images. Example::

        ensemble(["logreg-1a2b3c", "svm-4d5e6f"], weights=[1, 2])
    """
    if len(run_ids) < 2:
        raise ConfigError("an ensemble needs at least two run ids")
    weights = [1.0] * len(run_ids) if weights is None else [float(w) for w in weights]
    if not check_weights(weights, len(run_ids)):
        raise ConfigError(
            f"give one non-negative weight per member ({len(run_ids)}), finite and not all zero; got {weights}"
        )
    root = runs_root(store, runs)
    members = [find_run(r, root) for r in run_ids]  # each verified: its model and its stored predictions
    ensure_writable(root)
    nested = [rec.id for rec, _ in members if not kind_of(rec).member_of_ensembles]
    if nested:
        raise ConfigError(
            f"{', '.join(nested)} are ensembles; build an ensemble from fitted runs (list their members instead)"
        )
    first = members[0][0]
    for rec, _ in members[1:]:
        if rec.class_names != first.class_names:
            raise ConfigError(
                f"runs {first.id} and {rec.id} have different classes: {list(first.class_names)} vs {list(rec.class_names)}"
            )
    preds = [load_predictions(folder, rec) for rec, folder in members]  # each checked against its recorded sha256
    evaluated, probas = {}, {}
    for split, info in first.predictions.items():
        if not all(split in rec.predictions for rec, _ in members):
            continue
        for rec, _ in members:
            if rec.predictions[split].paths_sha256 != info.paths_sha256:
                raise ConfigError(
                    f"runs {first.id} and {rec.id} were evaluated on different images of {split!r}; ensembles need the same images"
                )
        avg = sum(w * p[f"{split}__proba"] for w, p in zip(weights, preds)) / sum(weights)
        y = preds[0][f"{split}__labels"]
        evaluated[split] = metrics(y, avg.argmax(axis=1), list(first.class_names))
        probas[split] = (avg, y, info.paths_sha256)
    if not evaluated:
        raise ConfigError("the members share no evaluated split (validation or test); nothing to ensemble")
    # one extractor name per distinct (name, fingerprint) of the members, in member order: both fields list the same extractors
    extractors = list(dict.fromkeys((rec.extractor, rec.fingerprint) for rec, _ in members))
    record = draft(
        "ensemble",
        "ensemble",
        **({"store": first["store"]} if "store" in first else {}),
        members=[rec.id for rec, _ in members],
        weights=weights,
        extractor="+".join(n for n, _ in extractors),
        fingerprint="+".join(f for _, f in extractors),
        class_names=list(first.class_names),
        params={"weights": weights},
        metrics=evaluated,
        fit_seconds=0.0,
        notes=[],
    )
    return write_run(root, record, None, probas)


def greedy_ensemble(probas: list[np.ndarray], y: np.ndarray, max_steps: int = MAX_ENSEMBLE_STEPS) -> list[int]:
    """How many times each model enters a greedy forward ensemble selection with replacement (Caruana et al. 2004).

    >>> greedy_ensemble([np.eye(2), np.eye(2)[::-1]], np.array([0, 1]))
    [1, 0]
    """

    def acc(p):
        return float(np.mean(p.argmax(axis=1) == y))

    counts = [0] * len(probas)
    first = int(np.argmax([acc(p) for p in probas]))
    counts[first], total, best = 1, probas[first].copy(), acc(probas[first])
    for _ in range(max_steps):
        n = sum(counts)
        scores = [acc((total + p) / (n + 1)) for p in probas]
        j = int(np.argmax(scores))
        if scores[j] <= best:
            break
        counts[j] += 1
        total += probas[j]
        best = scores[j]
    return counts
