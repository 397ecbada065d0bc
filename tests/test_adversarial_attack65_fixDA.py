"""Attack 65 findings 8, 2, 5 and 7 (helper fixDA): a moved project's report, a repeated comma-list option, the
temperature's upper bound, and fewshot's one-trial advice. Synthetic stores written from arrays."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.report.runs import calibration_line
from featstore.report.site.storeruns import runs_of_store
from featstore.runs.folder import scan_runs_of
from featstore.store import writer
from featstore.store.reader import FeatureStore
from featstore.store.writer import synthetic_attrs


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _store(path, seed=1, sizes=(("train", 30), ("validation", 20), ("test", 20))):
    rng = np.random.default_rng(seed)
    for split, n in sizes:
        y = (np.arange(n) % 3).astype(np.int32)
        X = (rng.normal(size=(n, 5)) + y[:, None]).astype(np.float32)
        writer.write_arrays(
            path, "syn", split, X, y, list("abc"), attrs=synthetic_attrs(X.shape[1:], model="synthetic")
        )
    return path


# ------------------------------------------------------------------ finding 8: a moved project's report
def _shown(store, runs):
    records = scan_runs_of(store, runs).records
    return runs_of_store(records, store, FeatureStore(store))


def test_report_shows_the_runs_of_a_moved_store_and_advises_no_store_that_is_gone(tmp_path):
    runs = tmp_path / "shared.runs"
    old = _store(tmp_path / "a" / "features.h5")
    a, b = fit(old, "logreg", runs=runs), fit(old, "knn", {"n_neighbors": [3]}, runs=runs)
    new = tmp_path / "b" / "features.h5"
    new.parent.mkdir()
    old.rename(new)  # the project folder moved: the older runs name the old path
    c = fit(new, "logreg", {"C": [0.5]}, runs=runs)
    kept, notes = _shown(new, runs)
    assert {r.id for r in kept} == {a.id, b.id, c.id}  # the store's own runs, whatever path they record
    assert not any("other store" in n or "--store" in n for n in notes), notes
    assert any("2 run(s) record this store at another path" in n and str(old) in n for n in notes), notes
    # a store of other rows in the same runs folder is still left out; its report is advised only while it exists
    other = _store(tmp_path / "other.h5", seed=7)
    d = fit(other, "logreg", runs=runs)
    kept, notes = _shown(new, runs)
    assert d.id not in {r.id for r in kept} and len(kept) == 3
    left = [n for n in notes if "other store(s)" in n]
    assert len(left) == 1 and f"`featstore report --store {other.resolve()}` shows them" in left[0]
    other.unlink()
    (left,) = [n for n in _shown(new, runs)[1] if "other store(s)" in n]
    assert "--store" not in left and "no longer exists" in left and "`featstore runs` lists them" in left


def test_report_site_of_a_moved_store_lists_every_run(tmp_path):
    from featstore.report.site.build import build_report

    runs = tmp_path / "r.runs"
    old = _store(tmp_path / "a.h5")
    a = fit(old, "logreg", runs=runs)
    new = old.rename(tmp_path / "b.h5")
    b = fit(new, "knn", {"n_neighbors": [3]}, runs=runs)
    site = build_report(new, runs, tmp_path / "site", map_method="pca", leaks=False)
    index = site.index.read_text()
    assert a.id in index and b.id in index
    assert not any("scored on other images" in n for n in site.notes), site.notes


# ------------------------------------------------------------------ finding 2: a repeated comma-list option
@pytest.mark.parametrize(
    "option, values", [("--clf", ["logreg", "knn", "sgd"]), ("--extractor", ["syn", "syn2"])], ids=["clf", "extractor"]
)
def test_sweep_refuses_a_repeated_comma_list_option(tmp_path, option, values):
    store, runs = _store(tmp_path / "s.h5"), tmp_path / "runs"
    args = [w for v in values for w in (option, v)]
    out = cli("sweep", "--store", store, "--runs", runs, *args)
    assert out.exit_code == 1, out.output
    assert f"{option} given {len(values)} times" in out.output and f"{option} {','.join(values)}" in out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not runs.exists() or not any(runs.iterdir())  # nothing fitted


# ------------------------------------------------------------------ finding 5: each temperature bound its reason
def _cal(t):
    return SimpleNamespace(
        kind="fit",
        calibration={"method": "temperature", "T": t, "at_bound": True, "fitted_on": "validation", "n": 40},
    )


def test_calibration_line_gives_each_bound_its_reason():
    upper, lower = calibration_line(_cal(100.0)), calibration_line(_cal(0.01))
    assert "upper bound" in upper and "at chance" in upper and "all right" not in upper
    assert "lower bound" in lower and "(almost) all right" in lower and "chance" not in lower


def test_svm_warning_gives_each_bound_its_reason(monkeypatch, caplog):
    import featstore.models.svm as svm

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    for t, want, not_want in ((100.0, "about at chance", "all right"), (0.01, "(almost) all right", "chance")):
        monkeypatch.setattr(svm, "fit_temperature", lambda *a, t=t, **k: {"T": t, "at_bound": True})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=svm.__name__):
            svm.TemperedSVC().fit(X, y)
        text = " ".join(r.getMessage() for r in caplog.records)
        assert want in text and not_want not in text, text


# ------------------------------------------------------------------ finding 7: fewshot's one-trial advice
@pytest.fixture(scope="module")
def three_per_class(tmp_path_factory):
    """3 train images per class (k = 3 is all of them), 30 test rows."""
    path = tmp_path_factory.mktemp("fewshot") / "f.h5"
    return _store(path, sizes=(("train", 9), ("test", 30)))


def test_fewshot_one_trial_at_every_image_says_what_gives_a_spread(three_per_class, tmp_path):
    from featstore import fewshot

    s = fewshot(three_per_class, "logreg", shots=[3], trials=1, runs=tmp_path)
    text = " ".join(s["notes"])
    assert "give --trials 5" not in text
    assert "k = 3 is every training image: one fit" in text
    assert "fewer shots than the smallest class (3 images of 'a')" in text
    mixed = " ".join(fewshot(three_per_class, "logreg", shots=[1, 3], trials=1, runs=tmp_path)["notes"])
    assert "give --trials 5 or more (for k = 1;" in mixed and "k = 3 is every training image" in mixed
