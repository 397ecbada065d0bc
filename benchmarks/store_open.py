"""How long does opening a store take? The metadata read every reading command starts with, timed in one process.

Two stores are made once (with the code of this checkout): ``small``, one extractor with a train split (12 images,
as the suite's ``tiny_train``), and ``3x3``, three extractors (other layers and poolings) each with train, validation
and test. For each, the median over ``--repeats`` runs of:

- ``open``: ``FeatureStore(path)``, the one opening that reads and validates every extractor's and split's attributes
  (what ``fit``, ``predict``, ``runs`` and the report start with);
- ``info``: ``FeatureStore(path).info()``, what ``featstore info`` reads (the opening, then ``describe``: labels read
  and counted per split).

``--code DIR`` (repeatable) times the featstore of another checkout on the same stores, each in its own fresh process,
the checkouts taking turns, so a change is measured side by side with the revision it started from (the timing loop is
this file's, run with ``PYTHONPATH=DIR``). Timings depend on the machine and its load: compare figures of one run;
the CPU time (``cpu`` columns: the process's, not the clock's) is the steadier figure on a loaded machine.

    python benchmarks/store_open.py                              # this checkout, 30 repeats
    python benchmarks/store_open.py --code /path/to/main --code . # main and this checkout, side by side
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TIMER = """
import json, statistics, sys, time
from featstore.store.reader import FeatureStore
import featstore
paths, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
out = {"code": featstore.__file__}
for label, path in paths.items():
    for what, fn in (("open", lambda: FeatureStore(path)), ("info", lambda: FeatureStore(path).info())):
        fn()  # first call: imports and HDF5's own start-up, not counted
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[f"{label} {what}"] = statistics.median(wall)
        out[f"{label} {what} cpu"] = statistics.median(cpu)
print("TIMES " + json.dumps(out))
"""


def make_stores(tmp: Path) -> dict[str, str]:
    """The two stores, extracted with seeded random-weight VGG16 at 32 px (a few seconds each on a CPU)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from PIL import Image

    from featstore import ExtractorConfig, extract

    rng = np.random.default_rng(0)
    data = tmp / "data"
    for split, n in (("train", 6), ("validation", 3), ("test", 3)):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(data / split / cls / f"{i}.png")
    small, three = tmp / "small.h5", tmp / "3x3.h5"
    extract(data, "train", small, ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7))
    for layer, pooling in (("block5_pool", "none"), ("block4_pool", "avg"), ("block3_pool", "max")):
        cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7, layer=layer, pooling=pooling)
        for split in ("train", "validation", "test"):
            extract(data, split, three, cfg, name=f"vgg16_{layer}_{pooling}")
    return {"small": str(small), "3x3": str(three)}


def timed(code: Path, paths: dict, repeats: int) -> dict:
    """TIMER's medians with the featstore of checkout ``code``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}
    p = subprocess.run(
        [sys.executable, "-c", TIMER, json.dumps(paths), str(repeats)],
        env=env,
        cwd=code,  # (python -c puts the working folder first on the path, before PYTHONPATH)
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise SystemExit(f"timing with {code} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.split("TIMES ", 1)[1])
    if not Path(out.pop("code")).is_relative_to(code):
        raise SystemExit(f"timing with {code} imported another featstore; is {code} a checkout?")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", action="append", type=Path, help="a checkout to time (repeatable; default: this one)")
    ap.add_argument("--repeats", type=int, default=30, help="openings timed per store and checkout (median printed)")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per checkout, taking turns (median)")
    ap.add_argument(
        "--stores", type=Path, help="an empty folder to make the stores in, kept (default: a temporary one)"
    )
    args = ap.parse_args()
    codes = [c.resolve() for c in (args.code or [ROOT])]
    with tempfile.TemporaryDirectory(prefix="store_open_") as tmp:
        paths = make_stores(args.stores or Path(tmp))
        got: dict[Path, list[dict]] = {c: [] for c in codes}
        for _ in range(args.rounds):
            for code in codes:
                got[code].append(timed(code, paths, args.repeats))
    keys = list(got[codes[0]][0])
    med = {c: {k: statistics.median(r[k] for r in got[c]) for k in keys} for c in codes}
    print(f"median of {args.rounds} processes x median of {args.repeats} openings, milliseconds (wall clock, CPU):")
    print(f"{'':<34}" + "".join(f"{k:>14}" for k in keys if not k.endswith(" cpu")))
    for code in codes:
        cells = [
            f"{med[code][k] * 1000:.1f}, {med[code][k + ' cpu'] * 1000:.1f}" for k in keys if not k.endswith(" cpu")
        ]
        print(f"{str(code)[-34:]:<34}" + "".join(f"{c:>14}" for c in cells))
    if len(codes) == 2:
        a, b = codes
        cells = [
            f"{med[a][k] / med[b][k]:.2f}, {med[a][k + ' cpu'] / med[b][k + ' cpu']:.2f}"
            for k in keys
            if not k.endswith(" cpu")
        ]
        print(f"{'ratio first/second':<34}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
