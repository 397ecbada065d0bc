"""Extraction throughput and memory, measured side by side in one run.

On the same photo-sized JPEG files (500x375, generated once into a cache folder) and the same backbone
and batch size, it prints:

1. `featstore extract` images/s ÷ model-only images/s (images already decoded and resized in memory);
   target ≥ 0.95 for vgg16@150, ≥ 0.85 for mobilenet_v2@128;
2. `featstore extract` ÷ the lectures' loop (decode a batch, `conv_base.predict` it, write it);
   target ≥ 1.0 for vgg16, ≥ 1.3 for mobilenet_v2;
3. peak RSS of a fresh extraction process at N and at 4N images; target growth < 100 MB.

`--models vit_s16` measures a ViT-S/16-sized KerasHub ViT (12 blocks, 384 channels, 6 heads, MLP 1536, patch 16) at
224 px with random weights, saved once as a preset folder in the cache and extracted as `--model PATH/ --pooling cls`
(needs `pip install 'featstore[hub]'`); target extract / model-only ≥ 0.95.

Each throughput is the median over --repeats runs; model building is excluded from all three (it is a
fixed start-up cost, printed separately). Weights are random (`--weights none`): they do not change speed.

    python benchmarks/extract_throughput.py                        # vgg16@150 and mobilenet_v2@128
    python benchmarks/extract_throughput.py --models vgg16 --n 64 --repeats 3
    python benchmarks/extract_throughput.py --models vit_s16 --n 64 --repeats 3
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

HERE = str(Path(__file__).resolve().parent)
SIZES = {"vgg16": 150, "mobilenet_v2": 128, "vit_s16": 224}
TARGETS = {"vgg16": (0.95, 1.0), "mobilenet_v2": (0.85, 1.3), "vit_s16": (0.95, 1.0)}
HUB_MODELS = ("vit_s16",)  # KerasHub presets made here with random weights (--weights does not apply to them)


def hub_preset(cache: Path, name: str) -> Path:
    """A ViT-S/16-sized KerasHub ViT with seeded random weights and an ImageNet-style converter, saved once."""
    folder = cache / f"preset_{name}"
    if (folder / "config.json").is_file():
        return folder
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536
    )
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ViTImageConverter(image_size=(224, 224), scale=1 / 127.5, offset=-1.0).save_to_preset(str(folder))
    return folder


def extractor_config(model: str, size: int):
    """The configuration measured: random weights for a Keras application, the preset's own for a KerasHub one."""
    from featstore import ExtractorConfig

    if Path(model).is_dir():
        return ExtractorConfig(model=model, image_size=size, pooling="cls")
    return ExtractorConfig(model=model, image_size=size, weights="none")


def make_images(root: Path, n: int) -> Path:
    """n JPEGs of 500x375 with smooth structure and noise (photo-like sizes and decode cost), 2 classes."""
    from PIL import Image

    split = root / "train"
    have = sorted(split.glob("*/*.jpg")) if split.exists() else []
    if len(have) >= n:
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(len(have), n):
        folder = split / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.005, 0.05, 3)
        img = np.stack([127 + 100 * np.sin(xx * f[c] + yy * f[(c + 1) % 3] + i) for c in range(3)], axis=-1)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:05d}.jpg", quality=90)
    return root


def featstore_run(data: Path, model: str, size: int, batch: int, n: int) -> float:
    """img/s of featstore's extraction loop (model already built)."""
    from featstore import extract

    with tempfile.TemporaryDirectory() as tmp:
        r = extract(data, "train", Path(tmp) / "f.h5", extractor_config(model, size), batch_size=batch)
        assert r.rows >= n
        return r.images_per_second


def model_only(ex, imgs: np.ndarray, batch: int) -> float:
    """img/s of preprocess + forward pass on pre-decoded images."""
    t = time.perf_counter()
    for i in range(0, len(imgs), batch):
        ex(imgs[i : i + batch])
    return len(imgs) / (time.perf_counter() - t)


def lectures_loop(files: list[Path], ex, size: int, batch: int) -> float:
    """The lectures' pattern: load a batch of images one by one, predict it with conv_base.predict, write it."""
    import h5py
    import keras

    with tempfile.TemporaryDirectory() as tmp, h5py.File(Path(tmp) / "l.h5", "w") as f:
        shape = ex.feature_shape
        d = f.create_dataset("features", (len(files), *shape), dtype="float32")
        t = time.perf_counter()
        for i in range(0, len(files), batch):
            x = np.stack(
                [
                    keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
                    for p in files[i : i + batch]
                ]
            )
            d[i : i + len(x)] = ex.model.predict(ex.spec.preprocess(x), verbose=0)
        return len(files) / (time.perf_counter() - t)


SAMPLER = """
import sys, threading, time
from featstore import extract
sys.path.insert(0, sys.argv[6])
from extract_throughput import extractor_config
peak, done = [0], threading.Event()
def sample():  # RSS sampled every 20 ms during the extraction (the process's own peak is set by TensorFlow's import)
    while not done.is_set():
        with open('/proc/self/statm') as fh:
            peak[0] = max(peak[0], int(fh.read().split()[1]) * 4096)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
extract(sys.argv[1], 'train', sys.argv[2], extractor_config(sys.argv[3], int(sys.argv[4])), batch_size=int(sys.argv[5]))
done.set(); print(peak[0] / 2**20)
"""


def peak_rss(data: Path, model: str, size: int, batch: int) -> float:
    """Peak RSS (MB) during the extraction of the train split of ``data`` in a fresh process."""
    code = SAMPLER
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", code, str(data), str(Path(tmp) / "f.h5"), model, str(size), str(batch), HERE],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    return float(out.stdout.strip().splitlines()[-1])


def subset(src: Path, dst: Path, n: int) -> Path:
    """A data root with the first n images of src (symlinks)."""
    files = sorted((src / "train").glob("*/*.jpg"))[:n]
    for p in files:
        target = dst / "train" / p.parent.name / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(p)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SIZES))
    ap.add_argument("--n", type=int, default=64, help="images per throughput run (RSS uses n and 4n)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featstore_bench_jpegs")
    ap.add_argument("--no-rss", action="store_true", help="leave out the peak-RSS runs (n and 4n images, each once)")
    args = ap.parse_args()
    from featstore import Extractor, load_image

    full = make_images(args.cache, 4 * args.n)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        small, large = subset(full, Path(tmp) / "n", args.n), subset(full, Path(tmp) / "4n", 4 * args.n)
        files = sorted((small / "train").glob("*/*.jpg"))
        for name in args.models:
            size = SIZES.get(name, 150)
            model = str(hub_preset(args.cache, name)) if name in HUB_MODELS else name
            t = time.perf_counter()
            ex = Extractor(extractor_config(model, size))
            build_s = time.perf_counter() - t
            imgs = np.stack([load_image(p, size) for p in files])
            ex(imgs[: args.batch_size])  # warm-up: first call traces the graph
            lectures_loop(files[: args.batch_size], ex, size, args.batch_size)
            fs, mo, lec = [], [], []
            for _ in range(args.repeats):  # interleaved, so machine noise hits all three alike
                mo.append(model_only(ex, imgs, args.batch_size))
                fs.append(featstore_run(small, model, size, args.batch_size, args.n))
                lec.append(lectures_loop(files, ex, size, args.batch_size))
            rss_n, rss_4n = (
                (peak_rss(small, model, size, args.batch_size), peak_rss(large, model, size, args.batch_size))
                if not args.no_rss
                else (float("nan"), float("nan"))
            )
            r = {
                "featstore_img_s": statistics.median(fs),
                "model_only_img_s": statistics.median(mo),
                "lectures_img_s": statistics.median(lec),
                "build_s": build_s,
                "rss_n_mb": rss_n,
                "rss_4n_mb": rss_4n,
            }
            r["vs_model"], r["vs_lectures"] = (
                r["featstore_img_s"] / r["model_only_img_s"],
                r["featstore_img_s"] / r["lectures_img_s"],
            )
            results[name] = r
            tm, tl = TARGETS.get(name, (0.95, 1.0))
            print(f"{name}@{size}, batch {args.batch_size}, {args.n} JPEGs 500x375, median of {args.repeats}:")
            print(
                f"  featstore extract {r['featstore_img_s']:.1f} img/s | model only {r['model_only_img_s']:.1f} img/s | "
                f"lectures loop {r['lectures_img_s']:.1f} img/s | model build {build_s:.1f} s (excluded)"
            )
            print(f"  extract / model-only   = {r['vs_model']:.3f}  (target >= {tm})")
            print(f"  extract / lectures     = {r['vs_lectures']:.3f}  (target >= {tl})")
            print(
                f"  peak RSS {args.n} images {rss_n:.0f} MB, {4 * args.n} images {rss_4n:.0f} MB: growth {rss_4n - rss_n:+.0f} MB (target < 100)"
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
