"""featstore probe: the linear probe's C grid chosen on validation only, refit recorded, kNN as scikit-learn's, intervals."""

import json
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, FeatureStore, StoreError, build_classifier, probe
from featstore.cli import app
from featstore.experiments.probe_fits import COARSE, RowSpace, Standardiser, cap_ks, knn_predict, logistic
from featstore.report.protocols import probe_table
from featstore.store import writer

CLASSES = ["a", "b", "c", "d"]
SIZES = {"train": 80, "validation": 40, "test": 40}


def _write(path, name, dim, noise, seed, test_shuffle=None):
    """4 Gaussian classes in ``dim`` values; ``test_shuffle`` permutes the test labels (the features stay)."""
    centers = np.random.default_rng(seed).normal(0, 1, (4, dim)).astype(np.float32)
    for split, n in SIZES.items():
        y = np.repeat(np.arange(4), n // 4).astype(np.int32)
        X = centers[y] + np.random.default_rng(zlib.crc32(f"{name}/{split}".encode())).normal(0, noise, (n, dim))
        if split == "test" and test_shuffle is not None:
            y = np.random.default_rng(test_shuffle).permutation(y)
        writer.write_arrays(
            path, name, split, X.astype(np.float32), y, CLASSES, attrs=writer.synthetic_attrs((dim,), model=name)
        )


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """'narrow' (24 values < 80 train rows) and 'wide' (300 values > 80 rows: the row-space path); and a copy of the
    store whose test labels are shuffled, to show that test never moves a choice."""
    root = tmp_path_factory.mktemp("probe")
    out = {}
    for key, shuffle in (("plain", None), ("shuffled", 7)):
        path = root / f"{key}.h5"
        _write(path, "narrow", 24, 2.0, 0, shuffle)
        _write(path, "wide", 300, 6.0, 1, shuffle)
        out[key] = path
    return out


@pytest.fixture(scope="module")
def summary(stores, tmp_path_factory):
    return probe(stores["plain"], runs=tmp_path_factory.mktemp("runs"))


def test_grid_is_log_spaced_coarse_then_fine_around_the_best(summary):
    assert COARSE[0] == pytest.approx(1e-6) and COARSE[-1] == pytest.approx(1e5) and len(COARSE) == 12
    for cell in summary["cells"]:
        grid = cell["linear"]["grid"]
        coarse = [p["C"] for p in grid if p["stage"] == "coarse"]
        fine = [p["C"] for p in grid if p["stage"] == "fine"]
        assert coarse == pytest.approx(list(COARSE)) and np.allclose(np.diff(np.log10(coarse)), 1.0)
        assert len(grid) >= 15 and cell["linear"]["fits"] == len(grid)
        best_coarse = max((p for p in grid if p["stage"] == "coarse"), key=lambda p: (p["validation"], -p["log_loss"]))
        assert all(best_coarse["C"] / 10 < c < best_coarse["C"] * 10 for c in fine)  # within a decade of it
        assert len(set(np.round(np.log10(coarse + fine), 6))) == len(grid)  # no C fitted twice
        chosen = cell["linear"]["C"]
        assert cell["linear"]["validation"] == max(p["validation"] for p in grid)
        assert chosen in [p["C"] for p in grid if p["validation"] == cell["linear"]["validation"]]


def test_choices_are_made_on_validation_and_test_is_read_once_after_them(stores, tmp_path, monkeypatch):
    loads = []
    real = FeatureStore.load
    monkeypatch.setattr(
        FeatureStore,
        "load",
        lambda self, split="train", extractor=None, **k: (
            loads.append((split, extractor)),
            real(self, split, extractor, **k),
        )[1],
    )
    s = probe(stores["plain"], runs=tmp_path / "a")
    for name in ("narrow", "wide"):
        mine = [split for split, ext in loads if ext == name]
        assert mine == ["train", "validation", "test"], loads  # test once, last
    shuffled = probe(stores["shuffled"], runs=tmp_path / "b")  # same train and validation, test labels permuted
    for a, b in zip(s["cells"], shuffled["cells"]):
        assert a["linear"]["C"] == b["linear"]["C"] and a["linear"]["grid"] == b["linear"]["grid"]
        assert a["knn"]["k"] == b["knn"]["k"] and a["knn"]["ks"] == b["knn"]["ks"]
        assert a["linear"]["test"] > 0.6 and b["linear"]["test"] < 0.6  # what test says changed, no choice did


def test_linear_probe_is_the_logreg_classifier_at_the_chosen_C(stores, summary):
    fs = FeatureStore(stores["plain"])
    for cell in summary["cells"]:
        name = cell["extractor"]
        (X, y), (Xt, yt) = fs.load("train", name), fs.load("test", name)
        est = build_classifier("logreg", {"C": cell["linear"]["C"]}).fit(X, y)
        assert cell["linear"]["test"] == pytest.approx(float(np.mean(est.predict(Xt) == yt)), abs=1 / len(yt) + 1e-9)
    assert [c["linear"]["row_space"]["used"] for c in summary["cells"]] == [False, True]


def test_row_space_fit_equals_the_fit_on_all_values():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 500)).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    Q = rng.normal(size=(15, 500)).astype(np.float32)
    rs = RowSpace(X)
    direct = logistic(0.01).fit(X.astype(np.float64), y).decision_function(Q.astype(np.float64))
    reduced = logistic(0.01).fit(rs.coords(X), y).decision_function(rs.coords(Q))
    assert rs.active and rs.coords(X).shape[1] <= 40
    np.testing.assert_allclose(reduced, direct, atol=2e-3)


def test_standardiser_is_standard_scaler_without_copies():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(4)
    X = np.maximum(rng.normal(3, 2, size=(50, 30)), 0).astype(np.float32)
    X[:, 0], X[:, 1] = 0.0, 7.5  # a dead unit and a constant
    Q = rng.normal(size=(10, 30)).astype(np.float32)
    ref = StandardScaler().fit(X)
    ours = Standardiser().fit(X, block=7)
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(ours.scale_, ref.scale_, rtol=1e-5)
    expected = ref.transform(Q)
    out = ours.transform(Q, block=3)
    assert out is Q and out.dtype == np.float32  # in place
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10, 25])
def test_knn_probe_equals_scikit_learn_cosine_distance_weighted(k):
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(k)
    R = rng.normal(size=(60, 12)).astype(np.float32)
    yr = rng.integers(0, 3, 60)
    Q = np.concatenate([rng.normal(size=(30, 12)), R[:3]]).astype(np.float32)  # 3 exact copies: distance 0
    ours = knn_predict(R, yr, Q, [k], 3)[k]
    theirs = KNeighborsClassifier(k, metric="cosine", weights="distance", algorithm="brute").fit(R, yr).predict(Q)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[-3:] == yr[:3]).all()


def test_knn_probe_equals_the_registry_knn_with_the_same_settings(stores, summary):
    fs = FeatureStore(stores["plain"])
    for cell in summary["cells"]:
        name, k = cell["extractor"], cell["knn"]["k"]
        (X, y), (Xt, yt) = fs.load("train", name), fs.load("test", name)
        est = build_classifier("knn", {"n_neighbors": k, "metric": "cosine", "weights": "distance"}).fit(X, y)
        assert cell["knn"]["test"] == pytest.approx(float(np.mean(est.predict(Xt) == yt)))
        assert est.steps[-1][1].metric == "cosine"
    assert build_classifier("knn").steps[-1][1].metric == "minkowski"  # the default is unchanged


def test_k_is_capped_at_the_train_rows_with_a_note(summary):
    assert cap_ks((10, 20, 100, 200), 80) == (
        [10, 20, 80],
        [
            "k=100 is more than the 80 reference rows: capped at k=80",
            "k=200 is more than the 80 reference rows: capped at k=80",
        ],
    )
    cell = summary["cells"][0]
    assert [x["k"] for x in cell["knn"]["ks"]] == [10, 20, 80] and len(cell["knn"]["notes"]) == 2
    assert "capped at k=80" in probe_table(summary)


def test_refit_on_train_and_validation_is_recorded(stores, tmp_path):
    s = probe(stores["plain"], ["wide"], refit=True, runs=tmp_path)
    cell = s["cells"][0]
    assert s["refit"] is True and "refitted on 'train' + 'validation'" in s["protocol"]["refit"]
    assert cell["linear"]["fit_rows"] == cell["knn"]["reference_rows"] == SIZES["train"] + SIZES["validation"]
    assert cell["rows"] == SIZES
    saved = json.loads((tmp_path / f"{s['id']}.json").read_text())
    assert saved["refit"] is True and saved["cells"][0]["linear"]["fit_rows"] == 120
    plain = probe(stores["plain"], ["wide"], runs=tmp_path)
    assert plain["cells"][0]["linear"]["fit_rows"] == 80 and plain["cells"][0]["linear"]["C"] == cell["linear"]["C"]


def test_table_and_json_carry_intervals(summary, tmp_path):
    for cell in summary["cells"]:
        for probe_ in (cell["linear"], cell["knn"]):
            for split in ("validation", "test"):
                ci = probe_[f"{split}_ci"]
                assert ci["method"] == "wilson" and ci["low"] <= probe_[split] <= ci["high"]
                assert ci["estimate"] == pytest.approx(probe_[split])
    table = probe_table(summary)
    rows = [line for line in table.splitlines() if line.startswith("| narrow") or line.startswith("| wide")]
    assert len(rows) == 4 and all(line.count("[") == 2 for line in rows)
    assert "standardised" in table and "Wilson" in table
    from pathlib import Path

    assert Path(summary["png"]).stat().st_size > 1000


def test_cli_probe_prints_the_table_and_json(stores, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["probe", "--store", str(stores["plain"]), "--runs", str(tmp_path), "--extractor", "narrow"]
    )
    assert res.exit_code == 0, res.output
    assert "| narrow | linear" in res.output and "| narrow | kNN" in res.output and "probe-" in res.output
    res = runner.invoke(
        app, ["probe", "--store", str(stores["plain"]), "--runs", str(tmp_path), "--no-knn", "--refit", "--json"]
    )
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["refit"] and all(c["knn"] is None for c in s["cells"]) and len(s["cells"]) == 2


def test_probe_refuses_an_extractor_without_validation(tmp_path):
    path = tmp_path / "f.h5"
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    y = np.repeat([0, 1], 10).astype(np.int32)
    for split in ("train", "test"):
        writer.write_arrays(path, "e", split, X, y, ["a", "b"], attrs=writer.synthetic_attrs((4,)))
    with pytest.raises(StoreError, match="no complete 'validation' split.*it has: test, train|it has: train, test"):
        probe(path, runs=tmp_path / "runs")
    with pytest.raises(ConfigError, match="at least 1"):
        probe(path, ks=(0,), runs=tmp_path / "runs")
