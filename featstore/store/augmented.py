"""The rows of a split's augmented copies, checked against the split they were made from (no feature is read).

Each row of ``/<extractor>/<split>/augmented`` must be copy k (1..K, copy-major) of a row of the split, with that
row's path and label, in the split's order. ``fit --augmented``, ``export --augmented`` and ``featstore check`` all
ask here before they trust a row.

>>> copy_problems(StoreFile("features.h5"), "vgg16", "train")     # doctest: +SKIP
[]
"""

from __future__ import annotations

from featstore.errors import ConfigError
from featstore.provenance import AUGMENTED
from featstore.store.attr_values import read_attr
from featstore.store.layout import read_paths
from featstore.store.locking import StoreFile
from featstore.store.metadata import open_split


def copy_problems(store: StoreFile, name: str, split: str, *, block: int = 1 << 16) -> list[str]:
    """What is wrong with the rows of a split's copies, each with its fix ([] when they are sound).

    Reads labels, paths and copy indexes in blocks of ``block`` rows: the split and the first block in one opening,
    then one opening per block, so a writer of another split is not held up.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:  # 0 or -1 looped for ever (attack 60 #7)
        raise ConfigError(f"copy_problems(): block={block!r} must be a whole number of rows of at least 1")
    path = store.path
    where, bad_copy, unknown, wrong_label, order = f"{path}:/{name}/{split}/{AUGMENTED}", 0, 0, 0, 0
    last, i, rows = (0, -1), 0, None
    while rows is None or i < rows:
        with store.open("r") as f:
            if rows is None:
                sg, plain_commit = open_split(f, path, name, split)
                ag, commit = open_split(f, path, name, split, augmented=True)
                index = {p: r for r, p in enumerate(read_paths(sg["paths"], plain_commit.rows))}
                y = sg["labels"][: plain_commit.rows]
                k, rows = int(read_attr(ag, "augment_copies", where, most=1)), commit.rows
            j = min(i + block, rows)
            ag = f[name][split][AUGMENTED]
            paths, labels, copy = read_paths(ag["paths"], j, i), ag["labels"][i:j], ag["copy"][i:j]
        for p, lab, c in zip(paths, labels.tolist(), copy.tolist()):
            src = index.get(p)
            if not 1 <= c <= k:
                bad_copy += 1
            elif src is None:
                unknown += 1
            elif lab != int(y[src]):
                wrong_label += 1
            elif (c, src) <= last:
                order += 1
            else:
                last = (c, src)
        i = j
    out = []
    if bad_copy:
        out.append(f"{where}: {bad_copy} rows have a copy index outside 1..{k}")
    if unknown:
        out.append(f"{where}: {unknown} rows have a path that is not one of the split's rows")
    if wrong_label:
        out.append(f"{where}: {wrong_label} rows have another label than the split's row of the same image")
    if order:
        out.append(f"{where}: {order} rows are out of order (copy-major, in the split's row order) or repeated")
    return [f"{p}; make the copies again with --augment and --overwrite" for p in out]
