"""Runs compared: two runs on the same rows with a paired test, and a chart of several runs' accuracies.

:func:`compare_pair` puts two runs side by side on every split both were evaluated on, from their stored (and
calibrated) probabilities: each run's accuracy with its Wilson interval, log-loss and ECE, and whether the
difference is larger than chance (exact McNemar test and Tango's paired score interval, ``featstore.stats.paired``). Only rows
that are the same images in both runs are compared: the same split, the same image paths in the same order, the
same labels and, where both runs recorded it, the same image listing (sizes and times: two datasets laid out alike
are not the same images). A pair that fails is refused, naming the split and what differs. The runs may use
different extractors of the same images.

>>> c = compare_pair("logreg-1a2b3c", "svm-4d5e6f")       # doctest: +SKIP
>>> print(c.splits["test"].comparison.sentence())          # doctest: +SKIP
logreg-1a2b3c beats svm-4d5e6f by 2.0 points (95 % CI -4.0 to 8.0; McNemar p = 0.63 on 18 discordant rows of 100): within noise
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, OutputError, check_paths
from featstore.outputs import (
    check_output,
    check_own_output,
    is_chart,
    refuse_foreign_image,
    refuse_run_files,
    refuse_unstamped,
    write_atomic,
)
from featstore.provenance import OOF
from featstore.runs.files import output_path
from featstore.runs.fittedrows import RowsPlace, figure_marks, fitted_members, fitted_on, shared_rows
from featstore.runs.folder import StoredPredictions, calibrated_predictions, find_run, get_run, list_runs, runs_root
from featstore.runs.kinds import kind_of, rebuild_advice
from featstore.runs.record import RunRecord
from featstore.runs.selected import selected_on, sweep_choices
from featstore.safetext import terminal_safe
from featstore.stats.figures import HEADLINE, RowFigures, completed, confusion_cells, confusion_of
from featstore.stats.paired import PairedComparison, compare_predictions
from featstore.sticky import ahead
from featstore.store.digests import rows_differ
from featstore.store.folders import refuse_in_image_folders


@dataclass(frozen=True)
class SplitComparison:
    """Two runs on the same rows of one split."""

    split: str
    n: int  # rows compared
    figures: tuple[dict, dict]  # each run's figures on the split (accuracy_ci, log_loss, ece, ...)
    comparison: PairedComparison  # A against B: McNemar and the paired interval of the accuracy difference
    # one line per run that chose its settings, epoch, members or weights on these rows (attack 63 #5): "A was
    # selected on validation: its advantage here is optimistic (its settings were chosen on these rows)"
    selected: tuple[str, ...] = ()
    elsewhere: str = ""  # where to judge instead: "the test split below", or the command that evaluates test
    # one line per run whose recorded figures on these rows are not the argmax of its stored probabilities (a
    # modified-Huber sgd run fitted before the agreeing heads: attack 65 #9): no verdict, refit it
    disagree: tuple[str, ...] = ()
    # one line per run fitted on these rows (each is a row of the split it was fitted on: attack 71 #9): no verdict
    fitted: tuple[str, ...] = ()
    fitted_by: tuple[str, ...] = ()  # those runs' ids
    # one line per run fitted on some of these rows, or whose rows were not compared: said beside the verdict
    shared: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """The comparison's verdict, or "not judged (...)" where a run was fitted or chose on these rows or its
        stored probabilities disagree with its recorded figures."""
        if self.disagree:
            return "not judged (a run's stored probabilities disagree with its recorded figures)"
        if self.fitted:
            return "not judged (fitted on these rows)"
        return "not judged (selected on these rows)" if self.selected else self.comparison.verdict

    def sentence(self) -> str:
        """The comparison in words; where a run was fitted or chose on these rows, the figures without a verdict (a
        lead there is the fit's or the choice's, whatever the test says) and where to judge instead; where a run's
        stored probabilities disagree with its recorded figures, that alone (one line per such run); where a run
        was fitted on some of these rows, that beside the verdict."""
        if self.disagree:
            return "; ".join(self.disagree)
        text, m = self.comparison.sentence(), self.comparison.mcnemar
        if not (self.selected or self.fitted) or m.b + m.c == 0:
            return f"{text} ({'; '.join(self.shared)})" if self.shared and not self.fitted else text
        head, sep, _ = text.rpartition("): ")
        who = " and ".join(self.fitted_by)
        why = (
            f"{who} {'were' if len(self.fitted_by) > 1 else 'was'} fitted on these rows"
            if self.fitted
            else ("a run was selected on these rows")
        )
        return f"{head + ')' if sep else text}: no verdict here ({why}); judge on {self.elsewhere}"


@dataclass(frozen=True)
class PairComparison:
    """Two runs compared on every split both were evaluated on."""

    a: RunRecord
    b: RunRecord
    splits: dict[str, SplitComparison]  # split -> comparison, in the order A recorded them
    only: dict[str, str]  # split evaluated by one run only -> which ("only A", with the command that adds it)

    def to_dict(self) -> dict:
        """JSON-able: the runs, and per split both runs' figures and ``PairedComparison.to_dict()``."""
        return {
            "a": self.a.id,
            "b": self.b.id,
            "splits": {
                s: {
                    "n": c.n,
                    self.a.id: _brief(c.figures[0]),
                    self.b.id: _brief(c.figures[1]),
                    "comparison": _withheld(c),
                    "selected_on_this_split": list(c.selected),
                    "fitted_on_these_rows": list(c.fitted_by),
                    "fitted_notes": [*c.fitted, *c.shared],
                    "probabilities_disagree": list(c.disagree),
                    "verdict": c.verdict,
                    "sentence": c.sentence(),
                }
                for s, c in self.splits.items()
            },
            "not_compared": self.only,
        }


def _withheld(c: SplitComparison) -> dict:
    """``PairedComparison.to_dict()``, with the verdict and sentence withheld as the split's own where a run was
    fitted or selected on these rows or disagrees with its stored probabilities (it said "larger than chance" beside
    the outer "not judged": attack 65 #4), and the sentence the split's own where it notes shared rows."""
    out = c.comparison.to_dict()
    return out if c.sentence() == out["sentence"] else {**out, "verdict": c.verdict, "sentence": c.sentence()}


def _brief(m: dict) -> dict:
    """A split's headline figures (the reliability bins and per-class tables are in the runs' records)."""
    return {k: m[k] for k in HEADLINE if k in m}


def mismatch(a: RunRecord, b: RunRecord, split: str, stored_a: dict, stored_b: dict) -> str | None:
    """Why runs ``a`` and ``b`` were not evaluated on the same rows of ``split`` (None when they were)."""
    pa, pb = a.predictions[split], b.predictions[split]
    la, lb = _listing(pa.listing_sha256), _listing(pb.listing_sha256)
    if pa.paths_sha256 != pb.paths_sha256 or pa.n != pb.n:
        return (
            f"{split!r}: {a.id} was evaluated on {pa.n} images (paths digest {pa.paths_sha256[:12]}), {b.id} on "
            f"{pb.n} (paths digest {pb.paths_sha256[:12]}): other images, or another order"
        )
    if la and lb and la != lb:
        return (
            f"{split!r}: the same file names but other image files (listing digests {la[:12]} and {lb[:12]}: sizes "
            f"or times differ), e.g. two datasets laid out alike"
        )
    if (a.extractor, a.fingerprint) == (b.extractor, b.fingerprint) and rows_differ(
        pa.listing_sha256, pb.listing_sha256
    ):
        return f"{split!r}: the same row names but other rows written from arrays (other features or labels)"
    if not np.array_equal(stored_a[f"{split}__labels"], stored_b[f"{split}__labels"]):
        return f"{split!r}: the same file names with other labels"
    if not (la and lb) and a.get("store") != b.get("store"):
        return (
            f"{split!r}: the runs come from different stores ({a.get('store', '-')} and {b.get('store', '-')}) and "
            f"{a.id if not la else b.id} does not record which image files it saw (made by an older featstore, or on "
            f"features imported without images)"
        )
    return None


def _listing(digest: str | None) -> str | None:
    """A split's image listing digest, or None when it names no image files (features written from arrays)."""
    return None if not digest or digest.startswith("arrays:") else digest


def compare_pair(
    run_a: str, run_b: str, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None
) -> PairComparison:
    """Two runs on every split both were evaluated on, on the same rows, with a paired test (see the module
    docstring); a ConfigError naming the split and what differs when their rows are not the same. Example::

        for split, c in compare_pair("logreg", "svm").splits.items():
            print(split, c.comparison.sentence())
    """
    a, fa = get_run(run_a, store, runs)
    b, fb = get_run(run_b, store, runs)
    if a.class_names != b.class_names:
        raise ConfigError(
            f"runs {a.id} and {b.id} have different classes: {list(a.class_names)} vs {list(b.class_names)}"
        )
    sa, sb = calibrated_predictions(fa, a), calibrated_predictions(fb, b)
    common = [s for s in a.predictions if s in b.predictions]
    only = {s: f"only {a.id}" for s in a.predictions if s not in b.predictions}
    only |= {s: f"only {b.id}" for s in b.predictions if s not in a.predictions}
    problems = [p for s in common if (p := mismatch(a, b, s, sa, sb))]
    if problems:
        raise ConfigError(
            f"runs {a.id} and {b.id} were not evaluated on the same rows, so a paired test would compare other "
            f"images: {'; '.join(problems)}. Compare runs made on the same images (same store, same split)"
        )
    if not common:
        raise ConfigError(
            f"runs {a.id} and {b.id} share no evaluated split ({a.id}: {', '.join(a.predictions) or 'none'}; "
            f"{b.id}: {', '.join(b.predictions) or 'none'}); add one with `featstore runs evaluate RUN --split SPLIT`"
        )
    out, k, chosen = {}, len(a.class_names), _chosen(a, b, store, runs)
    fitted, shared = fitted_notes(a, b, common, store, runs_root(store, runs))  # the given store's rows (74 #3)
    for s in common:  # each run's split read a block at a time: O(N) numbers kept, never its (N, K) probabilities
        y, (pred_a, rows_a), (pred_b, rows_b) = sa[f"{s}__labels"], split_rows(sa, s), split_rows(sb, s)
        off = {rec.id: _disagrees(rec, s, y, pred, k) for rec, pred in ((a, pred_a), (b, pred_b))}
        figs = tuple(  # a run that disagrees: the figures of the probabilities compared, not its recorded ones
            completed(rec["metrics"][s], y, rows)
            if s in rec.metrics and not off[rec.id]
            else completed(_bare(y, pred, k), y, rows)
            for rec, pred, rows in ((a, pred_a, rows_a), (b, pred_b, rows_b))
        )
        cmp = compare_predictions(y, pred_a, pred_b, a.id, b.id)
        where = _elsewhere(s, common, {**chosen, **fitted}, a, b, store, runs)
        notes, by = tuple(n for _, n in fitted.get(s, ())), tuple(r for r, _ in fitted.get(s, ()))
        disagree = tuple(v for v in off.values() if v)
        out[s] = SplitComparison(s, len(y), figs, cmp, chosen.get(s, ()), where, disagree, notes, by, shared.get(s, ()))
    return PairComparison(a, b, out, only)


def _chosen(a: RunRecord, b: RunRecord, store, runs) -> dict[str, tuple[str, ...]]:
    """Split -> "A was selected on SPLIT: its advantage here is optimistic (...)", one per run that chose its
    settings, epoch, ensemble members or weights there, or that a sweep chose there (``featstore.runs.selected``)."""
    root = runs_root(store, runs)

    def lookup(run_id: str):
        return find_run(run_id, root, exact=True, verify=False)[0]

    out: dict[str, list[str]] = {}
    sweeps = sweep_choices(root)  # a sweep's chosen run, named in its summary in the runs folder (attack 65 #6)
    for rec in (a, b):
        for split, what in selected_on(rec, lookup, sweeps).items():
            out.setdefault(split, []).append(
                f"{rec.id} was selected on {split}: its advantage here is optimistic ({what} chosen on these rows)"
            )
    return {s: tuple(v) for s, v in out.items()}


def fitted_notes(a: RunRecord, b: RunRecord, splits: list[str], store=None, root=None) -> tuple[dict, dict]:
    """``({split: ((run, line), ...)}, {split: (line, ...)})``: the runs fitted on every row of a split (each row is
    one of the split it was fitted on, by rows: ``featstore.runs.fittedrows``; attack 71 #9), and a line per run fitted
    on some of its rows or not compared; an ensemble's are its members' (in ``root``; 74 #1), on ``store``'s rows (#3)."""
    full: dict[str, list] = {}
    part: dict[str, list] = {}
    for rec in (a, b):
        got, skipped = shared_rows(rec, splits, store, root)
        train = fitted_on(rec)
        named = repr(train) if train is not None else "its members' training splits"  # an ensemble fits nothing
        for s in splits:
            if s in got and got[s][0] == got[s][1]:
                how = f"each is a row of {named}, the split it was fitted on" if s != train else "it is that split"
                if rec.members:
                    how = f"its members {', '.join(fitted_members(rec, s, root, store))} were fitted on each of them"
                line = f"{rec.id} was fitted on these rows ({how}): its figures here are resubstitution figures"
                full.setdefault(s, []).append((rec.id, line))
            elif s in got:
                k, n = got[s]
                part.setdefault(s, []).append(f"{k} of these {n} rows are rows {rec.id} was fitted on ({named})")
            elif s in skipped:
                part.setdefault(s, []).append(f"whether {rec.id} was fitted on these rows is not known: {skipped[s]}")
    return {s: tuple(v) for s, v in full.items()}, {s: tuple(v) for s, v in part.items()}


def _disagrees(rec: RunRecord, split: str, y: np.ndarray, pred: np.ndarray, k: int) -> str:
    """One line when ``rec``'s recorded confusion matrix on ``split`` is not that of the argmax of its stored
    probabilities (``pred``): a modified-Huber sgd run fitted before the heads' predictions and probabilities agreed
    recorded its predictions, and its probabilities say otherwise (attack 65 #9); "" when they agree."""
    if split not in rec.metrics:
        return ""
    recorded = confusion_cells(rec["metrics"][split]["confusion_matrix"])
    stored = confusion_cells(confusion_of(y, pred, k))
    if all(np.array_equal(r, t) for r, t in zip(recorded[1:], stored[1:])):
        return ""
    said = (
        f"no verdict: {rec.id}'s recorded figures on {split} (accuracy {rec.accuracy(split):.4f}) are not those of its "
        f"stored probabilities (their argmax: accuracy {float(np.mean(pred == y)) if len(y) else 0.0:.4f}, shown "
        f"above)"
    )
    if not _builtin(rec):  # a registered classifier: a refit as it is gives the same line (attack 67 #13)
        return (
            f"{said}: {rec.clf} is a registered classifier whose predict is not the most probable class of its "
            f"predict_proba (its fit warned so). Make its predict_proba agree with its predict "
            f"(featstore.models.agreeing.agree) in its registered builder, then fit it again and compare the new run"
        )
    return (
        f"{said}, so it was fitted before its predictions and probabilities agreed; refit it (`featstore fit --clf "
        f"{rec.clf} --extractor {rec.extractor}` with its --param) and compare the new run"
    )


def _builtin(rec: RunRecord) -> bool:
    """Whether ``rec`` is a run of featstore's own classifiers (its predictions and probabilities agree since attack
    63 #1), not of one registered in a script (unknown here, or registered again under a built-in's name: not)."""
    from featstore.experiments.classifiers import get_classifier

    if not kind_of(rec).registered_clf:  # a fine-tuned model, an ensemble: featstore's own
        return True
    try:
        return bool(get_classifier(rec.clf).builtin)
    except Exception:  # noqa: BLE001 - not registered in this process: a script's classifier
        return False


def _elsewhere(split: str, common: list[str], chosen: dict, a: RunRecord, b: RunRecord, store=None, runs=None) -> str:
    """Where to judge a pair instead of on ``split``: a split both were evaluated on that neither chose on (the
    test split), or the command that evaluates them on test, with the ``--store`` (when not the default) and
    ``--runs`` the comparison was given (attack 65 #3: without them it named no run)."""
    clean = [s for s in common if s not in chosen and s != split and not s.endswith(OOF)]
    if clean:
        return f"the {'test' if 'test' in clean else clean[0]!r} split"
    todo = [r.id for r in (a, b) if "test" not in r.predictions]
    if not todo:
        return "a split neither run was fitted or selected on"
    where = (f" --store {shlex.quote(str(store))}" if store is not None and str(store) != "features.h5" else "") + (
        f" --runs {shlex.quote(str(runs))}" if runs is not None else ""
    )
    root = runs_root(store, runs)
    fitted = {r.id: fitted_members(r, "test", root, store) for r in (a, b) if r.members and store}  # 71 #1
    said = [  # an ensemble is not evaluated itself: its members are, and it is made again (attack 67 #1)
        f"for {r.id}, {rebuild_advice(r, 'test', where, fitted.get(r.id, ()))}"
        if r.members
        else f"`featstore runs evaluate {r.id} --split test{where}`"
        for r in (a, b)
        if r.id in todo
    ]
    return "test: " + " and ".join(said)


def split_rows(preds: StoredPredictions, split: str, rows: int | None = None) -> tuple[np.ndarray, RowFigures | None]:
    """``(predicted labels, RowFigures)`` of a stored split, read ``rows`` rows at a time (default: the file's block,
    ``featstore.runs.folder.BLOCK_BYTES`` of probabilities): O(N) numbers, never its (N, K) probabilities; the
    figures are the whole array's (``RowFigures`` is None for a split of no rows)."""
    preds_, figs = [], []
    for proba, y in preds.blocks(split, rows):
        preds_.append(proba.argmax(axis=1))
        if len(y):
            figs.append(RowFigures.of(y, proba))
    pred = np.concatenate(preds_) if preds_ else np.zeros(0, np.intp)
    return pred, (RowFigures.join(figs) if figs else None)


def _bare(y: np.ndarray, pred: np.ndarray, k: int) -> dict:
    """The least a split's figures need (a stored split without recorded metrics): n, accuracy, confusion matrix."""
    cm = confusion_of(y, pred, k)  # its non-zero cells: 30,000 classes never make a dense 7 GB matrix
    return {"n": len(y), "accuracy": float(np.mean(pred == y)), "confusion_matrix": cm}


def check_chart_name(
    out: str | os.PathLike, what: str = "--out", store: str | os.PathLike | None = None, chosen: bool = False
) -> Path:
    """The name of a chart (``runs compare --out``, every ``--png``), refused before any work unless it can take a
    PNG: a name ending in .png (or with no suffix: the PNG is written at exactly that name) in a folder that exists,
    not a link, FIFO or folder; never over a file featstore did not draw (an image of the dataset, notes, a script),
    nor a run's own file (``confusion_test.png``: attack 21), nor a new file among ``store``'s images that the next
    extract would train on. ``chosen``: a name featstore chose (``<store>.leaks.png``), which replaces only a PNG it
    stamped."""
    out = Path(out)
    if not chosen and out.suffix and out.suffix.lower() != ".png":
        raise OutputError(f"{what} {out}: the chart is a PNG; give a name ending in .png")
    check_output(out, what)
    if not chosen:
        refuse_foreign_image(out, what)
        check_own_output(out, what, "a chart (PNG)", (".png", ""), is_chart)
    refuse_run_files(out, what)
    refuse_record_chart(out, what)
    if store is not None:
        refuse_in_image_folders(out, store, what)
    if chosen:
        refuse_unstamped(out, what)
    return out


RECORD_KINDS = ("sweep", "probe", "fewshot")  # records in a runs folder that point at their own chart


def refuse_record_chart(out: Path, what: str = "--out") -> None:
    """Refuse the chart of a sweep, probe or fewshot record (``<runs>/sweep-<id>.png``, beside ``sweep-<id>.json``):
    featstore stamped it, but the record names it as its own, drawn from nothing kept (attack 24 #4)."""
    kind = out.name.split("-", 1)[0]
    if kind not in RECORD_KINDS or out.suffix.lower() != ".png":
        return
    record = out.with_suffix(".json")
    if os.path.lexists(record) or out.parent.suffix == ".runs":
        raise OutputError(
            f"{what} {out} is the chart of the {kind} record {record.name} in {out.parent}; featstore never replaces a "
            f"record's chart. Choose another name"
        )


def compare_runs(
    run_ids: list[str] | None = None,
    out: str | os.PathLike | None = None,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
    *,
    place: RowsPlace | None = None,
) -> Path:
    """Bar chart of validation and test accuracy of the given runs (default: all), each with its 95 % interval, a run
    marked where a bar is on rows it was fitted on (as the table: 76 #6; rows read at ``place``, a :class:`RowsPlace`);
    returns the PNG path (written whole, or not at all: one OutputError line for a missing folder or a full disk).
    Example: ``compare_runs(["logreg-1a2b3c", "svm-4d5e6f"], out="c.png")``."""
    from featstore.plots import compare_png

    check_paths(out=out, store=store, runs=runs)  # out="" drew the chart into the runs folder
    path = check_chart_name(out, store=store) if out else default_chart(runs_root(store, runs))
    recs = [get_run(r, store, runs)[0] for r in run_ids] if run_ids else list_runs(store, runs)
    if not recs:
        raise ConfigError("no runs to compare; fit some with `featstore fit`")
    splits = ("validation", "test")
    scores = {s: [r.accuracy(s) for r in recs] for s in splits}
    intervals = {s: [wilson_of(r.metrics[s]) if s in r.metrics else None for r in recs] for s in splits}
    on = [figure_marks(r, splits, place=place) for r in recs]  # as the table's (76 #6, 77 #2)
    labels = [r.id + "".join(f"\n({s}: {m})" for s, m in f.items()) for r, f in zip(recs, on)]
    what = "--out" if out else "the default chart"
    return write_atomic(path, lambda tmp: compare_png(labels, scores, tmp, intervals), what)


def default_chart(root: Path) -> Path:
    """``<runs>/compare.png``, where ``runs compare`` writes its chart without ``--out``; a folder (or a pipe, device
    or socket) or a colleague's file there: one OutputError naming the default path and ``--out`` (attack 70 #7)."""
    path = output_path(root, "compare.png", "--out")
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return path  # nothing there (or unreadable: write_atomic says why)
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        raise OutputError(
            f"the default chart {terminal_safe(str(path))} is {kind}; pass --out PATH.png (a path of yours) to write "
            "the chart elsewhere"
        )
    if (held := ahead(path)) is not None:  # a colleague's file in a shared runs folder: --out, as for his link (72 #7)
        fix = f"pass --out PATH.png (a path of yours) to write the chart elsewhere, or ask {held.owner} to remove it"
        raise OutputError(f"cannot write the default chart: {held.line(fix)}")
    return path


def wilson_of(m) -> tuple[float, float]:
    """A recorded split's accuracy interval (``SplitMetrics.accuracy_interval``)."""
    return m.accuracy_interval()
