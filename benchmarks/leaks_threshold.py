"""Where should `featstore leaks` draw the line? Planted copies against distinct images, on real features.

Copies --plants training images of a data root into its test split three ways (resized 28->56 px, JPEG
quality 90, JPEG quality 70; exact copies always score 1.0), extracts train and test with featstore, and
prints for four ways of comparing features (flattened or global-average-pooled; plain cosine or centred on
the train mean) how many copies reach each threshold (recall) and how many distinct test images do (false
pairs). `featstore leaks` uses flattened + centred; its default threshold comes from this table.

    python benchmarks/leaks_threshold.py                                  # data/fashion_mnist, hed-bsds500, 150 px
    python benchmarks/leaks_threshold.py --image-size 64 --layer block4_pool
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from featstore import ExtractorConfig, FeatureStore, extract, find_leaks

KINDS = {
    "resized": lambda im, p: im.resize((im.width * 2, im.height * 2), Image.BILINEAR).save(p.with_suffix(".png")),
    "jpeg90": lambda im, p: im.convert("RGB").save(p.with_suffix(".jpg"), quality=90),
    "jpeg70": lambda im, p: im.convert("RGB").save(p.with_suffix(".jpg"), quality=70),
}
THRESHOLDS = (0.9, 0.95, 0.97, 0.99)


def plant(src: Path, dst: Path, n: int, seed: int) -> None:
    """dst = src's train and test splits, plus n train images copied into test in every way of KINDS."""
    for split in ("train", "test"):
        shutil.copytree(src / split, dst / split)
    train = sorted((dst / "train").rglob("*.*"))
    for i in np.random.default_rng(seed).choice(len(train), n, replace=False):
        p = train[i]
        with Image.open(p) as im:
            for kind, save in KINDS.items():
                save(im, dst / "test" / p.parent.name / f"plant_{kind}_{p.stem}")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/fashion_mnist"))
    ap.add_argument("--weights", default="hed-bsds500")
    ap.add_argument("--image-size", type=int, default=150)
    ap.add_argument("--layer", default=None)
    ap.add_argument("--plants", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = ExtractorConfig(model="vgg16", weights=a.weights, image_size=a.image_size, layer=a.layer)
    with tempfile.TemporaryDirectory() as tmp:
        data, store = Path(tmp) / "data", Path(tmp) / "features.h5"
        plant(a.data, data, a.plants, a.seed)
        for split in ("train", "test"):
            extract(data, split, store, cfg)
        fs = FeatureStore(store)
        (X, _), (Q, _) = fs.load("train"), fs.load("test")
        kind = np.array(
            [next((k for k in KINDS if Path(p).name.startswith(f"plant_{k}_")), "distinct") for p in fs.paths("test")]
        )
        print(
            f"vgg16 {a.weights} {cfg.image_size or 'default'} px, cut {fs.metadata()['layer']}, features {X.shape[1:]}; "
            f"{len(X)} train rows, {np.sum(kind == 'distinct')} distinct test rows, {a.plants} copies of each kind"
        )
        for mode in ("flat-raw", "flat-centred", "gap-raw", "gap-centred"):
            s = similarities(X, Q, mode)
            d, p = s[kind == "distinct"], s[kind != "distinct"]
            kinds = "  ".join(f"{k} min {s[kind == k].min():.3f}" for k in KINDS)
            print(f"{mode:13s} distinct median {np.median(d):.3f} max {d.max():.3f}  {kinds}")
            print(
                " " * 14
                + "  ".join(
                    f">= {t}: copies {np.mean(p >= t):4.0%}, distinct {np.mean(d >= t):4.0%}" for t in THRESHOLDS
                )
            )
        r = find_leaks(store, query=["test"], record=False)
        listed = [
            next((k for k in KINDS if Path(q.query_path).name.startswith(f"plant_{k}_")), "distinct") for q in r.pairs
        ]
        print(
            f"featstore leaks (default threshold {r.threshold}) lists "
            + ", ".join(f"{listed.count(k)} of {np.sum(kind == k)} {k}" for k in (*KINDS, "distinct"))
        )


if __name__ == "__main__":
    main()
