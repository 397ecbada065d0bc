"""A small store with real images, runs and a leak check, written without TensorFlow: what the report tests look at.

Three classes of 16-value features with a class signal; every row has a real PNG under ``data/`` (a colour per class,
a little noise), so thumbnails are made from files. Test holds a copy of a training image (a leak), an image named
like markup (``<img src=x onerror=...>.png``: it must stay text), and train records one unreadable image as a
failure. ``logreg`` and ``knn`` runs and their ensemble are fitted on it, and ``featstore leaks`` has run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from featstore.store.locking import StoreFile
from featstore.store.writer import SplitWriter, synthetic_attrs

CLASSES = ("cat", "dog", "fox")
HOSTILE = "<img src=x onerror=window.__xss=1>.png"  # a legal file name that is markup


def png(rng: np.random.Generator, cls: int, size: int = 20) -> Image.Image:
    """An image of a class: a tinted field with noise."""
    im = rng.integers(0, 120, size=(size, size, 3)).astype(int)
    im[..., cls] += 120
    return Image.fromarray(np.clip(im, 0, 255).astype(np.uint8))


def write_split(
    store: Path,
    split: str,
    X: np.ndarray,
    y: np.ndarray,
    paths: list[str],
    root: Path,
    failures: list[tuple[str, str]] = (),
    name: str = "synthetic",
) -> None:
    """A complete split of ``store`` (features X, labels y, stored paths) whose images live under ``root``."""
    attrs = {
        "class_names": list(CLASSES),
        "source_root": str(root),
        "n_images": len(y) + len(failures),
        "n_ignored": 0,
        "listing_sha256": f"arrays:{len(y)}:{split}",
        "batch_size": 64,
        "compression": "none",
    }
    w = SplitWriter(StoreFile(store), [name], split)
    w.prepare([synthetic_attrs(X.shape[1:], str(X.dtype), name)], attrs, overwrite=True)
    w.commit([X], np.asarray(y, np.int32), list(paths), list(failures), len(y) + len(failures))
    w.finish(0.0)


def make_report_store(tmp: Path, per_class: tuple[int, int, int] = (10, 4, 4), seed: int = 0) -> Path:
    """The store described in the module docstring, with its runs and leak check; returns the store's path."""
    from featstore import ensemble, find_leaks, fit

    rng = np.random.default_rng(seed)
    root, store = tmp / "data", tmp / "features.h5"
    centres = rng.normal(0, 1, (len(CLASSES), 16)).astype(np.float32)
    train: dict = {}
    for split, n in zip(("train", "validation", "test"), per_class):
        y = np.repeat(np.arange(len(CLASSES)), n)
        X = np.maximum(centres[y] * 2 + rng.normal(0, 1.2, (len(y), 16)), 0).astype(np.float32)
        paths = [f"{split}/{CLASSES[c]}/{split}_{i:03d}.png" for i, c in enumerate(y)]
        if split == "test":
            X[0], y[0] = train["X"][3], train["y"][3]  # a copy of train row 3: same features, same bytes
            paths[0] = f"test/{CLASSES[y[0]]}/copy_of_train_003.png"
            paths[1] = f"test/{CLASSES[y[1]]}/{HOSTILE}"
        for rel, c in zip(paths, y):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            png(rng, int(c)).save(target)
        if split == "test":
            (root / paths[0]).write_bytes(train["images"][3].read_bytes())
        if split == "train":
            train.update(X=X, y=y, images=[root / p for p in paths])
            bad = root / "train/cat/broken.png"
            bad.write_bytes(b"not an image")
            failures = [("train/cat/broken.png", "not an image Pillow can identify")]
        else:
            failures = []
        write_split(store, split, X, y, paths, root, failures)
    a = fit(store, "logreg")
    b = fit(store, "knn")
    ensemble([a.id, b.id], store=store)
    find_leaks(store)
    return store


def image_of(store: Path, rel: str) -> str:
    """The file of a stored path."""
    return os.path.join(store.parent / "data", rel)
