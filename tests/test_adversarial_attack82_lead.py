"""Attack 82 #2, #4 (the lead): a run folder's marker nested 4000 deep is a marker of a new version (it ended `runs`,
`runs show` and a fit after its classifier was fitted in a RecursionError), and the rows rule's union of several
training splits holds a fit's --memory-budget (64 MiB blocks, digests kept during the streamed fit)."""

from __future__ import annotations

import numpy as np

from featstore.experiments import training_rows
from featstore.runs import fittedrows
from featstore.runs.swap import read_marker
from featstore.runs.versions import TMP_MARKER
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays


def test_a_marker_nested_too_deep_is_a_new_versions(tmp_path):
    (tmp_path / TMP_MARKER).write_text("[" * 4000)
    assert read_marker(tmp_path) == {"role": "new"}


def test_the_union_holds_the_memory_budget(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    X = {s: rng.normal(size=(n, 16)).astype(np.float32) for s, n in (("train", 300), ("validation", 200))}
    X["test"] = np.concatenate([X["train"][:2], X["validation"][:2], rng.normal(size=(96, 16)).astype(np.float32)])
    for s, x in X.items():
        write_arrays(tmp_path / "s.h5", "synthetic", s, x, np.arange(len(x)) % 2, ["a", "b"])
    fs = FeatureStore(tmp_path / "s.h5")
    seen = []
    real = training_rows.digest_blocks
    monkeypatch.setattr(training_rows, "digest_blocks", lambda f, n, s, b: seen.append(b) or real(f, n, s, b))
    training_rows._UNION.clear()
    fittedrows.release_held()
    got = training_rows.compared_with(fs, "synthetic", ("train", "validation"), "test", memory_budget=1 << 20)
    assert got == {"shared": 4, "rows": 100}
    assert seen and max(seen) <= (1 << 20) // 16, seen  # the rule's small blocks, not 64 MiB
    assert not fittedrows.holds_rows(fs, "synthetic", "train") and not fittedrows.holds_rows(
        fs, "synthetic", "validation"
    )


def test_phase_a_rows_in_another_store_join_the_union(tmp_path):
    """Attack 82 #3: finetune judged phase A's training split in another store on its own (3 of 8 and 3 of 8 of
    train/validation: two notes, 6 of 8 not held out). The union takes a ``(store, split)`` of another store."""
    import pytest

    from featstore.errors import ConfigError
    from featstore.experiments.finetune_rows import _refuse_together

    rng = np.random.default_rng(1)
    tr, va, other = (rng.normal(size=(n, 8)).astype(np.float32) for n in (40, 20, 40))
    test = np.concatenate([other[:3], va[:3], rng.normal(size=(2, 8)).astype(np.float32)])
    for s, x in (("train", tr), ("validation", va), ("test", test)):
        write_arrays(tmp_path / "f.h5", "synthetic", s, x, np.zeros(len(x), int), ["a", "b"])
    write_arrays(tmp_path / "g.h5", "synthetic", "train", other, np.zeros(40, int), ["a", "b"])
    fs, gfs = FeatureStore(tmp_path / "f.h5"), FeatureStore(tmp_path / "g.h5")
    training_rows._UNION.clear()
    got = training_rows._union(fs, "synthetic", ["train", "validation", (gfs, "train")], "test")
    assert got == {"shared": 6, "rows": 8}
    with pytest.raises(ConfigError, match=r"6 of the 8 rows of 'test' .* of .*g\.h5 \(phase A's head\)"):
        _refuse_together(fs, "synthetic", ["train", "validation", (gfs, "train")], (gfs, "train"))


def _evaluated(tmp_path, test_of):
    """A logreg fitted with no test on a store whose test split is ``test_of(train, validation)``; then evaluated."""
    from featstore import fit
    from featstore.experiments.evaluate import evaluate_and_record

    rng = np.random.default_rng(3)
    y = np.arange(40) % 2
    X = {s: (rng.normal(size=(40, 8)) + y[:, None]).astype(np.float32) for s in ("train", "validation")}
    for s in ("train", "validation"):
        write_arrays(tmp_path / "f.h5", "synthetic", s, X[s], y, ["a", "b"])
    rec = fit(tmp_path / "f.h5", "logreg", {"C": [0.01, 1.0, 100.0]}, runs=tmp_path / "runs", test="none")
    write_arrays(tmp_path / "f.h5", "synthetic", "test", *test_of(X, y, rng), ["a", "b"])
    return lambda: evaluate_and_record(rec.id, "test", tmp_path / "f.h5", tmp_path / "runs")


def test_runs_evaluate_refuses_a_test_of_the_rows_the_run_chose_on(tmp_path):
    """Attack 82 #1: test = validation's rows was recorded as a held-out 0.975, no note, no mark."""
    import pytest

    from featstore.errors import ConfigError

    run = _evaluated(tmp_path, lambda X, y, rng: (X["validation"], y))
    with pytest.raises(
        ConfigError, match=r"40 of the 40 rows of 'test' .* are rows of 'validation', the rows the choice"
    ):
        run()


def test_runs_evaluate_judges_train_and_validation_together(tmp_path):
    """fixEB's case in runs evaluate: 15 of train's rows and 15 of validation's in 40 (each a minority)."""
    import pytest

    from featstore.errors import ConfigError

    def mixed(X, y, rng):
        return np.concatenate([X["train"][:15], X["validation"][15:30], rng.normal(size=(10, 8)).astype(np.float32)]), y

    with pytest.raises(ConfigError, match=r"30 of the 40 rows of 'test' .* \(15\) or of 'validation' \(15\)"):
        _evaluated(tmp_path, mixed)()


def test_runs_evaluate_notes_a_few_rows_it_chose_on_and_records(tmp_path, caplog):
    def one(X, y, rng):
        return np.concatenate([X["validation"][:1], rng.normal(size=(39, 8)).astype(np.float32)]), y

    with caplog.at_level("WARNING"):
        rec, _, said = _evaluated(tmp_path, one)()
    assert said.startswith("recorded") and "test" in rec.metrics
    assert any(
        "1 of the 40 rows of 'test'" in r.message and "optimistic by at most 1 row" in r.message for r in caplog.records
    )


def test_runs_evaluate_says_a_split_over_the_caps_was_not_compared_with_the_rows_it_chose_on(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(fittedrows, "MAX_ROWS", 50)  # stands for 2^24 rows: test's 60 are over it
    monkeypatch.setattr(fittedrows, "_COUNTS", {})
    monkeypatch.setattr(fittedrows, "_TRAIN", {})
    training_rows._UNION.clear()
    run = _evaluated(tmp_path, lambda X, y, rng: (rng.normal(size=(60, 8)).astype(np.float32), np.arange(60) % 2))
    with caplog.at_level("WARNING"):
        _, _, said = run()
    assert said.startswith("recorded")
    assert any(
        "were not compared with those of 'validation', the rows the choice was made on" in r.message
        for r in caplog.records
    ), [r.message for r in caplog.records]
