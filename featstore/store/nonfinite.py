"""The rows with NaN or inf features of one split, or finite ones too large for any classifier's arithmetic, found
block by block (``FeatureStore.nonfinite_rows``)."""

from __future__ import annotations

import shlex

import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.provenance import AUGMENTED

# a feature this large is no backbone's usual output (an overflow): a fit's scaler took its spread from one such train
# row and every other row standardised to about 0, chance accuracy, exit 0 (attack 62 #4); predict marks such images
# failed, naming the extractor (a float32 scaler overflows near 3e38; a model refusing smaller features is damaged)
LARGE_FEATURE = 1e15


def row_peaks(X: np.ndarray) -> np.ndarray:
    """Each row's largest magnitude: NaN for a row with a NaN, inf for a row with an inf (``np.isfinite`` of it tells
    the rows nothing can be fitted on); two row reductions, no copy of ``X`` (a streamed fit's budget).

    >>> row_peaks(np.array([[1, -3], [np.nan, 1e20], [2, -np.inf]], np.float32)).tolist()
    [3.0, nan, inf]
    """
    rows = np.asarray(X).reshape(len(X), -1)
    with np.errstate(invalid="ignore"):
        return np.maximum(rows.max(axis=1, initial=0), -rows.min(axis=1, initial=0))


def large_rows(peaks: np.ndarray, limit: float = LARGE_FEATURE) -> np.ndarray:
    """The rows (indices) whose features are all finite but one is over ``limit``, from :func:`row_peaks`: what fit
    refuses and ``featstore check`` counts (one rule for both)."""
    return np.flatnonzero(np.isfinite(peaks) & (np.nan_to_num(peaks, nan=0.0, posinf=0.0) > limit))


class NonfiniteRows:
    """The rows with NaN or inf features of one split, found block by block (see ``FeatureStore.nonfinite_rows``)."""

    def __init__(self, fs, split: str, name: str, augmented: bool, large: bool = True):  # fs: the FeatureStore asked
        self.fs, self.split, self.name, self.augmented = fs, split, name, augmented
        self.limit = LARGE_FEATURE if large else np.inf  # large=False: a fitted model's own check decides (evaluate)
        self.bad: list[int] = []
        self.huge: list[int] = []  # finite rows with a feature over LARGE_FEATURE
        self.top = 0.0
        self.start = 0

    def block(self, X: np.ndarray) -> bool:
        """Count the next block's bad rows (NaN/inf, or a feature over :data:`LARGE_FEATURE` unless ``large`` is False);
        True when it has none."""
        peaks = row_peaks(X)
        finite = np.isfinite(peaks)
        bad = np.flatnonzero(~finite)
        huge = large_rows(peaks, self.limit)
        self.bad += (bad + self.start).tolist()
        self.huge += (huge + self.start).tolist()
        self.top = max(self.top, float(peaks[finite].max(initial=0)))
        self.start += len(X)
        return not len(bad) and not len(huge)

    def refuse(self) -> None:
        """Raise StoreError naming the first bad row and the fix, if any was found."""
        if not self.bad and not self.huge:
            return
        split, name, augmented = self.split, self.name, self.augmented
        paths = self.fs.paths(split, name, augmented=augmented)
        key = f"{split}/{AUGMENTED}" if augmented else split
        redo = f"featstore extract --split {shlex.quote(split)}"
        if augmented and (a := self.fs.augmentation(split, name)):  # the copies too, as made (attack 66 #5)
            spec, seed = shlex.quote(str(a["augment_spec"])), a["augment_seed"]
            redo += f" --augment {a['augment_copies']} --augment-spec {spec} --augment-seed {seed}"
        redo += " --overwrite"
        if not self.bad:
            rows = ", ".join(str(r) for r in self.huge[:5]) + (" ..." if len(self.huge) > 5 else "")
            raise StoreError(
                f"{self.fs.path}:/{name}/{key} holds {len(self.huge)} row(s) ({rows}; e.g. "
                f"{terminal_safe(paths[self.huge[0]])}) with finite features over {LARGE_FEATURE:.0e} (largest "
                f"{self.top:.3g}): an overflow in the model that extracted them, which would set a classifier's scale "
                f"on its own (every other row then reads as about 0). Check those images and the model's weights, then "
                f"re-extract the split with `{redo}`"
            )
        raise StoreError(
            f"{self.fs.path}:/{name}/{key} holds {len(self.bad)} row(s) with NaN or inf features (e.g. "
            f"{terminal_safe(paths[self.bad[0]])}); nothing can be fitted or scored on them. Check those images and the "
            f"model's weights, then re-extract the split with `{redo}` (`featstore check` counts such rows)"
        )
