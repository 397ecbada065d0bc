"""Engines side by side: local, local --jit, Ray with 1 and 2 workers, each as a ratio to model-only throughput.

On the same photo-sized JPEGs as `extract_throughput.py` (500x375, cached), one backbone and batch size, in one
process and interleaved over --repeats rounds (the machine is shared and noisy: medians and ratios, not single
times), it prints images/s of:

- model only: preprocess + forward pass on images already decoded and resized in memory (uncompiled model);
- local:      `extract()` with the local engine (decode threads ahead of the model, one commit per batch);
- local+jit:  the same with `jit=True` (XLA compile and its check happen at start-up, outside the timed loop);
- ray x1/x2:  `engine="ray"` with 1 or 2 actors on a local Ray started once here (`ray.init`, all CPUs).

Targets (issue 13): local+jit >= 1.05 x local on vgg16@150; ray x1 >= 0.9 x local. Every engine is measured the same
way, from the wall time of whole `extract()` calls: a run of one batch and a run of --n images, so
rate = (n - batch) / (wall(n) - wall(batch)) and start-up = wall(batch) - batch / rate. Start-up is printed separately:
listing and model build (local), plus XLA compile and its check (jit), and for Ray `ray.init` (once, in this process)
plus per run the checks, actors starting, importing TensorFlow and building the model. (Ray Data computes ahead of
the driver, so a rate taken inside the driver's loop would not be the engine's.) Weights are random (`--weights none`).

    python benchmarks/scale_out.py                                  # vgg16@150, 96 images, batch 16, 3 repeats
    python benchmarks/scale_out.py --model mobilenet_v2 --size 128 --n 64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_throughput import make_images, model_only, subset  # noqa: E402  (same images, same model-only loop)


def run_extract(data: Path, model: str, size: int, batch: int, **kwargs):
    """One extraction into a fresh store; the ExtractResult."""
    from featstore import ExtractorConfig, extract

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r = extract(
            data,
            "train",
            Path(tmp) / "f.h5",
            ExtractorConfig(model=model, image_size=size, weights="none"),
            batch_size=batch,
            progress=False,
            **kwargs,
        )
        return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument(
        "--n", type=int, default=96, help="images per run (a multiple of --batch-size: no XLA compile for a tail batch)"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true", help="local and local+jit only")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featstore_bench_jpegs")
    args = ap.parse_args()
    import numpy as np

    from featstore import Extractor, ExtractorConfig, load_image
    from featstore.extraction.ray import RayOptions

    full = make_images(args.cache, args.n)
    ray_init_s = None
    if not args.no_ray:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - t
    engines = {"local": {}, "local+jit": {"jit": True}}
    if not args.no_ray:
        engines.update(
            {
                "ray x1": {"engine": "ray", "ray_options": RayOptions(workers=1)},
                "ray x2": {"engine": "ray", "ray_options": RayOptions(workers=2)},
            }
        )
    rates: dict[str, list[float]] = {"model only": [], **{k: [] for k in engines}}
    startup: dict[str, list[float]] = {k: [] for k in engines}
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(full, Path(tmp) / "n", args.n)
        one = subset(full, Path(tmp) / "b", args.batch_size)
        files = sorted((data / "train").glob("*/*.jpg"))
        t = time.perf_counter()
        ex = Extractor(ExtractorConfig(model=args.model, image_size=args.size, weights="none"))
        build_s = time.perf_counter() - t
        imgs = np.stack([load_image(p, args.size) for p in files])
        ex(imgs[: args.batch_size])  # warm-up
        for rep in range(args.repeats):  # interleaved: machine noise hits every engine alike
            rates["model only"].append(model_only(ex, imgs, args.batch_size))
            for name, kw in engines.items():
                r1, w1 = run_extract(one, args.model, args.size, args.batch_size, **kw)
                r, w = run_extract(data, args.model, args.size, args.batch_size, **kw)
                assert (r1.rows, r.rows) == (args.batch_size, args.n), (name, r1.rows, r.rows)
                rate = (args.n - args.batch_size) / max(w - w1, 1e-9)
                rates[name].append(rate)
                startup[name].append(w1 - args.batch_size / rate)
            print(
                f"  round {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()) + " img/s", flush=True
            )
    med = {k: statistics.median(v) for k, v in rates.items()}
    mo, local = med["model only"], med["local"]
    print(
        f"{args.model}@{args.size}, batch {args.batch_size}, {args.n} JPEGs 500x375, {os.cpu_count()} CPUs, median of {args.repeats}:"
    )
    for k, v in med.items():
        extra = "" if k == "model only" else f"  start-up {statistics.median(startup[k]):.1f} s (not in the rate)"
        print(f"  {k:<11} {v:6.2f} img/s  / model-only = {v / mo:.3f}  / local = {v / local:.3f}{extra}")
    print(f"  target: local+jit / local >= 1.05 -> {med['local+jit'] / local:.3f}")
    if not args.no_ray:
        print(f"  target: ray x1 / local >= 0.9 -> {med['ray x1'] / local:.3f}")
        print(
            f"  Ray start-up: ray.init {ray_init_s:.1f} s once; per run (checks, actors built, first batch) "
            f"x1 {statistics.median(startup['ray x1']):.1f} s, x2 {statistics.median(startup['ray x2']):.1f} s; "
            f"local model build {build_s:.1f} s"
        )
    print(
        json.dumps(
            {
                "median_img_s": med,
                "startup_s": {k: statistics.median(v) for k, v in startup.items()},
                "ray_init_s": ray_init_s,
            }
        )
    )


if __name__ == "__main__":
    main()
