"""Fit classifiers on stored features and record every fit as a run.

Protocol: fit on ``train``; choose among several parameter settings by accuracy on ``validation`` (or by
k-fold cross-validation on ``train``, copies of one image kept in one fold, when there is no validation split,
and the run says so); calibrate the chosen model's probabilities with one temperature, fitted on validation (or
on train's out-of-fold probabilities); evaluate on ``test`` once, for the chosen setting only. Runs live in
``<store>.runs/<run id>/`` beside the store (``run.json``, the fitted model, ``predictions.npz``), so fitting never
blocks an extraction. A split larger than ``memory_budget`` is streamed from the store
(``featstore.experiments.streaming``). Evaluating, showing and comparing runs is in
``featstore.experiments.evaluate``, ensembles in ``featstore.experiments.ensemble``.

>>> run = fit("features.h5", "logreg", {"C": [0.1, 1.0]})   # doctest: +SKIP
>>> run["metrics"]["validation"]["accuracy"], run["metrics"]["test"]["accuracy_ci"]["low"]   # doctest: +SKIP
(0.87, 0.79)
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, OutputError, StoreError, check_jobs, check_names
from featstore.experiments.evaluate import metrics, run_metrics, run_metrics_blocks  # noqa: F401 (metrics: its old home)
from featstore.experiments.protocol import Splits, check_distinct, resolve_splits
from featstore.experiments.scoring import (  # noqa: F401 (OOF)
    EVAL_BUDGET,
    OOF,
    eval_rows,
    memory_blocks,
    score_splits,
)
from featstore.experiments.selection import (
    DivergedError,
    Fitted,
    check_classes,
    cross_validate,
    describe_given,
    fit_one,
    out_of_fold,
    source_groups,
    workers,
)
from featstore.experiments.streaming import (
    BLOCK_FRACTION,
    check_budget_holds_chunks,
    fit_streaming,
    format_bytes,
    parse_bytes,
    refuse_in_memory,
    streams_by_partial_fit,
)
from featstore.experiments.streaming import predict_blocks as stream_blocks
from featstore.experiments.sweep_reuse import fit_inputs
from featstore.experiments.training_rows import chosen_notes
from featstore.runs import made
from featstore.runs.artifacts import full_proba
from featstore.runs.fittedrows import overlap_notes
from featstore.runs.folder import ensure_writable, runs_root
from featstore.runs.record import RunRecord, digest_paths, draft
from featstore.runs.write import RunDraft
from featstore.store.far import summary
from featstore.store.nonfinite import kept
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice
from featstore.store.versions import split_versions

logger = logging.getLogger(__name__)

_digest_paths = digest_paths  # its name before it moved to featstore.runs.record
_fit_one = fit_one  # its name before it moved to featstore.experiments.selection


def _score_one(spec_name, params, X, y, val, groups=None):
    """``(validation accuracy, fitted model)`` of one setting; ``(None, why)`` when its fit diverged."""
    try:
        est = _fit_one(spec_name, params, X, y, val, groups)
    except DivergedError as exc:  # one setting of a search: left out of the choice, the others compete
        return None, str(exc)
    return float(np.mean(est.predict(val[0]) == val[1])), est


def _uses_validation(head) -> bool:
    """Whether the classifier's fit early-stops on the validation split (it says so: ``fit_uses_validation``)."""
    return bool(getattr(head, "fit_uses_validation", False))


def _parallel_fits(head) -> bool:
    """Whether several settings of the classifier may be fitted at once in worker processes (Keras heads say no)."""
    return bool(getattr(head, "parallel_fits", True))


def fit(
    store: str | os.PathLike = "features.h5",
    clf: str = "logreg",
    params: dict[str, list] | None = None,
    *,
    extractor: str | None = None,
    search: bool = False,
    jobs: int = 1,
    train: str = "train",
    validation: str | None = "validation",
    test: str | None = "test",
    runs: str | os.PathLike | None = None,
    memory_budget: int | str | None = None,
    augmented: bool = False,
    test_later: str = "",
) -> RunRecord:
    """Fit ``clf`` on the store's features, pick parameters on validation, calibrate, test once, and record a run.

    ``params`` maps parameter names to lists of typed values (several values = a search). ``validation`` and ``test``
    name splits; a name the store lacks is an error (except the defaults "validation" and "test", whose absence the
    run notes), "none" asks for none. With ``memory_budget`` (bytes or "512MB"), a split larger than the budget is
    streamed from the store (sgd, dense) or refused (classifiers that need all rows in memory). ``augmented=True``
    fits on the train rows plus the train split's cached augmented copies (``extract --augment K``); validation and
    test are always the plain splits, and cross-validation keeps an image and its copies in one fold. The evaluation
    (every split's probabilities, the temperature, the figures, predictions.npz) runs a block of rows at a time within
    ``memory_budget`` (``scoring.EVAL_BUDGET``, 512 MB, when None), whether the fit streamed or not. Example::

        run = fit("features.h5", "svm", {"kernel": ["linear", "rbf"]}, jobs=2)
        run = fit("features.h5", "logreg", augmented=True, validation="none")
    """
    from featstore.experiments.classifiers import candidates, get_classifier  # sklearn: only when fitting

    check_names("extractor", extractor=extractor)  # "" took the store's only extractor
    spec = get_classifier(clf)
    given = params or {}
    spec.check_values(given, search)  # unknown names and values out of range fail before any data is read
    check_jobs(jobs)  # 0 reached joblib as a traceback; 100000 started 100,000 loky processes at once
    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    if budget is not None and budget <= 0:
        raise ConfigError(f"--memory-budget must be more than 0 bytes, got {memory_budget!r}; write e.g. 512MB")
    check_distinct(train, validation, test)
    fs = FeatureStore(store)
    name = fs.resolve(extractor)
    root = runs_root(store, runs)
    ensure_writable(root, store)  # a read-only runs folder fails now, not after the fit
    with made.removed_on_failure(root):  # a fit that fails leaves no runs folder it made (attack 53 #3)
        splits = resolve_splits(fs, name, train, validation, test, test_later=test_later)
        versions = split_versions(fs, name, splits.used)  # before any is read: the run records one state of each
        class_names = fs.class_names(name)
        settings = candidates(spec, given, search)
        full = [spec.full_params(s) for s in settings]
        refuse_reduce(fs, name, clf, given, search, splits.train)  # avg on vectors: recorded avg for a flatten
        aug = _augmentation(fs, name, train) if augmented else None
        used = splits.used
        sizes = [
            fs.nbytes(s, name) + (fs.nbytes(train, name, augmented=True) if aug and s == train else 0) for s in used
        ]
        big = budget is not None and max(sizes) > budget
        if big and spec.needs_all_data:
            refuse_in_memory(clf, train, sizes[0], budget)
        if big:
            check_budget_holds_chunks(fs, name, used, budget, memory_budget, augmented=aug is not None)
        # NaN/inf rows (extract stores them) are refused before any fit, test included, not after it: in memory on the
        # arrays the fit loads (test among them); streamed, train is checked in the fit's first pass over it (before the
        # classifier's first update) and the evaluation splits in one pass each here
        if big:
            for s in used[1:]:
                fs.refuse_nonfinite(s, name, max_bytes=budget // BLOCK_FRACTION, train=splits.train)  # as the fit reads
        block = budget // BLOCK_FRACTION if big else 64 << 20  # read within the budget, as the fit reads
        # by rows (70 #4), within the budget given (76 #4: the digests took ~38 bytes a row outside it)
        shared = overlap_notes(fs, name, splits.train, [splits.validation, splits.test], block, memory_budget=budget)
        # test on the rows it chose on (attack 78 #2): its settings, a dense head's epoch and every fit's calibration
        # temperature are chosen on validation, so one setting too (attack 79 #1)
        if splits.validation and splits.test:
            shared += chosen_notes(fs, name, splits.validation, splits.test, budget, splits.train)  # 80 #1
        for note in shared:
            logger.warning("%s", note)
        t0 = time.perf_counter()
        if big:
            fitted = fit_streaming(fs, name, clf, full, settings, given, splits, budget, aug is not None, jobs)
        else:
            fitted = _fit_in_memory(fs, name, clf, full, settings, given, splits, jobs, aug is not None, budget)
        fit_seconds = time.perf_counter() - t0
        extra = {"memory_budget": budget, "streamed": big, "notes": list(splits.notes) + shared}
        # what a sweep reuses
        extra["inputs"] = fit_inputs(fs, name, splits, versions, given, settings, search, aug, full, budget)
        # the far rule's figures of train as its first pass kept them (no extra pass): `runs evaluate` holds a split
        # to the rows the run was fitted on, whatever the store's train holds later (attack 77 #1)
        if (far := summary(kept(fs, name, splits.train))) is not None:
            extra["inputs"]["far_reference"] = {"split": splits.train, **far}
        if aug:
            extra["augmented"] = aug
            extra["notes"].append(
                f"trained on {train!r} plus its {aug['copies']} augmented copies ({aug['spec']}, seed {aug['seed']}): "
                f"{aug['train_rows']} rows; validation and test are the plain splits"
            )
        est = fitted.est
        if big:
            extra["notes"].append(
                f"streamed from the store within {format_bytes(budget)}"
                + (
                    f": {clf} ran `epochs` partial_fit passes"
                    + (" (max_iter is unused)" if "max_iter" in full[fitted.best] else "")
                    if streams_by_partial_fit(est)
                    else ""
                )
            )
        if _uses_validation(est.steps[-1][1]) and splits.validation:
            extra["notes"].append(
                f"the {splits.validation!r} split also drove early stopping"
                + (" and the choice of setting" if len(full) > 1 else "")
                + ": its score is optimistic; judge by test"
            )
        return _record(
            fs,
            name,
            clf,
            full[fitted.best],
            given,
            class_names,
            splits,
            fitted,
            fit_seconds,
            runs,
            extra,
            budget,
            versions,
        )


def _augmentation(fs: FeatureStore, name: str, train: str) -> dict:
    """What ``--augmented`` trains on (refused without complete copies, or copies of an evaluation split)."""
    provenance.refuse_evaluation_split(train)  # copies of a validation/test split (never made by featstore): refused
    a = fs.augmentation(train, name)
    if a is None:
        raise StoreError(
            f"split {train!r} of {name!r} has no augmented copies; make them with `featstore extract --split {train} "
            f"--augment K` (same options as the split), or fit without --augmented"
        )
    if not a["complete"]:
        raise StoreError(
            f"the augmented copies of {train!r} of {name!r} are not complete ({a['rows']} rows); "
            f"{resume_advice(train, augment=int(a['augment_copies']))}"
        )
    fs.refuse_bad_copies(train, name)  # every row a copy of the split's row with its path and label
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


def _fit_in_memory(
    fs: FeatureStore,
    name: str,
    clf: str,
    full: list[dict],
    settings: list[dict],
    given: dict,
    splits: Splits,
    jobs: int,
    augmented: bool = False,
    budget: int | None = None,
) -> Fitted:
    """Load train (and validation) into memory; fit one setting, or choose on validation, or by cross-validation on
    train (copies of one image in one fold). Without validation, train's out-of-fold probabilities are kept.

    ``augmented``: fit on train's rows followed by its augmented copies; train's metrics and everything else use the
    plain rows. The chosen model is evaluated in blocks within ``budget`` (default ``scoring.EVAL_BUDGET``): train
    and validation from memory, test read from the store, never its (N, K) probabilities whole.
    """
    from joblib import delayed

    from featstore.experiments.classifiers import build_classifier

    train, validation = splits.train, splits.validation
    class_names = fs.class_names(name)
    plain = X, y = fs.load(train, name)
    loaded = {train: plain}  # train and validation, read once and checked for NaN/inf in memory before any fit
    if validation:
        loaded[validation] = fs.load(validation, name)
    for s, (Xs, _) in loaded.items():  # train first: every split's far rule takes its usual sizes (72 #1)
        fs.refuse_nonfinite(s, name, Xs, train=train)
    for s in splits.used[1:]:  # test: checked in one streamed pass now, read again in blocks once chosen
        if s not in loaded:
            fs.refuse_nonfinite(s, name, train=train)
    check_classes(y, train, class_names)
    groups = None
    if augmented:
        Xa, ya = fs.load(train, name, augmented=True)
        fs.refuse_nonfinite(train, name, Xa, augmented=True, train=train)
        groups = source_groups(fs.paths(train, name), fs.paths(train, name, augmented=True))
        X, y = np.concatenate([X, Xa]), np.concatenate([y, ya])
    n_plain, k = len(plain[1]), len(class_names)
    val = loaded[validation] if validation else None
    selection: dict = {"metric": "accuracy", "candidates": []}
    oof = None
    parallel = _parallel_fits(build_classifier(clf, full[0]).steps[-1][1])
    if len(full) == 1:
        selection["method"] = describe_given(given)
        est, best = _fit_one(clf, full[0], X, y, val, groups, jobs), 0
        if val is None:
            oof = out_of_fold(clf, full[0], X, y, n_plain, k, groups, train)
    elif val is not None:
        selection["method"] = f"accuracy on the {validation!r} split"
        selection["chosen_on"] = validation  # its figures there are optimistic (featstore.runs.selected)
        scored = workers(jobs, parallel)(delayed(_score_one)(clf, p, X, y, val, groups) for p in full)
        ok = [i for i, (sc, _) in enumerate(scored) if sc is not None]
        if not ok:
            raise DivergedError(
                scored[0][1] if len(scored) == 1 else f"every setting diverged; the first: {scored[0][1]}"
            )
        for sc, why in scored:
            if sc is None:
                logger.warning("%s; left out of the choice", why)
        best = max(ok, key=lambda i: scored[i][0])  # the first of the best, as np.argmax
        est = scored[best][1]
        selection["candidates"] = [{"params": settings[i], "score": scored[i][0]} for i in ok]
        if len(ok) < len(scored):
            selection["diverged"] = [settings[i] for i in range(len(scored)) if i not in ok]
    else:
        scores, oofs = cross_validate(clf, full, X, y, n_plain, k, groups, jobs, parallel, train)
        best, oof = int(np.nanargmax(scores)), None  # NaN: a setting that diverged (warned), never chosen
        oof = oofs[best]
        kept = ", copies of one image kept in one fold" if groups is not None else ""
        selection["method"] = (
            f"{oof.folds}-fold stratified cross-validation on {train!r}{kept} ({splits.validation_missing})"
        )
        selection["candidates"] = [{"params": s, "score": sc} for s, sc in zip(settings, scores) if sc == sc]
        selection["chosen_on"] = f"{train}{OOF}"
        if len(selection["candidates"]) < len(settings):
            selection["diverged"] = [s for s, sc in zip(settings, scores) if sc != sc]  # NaN: diverged in a fold
        est = _fit_one(clf, full[best], X, y, None, groups, jobs)

    budget = EVAL_BUDGET if budget is None else budget

    def predict_blocks(split: str):  # the test split is read from the store here, once, block by block
        if split not in loaded:
            return stream_blocks(est, fs, name, split, budget, k)
        rows = eval_rows(fs.split_info(split, name), budget, k)
        return memory_blocks(est, *loaded[split], rows, k, split)

    def predict_split(split: str):
        Xs, ys = loaded[split] if split in loaded else fs.load(split, name)
        return ys, est.predict(Xs), full_proba(est, Xs, k)

    return Fitted(est, best, selection, predict_split, oof, predict_blocks=predict_blocks)


def refuse_reduce(fs, name: str, clf: str, given: dict | None, search: bool, train: str, option: str = "") -> None:
    """ConfigError when a setting of ``clf`` (``given``, ``search``) reduces (avg/max) features ``name`` stores as
    vectors, with nothing to reduce: the run would record ``avg`` for a flatten (attack 58 #3). ``option``: the fix
    in the command's own spelling (sweep's ``--param CLF:reduce=flatten``: attack 60 #8)."""
    from featstore.experiments.classifiers import candidates, get_classifier
    from featstore.models.reshape import check_reduce

    spec, row, attrs = get_classifier(clf), tuple(fs.split_info(train, name)["shape"][1:]), fs.metadata(name)
    for p in (spec.full_params(s) for s in candidates(spec, given or {}, search)):
        reduce = p.get("reduce", "flatten")
        check_reduce(reduce, row, f"extractor {name!r}'s features", option or "--param reduce=flatten", attrs)


def _record(
    fs: FeatureStore,
    name: str,
    clf: str,
    params: dict,
    given: dict,
    class_names: list[str],
    splits: Splits,
    fitted: Fitted,
    fit_seconds: float,
    runs,
    extra: dict,
    budget: int | None = None,
    versions: dict | None = None,
) -> RunRecord:
    """Calibrate, evaluate the chosen model on each split (the test split once) in blocks within ``budget``, its
    validation and test probabilities written to the run's predictions.npz as they come
    (``featstore.experiments.scoring``), and write the run folder."""
    meta = fs.metadata(name)
    notes = extra.pop("notes")
    evaluated: dict = {}
    try:
        with RunDraft(runs_root(fs.path, runs), clf) as run_draft:
            evaluated, cal, clock = score_splits(
                fs,
                name,
                splits,
                fitted,
                class_names,
                run_draft.predictions,
                EVAL_BUDGET if budget is None else budget,
                notes,
                f"{clf} with {params}",
                versions,
            )
            own = getattr(fitted.est.steps[-1][1], "own_temperature", None)  # the svm's (attack 67 #12)
            if callable(own):
                cal = {**cal, "model_temperature": own()}
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
                selection=fitted.selection,
                calibration=cal,
                splits={s: evaluated[s]["n"] for s in splits.used},
                metrics=evaluated,
                fit_seconds=round(fit_seconds, 4),
                predict_seconds_per_image=clock.seconds / max(clock.rows, 1),
                **extra,
                notes=notes,
            )
            head = fitted.est.steps[-1][1]
            if hasattr(head, "history_"):
                record["history"] = head.history_
            return run_draft.finish(record, fitted.est)
    except OutputError as exc:  # say what was fitted, so the figures are not lost with the folder
        figures = ", ".join(f"{s} {m['accuracy']:.3f}" for s, m in evaluated.items())
        raise OutputError(
            f"{clf} was fitted in {fit_seconds:.1f} s" + (f" (accuracy: {figures})" if figures else "") + f", but {exc}"
        ) from None
