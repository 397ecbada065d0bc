"""The inputs of ``benchmarks/million.py``, built once and cached: synthetic stores, a resumable split, runs, files.

Everything goes through featstore's own writer (:func:`featstore.store.writer.write_arrays`, and
:class:`~featstore.store.writer.SplitWriter` for the interrupted split), with rows generated block by block
(:class:`LazyRows`) so that no process holds a whole split: at 10⁶ rows the build stays under 1 GB of memory.

    pooled.h5   extractor "pooled": (512,) float16, --rows rows in all (train 80 %, validation 10 %, test 10 %)
                and a "query" split of 1 % (what `leaks` searches: a full test split at 10⁶ would take half an hour)
    maps.h5     extractor "maps": (4, 4, 512) float32, --rows / 5 rows (train / validation / test as above)
    resume.h5   extractor "pooled", split "train" of --rows images with their listing, interrupted half way
    runs/       1,000 runs, 50 of them fine-tuned (benchmarks/runs_listing.py builds them)
    files/      --rows / 10 tiny real files in train/<class>/ (what `discover` walks)
"""

from __future__ import annotations

import array
import json
import shutil
import time
from pathlib import Path

import numpy as np

from featstore.images.listing import ImageListing
from featstore.store import writer

CLASSES = 1000
SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}
POOLED, MAPS = (512,), (4, 4, 512)


class LazyRows:
    """An (n, *shape) array whose rows are made when sliced: class centre plus seeded noise, ReLU-like (>= 0)."""

    def __init__(self, labels: np.ndarray, shape: tuple[int, ...], dtype: str, seed: int):
        self.labels, self.shape, self.dtype, self.seed = labels, (len(labels), *shape), np.dtype(dtype), seed
        self.centres = np.random.default_rng(seed).normal(0, 1, (CLASSES, *shape)).astype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, s: slice) -> np.ndarray:
        start, stop, _ = s.indices(len(self))
        rng = np.random.default_rng([self.seed, start])
        X = self.centres[self.labels[start:stop]]
        X += rng.normal(0, 1.0, X.shape).astype(np.float32)
        return np.maximum(X, 0, out=X).astype(self.dtype, copy=False)


def _labels(n: int, seed: int) -> np.ndarray:
    """Every class about equally often, in a seeded order (an extraction writes class by class; a shuffle is harder)."""
    return np.random.default_rng(seed).permutation(np.arange(n) % CLASSES).astype(np.int32)


def _write_store(path: Path, name: str, rows: int, shape: tuple, dtype: str, batch: int, extra: dict) -> None:
    names = [f"c{i:03d}" for i in range(CLASSES)]
    splits = {s: max(CLASSES, int(rows * share)) for s, share in SHARES.items()} | extra
    for i, (split, n) in enumerate(splits.items()):
        y = _labels(n, i)
        writer.write_arrays(path, name, split, LazyRows(y, shape, dtype, seed=7), y, names, batch_size=batch)


def fake_listing(root: Path, n: int) -> ImageListing:
    """A listing of ``n`` images under ``root/train/<class>/`` that need not exist (what `discover` would return)."""
    per = -(-n // CLASSES)
    items = [(f"train/c{i // per:03d}/img_{i:07d}.jpg", i // per) for i in range(n)]
    sizes = array.array("q", (20_000 + i % 5000 for i in range(n)))  # as discover keeps them
    mtimes = array.array("q", (1_700_000_000_000_000_000 + i for i in range(n)))
    return ImageListing(root, "train", [f"c{i:03d}" for i in range(CLASSES)], items, 0, [], sizes, mtimes)


def write_interrupted(path: Path, listing: ImageListing, batch: int = 4096) -> int:
    """A split of ``listing`` committed half way and never finished, as a killed `extract` leaves it; its rows."""
    store = writer.StoreFile(path)
    n = len(listing.items)
    split_attrs = resume_attrs(listing, batch)
    w = writer.SplitWriter(store, ["pooled"], "train")
    w.prepare([writer.synthetic_attrs(POOLED, "float16")], split_attrs, overwrite=True, listing=listing)
    y = np.array([label for _, label in listing.items], dtype=np.int32)
    X = LazyRows(y, POOLED, "float16", seed=7)
    done = n // 2 // batch * batch
    for i in range(0, done, batch):
        w.commit([X[i : i + batch]], y[i : i + batch], [p for p, _ in listing.items[i : i + batch]], [], i + batch)
    return done


def resume_attrs(listing: ImageListing, batch: int) -> dict:
    """The split attributes `extract` records (and compares on a resume) for ``listing``."""
    return {
        "class_names": listing.class_names,
        "source_root": str(listing.root),
        "n_images": len(listing.items),
        "n_ignored": 0,
        "listing_sha256": listing.digest(),
        "batch_size": batch,
        "compression": "none",
        "jit": False,
        "engine": "local",
    }


def _files(root: Path, n: int) -> None:
    per = -(-n // CLASSES)
    for c in range(CLASSES):
        d = root / "train" / f"c{c:03d}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per):
            (d / f"img_{k:05d}.jpg").write_bytes(b"\xff\xd8tiny")


def build(folder: Path, rows: int, model_mb: int, log=print) -> dict:
    """Build what is missing under ``folder`` for ``rows``; returns the paths (and seconds spent building)."""
    from runs_listing import build as build_runs  # benchmarks/ is on sys.path when a benchmark runs as a script

    folder.mkdir(parents=True, exist_ok=True)
    out = {k: folder / k for k in ("pooled.h5", "maps.h5", "resume.h5", "files", "runs-listing")}
    stamp = folder / "built.json"
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    steps = {
        "pooled.h5": lambda p: _write_store(p, "pooled", rows, POOLED, "float16", 4096, {"query": rows // 100}),
        "maps.h5": lambda p: _write_store(p, "maps", rows // 5, MAPS, "float32", 1024, {}),
        "resume.h5": lambda p: write_interrupted(p, fake_listing(folder / "files", rows)),
        "files": lambda p: _files(p, rows // 10),
        "runs-listing": lambda p: build_runs(p, 1000, 50, model_mb),
    }
    seconds = {}
    for key, make in steps.items():
        want = {"rows": rows, "model_mb": model_mb}
        if done.get(key) == want:
            continue
        t0 = time.perf_counter()
        log(f"building {out[key]} ...")
        if out[key].is_dir():
            shutil.rmtree(out[key])
        out[key].unlink(missing_ok=True)
        make(out[key])
        seconds[key] = time.perf_counter() - t0
        done[key] = want
        stamp.write_text(json.dumps(done))
    return {**out, "built_seconds": seconds}
