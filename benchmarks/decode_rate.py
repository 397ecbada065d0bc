"""How many decode threads one accelerator needs: featstore's decode rate per thread on photo-sized JPEGs.

Decodes the same 500x375 JPEGs as `extract_throughput.py` (EXIF, RGB, JPEG draft, bilinear resize to --size) with
featstore's decoder, in 1 thread and in 2, and prints images/s per thread (median of --repeats). A GPU that runs the
model at R images/s needs about R / (per-thread rate) decode threads (`--decode-threads`, and as many cores).

    python benchmarks/decode_rate.py --size 150 --n 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_throughput import make_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featstore_bench_jpegs")
    args = ap.parse_args()
    from featstore.images.decode import iter_decoded

    root = make_images(args.cache, args.n)
    files = [str(p) for p in sorted((root / "train").glob("*/*.jpg"))[: args.n]]
    for threads in (1, 2):
        rates = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = sum(img is not None for _, img, _ in iter_decoded(files, args.size, threads, 4 * threads))
            rates.append(n / (time.perf_counter() - t))
        med = statistics.median(rates)
        print(
            f"decode {args.n} JPEGs 500x375 -> {args.size}x{args.size}, {threads} thread(s): {med:.0f} img/s, "
            f"{med / threads:.0f} img/s per thread (median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
