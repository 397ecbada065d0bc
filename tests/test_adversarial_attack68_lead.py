"""Attack 68, fixed by the lead: #4 sweep checked test (and every extractor after the first) only after its fits,
through runs evaluate's rule (a test row of 1e16 was scored and recorded, exit 0; a NaN test row was refused after
every cell was fitted). Every extractor's train, validation and test are now held to fit's rule before any fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featstore
from featstore.errors import StoreError
from featstore.store.writer import write_arrays


def _store(path, bad: dict[tuple[str, str], float]):
    rng = np.random.default_rng(0)
    for name in ("first", "second"):
        for s in ("train", "validation", "test"):
            y = np.arange(30) % 3
            X = (rng.normal(size=(30, 8)) + y[:, None] * 1.5).astype(np.float32)
            if (name, s) in bad:
                X[4] = bad[name, s]
            write_arrays(path, name, s, X, y, ["a", "b", "c"])
    return path


@pytest.mark.parametrize("value", [1e16, np.nan], ids=["large", "nan"])
def test_sweep_refuses_a_bad_test_row_before_any_fit(tmp_path, value):
    store, runs = _store(tmp_path / "s.h5", {("first", "test"): value}), tmp_path / "runs"
    with pytest.raises(StoreError, match=r"s\.h5:/first/test holds 1 row\(s\).*--extractor second$"):
        featstore.sweep(store, ["logreg", "knn"], runs=runs)
    assert not runs.exists() or not any(runs.iterdir())  # nothing fitted or recorded


def test_sweep_refuses_the_second_extractor_before_fitting_the_first(tmp_path):
    store, runs = _store(tmp_path / "s.h5", {("second", "train"): 1e16}), tmp_path / "runs"
    with pytest.raises(
        StoreError, match=r"s\.h5:/second/train holds 1 row\(s\).*or sweep the others: --extractor first"
    ):
        featstore.sweep(store, ["logreg"], runs=runs)
    assert not runs.exists() or not any(runs.iterdir())
    got = featstore.sweep(store, ["logreg"], extractors=["first"], runs=runs)  # the others alone: swept
    assert got["extractors"] == ["first"]


def test_a_fully_reused_sweep_holds_a_new_test_split_to_fits_rule(tmp_path):
    """Attack 69 #1: a sweep whose cells were all reused checked no split; a test split added since, with a row of
    1e16, was scored through runs evaluate's rule and recorded into the reused winner, exit 0. The refusal names every
    extractor of the sweep, reused ones too (69 #3)."""
    rng = np.random.default_rng(0)
    store, runs = tmp_path / "s.h5", tmp_path / "runs"
    for name in ("first", "second"):
        for s in ("train", "validation"):
            y = np.arange(30) % 3
            write_arrays(
                store, name, s, (rng.normal(size=(30, 8)) + y[:, None] * 1.5).astype(np.float32), y, list("abc")
            )
    featstore.sweep(store, ["logreg"], runs=runs)
    made = sorted(p.name for p in runs.iterdir())
    for name in ("first", "second"):
        y = np.arange(30) % 3
        X = (rng.normal(size=(30, 8)) + y[:, None] * 1.5).astype(np.float32)
        X[4] = 1e16
        write_arrays(store, name, "test", X, y, list("abc"))
    with pytest.raises(StoreError, match=r"/test holds 1 row\(s\).*or sweep the others: --extractor (first|second)$"):
        featstore.sweep(store, ["logreg"], runs=runs)
    assert sorted(p.name for p in runs.iterdir()) == made  # nothing recorded, no test figure added
    for run in (p for p in runs.iterdir() if p.is_dir()):
        assert "test" not in json.loads((run / "run.json").read_text())["metrics"]


def test_a_divergence_under_scale_false_names_it():
    """Attack 69 #7: logreg with scale=false on features of about 1e12 "diverged (a regularisation or learning rate far
    outside its useful range)": logreg has no learning rate and C was its default; the fix is dropping scale=false."""
    from featstore.experiments.selection import DivergedError, refuse_diverged

    class Nan:
        def predict_proba(self, X):
            return np.full((len(X), 2), np.nan)

    X = np.ones((4, 3), np.float32)
    with pytest.raises(
        DivergedError,
        match=r"\(scale=false left its features unstandardised.*\); drop --param scale=false "
        r"\(in a sweep: --param logreg:scale=false\)$",  # attack 72 #6: sweep refuses the unprefixed form
    ):
        refuse_diverged(Nan(), X, "logreg", {"C": 1.0, "scale": False})
    with pytest.raises(  # attack 73 #9: the sweep's form too
        DivergedError, match=r"useful range\); fit with other --param values \(in a sweep: --param logreg:NAME=VALUE;"
    ):
        refuse_diverged(Nan(), X, "logreg", {"C": 1e-300})
