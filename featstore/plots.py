"""PNG plots of runs: confusion matrix, reliability diagram, the dense head's training curves, a comparison bar chart
with 95 % intervals, and the sweep's heat map. Every figure is saved as PNG whatever the file's name says (the
callers write a temporary file and rename it: ``featstore.outputs.write_atomic``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from featstore.outputs import CHART_METADATA, terminal_safe


def chart_text(text: object) -> str:
    r"""Text from data (a class, split, run or extractor name, a path) as matplotlib draws it literally: control
    characters as ``\x..`` and every ``$`` escaped, so it is never parsed as mathtext (a class named ``$\foo$`` ended
    ``runs show`` in a ParseFatalException; ``price $5 or $9`` was drawn as maths). A name starting with ``_`` gets
    a space before it: matplotlib leaves such labels out of a legend (a split ``_holdout`` was drawn, unnamed).

    >>> chart_text("price $5")
    'price \\$5'
    >>> chart_text("_holdout")
    ' _holdout'
    """
    text = terminal_safe(str(text)).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def plain_text(draw):
    """Run a chart function with TeX off (a matplotlibrc with ``text.usetex: True`` would hand every name to LaTeX)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


ANNOTATED_CLASSES = 30  # counts drawn in the cells up to this many classes
NAMED_CLASSES = 60  # class names on the axes up to this many classes
DRAWN_CLASSES = 2000  # no confusion matrix is drawn beyond: 1,400 px cannot show its cells, its dense counts grow as K²
MAX_SIDE = 14.0  # inches (1,400 px at 100 dpi): a 1,000-class matrix drawn cell by cell was a 60,000-px image


@plain_text
def confusion_png(matrix, class_names: list[str], title: str, path: Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted): with counts in the cells up to
    :data:`ANNOTATED_CLASSES` classes, class names on the axes up to :data:`NAMED_CLASSES`, and at most
    :data:`MAX_SIDE` inches a side whatever the number of classes (the counts are in run.json)."""
    plt = pyplot()
    m = np.asarray(matrix)
    class_names = [chart_text(c) for c in class_names]  # control characters drawn as \x.., a $ as a $ (not mathtext)
    k = len(class_names)
    side = min(1.0 + 0.6 * k, MAX_SIDE)
    fig, ax = plt.subplots(figsize=(side + 0.2, side))
    ax.imshow(m, cmap="Blues", interpolation="nearest")
    if k <= NAMED_CLASSES:
        small = {} if k <= ANNOTATED_CLASSES else {"fontsize": 6}
        ax.set_xticks(range(k), class_names, rotation=60, ha="right", **small)
        ax.set_yticks(range(k), class_names, **small)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    else:
        ax.set_xlabel(f"predicted ({k} classes in label order; the counts are in run.json)")
        ax.set_ylabel("true")
    if k <= ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black",
                    fontsize=8,
                ).set_in_layout(False)  # inside its cell: tight_layout measured each count (0.8 s of 2.2, 30 classes)
    ax.set_title(chart_text(title))
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png", metadata=CHART_METADATA)
    plt.close(fig)
    return path


@plain_text
def curves_png(
    history: dict[str, list[float]],
    title: str,
    path: Path,
    then: dict[str, list[float]] | None = None,
    kept: int | None = None,
) -> Path:
    """Training and validation accuracy and loss per epoch, side by side.

    The loss axis is logarithmic (and says so) when the losses span more than a factor of 5, so a large
    first-epoch loss does not flatten the rest of the curve. ``then``: a second phase's history (fine-tuning after
    the phase-A head), drawn after the first with a line marking where it starts. ``kept``: the epoch (1-based, on
    the drawn axis) whose weights the model ends with (early stopping's restored epoch), marked with a dotted line.

    >>> curves_png({"loss": [28.0, 0.9, 0.5], "accuracy": [0.3, 0.7, 0.8]}, "run", Path("curves.png"))  # doctest: +SKIP
    """
    plt = pyplot()
    from matplotlib import ticker

    title = chart_text(title)  # a run id from a hand-edited run.json

    boundary = None
    if then is not None:
        boundary = max((len(v) for v in history.values()), default=0)
        history = {k: list(history.get(k, [])) + list(then.get(k, [])) for k in {*history, *then}}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        if boundary is not None:
            ax.axvline(
                boundary + 0.5, color="grey", linestyle="--", linewidth=1, label="phase A | phase B (fine-tuning)"
            )
        if kept is not None:
            ax.axvline(kept, color="tab:green", linestyle=":", linewidth=1.5, label=f"weights kept (epoch {kept})")
        series = {
            f"training {metric}": history.get(metric, []),
            f"validation {metric}": history.get(f"val_{metric}", []),
        }
        for (label, values), style in zip(series.items(), ("o", "-")):
            if values:
                ax.plot(range(1, len(values) + 1), values, style, label=label)
        log = metric == "loss" and _wide_positive([v for vals in series.values() for v in vals])
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (log scale)" if log else metric)
        ax.set_title(metric if boundary is not None else f"{title}: {metric}")
        ax.grid(alpha=0.3, which="both" if log else "major")
        ax.legend()
    if boundary is not None:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png", metadata=CHART_METADATA)
    plt.close(fig)
    return path


DIGITS = 4  # decimals of a chart's accuracy labels and intervals, as the report site's and text tables' (at 2, 0.9974
# [0.9955, 0.9986] read "[1.00, 1.00]", and 0.9974 and 0.9951 were both "1.00": attack 67 #11)


def _wide_positive(values: list[float]) -> bool:
    """True when all values are positive and the largest is over 5 times the smallest: worth a log axis."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 5


@plain_text
def compare_png(
    labels: list[str],
    scores: dict[str, list[float | None]],
    path: Path,
    intervals: dict[str, list[tuple[float, float] | None]] | None = None,
) -> Path:
    """Grouped bars, one group per run and one bar per split's accuracy, each labelled with its value; ``intervals``
    (per split, one (low, high) per run) are drawn as error bars: the 95 % Wilson interval of each accuracy.

    The legend sits outside the axes (right), run labels are rotated, and the figure widens with the
    number of runs; a missing score is shown as "n/a" instead of a bar.

    >>> compare_png(["run-a", "run-b"], {"validation": [0.78, 0.73], "test": [0.81, None]}, Path("c.png"))  # doctest: +SKIP
    """
    plt = pyplot()
    labels, scores = [chart_text(x) for x in labels], {chart_text(k): v for k, v in scores.items()}
    intervals = {chart_text(k): v for k, v in intervals.items()} if intervals else intervals
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 2.5 + 0.55 * n * max(len(scores), 1))), 4.8))
    width = 0.8 / max(len(scores), 1)
    x = np.arange(n)
    small = 7 if n > 8 else 8
    for i, (split, vals) in enumerate(scores.items()):
        heights = [v if v is not None else 0 for v in vals]
        ivs = (intervals or {}).get(split) or [None] * n
        err = np.array(
            [
                [h - iv[0], iv[1] - h] if iv is not None and v is not None else [0, 0]
                for h, v, iv in zip(heights, vals, ivs)
            ]
        ).T.clip(min=0)  # an interval that misses its bar (a hand-edited run.json) draws no negative error bar
        bars = ax.bar(
            x + i * width, heights, width, label=chart_text(split), yerr=err if err.any() else None, capsize=3
        )
        ax.bar_label(
            bars,
            labels=[f"{v:.{DIGITS}f}" if v is not None else "n/a" for v in vals],
            padding=2,
            fontsize=small,
            rotation=90 if n > 12 else 0,
        )
    ax.set_xticks(
        x + width * (len(scores) - 1) / 2,
        labels,
        rotation=45 if n > 3 else 0,
        ha="right" if n > 3 else "center",
        fontsize=small,
    )
    ax.set_ylabel("accuracy (bars: 95 % interval)" if intervals else "accuracy")
    ax.set_ylim(0, 1.12)  # headroom for the value labels above a bar at 1.0
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="split", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png", metadata=CHART_METADATA)
    plt.close(fig)
    return path


@plain_text
def heatmap_png(
    rows: list[str],
    cols: list[str],
    values: np.ndarray,
    title: str,
    path: Path,
    mark: tuple[int, int] | None = None,
    intervals: np.ndarray | None = None,
    label: str = "validation accuracy",
) -> Path:
    """A rows x cols grid of accuracies, each cell labelled with its value (and, with ``intervals`` of shape
    (rows, cols, 2), its 95 % interval below it); ``mark`` outlines the chosen cell.

    >>> heatmap_png(["vgg16@block4_pool"], ["logreg", "svm"], np.array([[0.8, 0.7]]), "sweep", Path("s.png"))  # doctest: +SKIP
    """
    rows, cols = [chart_text(r) for r in rows], [chart_text(c) for c in cols]  # extractor names from a store
    title, label = chart_text(title), chart_text(label)
    plt = pyplot()
    tall = 0.8 if intervals is not None else 0.55  # room for the interval under each value
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(cols) + 3.5), max(2.5, tall * len(rows) + 1.8)))
    top = float(np.nanmax(values))
    low = min(
        float(np.nanmin(values)), top - 0.05
    )  # at least 5 points of colour range, so equal cells do not blow up the scale
    im = ax.imshow(values, cmap="viridis", vmin=low, vmax=top, aspect="auto")
    mid = (low + top) / 2
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = f"{values[i, j]:.{DIGITS}f}"
            if intervals is not None and np.isfinite(intervals[i, j]).all():
                text += f"\n[{intervals[i, j, 0]:.{DIGITS}f}, {intervals[i, j, 1]:.{DIGITS}f}]"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8 if intervals is not None else 9,
                color="black" if values[i, j] > mid else "white",
            ).set_in_layout(False)  # inside its cell, as the confusion matrix's counts
    if mark is not None:
        ax.add_patch(plt.Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("classifier")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png", metadata=CHART_METADATA)
    plt.close(fig)
    return path


@plain_text
def reliability_png(bins: list[dict], title: str, path: Path) -> Path:
    """A reliability diagram: per bin of top-class confidence, the share predicted right against the mean confidence
    (the diagonal is perfect calibration), with the number of rows of each bin below.

    >>> reliability_png([{"low": 0.0, "high": 0.5, "count": 3, "confidence": 0.4, "accuracy": 0.33}], "run", Path("r.png"))  # doctest: +SKIP
    """
    plt = pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b.get("count")]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.bar(
        [(b["low"] + b["high"]) / 2 for b in full],
        [b["accuracy"] for b in full],
        [b["high"] - b["low"] for b in full],
        edgecolor="black",
        alpha=0.7,
        label="share right",
    )
    ax.plot(
        [b["confidence"] for b in full],
        [b["accuracy"] for b in full],
        "o",
        color="C3",
        label="(mean confidence, share right)",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share predicted right")
    ax.set_title(chart_text(title), fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    hist.bar(centres, [b.get("count", 0) for b in bins], widths, color="grey", edgecolor="black")
    hist.set_xlabel("confidence of the predicted class")
    hist.set_ylabel("rows")
    # fixed margins: its labels are fixed text, and tight_layout's extra draw was a third of this chart's time
    fig.subplots_adjust(left=0.13, right=0.95, top=0.94, bottom=0.09, hspace=0.06)
    fig.savefig(path, dpi=100, format="png", metadata=CHART_METADATA)
    plt.close(fig)
    return path
