"""Synthetic stores for the leaks tests, written without TensorFlow: any features, any stored paths, real files.

``write_split`` writes a complete split like an extraction would (prepare, append in batches, finish) with the
stored paths you choose and ``source_root`` pointing at a folder where ``files`` are written under those paths, so
the content-hash side of ``featstore leaks`` has real files to read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featstore.store.locking import StoreFile
from featstore.store.writer import SplitWriter, synthetic_attrs


def write_split(
    store: Path,
    name: str,
    split: str,
    X: np.ndarray,
    y: np.ndarray,
    paths: Sequence[str],
    root: Path | None = None,
    files: Sequence[bytes] | None = None,
    class_names: Sequence[str] = ("a", "b"),
    batch: int = 256,
) -> None:
    """A complete split ``store:/name/split``; with ``root``, ``files[i]`` is written at ``root/paths[i]``."""
    if root is not None and files is not None:
        for rel, content in zip(paths, files):
            target = os.path.join(os.fsencode(root), os.fsencode(rel))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(content)
    split_attrs = {
        "class_names": list(class_names),
        "source_root": str(root or ""),
        "n_images": len(y),
        "n_ignored": 0,
        "listing_sha256": f"arrays:{len(y)}",
        "batch_size": batch,
        "compression": "none",
    }
    w = SplitWriter(StoreFile(store), [name], split)
    w.prepare([synthetic_attrs(X.shape[1:], str(X.dtype), name)], split_attrs, overwrite=True)
    for i in range(0, len(y), batch):
        j = min(i + batch, len(y))
        w.commit([X[i:j]], np.asarray(y[i:j], np.int32), list(paths[i:j]), [], j)
    w.finish(0.0)


def blob(seed: int, size: int = 64) -> bytes:
    """Distinct file content (a stand-in for an image's bytes)."""
    return np.random.default_rng(seed).bytes(size)


def eight_and_two(tmp_path: Path) -> Path:
    """``tmp_path/f.h5``: extractor ``s`` with train (8 rows, 4 features) and test (its first 2 rows, the same images:
    two planted leaks), their image files under ``tmp_path/data``, and its leaks record (threshold 0.99)."""
    from featstore import find_leaks

    store, data = tmp_path / "f.h5", tmp_path / "data"
    X = np.random.default_rng(0).normal(0, 1, (8, 4)).astype(np.float32)
    y = np.array([0, 1] * 4)
    write_split(store, "s", "train", X, y, [f"train/{i}.png" for i in range(8)], data, [blob(i) for i in range(8)])
    write_split(store, "s", "test", X[:2], y[:2], ["test/0.png", "test/1.png"], data, [blob(0), blob(1)])
    find_leaks(store, threshold=0.99)
    return store
