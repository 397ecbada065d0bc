"""The probability figures' intervals of one large split: rows resampled (the bootstrap itself) against resamples drawn
from its normal limit (what featstore uses from ``featstore.stats.figures.NORMAL_ROWS`` rows), side by side in one
process: seconds, and how far apart the two intervals lie in units of their width.

    python benchmarks/bootstrap_rows.py --rows 800000          # a 10⁶-image store's train split
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from featstore.stats import figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=800_000)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, k = args.rows, args.classes
    right = rng.random(n) < 0.9
    conf = np.clip(rng.beta(8, 2, n), 1e-6, 1)
    rows = figures.RowFigures(-np.log(np.where(right, conf, (1 - conf) / (k - 1))), conf, right, rng.random(n))
    timed = {}
    for name, limit in (("rows resampled", n + 1), ("normal limit", 1)):
        figures.NORMAL_ROWS = limit
        t = time.perf_counter()
        timed[name] = (figures.probability_figures(None, rows), time.perf_counter() - t)
    (a, ta), (b, tb) = timed["rows resampled"], timed["normal limit"]
    print(f"{n} rows, {time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}")
    print(f"  rows resampled {ta:8.2f} s | normal limit {tb:6.3f} s | {ta / tb:7.0f}x")
    for key in ("log_loss_ci", "top5_ci", "ece_ci"):
        w = a[key]["high"] - a[key]["low"]
        print(
            f"  {key:12s} rows [{a[key]['low']:.5f}, {a[key]['high']:.5f}]  limit [{b[key]['low']:.5f}, "
            f"{b[key]['high']:.5f}]  ends apart by {abs(a[key]['low'] - b[key]['low']) / w:.3f} and "
            f"{abs(a[key]['high'] - b[key]['high']) / w:.3f} of the width"
        )


if __name__ == "__main__":
    main()
