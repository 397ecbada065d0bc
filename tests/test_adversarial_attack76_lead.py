"""Attack 76 #4, the lead's part: ``fit --memory-budget`` holds its rows rule (the "fitted on these rows" digests, 16
bytes a training row) within the budget, and says the rows were not compared where they would not fit in it; a sweep
reusing the run reads what the fit recorded. Synthetic stores written from arrays."""

from __future__ import annotations

import numpy as np

from featstore import fit
from featstore.runs import fittedrows
from featstore.store.writer import write_arrays


def test_fit_holds_its_rows_rule_within_its_memory_budget(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(4000) % 2
    X = (rng.normal(size=(4000, 2)) + y[:, None]).astype(np.float32)  # 32 KiB of features, 64 KiB of digests
    store = tmp_path / "s.h5"
    for split in ("train", "validation"):
        write_arrays(store, "synthetic", split, X, y, ["a", "b"])  # validation: train's very rows
    fittedrows._COUNTS.clear()
    rec = fit(store, "logreg", memory_budget="48KB", runs=tmp_path / "runs", test="none")
    said = rec["inputs"]["training_rows"]["validation"]
    assert "over the memory budget" in said["not_compared"], said  # not digested outside the budget
    assert any("not compared" in n and "over the memory budget" in n for n in rec["notes"]), rec["notes"]
    fittedrows._COUNTS.clear()
    rec = fit(store, "logreg", memory_budget="1MB", runs=tmp_path / "runs", test="none")  # room: compared, marked
    assert rec["inputs"]["training_rows"]["validation"] == {"shared": 4000, "rows": 4000}
    assert any("4000 of the 4000 rows of 'validation'" in n for n in rec["notes"]), rec["notes"]


def test_a_store_whose_rows_cannot_be_read_is_said_not_dropped(tmp_path):
    store = tmp_path / "s.h5"
    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    for split in ("train", "validation"):
        write_arrays(store, "synthetic", split, X, np.arange(20) % 2, ["a", "b"])
    with open(store, "r+b") as f:  # the file damaged after it was written: its rows cannot be read
        f.seek(0)
        f.write(b"\0" * 512)
    fittedrows._COUNTS.clear()
    got, skipped = fittedrows.fitted_rows_said(store, "synthetic", "train", ["validation"])
    assert got == {} and "its rows could not be read" in skipped["validation"], skipped  # was ({}, {}): no word
