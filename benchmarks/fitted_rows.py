"""The rows rule's cost (``featstore.runs.fittedrows``, attack 71 #5): which rows of a split are rows of the training
split, at --rows rows each, beside a plain ``np.unique`` of the same rows read the same way (the floor of finding equal
rows). Each figure is measured in a fresh process, its peak RSS printed too.

    python benchmarks/fitted_rows.py                         # 10⁶ rows of 2 float32 (narrow: the worst per byte)
    python benchmarks/fitted_rows.py --dim 512 --rows 200000 # wide rows
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from out_of_core import peak_rss  # noqa: E402

RULE = """import sys, time
from featstore.runs.fittedrows import fitted_rows
import featstore.store.reader  # imported before the clock, as the floor imports it
t = time.perf_counter()
got = fitted_rows(sys.argv[1], "first", "train", ["test"])
out = {"seconds": time.perf_counter() - t, "got": {k: list(v) for k, v in got.items()}}"""
UNIQUE = """import sys, time, numpy as np
from featstore.store.reader import FeatureStore
t = time.perf_counter()
fs = FeatureStore(sys.argv[1])
X = np.concatenate([fs.load(s, "first")[0] for s in ("train", "test")])
rows = np.ascontiguousarray(X.reshape(len(X), -1)).view(np.dtype((np.void, X[0].nbytes)))
n = len(np.unique(rows))
out = {"seconds": time.perf_counter() - t, "unique": int(n)}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of train, and of test (half of them train's)")
    ap.add_argument("--dim", type=int, default=2, help="float32 features a row")
    args = ap.parse_args()
    from featstore.store.writer import write_arrays

    rng = np.random.default_rng(0)
    n, half = args.rows, args.rows // 2
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.h5"
        X = rng.normal(size=(n, args.dim)).astype(np.float32)
        y = rng.integers(0, 10, n)
        write_arrays(path, "first", "train", X, y, [str(i) for i in range(10)])
        other = rng.normal(size=(n - half, args.dim)).astype(np.float32)
        write_arrays(path, "first", "test", np.concatenate([X[:half], other]), y, [str(i) for i in range(10)])
        del X, other
        print(f"{n:,} rows of {args.dim} float32 each in train and test ({half:,} shared), "
              f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
        for name, code in (("rows rule (fitted_rows)", RULE), ("np.unique of the same rows", UNIQUE)):
            rss, out = peak_rss(code, str(path))
            extra = out.get("got", out.get("unique"))
            print(f"  {name:28s} {out['seconds']:6.2f} s, peak RSS {rss:6.0f} MB  ({extra})")


if __name__ == "__main__":
    main()
