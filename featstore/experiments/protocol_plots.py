"""Charts of the probe and few-shot protocols: validation accuracy along C with each test accuracy and its
interval, and the few-shot curve (mean ± sd over trials against images per class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.outputs import CHART_METADATA
from featstore.plots import chart_text, plain_text, pyplot


@plain_text
def probe_png(summary: dict, path: str | Path) -> Path:
    """Left: validation accuracy against C per extractor (the chosen C ringed). Right: test accuracy of each
    extractor's linear and kNN probe with its 95 % Wilson interval.

    >>> probe_png(probe("layers.h5"), Path("probe.png"))   # doctest: +SKIP
    """
    plt = pyplot()
    cells = summary["cells"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.45 * len(cells) + 2.5)))
    for c in cells:
        pts = sorted(c["linear"]["grid"], key=lambda p: p["C"])
        (line,) = left.plot(
            [p["C"] for p in pts],
            [p["validation"] for p in pts],
            "-o",
            markersize=3,
            label=chart_text(c["extractor"]),
        )
        left.plot(
            [c["linear"]["C"]],
            [c["linear"]["validation"]],
            "o",
            markersize=11,
            fillstyle="none",
            color=line.get_color(),
        )
    left.set_xscale("log")
    left.set_xlabel("C (inverse L2 strength)")
    left.set_ylabel("validation accuracy")
    left.set_title("linear probe: validation accuracy along the C grid (ringed: chosen)", fontsize=9)
    left.legend(fontsize=7)
    labels, est, lo, hi = [], [], [], []
    for c in cells:
        for kind, name in (("linear", f"linear C={c['linear']['C']:.3g}"), ("knn", "kNN k={k}")):
            cell = c[kind]
            if cell is None:
                continue
            ci = cell["test_ci"]
            labels.append(f"{chart_text(c['extractor'])}  {name.format(k=cell.get('k'))}")
            est.append(ci["estimate"])
            lo.append(max(0.0, ci["estimate"] - ci["low"]))  # rounding can put a bound a hair past 0 or 1
            hi.append(max(0.0, ci["high"] - ci["estimate"]))
    ys = np.arange(len(labels))[::-1]
    right.errorbar(est, ys, xerr=[lo, hi], fmt="o", capsize=3)
    right.set_yticks(ys, labels, fontsize=7)
    right.set_xlabel("test accuracy (95 % Wilson interval)")
    refit = "refitted on train + validation" if summary.get("refit") else "fitted on train"
    right.set_title(f"{chart_text(summary['id'])}: test, read once after the choice ({refit})", fontsize=9)
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png", metadata=CHART_METADATA)  # path: a temporary name
    plt.close(fig)
    return Path(path)


@plain_text
def fewshot_png(summary: dict, path: str | Path) -> Path:
    """Test accuracy against images per class: each trial a dot, the mean a line, ± sd a band, the mean's 95 %
    interval as error bars (none where a k is one fit: marked "one fit"); a log axis for the shots."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = summary["points"]
    shots = np.array([p["shots"] for p in pts], dtype=float)
    mean = np.array([p["mean"] for p in pts])
    sd = np.array([np.nan if p["sd"] is None else p["sd"] for p in pts])  # None: one fit, no spread (no band)
    for p in pts:
        ax.plot([p["shots"]] * len(p["trials"]), p["trials"], ".", color="grey", alpha=0.5)
        if p.get("draws", 2) == 1 and summary["trials"] > 1:  # every trial the same images: say so, draw no bar
            ax.annotate("one fit", (p["shots"], p["mean"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.fill_between(shots, mean - sd, mean + sd, alpha=0.2, label="± sd over distinct draws")
    # no interval (one fit or one trial): NaN draws no bar; a 0-length bar read as certainty (attack 63 #3)
    lo = np.array([max(0.0, p["mean"] - p["mean_ci"]["low"]) if p["mean_ci"] else np.nan for p in pts])
    hi = np.array([max(0.0, p["mean_ci"]["high"] - p["mean"]) if p["mean_ci"] else np.nan for p in pts])
    ax.errorbar(shots, mean, yerr=[lo, hi], fmt="-o", capsize=3, label="mean (95 % interval of the mean)")
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(int(s)) for s in shots])
    ax.set_xlabel("training images per class (k)")
    ax.set_ylabel(f"accuracy on {chart_text(repr(summary['splits']['test']))}")
    ax.set_title(
        f"{chart_text(summary['id'])}: {chart_text(summary['clf'])} on {chart_text(summary['extractor'])}, "
        f"{summary['trials']} trials (seed {summary['seed']})",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png", metadata=CHART_METADATA)  # path: a temporary name
    plt.close(fig)
    return Path(path)
