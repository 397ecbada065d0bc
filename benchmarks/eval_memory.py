"""Peak memory of a fit's evaluation step at 1,000 classes (issue 21): the step after the model is fitted, where its
validation and test probabilities are computed, calibrated, scored and written to the run's predictions.npz.

Builds once (cached in --dir) a store through featstore's own writer: --rows pooled 512-d float16 rows, 1,000
classes, train / validation / test in the shares --shares gives (the evaluation splits are the large ones: at 80,000
rows, 1,000 classes of float64 probabilities are 640 MB a split). Then, each in a fresh process, fits each of --fits
(``clf:budget``) and reads the process's peak RSS over the evaluation step alone: ``/proc/self/clear_refs`` resets
the high-water mark as ``featstore.experiments.fit._record`` starts, ``VmHWM`` is read as it returns. ``--code``
runs another checkout's featstore (e.g. main, for the figures before a change) on the same store.

    python benchmarks/eval_memory.py                                  # this checkout
    python benchmarks/eval_memory.py --code /work/main                # the same with main's code
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

HERE = Path(__file__).resolve().parent
CLASSES = 1000

FIT = r"""
import json, sys, time
from pathlib import Path

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ":")) / 1024

from featstore.experiments import fit as fit_mod
real, seen = fit_mod._record, {}
def measured(*args, **kwargs):
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak RSS starts again from the current RSS
    seen["start"], t = status("VmRSS"), time.perf_counter()
    try:
        return real(*args, **kwargs)
    finally:
        seen["peak"], seen["seconds"] = status("VmHWM"), time.perf_counter() - t
fit_mod._record = measured
clf, budget = sys.argv[2], sys.argv[3]
params = {"max_iter": [int(sys.argv[5])]} if clf == "logreg" else {"epochs": [1]}
t = time.perf_counter()
rec = fit_mod.fit(sys.argv[1], clf, params, memory_budget=budget, runs=sys.argv[4])
print(json.dumps({**seen, "total": time.perf_counter() - t, "fit_seconds": rec["fit_seconds"], "streamed": rec["streamed"],
                  "T": rec["calibration"].get("T"), "test_acc": rec["metrics"]["test"]["accuracy"],
                  "test_ece": rec["metrics"]["test"]["ece"], "whole_peak": status("VmHWM")}))
"""


def build(path: Path, rows: int, shares: list[float]) -> dict[str, int]:
    """The store (cached): LazyRows of benchmarks/million_build.py, block by block through write_arrays."""
    sys.path.insert(0, str(HERE))
    from million_build import LazyRows, _labels

    from featstore.store import writer

    sizes = {s: int(rows * f) for s, f in zip(("train", "validation", "test"), shares)}
    stamp = path.with_suffix(".json")
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == sizes:
        return sizes
    path.unlink(missing_ok=True)
    names = [f"c{i:03d}" for i in range(CLASSES)]
    for i, (split, n) in enumerate(sizes.items()):
        y = _labels(n, i)
        writer.write_arrays(path, "pooled", split, LazyRows(y, (512,), "float16", seed=7), y, names, batch_size=4096)
    stamp.write_text(json.dumps(sizes))
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--shares", default="0.05,0.475,0.475", help="train,validation,test shares of --rows")
    ap.add_argument("--fits", default="logreg:512MB,sgd:8MB", help="clf:budget, comma-separated")
    ap.add_argument("--max-iter", type=int, default=10, help="logreg's max_iter (the fit is not what is measured)")
    ap.add_argument("--code", type=Path, default=HERE.parent, help="the checkout whose featstore runs the fits")
    ap.add_argument("--dir", type=Path, default=None, help="cache folder (default /work/bench_cache or $TMPDIR)")
    args = ap.parse_args()
    base = args.dir or (
        Path("/work/bench_cache") if Path("/work/bench_cache").is_dir() else Path(tempfile.gettempdir())
    )
    store = base / f"eval-memory-{args.rows}.h5"
    sizes = build(store, args.rows, [float(f) for f in args.shares.split(",")])
    print(
        f"store {store} ({store.stat().st_size / 1e6:.0f} MB): {sizes} rows of 512 float16, {CLASSES} classes; code "
        f"{args.code}; load {os.getloadavg()[0]:.1f}"
    )
    proba_mb = {s: n * CLASSES * 8 / 1e6 for s, n in sizes.items()}
    print(
        f"one split's float64 probabilities: validation {proba_mb['validation']:.0f} MB, test {proba_mb['test']:.0f} MB"
    )
    env = {**os.environ, "PYTHONPATH": str(args.code), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for item in args.fits.split(","):
        clf, budget = item.split(":")
        with tempfile.TemporaryDirectory(dir=base) as runs:
            res = subprocess.run(
                [sys.executable, "-c", FIT, str(store), clf, budget, runs, str(args.max_iter)],
                capture_output=True,
                text=True,
                env=env,
                cwd=tempfile.gettempdir(),
            )
        if res.returncode != 0:
            print(f"  {clf} --memory-budget {budget}: failed\n{res.stderr[-2000:]}")
            continue
        out = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"  {clf:<6} --memory-budget {budget:<6} (streamed={out['streamed']!s:<5}) evaluation step: RSS "
            f"{out['start']:6.0f} MB at its start, peak {out['peak']:6.0f} MB (+{out['peak'] - out['start']:5.0f} MB), "
            f"{out['seconds']:6.1f} s | fit {out['fit_seconds']:.1f} s, T {out['T']}, test acc {out['test_acc']:.4f}, "
            f"ECE {out['test_ece']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
