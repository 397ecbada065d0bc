"""``featstore sweep``: every extractor x classifier, chosen strictly on validation, test read once for the choice.

Every fit is recorded as a run (fitted on train, scored on validation; test's rows are only checked, before any fit,
as fit checks them). Without a validation split (in every extractor, or ``--validation none``) each run is scored by
cross-validation on train: its out-of-fold predictions (copies of one image in one fold), its ``train.oof`` split.
The winner is the best accuracy on that split; with ``ensemble=True`` a greedy ensemble selection (Caruana et al.
2004, on the runs' calibrated probabilities: start from the best single run, repeatedly add, with replacement, the
run that lowers the log-loss of the average most; stop when nothing lowers it) competes too and is recorded as an
ensemble run, or the summary says why none was built. Only then is the test split evaluated: for the winner (and,
when an ensemble was built, its members and the best single run, so that the two can be compared on test), or for
every run with ``show_test=True``. The ensemble is compared with the best single run on the same rows (exact
McNemar test and Tango's paired score interval): the summary says when its gain is within noise. A summary
(``sweep-<id>.json``) and a heat map (``sweep-<id>.png``) go into the runs folder. A cell recorded as the very fit it
would make is reused (:mod:`featstore.experiments.sweep_reuse`): a re-run after Ctrl-C goes on where it stopped.

>>> result = sweep("features.h5", ["logreg", "svm"], ensemble=True)   # doctest: +SKIP
>>> result["winner"]["id"], result["winner"]["test"]                  # doctest: +SKIP
('ensemble-1a2b3c', 0.91)
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from featstore.errors import ConfigError, StoreError, check_jobs, check_names, check_paths
from featstore.experiments.compare import check_chart_name
from featstore.experiments.ensemble import averaged_blocks, greedy_ensemble, greedy_log_loss  # noqa: F401 - greedy_ensemble re-exported
from featstore.experiments.ensemble import ensemble as record_ensemble
from featstore.experiments.fit import OOF, fit, refuse_reduce
from featstore.experiments.protocol import DEFAULTS, NONE, check_distinct, check_has_rows, no_split
from featstore.experiments.selection import DivergedError
from featstore.experiments.sweep_reuse import evaluated_once, recorded_cells, untested
from featstore.experiments.sweep_summary import summary_of, tie_note, versus_best
from featstore.experiments.training_rows import (
    CHOSEN,
    joint_head,
    recorded,
    refuse_training_rows,
    unknown,
    verdict,
)
from featstore.runs.fittedrows import not_compared, optimistic_by
from featstore.runs.folder import calibrated_predictions, runs_root
from featstore.runs.record import RunRecord, digest_paths
from featstore.store.nonfinite import refuse_in_every
from featstore.store.reader import FeatureStore
from featstore.store.resume import resume_advice
from featstore.store.strings import repeated

logger = logging.getLogger(__name__)

FITTED = "which every run is fitted on"  # a sweep's train split, in its test notes


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
    validation: str | None = "validation",
    test: str | None = "test",
    runs: str | os.PathLike | None = None,
    png: str | os.PathLike | None = None,
    augmented: bool = False,
    reuse: bool = True,
) -> dict:
    """Fit each classifier on each extractor, choose on validation (or by cross-validation on train), evaluate test
    once for the choice; returns the summary. ``params`` maps a classifier name to its parameter lists, as ``fit``
    takes them (several values: the best on validation is kept, per extractor). Example::

        sweep("features.h5", ["logreg", "svm", "dense"], ensemble=True, jobs=2)
        sweep("features.h5", ["svm"], params={"svm": {"kernel": ["rbf"], "power": [0.5], "l2": [True], "pca": [256]}})

    ``augmented=True`` fits every run on train plus its cached augmented copies (``featstore fit --augmented``);
    ``reuse=False`` every cell, even one recorded as the very fit it would make (the summary's ``reused``).
    """
    from featstore.experiments.classifiers import get_classifier

    check_names("extractor", extractors=extractors)
    check_paths(store=store, runs=runs, png=png)
    for what, items in (("clfs", clfs), ("extractors", extractors or [])):
        if twice := repeated(list(items)):  # each cell was fitted and recorded twice (attack 24)
            raise ConfigError(f"sweep's {what} lists {twice[0]!r} twice; give each once")
    clfs = list(clfs)
    if not clfs:
        raise ConfigError("give at least one classifier, e.g. --clf logreg,svm")
    params = params or {}
    for c in clfs:
        get_classifier(c).check_values(params.get(c, {}), search)  # unknown names and bad values fail before any work
    if set(params) - set(clfs):
        raise ConfigError(
            f"parameters given for {', '.join(sorted(set(params) - set(clfs)))}, which is not swept; swept: {', '.join(clfs)}"
        )
    check_jobs(jobs)  # a 20-digit count made a thread pool of that many threads
    check_distinct(train, validation, test)
    if png is not None:
        check_chart_name(png, "--png", store)  # a heat map that cannot be written is refused before any fit
    fs = FeatureStore(store)
    names, val = _extractors(fs, extractors, train, validation)
    for n, c in ((n, c) for n in names for c in clfs):  # every cell's reduce before any fit (attack 60 #8)
        refuse_reduce(fs, n, c, params.get(c), search, train, f"--param {c}:reduce=flatten, or leave {n} out")
    score = val or f"{train}{OOF}"
    tst, no_test = _test_split(fs, names, test)
    if ensemble:
        _refuse_other_rows(fs, names, val or train, train)  # before any fit is recorded
    cells = [(n, c) for n in names for c in clfs]
    later = "a sweep evaluates test after its choice, for the chosen runs only (every run with --show-test)"
    later = later if tst else no_test
    started = time.perf_counter()
    args = (cells, params, search, train, val, tst, augmented)  # a cell recorded as this very fit is not fitted again
    reused = recorded_cells(fs, runs_root(store, runs), *args) if reuse else {}
    fitted = [n for n in names if any((n, c) not in reused for c in clfs)]  # fit's rule, test too, before any fit
    withheld, test_note = _test_on_training_rows(fs, fitted, train, tst, val)  # before any fit, as fit's rule (74 #2)
    val_note = _refuse_training_rows(fs, names, fitted, train, val, reused) if val else ""  # before any fit (71 #7)
    refuse_in_every(fs, fitted, (train, val, tst), "sweep", train if augmented else None, names)

    def one(cell):
        n, c = cell
        if cell in reused:
            return reused[cell]
        try:
            return fit(
                store,
                c,
                params.get(c),
                extractor=n,
                search=search,
                train=train,
                validation=val or NONE,
                test=NONE if no_split(test) else test,
                test_later=later,
                runs=runs,
                augmented=augmented,
            )
        except DivergedError as exc:  # one line, and the other fits go on (it was numpy's raw warning, then the end)
            logger.warning("sweep: %s on %s left out: %s", c, n, exc)
            return str(exc)

    if jobs > 1 and len(cells) > 1:
        done = in_threads(one, cells, jobs)
    else:
        done = [one(cell) for cell in cells]
    diverged = {cell: why for cell, why in zip(cells, done) if isinstance(why, str)}
    recs = [r for r in done if not isinstance(r, str)]
    if not recs:
        raise DivergedError(f"every fit of the sweep diverged; the first: {next(iter(diverged.values()))}")
    scores = np.array([r.accuracy(score) for r in recs])
    best = int(np.argmax(scores))  # the first of tied cells, named (attack 67 #4)
    if tie := tie_note(recs, scores, score)[1]:
        logger.warning("sweep: %s", tie)
    winner = {
        "id": recs[best].id,
        "kind": recs[best].kind,
        "extractor": recs[best].extractor,
        "clf": recs[best].clf,
        "validation": float(scores[best]),
    }
    if val_note:  # a few of validation's rows are training rows, or they were not compared (attack 76 #2)
        winner["validation_note"] = val_note
    chosen, note, ensemble_wins = [], "", False
    if ensemble:
        chosen, note, ens_score = _select(recs, store, runs, score)
        ensemble_wins = ens_score is not None and ens_score > winner["validation"]
        if ensemble_wins:
            winner = {
                "id": None,
                "kind": "ensemble",
                "validation": ens_score,
                "clf": "ensemble",
                "extractor": "+".join(dict.fromkeys(r.extractor for r in recs if r.id in dict(chosen))),
            }
    to_test = (
        set()
        if not tst
        else {recs[best].id} | {rid for rid, _ in chosen} | ({r.id for r in recs} if show_test else set())
    )
    later = sorted({r.extractor for r in recs if r.id in to_test and r.extractor not in fitted})
    if later and not withheld:  # a reused run's test, read now or held already: compared too (attack 77 #4)
        withheld, later_note = _test_on_training_rows(fs, later, train, tst, val)  # not `note`: the ensemble's
        test_note = "; ".join(x for x in (test_note, later_note) if x)  # both said: the winner may be either's (78 #4)
    if withheld or test_note:  # attack 74 #2: said, in the summary too
        logger.warning("sweep: %s", f"the test figure is withheld: {withheld}" if withheld else test_note)
        winner["test_withheld" if withheld else "test_note"] = withheld or test_note
        tst, to_test = (None, set()) if withheld else (tst, to_test)

    unchecked = {r.extractor for r in recs if r.id in to_test and r.extractor not in fitted and tst not in r.metrics}
    refuse_in_every(fs, sorted(unchecked), (tst,), "sweep", among=names, train=train)  # a reused run's test (69 #1)
    tested = {}
    for rid in sorted(to_test):  # test is read here, after the choice, once per run
        tested[rid], said = evaluated_once(rid, tst, store, runs, reused)
        if said.startswith("not recorded"):  # e.g. a full disk: say so rather than show no test figure
            raise StoreError(untested(rid, tst, said, reused))
    ens, vs = None, {}
    if len(chosen) > 1:
        ens = record_ensemble([rid for rid, _ in chosen], [float(k) for _, k in chosen], store, runs, score)
        tested[ens.id] = ens
        vs = versus_best(ens, recs[best], store, runs, score)
        if ensemble_wins:
            winner["id"] = ens.id
    shown = {winner["id"]} | ({r.id for r in recs} if show_test else set())  # what the table shows test for
    test_of = {rid: tested[rid] for rid in shown if rid in tested}
    secs, kept = time.perf_counter() - started, {r.id for r in reused.values()}
    return summary_of(
        store, runs, png, clfs, names, recs, winner, ens, vs, note, test_of, tst, score, search, secs, diverged, kept
    )


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a parallel sweep: its workers were stopped (no run is recorded after this is raised);
    ``running``: how many had not reached a checkpoint within :data:`STOP_WAIT_S` (fitting in C code)."""

    def __init__(self, running: int):
        super().__init__(running)
        self.running = running


STOP_WAIT_S = 5.0  # how long Ctrl-C waits for the workers to reach a checkpoint


def in_threads(one, cells: list, jobs: int) -> list:
    """``[one(cell) for cell in cells]``, ``jobs`` cells at a time in threads. On Ctrl-C the workers are stopped
    (:mod:`featstore.runs.stopping`: no run is recorded after this returns, pending cells are not started) and waited
    for up to :data:`STOP_WAIT_S`; then :class:`SweepInterrupted`. (joblib's daemon threads went on recording after
    the interrupt's line, and the interpreter hung or aborted finalising under them: attack 54 #1.)"""
    from concurrent.futures import ThreadPoolExecutor, wait

    from featstore.runs.stopping import Stop

    stop, pool = Stop(), ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="featstore-sweep")
    futures = []
    try:
        futures += [pool.submit(stop.run, one, cell) for cell in cells]
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        stop.stop()  # first: a rename in progress ends, no later one starts
        pool.shutdown(wait=False, cancel_futures=True)
        try:
            left = wait(futures, timeout=STOP_WAIT_S).not_done
        except KeyboardInterrupt:  # Ctrl-C again: stop waiting
            left = [f for f in futures if not f.done()]
        raise SweepInterrupted(len(left)) from None
    except BaseException:  # a fit's error: the cells not started are not, the running ones end before it is raised
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=False)


def _extractors(
    fs: FeatureStore, wanted: list[str] | None, train: str, validation: str | None
) -> tuple[list, str | None]:
    """``(extractors to sweep, the validation split or None)``: those named (or all), each with a complete train
    split; validation is used when every one has it complete, else (none has it, or ``--validation none``) each is
    cross-validated on train. Anything else is refused, naming each extractor's missing or incomplete split."""
    names = (
        [fs.resolve(n) for n in wanted] if wanted else fs.extractors(caches=False)
    )  # finetune's caches only when named
    if not names:
        raise StoreError(f"store {fs.path} holds no extractor yet; run `featstore extract` first")
    problems = [f"{n}: {why}" for n in names if (why := _incomplete(fs, n, train))]
    if problems:
        raise StoreError(f"every swept extractor needs a complete {train!r} split; {'; '.join(problems)}")
    if no_split(validation):
        return names, None
    have = [n for n in names if not _incomplete(fs, n, validation)]
    if len(have) == len(names):
        return names, validation
    lacking = {n: _incomplete(fs, n, validation) for n in names if n not in have}
    if validation != DEFAULTS["validation"] and all(validation not in fs.splits(n) for n in lacking):
        raise ConfigError(
            f"--validation {validation!r}: {', '.join(lacking)} have no such split (splits there: "
            f"{', '.join(sorted({s for n in lacking for s in fs.splits(n)}))}); name one, or --validation {NONE} to "
            f"cross-validate every extractor on {train!r}"
        )
    if not have and all(validation not in fs.splits(n) for n in lacking):
        return names, None  # no extractor has the default validation split: cross-validate every one on train
    raise StoreError(
        f"a sweep chooses every extractor on one protocol, but {', '.join(have) or 'none'} have a complete "
        f"{validation!r} split and these do not: {'; '.join(f'{n}: {w}' for n, w in lacking.items())}. Finish or "
        f"extract it for them, leave them out with --extractor, or pass --validation {NONE} to cross-validate every "
        f"extractor on {train!r}"
    )


def _incomplete(fs: FeatureStore, name: str, split: str) -> str:
    """Why ``split`` of extractor ``name`` cannot be used ("" when it is complete), with the command that fixes it."""
    if split not in fs.splits(name):
        return f"no {split!r} split (`featstore extract --split {split}` makes it)"
    info = fs.split_info(split, name)
    if info.get("complete"):
        return ""
    return f"{split!r} is not complete ({info.get('committed_rows')} of {info.get('n_images')} images; {resume_advice(split)})"


def _test_split(fs: FeatureStore, names: list[str], test: str | None) -> tuple[str | None, str]:
    """``(the test split evaluated after the choice, or None; why none)``: None for ``--test none``, or when an
    extractor has no complete test split (named on purpose and missing everywhere: an error)."""
    if no_split(test):
        return None, ""
    missing = [n for n in names if test not in fs.splits(n)]
    if missing and test != DEFAULTS["test"]:
        raise ConfigError(
            f"--test {test!r}: {', '.join(missing)} have no such split (splits there: "
            f"{', '.join(sorted({s for n in missing for s in fs.splits(n)}))}); name one, or --test {NONE}"
        )
    if len(missing) == len(names):
        return None, f"the store has no {test!r} split"
    lacking = {n: why for n in names if (why := _incomplete(fs, n, test))}
    if lacking:
        why = f"not every swept extractor has a complete {test!r} split ({'; '.join(f'{n}: {w}' for n, w in lacking.items())})"
        logger.warning("%s: the sweep evaluates no test split", why)
        return None, why
    for n in names:
        check_has_rows(fs, n, test, "--test")  # before any fit: the choice's test was refused after every fit
    return test, ""


def _refuse_training_rows(fs: FeatureStore, names: list, fitted: list, train: str, validation: str, reused) -> str:
    """ConfigError when an extractor's ``validation`` split is mostly rows of its ``train`` split. ``fit`` warns and
    goes on (a final refit on trainval may be meant), but a sweep only chooses: on training rows, a 1-NN that memorised
    them was "chosen on validation: 1.0000" (attack 71 #7). Else the note (a few shared rows, or rows not compared:
    over the caps, attack 76 #2), "" when none: :func:`featstore.experiments.training_rows.refuse_training_rows`, the
    rule of probe and fewshot. An extractor whose every cell is reused is judged by the count its runs recorded (a
    re-run reads no features); a recorded "not compared" (a fit's --memory-budget: attack 77 #3) is compared here."""
    known = {}
    for n in (n for n in names if n not in fitted):
        got = [g for (e, _), r in reused.items() if e == n and (g := recorded(r, validation)) is not None]
        if got:
            known[n] = got[0]
    fix = f"pass a --validation split without them, or --validation {NONE} to choose by cross-validation on {train!r}"
    said = refuse_training_rows(fs, names, train, validation, "sweep", "choose", fix, known)
    return "; ".join(said)


def _test_on_training_rows(
    fs: FeatureStore, names: list, train: str, test: str | None, chosen_on: str | None = None
) -> tuple[str | None, str]:
    """``(why the test figure is withheld, or None; a note, or "")``: the sweep's ``test`` compared with ``train`` by
    rows (fit's rule) before the choice is tested (attack 74 #2: each cell is fitted with no test, so fit's note
    never looked at it, and the chosen run's test figure on train's own rows was printed unmarked); a test not compared
    (over the caps) is noted (attack 76 #2). Then with ``chosen_on``, the validation split the choice is made on: a
    test of its rows reported the choice's own maximum as the held-out figure (attack 78 #2). The decision is the rows
    rule's (:func:`~featstore.experiments.training_rows.verdict`, probe's and fewshot's refusal); the action the sweep's:
    where they refuse, the test figure is withheld; so where most of test's rows are rows of ``train`` or of
    ``chosen_on`` together, each a minority alone (the union, a row counted once: attack 80 #1)."""
    if not test:
        return None, ""
    notes, unknown_at = [], {}  # extractor -> (the index of its note that test was not compared with train, why)
    for n, on in ((n, on) for n in names for on in (train, chosen_on) if on):
        relation = FITTED if on == train else CHOSEN
        v = verdict(fs, n, on, test)  # the rows rule's decision; the sweep's action: the test figure withheld
        if v.kind == "unknown" and on == train:
            unknown_at[n] = (len(notes), v.why)
            notes.append(f"{not_compared(test, train, v.why)} ({n})")
        elif v.kind == "unknown" and unknown_at.get(n, (0, None))[1] == v.why:  # one reason for both: said once
            notes[unknown_at[n][0]] = (
                f"{unknown(test, repr(train), v.why, fitted_by=FITTED, nor=on)}, and its figures there are not marked ({n})"
            )
        elif v.kind == "unknown":
            notes.append(f"{unknown(test, repr(on), v.why, True)} ({n})")
        elif v.kind == "refuse":
            return (
                f"{v.head()}, {relation}: a test figure there would "
                + ("be a resubstitution figure" if on == train else "be the choice's own maximum, not a held-out one")
                + "; evaluate on a --test split without them"
            ), ""
        elif v.kind == "note":
            notes.append(
                f"{v.head()}"
                + (f", {CHOSEN}" if on != train else "")
                + f" (duplicate images?): the test figure is {optimistic_by(v.shared)}"
            )
    for n in names if chosen_on else ():  # each a minority alone, most of it together: withheld (attack 80 #1)
        if (v := verdict(fs, n, train, test, chosen_on=chosen_on)).kind == "refuse":
            return (
                f"{joint_head(v)}: a test figure there would be on rows the runs were fitted on or the choice was made "
                "on, not a held-out one; evaluate on a --test split without them"
            ), ""
    return None, "; ".join(notes)


def _refuse_other_rows(fs: FeatureStore, names: list[str], split: str, train: str) -> None:
    """ConfigError unless every extractor's ``split`` holds the same images (the ensemble averages them row by row)."""
    seen = {}
    for n in names:
        info = fs.split_info(split, n)
        key = (digest_paths(fs.paths(split, n)), str(info.get("listing_sha256", "")))
        seen.setdefault(key, []).append(f"{n} ({info.get('committed_rows')} rows)")
    if len(seen) > 1:
        groups = " vs ".join(", ".join(g) for g in seen.values())
        raise ConfigError(
            f"--ensemble averages runs row by row, but the {split!r} splits of the extractors hold different images: "
            f"{groups}. Sweep them without --ensemble, or extract {split!r} of every extractor from the same images"
            + (f" (the ensemble is selected on {train!r}'s out-of-fold predictions)" if split == train else "")
        )


def _select(recs: list[RunRecord], store, runs, score: str) -> tuple[list[tuple[str, int]], str, float | None]:
    """``(chosen (run, count), why none was built, the ensemble's accuracy on ``score``)`` of the greedy selection."""
    if len(recs) < 2:
        return [], "one run only: nothing to ensemble", None
    root = runs_root(store, runs)
    stored = [calibrated_predictions(root / r.id, r) for r in recs]  # verified; read below a block at a time
    y = stored[0][f"{score}__labels"]
    counts = greedy_log_loss([_true_class(p, score, y) for p in stored])
    chosen = [(r.id, k) for r, k in zip(recs, counts) if k]
    if len(chosen) == 1:
        note = (
            f"greedy selection kept {chosen[0][0]} alone: adding any other run did not lower the log-loss of the "
            f"averaged calibrated probabilities on {score!r}"
        )
        logger.info("%s", note)
        return [], note, None
    kept = [(p, k) for p, k in zip(stored, counts) if k]
    pred = [avg.argmax(axis=1) for avg, _ in averaged_blocks([p for p, _ in kept], [k for _, k in kept], score)]
    return chosen, "", float(np.mean(np.concatenate(pred) == y))


def _true_class(preds, split: str, y: np.ndarray) -> np.ndarray:
    """A run's calibrated probability of each row's true class on ``split`` (``(N,)``), read a block at a time."""
    out, at = np.empty(len(y)), 0
    for proba, _ in preds.blocks(split):
        out[at : at + len(proba)] = proba[np.arange(len(proba)), y[at : at + len(proba)]]
        at += len(proba)
    return out
