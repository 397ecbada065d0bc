"""What gives an ensemble figures on a split it has none for: ``runs evaluate`` refuses an ensemble (its extractor,
``a+b``, is no group of the store), and says what works instead (attack 67 #1), or, on rows its members were fitted
on, that nothing does (attack 71 #1)."""

from __future__ import annotations

from collections.abc import Sequence

from featstore.runs.record import RunRecord


def rebuild_advice(rec: RunRecord, split: str, where: str = "", fitted: Sequence[str] = ()) -> str:
    """What gives ensemble ``rec`` figures on ``split``: its members evaluated there, then the same members and
    weights made an ensemble again (``runs evaluate`` refuses an ensemble: attack 67 #1); ``where``: the ``--store``
    and ``--runs`` options to repeat. ``fitted``: its members fitted on ``split``'s rows
    (:func:`featstore.runs.fittedrows.fitted_members`): there that advice was a dead end, a fit keeps no predictions
    of its training split, and would give resubstitution figures anyway: it says so instead (attack 71 #1)."""
    members = list(dict.fromkeys(rec.members))
    if fitted:
        return (
            f"{split!r} holds rows its member{'s' if len(fitted) > 1 else ''} {', '.join(fitted)} "
            f"{'were' if len(fitted) > 1 else 'was'} fitted on: an ensemble of runs fitted there has only "
            f"resubstitution figures there, which estimate nothing for new images, and featstore makes none; judge "
            f"it on a split none of its members was fitted on"
        )
    evaluate = " and ".join(f"`featstore runs evaluate {m} --split {split}{where}`" for m in members)
    weights = " ".join(f"--weight {float(w)!r}" for w in rec.weights)
    return (
        f"evaluate its members on {split} ({evaluate}), then make the ensemble again with the same members and "
        f"weights (`featstore ensemble {' '.join(rec.members)} {weights}{where}`): the new one has {split}'s figures "
        f"and keeps this one's selection marks"
    )
