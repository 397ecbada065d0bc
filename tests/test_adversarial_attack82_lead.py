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
