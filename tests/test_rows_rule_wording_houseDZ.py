"""house DZ: the rows rule's words for probe and fewshot, which record no run (#2: their "not compared" line said
"which the run is fitted on"), and probe's test over the caps said not compared once, not once per split it is
compared with (#3)."""

from __future__ import annotations

import numpy as np
import pytest

from featstore.runs import fittedrows
from featstore.store.writer import write_arrays


def _store(path, test_rows=60):
    """train and validation 30 rows each, test ``test_rows``: the caps (MAX_ROWS 40) leave test alone uncompared."""
    rng = np.random.default_rng(0)
    for s, n in (("train", 30), ("validation", 30), ("test", test_rows)):
        y = np.arange(n) % 3
        write_arrays(path, "x", s, (rng.normal(size=(n, 6)) + y[:, None]).astype(np.float32), y, ["a", "b", "c"])
    return path


@pytest.fixture
def test_over_the_caps(monkeypatch):
    """MAX_ROWS lowered to 40 (stands for 2^24 rows): test's 60 rows are over it, train's and validation's not."""
    monkeypatch.setattr(fittedrows, "MAX_ROWS", 40)
    monkeypatch.setattr(fittedrows, "_COUNTS", {})
    monkeypatch.setattr(fittedrows, "_TRAIN", {})


def test_probe_and_fewshot_word_the_rows_rule_for_themselves(tmp_path, test_over_the_caps):
    """#2. Sabotage: probe/fewshot back on fittedrows.not_compared ("which the run is fitted on")."""
    from featstore.experiments.fewshot import fewshot
    from featstore.experiments.probe import probe

    s = _store(tmp_path / "s.h5")
    notes = (
        probe(s, knn=False, runs=tmp_path / "r0")["notes"]
        + fewshot(s, shots=(1,), trials=1, runs=tmp_path / "r1")["notes"]
    )
    assert not any("the run" in n for n in notes), notes
    assert any("with those of 'train', the rows the probe is fitted on" in n for n in notes), notes
    assert any("with those of 'train', the rows each few-shot fit draws its shots from" in n for n in notes), notes


def _not_compared(notes: list[str], split: str = "test") -> list[str]:
    return [n for n in notes if n.startswith(f"the rows of {split!r} were not compared")]


def test_probe_says_a_test_over_the_caps_was_not_compared_once(tmp_path, test_over_the_caps, caplog):
    """#3: test over the caps was said not compared with train's rows, then again with validation's (the rows C and k
    were chosen on), for the one reason. Sabotage: probe checking test against validation in a call of its own."""
    from featstore.experiments.probe import probe

    with caplog.at_level("WARNING"):
        notes = probe(_store(tmp_path / "s.h5"), knn=False, runs=tmp_path / "r")["notes"]
    said = _not_compared(notes)
    assert len(said) == 1, notes
    assert "those of 'train', the rows the probe is fitted on, nor with those of 'validation', the rows the" in said[0]
    assert "'test' has 60 rows" in said[0] and said[0].endswith("is not known (x)"), said
    assert sum("were not compared" in r.getMessage() for r in caplog.records) == 1, caplog.text


def test_fewshot_says_a_test_over_the_caps_was_not_compared_once(tmp_path, test_over_the_caps):
    """#3, fewshot's: a head that stops early on validation (its epoch chosen there) said test was not compared twice."""
    from featstore.experiments.fewshot import fewshot

    s = _store(tmp_path / "s.h5")
    notes = fewshot(s, "dense", {"epochs": [2]}, shots=(1,), trials=1, runs=tmp_path / "r")["notes"]
    said = _not_compared(notes)
    assert len(said) == 1 and "nor with those of 'validation', the rows the choice was made on" in said[0], notes


def test_a_reason_for_one_comparison_only_is_said_for_it_alone(tmp_path, monkeypatch):
    """validation over the caps, test not: test against validation alone is not compared; test against train is."""
    from featstore.experiments.training_rows import refuse_training_rows

    monkeypatch.setattr(fittedrows, "MAX_ROWS", 40)
    monkeypatch.setattr(fittedrows, "_COUNTS", {})
    monkeypatch.setattr(fittedrows, "_TRAIN", {})
    s = tmp_path / "s.h5"
    rng = np.random.default_rng(1)
    for split, n in (("train", 30), ("validation", 60), ("test", 30)):
        y = np.arange(n) % 3
        write_arrays(s, "x", split, rng.normal(size=(n, 6)).astype(np.float32), y, ["a", "b", "c"])
    from featstore.store.reader import FeatureStore

    said = refuse_training_rows(
        FeatureStore(s), ["x"], "train", "test", "probe", "score", "fix", fitted_by="by", chosen_on="validation"
    )
    assert len(said) == 1 and "with those of 'validation', the rows the choice was made on" in said[0], said
    assert "nor with" not in said[0], said


def test_sweep_says_a_test_over_the_caps_was_not_compared_once(tmp_path, test_over_the_caps):
    """#3, the sweep's test note: not compared with train's rows, then again with validation's. Sabotage: the chosen
    split's line appended, not merged."""
    from featstore.experiments.sweep import sweep

    got = sweep(_store(tmp_path / "s.h5"), ["logreg"], runs=tmp_path / "r", reuse=False, png=tmp_path / "h.png")
    note = got["winner"]["test_note"]
    assert note.count("were not compared") == 1, note
    assert "'train', which every run is fitted on, nor with those of 'validation', the rows the choice" in note, note
    assert note.endswith("its figures there are not marked (x)"), note
