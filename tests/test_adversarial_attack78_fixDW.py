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


def _refit_store(path, n_train=200, n_val=400, n_test=100, from_train=40, from_val=0, seed=5):
    rng = np.random.default_rng(seed)
    made = {}
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_test)):
        made[split] = (rng.normal(size=(n, 4)).astype(np.float32), (np.arange(n) % 2).astype(np.int32))
    Xs, ys = made["test"]
    for src, k, at in (("train", from_train, 0), ("validation", from_val, from_train)):
        Xs[at : at + k], ys[at : at + k] = made[src][0][:k], made[src][1][:k]
    for split, (X, y) in made.items():
        write_arrays(path, "g", split, X, y, ["a", "b"])


def test_refit_keeps_the_count_beside_a_split_not_compared(tmp_path, monkeypatch):
    """#5: validation over the caps (MAX_ROWS lowered to stand for 2^24 rows): train's 40 rows of test are said."""
    from featstore.experiments.probe import probe
    from featstore.runs import fittedrows

    s = tmp_path / "s.h5"
    _refit_store(s)
    monkeypatch.setattr(fittedrows, "MAX_ROWS", 300)
    notes = " ".join(probe(s, refit=True, knn=False, runs=tmp_path / "runs")["notes"])
    assert "40 of the 100 rows of 'test' (g) are rows of 'train'" in notes
    assert "not compared with those of 'validation'" in notes and "400 rows" in notes


def test_union_holds_one_training_split_at_a_time_and_is_kept(tmp_path, monkeypatch):
    """#6: the union of test's rows in train and validation: one TrainingRows alive at a time, none built again."""
    import weakref

    from featstore.experiments.training_rows import compared_with
    from featstore.runs import fittedrows
    from featstore.store.reader import FeatureStore

    s = tmp_path / "s.h5"
    _refit_store(s, n_val=300, from_train=5, from_val=5)
    live, peak, built = set(), [0], [0]
    init = fittedrows.TrainingRows.__init__

    def counted(self, *a, **kw):
        init(self, *a, **kw)
        built[0] += 1
        live.add(id(self))
        weakref.finalize(self, live.discard, id(self))
        peak[0] = max(peak[0], len(live))

    monkeypatch.setattr(fittedrows.TrainingRows, "__init__", counted)
    fs = FeatureStore(s)
    got = compared_with(fs, "g", ("train", "validation"), "test")
    assert got == {"shared": 10, "rows": 100}
    assert peak[0] == 1
    before = built[0]
    assert compared_with(fs, "g", ("train", "validation"), "test") == got
    assert built[0] == before
