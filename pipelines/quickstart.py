"""The README's Quick start as one script: extract the bundled sample, run the same fits, print the results table.

The README's "Quick start results" table is this script's output, pasted with its date. Extraction is skipped
for splits that are already complete in ``--store`` (so it can reuse the store the Quick start commands made).
Every fit is seeded, so a re-run on the same machine prints the same table. Example::

    python pipelines/quickstart.py                       # data/fashion_mnist, HED VGG16 trunk, features.h5
    python pipelines/quickstart.py --store /tmp/q.h5 --runs /tmp/q.runs
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The Quick start's fits, as (label, classifier, parameters); the README lists the same commands.
FITS = [
    ("logreg", "logreg", {}),
    ("svm (linear or rbf, chosen on validation)", "svm", {"kernel": ["linear", "rbf"]}),
    ("dense head (30 epochs, lr 1e-4)", "dense", {"epochs": [30], "lr": [1e-4]}),
]


def run(data: Path, store: Path, runs: Path | None, weights: str) -> list[tuple[str, dict]]:
    """Extract what is missing, fit each classifier and the ensemble of all three; returns (label, run record)."""
    from featstore import ExtractorConfig, ensemble, extract, fit

    cfg = ExtractorConfig(model="vgg16", weights=weights)
    for split in ("train", "validation", "test"):
        extract(data, split, store, cfg)
    done = [(label, fit(store, clf, params, runs=runs)) for label, clf, params in FITS]
    done.append(("ensemble of the three (mean probability)", ensemble([r["id"] for _, r in done], store=store, runs=runs)))
    return done


def table(results: list[tuple[str, dict]], weights_description: str, n: dict) -> str:
    """The Markdown table the README quotes."""
    lines = [f"Quick start results ({time.strftime('%Y-%m-%d')}, `python pipelines/quickstart.py`): VGG16 at 150x150, "
             f"weights {weights_description}; {n['train']} train / {n['validation']} validation / {n['test']} test images.",
             "",
             "| classifier | validation accuracy | test accuracy |",
             "| --- | --- | --- |"]
    for label, rec in results:
        m = rec["metrics"]
        lines.append(f"| {label} | {m['validation']['accuracy']:.2f} | {m['test']['accuracy']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/fashion_mnist"), help="data root with train/validation/test")
    ap.add_argument("--store", type=Path, default=Path("features.h5"), help="store to extract into (reused when complete)")
    ap.add_argument("--runs", type=Path, default=None, help="runs folder (default: beside the store)")
    ap.add_argument("--weights", default="hed-bsds500", help="weights for VGG16 (default: the HED trunk, offline; not ImageNet)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from featstore import FeatureStore

    results = run(args.data, args.store, args.runs, args.weights)
    fs = FeatureStore(args.store)
    n = {s: fs.split_info(s)["committed_rows"] for s in ("train", "validation", "test")}
    print(table(results, fs.metadata()["weights_description"], n))


if __name__ == "__main__":
    main()
