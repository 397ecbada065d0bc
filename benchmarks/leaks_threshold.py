"""Does `featstore leaks` mean the same on every layer? Planted copies against distinct images, on real features.

Copies --plants training images of a data root into its test split four ways (the same bytes, resized 2x,
JPEG quality 90, JPEG quality 70), extracts train and test at several layers in one pass, and prints per layer
how many copies of each kind are flagged and how many distinct test images are, for the old fixed threshold
(--fixed, 0.95) and for the threshold `featstore leaks` now calibrates per extractor (the 0.99 quantile of
train's own held-out nearest-neighbour similarity). Same-bytes copies are found by content hash either way.

    python benchmarks/leaks_threshold.py --data /tmp/fmnist --image-size 64 \\
        --layer block2_pool,block3_pool,block4_pool,block5_pool          # hed-bsds500 weights (not ImageNet)
    python benchmarks/leaks_threshold.py --modes                          # also: flattened/pooled x plain/centred
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from featstore import ExtractorConfig, FeatureStore, extract, find_leaks

KINDS = {
    "bytes": lambda src, p: shutil.copy(src, p.with_suffix(src.suffix)),
    "resized": lambda src, p: (
        _open(src).resize((_open(src).width * 2, _open(src).height * 2), Image.BILINEAR).save(p.with_suffix(".png"))
    ),
    "jpeg90": lambda src, p: _open(src).convert("RGB").save(p.with_suffix(".jpg"), quality=90),
    "jpeg70": lambda src, p: _open(src).convert("RGB").save(p.with_suffix(".jpg"), quality=70),
}


def _open(path: Path) -> Image.Image:
    """The image, loaded (so the file is closed)."""
    with Image.open(path) as im:
        im.load()
        return im.copy()


def plant(src: Path, dst: Path, n: int, seed: int) -> None:
    """dst = src's train and test splits, plus n train images copied into test in every way of KINDS."""
    for split in ("train", "test"):
        shutil.copytree(src / split, dst / split)
    train = sorted((dst / "train").rglob("*.*"))
    for i in np.random.default_rng(seed).choice(len(train), n, replace=False):
        p = train[i]
        for kind, save in KINDS.items():
            save(p, dst / "test" / p.parent.name / f"plant_{kind}_{p.stem}")


def kind_of(path: str) -> str:
    """Which planted kind a stored test path is, or 'distinct'."""
    return next((k for k in KINDS if Path(path).name.startswith(f"plant_{k}_")), "distinct")


def similarities(X: np.ndarray, Q: np.ndarray, mode: str) -> np.ndarray:
    """Each query row's highest similarity to a train row: mode is '<flat|gap>-<raw|centred>'."""
    red = (
        (lambda F: F.reshape(len(F), -1)) if mode.startswith("flat") or X.ndim < 4 else (lambda F: F.mean(axis=(1, 2)))
    )
    A, B = red(X).astype(np.float64), red(Q).astype(np.float64)
    mu = A.mean(0) if mode.endswith("centred") else 0.0
    A, B = A - mu, B - mu
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    return (B @ A.T).max(1)


def summary(report, paths: list[str]) -> str:
    """'copies bytes 50/50, resized 49/50, ...; distinct 12/2000 (0.6 %)' for one report on the test rows ``paths``."""
    flagged = {p.query_path for p in report.pairs}
    kinds = np.array([kind_of(p) for p in paths])
    hit = np.array([p in flagged for p in paths])
    parts = [f"{k} {int(hit[kinds == k].sum())}/{int((kinds == k).sum())}" for k in KINDS]
    d = kinds == "distinct"
    return f"copies {', '.join(parts)}; distinct {int(hit[d].sum())}/{int(d.sum())} ({100 * hit[d].mean():.1f} %)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/fashion_mnist"))
    ap.add_argument("--weights", default="hed-bsds500")
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--layer", default=None, help="one or several, comma-separated (one extraction pass)")
    ap.add_argument("--plants", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixed", type=float, default=0.95, help="the old fixed threshold, for comparison")
    ap.add_argument("--modes", action="store_true", help="also compare flattened/pooled x plain/centred features")
    a = ap.parse_args()
    layers = tuple(x.strip() for x in a.layer.split(",")) if a.layer and "," in a.layer else ()
    cfg = ExtractorConfig(
        model="vgg16", weights=a.weights, image_size=a.image_size, layer=None if layers else a.layer, layers=layers
    )
    with tempfile.TemporaryDirectory() as tmp:
        data, store = Path(tmp) / "data", Path(tmp) / "features.h5"
        plant(a.data, data, a.plants, a.seed)
        for split in ("train", "test"):
            extract(data, split, store, cfg)
        fs = FeatureStore(store)
        names = fs.extractors()
        paths = fs.paths("test", names[0])
        n_distinct = sum(kind_of(p) == "distinct" for p in paths)
        print(
            f"vgg16 {a.weights} {cfg.image_size or 'default'} px; {len(fs.paths('train', names[0]))} train rows, "
            f"{n_distinct} distinct test rows, {a.plants} copies of each kind ({', '.join(KINDS)})"
        )
        for name in names:
            start = time.monotonic()
            cal = find_leaks(store, name, query=["test"], record=False)
            seconds = time.monotonic() - start
            fixed = find_leaks(store, name, query=["test"], threshold=a.fixed, record=False)
            print(f"{name}  {fs.metadata(name)['layer']}  features {tuple(fs.split_info('train', name)['shape'][1:])}")
            print(f"  fixed {a.fixed:g}: {summary(fixed, paths)}")
            print(f"  {cal.calibration.describe()} [{seconds:.0f} s]")
            print(f"    {summary(cal, paths)}")
            if a.modes:
                (X, _), (Q, _) = fs.load("train", name), fs.load("test", name)
                kind = np.array([kind_of(p) for p in paths])
                for mode in ("flat-raw", "flat-centred", "gap-raw", "gap-centred"):
                    s = similarities(X, Q, mode)
                    d = s[kind == "distinct"]
                    kinds = "  ".join(f"{k} min {s[kind == k].min():.3f}" for k in KINDS if k != "bytes")
                    print(f"    {mode:13s} distinct median {np.median(d):.3f} max {d.max():.3f}  {kinds}")


if __name__ == "__main__":
    main()
