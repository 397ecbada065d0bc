"""The far-row rule: the training split's usual size, the rows with a feature far over it, and the splits
whose own usual size is far from it.

A split's *usual size* is the median over its rows of each row's typical magnitude: the geometric mean of its non-zero
magnitudes, every finite one down to float32's smallest subnormal (2^-149) counted (zeros, a ReLU's, left out; a row
of all zeros has no size and is left out of the median; a split of such rows only has none). Its *usual peak* is the
median over those rows of each row's largest magnitude. A row of train, of its augmented copies, of validation or of
test is *far* when one of its features is over the *bound*: :data:`FAR_FACTOR` times train's usual size, or
:data:`FAR_FLOOR` times train's usual peak where that is larger (the floor: a row's largest values are up to ~1e3 x
its geometric mean in honest layers with many tiny values, a softmax's or a sparse map's, and a row of a layer of
values ~1 at 1e3 is honest), so a layer of small values is held to its own sizes (attack 76 #1: a layer all ~1e-4 had
no size counted from 2^-10 up, and its rows at 900 passed); a train split with no size has the bound FAR_FLOOR. A split
whose own usual size (or usual peak: every first pass has it, so no binning is needed to see it) is over FAR_FACTOR
times train's, or under train's / FAR_FACTOR, whatever their magnitude, is refused as a whole, naming both sizes and the one most likely wrong: the odd one out when a third split agrees with
one of the two (:func:`odd_one`), else the larger (attack 75 #2, 76 #1 #7: a split 1e-8 x train had no usual size).

Each row weighs one in the median, whatever its zeros: far rows must be over half of the split's rows (with a
non-zero feature) to move it, also in a sparse ReLU map where they outnumbered a column's non-zero values (attack 75
#1). A row's typical size is a geometric mean over all its columns, so a channel large in every row (a ViT's "massive
activations") is one column among many and does not lift it (attack 72 #2), while a row 5e8 x the others in every
other column is far; a split all ~1e12 x train is far (attack 72 #1).

Cost: each row's mean binary exponent and largest magnitude (integer steps on the float32 bits, in chunks of
:data:`_CHUNK` features whatever the width: about 8 MB of temporaries; subnormals, which share the exponent field 0
with zeros, are read from their mantissa only in a chunk that holds one), then histograms of 1-octave bins over rows
(a few KB). The usual size is its median bin's upper edge: at most 4 x the row's geometric mean, never under it, so
the rule never refuses what the exact median would not; the usual peak likewise. Every split's first pass (fit's
NaN/inf check, ``nonfinite.NonfiniteRows``) reads every row's peak and bins a strided sample of its rows (at least
:data:`SAMPLE`; all of a smaller split's), so fit judges the usual sizes of both splits (attack 79 #5, 81 #1: a test
split 1e-9 x a dense train whose usual peak was train's) with no second read unless :func:`sample_clears` cannot
clear it (then the splits are binned whole and judged exactly). The decision itself is :func:`judge`'s, one for fit, ``featstore check`` and ``runs evaluate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# a row this many times train's usual size is an overflow: one train row of 1e14 among rows near 1 set the scaler's
# spread as 1e20 did (attack 66 #4: fitted at chance, exit 0), and so did a whole class of them (attack 69 #2), copies
# or a test split all 1e12 x train (attack 72 #1), a row 5e8 x the others in every column but one large channel (attack
# 72 #2), 13 % of a sparse map's rows (75 #1), or train itself (75 #2). Backbones' rows differ by tens at most; the
# floor (times train's usual peak) keeps a row's honest largest values, up to ~1e3 x its geometric mean, from being far
FAR_FACTOR, FAR_FLOOR = 1e6, 1e3
_LO, NBINS = (
    -149,
    279,
)  # 1-octave bins of an exponent from float32's smallest subnormal 2^-149 up (inf: 2^128, the last)
_CHUNK = 1 << 20  # features binned at once
# a split's first pass bins every k-th row, k its rows // SAMPLE (all of a smaller split's): the usual size is a median
# over rows and the rule's margin FAR_FACTOR, so a few thousand rows tell it; a split the sample cannot clear is binned
# whole before it is judged (only a store refused, or near a threshold, pays it)
SAMPLE = 2048
_MAG, _MIN_NORMAL = np.uint32(0x7FFFFFFF), 0x00800000  # the magnitude bits; the smallest normal float32's bits


def _bins(e: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(e) - _LO, 0, NBINS - 1).astype(np.int64)


def _median_edge(counts: np.ndarray) -> float:
    """The upper edge of the lower median row's bin (0.0 for no row)."""
    n = int(counts.sum())
    if not n:
        return 0.0
    return float(2.0 ** (_LO + 1 + int(np.argmax(np.cumsum(counts) > (n - 1) // 2))))


def row_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's mean binary exponent over its non-zero magnitudes, NaN for a row of zeros; each row's largest
    magnitude's float32 bits), read from the float32 bits (float16/float64 rows are binned as float32), in chunks of
    rows of :data:`_CHUNK` features at most."""
    rows = np.asarray(X).reshape(len(X), -1)
    total, count = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
    top = np.zeros(len(rows), np.uint32)
    if rows.size:
        d = rows.shape[1]
        rstep, cstep = max(1, _CHUNK // d), min(d, _CHUNK)  # a wide row is binned a column slice at a time
        buf = np.empty((min(rstep, len(rows)), cstep), np.uint32)  # one buffer per call: fresh pages cost a read's
        for i in range(0, len(rows), rstep):
            for j in range(0, d, cstep):
                part = rows[i : i + rstep, j : j + cstep]
                u = (part if part.dtype == np.float32 else np.asarray(part, np.float32)).view(np.uint32)
                a = np.bitwise_and(u, _MAG, out=buf[: len(u), : u.shape[1]])
                np.maximum(top[i : i + rstep], a.max(axis=1), out=top[i : i + rstep])
                nz = np.count_nonzero(a, axis=1)
                count[i : i + rstep] += nz
                a >>= 23  # the biased exponent (the sign masked off): 0 for zeros and subnormals
                total[i : i + rstep] += a.sum(axis=1, dtype=np.uint32)  # at most 255 x 2^20: no overflow
                if np.count_nonzero(a) < int(nz.sum()):  # a subnormal (rare): its exponent from its mantissa
                    m = u & _MAG
                    r, c = np.nonzero((m > 0) & (m < _MIN_NORMAL))
                    biased = np.frexp(m[r, c].astype(np.float64))[1] - 1 - 149 + 127  # value = mantissa x 2^-149
                    total[i : i + rstep] += np.bincount(r, biased, len(m)).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1) - 127, np.nan), top


def row_exponents(X: np.ndarray) -> np.ndarray:
    """Each row's mean binary exponent over its non-zero magnitudes (NaN for a row of zeros): :func:`row_stats`'s first.

    >>> row_exponents(np.array([[1.0, 0.0, 4.0], [0.0, 0.0, 0.0], [-1e3, 1e3, 1e3], [2**-140, 0, 0]], np.float32)).tolist()
    [1.0, nan, 9.0, -140.0]
    """
    return row_stats(X)[0]


class Peaks:
    """A split's rows' largest magnitudes, fed block by block (``add``, each row's from :func:`nonfinite.row_peaks` or
    :func:`row_stats`): a histogram over rows (all-zero rows and NaN/inf left out) and the largest finite one
    (``top``); what the first pass over a split gives for free, so the far rule's floor needs no binning."""

    def __init__(self) -> None:
        self.counts = np.zeros(NBINS, np.int64)
        self.top = 0.0

    def add(self, peaks: np.ndarray) -> None:
        p = np.asarray(peaks, np.float64)
        p = p[np.isfinite(p) & (p > 0)]
        if len(p):
            self.counts += np.bincount(_bins(np.frexp(p)[1] - 1), minlength=NBINS)
            self.top = max(self.top, float(p.max()))

    def usual(self) -> float:
        """The median row's largest magnitude (its bin's upper edge); 0.0 for a split of all-zero rows."""
        return _median_edge(self.counts)

    def floor(self) -> float:
        """The far rule's floor: FAR_FLOOR x the usual peak, or FAR_FLOOR itself for a split with no size."""
        return FAR_FLOOR * self.usual() if self.counts.any() else FAR_FLOOR


class LayerSizes:
    """A split's usual size, fed block by block (``add``): a histogram over rows of each row's mean exponent, and its
    rows' largest magnitudes (``peaks``, with ``top``, the largest finite one).

    >>> s = LayerSizes(); s.add(np.array([[1.0, 0.0, 3.0]] * 9 + [[1e12, 1e12, 0.0]], np.float32))
    >>> s.usual(), s.peaks.usual(), s.bound(), s.top
    (2.0, 4.0, 2000000.0, 999999995904.0)
    >>> t = LayerSizes(); t.add(np.array([[1e-4, 3e-4]] * 9 + [[900.0, 900.0]], np.float32)); float(t.bound())
    244.140625
    """

    def __init__(self) -> None:
        self.counts = np.zeros(NBINS, np.int64)
        self.peaks = Peaks()

    @property
    def top(self) -> float:
        return self.peaks.top

    def add(self, X: np.ndarray) -> None:
        self.add_stats(*row_stats(X))

    def add_stats(self, e: np.ndarray, top: np.ndarray) -> None:
        """Add rows from :func:`row_stats` (a pass that read them for their largest magnitudes anyway)."""
        self.add_exponents(e)
        self.peaks.add(top.view(np.float32))  # NaN left out; inf rows are refused before any far rule

    def add_exponents(self, e: np.ndarray) -> None:
        """Add rows' mean exponents only (:func:`row_stats`' first; a sample of rows whose peaks were added whole)."""
        e = e[~np.isnan(e)]
        if len(e):
            self.counts += np.bincount(_bins(e), minlength=NBINS)

    def spread(self, q: float) -> tuple[float, float]:
        """(lower, upper): the upper edges of the bins of the rows at quantiles ``q`` and 1 - ``q``, between which a
        sample's whole split's median lies (0.0 for no row)."""
        n, c = int(self.counts.sum()), np.cumsum(self.counts)
        if not n:
            return 0.0, 0.0
        return tuple(float(2.0 ** (_LO + 1 + int(np.argmax(c > int(n * f))))) for f in (q, 1 - q))  # type: ignore[return-value]

    def usual(self) -> float:
        """The median row's typical size (the upper edge of its bin; the lower median: far rows must be over half of
        the rows to move it; all-zero rows left out); 0.0 for a split of all-zero rows."""
        return _median_edge(self.counts)

    def bound(self) -> float:
        """The far rule's bound: a feature over it is far (FAR_FACTOR x the usual size, or the floor where larger)."""
        return max(FAR_FACTOR * self.usual(), self.peaks.floor())


class Recorded:
    """A training split's far-rule figures as a fit recorded them in its run (:func:`summary`): its usual peak's floor
    and largest feature always, its usual size and bound when the fit binned it (``usual`` None: not binned)."""

    def __init__(self, got: dict):
        self.floor, self.top, self.usual_peak = float(got["floor"]), float(got["top"]), float(got["usual_peak"])
        self.usual_size = None if got.get("usual") is None else float(got["usual"])

    def usual(self) -> float:
        return float(self.usual_size)

    def bound(self) -> float:
        return max(FAR_FACTOR * float(self.usual_size), self.floor)

    def upper(self) -> float:
        """The bound, or where the usual size was not binned the most it can be: a row's geometric mean is at most its
        largest magnitude, so the usual size is at most the usual peak (a row over this is far whatever it is)."""
        return self.bound() if self.usual_size is not None else max(FAR_FACTOR * self.usual_peak, self.floor)

    @staticmethod
    def of(got: object) -> Recorded | None:
        """The record's figures, or None where it holds none usable (an older run, a damaged entry)."""
        try:
            out = Recorded(got)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        nums = [out.floor, out.top, out.usual_peak] + ([] if out.usual_size is None else [out.usual_size])
        return out if all(np.isfinite(v) and v >= 0 for v in nums) else None


def summary(got: object) -> dict | None:
    """What the far rule needs of a training split, from what a pass over it kept anyway (:class:`LayerSizes`: all of
    it; :class:`Peaks`: the floor and largest feature, the usual size left unbinned); None for nothing kept. A fit
    records it so that ``runs evaluate`` holds a split to the rows the run was fitted on (attack 77 #1).

    >>> s = LayerSizes(); s.add(np.array([[1.0, 0.0, 3.0]] * 9, np.float32)); summary(s)["bound"], summary(s.peaks)
    (2000000.0, {'usual_peak': 4.0, 'floor': 4000.0, 'top': 3.0})
    """
    if isinstance(got, LayerSizes):
        return {**summary(got.peaks), "usual": got.usual(), "bound": got.bound()}  # type: ignore[dict-item]
    if isinstance(got, Peaks):
        return {"usual_peak": got.usual(), "floor": got.floor(), "top": got.top}
    return None


def apart(own: float, ref: float) -> bool:
    """Whether two splits' usual sizes (or usual peaks) are over FAR_FACTOR apart either way, whatever their magnitude
    (a split with none, all zeros, is judged by its rows only). The larger had to be over FAR_FLOOR: in a layer of
    values ~1 a test split 1e-8 x train passed at chance (attack 76 #1's gap, closed by the lead)."""
    small, big = sorted((own, ref))
    return small > 0 and big > FAR_FACTOR * small


def odd_one(own: float, ref: float, others: list[float]) -> str | None:
    """Of two splits apart, the one most likely wrong: ``'ref'`` (the training split) when another split agrees with
    ``own`` and none with ``ref``, ``'own'`` in the converse case, else None (the caller names the larger: an overflow).

    >>> odd_one(3e3, 2e-5, [2e3]), odd_one(2e-5, 3e3, [2e3]), odd_one(2e-5, 3e3, [])
    ('ref', 'own', None)
    """
    near = [(not apart(o, own), not apart(o, ref)) for o in others if o > 0]
    if any(a and not b for a, b in near) and not any(b and not a for a, b in near):
        return "ref"
    if any(b and not a for a, b in near) and not any(a and not b for a, b in near):
        return "own"
    return None


@dataclass(frozen=True)
class Figures:
    """One split's measured far-rule figures: its largest finite feature, its usual peak (0.0: no non-zero row) and its
    usual size where it was binned (None: not binned). :meth:`of` takes :class:`LayerSizes`, :class:`Peaks` or
    :class:`Recorded`."""

    top: float
    usual_peak: float
    usual_size: float | None = None

    @staticmethod
    def of(got: LayerSizes | Peaks | Recorded) -> Figures:
        if isinstance(got, LayerSizes):
            return Figures(got.top, got.peaks.usual(), got.usual())
        if isinstance(got, Peaks):
            return Figures(got.top, got.usual())
        return Figures(got.top, got.usual_peak, got.usual_size)

    @property
    def floor(self) -> float:
        """FAR_FLOOR x the usual peak, or FAR_FLOOR itself for a split with no size."""
        return FAR_FLOOR * self.usual_peak if self.usual_peak > 0 else FAR_FLOOR

    @property
    def upper(self) -> float:
        """The bound (FAR_FACTOR x the usual size, or the floor where larger), or where the usual size was not binned
        the most it can be: a row's geometric mean is at most its largest magnitude, so the usual size is at most the
        usual peak."""
        size = self.usual_peak if self.usual_size is None else self.usual_size
        return max(FAR_FACTOR * size, self.floor)


def peaky(ref: Figures) -> bool:
    """Whether a training split's layer is peaky: its usual size under its usual peak / FAR_FLOOR (a softmax's: one large
    value among many tiny ones), where other splits' usual sizes may be far apart honestly (False: not binned).

    >>> peaky(Figures(1.0, 1.0, 4e-5)), peaky(Figures(3.0, 4.0, 0.5)), peaky(Figures(3.0, 4.0))
    (True, False, False)
    """
    return ref.usual_size is not None and FAR_FLOOR * ref.usual_size < ref.usual_peak


def _apart_sizes(own: Figures, ref: Figures) -> bool:
    return own.usual_size is not None and ref.usual_size is not None and apart(own.usual_size, ref.usual_size)


@dataclass(frozen=True)
class Verdict:
    """:func:`judge`'s answer. ``needs``: what to bin before it holds ("ref": the training split's usual size, "own":
    the evaluated split's, "others": the other plain splits' usual sizes, for the odd one out; "" none). ``bound``: a
    row with a feature over it is far. ``far``: the split holds such a row. ``apart``: the two splits are over
    FAR_FACTOR apart by their usual ``"size"`` (or, only while ``needs`` is "ref", their usual ``"peak"``). ``odd``:
    :func:`odd_one`'s. ``tolerated``: accepted though the usual sizes are apart, train being :func:`peaky` (a confident
    softmax does this, and so does an underflow: the caller logs one warning line). While ``needs`` is "ref", ``bound`` is the most the bound can be, and ``far`` and an
    ``apart`` of "size" hold already (a caller that cannot bin train refuses on them, and on "peak")."""

    needs: str = ""
    bound: float = FAR_FLOOR
    far: bool = False
    apart: str = ""
    odd: str | None = None
    tolerated: bool = False

    @property
    def refused(self) -> str:
        """What the split is refused for: "apart" (the odd one out is the training split, or no row is far), "far",
        or "" (accepted)."""
        if self.apart and (not self.far or self.odd == "ref"):
            return "apart"
        return "far" if self.far else ""


def judge(own: Figures, ref: Figures, others: Sequence[float] | None = None, itself: bool = False) -> Verdict:
    """The far rule's one decision, for fit/sweep (``NonfiniteRows.far``), ``featstore check`` (``check_far``) and
    ``runs evaluate`` (``evalrows``): the evaluated split's figures ``own`` against the training split's ``ref``
    (``itself``: they are one split), ``others``: the other plain splits' usual sizes (None: not binned yet).

    Every feature at most FAR_FLOOR and the usual peaks not apart (``small``): a split whose features are all at most
    the floor is accepted without train's usual size where its own usual size is not FAR_FACTOR under train's usual
    peak (it cannot be apart from it), and whatever the usual sizes where train is :func:`peaky` (honest tiny values, a
    softmax's: attack 80 #4; ``tolerated`` where they are apart); else, train dense, the usual sizes are judged (an
    underflow of every feature but each row's largest: attack 81 #1), naming the odd one out.

    >>> dense, soft = Figures(3.0, 4.0, 0.5), Figures(1.0, 1.0, 4e-5)
    >>> judge(Figures(3.0, 4.0, 1e-9), dense, [0.5]).refused, judge(Figures(1.0, 1.0, 1e-13), soft).tolerated
    ('apart', True)

    >>> ones, tiny = Figures(3.0, 4.0, 2.0), Figures(2e3, 4.0, 2e-10)
    >>> judge(Figures(3.0, 4.0, 2.0), ones)
    Verdict(needs='', bound=4000.0, far=False, apart='', odd=None, tolerated=False)
    >>> judge(tiny, ones).needs, judge(tiny, ones, [2.0]).refused, judge(tiny, ones, [2.0]).odd
    ('others', 'apart', 'own')
    >>> judge(Figures(9e6, 4.0), Figures(3.0, 4.0)).needs, judge(Figures(9e6, 4.0, 2.0), ones).refused
    ('ref', 'far')
    """
    peaks_apart = not itself and apart(own.usual_peak, ref.usual_peak)
    # every feature small and the usual peaks alike: no overflow. The usual sizes may be far apart honestly only where
    # train is peaky (one large value among many tiny ones: a softmax's, whose confident split's off-class values are
    # 1e-13 where a less sure one's are 1e-5: attack 80 #4); in a dense layer (usual size near the usual peak) a split
    # far under it is an underflow (attack 81 #1), judged by the sizes. A split whose usual size is not FAR_FACTOR under
    # train's usual peak cannot be apart from a dense train (a usual size is at most the usual peak; over it, the floor)
    small = max(own.top, ref.top) <= FAR_FLOOR and not peaks_apart
    if small and own.top <= ref.floor:
        if peaky(ref):  # accepted; its own usual size only tells whether to warn (apart)
            return Verdict("own" if own.usual_size is None else "", ref.floor, tolerated=_apart_sizes(own, ref))
        if own.usual_size is not None and FAR_FACTOR * own.usual_size >= ref.usual_peak:
            return Verdict(bound=ref.floor)
    if ref.usual_size is None:  # what holds already, whatever train's usual size (at most its usual peak)
        size = own.usual_size is not None and 0 < FAR_FACTOR * ref.usual_peak < own.usual_size
        return Verdict("ref", ref.upper, own.top > ref.upper, "size" if size else "peak" if peaks_apart else "")
    bound = ref.upper
    far = own.top > bound
    if itself or (small and not far and peaky(ref)):
        return Verdict(bound=bound, far=far, tolerated=not itself and _apart_sizes(own, ref))
    if own.usual_size is None:
        return Verdict("own", bound, far)
    if not apart(own.usual_size, ref.usual_size):
        return Verdict(bound=bound, far=far)
    if others is None:
        return Verdict("others", bound, far, "size")
    return Verdict("", bound, far, "size", odd_one(own.usual_size, ref.usual_size, list(others)))


def sample_clears(
    own: LayerSizes | None, ref: LayerSizes, itself: bool = False, exact: tuple[bool, bool] = (False, False)
) -> bool:
    """Whether a split is accepted from the sampled usual sizes of its first pass and the training split's (``own``
    None: the split is ``ref`` itself, ``itself``; ``exact``: which of the two was binned whole): :func:`judge` accepts
    it plainly (no far row, no splits apart, none tolerated) at every corner of the range each whole split's median lies
    in (a sample's 45 % and 55 % rows); a sample of under SAMPLE / 4 sized rows never clears (the caller bins the
    splits whole and judges them exactly)."""
    mine = ref if own is None else own
    sides = [(mine, exact[0] or own is None and exact[1]), (ref, exact[1])]
    if any(not whole and int(z.counts.sum()) < SAMPLE // 4 for z, whole in sides):
        return False
    lo_hi = [(z.usual(), z.usual()) if whole else z.spread(0.45) for z, whole in sides]
    top, peak = mine.top, mine.peaks.usual()
    for a in lo_hi[0]:
        for b in lo_hi[1] if own is not None else [a]:
            theirs = Figures(ref.top, ref.peaks.usual(), b)
            v = judge(Figures(top, peak, a) if own is not None else theirs, theirs, [], itself=itself)
            if v.needs or v.far or v.apart or v.tolerated:
                return False
    return True


def tolerated_line(where: str, own: float, train: str, theirs: float) -> str:
    """The one warning line of a split accepted though its usual size and the training split's are apart (train
    :func:`peaky`: :attr:`Verdict.tolerated`)."""
    return (
        f"{where}'s usual feature size {own:.3g} and the training split {train}'s {theirs:.3g} are over {FAR_FACTOR:.0e} "
        f"times apart, accepted since {train}'s layer is peaky (its usual size far under its usual largest feature) and "
        "every feature is small: a confident softmax does this, and so does an underflow of all but each row's largest "
        "feature (if its figures are near chance, check the model that extracted it)"
    )


def column_peaks(X: np.ndarray) -> np.ndarray:
    """Each column's largest magnitude in ``X`` (NaN where a column holds one): two reductions, no copy of ``X``."""
    rows = np.asarray(X).reshape(len(X), -1)
    with np.errstate(invalid="ignore"):
        return np.maximum(rows.max(axis=0, initial=0), -rows.min(axis=0, initial=0)).astype(np.float64)


def far_mask(X: np.ndarray, bound: float) -> np.ndarray:
    """The rows of ``X`` with a feature over ``bound`` (in chunks of rows: no copy of the whole block)."""
    rows = np.asarray(X).reshape(len(X), -1)
    out = np.zeros(len(rows), bool)
    if not rows.size:
        return out
    step = max(1, _CHUNK // rows.shape[1])
    with np.errstate(invalid="ignore"):
        for i in range(0, len(rows), step):
            part = rows[i : i + step]
            hi, lo = (
                part.max(axis=1).astype(np.float64),
                part.min(axis=1).astype(np.float64),
            )  # float16: no cast of bound
            out[i : i + step] = (hi > bound) | (-lo > bound)
    return out
