"""Fashion-MNIST for the recipes: read the IDX files and write images in the <split>/<class>/ layout featstore reads.

The IDX files come from Debian's package (``apt-get install dataset-fashion-mnist``, installed under
``/usr/share/datasets/fashion-mnist``) or any folder holding the four ``*-idx?-ubyte.gz`` files.

>>> train_x, train_y, test_x, test_y = load()          # doctest: +SKIP
>>> train_x.shape, test_x.shape                        # doctest: +SKIP
((60000, 28, 28), (10000, 28, 28))
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX (.gz) file into a uint8 array."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(idx_dir: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); a clear exit when the files are missing."""
    if not (Path(idx_dir) / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(
            f"no Fashion-MNIST IDX files in {idx_dir}; apt-get install dataset-fashion-mnist, or pass --idx-dir"
        )
    return tuple(
        read_idx(Path(idx_dir) / f"{name}-idx{k}-ubyte.gz")  # type: ignore[return-value]
        for name, k in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1))
    )


def write_split(
    root: Path, split: str, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, classes: list[str] = CLASSES
) -> None:
    """Write ``images[i]`` as ``root/split/<classes[labels[i]]>/<split>_<ids[i]>.png`` (grayscale PNG)."""
    for img, label, i in zip(images, labels, ids):
        folder = Path(root) / split / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{split}_{int(i):05d}.png", optimize=True)
