"""Several layers in one pass: the cost of extracting three VGG16 layers at once, against one layer and three runs.

On the same generated photo-sized JPEGs (500x375), VGG16@150 with random weights (speed does not depend on the
weights), batch 32, it times, interleaved over --repeats rounds (the median of each is printed):

1. one layer (block5_pool, the default cut): `featstore extract` of N images;
2. three layers in one pass (block3_pool, block4_pool, block5_pool): one decode, one forward pass, three groups;
3. the same three layers as three separate extractions (what a user did before).

Printed ratios: (2) / (1), target <= 1.15; and (3) / (1). Model building is included in every timing (each
extraction is one `extract()` call into a fresh store, as a user runs it), so the ratios are per command.

    python benchmarks/multi_layer.py --n 96 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import featstore  # noqa: E402

featstore.quiet_tensorflow()  # TensorFlow's start-up lines hidden, as the featstore command does
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_throughput import make_images  # noqa: E402  (same photo-like JPEGs as the throughput benchmark)

LAYERS = ("block3_pool", "block4_pool", "block5_pool")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="images per extraction")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from featstore import ExtractorConfig, extract

    cfg = dict(model="vgg16", image_size=150, weights="none", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_images(tmp / "imgs", args.n)
        times: dict[str, list[float]] = {"one layer": [], "three layers, one pass": [], "three layers, three runs": []}

        def timed(key: str, configs: list[ExtractorConfig]) -> None:
            t = time.perf_counter()
            for i, c in enumerate(configs):
                extract(
                    data,
                    "train",
                    tmp / f"{key.replace(' ', '_').replace(',', '')}_{len(times[key])}_{i}.h5",
                    c,
                    batch_size=32,
                )
            times[key].append(time.perf_counter() - t)

        for _ in range(args.repeats):
            timed("one layer", [ExtractorConfig(**cfg)])
            timed("three layers, one pass", [ExtractorConfig(**cfg, layers=LAYERS)])
            timed("three layers, three runs", [ExtractorConfig(**cfg, layer=lyr) for lyr in LAYERS])
            for f in tmp.glob("*.h5"):
                f.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:26s} median {med[k]:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in v)})")
    one = med["one layer"]
    print(f"three layers in one pass / one layer: {med['three layers, one pass'] / one:.3f}  (target <= 1.15)")
    print(f"three layers as three runs / one layer: {med['three layers, three runs'] / one:.3f}")


if __name__ == "__main__":
    main()
