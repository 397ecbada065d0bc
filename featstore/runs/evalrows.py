"""The far rule in ``runs evaluate``'s one pass over a store split (attack 75 #6).

After ``fit --test none`` (or a test split extracted later), ``runs evaluate RUN --split test`` is what records the
run's test figures. It held the split to no far rule: a test split 1e9 x train's, which fit, sweep, probe, fewshot
and check refuse, was scored at chance and recorded (a later sweep reused the figure). Here each block the scoring
pass reads anyway is also held to fit's rule against the rows the run was *fitted on*: the far rule's figures of its
training split that the fit recorded (``inputs.far_reference``: floor and largest feature from train's first pass,
and its usual size and bound when the fit binned it); where the usual size is needed and was not recorded, or for a
run recorded before (none), the training split of a store that ``runs.trainstore`` says holds the run's very
training rows (the store given, else the run's recorded store), binned once per store state and process. Taking the
store's split *named* like the run's training split, or its largest split, held a 1e9 test to a train re-written at
1e9 after the fit, or to itself (attack 77 #1). Where no such split is, the rule is not applied and one warning line
says so (never silent). A row with a feature over the bound stops the scoring, and the pass goes on only to name
every such row; a split whose own usual size is far from train's either way is refused at the end. Either is raised
before anything is recorded, and the evaluated split is never read a second time (a sweep reads its test split
once: tests/test_sweep.py). Rows over ``LARGE_FEATURE`` that are *not* far from the training split keep ``runs
evaluate``'s own rule (refused only where the fitted model fails on them: ``kinds._checked_rows``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.runs.trainstore import same_file, training_store
from featstore.store.far import Figures, LayerSizes, Recorded, judge, tolerated_line
from featstore.store.metadata import file_state
from featstore.store.nonfinite import _CACHE, redo_advice, reference_sizes, remember, row_peaks

logger = logging.getLogger(__name__)


class RowsRefused(StoreError):
    """The evaluated split's own rows refused while it was scored: scoring it again would say the same (the caller
    that shows figures when a run cannot be recorded does not read the split a second time)."""


def training_split(rec) -> str:
    """The split run ``rec`` was fitted on, as it recorded it (``inputs.train``), else ``train`` (fit's default)."""
    inputs = rec.get("inputs")
    train = inputs.get("train") if isinstance(inputs, Mapping) else None
    return train if isinstance(train, str) else "train"


def recorded_reference(rec) -> Recorded | None:
    """The far rule's figures of the run's training split as its fit recorded them (None: a run recorded before)."""
    inputs = rec.get("inputs")
    got = inputs.get("far_reference") if isinstance(inputs, Mapping) else None
    return Recorded.of(got) if isinstance(got, Mapping) and got.get("split") == training_split(rec) else None


class FarRows:
    """Fed each block of the split in order (:meth:`block`: whether to score it); :meth:`refuse` at the end. A split
    whose usual size this process binned already at this store state (a sweep's check of every split before its
    fits) is judged from it before it is read, and not binned again (attack 75 #8). ``unapplied``: why the rule could
    not be applied ("" while it can), said once as a warning."""

    def __init__(self, fs, rec, split: str, max_bytes: int):
        self.fs, self.rec, self.name, self.split, self.run = fs, rec, rec.extractor, split, rec.id
        self.max_bytes, self.train, self.unapplied, self.why = max_bytes, training_split(rec), "", None
        self.recorded = recorded_reference(rec)
        self.ref = self.recorded if self.recorded is not None and self.recorded.usual_size is not None else None
        if self.recorded is None and self._sizes() is None and self.why:  # a run recorded before: a store's split
            self._say()  # only where it is the run's (read now, before the split)
        # read before the split (cached per store state): the split itself is read once, here or not at all
        self.own, self.peaks, self.stopped = _binned(fs, self.name, split), [], False
        self.done = bool(self.unapplied) or self.own is not None and self._judged(self.own)
        self.own = self.own if self.done and self.own is not None else LayerSizes()

    def _judged(self, own: LayerSizes) -> bool:
        """Whether the split, binned already, is judged without reading it (and refused here when far apart)."""
        ref = self.recorded if self._partial() else self.ref if self.ref is not None else self._sizes()
        if ref is None:
            return False
        verdict = judge(Figures.of(own), Figures.of(ref), ())  # fit's judge (its shortcut: the recorded floor)
        if verdict.needs or verdict.far:  # train's usual size not recorded, or far rows to name: the split is read
            return False
        self._tolerated(verdict, own.usual(), ref.usual())
        if verdict.apart:
            self._refuse_apart(verdict, own.usual(), ref.usual())
        return True

    def _tolerated(self, verdict, own: float, theirs: float) -> None:
        """One warning line where the judge accepted usual sizes apart (the training split peaky)."""
        if verdict.tolerated:
            logger.warning(
                "runs evaluate: %s", tolerated_line(self.where(), own, f"{self.train} of run {self.run}", theirs)
            )

    def _partial(self) -> bool:
        """Whether only the recorded floor, peak and largest feature are known (the fit did not bin train)."""
        return self.recorded is not None and self.ref is None

    def _sizes(self):
        """The training split's full figures: recorded, else binned from a store that holds the run's very training
        rows (looked for once); None where none does (``why``), or where the split evaluated is that training split
        itself (its own pass is its reference)."""
        if self.ref is not None or self.why is not None:
            return self.ref
        fs, why = training_store(self.rec, self.fs, self.name, self.train)
        self.why = why
        if fs is not None and not (self.train == self.split and same_file(fs, self.fs)):
            self.ref = reference_sizes(fs, self.name, self.train, self.max_bytes)
        return self.ref

    def _say(self) -> None:
        """The one warning line: the far rule could not be applied (never silent: attack 77 #1)."""
        lacks = (
            "the run records no far-rule figures of it (fitted by an older featstore)"
            if self.recorded is None
            else f"a feature is over the floor its fit recorded ({self.recorded.floor:.3g}), and the fit did not bin "
            f"the usual size that decides the bound"
        )
        why = str(self.why).removeprefix("its rows could not be compared: ")
        self.unapplied = (
            f"runs evaluate: the far rule (fit's rule against run {self.run}'s training split {self.train!r}) could "
            f"not be applied to {self.where()}: {lacks}, and {why}; its figures are scored without it (refit the run, or "
            f"evaluate it on a store that holds the split it was fitted on, to have them checked)"
        )
        logger.warning("%s", self.unapplied)

    def block(self, X: np.ndarray) -> bool:
        """Bin the block's rows; False once a row is far over the training split's bound (nothing more is scored)."""
        if self.done:
            return True
        peaks = row_peaks(X)
        self.peaks.append(peaks)
        self.own.add(X)
        if self.stopped:
            return False
        if self._partial():  # over the most the bound can be: far; under the floor: not; between: train binned
            top = float(peaks[np.isfinite(peaks)].max(initial=0))
            if top <= self.recorded.floor or top > self.recorded.upper():
                self.stopped = top > self.recorded.upper()
                return not self.stopped
        ref = self._sizes()  # recorded, else binned from the run's training rows (a run recorded before: at start)
        if ref is not None:
            self.stopped = bool(np.any(np.isfinite(peaks) & (peaks > ref.bound())))
        return not self.stopped

    def refuse(self) -> None:
        """RowsRefused naming the rows far over the training split's bound (fit's rule), else a split whose usual size
        is far from the training split's (either may be the overflow), as :func:`far.judge` decides."""
        if self.done:
            return
        remember(self.fs, self.name, self.split, self.own)  # binned: a later evaluation in this process reads it
        peaks = np.concatenate(self.peaks) if self.peaks else np.zeros(0)
        own = Figures.of(self.own)
        if self._partial():
            verdict = judge(own, Figures.of(self.recorded), ())
            if not verdict.needs:
                return
            peak = self.recorded.usual_peak  # train's usual size is at most its usual peak: these hold whatever it is
            self._refuse_far(peaks, verdict.bound, f"at most {peak:.3g}", " (the most it can be)")
            if verdict.apart == "size":
                self._refuse_apart(verdict, own.usual_size, peak, f"at most {peak:.3g}")
            if self._sizes() is None:  # usual peaks apart: judged by them only where train cannot be binned
                if verdict.apart == "peak":
                    self._refuse_apart(verdict, own.usual_peak, peak, f"{peak:.3g}", "usual largest feature")
                return self._say()
        ref = self._sizes()
        if ref is None and self.why:
            return self._say()
        itself = ref is None  # the run's own training split: its own pass
        ref = ref if ref is not None else self.own
        verdict = judge(own, Figures.of(ref), (), itself=itself)
        self._tolerated(verdict, own.usual_size, ref.usual())
        self._refuse_far(peaks, verdict.bound, f"{ref.usual():.3g}")
        self._refuse_apart(verdict, own.usual_size, ref.usual())

    def _refuse_far(self, peaks: np.ndarray, bound: float, usual: str, most: str = "") -> None:
        rows = np.flatnonzero(np.isfinite(peaks) & (peaks > bound))
        if len(rows):
            path = terminal_safe(self.fs.paths(self.split, self.name)[rows[0]])
            listed = f"{', '.join(map(str, rows[:5].tolist()))}{' ...' if len(rows) > 5 else ''}"
            raise RowsRefused(
                f"{self.where()} holds {len(rows)} row(s) ({listed}; e.g. {path}) with features far over the usual "
                f"feature size of run {self.run}'s training split {self.train} ({usual}): up to "
                f"{float(peaks[rows].max()):.3g}, over the far rule's bound{most} {bound:.3g} that fit holds every split to. "
                f"An overflow in the model that extracted them (the run would score them at chance); nothing was "
                f"recorded. Check those images and the model's weights, then "
                f"{redo_advice(self.fs, self.split, self.name)} (`featstore check` counts such rows)"
            )

    def where(self) -> str:
        return f"{self.fs.path}:/{self.name}/{self.split}"

    def _refuse_apart(
        self, verdict, own: float, theirs: float, said: str = "", what: str = "usual feature size"
    ) -> None:
        """RowsRefused where the judge found the splits apart (``verdict.apart``), naming ``what`` of each."""
        if not verdict.apart:
            return
        said = said or f"{theirs:.3g}"
        inputs = self.rec.get("inputs")
        held = inputs.get("validation") if isinstance(inputs, Mapping) else None  # the fit held train to it
        held = held if isinstance(held, str) and held not in ("none", self.split) else None
        larger = self.split if own > theirs or held else self.train  # a tiny test is the odd one out, not train
        raise RowsRefused(
            f"{self.where()}'s {what} is {own:.3g} and run {self.run}'s training split {self.train}'s "
            f"{said}: far apart (fit's rule), so one of them is an overflow in the model that extracted it (or "
            f"arrays written unscaled), most likely {larger}, and the run scores {self.split} at chance; nothing was "
            f"recorded. For {larger}: {redo_advice(self.fs, larger, self.name)}"
            + (f", then fit the run again on {self.train}" if larger == self.train else "")
        )


def _binned(fs, name: str, split: str) -> LayerSizes | None:
    """The split's usual size when this process binned it at the store's present state, else None (nothing is read)."""
    got = _CACHE.get((file_state(fs.path), name, split))
    return got if isinstance(got, LayerSizes) else None
