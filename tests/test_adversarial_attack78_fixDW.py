"""Attack 78 #4, #2, #5, #6 (fixDW): a sweep's test notes, test compared with the rows the choice was made on, probe
--refit's partial count, and the union count held one training split at a time."""

import numpy as np

from featstore.experiments.sweep import sweep
from featstore.store.writer import write_arrays

C = ["a", "b", "c"]


def _groups(path, specs, n=90, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3).astype(np.int32)
    for g, shift, shared in specs:
        Xt, Xv, Xs = ((rng.normal(size=(n, d)) + y[:, None] * shift).astype(np.float32) for _ in range(3))
        Xs[:shared] = Xt[:shared]  # test rows that are train's
        for split, X in (("train", Xt), ("validation", Xv), ("test", Xs)):
            write_arrays(path, g, split, X, y, C)
    return y


def test_sweep_keeps_the_reused_winners_test_note(tmp_path):
    """#4: g1 fitted now (2 of test's rows are train's), g2 reused and the winner (30 of 90): both notes kept."""
    s = tmp_path / "s.h5"
    _groups(s, (("g1", 0.0, 2), ("g2", 3.0, 30)))
    sweep(s, ["logreg"], extractors=["g2"], runs=tmp_path / "runs")
    both = sweep(s, ["logreg"], extractors=["g1", "g2"], runs=tmp_path / "runs")
    w = both["winner"]
    assert w["extractor"] == "g2" and both.get("reused")
    assert "30 of the 90 rows of 'test' (g2)" in w["test_note"]
    assert "2 of the 90 rows of 'test' (g1)" in w["test_note"]
