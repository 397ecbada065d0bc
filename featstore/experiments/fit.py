"""Fit classifiers on stored features, record every fit as a run, compare runs and build ensembles.

Protocol: fit on ``train``; choose among several parameter settings by accuracy on ``validation`` (or by
k-fold cross-validation on ``train`` when there is no validation split, and the run says so); evaluate
on ``test`` once, for the chosen setting only. Runs live in ``<store>.runs/<run id>/`` beside the store
(``run.json``, the fitted model, ``predictions.npz``), so fitting never blocks an extraction.

>>> run = fit("features.h5", "logreg", {"C": [0.1, 1.0]})   # doctest: +SKIP
>>> run["metrics"]["validation"]["accuracy"]                 # doctest: +SKIP
0.87
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import time
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, StoreError
from featstore.runs.artifacts import checked_predict, full_proba  # noqa: F401 (full_proba re-exported)
from featstore.runs.folder import (
    RunListing,
    ensure_writable,
    find_run,
    load_predictions,
    output_path,
    runs_root,  # noqa: F401 (re-exported)
    scan_runs,
)
from featstore.runs.write import replace_file, write_run
from featstore.store.reader import FeatureStore
from featstore.version import __version__

logger = logging.getLogger(__name__)


def metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _fit_one(spec_name: str, params: dict, X, y, val):
    """Fit one setting; the Keras head gets the validation split for early stopping."""
    from featstore.experiments.classifiers import build_classifier
    from featstore.models.head import DenseHead

    est = build_classifier(spec_name, params)
    head = est.steps[-1][1]
    try:
        if isinstance(head, DenseHead) and val is not None:
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


def _digest_paths(paths: list[str]) -> str:
    """sha256 of the paths, each as its file-system bytes (a non-UTF-8 name hashes as its own bytes)."""
    return hashlib.sha256(b"\n".join(os.fsencode(p) for p in paths)).hexdigest()


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
) -> dict:
    """Fit ``clf`` on the store's features, pick parameters on validation, test once, and record a run.

    ``params`` maps parameter names to lists of typed values (several values = a search). With
    ``memory_budget`` (bytes or "512MB"), a split larger than the budget is streamed from the store
    (sgd, dense) or refused (classifiers that need all rows in memory). ``augmented=True`` fits on the
    train rows plus the train split's cached augmented copies (``extract --augment K``); validation and
    test are always the plain splits. Example::

        run = fit("features.h5", "svm", {"kernel": ["linear", "rbf"]}, jobs=2)
        run = fit("features.h5", "logreg", augmented=True)
    """
    from featstore.experiments.classifiers import (
        candidates,
        get_classifier,
    )  # sklearn: imported only when fitting (keeps `featstore runs` fast)
    from featstore.experiments.streaming import check_budget_holds_chunks, format_bytes, parse_bytes, refuse_in_memory

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
    if big:
        extra["notes"].append(
            f"streamed from the store within {format_bytes(budget)}"
            + (": sgd ran `epochs` partial_fit passes (max_iter is unused)" if clf == "sgd" else "")
        )
    if clf == "dense" and has_val:
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
        selection["method"] = f"accuracy on the {validation!r} split"
        backend = "threading" if clf == "dense" else "loky"
        scored = Parallel(n_jobs=1 if clf == "dense" else jobs, backend=backend)(
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
    from featstore.experiments.streaming import stream_fit, stream_predict

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
) -> dict:
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
            probas[split] = (proba, y, _digest_paths(fs.paths(split, name)))
    record = {
        "id": f"{clf}-{secrets.token_hex(3)}",
        "kind": "fit",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": str(fs.path.resolve()),
        "extractor": name,
        "fingerprint": meta["fingerprint"],
        "extractor_attrs": meta,
        "class_names": class_names,
        "clf": clf,
        "params": params,
        "given": given,
        "selection": selection,
        "splits": {s: evaluated[s]["n"] for s in splits},
        "metrics": evaluated,
        "fit_seconds": round(fit_seconds, 4),
        "predict_seconds_per_image": t_pred / max(n_pred, 1),
        "versions": _versions(),
        **extra,
        "notes": extra.get("notes", [])
        + ([] if len(splits) == 3 else ["no complete validation or test split: not evaluated there"]),
    }
    head = est.steps[-1][1]
    if hasattr(head, "history_"):
        record["history"] = head.history_
    return write_run(runs_root(fs.path, runs), record, est, probas)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"featstore": __version__}
    for dist in ("numpy", "scikit-learn", "h5py", "keras", "tensorflow", "skops"):
        try:
            out[dist] = version(dist)  # read from metadata: importing keras here would cost seconds
        except PackageNotFoundError:  # pragma: no cover
            out[dist] = None
    return out


def scan_runs_of(store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None) -> RunListing:
    """Every run folder of a store: usable records (oldest first) and broken folders with the reason each cannot be used."""
    return scan_runs(runs_root(store, runs))


def list_runs(store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None) -> list[dict]:
    """Every usable recorded run of a store, oldest first (broken run folders are logged as warnings and left out)."""
    listing = scan_runs_of(store, runs)
    for name, reason in listing.broken:
        logger.warning("run folder %s is broken and not listed: %s", name, reason)
    return listing.records


def get_run(
    run_id: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> tuple[dict, Path]:
    """A run's record and folder, by id or unique id prefix; a broken run folder raises the reason."""
    return find_run(run_id, runs_root(store, runs))


def ensemble(
    run_ids: list[str],
    weights: list[float] | None = None,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
) -> dict:
    """Average the members' predicted probabilities (optionally weighted) and record it as a run.

    Members may come from different classifiers and different extractors of the same images. Example::

        ensemble(["logreg-1a2b3c", "svm-4d5e6f"], weights=[1, 2])
    """
    if len(run_ids) < 2:
        raise ConfigError("an ensemble needs at least two run ids")
    weights = [1.0] * len(run_ids) if weights is None else [float(w) for w in weights]
    if (
        len(weights) != len(run_ids)
        or not all(math.isfinite(w) and w >= 0 for w in weights)
        or not 0 < sum(weights) < math.inf
    ):
        raise ConfigError(
            f"give one non-negative weight per member ({len(run_ids)}), finite and not all zero; got {weights}"
        )
    root = runs_root(store, runs)
    listing = scan_runs(root)
    members = [find_run(r, root, listing=listing) for r in run_ids]
    ensure_writable(root)
    nested = [rec["id"] for rec, _ in members if rec["kind"] == "ensemble"]
    if nested:
        raise ConfigError(
            f"{', '.join(nested)} are ensembles; build an ensemble from fitted runs (list their members instead)"
        )
    first = members[0][0]
    for rec, _ in members[1:]:
        if rec["class_names"] != first["class_names"]:
            raise ConfigError(
                f"runs {first['id']} and {rec['id']} have different classes: {first['class_names']} vs {rec['class_names']}"
            )
    preds = [load_predictions(folder, rec) for rec, folder in members]  # each checked against its recorded sha256
    evaluated, probas = {}, {}
    for split, info in first["predictions"].items():
        if not all(split in rec["predictions"] for rec, _ in members):
            continue
        for rec, _ in members:
            if rec["predictions"][split]["paths_sha256"] != info["paths_sha256"]:
                raise ConfigError(
                    f"runs {first['id']} and {rec['id']} were evaluated on different images of {split!r}; ensembles need the same images"
                )
        avg = sum(w * p[f"{split}__proba"] for w, p in zip(weights, preds)) / sum(weights)
        y = preds[0][f"{split}__labels"]
        evaluated[split] = metrics(y, avg.argmax(axis=1), first["class_names"])
        probas[split] = (avg, y, info["paths_sha256"])
    if not evaluated:
        raise ConfigError("the members share no evaluated split (validation or test); nothing to ensemble")
    # one extractor name per distinct (name, fingerprint) of the members, in member order: both fields list the same extractors
    extractors = list(dict.fromkeys((rec["extractor"], rec["fingerprint"]) for rec, _ in members))
    record = {
        "id": f"ensemble-{secrets.token_hex(3)}",
        "kind": "ensemble",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store": first["store"],
        "members": [rec["id"] for rec, _ in members],
        "weights": weights,
        "extractor": "+".join(n for n, _ in extractors),
        "fingerprint": "+".join(f for _, f in extractors),
        "class_names": first["class_names"],
        "clf": "ensemble",
        "params": {"weights": weights},
        "metrics": evaluated,
        "fit_seconds": 0.0,
        "versions": _versions(),
        "notes": [],
    }
    return write_run(root, record, None, probas)


def apply_run(run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None):
    """``(record, folder, labels, predictions, probabilities)`` of a fitted run applied to a split of the store.

    Refused when the store's features are not the ones the run was fitted on (fingerprint, classes).
    """
    from featstore.runs.artifacts import load_estimator

    rec, folder = get_run(run_id, store, runs)
    if rec["kind"] == "ensemble":
        raise ConfigError(
            f"{run_id} is an ensemble; evaluate its members, or use its recorded metrics (`featstore runs show`)"
        )
    fs = FeatureStore(store)
    if rec["extractor"] not in fs.extractors():
        raise StoreError(f"store {store} has no extractor {rec['extractor']!r} that run {rec['id']} was fitted on")
    have = fs.metadata(rec["extractor"])
    provenance.refuse_other_features(have, rec["extractor_attrs"], f"run {rec['id']}", "Re-fit on this store.")
    if fs.class_names(rec["extractor"]) != rec["class_names"]:
        raise StoreError(
            f"store classes {fs.class_names(rec['extractor'])} are not the run's {rec['class_names']}; refusing to evaluate"
        )
    if rec["kind"] == "finetune":  # its backbone changed: the store's rows name the images, the model sees the images
        from featstore.experiments.finetune import apply_finetuned

        return (rec, folder, *apply_finetuned(rec, folder, fs, split))
    est = load_estimator(folder, rec["artifact"])
    X, y = fs.load(split, rec["extractor"])
    return (rec, folder, y, *checked_predict(est, X, len(rec["class_names"]), rec["id"]))


def evaluate_run(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> dict:
    """Apply a fitted run to a split of the store; refused when the store's fingerprint is not the run's."""
    rec, _, y, pred, _ = apply_run(run_id, split, store, runs)
    return metrics(y, pred, rec["class_names"])


def record_split(
    run_id: str, split: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> dict:
    """Evaluate a fitted run on one more split and add it to the run's record and stored predictions; returns the record.

    Used to evaluate the test split once, after a choice made on validation (``featstore sweep``).
    """
    from featstore.runs.write import add_split

    rec, folder, y, pred, proba = apply_run(run_id, split, store, runs)
    if split in rec["metrics"]:
        return rec
    paths = _digest_paths(FeatureStore(store).paths(split, rec["extractor"]))
    return add_split(
        runs_root(store, runs), rec, folder, split, metrics(y, pred, rec["class_names"]), (proba, y, paths)
    )


def show_run(
    run_id: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> tuple[dict, list[Path]]:
    """A run's record, after writing its PNGs into its folder: a confusion matrix per split, curves for the dense head."""
    from featstore.plots import confusion_png, curves_png

    rec, folder = get_run(run_id, store, runs)
    # split names and the id were checked when the folder was read; output_path also refuses links and paths leaving the folder,
    # and replace_file writes a new file and renames it into place (never through a hard link, a folder in the way is an error)
    pngs = [
        replace_file(
            output_path(folder, f"confusion_{split}.png"),
            lambda tmp, split=split, m=m: confusion_png(
                m["confusion_matrix"], rec["class_names"], f"{rec['id']} on {split} (acc {m['accuracy']:.3f})", tmp
            ),
        )
        for split, m in rec["metrics"].items()
    ]
    if rec["kind"] == "finetune" and rec.get(
        "phase_a_history"
    ):  # a fine-tuning: phase A (the dense run) then phase B on one figure
        title = f"{rec['from_run']} (phase A) -> {rec['id']} (phase B, from {rec['unfreeze_from']})"
        pngs.append(
            replace_file(
                output_path(folder, "curves.png"),
                lambda tmp: curves_png(rec["phase_a_history"], title, tmp, then=rec.get("history", {})),
            )
        )
    elif rec.get("history"):
        pngs.append(
            replace_file(output_path(folder, "curves.png"), lambda tmp: curves_png(rec["history"], rec["id"], tmp))
        )
    return rec, pngs


def compare_runs(
    run_ids: list[str] | None = None,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
) -> Path:
    """Bar chart of validation and test accuracy of the given runs (default: all); returns the PNG path."""
    from featstore.plots import compare_png

    recs = [get_run(r, store, runs)[0] for r in run_ids] if run_ids else list_runs(store, runs)
    if not recs:
        raise ConfigError("no runs to compare; fit some with `featstore fit`")
    out = Path(out) if out else output_path(runs_root(store, runs), "compare.png")
    scores = {s: [r["metrics"].get(s, {}).get("accuracy") for r in recs] for s in ("validation", "test")}
    return replace_file(out, lambda tmp: compare_png([r["id"] for r in recs], scores, tmp))
