"""The rows with NaN or inf features of one split, or finite ones too large for any classifier's arithmetic or far
larger than the split's other rows, found block by block (``FeatureStore.nonfinite_rows``)."""

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
# a row this many times the split's usual size (the median of its non-zero rows' largest magnitudes), and over
# FAR_FLOOR, is an overflow too: one train row of 1e14 among rows near 1 set the scaler's spread as 1e20 did (attack 66
# #4's second half: fitted at chance, exit 0), and so did a whole class of them (attack 69 #2: a 90th percentile let a
# tenth of the rows through). Backbones' rows differ by tens at most; the floor keeps tiny features' stores apart
FAR_FACTOR, FAR_FLOOR = 1e6, 1e3


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


def far_rows(peaks: np.ndarray) -> tuple[np.ndarray, float]:
    """(indices, usual size) of the finite rows of :func:`row_peaks` over :data:`FAR_FACTOR` times the split's usual
    size (the median of its non-zero finite peaks: all-zero rows, a dead layer's, are left out, as ``leaks`` leaves
    them out; so up to half the non-zero rows can be found far) and over :data:`FAR_FLOOR`.

    >>> far_rows(np.array([1.0, 2.0, 1.2, 1.5] * 5 + [1e14] * 3 + [0.0, np.nan]))
    (array([20, 21, 22]), 1.5)
    """
    finite = np.isfinite(peaks)
    nonzero = peaks[finite & (peaks > 0)]
    usual = float(np.median(nonzero)) if len(nonzero) else 0.0
    if usual <= 0:
        return np.zeros(0, np.intp), usual
    return np.flatnonzero(finite & (np.where(finite, peaks, 0) > max(FAR_FACTOR * usual, FAR_FLOOR))), usual


def refuse_in_every(
    fs, names: list[str], splits, verb: str, augmented: str | None = None, among: list[str] | None = None
) -> None:
    """StoreError naming the extractor, split and rows that fit would refuse (NaN/inf, over LARGE_FEATURE, far larger
    than the others), checked over every extractor's ``splits`` (None: left out) before a command's first fit, and
    ``augmented``'s cached copies: a bad test row of the last extractor was found after every other one had been
    fitted (probe: attack 53 #2; sweep: attack 68 #4, which scored test through runs evaluate's rule and recorded a
    test row of 1e16). With several extractors (``among``: all the command's, default ``names``) the line names the
    others, to ``verb`` them alone."""
    for n in names:
        checks = [(s, False) for s in dict.fromkeys(s for s in splits if s)]
        for split, copies in checks + ([(augmented, True)] if augmented else []):
            try:
                fs.refuse_nonfinite(split, n, augmented=copies)
            except StoreError as exc:
                others = [o for o in (among or names) if o != n]
                if not others:
                    raise
                raise StoreError(f"{exc}; or {verb} the others: --extractor {','.join(others)}") from None


class NonfiniteRows:
    """The rows with NaN or inf features of one split, found block by block (see ``FeatureStore.nonfinite_rows``)."""

    def __init__(self, fs, split: str, name: str, augmented: bool, large: bool = True):  # fs: the FeatureStore asked
        self.fs, self.split, self.name, self.augmented = fs, split, name, augmented
        self.limit = LARGE_FEATURE if large else np.inf  # large=False: a fitted model's own check decides (evaluate)
        self.bad: list[int] = []
        self.huge: list[int] = []  # finite rows with a feature over LARGE_FEATURE
        self.top = 0.0
        self.start = 0
        self.peaks: list[np.ndarray] = []  # every row's (far_rows: once the split is read)

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
        self.peaks.append(peaks)
        self.start += len(X)
        return not len(bad) and not len(huge)

    def refuse(self) -> None:
        """Raise StoreError naming the first bad row and the fix, if any was found (rows far larger than the split's
        others too, once every block was counted)."""
        far, usual = np.zeros(0, np.intp), 0.0
        if not self.bad and not self.huge and self.limit < np.inf and self.peaks:
            far, usual = far_rows(np.concatenate(self.peaks))
        if not self.bad and not self.huge and not len(far):
            return
        split, name, augmented = self.split, self.name, self.augmented
        paths = self.fs.paths(split, name, augmented=augmented)
        key = f"{split}/{AUGMENTED}" if augmented else split
        redo = f"featstore extract --split {shlex.quote(split)}"
        if augmented and (a := self.fs.augmentation(split, name)):  # the copies too, as made (attack 66 #5)
            spec, seed = shlex.quote(str(a["augment_spec"])), a["augment_seed"]
            redo += f" --augment {a['augment_copies']} --augment-spec {spec} --augment-seed {seed}"
        redo += " --overwrite"
        fix = (
            "an overflow in the model that extracted them, which would set a classifier's scale on its own (every other "
            f"row then reads as about 0). Check those images and the model's weights, then re-extract the split with "
            f"`{redo}` (`featstore check` counts such rows)"
        )
        if not self.bad:
            rows = self.huge or far.tolist()
            which = f"{len(rows)} row(s) ({', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}; e.g. "
            which = f"{self.fs.path}:/{name}/{key} holds {which}{terminal_safe(paths[rows[0]])})"
            if self.huge:
                raise StoreError(
                    f"{which} with finite features over {LARGE_FEATURE:.0e} (largest {self.top:.3g}): {fix}"
                )
            raise StoreError(
                f"{which} with features over {FAR_FACTOR:.0e} times the split's usual size (largest {self.top:.3g}; "
                f"the median row's largest {usual:.3g}): {fix}"
            )
        raise StoreError(
            f"{self.fs.path}:/{name}/{key} holds {len(self.bad)} row(s) with NaN or inf features (e.g. "
            f"{terminal_safe(paths[self.bad[0]])}); nothing can be fitted or scored on them. Check those images and the "
            f"model's weights, then re-extract the split with `{redo}` (`featstore check` counts such rows)"
        )
