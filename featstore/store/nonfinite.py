"""The rows with NaN or inf features of one split, or finite ones too large for any classifier's arithmetic or far
over their column's usual size in the training split (``far``), found block by block (``FeatureStore.nonfinite_rows``)."""

from __future__ import annotations

import shlex

import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.provenance import AUGMENTED
from featstore.store.far import FAR_FACTOR, FAR_FLOOR, ColumnSizes, column_peaks, far_mask  # noqa: F401 (re-exported)

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
        peaks = np.maximum(rows.max(axis=1, initial=0), -rows.min(axis=1, initial=0))
    return peaks.astype(np.float64, copy=False)  # float16's: compared with LARGE_FEATURE, not cast to it (overflow)


def large_rows(peaks: np.ndarray, limit: float = LARGE_FEATURE) -> np.ndarray:
    """The rows (indices) whose features are all finite but one is over ``limit``, from :func:`row_peaks`: what fit
    refuses and ``featstore check`` counts (one rule for both)."""
    return np.flatnonzero(np.isfinite(peaks) & (np.nan_to_num(peaks, nan=0.0, posinf=0.0) > limit))


def refuse_in_every(
    fs,
    names: list[str],
    splits,
    verb: str,
    augmented: str | None = None,
    among: list[str] | None = None,
    train: str | None = None,
) -> None:
    """StoreError naming the extractor, split and rows that fit would refuse (NaN/inf, over LARGE_FEATURE, far over
    their column's usual size in train), checked over every extractor's ``splits`` (None: left out; the first of
    several is the training split, the far rule's reference, unless ``train`` names it) before a command's first fit, and ``augmented``'s cached
    copies: a bad test row of the last extractor was found after every other one had been fitted (probe: attack 53
    #2; sweep: attack 68 #4). With several extractors (``among``: all the command's, default ``names``) every one is
    checked first, and the line names those that pass, to ``verb`` them alone, or says that none does (attack 72 #5)."""
    plain = list(dict.fromkeys(s for s in splits if s))
    train = train or augmented or (plain[0] if len(plain) > 1 else None)
    failed: dict[str, str] = {}
    for n in names:
        for split, copies in [(s, False) for s in plain] + ([(augmented, True)] if augmented else []):
            try:
                fs.refuse_nonfinite(split, n, augmented=copies, train=train)
            except StoreError as exc:
                failed[n] = str(exc)
                break
    if not failed:
        return
    bad, first = next(iter(failed.items()))
    others = [o for o in (among or names) if o != bad]
    if not others:
        raise StoreError(first)
    good = [o for o in others if o not in failed]
    if good:
        raise StoreError(f"{first}; or {verb} the others: --extractor {','.join(good)}")
    raise StoreError(f"{first}; every other extractor ({', '.join(others)}) holds such rows too")


class NonfiniteRows:
    """The rows with NaN or inf features of one split, found block by block (see ``FeatureStore.nonfinite_rows``)."""

    def __init__(self, fs, split: str, name: str, augmented: bool, large: bool = True):  # fs: the FeatureStore asked
        self.fs, self.split, self.name, self.augmented = fs, split, name, augmented
        self.limit = LARGE_FEATURE if large else np.inf  # large=False: a fitted model's own check decides (evaluate)
        self.bad: list[int] = []
        self.huge: list[int] = []  # finite rows with a feature over LARGE_FEATURE
        self.top = 0.0
        self.start = 0
        self.peaks: np.ndarray | None = None  # each column's largest magnitude (the far rule, once the split is read)
        self.X: np.ndarray | None = None  # the split whole, when it was given in memory (far rows listed from it)
        self.max_bytes = 64 << 20  # the block of a second pass that lists far rows (a streamed fit's)

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
        if len(X) and self.limit < np.inf:
            cols = column_peaks(X)
            self.peaks = cols if self.peaks is None else np.fmax(self.peaks, cols)
        self.start += len(X)
        return not len(bad) and not len(huge)

    def far(self, bounds) -> tuple[list[int], int]:
        """(rows, the column most over its bound) of the split's rows with a feature over its column's bound
        (``bounds``: an array, or a callable giving it, called only when there is no NaN/inf or large row); a second
        pass over the split only when some column's peak is over its bound (only a bad store pays it). No row can be
        far while every peak is under :data:`FAR_FLOOR` (most backbones' layers): ``bounds`` is not called then."""
        if self.bad or self.huge or self.peaks is None or bounds is None:
            return [], -1
        if not np.nan_to_num(self.peaks).max(initial=0) > FAR_FLOOR:  # no bound is under FAR_FLOOR: train not read
            return [], -1
        bound = np.asarray(bounds() if callable(bounds) else bounds, np.float64)
        if bound.shape != self.peaks.shape:  # another feature shape than the reference's: refused elsewhere
            return [], -1
        with np.errstate(invalid="ignore"):
            over = np.nan_to_num(self.peaks) / bound
        if not (over > 1).any():
            return [], -1
        if self.X is not None:  # in memory: in blocks of rows all the same (far_mask copies its block's magnitudes)
            blocks = ((self.X[i : i + 1024], None) for i in range(0, len(self.X), 1024))
        else:
            blocks = self.fs.iter_batches(self.split, self.name, augmented=self.augmented, max_bytes=self.max_bytes)
        rows, at = [], 0
        for X, _ in blocks:
            rows += (np.flatnonzero(far_mask(X, bound)) + at).tolist()
            at += len(X)
        return rows, int(np.argmax(over))

    def refuse(self, reference=None) -> None:
        """Raise StoreError naming the first bad row and the fix, if any was found, and the rows with a feature far
        over its column's usual size in the training split (``reference``: a callable giving (bounds, usual sizes),
        ``FeatureStore.far_bounds``; None: no far rule)."""
        got: list = []

        def bounds():
            got.append(reference())
            return got[0][0]

        far, column = self.far(bounds if reference is not None else None)
        if not self.bad and not self.huge and not far:
            return
        split, name, augmented = self.split, self.name, self.augmented
        paths = self.fs.paths(split, name, augmented=augmented)
        key = f"{split}/{AUGMENTED}" if augmented else split
        fix = (
            "an overflow in the model that extracted them, which would set a classifier's scale on its own (every other "
            f"row then reads as about 0). Check those images and the model's weights, then {self.redo()} (`featstore "
            "check` counts such rows)"
        )
        if not self.bad:
            rows = self.huge or far
            which = f"{len(rows)} row(s) ({', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}; e.g. "
            which = f"{self.fs.path}:/{name}/{key} holds {which}{terminal_safe(paths[rows[0]])})"
            if self.huge:
                raise StoreError(
                    f"{which} with finite features over {LARGE_FEATURE:.0e} (largest {self.top:.3g}): {fix}"
                )
            assert self.peaks is not None
            raise StoreError(
                f"{which} with features over {FAR_FACTOR:.0e} times their column's usual size in the training split "
                f"and over {FAR_FLOOR:.0e} (feature {column}: up to {self.peaks[column]:.3g}, its usual size "
                f"{got[0][1][column]:.3g}): {fix}"
            )
        raise StoreError(
            f"{self.fs.path}:/{name}/{key} holds {len(self.bad)} row(s) with NaN or inf features (e.g. "
            f"{terminal_safe(paths[self.bad[0]])}); nothing can be fitted or scored on them. Check those images and the "
            f"model's weights, then {self.redo()} (`featstore check` counts such rows)"
        )

    def redo(self) -> str:
        """How to make the split again: the extract that made it, with the store, name and recorded options (attack 72
        #8: a literal `extract --split train --overwrite` targeted another store with ImageNet weights), or
        ``write_arrays`` for a split written from arrays."""
        q, fs, split, name = shlex.quote, self.fs, self.split, self.name
        if str(fs.split_info(split, name).get("listing_sha256", "")).startswith("arrays:"):
            return f"write the split again from its arrays (write_arrays({str(fs.path)!r}, {name!r}, {split!r}, X, y, ...))"
        info, m = fs.split_info(split, name), fs.metadata(name)
        redo = f"featstore extract --data {q(str(info.get('source_root') or 'DIR'))} --store {q(str(fs.path))}"
        redo += f" --name {q(name)} --split {q(split)}"
        given = [("model", "--model"), ("layer", "--layer"), ("weights", "--weights"), ("input_size", "--image-size")]
        given += [("seed", "--seed")] * (m.get("weights") == "none") + [("pooling", "--pooling")] * (
            m.get("pooling", "none") != "none"
        )
        redo += "".join(f" {opt} {q(str(m[k]))}" for k, opt in given if k in m)
        if self.augmented and (a := fs.augmentation(split, name)):  # the copies too, as made (attack 66 #5)
            spec, seed = q(str(a["augment_spec"])), a["augment_seed"]
            redo += f" --augment {a['augment_copies']} --augment-spec {spec} --augment-seed {seed}"
        return (
            f"re-run the extract that made it, with the options that started it (as recorded; `featstore info --store "
            f"{q(str(fs.path))}` shows the rest, such as --preprocess or --dtype): `{redo} --overwrite`"
        )


def checked_split(fs, split: str, name: str, X, augmented: bool, max_bytes: int, train: str | None) -> None:
    """``FeatureStore.refuse_nonfinite``'s work: one pass over the split (``X`` when given) counting NaN/inf and large
    rows and each column's peak, then the far rule against ``train``'s usual sizes (None: the extractor's split
    ``train`` when it has one, else the split itself), read only when a peak is over ``FAR_FLOOR``."""
    check = fs.nonfinite_rows(split, name, augmented=augmented)
    check.X, check.max_bytes = X, max_bytes
    ref = train if train is not None else ("train" if "train" in fs.splits(name) else split)
    for block in (
        [X] if X is not None else (b for b, _ in fs.iter_batches(split, name, augmented=augmented, max_bytes=max_bytes))
    ):
        check.block(block)
    own = X if ref == split and not augmented else None
    check.refuse(lambda: reference_bounds(fs, name, ref, max_bytes, own))


def reference_bounds(fs, name: str, train: str, max_bytes: int = 64 << 20, X=None) -> tuple[np.ndarray, np.ndarray]:
    """(bounds, usual sizes) of ``train``'s columns (``ColumnSizes``), from ``X`` (train in memory) or one pass in
    blocks of ``max_bytes``; cached on ``fs`` per store state (the splits of one command read train once)."""
    key = (name, train, fs.meta.state)
    cache = fs.__dict__.setdefault("_far_bounds", {})
    if key not in cache:
        sizes = ColumnSizes()
        for block in [X] if X is not None else (b for b, _ in fs.iter_batches(train, name, max_bytes=max_bytes)):
            sizes.add(block)
        cache.clear()  # one reference at a time
        cache[key] = sizes.bounds()
    return cache[key]
