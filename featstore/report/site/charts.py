"""The site's interactive charts as Plotly figures: runs compared, training curves, reliability, the embedding map.

Each function returns a ``plotly.graph_objects.Figure``; :func:`featstore.report.site.render.figure_json` turns it
into the JSON a page embeds, and ``static/site.js`` draws it with the ``plotly.min.js`` the site carries.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

PALETTE = (  # Tableau 10, then Plotly's own, then greys: enough distinct colours for most class lists
    "#4e79a7 #f28e2b #e15759 #76b7b2 #59a14f #edc948 #b07aa1 #ff9da7 #9c755f #bab0ac "
    "#636efa #ef553b #00cc96 #ab63fa #ffa15a #19d3f3 #ff6692 #b6e880 #ff97ff #fecb52"
).split()
RIGHT, WRONG, NONE = "#2e7d32", "#d62728", "#c8c8c8"
SVG_POINTS = 10_000  # a map of more points is drawn with WebGL (browsers without it show the menu and no points)


def _layout(**kw) -> dict:
    """A compact layout shared by the charts (no Plotly logo, readable margins)."""
    return {"margin": {"l": 50, "r": 20, "t": 40, "b": 50}, "template": "plotly_white", **kw}


def compare_figure(ids: Sequence[str], scores: dict[str, list], intervals: dict[str, list]):
    """Grouped bars of each run's accuracy per split, with 95 % intervals as error bars where runs record them."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for split, vals in scores.items():
        ivs = intervals.get(split, [None] * len(vals))
        has = any(iv is not None for iv in ivs)
        err = None
        if has:
            err = {
                "type": "data",
                "symmetric": False,
                "array": [(iv[1] - v) if iv and v is not None else 0 for v, iv in zip(vals, ivs)],
                "arrayminus": [(v - iv[0]) if iv and v is not None else 0 for v, iv in zip(vals, ivs)],
            }
        fig.add_bar(
            x=list(ids),
            y=[v if v is not None else 0 for v in vals],
            name=split,
            error_y=err,
            text=[f"{v:.3f}" if v is not None else "n/a" for v in vals],
            textposition="outside",
            hovertemplate="%{x}<br>" + split + " accuracy %{text}<extra></extra>",
        )
    fig.update_layout(
        **_layout(barmode="group", yaxis={"title": "accuracy", "range": [0, 1.1]}, legend={"title": "split"}),
        height=360,
    )
    return fig


def curves_figure(history: dict, then: dict | None = None, kept: int | None = None):
    """Accuracy and loss per epoch (training and validation); ``then``: a second phase, after a dashed line;
    ``kept``: the epoch whose weights the model ends with (early stopping's restored epoch), a dotted green line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    boundary = None
    if then:
        boundary = max((len(v) for v in history.values()), default=0)
        history = {k: list(history.get(k, [])) + list(then.get(k, [])) for k in {*history, *then}}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "loss"))
    for col, metric in ((1, "accuracy"), (2, "loss")):
        for key, label, dash in ((metric, "training", "solid"), (f"val_{metric}", "validation", "dot")):
            values = list(history.get(key, []))
            if values:
                fig.add_trace(
                    go.Scatter(
                        x=list(range(1, len(values) + 1)),
                        y=values,
                        name=f"{label} {metric}",
                        mode="lines+markers",
                        line={"dash": dash},
                    ),
                    row=1,
                    col=col,
                )
        if boundary is not None:
            fig.add_vline(x=boundary + 0.5, line_dash="dash", line_color="grey", row=1, col=col)
        if kept is not None:
            fig.add_vline(x=kept, line_dash="dot", line_color="green", row=1, col=col)
            if col == 1:
                fig.add_annotation(
                    x=kept, y=1, yref="y domain", text=f"weights kept (epoch {kept})", showarrow=False, row=1, col=col
                )
        values = [v for k in (metric, f"val_{metric}") for v in history.get(k, [])]
        if metric == "loss" and values and min(values) > 0 and max(values) / min(values) > 5:
            fig.update_yaxes(type="log", title_text="loss (log scale)", row=1, col=col)  # a large first loss
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(**_layout(), height=340)
    return fig


def reliability_figure(bins_by_split: dict[str, list[dict]]):
    """Mean confidence against accuracy per bin (a reliability diagram), one line per split, with the diagonal."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "grey"}, name="calibrated")
    for split, bins in bins_by_split.items():
        pts = [b for b in bins if b.get("count") and b.get("confidence") is not None and b.get("accuracy") is not None]
        fig.add_scatter(
            x=[b["confidence"] for b in pts],
            y=[b["accuracy"] for b in pts],
            text=[f"{b['count']} rows" for b in pts],
            mode="lines+markers",
            name=split,
            hovertemplate="confidence %{x:.2f}, accuracy %{y:.2f}, %{text}<extra></extra>",
        )
    fig.update_layout(
        **_layout(xaxis={"title": "mean confidence", "range": [0, 1]}, yaxis={"title": "accuracy", "range": [0, 1]}),
        height=340,
    )
    return fig


def map_figure(xy: np.ndarray, colourings: dict[str, tuple[list[str], np.ndarray, list[str]]]):
    """The embedding map: one group of traces per colouring, a menu to switch between them.

    ``colourings`` maps a menu label to ``(category names, category index of each point, colours)``. Every trace
    carries each point's index in ``customdata`` (the page looks up its thumbnail, path and labels). Menu labels are
    run ids and fixed words; category names are escaped here.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    groups, buttons = [], []
    scatter = go.Scatter if len(xy) <= SVG_POINTS else go.Scattergl  # WebGL only where SVG would crawl
    for c, (title, (names, which, colours)) in enumerate(colourings.items()):
        start = len(fig.data)
        for k, name in enumerate(names):
            idx = np.flatnonzero(which == k)
            if not len(idx):
                continue
            name = html.escape(name)  # Plotly reads tags in names and hover text: a class name stays text
            fig.add_trace(
                scatter(
                    x=xy[idx, 0],
                    y=xy[idx, 1],
                    customdata=idx,
                    mode="markers",
                    name=f"{name} ({len(idx)})",
                    marker={"size": 6, "color": colours[k], "opacity": 0.8},
                    visible=c == 0,
                    hovertemplate=f"{name}<extra></extra>",
                )
            )
        groups.append((title, start, len(fig.data)))
    for title, a, b in groups:
        visible = [a <= i < b for i in range(len(fig.data))]
        buttons.append({"label": title, "method": "update", "args": [{"visible": visible}]})
    fig.update_layout(
        **_layout(margin={"l": 10, "r": 10, "t": 50, "b": 10}),
        height=640,
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        hovermode="closest",
        legend={"itemsizing": "constant"},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 0, "xanchor": "left", "y": 1.1, "yanchor": "top"}],
    )
    return fig


def palette(n: int) -> list[str]:
    """``n`` colours (the palette repeats after 20).

    >>> palette(2)
    ['#4e79a7', '#f28e2b']
    """
    return [PALETTE[i % len(PALETTE)] for i in range(n)]
