"""Out-of-core fits: peak memory of `fit --memory-budget` on a store several times larger than the budget.

Writes a synthetic store (VGG16-shaped (4, 4, 512) float32 rows with a class signal; train --factor times
the budget, validation a tenth of that) through featstore's writer, then, each in a fresh process, measures
peak RSS of: the framework baseline (imports + opening the store, no fit), a streamed fit within the
budget, and (for comparison) the same fit loading everything. Prints them side by side, and the time and peak RSS
of the NaN/inf/far-row check of train (``refuse_nonfinite`` in the budget's blocks: row counts, peaks and, since
attack 81 #1, the usual size of a strided sample of rows, far.SAMPLE at least) and of the far rule's usual size of train alone (each row's mean
exponent, a histogram over rows: a pass of its own where a split's first pass was not made) beside a plain read of the same blocks (``--check-only``: those two lines).

    python benchmarks/out_of_core.py                       # sgd, budget 128MB, store 4.5x the budget
    python benchmarks/out_of_core.py --clf dense --budget 256MB
    python benchmarks/out_of_core.py --check-only          # the far-row check beside a plain read
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from featstore.experiments.streaming import parse_bytes
from featstore.store import writer

SHAPE = (4, 4, 512)
HERE = os.path.dirname(os.path.abspath(__file__))


def make_store(path: Path, rows: dict[str, int], seed: int = 0) -> None:
    """Synthetic ReLU-like features, 10 classes, appended in batches of 256 rows like an extraction."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (10, *SHAPE)).astype(np.float32)
    for split, n in rows.items():
        y = rng.integers(0, 10, n).astype(np.int32)
        X = np.maximum(centers[y] + rng.normal(0, 2.0, (n, *SHAPE)).astype(np.float32), 0)
        writer.write_arrays(path, "synthetic", split, X, y, [f"c{i}" for i in range(10)])


def peak_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts again at exec (ru_maxrss keeps the forking parent's peak)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(code: str, *args: str) -> tuple[float, dict]:
    """Run ``code`` in a fresh interpreter; its peak RSS in MB and the JSON it printed last."""
    wrapped = code + "\nimport json; print(json.dumps({'rss': __import__('out_of_core').peak_mb(), **out}))"
    res = subprocess.run(
        [sys.executable, "-c", wrapped, *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
        },
    )
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return data.pop("rss"), data


BASELINE = (
    "import sys; import featstore, sklearn.linear_model; from featstore import FeatureStore; "
    "clf = sys.argv[2]\nif clf == 'dense':\n    import keras, tensorflow\n"
    "s = FeatureStore(sys.argv[1]); s.split_info('train'); out = {}"
)
FIT = (
    "import sys; from featstore import fit\n"
    "r = fit(sys.argv[1], sys.argv[2], {'epochs': [int(sys.argv[4])]}, memory_budget=(sys.argv[3] if sys.argv[3] != 'none' else None), runs=sys.argv[5])\n"
    "out = {'acc': r['metrics']['validation']['accuracy'], 'streamed': r['streamed'], 'seconds': r['fit_seconds']}"
)
READ = (
    "import sys, time; from featstore import FeatureStore; from featstore.store.nonfinite import reference_sizes\n"
    "fs = FeatureStore(sys.argv[1]); block = int(sys.argv[2]) // 4; t = time.perf_counter()\n"
    "if sys.argv[3] == 'check':\n    fs.refuse_nonfinite('train', max_bytes=block)\n"
    "elif sys.argv[3] == 'usual':\n    reference_sizes(fs, 'synthetic', 'train', block)\n"
    "else:\n    n = sum(len(X) for X, _ in fs.iter_batches('train', max_bytes=block))\n"
    "out = {'seconds': time.perf_counter() - t}"
)


def check_lines(store: Path, budget: int) -> None:
    """The check of train a streamed fit's first pass makes (NaN/inf, large rows, peaks, usual size) and the far rule's
    pass over train for its usual size alone, each beside a plain read of the same
    blocks; peak RSS of each process."""
    runs = {}  # each twice, the second kept: every one with the file in the page cache
    for kind in ("read", "check", "usual") * 2:
        runs[kind] = peak_rss(READ, str(store), str(budget), kind)
    read, r = runs["read"]
    print(f"  plain read of train in blocks of budget/4     {read:8.0f} MB; {r['seconds']:.2f} s")
    for kind, what in (
        ("check", "refuse_nonfinite (NaN/inf/large/sample)"),
        ("usual", "far rule's usual size of train"),
    ):
        rss, t = runs[kind]
        print(
            f"  {what:<44s} {rss:8.0f} MB ({rss - read:+.0f} MB); {t['seconds']:.2f} s "
            f"({t['seconds'] / r['seconds']:.2f} x the plain read)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clf", default="sgd", choices=["sgd", "dense"])
    ap.add_argument("--budget", default="128MB")
    ap.add_argument("--factor", type=float, default=4.5, help="train split size / budget")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--check-only", action="store_true", help="only the far-row check beside a plain read")
    args = ap.parse_args()
    budget = parse_bytes(args.budget)
    row = int(np.prod(SHAPE)) * 4
    rows = {"train": int(args.factor * budget / row), "validation": int(args.factor * budget / row / 10)}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "big.h5"
        make_store(store, rows)
        print(
            f"store: train {rows['train']} rows = {rows['train'] * row / 1e6:.0f} MB ({args.factor}x the {budget / 1e6:.0f} MB budget), "
            f"validation {rows['validation'] * row / 1e6:.0f} MB; file {os.path.getsize(store) / 1e6:.0f} MB"
        )
        if args.check_only:
            return check_lines(store, budget)
        check_lines(store, budget)
        base, _ = peak_rss(BASELINE, str(store), args.clf)
        streamed, s = peak_rss(FIT, str(store), args.clf, args.budget, str(args.epochs), str(Path(tmp) / "runs"))
        loaded, m = peak_rss(FIT, str(store), args.clf, "none", str(args.epochs), str(Path(tmp) / "runs"))
    print(f"{args.clf}, {args.epochs} epochs, peak RSS (fresh process each):")
    print(f"  framework baseline (imports, store opened)    {base:8.0f} MB")
    print(
        f"  fit --memory-budget {args.budget:<8s} (streamed={s['streamed']})  {streamed:8.0f} MB  -> {streamed - base:+.0f} MB over baseline "
        f"(budget {budget / 1e6:.0f} MB: {'within' if streamed - base <= budget / 1e6 else 'OVER'}); val acc {s['acc']:.3f}, {s['seconds']:.1f} s"
    )
    print(
        f"  fit without budget (loads the split)          {loaded:8.0f} MB  -> {loaded - base:+.0f} MB over baseline; val acc {m['acc']:.3f}, {m['seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
