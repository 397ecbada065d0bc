"""Attack 78 #4, #2, #5, #6 (fixDW): a sweep's test notes, test compared with the rows the choice was made on, probe
--refit's partial count, and the union count held one training split at a time."""

import numpy as np
import pytest

from featstore.errors import ConfigError
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


def _noise(path, n=24, d=16, test_rows=None, seed=3):
    """train and validation of noise; test written from validation's rows (``test_rows``: the first of them; the rest
    fresh), as an extraction of the validation folder would."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int32)
    Xt, Xv, Xs = (rng.normal(size=(n, d)).astype(np.float32) for _ in range(3))
    k = n if test_rows is None else test_rows
    Xs[:k] = Xv[:k]
    for split, X in (("train", Xt), ("validation", Xv), ("test", Xs)):
        write_arrays(path, "noise", split, X, y, ["a", "b"])


def test_sweep_withholds_test_on_the_rows_it_chose_on(tmp_path):
    """#2: test = validation's rows: the winner's test figure would be the choice's own maximum: withheld."""
    s = tmp_path / "s.h5"
    _noise(s)
    out = sweep(s, ["knn"], params={"knn": {"n_neighbors": [1, 3, 5]}}, runs=tmp_path / "runs")
    w = out["winner"]
    assert "rows the choice was made on" in w["test_withheld"] and "'validation'" in w["test_withheld"]
    assert w.get("test") is None


def test_sweep_notes_a_few_test_rows_of_validation(tmp_path):
    s = tmp_path / "s.h5"
    _noise(s, test_rows=3)
    w = sweep(s, ["knn"], runs=tmp_path / "runs")["winner"]
    assert "3 of the 24 rows of 'test' (noise) are rows of 'validation', the rows the choice" in w["test_note"]


def test_probe_refuses_test_on_the_rows_it_chose_on(tmp_path):
    from featstore.experiments.probe import probe

    s = tmp_path / "s.h5"
    _noise(s)
    with pytest.raises(ConfigError, match="rows of 'validation', the rows the choice was made on"):
        probe(s, knn=False, runs=tmp_path / "runs")


def test_fit_search_notes_test_on_the_rows_it_chose_on(tmp_path):
    from featstore.experiments.fit import fit

    s = tmp_path / "s.h5"
    _noise(s)
    rec = fit(s, "knn", {"n_neighbors": [1, 3]}, runs=tmp_path / "runs")
    notes = " ".join(rec.get("notes") or [])
    assert (
        "rows of 'validation', the rows the choice was made on: its figure there is the choice's own maximum" in notes
    )


def test_fewshot_refuses_test_on_the_rows_its_epoch_is_chosen_on(tmp_path):
    from featstore.experiments.fewshot import fewshot

    s = tmp_path / "s.h5"
    _noise(s)
    with pytest.raises(ConfigError, match="rows of 'validation', the rows the choice was made on"):
        fewshot(s, "dense", shots=(1,), trials=1, runs=tmp_path / "runs")
