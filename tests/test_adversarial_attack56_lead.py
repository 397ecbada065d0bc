"""Attack 56: #1 a finite feature that overflows float32 once standardised passed probe's NaN/inf check and ended in
scikit-learn's traceback, the finished extractor's figures lost with it; #2 Ctrl-C during a later extractor lost them
too (exit 130, no line); #3 a folder at the report journal's name was an IsADirectoryError traceback."""

from __future__ import annotations

import numpy as np
import pytest

import featstore
from featstore.errors import OutputError
from featstore.experiments import probe as probe_mod
from featstore.report.site.journal import JOURNAL
from featstore.store.writer import write_arrays

from .report_stores import make_report_store


def _two_extractors(path, huge: bool):
    rng = np.random.default_rng(0)
    for name in ("good", "huge"):
        for split in ("train", "validation", "test"):
            y = np.arange(30) % 3
            X = (rng.normal(size=(30, 4)) + y[:, None]).astype(np.float32)
            if name == "huge" and huge:
                X[:, 0] = -2e38 if split != "test" else 1.0
                if split == "test":
                    X[0, 0] = 2e38  # finite, and 4e38 once train's mean is taken off: inf in float32
            write_arrays(path, name, split, X, y, ["a", "b", "c"])
    return path


def test_probe_keeps_finished_extractors_when_a_later_one_overflows(tmp_path):
    """Since attack 62 #4 such rows (finite, over 1e15) are refused with the NaN/inf ones before the first fit: no
    extractor's figures are computed, so none is lost."""
    from featstore.errors import StoreError

    store = _two_extractors(tmp_path / "s.h5", huge=True)
    with pytest.raises(StoreError, match=r"s\.h5:/huge/train holds 30 row\(s\) .*finite features over 1e\+15"):
        featstore.probe(store, extractors=["good", "huge"], knn=False)


def test_probe_keeps_finished_extractors_on_ctrl_c(tmp_path, monkeypatch):
    store = _two_extractors(tmp_path / "s.h5", huge=False)
    real = probe_mod._probe_one

    def second_interrupted(fs, name, *args):
        if name == "huge":
            raise KeyboardInterrupt
        return real(fs, name, *args)

    monkeypatch.setattr(probe_mod, "_probe_one", second_interrupted)
    with pytest.raises(probe_mod.ProbeStopped, match=r"interrupted \(Ctrl-C\)") as got:
        featstore.probe(store, extractors=["good", "huge"], knn=False)
    assert [c["extractor"] for c in got.value.summary["cells"]] == ["good"]


def test_a_folder_at_the_journals_name_is_one_line(tmp_path):
    store = make_report_store(tmp_path / "r")
    out = tmp_path / "site"
    featstore.build_report(store, out=out, map_rows=2, leaks=False)
    (out / JOURNAL).mkdir()
    with pytest.raises(OutputError, match=r"cannot start the report's journal .*remove what is at that name"):
        featstore.build_report(store, out=out, map_rows=2, leaks=False)


def test_fewshot_on_features_that_overflow_names_the_overflow_not_the_rows(tmp_path):
    """56 #4: a raw RuntimeWarning, then "cannot be fitted on 3 rows ... larger --shots", where one test row is why."""
    from featstore.errors import StoreError

    store = _two_extractors(tmp_path / "s.h5", huge=True)
    with pytest.raises(StoreError, match=r"finite features over 1e\+15 .*an overflow in the model") as got:
        featstore.fewshot(store, "logreg", extractor="huge", shots=[2], trials=1)
    assert "--shots" not in str(got.value)


def test_fit_on_a_test_row_that_overflows_names_the_row_not_the_classifier(tmp_path):
    """A finite test feature that overflows float32 once train's mean is taken off printed numpy's raw RuntimeWarning,
    then "logreg with {...} cannot predict 'test': Input X contains infinity", blaming the classifier; it is one line
    naming the split's row and the re-extraction, in memory (fit) and streamed (the blocks a streamed fit scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from featstore.errors import StoreError
    from featstore.experiments.streaming import predict_blocks

    store = _two_extractors(tmp_path / "s.h5", huge=True)
    with pytest.raises(StoreError, match=r"s\.h5:/huge/train holds 30 row\(s\) .*write_arrays\(.*'train', X, y") as got:
        featstore.fit(store, "logreg", extractor="huge")  # refused before the fit since attack 62 #4
    assert "cannot predict" not in str(got.value)
    featstore.fit(store, "logreg", extractor="good")  # features of a usual size: fitted
    fs = featstore.FeatureStore(store)
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(*fs.load("train", "huge"))
    with pytest.raises(StoreError, match=r"test's row 0 \(1 of the 30 rows read"):
        list(predict_blocks(est, fs, "huge", "test", 2**20, 3))
