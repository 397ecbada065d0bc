"""Where does a short command's time go? Start-up of featstore next to a bare Keras script.

Measured side by side, ``--repeats`` times in turn, each a fresh process (medians printed):

- ``bare``: a plain Keras script that builds VGG16 (``weights=None``, include_top=False) at the same
  image size, loads one image, applies ``preprocess_input`` and calls ``model.predict`` on it;
- ``extract``: ``featstore extract --weights none`` of a split holding that one image (a new store each time);
- ``extract, instrumented``: the same command in a driver that times its phases (TensorFlow/Keras import,
  model build, the weights digest, the trace and its warm-up call, the call on the image);
- ``runs`` and ``info``: ``featstore runs`` (one recorded run) and ``featstore info`` of a small store.

It prints the ratio extract/bare (target <= 1.05), the times of runs and info (target < 1 s), where the
extract-minus-bare gap goes, and ``python -X importtime`` of ``import featstore.cli`` and of the module
``featstore runs`` needs. Timings depend on the machine and its load: compare figures from one run only.

    python benchmarks/startup.py                      # VGG16 at 150 px, 5 repeats
    python benchmarks/startup.py --image-size 64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}

BARE = """
import sys
import numpy as np
from PIL import Image
import keras
size = int(sys.argv[2])
model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
x = np.asarray(Image.open(sys.argv[1]).convert("RGB").resize((size, size)), np.float32)[None]
print(model.predict(keras.applications.vgg16.preprocess_input(x), verbose=0).shape)
"""

INSTRUMENTED = """
import importlib, json, sys, time
t, t_start = {}, time.perf_counter()
from featstore.cli import app as cli
from featstore.cli import app
getattr(cli, "quiet_tensorflow", lambda: None)()  # older checkouts have no quiet import: compare with them too
t0 = time.perf_counter()
import keras
t["import tensorflow+keras"] = time.perf_counter() - t0
mod = importlib.import_module("featstore.models.extractor")  # where the extractor is built

def timed(name, fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            t[name] = t.get(name, 0.0) + time.perf_counter() - t0
    return wrapper

mod.load_base = timed("build model", mod.load_base)
mod.weights_digest = timed("weights digest", mod.weights_digest)
# where the forward pass is traced: featstore.models.forward.trace now, extractor._forward_fn in older checkouts
fwd = importlib.import_module("featstore.models.forward") if not hasattr(mod, "_forward_fn") else mod
fn_name = "trace" if fwd is not mod else "_forward_fn"
forward_fn = getattr(fwd, fn_name)

def traced(*a, **k):
    f = timed("trace + warm-up call", forward_fn)(*a, **k)
    return timed("forward on the image", f)  # (in older checkouts the first call also traced)

setattr(fwd, fn_name, traced)
try:
    app(sys.argv[1:])
except SystemExit:
    pass
t["whole process after start"] = time.perf_counter() - t_start
print("TIMES " + json.dumps(t))
"""


def featstore_cmd(*args: str) -> list[str]:
    """featstore run from this checkout (the installed `featstore` may point elsewhere)."""
    return [sys.executable, "-m", "featstore.cli", *args]


def wall(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds a command takes end to end, and its stdout; raises with its stderr if it fails."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return seconds, p.stdout


def one_image(data: Path, sample: Path) -> Path:
    """data/train/<class>/<image>: the first image of the bundled sample, or a random one."""
    found = sorted(sample.glob("train/*/*.png"))[:1]
    folder = data / "train" / (found[0].parent.name if found else "noise")
    folder.mkdir(parents=True)
    img = (
        Image.open(found[0])
        if found
        else Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), np.uint8))
    )
    img.save(folder / "image.png")
    return folder / "image.png"


def small_store(tmp: Path) -> Path:
    """A 2-class store at 32 px with train/validation/test and one recorded logreg run, for `info` and `runs`."""
    rng = np.random.default_rng(1)
    for split in ("train", "validation", "test"):
        for cls in ("a", "b"):
            (tmp / "small" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
                    tmp / "small" / split / cls / f"{i}.png"
                )
    store = tmp / "small.h5"
    for split in ("train", "validation", "test"):
        wall(
            featstore_cmd(
                "extract",
                "--data",
                str(tmp / "small"),
                "--split",
                split,
                "--store",
                str(store),
                "--weights",
                "none",
                "--image-size",
                "32",
                "--no-progress",
            ),
            tmp,
        )
    wall(featstore_cmd("fit", "--clf", "logreg", "--store", str(store)), tmp)
    return store


def importtime(code: str, modules: tuple[str, ...]) -> dict[str, float]:
    """Cumulative import seconds of ``modules`` when ``code`` runs (python -X importtime)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=ENV, capture_output=True, text=True)
    out = {}
    for line in p.stderr.splitlines():
        parts = [s.strip() for s in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in modules and parts[1].isdigit():
            out[parts[2]] = int(parts[1]) / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample", type=Path, default=ROOT / "data" / "fashion_mnist")
    args = ap.parse_args()
    size = str(args.image_size)
    times: dict[str, list[float]] = {k: [] for k in ("bare", "extract", "extract, instrumented", "runs", "info")}
    phases: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image = one_image(tmp / "data", args.sample)
        store = small_store(tmp)
        for r in range(args.repeats):
            extract = (
                "extract",
                "--data",
                str(tmp / "data"),
                "--split",
                "train",
                "--weights",
                "none",
                "--image-size",
                size,
                "--no-progress",
            )
            times["bare"].append(wall([sys.executable, "-c", BARE, str(image), size], tmp)[0])
            times["extract"].append(wall(featstore_cmd(*extract, "--store", str(tmp / f"one_{r}.h5")), tmp)[0])
            seconds, out = wall(
                [sys.executable, "-c", INSTRUMENTED, *extract, "--store", str(tmp / f"inst_{r}.h5")], tmp
            )
            times["extract, instrumented"].append(seconds)
            phases.append(json.loads(out.split("TIMES ", 1)[1]))
            times["runs"].append(wall(featstore_cmd("runs", "--store", str(store)), tmp)[0])
            times["info"].append(wall(featstore_cmd("info", str(store)), tmp)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{sys.executable}: {os.cpu_count()} CPUs; VGG16 weights none at {size} px; median of {args.repeats} runs each, side by side"
    )
    for k, v in times.items():
        print(f"  {k:<24} {med[k]:6.2f} s   (runs: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"extract / bare Keras script: {med['extract'] / med['bare']:.3f}  (target <= 1.05)")
    for k in ("runs", "info"):
        print(f"featstore {k}: {med[k]:.2f} s  ({'meets' if med[k] < 1 else 'misses'} the target < 1 s)")
    print(f"gap extract - bare: {med['extract'] - med['bare']:+.2f} s; phases of the instrumented extract (medians):")
    for k in phases[0]:
        print(f"  {k:<30} {statistics.median(p.get(k, 0.0) for p in phases):6.2f} s")
    cli = importtime("import featstore.cli", ("featstore.cli", "typer", "featstore"))
    runs = importtime(
        "import featstore.runs",
        ("featstore.experiments.fit", "featstore.runs.artifacts", "featstore.experiments.classifiers", "sklearn"),
    )
    print("python -X importtime (cumulative s): " + ", ".join(f"{k} {v:.2f}" for k, v in {**cli, **runs}.items()))


if __name__ == "__main__":
    main()
