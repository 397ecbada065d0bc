"""``featstore fewshot``: test accuracy against the number of training images per class (the few-shot curve).

For each trial (seeded by ``(seed, trial)``), every class's train rows are shuffled once and the first k of each
class are taken for every k in ``shots``: the draws are stratified (exactly k per class) and nested (a trial's
5-shot set holds its 2-shot set), so a curve's steps show the images added, not a new draw. The classifier is
fitted with its default parameters (or those given, one value each: nothing is chosen here) and scored on the whole
test split, read once. Per k: mean ± sd over the distinct draws and the 95 % interval of the mean (Student t over
them, never narrower than the Wilson interval of the mean on the test rows, whose own sampling no number of draws
removes; draws that tie are said to). A draw that an earlier trial made already (k is every image of each class, or few images and many trials) is
fitted once and counted once (attack 63 #3: five "trials" of one fit were ``0.800 ± 0.000 [0.800, 0.800]``): a k with
one distinct draw is one fit, with no sd and no interval. Nothing is recorded as a run: the summary
``fewshot-<id>.json`` and its chart go into the runs folder.

>>> s = fewshot("features.h5", "logreg", shots=(1, 5, 20), trials=5)    # doctest: +SKIP
>>> [(p["shots"], round(p["mean"], 2)) for p in s["points"]]              # doctest: +SKIP
[(1, 0.41), (5, 0.62), (20, 0.77)]
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, OutputError, StoreError, check_names, check_paths, check_seed
from featstore.experiments.compare import check_chart_name
from featstore.experiments.protocol import DEFAULTS, NONE, check_distinct, check_has_rows, no_split
from featstore.experiments.training_rows import refuse_training_rows
from featstore.outputs import write_atomic, write_text
from featstore.runs import made
from featstore.runs.folder import ensure_writable, runs_root
from featstore.stats import mean_sd, proportion_interval
from featstore.store.names import names_text
from featstore.store.reader import FeatureStore

BY = "the rows each few-shot fit draws its shots from"  # the rows rule's words: fewshot records no run

logger = logging.getLogger(__name__)

SHOTS = (1, 2, 5, 10, 20)


def sample_shots(y: np.ndarray, shots: list[int], n_classes: int, seed: int, trial: int) -> dict[int, np.ndarray]:
    """Row indices of k images per class for each k (nested, seeded by ``(seed, trial)``), in row order.

    >>> y = np.repeat(np.arange(3), 4)
    >>> s = sample_shots(y, [1, 2], 3, seed=0, trial=0)
    >>> [len(s[k]) for k in (1, 2)], set(s[1]) <= set(s[2])
    ([3, 6], True)
    """
    rng = np.random.default_rng([seed, trial])
    order = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    return {k: np.sort(np.concatenate([o[:k] for o in order])) for k in shots}


def mean_interval(values: list[float], level: float = 0.95, over: str = "trials", test_rows: int = 0) -> dict | None:
    """The mean over trials (``over`` names them) with its Student-t interval (clipped to [0, 1]); None for fewer
    than two values. ``test_rows``: the test rows every trial is scored on; the interval is then never narrower than
    the Wilson interval of the mean on them, the test rows' own sampling, which no number of draws removes (five tied
    draws gave "1.000 ± 0.000 [1.000, 1.000]": attack 67 #10).

    >>> ci = mean_interval([0.5, 0.6, 0.7]); round(ci["low"], 3), round(ci["high"], 3)
    (0.352, 0.848)
    >>> ci = mean_interval([1.0, 1.0, 1.0], test_rows=18); round(ci["low"], 3), ci["high"], "tied" in ci["method"]
    (0.824, 1.0, True)
    """
    if len(values) < 2:
        return None
    from scipy.stats import t

    m, sd = mean_sd(values)
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    low, high, method = max(0.0, m - half), min(1.0, m + half), f"Student t over {len(values)} {over}"
    if test_rows > 0:
        w = proportion_interval(round(m * test_rows), test_rows, level)
        if w.low < low or w.high > high:
            tied = f"the {len(values)} draws tied: no spread seen; " if sd == 0 else ""
            method += (
                f", widened to the Wilson interval of the mean on the {test_rows} test rows ({tied}their own sampling)"
            )
            low, high = min(low, w.low), max(high, w.high)
    return {"estimate": m, "low": low, "high": high, "level": level, "method": method}


MAX_TRIALS = 10_000  # far beyond what an interval needs; a 20-digit count would run until killed


def _check_shots(shots, trials: int, y: np.ndarray, class_names: list[str], train: str) -> list[int]:
    """Sorted distinct shots, each at most the smallest class's images (refused otherwise, naming the class)."""
    if trials < 1 or trials > MAX_TRIALS:
        raise ConfigError(f"--trials must be from 1 to {MAX_TRIALS:,}, got {trials}")
    shots = sorted({int(k) for k in shots})
    if not shots or shots[0] < 1:
        raise ConfigError(f"--shots are images per class, each at least 1; got {list(shots)}")
    counts = np.bincount(y, minlength=len(class_names))
    least = int(counts.min())
    if shots[-1] > least:
        over = [k for k in shots if k > least]
        small = [repr(class_names[c]) for c in np.flatnonzero(counts == least)]
        which = (
            f"class {small[0]} (its smallest class)"
            if len(small) == 1
            else f"each of classes {', '.join(small[:3])}" + (f" and {len(small) - 3} more" if len(small) > 3 else "")
        )
        raise ConfigError(
            f"--shots {','.join(map(str, over))}: {train!r} holds only {least} images of {which}, so at most "
            f"{least} per class can be drawn; drop the larger shots or extract more training images"
        )
    return shots


def _check_classes(name: str, y: np.ndarray, train: str, class_names: list[str]) -> None:
    """As ``fit``'s ``check_classes``, naming the extractor: one class in train was "holds only 0 images of class 'b'
    ... drop the larger shots", or, for a store of one class, scikit-learn's error blamed on the rows (attack 58 #5)."""
    from featstore.experiments.selection import check_classes

    try:
        check_classes(y, train, class_names)
    except StoreError as exc:
        raise StoreError(f"extractor {name!r}: {exc}") from None


def _single_values(clf: str, params: dict | None) -> dict:
    """``{"C": [10.0]}`` -> ``{"C": 10.0}``; several values of one name are refused (a few-shot curve chooses nothing)."""
    out = {}
    for key, values in (params or {}).items():
        values = values if isinstance(values, (list, tuple)) else [values]
        if len(values) != 1:
            raise ConfigError(
                f"--param {key} is given {len(values)} values; a few-shot curve fits one setting of {clf}. Choose it "
                f"first (`featstore fit --clf {clf} --param {key}=...` on validation), then give that one value"
            )
        out[key] = values[0]
    return out


def _validation_split(fs: FeatureStore, name: str, clf: str, validation: str) -> tuple[str | None, str]:
    """``(split, "")`` a classifier that early-stops stops on, or ``(None, why none)``: ``none``, or no split of the
    default name (it then stops on its training loss); a split named on purpose that is missing, not complete or empty
    is refused, naming --validation and the fix."""
    if no_split(validation):
        return None, f"--validation {NONE}"
    present = fs.splits(name)
    if validation not in present and validation == DEFAULTS["validation"]:
        return None, f"the store has no {validation!r} split"
    if validation not in present or not fs.split_info(validation, name)["complete"]:
        raise StoreError(
            f"--validation {validation!r}: extractor {name!r} has no complete {validation!r} split (it has: "
            f"{names_text(present)}); extract it, name another with --validation, or give --validation {NONE} "
            f"({clf} then early-stops on its training loss)"
        )
    check_has_rows(fs, name, validation, "--validation")
    return validation, ""


def _accuracy(clf: str, params: dict, X, y, val, Xt, yt) -> float:
    """Fit one setting on ``X, y`` and score it on ``Xt, yt``; a head that early-stops on validation (the Keras head)
    gets the validation split."""
    from featstore.experiments.classifiers import build_classifier
    from featstore.experiments.selection import refuse_diverged

    est = build_classifier(clf, params)
    head = est.steps[-1][1]
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # rows over LARGE_FEATURE were refused before the draws
            if getattr(head, "fit_uses_validation", False) and val is not None:
                Xf = est[:-1].fit_transform(X, y)
                head.fit(Xf, y, validation_data=(est[:-1].transform(val[0]), val[1]))
            else:
                est.fit(X, y)
            refuse_diverged(est, X, clf, params)  # a diverged fit scored chance accuracy without a word
            return float(np.mean(est.predict(Xt) == yt))
    except ConfigError:
        raise  # said whole already (a ValueError too)
    except ValueError as exc:  # e.g. more neighbours than rows, more calibration folds than images per class
        raise ConfigError(
            f"{clf} with {params or 'its defaults'} cannot be fitted on {len(y)} rows or predict with them ({exc}); give it parameters "
            f"that fit a few rows (e.g. knn --param n_neighbors=1, svm --param calibration_folds=0) or larger --shots"
        ) from exc


def fewshot(
    store: str | os.PathLike = "features.h5",
    clf: str = "logreg",
    params: dict | None = None,
    *,
    shots: tuple[int, ...] | list[int] = SHOTS,
    trials: int = 5,
    extractor: str | None = None,
    seed: int = 0,
    train: str = "train",
    validation: str = "validation",
    test: str = "test",
    runs: str | os.PathLike | None = None,
    png: str | os.PathLike | None = None,
) -> dict:
    """Fit ``clf`` on k images per class drawn from train, ``trials`` times per k; test accuracy mean ± sd per k.

    ``params``: the classifier's parameters, one value each (``{"C": 10.0}`` or ``{"C": [10.0]}``). ``validation``:
    the split a classifier that early-stops (``dense``) stops on, all its rows, as ``fit`` does; ``"none"``: none (it
    stops on its training loss), as when the store has no split of the default name. Other classifiers read no
    validation split. Example::

        s = fewshot("features.h5", "logreg", shots=[1, 2, 5, 10, 20], trials=5)
        for p in s["points"]:
            print(p["shots"], p["mean"], p["sd"], p["mean_ci"])
    """
    from featstore.experiments.classifiers import get_classifier
    from featstore.models.reshape import check_reduce

    check_names("extractor", extractor=extractor)
    check_names("split", train=train, validation=validation, test=test)
    check_paths(store=store, runs=runs, png=png)
    given = _single_values(clf, params)
    spec = get_classifier(clf)
    full = spec.full_params(given)
    if png is not None:
        check_chart_name(png, "--png", store)  # a chart that cannot be written is refused before any fit
    check_distinct(train, None, test)  # k images drawn from test and scored on test: an optimistic curve
    early = bool(getattr(spec.builder(full).steps[-1][1], "fit_uses_validation", False))
    if early and not no_split(validation):
        if validation in (train, test):  # early stopping on test chose on test (attack 53 #5: named no real option)
            raise ConfigError(
                f"--validation {validation!r} is also --{'train' if validation == train else 'test'}: {clf} early-stops "
                f"on --validation, which must be another split; name one with --validation, or give --validation "
                f"{NONE} to stop on the training loss"
            )
        check_distinct(train, validation, test)
    fs = FeatureStore(store)
    name = fs.resolve(extractor)
    for split in (train, test):
        if split not in fs.splits(name) or not fs.split_info(split, name)["complete"]:
            raise StoreError(
                f"extractor {name!r} has no complete {split!r} split (it has: {names_text(fs.splits(name))}); extract "
                f"it, or name another with --train/--test"
            )
        check_has_rows(fs, name, split, "--train" if split == train else "--test")
    row = tuple(fs.split_info(train, name)["shape"][1:])  # avg on vectors: a flatten recorded as avg (attack 58 #3)
    check_reduce(full.get("reduce", "flatten"), row, f"extractor {name!r}'s features", attrs=fs.metadata(name))
    class_names = fs.class_names(name)
    y = fs.labels(train, name)
    _check_classes(name, y, train, class_names)
    shots = _check_shots(shots, trials, y, class_names, train)
    check_seed(seed)  # a negative seed reached numpy's SeedSequence as a traceback
    val_split, why = _validation_split(fs, name, clf, validation) if early else (None, "")
    fix = "pass a --test split without them"
    shared = refuse_training_rows(  # test on the rows its epoch is chosen on reports that choice too (attack 78 #2)
        fs,
        [name],
        train,
        test,
        "fewshot",
        "score",
        fix,
        fitted_by=BY,
        chosen_on=val_split,
        chosen_fix=f"{fix}, or --validation {NONE}",
    )
    root = runs_root(store, runs)
    ensure_writable(root, store)
    with made.removed_on_failure(root):  # a failed fit leaves no runs folder it made (attack 53 #3)
        started = time.perf_counter()
        X, y = fs.load(train, name)
        notes = [] if val_split is not None or not early else [f"{clf} early-stops on its training loss ({why})"]
        notes += shared  # a few of test's rows are training rows (74 #5), or they were not compared (76 #2)
        val = None
        if val_split is not None:
            val = fs.load(val_split, name)
            notes.append(
                f"{clf} early-stops on all {len(val[1])} rows of {val_split!r}: more labelled images than k per class"
            )
        Xt, yt = fs.load(test, name)  # read once; nothing is chosen on it
        for split, arrays in ((train, (X, y)), (val_split, val), (test, (Xt, yt))):
            if arrays is not None:
                fs.refuse_nonfinite(split, name, arrays[0], train=train)
        accs: dict[int, list[float]] = {k: [] for k in shots}
        draws: dict[int, dict[bytes, float]] = {k: {} for k in shots}  # k -> distinct draw -> its accuracy
        for trial in range(trials):
            for k, idx in sample_shots(y, shots, len(class_names), seed, trial).items():
                if idx.tobytes() not in draws[k]:  # a repeated draw is the same fit: fitted and counted once
                    draws[k][idx.tobytes()] = _accuracy(clf, full, X[idx], y[idx], val, Xt, yt)
                accs[k].append(draws[k][idx.tobytes()])
        points = [_point(k, len(class_names), accs[k], list(draws[k].values()), trials, len(yt)) for k in shots]
        counts = np.bincount(y, minlength=len(class_names))
        notes += _draw_notes(points, counts, class_names, trials)
        top = points[-1]
        w = proportion_interval(round(top["mean"] * len(yt)), len(yt))
        notes.append(
            f"the {len(yt)} test rows are the same in every trial: "
            + (
                "each interval covers the draw of the training images and is never narrower than the Wilson "
                "interval of its mean on those rows (their own sampling error); "
                if any(p["mean_ci"] for p in points)
                else ""
            )
            + f"the Wilson interval of {top['mean']:.3f} on {len(yt)} rows is [{w.low:.3f}, {w.high:.3f}]"
        )
        if trials == 1:
            notes.append(_one_trial(shots, counts, class_names))
        summary = {
            "id": f"fewshot-{secrets.token_hex(3)}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "store": str(Path(store).resolve()),
            "extractor": name,
            "clf": clf,
            "params": given,
            "full_params": full,
            "trials": trials,
            "seed": seed,
            "sampling": "stratified, nested across k, seeded by (seed, trial)",
            "splits": {"train": train, "validation": val_split, "test": test},
            "train_rows": len(y),
            "test_rows": len(yt),
            "points": points,
            "notes": notes,
            "seconds": round(time.perf_counter() - started, 2),
        }
        from featstore.experiments.protocol_plots import fewshot_png

        out = Path(png) if png else root / f"{summary['id']}.png"
        summary["png"], summary["json"] = str(out), str(root / f"{summary['id']}.json")
        try:  # a full disk here loses no computed figure: the summary says what was not saved (the CLI prints both)
            write_text(summary["json"], json.dumps(summary, indent=1, default=_plain), "fewshot summary")
            write_atomic(out, lambda tmp: fewshot_png(summary, tmp), "--png")
        except OutputError as exc:
            summary["not_saved"] = str(exc)
            made.remove_made(root)  # nothing was saved in the runs folder made for it
    return summary


def _point(
    k: int, n_classes: int, per_trial: list[float], distinct: list[float], trials: int, test_rows: int = 0
) -> dict:
    """A k's figures over its distinct draws (``draws``): mean, sd and interval (never narrower than the Wilson
    interval of the mean on the ``test_rows``); one draw: the one fit's accuracy, ``sd`` and ``mean_ci`` None.
    ``trials`` keeps every trial's accuracy (a repeated draw repeats its value)."""
    m, sd = mean_sd(distinct)
    over = "trials" if len(distinct) == trials else f"distinct draws (of {trials} trials)"
    return {
        "shots": k,
        "rows": k * n_classes,
        "trials": per_trial,
        "draws": len(distinct),
        "mean": m,
        "sd": sd if len(distinct) > 1 else None,
        "mean_ci": mean_interval(distinct, over=over, test_rows=test_rows),
    }


def _draw_notes(points: list[dict], counts: np.ndarray, class_names: list[str], trials: int) -> list[str]:
    """What the trials of each k really drew: one fit (every training image), repeated draws, whole classes."""
    notes = []
    for p in points:
        k, n = p["shots"], p["draws"]
        if n == 1 and (counts == k).all():  # said at one trial too: more trials would not change it (attack 65 #7)
            notes.append(
                f"k = {k} is every training image: one fit, no trial-to-trial spread whatever the trials (no sd, "
                f"no interval)"
            )
        elif trials == 1:
            continue
        elif n == 1:
            notes.append(f"k = {k}: every trial drew the same images: one fit, no trial-to-trial spread")
        elif n < trials:
            notes.append(
                f"k = {k}: {n} distinct draws in {trials} trials (the others repeated one, fitted once): mean, sd "
                f"and interval over the {n}"
            )
        if n > 1 and p["sd"] == 0:
            possible = math.prod(math.comb(int(c), k) for c in counts)
            of = f"{possible:,}" if possible < 10**12 else "over 10^12"
            notes.append(
                f"k = {k}: the {n} draws tied at {p['mean']:.3f} (no spread seen in {n} of {of} possible draws): its "
                f"interval is the Wilson interval of the test rows, not a certainty"
            )
        whole = [repr(class_names[c]) for c in np.flatnonzero(counts == k)]
        if n > 1 and whole:
            more = f" and {len(whole) - 3} more" if len(whole) > 3 else ""
            notes.append(
                f"k = {k} takes every training image of {', '.join(whole[:3])}{more} in every trial: only the other "
                f"classes' images vary between draws"
            )
    return notes


def _one_trial(shots: list[int], counts: np.ndarray, class_names: list[str]) -> str:
    """The note of ``--trials 1``: more trials give an sd and an interval only for a k whose draws can differ (a
    class with more than k training images); where every k takes every image, they fit the same images again
    (attack 65 #7: "give --trials 5 or more" was advised at k = every training image)."""
    varying = [k for k in shots if (counts > k).any()]
    if len(varying) == len(shots):
        return "one trial: no sd and no interval; give --trials 5 or more"
    if varying:
        return (
            f"one trial: no sd and no interval; give --trials 5 or more (for k = {', '.join(map(str, varying))}; "
            f"the other k take every training image: one fit whatever the trials)"
        )
    c = int(np.argmin(counts))
    return (
        f"one trial: no sd and no interval, and more trials would fit the same images again (every k takes every "
        f"training image); a spread over draws needs fewer shots than the smallest class ({int(counts[c])} images of "
        f"{class_names[c]!r}), e.g. --shots {max(1, int(counts[c]) // 2)} --trials 5"
    )


def _plain(value):
    """JSON for numpy scalars in parameters."""
    return value.item() if hasattr(value, "item") else str(value)
