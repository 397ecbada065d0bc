"""``probe``'s "best on validation": ties named, and the best against the runner-up on the same validation rows.

The best validation accuracy alone read as a finding: ``alpha`` was "best" over an extractor with the very same
features only because it was listed first, and the kNN probe over the linear one by one row of 20 (attack 63 #9).
:func:`best_of` names every probe at the top score (``tied``) and compares the best with the runner-up (the next
lower score): an exact McNemar test on the validation rows where one is right and the other wrong, when both were
scored on the same rows (the same extractor, or extractors whose validation splits list the same images with the
same labels), else whether their 95 % Wilson intervals overlap. The choice is made on these rows, so a lead is an
upper bound: ``featstore report.protocols.probe_table`` says so, and test is where to compare.
"""

from __future__ import annotations

import numpy as np

from featstore.stats.paired import mcnemar_p

ALPHA = 0.05


def best_of(cells: list[dict], right: dict[tuple[str, str], np.ndarray], rows: dict[str, str]) -> dict:
    """The probe summary's ``best``: ``extractor``, ``probe``, ``validation`` (the first of the best, as before),
    ``tied`` (every probe at that score, when more than one) and ``runner_up`` with ``versus`` (the paired test or
    the intervals' overlap, and its ``verdict``). ``right``: (extractor, "linear"/"knn") -> which validation rows it
    got right; ``rows``: extractor -> an identity of its validation rows (paths and labels)."""
    options = [(c["linear"]["validation"], c["extractor"], "linear", c["linear"]["validation_ci"]) for c in cells]
    options += [(c["knn"]["validation"], c["extractor"], "knn", c["knn"]["validation_ci"]) for c in cells if c["knn"]]
    top = max(o[0] for o in options)
    tied = [o for o in options if o[0] == top]
    _, name, kind, ci = tied[0]
    out: dict = {"extractor": name, "probe": kind, "validation": top}
    if len(tied) > 1:
        out["tied"] = [{"extractor": n, "probe": k} for _, n, k, _ in tied]
    below = [o for o in options if o[0] < top]
    if below:
        v2, n2, k2, ci2 = max(below, key=lambda o: o[0])  # the first of the runners-up
        out["runner_up"] = {"extractor": n2, "probe": k2, "validation": v2}
        a, b = right.get((name, kind)), right.get((n2, k2))
        if a is not None and b is not None and rows.get(name) == rows.get(n2) and len(a) == len(b):
            only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
            p = mcnemar_p(only_a, only_b)
            out["versus"] = {
                "test": "McNemar (exact) on the same validation rows",
                "p": p,
                "discordant": only_a + only_b,
                "n": len(a),
                "verdict": "larger than chance" if p < ALPHA else "within noise",
            }
        else:  # other rows (extractors of other images): no paired test, the intervals only
            apart = ci["low"] > ci2["high"]
            out["versus"] = {
                "test": "95 % Wilson intervals (other validation rows: no paired test)",
                "verdict": "the intervals do not overlap" if apart else "within noise (the intervals overlap)",
            }
    return out
