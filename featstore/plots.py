"""PNG plots of runs: confusion matrix, the dense head's training curves, and a comparison bar chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = _plt()
    m = np.asarray(matrix)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=60, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves_png(history: dict[str, list[float]], title: str, path: Path) -> Path:
    """Training and validation accuracy and loss per epoch (the lectures' two plots side by side)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        epochs = range(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), "o", label=f"training {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "-", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(f"{title}: {metric}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_png(labels: list[str], scores: dict[str, list[float | None]], path: Path) -> Path:
    """Grouped bars: one group per run, one bar per split's accuracy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.0 + 0.9 * len(labels)), 4))
    width = 0.8 / max(len(scores), 1)
    x = np.arange(len(labels))
    for i, (split, vals) in enumerate(scores.items()):
        ax.bar(x + i * width, [v if v is not None else 0 for v in vals], width, label=split)
    ax.set_xticks(x + width * (len(scores) - 1) / 2, labels, rotation=45, ha="right")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
