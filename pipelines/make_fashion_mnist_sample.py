"""Write Fashion-MNIST images as PNG files in the <split>/<class>/ layout featstore reads.

The IDX files come from Debian's package (``apt-get install dataset-fashion-mnist``) or any folder
holding the four ``*-idx?-ubyte.gz`` files. Examples::

    python pipelines/make_fashion_mnist_sample.py --out data/fashion_mnist --per-class 30 10 10
    python pipelines/make_fashion_mnist_sample.py --out /tmp/fmnist --per-class 6000 0 1000   # all of it

Train and validation images come from the official training set (disjoint), test from the official test set.
"""

from __future__ import annotations

import argparse
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
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-dir", type=Path, default=DEBIAN_DIR, help="folder with the four IDX .gz files")
    ap.add_argument("--out", type=Path, required=True, help="data root to write <split>/<class>/*.png under")
    ap.add_argument("--per-class", type=int, nargs=3, default=(30, 10, 10), metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.idx_dir / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"no Fashion-MNIST IDX files in {args.idx_dir}; apt-get install dataset-fashion-mnist or pass --idx-dir")
    rng = np.random.default_rng(args.seed)
    train_x = read_idx(args.idx_dir / "train-images-idx3-ubyte.gz")
    train_y = read_idx(args.idx_dir / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(args.idx_dir / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(args.idx_dir / "t10k-labels-idx1-ubyte.gz")
    n_train, n_val, n_test = args.per_class
    for label, cls in enumerate(CLASSES):
        tr = rng.permutation(np.flatnonzero(train_y == label))
        te = rng.permutation(np.flatnonzero(test_y == label))
        picks = {"train": (train_x, tr[:n_train]), "validation": (train_x, tr[n_train:n_train + n_val]), "test": (test_x, te[:n_test])}
        for split, (images, idx) in picks.items():
            folder = args.out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx:
                Image.fromarray(images[i], mode="L").save(folder / f"{split}_{int(i):05d}.png", optimize=True)
    print(f"wrote {args.out}: per class {n_train} train, {n_val} validation, {n_test} test")


if __name__ == "__main__":
    main()
