"""Plain-text and JSON reports of runs: the runs table, one run's figures with their 95 % intervals, two runs
compared on the same rows, ``runs evaluate``, and a sweep's grid.

Every accuracy is shown with its 95 % interval (Wilson; a run recorded before intervals gets the one its ``n`` and
accuracy give); the other figures with the bootstrap intervals the run recorded, or "-" when it has none.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

from featstore.outputs import terminal_safe
from featstore.report.text import _table
from featstore.runs.fittedrows import (  # noqa: F401 - fitted_on moved there (attack 70 #4)
    NOT_COMPARED,
    RESUBSTITUTION,
    RowsPlace,
    figure_marks,
    fitted_on,
    fitted_splits,
    not_compared,
    shared_rows,
)
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord, thaw
from featstore.stats.figures import HEADLINE


def with_interval(value: float, low: float, high: float, digits: int = 4) -> str:
    """A figure and its 95 % interval, all to ``digits`` decimals, "0.8100 [0.7200, 0.8700]" (an interval to fewer
    showed "0.9974 [1.00, 1.00]": the figure outside its own zero-wide interval): every accuracy in the runs table,
    `runs show`, `runs evaluate` and `runs compare`."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _acc(rec: RunRecord, split: str, digits: int = 4) -> str:
    """A split's accuracy with its 95 % interval (:func:`with_interval`); "-" when not evaluated there."""
    m = rec.metrics.get(split)
    if m is None:
        return "-"
    return with_interval(m.accuracy, *m.accuracy_interval(), digits=digits)


def _marked(rec: RunRecord, split: str, marks) -> str:
    """:func:`_acc`, with its mark (``marks``: :func:`figure_marks`): a resubstitution figure, not an estimate (attack
    76 #6: the table listed such a 1.0000 unmarked), or rows not compared (77 #2: said, not left unmarked)."""
    text = _acc(rec, split)
    return f"{text} ({marks[split]})" if split in marks and text != "-" else text


def _val(rec: RunRecord, fitted=()) -> str:
    """The validation column: validation accuracy, or (no validation split) the out-of-fold accuracy on train, marked."""
    if "validation" in rec.metrics:
        return _marked(rec, "validation", fitted)
    oof = next((s for s in rec.metrics if s.endswith(".oof")), None)
    return f"{_acc(rec, oof)} cv" if oof else "-"


def _fitted(rec: RunRecord, place: RowsPlace | None = None) -> dict[str, str]:
    """The marks of the table's columns (:func:`figure_marks`; the site's runs table marks as it does)."""
    return figure_marks(rec, ("validation", "test"), place=place)


def _legend(marks) -> list[str]:
    """A line for each mark used in ``marks`` (the runs' :func:`_fitted` values)."""
    used = {m for one in marks for m in one.values()}
    return [line for m, line in _LEGEND.items() if m in used]


_LEGEND = {
    RESUBSTITUTION: f"{RESUBSTITUTION}: the run's own training rows; such a figure estimates nothing for new images",
    NOT_COMPARED: f"{NOT_COMPARED}: whether they are the run's training rows is not known (`featstore runs show ID "
    "--store S` names the store it was fitted on and says why; give --store and --runs where they moved)",
}


def _fingerprints(rec: RunRecord) -> str:
    """First 12 hex digits of each fingerprint (an ensemble lists one per distinct member extractor, joined by '+')."""
    return "+".join(f[:12] for f in rec.fingerprint.split("+"))


def runs_table(
    runs: list[RunRecord],
    broken: list[tuple[str, str]] = (),
    unreadable: list[tuple[str, str]] = (),
    *,
    place: RowsPlace | None = None,
) -> str:
    """One line per run: id, classifier, chosen params, validation/test accuracy with their 95 % intervals, seconds,
    extractor, fingerprint; then broken folders, and other users' runs this user may not read. "cv": out-of-fold
    accuracy on train (the run had no validation); figures marked as :func:`figure_marks` says, their rows read at
    ``place`` (the store and runs folder the command was given: attack 77 #2)."""
    if not runs and not broken and not unreadable:
        return "no runs yet; fit one with `featstore fit --clf logreg`"
    rows = [
        ["id", "clf", "params", "val_acc [95% CI]", "test_acc [95% CI]", "fit_s", "extractor", "fingerprint", "created"]
    ]
    seen = []
    for r in runs:
        fitted = _fitted(r, place)
        seen.append(fitted)
        augmented = r.get("augmented")
        params = (kind_of(r).params_text(r) or "defaults") + (
            f" +{augmented['copies']} aug copies" if augmented else ""
        )
        rows.append(
            [
                r.id,
                r.clf,
                params,
                _val(r, fitted),
                _marked(r, "test", fitted),
                f"{r.get('fit_seconds', 0):.2f}",
                r.extractor,
                _fingerprints(r),
                r.created_at[:19],
            ]
        )
    lines = [_table(rows), *_legend(seen)] if runs else ["no usable runs"]
    if note := stores_note(runs):
        lines.append(note)
    if broken:
        lines.append(f"{len(broken)} broken run folder(s), not used:")
        lines += [f"  {terminal_safe(name)}: {reason}" for name, reason in broken]  # a folder name: one line
    if unreadable:  # intact for their owners: not "broken", and not the user's to remove (attack 36 #10)
        lines.append(f"{len(unreadable)} run folder(s) of other users not readable by you, not used:")
        lines += [f"  {terminal_safe(name)}: {reason}" for name, reason in unreadable]
    return "\n".join(lines)


def stores_note(runs: list[RunRecord]) -> str | None:
    """ "note: these runs come from 2 stores (...)" when the runs were recorded for more than one store (one --runs
    folder shared by several stores: their figures are on other images), else None: the runs table, ``runs compare``
    of several runs and the report site say it alike (attack 63 #4). Escaped where printed (cli.echo, the site)."""
    stores = Counter(str(r.get("store")) for r in runs if r.get("store"))
    if len(stores) <= 1:
        return None
    shown = ", ".join(f"{s}: {n}" for s, n in stores.most_common(5))
    return (
        f"note: these runs come from {len(stores)} stores ({shown}{', ...' if len(stores) > 5 else ''}); runs of "
        f"different stores may have been scored on different images (`runs compare` and `ensemble` take a pair of "
        f"them only where both scored the same image files, in the same order, with the same labels)"
    )


def _ci(m, name: str, digits: int = 3, value: float | None = None) -> str:
    """A recorded figure with its interval, "0.612 [0.500, 0.751]"; "-" for a run recorded before it existed."""
    value, ci = m.figure(name) if value is None else value, m.figure(f"{name}_ci")
    if value is None:
        return "-"
    return f"{value:.{digits}f}" + (f" [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]" if ci else "")


def bound_reason(t: float) -> str:
    """Why a fitted temperature ended on a bound, by the bound (attack 65 #5): the lower one (sharper is always
    better) when the held-out rows were (almost) all right, the upper one (flatter is always better) when they were
    no better than chance."""
    if t < 1:
        return (
            "on its lower bound: the held-out rows were (almost) all right, so the probabilities may be over-confident"
        )
    return (
        "on its upper bound: the held-out rows were about at chance, so the probabilities are as flat as allowed "
        "(near uniform: they say little about which rows are right)"
    )


def own_temperature(cal) -> str:
    """The model's own temperature (the svm's out-of-fold one, ``calibration.model_temperature``) in words, "" when
    the run records none (attack 67 #12: T = 0.01 on its bound was called "the model's own probabilities")."""
    own = cal.get("model_temperature")
    t = own.get("T") if hasattr(own, "get") else None
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
        return ""
    folds = own.get("folds")
    if not folds:
        return "; the model's own are its softmax at T = 1 (no out-of-fold temperature could be fitted)"
    bound = f", {bound_reason(t)}" if own.get("at_bound") is True else ""
    return f"; the model's own are its softmax at its out-of-fold temperature T = {t:.3g} ({folds} folds{bound})"


def calibration_line(rec: RunRecord) -> str:
    """How the run's probabilities are calibrated, in words (and the model's own temperature, where it has one)."""
    cal = rec.calibration
    where = cal.get("fitted_on", "")
    if cal["method"] == "temperature":
        nll = (  # its objective, zeros floored: not the split's log-loss, clipped at eps (attack 65 #10)
            f"; log-loss {cal['nll_before']:.3f} -> {cal['nll_after']:.3f} as the fit sees it (exact zeros floored)"
            if "nll_after" in cal
            else ""
        )
        rows = f" ({cal['n']} rows{nll})" if "n" in cal else ""
        bound = f"; {bound_reason(cal['T'])}" if cal.get("at_bound") else ""
        return (
            f"calibration: temperature {cal['T']:.3g} fitted on {where or 'held-out rows'}{rows}{bound}"
            f"{own_temperature(cal)}"
        )
    # no record: a run older than calibration of its kind (finetune runs since attack 14: "calibrated runs" was false)
    why = where.removeprefix("not calibrated: ") or f"recorded before featstore calibrated {rec.kind} runs"
    return f"calibration: none ({why}{own_temperature(cal)})"


FITTED_MARK = "the rows it was fitted on (resubstitution): its intervals estimate nothing for new images"


def split_lines(split: str, m, fitted: bool = False) -> list[str]:
    """A split's figures, each with its 95 % interval (two lines); ``fitted``: the split the run was fitted on, so a
    third line says its figures are resubstitution figures, not an estimate (attack 67 #5)."""
    lo, hi = m.accuracy_interval()
    top5 = f", top-5 {_ci(m, 'top5')}" if m.figure("top5") is not None else ""
    before = m.figure("before_calibration")
    raw = f" (before calibration: log-loss {before['log_loss']:.3f}, ECE {before['ece']:.3f})" if before else ""
    return [
        f"  {split}{' (fitted on these rows)' if fitted else ''}: accuracy {with_interval(m.accuracy, lo, hi)} "
        f"(n {m.n}), balanced "
        f"{_ci(m, 'balanced_accuracy')}, macro-F1 {_ci(m, 'macro_f1', value=m.macro_f1)}{top5}",
        f"    log-loss {_ci(m, 'log_loss')}, ECE {_ci(m, 'ece')}{raw}",
    ] + ([f"    {split}: {FITTED_MARK}"] if fitted else [])


def run_report(
    rec: RunRecord,
    pngs: list,
    per_class: bool = True,
    selected: Mapping[str, str] | None = None,
    *,
    place: RowsPlace | None = None,
) -> str:
    """A run's details: setup, selection, calibration, every split's figures with 95 % intervals, a per-class table,
    and the plots written; ``selected``: the splits it was chosen on, read with its runs folder
    (``featstore.runs.selected.selected_on``; None: its own record's marks); ``place``: where its marks read rows
    (:class:`~featstore.runs.fittedrows.RowsPlace`; None: its recorded store)."""
    lines = [
        f"run {rec.id} ({rec.kind}), {rec.created_at}",
        f"  extractor {rec.extractor} fingerprint {rec.fingerprint}",
        f"  store {terminal_safe(str(rec.get('store', '-')))}",
        *kind_of(rec).describe(rec, selected),
        f"  {calibration_line(rec)}",
    ]
    lines += [f"  note: {note}" for note in rec.notes]
    got, skipped = shared_rows(rec, place=place)
    train = {s for s, (k, n) in got.items() if k == n}
    trained = fitted_on(rec) or "its members' training splits"  # an ensemble's are its members' (attack 74 #1)
    said = [not_compared(s, trained, why) for s, why in skipped.items()]  # over the caps, or no store readable
    lines += [f"  note: {note}" for note in said if note not in rec.notes]
    for split, m in rec.metrics.items():
        lines += split_lines(split, m, split in train)
        rows = [["    class", "precision", "recall", "f1", "support"]]
        rows += [
            [
                f"    {terminal_safe(c)}",
                f"{v['precision']:.3f}",
                f"{v['recall']:.3f}",
                f"{v['f1']:.3f}",
                str(v["support"]),
            ]
            for c, v in m.per_class.items()
        ]
        if per_class:
            lines.append(_table(rows))
    lines += [f"  wrote {terminal_safe(str(p))}" for p in pngs]
    if not per_class:
        lines.append(f"  details: featstore runs show {rec.id}")
    return "\n".join(lines)


def split_marks(
    rec: RunRecord, selected: Mapping[str, str] | None = None, splits=(), *, place: RowsPlace | None = None
) -> dict[str, dict]:
    """Per split of ``rec``'s figures (and ``splits``), the marks the text puts beside its figures, as JSON (attack 71
    #8): ``fitted_on_these_rows`` (each row is a row of the split it was fitted on: its figures there are
    resubstitution figures), ``training_rows`` (``{"shared": k, "rows": n}`` where only some are), ``rows_not_compared``
    (why, where a split is over the rows rule's caps) and ``selected_on`` (what the run chose there, ``selected``:
    :func:`featstore.runs.selected.selected_on`; None where it chose nothing there); ``place``: as :func:`run_report`."""
    got, skipped = shared_rows(rec, splits, place=place)
    out = {}
    for s in dict.fromkeys([*rec.metrics, *splits]):
        k, n = got.get(s, (0, 0))
        out[s] = {
            "fitted_on_these_rows": s in got and k == n,
            "training_rows": {"shared": k, "rows": n} if s in got and k < n else None,
            "rows_not_compared": skipped.get(s),
            "selected_on": (selected or {}).get(s),
        }
    return out


def _headline(m) -> dict:
    """A split's headline figures as JSON (the accuracy interval computed from n for a run recorded before it)."""
    lo, hi = m.accuracy_interval()
    out = {"n": m.n, "accuracy": m.accuracy, "accuracy_ci": m.figure("accuracy_ci") or {"low": lo, "high": hi}}
    return thaw({**out, "macro_f1": m.macro_f1, **{k: m.figure(k) for k in HEADLINE if m.figure(k) is not None}})


def runs_json(
    runs: list[RunRecord],
    broken: list[tuple[str, str]] = (),
    unreadable: list[tuple[str, str]] = (),
    *,
    place: RowsPlace | None = None,
) -> dict:
    """The runs table as JSON: per run its id, kind, classifier, parameters, extractor and each split's headline
    figures with their intervals; broken folders with the reason, and other users' runs this user may not read."""
    return {
        "runs": [
            {
                "id": r.id,
                "kind": r.kind,
                "clf": r.clf,
                "params": r["params"],
                "extractor": r.extractor,
                "fingerprint": r.fingerprint,
                "created_at": r.created_at,
                "metrics": {s: _headline(m) for s, m in r.metrics.items()},
                "marks": split_marks(r, place=place),  # the text's marks (attack 76 #6), read at place (77 #2)
            }
            for r in runs
        ],
        "broken": [{"folder": name, "reason": reason} for name, reason in broken],
        "unreadable": [{"folder": name, "reason": reason} for name, reason in unreadable],
    }


def accuracy_json(runs: list[RunRecord], *, place: RowsPlace | None = None) -> list[dict]:
    """Each run's validation and test headline figures (``runs compare --json``; ``place``: as :func:`run_report`)."""
    out = []
    for r in runs:
        shown = [s for s in ("validation", "test") if s in r.metrics]
        marks = {s: m for s, m in split_marks(r, place=place).items() if s in shown}  # the text's marks (attack 76 #6)
        out.append({"id": r.id, **{s: _headline(r.metrics[s]) for s in shown}, "marks": marks})
    return out


def accuracy_lines(runs: list[RunRecord], *, place: RowsPlace | None = None) -> str:
    """One line per run: validation and test accuracy with their 95 % intervals (``runs compare`` of several runs),
    and the runs table's note when they come from more than one store (:func:`stores_note`); ``place``: as
    :func:`run_report`."""
    width, fitted = max(len(r.id) for r in runs), {r.id: _fitted(r, place) for r in runs}
    lines = [
        f"{r.id.ljust(width)}  validation {_marked(r, 'validation', fitted[r.id])}  test {_marked(r, 'test', fitted[r.id])}"
        for r in runs
    ]
    lines += _legend(fitted.values())
    return "\n".join(lines + [n for n in [stores_note(runs)] if n])


def evaluated_lines(
    run_id: str, split: str, m: dict, said: str, fitted: bool = False, unknown: str | None = None
) -> str:
    """``runs evaluate``: the split's figures with intervals (``fitted``: marked as the rows the run was fitted on;
    ``unknown``: why its rows were not compared with the training split's), and whether they were recorded in the
    run."""
    from featstore.runs.record import SplitMetrics

    fields = ("n", "accuracy", "macro_f1", "per_class", "confusion_matrix")
    sm = SplitMetrics(*(m[k] for k in fields), {k: v for k, v in m.items() if k not in fields})
    head, *rest = split_lines(split, sm, fitted)
    note = [f"    {split}: rows not compared with the training split's ({unknown}): not marked"] if unknown else []
    return "\n".join([f"{run_id} on {head.strip()}", *rest, *note, said])


def pair_report(pair) -> str:
    """Two runs on the same rows (``featstore.experiments.compare.PairComparison``): per split each run's accuracy
    with its interval, log-loss and ECE, and in words whether the difference is larger than chance; on a split where
    a run chose its settings, epoch, members or weights, or whose rows a run was fitted on, that said and no verdict
    (where to judge instead); a run fitted on some of its rows, said beside the verdict."""
    width = max(len(pair.a.id), len(pair.b.id))
    lines = [f"{pair.a.id} vs {pair.b.id}, on the same rows of each split"]
    for split, c in pair.splits.items():
        lines.append(f"{split} ({c.n} rows):")
        for rid, f in zip((pair.a.id, pair.b.id), c.figures):
            ci = f.get("accuracy_ci") or {}
            lines.append(
                f"  {rid.ljust(width)}  accuracy {with_interval(f['accuracy'], ci.get('low', 0), ci.get('high', 1))}"
                f"  log-loss {f.get('log_loss', float('nan')):.3f}  ECE {f.get('ece', float('nan')):.3f}"
            )
        lines += [f"  {note}" for note in c.selected]  # a run chose on these rows: no verdict (attack 63 #5)
        lines += [f"  {note}" for note in c.fitted]  # a run was fitted on these rows: no verdict (attack 71 #9)
        lines.append(f"  {c.sentence()}")
    lines += [f"not compared: {s} ({who} was evaluated there)" for s, who in pair.only.items()]
    return "\n".join(lines)


def _range(ci) -> str:
    """`` [0.9955, 0.9986]``: to 4 decimals, as the accuracy it follows (see :func:`_acc`)."""
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def sweep_table(summary: dict) -> str:
    """A sweep as a grid: extractors down, classifiers across, the accuracy it chose on (validation, or out-of-fold on
    train) and test where evaluated, each with its 95 % interval; the winner marked; the ensemble against the best
    single run in words (or why no ensemble was built)."""
    clfs, cells = summary["classifiers"], {(c["extractor"], c["clf"]): c for c in summary["cells"]}
    win = summary["winner"]
    on = "validation" if not summary.get("chosen_on", "validation").endswith(".oof") else "out-of-fold (train)"

    def cell(c: dict) -> str:
        if c.get("diverged"):
            return "diverged"
        text = f"{c['validation']:.4f}{_range(c.get('validation_ci'))}"
        text += f" / {c['test']:.4f}{_range(c.get('test_ci'))}" if c["test"] is not None else ""
        return text + (" *" if c["run"] == win["id"] else "")

    rows = [["extractor \\ classifier"] + clfs]
    rows += [[name] + [cell(cells[(name, c)]) for c in clfs] for name in summary["extractors"]]
    reused, n = summary.get("reused") or [], len(summary["cells"])
    lines = [
        f"{summary['id']}: {on} accuracy [95 % interval]"
        + (" / test accuracy" if any(c["test"] is not None for c in summary["cells"]) else "")
        + f" ({n - len(reused)} fit{'s' if n - len(reused) != 1 else ''}{f', {len(reused)} reused' if reused else ''} "
        + f"in {summary['seconds']:.1f} s; * = chosen)",
        _table(rows),
    ]
    if reused:
        lines.append(
            f"reused: {len(reused)} of {n} cells, recorded already as the very fit each makes (--no-reuse refits): "
            + ", ".join(f"{r['run']} ({r['clf']} on {r['extractor']})" for r in reused)
        )
    e = summary["ensemble"]
    if e:
        lines.append(
            f"ensemble {e['run']}: {on} {e['validation']:.4f}{_range(e.get('validation_ci'))}"
            + (f", test {e['test']:.4f}{_range(e.get('test_ci'))}" if e["test"] is not None else "")
            + f"; members {', '.join(f'{m} x{w:g}' for m, w in zip(e['members'], e['weights']))}"
        )
        for split, v in e.get("vs_best_single", {}).items():
            optimistic = " (the ensemble was selected on these rows: optimistic)" if v.get("selected_on") else ""
            lines.append(f"  {split}: {v['sentence']}{optimistic}")
    elif summary.get("ensemble_note"):
        lines.append(f"no ensemble: {summary['ensemble_note']}")
    test = f", test {win['test']:.4f}{_range(win.get('test_ci'))}" if win["test"] is not None else ""
    test += f" (note: {win['test_note']})" if win.get("test_note") else ""
    test += f"; its test figure is withheld: {win['test_withheld']}" if win.get("test_withheld") else ""
    on_note = f" (note: {win['validation_note']})" if win.get("validation_note") else ""  # attack 76 #2
    versus = win.get("vs_best_single")
    gain = f"; its gain over {versus['run']} on {versus['split']} is {versus['verdict']}" if versus else ""
    lines.append(
        f"chosen on {on}: {win['id']} ({win['clf']} on {win['extractor']}): {win['validation']:.4f}"
        f"{_range(win.get('validation_ci'))}{on_note}{test}{gain}"
    )
    lines.append(f"selection: {summary['selection']}; heat map {summary['png']}")
    return "\n".join(lines)
