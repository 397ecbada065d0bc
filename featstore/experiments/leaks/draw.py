"""The pairs ``featstore leaks`` found, as a CSV and as a PNG of images side by side; both written whole or not at all."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from featstore.experiments.leaks.result import LeakPair, LeakReport
from featstore.outputs import (
    CHART_METADATA,
    check_own_output,
    csv_cell,
    starts_with,
    terminal_safe,
    write_atomic,
    write_text,
)

logger = logging.getLogger(__name__)


HEADER = ",".join(LeakPair._fields)  # the first line of every leaks CSV (how one is known again)


def is_leaks_csv(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with a leaks CSV's header line (what ``leaks --out`` may replace)."""
    return starts_with(path, HEADER.encode() + b"\r\n", HEADER.encode() + b"\n")


def leaks_csv(report: LeakReport, out: str | os.PathLike) -> Path:
    """Every reported pair as CSV ``query_split,query_path,train_path,similarity,same_label,same_bytes``.

    ``out`` must end in ``.csv`` and, when it exists, be an earlier leaks CSV (:func:`is_leaks_csv`): a saved model or
    a script there is refused, never replaced. Written to a temporary file and renamed (never through a link, never
    half a file); text cells are neutralised for spreadsheets (:func:`~featstore.outputs.csv_cell`); file names that are not UTF-8 keep their bytes.

    >>> leaks_csv(find_leaks("features.h5"), "leaks.csv")       # doctest: +SKIP
    PosixPath('leaks.csv')
    """
    check_own_output(out, "--out", "a leaks CSV", (".csv",), is_leaks_csv)
    lines = [HEADER]
    lines += [
        ",".join(
            (
                csv_cell(p.query_split),
                csv_cell(p.query_path),
                csv_cell(p.train_path),
                f"{p.similarity:.6f}",
                str(bool(p.same_label)),
                str(bool(p.same_bytes)),
            )
        )
        for p in report.pairs
    ]
    return write_text(out, "\r\n".join(lines) + "\r\n", "--out")


def _short(text: str, n: int = 38) -> str:
    """A path shortened from the left to n characters."""
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def _picture(root: str, rel: str, side: int) -> tuple[np.ndarray, str]:
    """The image as shown (square, like the model saw it), or a grey placeholder and the reason it is missing."""
    from featstore.images.listing import ImageError, load_image

    if not root:
        return np.full((side, side, 3), 200, np.uint8), "no source_root recorded"
    path = os.path.join(root, rel)
    try:
        return load_image(path, side), ""
    except (ImageError, OSError) as exc:
        why = "not found" if not os.path.lexists(path) else str(exc) or type(exc).__name__
        return np.full((side, side, 3), 200, np.uint8), why


def _changed_pictured(report: LeakReport, pairs: list[LeakPair]) -> set[tuple[str, str]]:
    """``(split, stored path)`` of the pictured rows whose file changed since extraction (another picture at that
    path now: :func:`featstore.store.changed.changed_rows`); empty when the store cannot be read again."""
    from featstore.errors import FeatstoreError
    from featstore.store.changed import changed_rows
    from featstore.store.reader import FeatureStore

    wanted: dict[str, set[str]] = {}
    for p in pairs:
        wanted.setdefault(p.query_split, set()).add(p.query_path)
        wanted.setdefault(report.reference, set()).add(p.train_path)
    out: set[tuple[str, str]] = set()
    try:
        fs = FeatureStore(report.store)
        for split, rels in wanted.items():
            paths = fs.paths(split, report.extractor)
            rows = [i for i, q in enumerate(paths) if q in rels]
            mask = changed_rows(fs, report.extractor, split, rows=rows)
            out |= {(split, paths[r]) for r, c in zip(rows, mask) if c}
    except (FeatstoreError, OSError):
        return set()
    return out


def leaks_png(report: LeakReport, out: str | os.PathLike, top: int = 10, what: str = "--png") -> tuple[Path, list[str]]:
    """The ``top`` most similar pairs side by side (query left, training image right), as a PNG at exactly ``out``.

    With no pair flagged, the nearest pairs below the threshold are drawn (titled so). Images are read from each
    split's ``source_root``; one that cannot be read becomes a placeholder naming the reason, and is listed in the
    second return value. Titles are drawn as plain text (a ``$`` in a file name is not mathtext). The file is
    written through :func:`~featstore.outputs.write_atomic`: an OSError is one OutputError naming ``out``.

    >>> png, missing = leaks_png(find_leaks("features.h5"), "leaks.png")   # doctest: +SKIP
    """
    from featstore.plots import pyplot

    plt = pyplot()
    pairs, note = (report.pairs[:top], "") if report.pairs else (report.near_misses[:top], " (below the threshold)")
    missing: list[str] = []
    changed = _changed_pictured(report, list(pairs))  # not the image extracted: a placeholder, not that picture
    height = 0.5 + 2.6 * max(len(pairs), 1)
    plain = {"parse_math": False}
    fig, axes = plt.subplots(max(len(pairs), 1), 2, figsize=(6, height), squeeze=False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")  # a file name in another script
            for ax in axes.ravel():
                ax.set_axis_off()
            if not pairs:
                axes[0, 0].text(
                    0.5, 0.5, "no rows to compare", ha="center", va="center", transform=axes[0, 0].transAxes
                )
            for row, p in zip(axes, pairs):
                for ax, split, rel in ((row[0], p.query_split, p.query_path), (row[1], report.reference, p.train_path)):
                    if (split, rel) in changed:
                        img, why = np.full((128, 128, 3), 200, np.uint8), "changed since extraction"
                    else:
                        img, why = _picture(report.source_roots.get(split, ""), rel, 128)
                    ax.imshow(img)
                    if why:
                        missing.append(f"{split}:{rel} ({why})")
                        ax.text(
                            0.5,
                            0.5,
                            "image missing:\n" + terminal_safe(why)[:40],
                            ha="center",
                            va="center",
                            fontsize=7,
                            transform=ax.transAxes,
                            **plain,
                        )
                    ax.set_title(_short(terminal_safe(rel)), fontsize=7, **plain)
                label = "same bytes" if p.same_bytes else f"similarity {p.similarity:.4f}"
                row[0].text(
                    1.1,
                    -0.08,
                    label + ("" if p.same_label else ", OTHER LABEL"),
                    ha="center",
                    fontsize=8,
                    transform=row[0].transAxes,
                )
            fig.suptitle(
                f"{terminal_safe(report.extractor)}: nearest {terminal_safe(report.reference)} rows{note}, "
                f"threshold {report.threshold:.4g}",
                fontsize=9,
                **plain,
            )
            fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / height))  # leave the suptitle its own strip
            path = write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata=CHART_METADATA), what)
    finally:
        plt.close(fig)
    for m in missing:
        logger.debug("leaks PNG: placeholder for %s", terminal_safe(m))
    return path, missing
