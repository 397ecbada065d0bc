"""Attack 67 findings 3, 10, 8, 11, 5 and 12 (helper fixDC): intervals that claimed a precision the data cannot give
(all rows right, tied few-shot draws, the paired sentence, chart labels), training-split figures unmarked, and the
svm's own temperature unrecorded. Synthetic arrays and stores written from arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import fit
from featstore.cli import app
from featstore.experiments.fewshot import _draw_notes, _point, mean_interval
from featstore.stats.figures import probability_figures
from featstore.stats.intervals import clopper_pearson, wilson_interval
from featstore.stats.paired import describe_difference
from featstore.store import writer
from featstore.store.writer import synthetic_attrs

EPS_LOSS = float(-np.log(np.finfo(np.float64).eps))  # the log-loss a wrong row costs at most (the clip)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ finding 3: every row right (or wrong)
def _confident(n: int, k: int = 3, right: bool = True, jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows each given 0.999 on its true class (``right``) or on the next class, the losses a little different
    (``jitter``) so that the percentile bootstrap keeps a width above the degenerate rule's 1e-12."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % k
    p = np.full((n, k), 0.001 / (k - 1))
    p[np.arange(n), y if right else (y + 1) % k] = 0.999
    if jitter:
        p[:, 0] += rng.uniform(0, 1e-4, n)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("jitter", [True, False])
def test_all_right_rows_give_log_loss_and_ece_an_interval_that_can_see_a_wrong_row(jitter):
    n = 36
    y, p = _confident(n, jitter=jitter)
    f = probability_figures(y, p, n_boot=300)
    u = clopper_pearson(0, n)[1]  # the share of wrong rows 36 right rows cannot rule out
    ll, ece = f["log_loss_ci"], f["ece_ci"]
    assert ll["high"] >= u * EPS_LOSS, ll  # it read "log-loss 0.001 [0.001, 0.001]"
    assert ll["low"] <= f["log_loss"] <= ll["high"]
    assert ece["high"] >= u and ece["low"] <= f["ece"] <= ece["high"], ece
    assert ll["method"].startswith("bounded: every one of the 36 rows is right"), ll["method"]


def test_all_wrong_rows_give_an_interval_that_can_see_a_right_row():
    n = 36
    y, p = _confident(n, right=False)
    f = probability_figures(y, p, n_boot=300)
    u = clopper_pearson(0, n)[1]
    assert f["log_loss_ci"]["low"] <= (1 - u) * f["log_loss"] + 1e-9, f["log_loss_ci"]
    assert f["ece_ci"]["low"] <= f["ece"] - u + 1e-9, f["ece_ci"]
    assert "is wrong" in f["log_loss_ci"]["method"]


def test_mixed_rows_keep_the_bootstrap():
    y, p = _confident(40)
    p[0] = np.roll(p[0], 1)  # one wrong row: the bootstrap sees it
    f = probability_figures(y, p, n_boot=300)
    assert f["log_loss_ci"]["method"].startswith("percentile bootstrap"), f["log_loss_ci"]


# ------------------------------------------------------------------ finding 10: few-shot draws that tie
def test_tied_fewshot_draws_get_the_test_rows_interval_and_say_so():
    ci = mean_interval([1.0] * 5, test_rows=9)
    lo, hi = wilson_interval(9, 9)
    assert ci["high"] - ci["low"] > 0.2 and ci["low"] == pytest.approx(lo) and ci["high"] == hi, ci
    assert "tied" in ci["method"] and "9 test rows" in ci["method"]
    # a spread of draws wider than the test rows' own keeps its Student t interval
    wide = mean_interval([0.2, 0.5, 0.9], test_rows=1000)
    assert wide["method"] == "Student t over 3 trials"
    # never narrower than the Wilson interval of one trial's test rows, tied or not
    near = mean_interval([0.70, 0.71, 0.70, 0.71], test_rows=50)
    w = wilson_interval(round(near["estimate"] * 50), 50)
    assert near["low"] <= w[0] and near["high"] >= w[1]
    p = _point(1, 3, [1.0] * 5, [1.0] * 5, 5, 9)
    notes = _draw_notes([p], np.array([6, 6, 6]), ["a", "b", "c"], 5)
    assert any("the 5 draws tied at 1.000" in n and "of 216 possible draws" in n for n in notes), notes


# ------------------------------------------------------------------ finding 8: the paired sentence's interval
def _pair(both: int, a_only: int, b_only: int, neither: int):
    y = np.zeros(both + a_only + b_only + neither, dtype=int)
    a = np.r_[np.zeros(both + a_only), np.ones(b_only + neither)].astype(int)
    b = np.r_[np.zeros(both), np.ones(a_only), np.zeros(b_only), np.ones(neither)].astype(int)
    return y, a, b


def test_no_discordant_rows_prints_the_interval_and_how_few_rows():
    s = describe_difference(*_pair(7, 0, 0, 2), "a", "b")
    assert "no discordant rows; the difference is within -" in s and " points, 95 % CI" in s, s
    assert "only 9 rows, under 20" in s and s.endswith("no difference seen"), s


def test_many_rows_print_decimals_that_show_the_interval():
    s = describe_difference(*_pair(99_000, 2, 1, 997), "a", "b")
    inside = s[s.index("95 % CI ") + 8 : s.index(";")]
    lo, hi = (float(x) for x in inside.split(" to "))
    assert lo < 0 < hi and lo != hi, s  # it read "by 0.0 points (95 % CI 0.0 to 0.0; ...)"


# ------------------------------------------------------------------ finding 11: chart labels
def _labels(monkeypatch, draw) -> list[str]:
    """Every text a chart draws (captured as it is saved)."""
    from matplotlib.figure import Figure

    seen: list[str] = []

    def save(fig, *args, **kwargs):
        seen.extend(t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text")))

    monkeypatch.setattr(Figure, "savefig", save)
    draw()
    return seen


def test_chart_labels_tell_close_accuracies_and_their_intervals_apart(monkeypatch, tmp_path):
    from featstore.plots import compare_png, heatmap_png

    values, intervals = np.array([[0.9974, 0.9951]]), np.array([[[0.9955, 0.9986], [0.9930, 0.9966]]])
    texts = _labels(
        monkeypatch, lambda: heatmap_png(["x"], ["a", "b"], values, "t", tmp_path / "h.png", None, intervals)
    )
    cell = next(t for t in texts if t.startswith("0.997"))
    lo, hi = (float(v) for v in cell.split("\n")[1].strip("[]").split(", "))
    assert lo < hi and lo <= float(cell.split("\n")[0]) <= hi, cell  # it read "0.997\n[1.00, 1.00]"
    texts = _labels(monkeypatch, lambda: compare_png(["r1", "r2"], {"test": [0.9974, 0.9951]}, tmp_path / "c.png"))
    bars = [t for t in texts if t.startswith("0.99") or t == "1.00"]
    assert len(set(bars)) == 2, bars  # both read "1.00"


# ------------------------------------------------------------------ findings 5 and 12: a real svm fit
def _store(path: Path) -> Path:
    rng = np.random.default_rng(3)
    for split, n in (("train", 30), ("validation", 21), ("test", 21)):
        y = (np.arange(n) % 3).astype(np.int32)
        X = (rng.normal(size=(n, 4)) * 0.05 + 4 * y[:, None]).astype(np.float32)  # far apart: every row right
        writer.write_arrays(
            path, "syn", split, X, y, list("abc"), attrs=synthetic_attrs(X.shape[1:], model="synthetic")
        )
    return path


@pytest.fixture(scope="module")
def svm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svm")
    store, runs = _store(tmp / "f.h5"), tmp / "f.runs"
    return fit(store, "svm", {"kernel": ["linear"]}, runs=runs), store, runs, tmp


def test_the_svm_temperature_is_recorded_and_shown(svm_run):
    rec, store, runs, _ = svm_run
    own = json.loads((runs / rec.id / "run.json").read_text())["calibration"]["model_temperature"]
    assert own["at_bound"] is True and own["T"] == pytest.approx(0.01) and own["folds"] >= 2, own
    shown = cli("runs", "show", rec.id, "--runs", runs, "--store", store)
    assert shown.exit_code == 0, shown.output
    assert "out-of-fold temperature T = 0.01" in shown.output and "lower bound" in shown.output, shown.output


def test_training_rows_are_marked_in_runs_show_runs_evaluate_and_the_site(svm_run):
    rec, store, runs, tmp = svm_run
    shown = cli("runs", "show", rec.id, "--runs", runs, "--store", store)
    assert "  train (fitted on these rows): accuracy" in shown.output, shown.output
    assert "train: the rows it was fitted on (resubstitution)" in shown.output
    assert "validation (fitted" not in shown.output and "test (fitted" not in shown.output
    out = cli("runs", "evaluate", rec.id, "--split", "train", "--runs", runs, "--store", store)
    assert "resubstitution" in out.output and "fitted on these rows" in out.output, out.output
    test = cli("runs", "evaluate", rec.id, "--split", "test", "--runs", runs, "--store", store)
    assert "resubstitution" not in test.output, test.output
    site = tmp / "site"
    built = cli("report", "--store", store, "--runs", runs, "--out", site)
    assert built.exit_code == 0, built.output
    page = next(p for p in site.rglob("*.html") if rec.id in p.name).read_text()
    assert page.count("fitted on these rows (resubstitution)") == 1, page  # train only, not validation or test
