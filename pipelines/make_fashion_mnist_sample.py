"""Write Fashion-MNIST images as PNG files in the <split>/<class>/ layout featstore reads.

The IDX files come from Debian's package (``apt-get install dataset-fashion-mnist``) or any folder
holding the four ``*-idx?-ubyte.gz`` files. Examples::

    python pipelines/make_fashion_mnist_sample.py --out data/fashion_mnist --per-class 30 10 10
    python pipelines/make_fashion_mnist_sample.py --out /tmp/fmnist --per-class 6000 0 1000   # all of it

Train and validation images come from the official training set (disjoint), test from the official test set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from fmnist import CLASSES, DEBIAN_DIR, load, write_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-dir", type=Path, default=DEBIAN_DIR, help="folder with the four IDX .gz files")
    ap.add_argument("--out", type=Path, required=True, help="data root to write <split>/<class>/*.png under")
    ap.add_argument("--per-class", type=int, nargs=3, default=(30, 10, 10), metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    train_x, train_y, test_x, test_y = load(args.idx_dir)
    n_train, n_val, n_test = args.per_class
    for label in range(len(CLASSES)):
        tr = rng.permutation(np.flatnonzero(train_y == label))
        te = rng.permutation(np.flatnonzero(test_y == label))
        picks = {
            "train": (train_x, tr[:n_train]),
            "validation": (train_x, tr[n_train : n_train + n_val]),
            "test": (test_x, te[:n_test]),
        }
        for split, (images, idx) in picks.items():
            write_split(args.out, split, images[idx], np.full(len(idx), label), idx)
    print(f"wrote {args.out}: per class {n_train} train, {n_val} validation, {n_test} test")


if __name__ == "__main__":
    main()
