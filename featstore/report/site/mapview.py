"""The embedding map of one extractor: the projection's points with their images, labels, splits and runs' answers.

The layout is :func:`featstore.experiments.projection.project` (a seeded sample, UMAP or t-SNE, cached). Each point
carries its stored path, class, split and image; the menu colours the points by class, by split, or right/wrong for
each run whose stored predictions cover this extractor's rows (points of splits the run did not predict are grey).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from featstore.experiments.projection import Projection
from featstore.report.site import charts
from featstore.report.site.render import figure_json
from featstore.report.site.runpages import RunView, match_rows


@dataclass
class Point:
    """One point of the map."""

    split: str
    row: int
    path: str  # as stored
    source: str  # the image file
    label: str
    thumb: str | None = None  # URL from the site's root
    reason: str = ""


@dataclass
class MapView:
    """The map page of one extractor."""

    extractor: str
    page: str  # path from the site's root
    projection: Projection
    points: list[Point]
    figure: object = None  # figure JSON
    colourings: list[str] = field(default_factory=list)  # menu labels, in order
    data: list = field(default_factory=list)  # per point: thumbnail URL, path, class, split, original URL, reason
    sample_file: str = ""  # the recorded sample, from the site's root


def page_name(extractor: str) -> str:
    """The map page of an extractor: ``maps/<name>.html`` (a name that is not plain is hashed).

    >>> page_name("vgg16@block4_pool"), page_name("<x>")[:7]
    ('maps/vgg16@block4_pool.html', 'maps/h-')
    """
    import re

    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,120}", extractor):
        return f"maps/{extractor}.html"
    return f"maps/h-{hashlib.sha256(os.fsencode(extractor)).hexdigest()[:16]}.html"


def map_view(proj: Projection, class_names: list[str], paths_of, labels_of, runs: list[RunView]) -> MapView:
    """The map of ``proj``: points with paths and labels, coloured by label, split, and each run that covers them.

    ``paths_of(group, split)`` gives ``(paths, source_root)``; ``labels_of(group, split)`` the labels.
    """
    name = proj.extractor
    points: list[Point] = []
    label_idx = []
    for split, rows in proj.sample.items():
        paths, root = paths_of(name, split)
        labels = labels_of(name, split)
        for r in rows:
            r = int(r)
            source = os.path.join(root, paths[r]) if root else paths[r]
            points.append(Point(split, r, paths[r], source, class_names[int(labels[r])]))
            label_idx.append(int(labels[r]))
    splits = list(proj.sample)
    colourings = {
        "colour by class": (class_names, np.asarray(label_idx, np.int64), charts.palette(len(class_names))),
        "colour by split": (
            splits,
            np.asarray([splits.index(p.split) for p in points], np.int64),
            charts.palette(len(splits))[::-1],
        ),
    }
    for run in runs:
        which = _answers(run, name, proj, paths_of)
        if which is not None:
            colourings[f"right or wrong: {run.rec.id}"] = (
                ["right", "wrong", "not predicted"],
                which,
                [charts.RIGHT, charts.WRONG, charts.NONE],
            )
    view = MapView(name, page_name(name), proj, points, colourings=list(colourings))
    view.figure = figure_json(charts.map_figure(proj.xy, colourings))
    return view


def _answers(run: RunView, name: str, proj: Projection, paths_of) -> np.ndarray | None:
    """Per point: 0 right, 1 wrong, 2 not predicted, for a run whose predictions are on this extractor's rows."""
    rec = run.rec
    if name not in rec.extractor.split("+") or run.preds is None:
        return None
    out = np.full(sum(len(r) for r in proj.sample.values()), 2, np.int64)
    offset, any_split = 0, False
    for split, rows in proj.sample.items():
        stored = run.rows(split) if split in rec.predictions else None
        if stored is not None:
            matched = match_rows(rec, split, lambda g, s: paths_of(g, s) if g == name else None)
            if not isinstance(matched, str):
                out[offset : offset + len(rows)] = (stored.pred[rows] != stored.y[rows]).astype(np.int64)
                any_split = True
        offset += len(rows)
    return out if any_split else None
