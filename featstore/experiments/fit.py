"""Fit classifiers on stored features and record every fit as a run.

Protocol: fit on ``train``; choose among several parameter settings by accuracy on ``validation`` (or by
k-fold cross-validation on ``train`` when there is no validation split, and the run says so); evaluate
on ``test`` once, for the chosen setting only. Runs live in ``<store>.runs/<run id>/`` beside the store
(``run.json``, the fitted model, ``predictions.npz``), so fitting never blocks an extraction. A split larger
than ``memory_budget`` is streamed from the store (``featstore.experiments.streaming``). Evaluating, showing and
comparing runs is in ``featstore.experiments.evaluate``, ensembles in ``featstore.experiments.ensemble``.

>>> run = fit("features.h5", "logreg", {"C": [0.1, 1.0]})   # doctest: +SKIP
>>> run["metrics"]["validation"]["accuracy"]                 # doctest: +SKIP
0.87
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, StoreError
from featstore.experiments.evaluate import metrics
from featstore.experiments.streaming import (
    check_budget_holds_chunks,
    format_bytes,
    parse_bytes,
    refuse_in_memory,
    stream_fit,
    stream_predict,
    streams_by_partial_fit,
)
from featstore.runs.artifacts import full_proba
from featstore.runs.folder import ensure_writable, runs_root
from featstore.runs.record import RunRecord, digest_paths, draft
from featstore.runs.write import write_run
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)


def _fit_one(spec_name: str, params: dict, X, y, val):
    """Fit one setting; a head whose fit takes the validation split (the Keras head: early stopping) gets it."""
    from featstore.experiments.classifiers import build_classifier

    est = build_classifier(spec_name, params)
    head = est.steps[-1][1]
    try:
        if _uses_validation(head) and val is not None:
            Xt = est[:-1].fit_transform(X, y)
            head.fit(Xt, y, validation_data=(est[:-1].transform(val[0]), val[1]))
        else:
            est.fit(X, y)
    except ValueError as exc:  # e.g. n_neighbors > rows, more calibration folds than images of a class
        raise ConfigError(f"{spec_name} with {params} cannot be fitted on these {len(y)} rows: {exc}") from exc
    return est


def _score_one(spec_name, params, X, y, val):
    est = _fit_one(spec_name, params, X, y, val)
    return float(np.mean(est.predict(val[0]) == val[1])), est


_digest_paths = digest_paths  # its name before it moved to featstore.runs.record


def _uses_validation(head) -> bool:
    """Whether the classifier's fit early-stops on the validation split (it says so: ``fit_uses_validation``)."""
    return bool(getattr(head, "fit_uses_validation", False))


def _parallel_fits(head) -> bool:
    """Whether several settings of the classifier may be fitted at once in worker processes (Keras heads say no)."""
    return bool(getattr(head, "parallel_fits", True))


def _usable(store: FeatureStore, name: str, split: str | None) -> bool:
    if not split or split not in store.splits(name):
        return False
    if not store.split_info(split, name).get("complete"):
        logger.warning("split %r of %r is not complete; it is not used", split, name)
        return False
    return True


def fit(
    store: str | os.PathLike = "features.h5",
    clf: str = "logreg",
    params: dict[str, list] | None = None,
    *,
    extractor: str | None = None,
    search: bool = False,
    jobs: int = 1,
    train: str = "train",
    validation: str = "validation",
    test: str | None = "test",
    runs: str | os.PathLike | None = None,
    memory_budget: int | str | None = None,
    augmented: bool = False,
) -> RunRecord:
    """Fit ``clf`` on the store's features, pick parameters on validation, test once, and record a run.

    ``params`` maps parameter names to lists of typed values (several values = a search). With
    ``memory_budget`` (bytes or "512MB"), a split larger than the budget is streamed from the store
    (sgd, dense) or refused (classifiers that need all rows in memory). ``augmented=True`` fits on the
    train rows plus the train split's cached augmented copies (``extract --augment K``); validation and
    test are always the plain splits. Example::

        run = fit("features.h5", "svm", {"kernel": ["linear", "rbf"]}, jobs=2)
        run = fit("features.h5", "logreg", augmented=True)
    """
    from featstore.experiments.classifiers import candidates, get_classifier  # sklearn: only when fitting

    spec = get_classifier(clf)
    given = params or {}
    spec.full_params({k: v[0] for k, v in given.items()})  # unknown names fail before any data is read
    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    if budget is not None and budget <= 0:
        raise ConfigError(f"--memory-budget must be positive, got {memory_budget!r}")
    if len({train, validation, test}) < 3:
        raise ConfigError(
            f"--train, --validation and --test must be three different splits; got {train!r}, {validation!r}, {test!r}"
        )
    fs = FeatureStore(store)
    name = fs.resolve(extractor)
    ensure_writable(runs_root(store, runs))  # a read-only runs folder fails now, not after the fit
    if train not in fs.splits(name):
        raise StoreError(
            f"extractor {name!r} in {store} has no {train!r} split; run `featstore extract --split {train}` first"
        )
    class_names = fs.class_names(name)
    has_val = _usable(fs, name, validation)
    settings = candidates(spec, given, search)
    full = [spec.full_params(s) for s in settings]
    has_test = _usable(fs, name, test)
    used = [train] + ([validation] if has_val else []) + ([test] if has_test else [])
    aug = _augmentation(fs, name, train, has_val, len(full)) if augmented else None
    sizes = [fs.nbytes(s, name) + (fs.nbytes(train, name, augmented=True) if aug and s == train else 0) for s in used]
    big = budget is not None and max(sizes) > budget
    if big and spec.needs_all_data:
        refuse_in_memory(clf, train, sizes[0], budget)
    if big:
        check_budget_holds_chunks(fs, name, used, budget, memory_budget, augmented=aug is not None)
    t0 = time.perf_counter()
    if big:
        est, best, selection, predict_split = _fit_streaming(
            fs, name, clf, full, settings, train, validation if has_val else None, budget, aug is not None
        )
    else:
        est, best, selection, predict_split = _fit_in_memory(
            fs, name, clf, full, settings, train, validation if has_val else None, jobs, aug is not None
        )
    fit_seconds = time.perf_counter() - t0
    extra = {"memory_budget": budget, "streamed": big, "notes": []}
    if aug:
        extra["augmented"] = aug
        extra["notes"].append(
            f"trained on {train!r} plus its {aug['copies']} augmented copies ({aug['spec']}, seed {aug['seed']}): "
            f"{aug['train_rows']} rows; validation and test are the plain splits"
        )
    head = est.steps[-1][1]
    if big:
        extra["notes"].append(
            f"streamed from the store within {format_bytes(budget)}"
            + (
                f": {clf} ran `epochs` partial_fit passes"
                + (" (max_iter is unused)" if "max_iter" in full[best] else "")
                if streams_by_partial_fit(est)
                else ""
            )
        )
    if _uses_validation(head) and has_val:
        extra["notes"].append(
            f"the {validation!r} split also drove early stopping"
            + (" and the choice of setting" if len(full) > 1 else "")
            + ": its score is optimistic; judge by test"
        )
    return _record(
        fs, name, est, clf, full[best], given, selection, class_names, used, predict_split, fit_seconds, runs, extra
    )


def _augmentation(fs: FeatureStore, name: str, train: str, has_val: bool, n_settings: int) -> dict:
    """What ``--augmented`` trains on (refused without complete copies, or when k-fold CV on train would choose)."""
    provenance.refuse_evaluation_split(
        train
    )  # copies of a validation/test split (never made by featstore) are never trained on
    a = fs.augmentation(train, name)
    if a is None:
        raise StoreError(
            f"split {train!r} of {name!r} has no augmented copies; make them with `featstore extract --split {train} "
            f"--augment K` (same options as the split), or fit without --augmented"
        )
    if not a["complete"]:
        raise StoreError(
            f"the augmented copies of {train!r} of {name!r} are not complete ({a['rows']} rows); finish them by re-running "
            f"the same `featstore extract --split {train} --augment {a['augment_copies']}`"
        )
    fs.refuse_bad_copies(
        train, name
    )  # every row a copy of the split's row with its path and label: never train on other rows
    if n_settings > 1 and not has_val:
        raise ConfigError(
            "a parameter search with --augmented needs a validation split: k-fold cross-validation on train would put "
            "copies of one image on both sides of a fold. Extract a validation split, or fit one setting"
        )
    plain_rows = int(fs.split_info(train, name)["committed_rows"])
    return {
        "split": train,
        "copies": a["augment_copies"],
        "spec": a["augment_spec"],
        "seed": a["augment_seed"],
        "rows": a["rows"],
        "plain_rows": plain_rows,
        "train_rows": plain_rows + a["rows"],
    }


def _check_classes(y: np.ndarray, split: str, class_names: list[str]) -> None:
    present = np.unique(y)
    if len(present) < 2:
        raise StoreError(
            f"split {split!r} has only one class ({class_names[present[0]] if len(present) else 'none'}); "
            f"a classifier needs at least two class folders with images"
        )


def _fit_in_memory(
    fs: FeatureStore,
    name: str,
    clf: str,
    full: list[dict],
    settings: list[dict],
    train: str,
    validation: str | None,
    jobs: int,
    augmented: bool = False,
):
    """Load train (and validation) into memory; fit one setting, or choose on validation, or by k-fold CV on train.

    ``augmented``: fit on train's rows followed by its augmented copies; train's metrics and everything else use the plain rows.
    """
    from joblib import Parallel, delayed

    class_names = fs.class_names(name)
    plain = X, y = fs.load(train, name)
    _check_classes(y, train, class_names)
    if augmented:
        Xa, ya = fs.load(train, name, augmented=True)
        X, y = np.concatenate([X, Xa]), np.concatenate([y, ya])
    val = fs.load(validation, name) if validation else None
    selection: dict = {"metric": "accuracy", "candidates": []}
    if len(full) == 1:
        selection["method"] = "single setting (nothing to select)"
        est, best = _fit_one(clf, full[0], X, y, val), 0
    elif val is not None:
        from featstore.experiments.classifiers import build_classifier

        selection["method"] = f"accuracy on the {validation!r} split"
        parallel = _parallel_fits(build_classifier(clf, full[0]).steps[-1][1])
        scored = Parallel(n_jobs=jobs if parallel else 1, backend="loky" if parallel else "threading")(
            delayed(_score_one)(clf, p, X, y, val) for p in full
        )
        best = int(np.argmax([s for s, _ in scored]))
        est = scored[best][1]
        selection["candidates"] = [{"params": s, "score": sc} for s, (sc, _) in zip(settings, scored)]
    else:
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        from featstore.experiments.classifiers import build_classifier

        k = int(min(5, np.bincount(y)[np.unique(y)].min()))
        if k < 2:
            raise StoreError(
                f"no validation split and too few images per class in {train!r} for cross-validation; extract a validation split"
            )
        selection["method"] = f"{k}-fold stratified cross-validation on {train!r} (no validation split)"
        cv = StratifiedKFold(k, shuffle=True, random_state=0)
        scores = [float(cross_val_score(build_classifier(clf, p), X, y, cv=cv, n_jobs=jobs).mean()) for p in full]
        best = int(np.argmax(scores))
        selection["candidates"] = [{"params": s, "score": sc} for s, sc in zip(settings, scores)]
        est = _fit_one(clf, full[best], X, y, None)
    loaded = {train: plain, validation: val}

    def predict_split(split: str):
        Xs, ys = loaded[split] if split in loaded else fs.load(split, name)  # the test split is read here, once
        return ys, est.predict(Xs), full_proba(est, Xs, len(class_names))

    return est, best, selection, predict_split


def _fit_streaming(
    fs: FeatureStore,
    name: str,
    clf: str,
    full: list[dict],
    settings: list[dict],
    train: str,
    validation: str | None,
    budget: int,
    augmented: bool = False,
):
    """Fit from blocks of the store within ``budget``; several settings are chosen on a streamed validation split."""
    class_names = fs.class_names(name)
    _check_classes(fs.labels(train, name), train, class_names)
    selection: dict = {"metric": "accuracy", "candidates": [], "method": "single setting (nothing to select)"}
    if len(full) > 1 and validation is None:
        raise ConfigError(
            "a parameter search with --memory-budget needs a validation split (k-fold CV would reread train k times)"
        )
    fitted = []
    for p in full:
        est = stream_fit(fs, name, clf, p, train, validation, budget, augmented)
        if len(full) > 1:
            yv, pv, _ = stream_predict(est, fs, name, validation, budget, len(class_names))
            fitted.append((float(np.mean(pv == yv)), est))
        else:
            fitted.append((0.0, est))
    best = int(np.argmax([s for s, _ in fitted]))
    if len(full) > 1:
        selection["method"] = f"accuracy on the {validation!r} split (streamed)"
        selection["candidates"] = [{"params": s, "score": sc} for s, (sc, _) in zip(settings, fitted)]
    est = fitted[best][1]
    return est, best, selection, lambda split: stream_predict(est, fs, name, split, budget, len(class_names))


def _record(
    fs: FeatureStore,
    name: str,
    est,
    clf: str,
    params: dict,
    given: dict,
    selection: dict,
    class_names: list[str],
    splits: list[str],
    predict_split,
    fit_seconds: float,
    runs,
    extra: dict,
) -> RunRecord:
    """Evaluate the chosen model on each split (the test split last, once) and write the run folder atomically."""
    meta = fs.metadata(name)
    evaluated, probas, t_pred, n_pred = {}, {}, 0.0, 0
    for i, split in enumerate(splits):
        t = time.perf_counter()
        try:
            y, pred, proba = predict_split(split)
        except ValueError as exc:  # e.g. knn asked for more neighbours than training rows
            raise ConfigError(f"{clf} with {params} cannot predict {split!r}: {exc}") from exc
        t_pred += time.perf_counter() - t
        n_pred += len(y)
        evaluated[split] = metrics(y, pred, class_names)
        if i > 0:
            probas[split] = (proba, y, digest_paths(fs.paths(split, name)))
    record = draft(
        "fit",
        clf,
        store=str(fs.path.resolve()),
        extractor=name,
        fingerprint=meta["fingerprint"],
        extractor_attrs=meta,
        class_names=class_names,
        params=params,
        given=given,
        selection=selection,
        splits={s: evaluated[s]["n"] for s in splits},
        metrics=evaluated,
        fit_seconds=round(fit_seconds, 4),
        predict_seconds_per_image=t_pred / max(n_pred, 1),
        **{k: v for k, v in extra.items() if k != "notes"},
        notes=extra.get("notes", [])
        + ([] if len(splits) == 3 else ["no complete validation or test split: not evaluated there"]),
    )
    head = est.steps[-1][1]
    if hasattr(head, "history_"):
        record["history"] = head.history_
    return write_run(runs_root(fs.path, runs), record, est, probas)
