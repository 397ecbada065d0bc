"""``featstore check``'s far rule (:mod:`featstore.store.far`): each split held to its extractor's training split's usual
size, ``train`` or else its largest split, as fit --train holds them (attack 75 #7)."""

from __future__ import annotations

from featstore.store.damaged import DAMAGED
from featstore.store.far import FAR_FACTOR, FAR_FLOOR, Figures, LayerSizes, judge


def reference(file, s, scans: list, usual: dict, own=None) -> tuple[LayerSizes, str]:
    """(usual size, how lines name it) of the far rule's training split for ``s``: its extractor's split ``train``, else
    its largest plain split (as fit --train picks one: attack 75 #7), read once per check (``own``: the split's own
    sizes, when it is that split)."""
    same = [r for r in scans if r.name == s.name and not r.copies]
    ref = next((r for r in same if r.split == "train"), None) or max(same or [s], key=lambda r: (r.rows, r.split))
    named = f"the training split {ref.split}" + (
        " (no split is named train: the largest)" if ref.split != "train" else ""
    )
    if (ref.name, ref.split) not in usual and own is not None and ref is s:
        usual[ref.name, ref.split] = own
    return sizes_of(file, ref, usual), named


def sizes_of(file, r, usual: dict) -> LayerSizes:
    """The :class:`LayerSizes` of scanned split ``r``, read once per check."""
    if (r.name, r.split) not in usual:
        sizes = LayerSizes()
        for i in range(0, r.rows, r.step):
            with file.open("r") as f:
                try:
                    sizes.add(f[r.name][r.split]["features"][i : min(i + r.step, r.rows)])
                except DAMAGED:  # the split's own scan names it
                    pass
        usual[r.name, r.split] = sizes
    return usual[r.name, r.split]


def others(file, s, scans: list, usual: dict) -> list[LayerSizes]:
    """The sizes of ``s``'s extractor's other plain splits (not its training split, not ``s``): which of two splits
    apart is the odd one out (read only for a split apart)."""
    ref = reference(file, s, scans, usual)[0]
    same = [r for r in scans if r.name == s.name and not r.copies and r is not s]
    return [z for z in (sizes_of(file, r, usual) for r in same) if z is not ref]


def far_lines(where: str, far_rows: int, own: LayerSizes, bounds, redo: str, others=None) -> list[str]:
    """``featstore check``'s far-rule line of a split (``where``) with ``far_rows`` far rows and its usual size ``own``
    (``bounds(own)``: the training split's usual size and how lines name it; ``others()``: the extractor's other
    splits' sizes), as fit refuses it: splits apart are said as such, naming train when train's usual size is far
    under this split's and the other splits agree with this one (attack 76 #7: it listed every row of the honest
    splits as overflows), else the odd one out, else the larger."""
    out: list[str] = []
    ref, named = bounds(own)
    overflow = "an overflow in the model (fit, sweep, fewshot and probe refuse them)"
    figs, theirs = Figures.of(own), Figures.of(ref)
    verdict = judge(figs, theirs, itself=ref is own)  # fit's judge, on the sizes check binned anyway
    if verdict.needs == "others":  # splits apart: the odd one out
        verdict = judge(figs, theirs, [o.usual() for o in others()] if others else [])
    split_apart, likely = verdict.apart == "size", verdict.odd
    if far_rows and verdict.refused != "apart":
        out.append(
            f"{where}: {far_rows} rows hold features over {FAR_FACTOR:.0e} times the usual feature size of "
            f"{named} ({ref.usual():.3g}) and over {FAR_FLOOR:.0e} times its rows' usual largest one (the bound "
            f"{ref.bound():.3g}): {overflow}; check the images and weights, then {redo}"
        )
    elif split_apart:  # one of the two is an overflow (or underflowed, or unscaled): attack 75 #2, 76 #1
        mine = likely == "own" or (likely is None and own.usual() > ref.usual())
        why = {"ref": "the other splits agree with this one", "own": f"the other splits agree with {named}"}
        because = why.get(likely or "", "the larger")
        out.append(
            f"{where}: its usual feature size {own.usual():.3g} and {named}'s {ref.usual():.3g} are over "
            f"{FAR_FACTOR:.0e} times apart: one of them is {overflow} or an underflow (or arrays written unscaled), "
            "most likely "
            + (
                f"this split ({because}); {redo}"
                if mine
                else f"{named} ({because}): make that split again (`featstore info` of this store shows how it was made)"
            )
        )
    return out
