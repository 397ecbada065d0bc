"""The far rule in ``runs evaluate``'s one pass over a store split (attack 75 #6).

After ``fit --test none`` (or a test split extracted later), ``runs evaluate RUN --split test`` is what records the
run's test figures. It held the split to no far rule: a test split 1e9 x train's, which fit, sweep, probe, fewshot
and check refuse, was scored at chance and recorded (a later sweep reused the figure). Here each block the scoring
pass reads anyway is also held to fit's rule against the *run's* training split (its recorded ``inputs.train``; else
the extractor's split ``train``, else its largest split): a row with a feature over that split's far bound (its
usual size, ``store.far.LayerSizes``, binned once per store state and process) stops the scoring, and the pass goes
on only to name every such row; a split whose own usual size is far from it either way is refused at the end. Either
is raised before anything is recorded, and the evaluated split is never read a second time (a sweep reads its test
split once: tests/test_sweep.py). Rows over ``LARGE_FEATURE`` that are *not* far from the training split keep
``runs evaluate``'s own rule (refused only where the fitted model fails on them: ``kinds._checked_rows``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.store.far import LayerSizes, apart
from featstore.store.metadata import file_state
from featstore.store.nonfinite import _CACHE, redo_advice, reference_sizes, reference_split, remember, row_peaks


class RowsRefused(StoreError):
    """The evaluated split's own rows refused while it was scored: scoring it again would say the same (the caller
    that shows figures when a run cannot be recorded does not read the split a second time)."""


def training_split(fs, rec, split: str) -> str:
    """The far rule's reference for a run evaluated on ``fs``: the split it was fitted on (recorded in its ``inputs``)
    when this store has it, else the extractor's split ``train``, else its largest (``reference_split``)."""
    inputs = rec.get("inputs")
    train = inputs.get("train") if isinstance(inputs, Mapping) else None
    return train if isinstance(train, str) and train in fs.splits(rec.extractor) else reference_split(fs, rec.extractor)


class FarRows:
    """Fed each block of the split in order (:meth:`block`: whether to score it); :meth:`refuse` at the end. A split
    whose usual size this process binned already at this store state (a sweep's check of every split before its
    fits) is judged from it before it is read, and not binned again (attack 75 #8)."""

    def __init__(self, fs, rec, split: str, max_bytes: int):
        self.fs, self.name, self.split, self.run = fs, rec.extractor, split, rec.id
        self.train = training_split(fs, rec, split)
        # read before the split (cached per store state): the split itself is read once, here or not at all
        self.ref = None if self.train == split else reference_sizes(fs, self.name, self.train, max_bytes)
        self.own, self.peaks, self.stopped = _binned(fs, self.name, split), [], False
        self.done = self.own is not None and self.ref is not None and self.own.top <= self.ref.bound()
        if self.done:  # no far row: only the two usual sizes tell
            self._refuse_apart(self.own, self.ref)
        self.own = self.own if self.done else LayerSizes()

    def block(self, X: np.ndarray) -> bool:
        """Bin the block's rows; False once a row is far over the training split's bound (nothing more is scored)."""
        if self.done:
            return True
        peaks = row_peaks(X)
        self.peaks.append(peaks)
        self.own.add(X)
        if self.ref is not None and not self.stopped:
            self.stopped = bool(np.any(np.isfinite(peaks) & (peaks > self.ref.bound())))
        return not self.stopped

    def refuse(self) -> None:
        """RowsRefused naming the rows far over the training split's bound (fit's rule), else a split whose usual size
        is far from the training split's (either may be the overflow)."""
        if self.done:
            return
        remember(self.fs, self.name, self.split, self.own)  # binned: a later evaluation in this process reads it
        ref = self.ref if self.ref is not None else self.own  # the run's own training split: its own pass
        peaks = np.concatenate(self.peaks) if self.peaks else np.zeros(0)
        bound = ref.bound()
        rows = np.flatnonzero(np.isfinite(peaks) & (peaks > bound))
        if len(rows):
            path = terminal_safe(self.fs.paths(self.split, self.name)[rows[0]])
            listed = f"{', '.join(map(str, rows[:5].tolist()))}{' ...' if len(rows) > 5 else ''}"
            raise RowsRefused(
                f"{self.where()} holds {len(rows)} row(s) ({listed}; e.g. {path}) with features far over the usual "
                f"feature size of run {self.run}'s training split {self.train} ({ref.usual():.3g}): up to "
                f"{float(peaks[rows].max()):.3g}, over the far rule's bound {bound:.3g} that fit holds every split to. "
                f"An overflow in the model that extracted them (the run would score them at chance); nothing was "
                f"recorded. Check those images and the model's weights, then "
                f"{redo_advice(self.fs, self.split, self.name)} (`featstore check` counts such rows)"
            )
        if ref is not self.own:
            self._refuse_apart(self.own, ref)

    def where(self) -> str:
        return f"{self.fs.path}:/{self.name}/{self.split}"

    def _refuse_apart(self, mine: LayerSizes, ref: LayerSizes) -> None:
        own, theirs = mine.usual(), ref.usual()
        if not apart(own, theirs):
            return
        larger = self.split if own > theirs else self.train
        raise RowsRefused(
            f"{self.where()}'s usual feature size is {own:.3g} and run {self.run}'s training split {self.train}'s "
            f"{theirs:.3g}: far apart (fit's rule), so one of them is an overflow in the model that extracted it (or "
            f"arrays written unscaled), most likely {larger}, and the run scores {self.split} at chance; nothing was "
            f"recorded. For {larger}: {redo_advice(self.fs, larger, self.name)}"
            + (f", then fit the run again on {self.train}" if larger == self.train else "")
        )


def _binned(fs, name: str, split: str) -> LayerSizes | None:
    """The split's usual size when this process binned it at the store's present state, else None (nothing is read)."""
    got = _CACHE.get((file_state(fs.path), name, split))
    return got if isinstance(got, LayerSizes) else None
