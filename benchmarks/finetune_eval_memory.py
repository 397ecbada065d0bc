"""Peak memory of the evaluation ``featstore finetune`` makes as it records its run (issue 21): validation and test
of --rows rows x --classes classes, streamed (``experiments.finetune.evaluate_splits``: a batch of images at a time)
or ``--whole`` (the calls the fine-tuning made before: ``split_proba`` of each split, ``calibrate_on_validation``,
``run_metrics`` and ``PredictionsWriter.add`` of the whole arrays).

Keras and the image decoder are not the subject: a synthetic model gives each row a seeded random softmax (the right
class lifted) and the image batches are row numbers (``kinds.image_batches`` replaced), so both modes see the same
probabilities and must give the same temperature and figures. Peak RSS over the call alone (``/proc/self/clear_refs``
resets the high-water mark as the call starts, ``VmHWM`` is read as it returns; featstore's imports are not counted,
scikit-learn's import inside the figures is).

    python benchmarks/finetune_eval_memory.py --rows 100000            # streamed
    python benchmarks/finetune_eval_memory.py --rows 100000 --whole    # as before
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from featstore.runs import apply, kinds
from featstore.runs.apply import SplitImages
from featstore.runs.predictions_file import EVAL_BUDGET, PredictionsWriter
from featstore.runs.record import digest_paths


def _row_batches(images, size, batch, order, workers):
    """Row numbers in place of decoded images, ``batch`` at a time."""
    for a in range(0, len(images.labels), batch):
        rows = np.arange(a, min(a + batch, len(images.labels)))
        yield rows, images.labels[rows]


class _Model:
    """A fine-tuned model's stand-in: each row's probabilities from its own seed."""

    image_size = 8

    def __init__(self, classes: int):
        self.classes = classes

    def proba(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.classes))
        for i, r in enumerate(rows):
            z = np.random.default_rng(int(r)).normal(size=self.classes)
            z[int(r) % self.classes] += 3.0
            e = np.exp(z - z.max())
            out[i] = e / e.sum()
        return out


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) // 1024 for line in fh if line.startswith(key))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20000, help="rows of validation and of test")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--whole", action="store_true", help="the whole-array calls finetune made before")
    args = ap.parse_args()
    kinds.image_batches = apply.image_batches = _row_batches
    names, model = [f"c{i}" for i in range(args.classes)], _Model(args.classes)
    labels = np.arange(args.rows) % args.classes
    images = {
        s: SplitImages(Path("."), [f"{s}/{i}.png" for i in range(args.rows)], labels) for s in ("validation", "test")
    }
    preds = PredictionsWriter(Path(tempfile.mkdtemp()) / "predictions.npz")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    start, t = _status("VmRSS"), time.perf_counter()
    if args.whole:
        from featstore.experiments.calibration import calibrate_on_validation
        from featstore.experiments.evaluate import run_metrics

        probas = {s: (apply.split_proba(im, 8, 2, model.proba), im.labels) for s, im in images.items()}
        cal = calibrate_on_validation(*probas["validation"])
        evaluated = {s: run_metrics(y, p.argmax(axis=1), names, p, cal) for s, (p, y) in probas.items()}
        for s, (p, y) in probas.items():
            preds.add(s, p, y, digest_paths(images[s].paths), "")
    else:
        from featstore.experiments.finetune import evaluate_splits

        listings = dict.fromkeys(images, "")
        evaluated, cal = evaluate_splits(preds, images, listings, model, names, 2, EVAL_BUDGET, lambda s, p: None)
    preds.close()
    said = {s: {k: m[k] for k in ("accuracy", "log_loss", "ece")} for s, m in evaluated.items()}
    peak, seconds = _status("VmHWM"), time.perf_counter() - t
    print(json.dumps({"whole": args.whole, "rows": args.rows, "added_MB": peak - start, "seconds": round(seconds, 1)}))
    print(json.dumps({"T": cal["T"], **said}))


if __name__ == "__main__":
    main()
