"""The types a k-NN classifier's fit adds to its saved run, seen before the fit by fitting a copy of it on a few rows.

A fitted ``KNeighborsClassifier`` keeps the neighbour index its fit built: none (``algorithm='brute'``), a ``KDTree``
or a ``BallTree``, with the distance class of its metric (``'auto'`` picks one from the metric, its parameters and the
data). A run loads only :data:`featstore.runs.skops_types.ARTIFACT_TYPES` (a ``KDTree`` with the Euclidean distance, no
``BallTree``), so some settings' fits cannot be recorded. Which ones is not guessed from the metric's name (attack 62
#8, #9: ``ball_tree`` and ``metric_params`` passed, then the fit was thrown away; ``metric='l2'`` and ``brute`` with
any metric were refused, and load): a copy is fitted on four rows, in the regime where ``'auto'`` builds a tree
(one neighbour, the features ``metric_params`` sizes or two), and skops is asked what it holds.

>>> from sklearn.neighbors import KNeighborsClassifier
>>> fit_adds(KNeighborsClassifier(metric="l2")), fit_adds(KNeighborsClassifier(metric="manhattan", algorithm="brute"))
([], [])
>>> fit_adds(KNeighborsClassifier(algorithm="ball_tree"))
['sklearn.neighbors._ball_tree.BallTree']
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np


def _key(knn) -> str | None:
    """What decides the index a fit of ``knn`` builds, as text (None: a callable metric, or parameters JSON cannot
    hold: the copy is fitted every time)."""
    params = knn.get_params(deep=False)
    if callable(params.get("metric")):
        return None
    try:
        return json.dumps(
            [params.get(k) for k in ("algorithm", "metric", "p", "metric_params")],
            sort_keys=True,
            default=lambda v: np.asarray(v).tolist(),
        )
    except (TypeError, ValueError):
        return None


def _columns(metric_params) -> int:
    """The features the rows of the copy's fit have: the length of an array ``metric_params`` holds (a weight
    vector ``w``, a covariance ``V``), else 2."""
    for value in (metric_params or {}).values() if isinstance(metric_params, dict) else ():
        shape = np.shape(value)
        if shape and shape[0]:
            return int(shape[0])
    return 2


def _types(knn) -> tuple[str, ...]:
    """The types beyond ``ARTIFACT_TYPES`` in the skops file of a copy of ``knn`` fitted on four rows (none where the
    copy's fit fails: the fit itself will say why in scikit-learn's words)."""
    import skops.io as sio
    from sklearn.base import clone

    from featstore.runs.skops_types import ARTIFACT_TYPES, skops_types

    copy = clone(knn).set_params(n_neighbors=1, n_jobs=1)  # one neighbour of four rows: where 'auto' builds a tree
    rows = np.random.default_rng(0).normal(size=(4, _columns(copy.metric_params)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy.fit(rows, np.array([0, 1, 0, 1]))
        data = sio.dumps(copy)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            schema = json.loads(z.read("schema.json"))
    except Exception:  # noqa: BLE001 (any parameter scikit-learn or skops refuses: the fit will say it)
        return ()
    return tuple(sorted((skops_types(Path("-"), schema) | set(sio.get_untrusted_types(data=data))) - ARTIFACT_TYPES))


_SEEN: dict[str, tuple[str, ...]] = {}  # settings' text -> the types (a registered grid repeats few settings)


def fit_adds(knn) -> list[str]:
    """The types a fit of the k-NN classifier ``knn`` adds that a run does not load ([] where it adds none). A
    callable metric is left to the check of the unfitted pipeline (it names the function) and not called here."""
    key = _key(knn)
    if key is None:
        return [] if callable(knn.get_params(deep=False).get("metric")) else list(_types(knn))
    if key not in _SEEN:
        if len(_SEEN) >= 256:
            _SEEN.clear()
        _SEEN[key] = _types(knn)
    return list(_SEEN[key])


def knn_problem(knn) -> str:
    """Why a run could not load the fit of the k-NN classifier ``knn`` ("" when it could: :func:`fit_adds`), with the
    settings that decide it and the ones that load."""
    added = fit_adds(knn)
    if not added:
        return ""
    p = knn.get_params(deep=False)
    shown = [f"{k}={p[k]!r}" for k in ("metric", "p", "algorithm") if p[k] not in (None, "auto", 2)]
    return (
        f"its KNeighborsClassifier has {', '.join(shown + ['metric_params'] * bool(p['metric_params']))}, whose fit "
        f"adds a type runs do not load; use 'euclidean' or 'cosine' without metric_params, or algorithm='brute', which "
        f"keeps no index (this one keeps {', '.join(added)})"
    )
