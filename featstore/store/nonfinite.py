"""The rows with NaN or inf features of one split, found block by block (``FeatureStore.nonfinite_rows``)."""

from __future__ import annotations

import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.provenance import AUGMENTED


class NonfiniteRows:
    """The rows with NaN or inf features of one split, found block by block (see ``FeatureStore.nonfinite_rows``)."""

    def __init__(self, fs, split: str, name: str, augmented: bool):  # fs: the FeatureStore asked
        self.fs, self.split, self.name, self.augmented = fs, split, name, augmented
        self.bad: list[int] = []
        self.start = 0

    def block(self, X: np.ndarray) -> bool:
        """Count the next block's bad rows; True when it has none."""
        rows = np.asarray(X).reshape(len(X), -1)
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        self.bad += (bad + self.start).tolist()
        self.start += len(X)
        return not len(bad)

    def refuse(self) -> None:
        """Raise StoreError naming the first bad row and the fix, if any was found."""
        if not self.bad:
            return
        split, name, augmented = self.split, self.name, self.augmented
        paths = self.fs.paths(split, name, augmented=augmented)
        key = f"{split}/{AUGMENTED}" if augmented else split
        raise StoreError(
            f"{self.fs.path}:/{name}/{key} holds {len(self.bad)} row(s) with NaN or inf features (e.g. "
            f"{terminal_safe(paths[self.bad[0]])}); nothing can be fitted or scored on them. Check those images and the "
            f"model's weights, then re-extract the split with `featstore extract --split {split} --overwrite` "
            f"(`featstore check` counts such rows)"
        )
