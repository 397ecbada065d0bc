"""Random bit flips in a small store's HDF5 global heap collections (issue #19: a few flipped bits made HDF5 loop forever
reading a string). Each case runs ``info``, ``check``, ``paths`` and ``load`` in this process, each case bounded by
faulthandler (a hang ends the run with every thread's traceback); it prints how many cases read fine, how many were
refused in featstore's one line (and how many of those named a damaged heap), and fails on any other exception.
The test suite runs the same loop on a few cases (tests/test_global_heap.py).

    PYTHONPATH=. python benchmarks/heap_fuzz.py --cases 300 --seed 19
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_global_heap import DAMAGED, READERS, _store, flips, fuzz_case  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--limit", type=float, default=20.0, help="seconds a case may take before the run is ended")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = _store(Path(tmp) / "s.h5")
        original, tally, slowest = path.read_bytes(), collections.Counter(), 0.0
        began = time.perf_counter()
        for data in flips(original, random.Random(args.seed), args.cases):
            path.write_bytes(data)
            faulthandler.dump_traceback_later(args.limit, exit=True)
            t = time.perf_counter()
            said = fuzz_case(path, READERS)
            slowest = max(slowest, time.perf_counter() - t)
            tally["fine" if said == "ok" else "damaged heap" if DAMAGED in said else "other one-line error"] += 1
        faulthandler.cancel_dump_traceback_later()
    print(f"{args.cases} cases (seed {args.seed}) in {time.perf_counter() - began:.1f} s, slowest {slowest:.2f} s:")
    for kind, n in sorted(tally.items()):
        print(f"  {kind:22s} {n}")


if __name__ == "__main__":
    main()
