"""What a run's page shows: its metrics as recorded, the confusion grid from its stored probabilities, the galleries.

A run's ``predictions.npz`` holds the probabilities of its validation and test rows in store row order; the store's
paths of that split (the run's extractor group, or for an ensemble one of its members') are matched to them by the
digest the run recorded, so an image is never shown for another's prediction. Each non-empty cell of the confusion
grid links to a gallery of its images: mistakes most confident first, right answers least confident first.
A field a record does not have (intervals, calibration, curves) is left out, never guessed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.report.runs import fitted_splits
from featstore.report.site import charts
from featstore.report.site.render import figure_json
from featstore.runs.fittedrows import RowsPlace
from featstore.runs.folder import StoredPredictions, load_predictions
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord, digest_paths
from featstore.stats.figures import dense_confusion

logger = logging.getLogger(__name__)

KNOWN = {
    "n",
    "accuracy",
    "macro_f1",
    "per_class",
    "confusion_matrix",
    "reliability",
    "accuracy_interval",
    "accuracy_ci",
}
MAX_GRID_CLASSES = 1000  # a run of more classes gets no grid: K² cells (a crafted run.json of 30,000 asked for 7 GB)
INTERVAL_KEYS = ("accuracy_interval", "accuracy_ci")


@dataclass
class Item:
    """One image in a gallery."""

    path: str  # as stored
    source: str  # the image file
    true: str
    pred: str
    confidence: float  # probability of the predicted class
    p_true: float  # probability of the true class
    row: int
    thumb: str | None = None  # the thumbnail's URL from the site's root (None: the placeholder)
    reason: str = ""  # why there is no thumbnail


@dataclass
class Gallery:
    """A page of images: one confusion cell, or a split's mistakes."""

    page: str  # path from the site's root
    title: str
    run_id: str
    split: str
    order: str  # how the images are sorted, in words
    total: int  # images in the cell
    items: list[Item] = field(default_factory=list)  # those shown (at most the limit)


@dataclass
class Cell:
    """A confusion cell: its count, its gallery's page, its shade (0..9) and whether it is on the diagonal."""

    count: int
    link: str | None
    shade: int
    diagonal: bool


@dataclass
class SplitView:
    """One evaluated split of a run."""

    name: str
    n: int
    accuracy: float | None
    interval: tuple[float, float] | None
    macro_f1: float | None
    extras: list[tuple[str, str]]  # other recorded figures, formatted
    per_class: list[dict]
    matrix: list[list[Cell]]
    mistakes: Gallery | None = None
    note: str = ""  # why there are no galleries, or how the grid relates to the recorded matrix
    galleries: list[Gallery] = field(default_factory=list)  # the cells' galleries, then the mistakes'
    fitted: bool = False  # the rows the run was fitted on: resubstitution figures, not an estimate (attack 67 #5)


@dataclass
class RunView:
    """A run as its page shows it."""

    rec: RunRecord
    page: str
    params: str
    lines: list[str]
    splits: list[SplitView]
    members: list[tuple[str, float, str | None]] = field(default_factory=list)  # (id, weight, page or None)
    curves: object = None  # figure JSON
    reliability: object = None  # figure JSON
    galleries: list[Gallery] = field(default_factory=list)
    preds: StoredPredictions | None = None  # the stored probabilities and labels, when readable (read in blocks)
    _rows: dict = field(default_factory=dict)  # split -> its SplitRows, read once
    selected: dict = field(default_factory=dict)  # split -> what the run chose there: its figures there are optimistic

    def rows(self, split: str) -> SplitRows | None:
        """The per-row numbers of a split with stored predictions (:func:`split_rows`, read once), else None."""
        if self.preds is None or f"{split}__proba" not in self.preds:
            return None
        if split not in self._rows:
            self._rows[split] = split_rows(self.preds, split)
        return self._rows[split]

    def fitted(self, split: str) -> bool:
        """Whether the run was fitted on ``split``'s rows (its figures there are resubstitution figures)."""
        return any(s.name == split and getattr(s, "fitted", False) for s in self.splits)

    def accuracy(self, split: str) -> tuple[float | None, tuple[float, float] | None]:
        """(accuracy, interval) on a split, as recorded."""
        for s in self.splits:
            if s.name == split:
                return s.accuracy, s.interval
        return None, None


@dataclass(frozen=True)
class SplitRows:
    """What a run's page and the maps read of each row of a stored split: O(N) numbers, not its (N, K) probabilities."""

    y: np.ndarray  # true class
    pred: np.ndarray  # most probable class (the first of tied columns)
    conf: np.ndarray  # its probability
    p_true: np.ndarray  # the true class's probability


def split_rows(preds: StoredPredictions, split: str) -> SplitRows:
    """A stored split's :class:`SplitRows`, its probabilities read ``featstore.runs.folder.BLOCK_BYTES`` at a time."""
    parts = [(y, p.argmax(axis=1), p.max(axis=1), p[np.arange(len(y)), y]) for p, y in preds.blocks(split) if len(y)]
    if not parts:
        return SplitRows(np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0), np.zeros(0))
    return SplitRows(*(np.concatenate(column) for column in zip(*parts)))


def interval_of(m: dict) -> tuple[float, float] | None:
    """The accuracy's interval a split's metrics record (a dict with low/high, or a pair), else None.

    >>> interval_of({"accuracy_ci": {"estimate": 0.8, "low": 0.7, "high": 0.9}}), interval_of({"accuracy": 0.8})
    ((0.7, 0.9), None)
    """
    for key in INTERVAL_KEYS:
        v = m.get(key)
        if isinstance(v, dict):
            v = (v.get("low"), v.get("high"))
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) for x in v):
            return float(v[0]), float(v[1])
    return None


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def extras_of(m: dict) -> list[tuple[str, str]]:
    """Other figures a split's metrics record (balanced accuracy, log-loss, ECE, top-5, ...), formatted.

    >>> extras_of({"n": 3, "log_loss": 0.51234, "ece": 0.05, "notes": "x"})
    [('ece', '0.0500'), ('log_loss', '0.5123')]
    """
    out = []
    for key in sorted(k for k in m if k not in KNOWN):
        v = m[key]
        if _number(v):
            out.append((key, f"{v:.4f}"))
        elif isinstance(v, dict) and all(_number(v.get(k)) for k in ("estimate", "low", "high")):
            out.append((key, f"{v['estimate']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"))
    return out


def reliability_bins(m: dict) -> list[dict] | None:
    """The reliability bins a split records (a list of bins, or ``{"bins": [...]}``), else None."""
    r = m.get("reliability")
    r = r.get("bins") if isinstance(r, dict) else r
    if isinstance(r, list) and r and all(isinstance(b, dict) for b in r):
        return r
    return None


PathsOf = Callable[[str, str], tuple[list[str], str] | None]  # (group, split) -> (paths, source_root), or None


def match_rows(rec: RunRecord, split: str, paths_of: PathsOf) -> tuple[list[str], str] | str:
    """The store's paths and source root of the rows a run predicted on ``split``, or why they cannot be matched."""
    want = rec.predictions[split]
    for group in rec.extractor.split("+"):
        found = paths_of(group, split)
        if found is not None and len(found[0]) == want.n and digest_paths(found[0]) == want.paths_sha256:
            return found
    return (
        f"the store's {split} rows are not the ones this run predicted (the split was re-extracted or the store is "
        f"another); galleries need the run's own rows: fit again"
    )


def _shade(count: int, top: int) -> int:
    return 0 if count == 0 or top == 0 else 1 + min(8, int(8 * count / top))


def split_view(
    rec: RunRecord, split: str, stored: SplitRows | None, paths_of: PathsOf, limit: int, place: RowsPlace | None = None
) -> SplitView:
    """One split of a run: recorded figures, the grid (linked to galleries where the rows can be matched); over
    :data:`MAX_GRID_CLASSES` classes no grid nor cell galleries (K² cells), the mistakes' gallery only."""
    m, names = rec["metrics"][split], list(rec.class_names)
    per_class = [{"name": c, **m["per_class"].get(c, {})} for c in names]
    view = SplitView(
        split, m["n"], m.get("accuracy"), interval_of(m), m.get("macro_f1"), extras_of(m), per_class, [], None
    )
    view.fitted = split in fitted_splits(rec, place=place)  # on ``place``'s rows (:class:`RowsPlace`)
    big = len(names) > MAX_GRID_CLASSES
    cm = None if big else dense_confusion(m["confusion_matrix"])
    unshown = f"the confusion matrix of {len(names)} classes is not drawn (over {MAX_GRID_CLASSES}); "
    if stored is None:
        view.note = (unshown if big else "") + (
            "no stored predictions for this split (runs store validation and test): the grid is the recorded one"
        )
        view.matrix = [] if big else _grid(cm, None)
        return view
    rows = match_rows(rec, split, paths_of)
    if isinstance(rows, str):
        view.note = (unshown if big else "") + rows
        view.matrix = [] if big else _grid(cm, None)
        return view
    paths, root = rows
    y, pred, conf, p_true = stored.y, stored.pred, stored.conf, stored.p_true
    base = f"galleries/{rec.id}/{split}"
    galleries: dict[tuple[int, int], Gallery] = {}
    if big:
        view.note = unshown + "see every mistake"
    else:
        mine = np.zeros_like(cm)
        np.add.at(mine, (y, pred), 1)
        if not np.array_equal(mine, cm):
            view.note = (
                f"the grid counts each image under its most probable class in the stored probabilities; the run's "
                f"recorded matrix differs on {int(np.abs(mine - cm).sum()) // 2} image(s)"
            )
        for i, j, idx in _cells(y, pred, len(names)):  # the non-empty cells only: K² passes over the rows took minutes
            right = i == j
            idx = idx[np.lexsort((idx, conf[idx] if right else -conf[idx]))]
            title = f"{names[i]} predicted as {names[j]}" if not right else f"{names[i]}, predicted right"
            order = "least confident first" if right else "most confident first"
            g = Gallery(f"{base}-{i}-{j}.html", title, rec.id, split, order, len(idx))
            g.items = [_item(paths, root, names, y, pred, conf, p_true, r) for r in idx[:limit]]
            galleries[(i, j)] = g
    wrong = np.flatnonzero(y != pred)
    wrong = wrong[np.lexsort((wrong, -conf[wrong]))]
    view.mistakes = Gallery(f"{base}-mistakes.html", "every mistake", rec.id, split, "most confident first", len(wrong))
    view.mistakes.items = [_item(paths, root, names, y, pred, conf, p_true, r) for r in wrong[: 4 * limit]]
    view.matrix = [] if big else _grid(mine, galleries)
    view.galleries = [*galleries.values(), view.mistakes]
    return view


def _cells(y: np.ndarray, pred: np.ndarray, k: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(true, predicted, rows)`` of every non-empty cell of the confusion matrix, row-major, rows ascending."""
    cell = y.astype(np.int64) * k + pred
    order = np.argsort(cell, kind="stable")
    cell = cell[order]
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if len(cell) else np.array([], int)
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(cell)]):
        i, j = divmod(int(cell[start]), k)
        yield i, j, order[start:end]


def _item(paths, root, names, y, pred, conf, p_true, r) -> Item:
    r = int(r)
    source = os.path.join(root, paths[r]) if root else paths[r]
    return Item(paths[r], source, names[y[r]], names[pred[r]], float(conf[r]), float(p_true[r]), r)


def _grid(cm: np.ndarray, galleries: dict | None) -> list[list[Cell]]:
    """Cells of a confusion matrix, linked to their galleries (when there are any)."""
    k = len(cm)
    off = cm[~np.eye(k, dtype=bool)]
    top_off, top_diag = int(off.max(initial=0)), int(np.diag(cm).max(initial=0))
    return [
        [
            Cell(
                int(cm[i, j]),
                galleries[(i, j)].page if galleries and (i, j) in galleries else None,
                _shade(int(cm[i, j]), top_diag if i == j else top_off),
                i == j,
            )
            for j in range(k)
        ]
        for i in range(k)
    ]


def run_view(
    rec: RunRecord,
    folder: Path,
    paths_of: PathsOf,
    limit: int,
    pages: dict[str, str] | None = None,
    *,
    place: RowsPlace | None = None,
) -> RunView:
    """A run's page data: its splits (with galleries where its rows match the store), curves, members, calibration.

    ``pages`` maps the ids of listed runs to their pages (an ensemble links its members); ``place``: where its marks
    read rows (:class:`RowsPlace`: the report's store and runs folder; None: its recorded store).
    """
    kind = kind_of(rec)
    try:
        preds = load_predictions(folder, rec)
    except StoreError as exc:
        logger.warning("run %s: stored predictions not shown: %s", rec.id, exc)
        preds = None
    view = RunView(rec, f"runs/{rec.id}.html", kind.params_text(rec) or "defaults", kind.describe(rec), [])
    view.preds = preds
    order = {"test": 0, "validation": 1}  # the splits with stored predictions (and galleries) first
    for split in sorted(rec["metrics"], key=lambda s: (s not in rec.predictions, order.get(s, 2), s)):
        sv = split_view(rec, split, view.rows(split), paths_of, limit, place)
        view.splits.append(sv)
        view.galleries += sv.galleries
    curves = kind.curves(rec)
    if curves is not None:
        history, _title, then = curves
        view.curves = figure_json(charts.curves_figure(history, then, kind.kept_epoch(rec)))
    bins = {s: b for s in rec["metrics"] if (b := reliability_bins(rec["metrics"][s])) is not None}
    if bins:
        view.reliability = figure_json(charts.reliability_figure(bins))
    pages = pages or {}
    view.members = [(m, w, pages.get(m)) for m, w in zip(rec.members, rec.weights)]
    return view
