"""Cross-validation folds that keep groups whole: every augmented copy of one image on the same side.

Rows of an augmented store come in groups (the copies of one source image). A fold that trains on one copy
and holds out another measures memory, not generalisation, and a probability calibration fitted on such
held-out rows comes out over-confident. :func:`stratified_group_folds` deals whole groups to folds, class by
class, so each fold holds about ``1/n`` of every class. Pure numpy and seeded.

>>> folds, n = stratified_group_folds(np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2, 3, 3]), 3)
>>> n, [sorted(held.tolist()) for _, held in folds]   # 2 groups per class: at most 2 folds
(2, [[0, 1, 4, 5], [2, 3, 6, 7]])
"""

from __future__ import annotations

import numpy as np


def stratified_group_folds(
    y, groups=None, n_folds: int = 3, seed: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """``([(train_rows, held_rows), ...], folds)``: each group (default: each row) in exactly one held-out part.

    Groups are dealt to folds class by class (a group's class is that of its first row; the copies of one image
    share it), shuffled by ``seed``, each class starting where the previous one stopped so the folds stay even.
    ``folds`` is ``n_folds`` or fewer, the number of groups of the smallest class, so that every class is held
    out in every fold and trained on in every other; with fewer than 2 it is 0 and the list is empty.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if groups.shape != y.shape:
        raise ValueError(f"groups must give one group per row ({len(y)}), got shape {groups.shape}")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if len(y) == 0:
        return [], 0
    uniq, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    group_class = y[first]
    classes = np.unique(group_class)
    n = min(n_folds, min(int(np.sum(group_class == c)) for c in classes))
    if n < 2:
        return [], 0
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(len(uniq), dtype=np.intp)
    start = 0
    for c in classes:
        members = rng.permutation(np.flatnonzero(group_class == c))
        fold_of_group[members] = (start + np.arange(len(members))) % n
        start = (start + len(members)) % n
    fold = fold_of_group[inverse]
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(n)], n
