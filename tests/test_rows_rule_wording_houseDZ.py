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
