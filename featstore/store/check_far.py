"""``featstore check``'s far rule (:mod:`featstore.store.far`): each split held to its extractor's training split's usual
size, ``train`` or else its largest split, as fit --train holds them (attack 75 #7)."""

from __future__ import annotations

from featstore.store.damaged import DAMAGED
from featstore.store.far import FAR_FACTOR, LayerSizes, apart


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
    if (ref.name, ref.split) not in usual:
        sizes = LayerSizes()
        for i in range(0, ref.rows, ref.step):
            with file.open("r") as f:
                try:
                    sizes.add(f[ref.name][ref.split]["features"][i : min(i + ref.step, ref.rows)])
                except DAMAGED:  # the split's own scan names it
                    pass
        usual[ref.name, ref.split] = sizes
    return usual[ref.name, ref.split], named


def far_lines(where: str, far_rows: int, own: LayerSizes, bounds, redo: str) -> list[str]:
    """``featstore check``'s far-rule line of a split (``where``) with ``far_rows`` far rows and its usual size ``own``
    (``bounds(own)``: the training split's usual size and how lines name it), as fit refuses it."""
    out: list[str] = []
    ref, named = bounds(own)
    overflow = "an overflow in the model (fit, sweep, fewshot and probe refuse them)"
    if far_rows:
        out.append(
            f"{where}: {far_rows} rows hold features over {FAR_FACTOR:.0e} times the usual feature size of "
            f"{named} ({ref.usual():.3g}): {overflow}; check the images and weights, then {redo}"
        )
    elif apart(own.usual(), ref.usual()):  # under train's / 1e6: train itself is the overflow (attack 75 #2)
        mine = own.usual() > ref.usual()  # the larger is most likely the overflow
        out.append(
            f"{where}: its usual feature size {own.usual():.3g} and {named}'s {ref.usual():.3g} are over "
            f"{FAR_FACTOR:.0e} times apart: one of them is {overflow}, most likely "
            + (
                f"this split; {redo}"
                if mine
                else f"{named}: make that split again (`featstore info` of this store shows how it was made)"
            )
        )
    return out
