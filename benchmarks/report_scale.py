"""`featstore report` and `featstore similar` on a store of 100,000 rows: time and peak memory.

Writes a synthetic store (10 classes, ReLU-like rows of --dims values with a class signal, like a pooled VGG16
layer) through featstore's writer, with a real 28x28 PNG for every row (so thumbnails are decoded from files), fits
a logreg run and checks leaks; then, each command in a fresh process, measures wall time and peak RSS of:

- `featstore report` the first time (thumbnails decoded, the map laid out, the leak pairs found again) and again
  (everything from the cache beside the store);
- `featstore similar --build-index`, then queries with the index (in one process: the median of 20 queries, and
  the whole command) and without it (exact, streamed).

    python benchmarks/report_scale.py                       # 100,000 rows of 512 values, map of 5,000 rows
    python benchmarks/report_scale.py --rows 20000 --dims 2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [f"class{i}" for i in range(10)]
# Peak RSS is VmHWM (per address space): ru_maxrss would carry the parent's peak across fork and exec.
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
MEASURE = f"""
import json, sys, time
from featstore.cli import app
t = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps({{"seconds": time.perf_counter() - t, "rss_mb": {HWM}}}), file=sys.stderr)
"""
QUERIES = f"""
import json, sys, time
import numpy as np
from featstore import FeatureStore, similar
store = sys.argv[1]
paths = FeatureStore(store).paths("test")
times = []
for p in paths[:20]:
    t = time.perf_counter()
    r = similar(p, store, k=12)
    times.append(time.perf_counter() - t)
print(json.dumps({{"median_s": float(np.median(times)), "max_s": max(times), "method": r.method, "rss_mb": {HWM}}}))
"""


def make_store(folder: Path, rows: int, dims: int, seed: int = 0) -> Path:
    """train 80 %, validation and test 10 % each; an image per row under folder/data."""
    from featstore.store.locking import StoreFile
    from featstore.store.writer import SplitWriter, synthetic_attrs

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(CLASSES), dims)).astype(np.float32)
    store, root = folder / "features.h5", folder / "data"
    sizes = {"train": rows * 8 // 10, "validation": rows // 10, "test": rows - rows * 8 // 10 - rows // 10}
    for split, n in sizes.items():
        y = rng.integers(0, len(CLASSES), n).astype(np.int32)
        paths = [f"{split}/{CLASSES[c]}/{i:06d}.png" for i, c in enumerate(y)]
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for p, c in zip(paths, y):
            im = rng.integers(0, 90, (28, 28), dtype=np.uint8)
            im[4 + c : 14 + c, 6:22] += 120  # a class-dependent bar
            Image.fromarray(im).save(root / p, compress_level=1)
        attrs = {
            "class_names": CLASSES,
            "source_root": str(root),
            "n_images": n,
            "n_ignored": 0,
            "listing_sha256": f"synthetic:{n}",
            "batch_size": 4096,
            "compression": "none",
        }
        w = SplitWriter(StoreFile(store), ["synthetic"], split)
        w.prepare([synthetic_attrs((dims,), "float32", "synthetic")], attrs, overwrite=True)
        for i in range(0, n, 4096):
            j = min(i + 4096, n)
            X = np.maximum(centres[y[i:j]] + rng.normal(0, 2.0, (j - i, dims)).astype(np.float32), 0)
            w.commit([X], y[i:j], paths[i:j], [], j)
        w.finish(0.0)
    return store


def measured(*args: str) -> dict:
    """One featstore command in a fresh process: its wall seconds and peak RSS (MB)."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-3000:])
    return {**json.loads(res.stderr.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dims", type=int, default=512)
    ap.add_argument("--map-rows", type=int, default=5000)
    ap.add_argument("--folder", type=Path, default=None, help="work here (default: a temporary folder)")
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="report-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    store = folder / "features.h5"
    if not store.exists():
        store = make_store(folder, args.rows, args.dims)
    made = time.perf_counter() - t
    from featstore import find_leaks, fit, list_runs

    t = time.perf_counter()
    if not list_runs(store):
        fit(store, "logreg")
    fitted = time.perf_counter() - t
    t = time.perf_counter()
    find_leaks(store)
    leaks = time.perf_counter() - t
    store_mb = store.stat().st_size / 2**20
    print(
        f"store: {args.rows} rows x {args.dims} float32 ({store_mb:.0f} MB) and {args.rows} PNGs made in {made:.0f} s; "
        f"logreg fitted in {fitted:.0f} s; leaks in {leaks:.0f} s"
    )
    out = str(folder / "site")
    common = ["--store", str(store), "--out", out, "--map-rows", str(args.map_rows)]
    first, second = measured("report", *common), measured("report", *common)
    site_mb = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()) / 2**20
    pages = sum(1 for _ in Path(out).rglob("*.html"))
    thumbs = sum(1 for _ in (folder / "features.h5.cache" / "thumbs").rglob("*.png"))
    print(
        f"report, first:  {first['seconds']:6.1f} s, peak RSS {first['rss_mb']:5.0f} MB "
        f"({pages} pages, {thumbs} thumbnails decoded, site {site_mb:.0f} MB)"
    )
    print(
        f"report, again:  {second['seconds']:6.1f} s, peak RSS {second['rss_mb']:5.0f} MB (thumbnails, map, pairs cached)"
    )
    query = "test/" + "/".join(next(iter(sorted((folder / "data" / "test").rglob("*.png")))).parts[-2:])
    built = measured("similar", query, "--store", str(store), "--build-index")
    print(f"similar --build-index: {built['seconds']:6.1f} s, peak RSS {built['rss_mb']:5.0f} MB")
    res = subprocess.run([sys.executable, "-c", QUERIES, str(store)], capture_output=True, text=True, check=True)
    q = json.loads(res.stdout.strip().splitlines()[-1])
    print(
        f"similar with the index: median {q['median_s']:.3f} s, slowest {q['max_s']:.3f} s of 20 queries ({q['method']})"
    )
    cli = measured("similar", query, "--store", str(store))
    exact = measured("similar", query, "--store", str(store), "--exact")
    for what, m in (("with the index", cli), ("exact search:  ", exact)):
        print(
            f"similar command {what}: {m['seconds']:.2f} s ({m['wall_s']:.2f} s with Python's start-up), "
            f"peak RSS {m['rss_mb']:.0f} MB"
        )
    print(f"(cpus {os.cpu_count()}; work folder {folder})")


if __name__ == "__main__":
    main()
