"""featstore fewshot: seeded, stratified, nested draws of k images per class; refusals; the curve's shape."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import ConfigError, fewshot
from featstore.cli import app
from featstore.experiments.fewshot import mean_interval, sample_shots
from featstore.report.protocols import fewshot_table
from featstore.store import writer

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 well-separated classes in 16 values; train has 12 images of 'a' and 'c' but only 8 of 'b'."""
    path = tmp_path_factory.mktemp("fewshot") / "f.h5"
    centers = np.random.default_rng(0).normal(0, 1, (3, 16)) * 2
    for split, counts in (("train", (12, 8, 12)), ("validation", (4, 4, 4)), ("test", (20, 20, 20))):
        y = np.repeat(np.arange(3), counts).astype(np.int32)
        X = centers[y] + np.random.default_rng(len(split)).normal(0, 1.5, (len(y), 16))
        writer.write_arrays(path, "e", split, X.astype(np.float32), y, CLASSES, attrs=writer.synthetic_attrs((16,)))
    return path


def test_draws_are_seeded_stratified_and_nested():
    y = np.repeat(np.arange(4), [9, 5, 7, 6])
    a = sample_shots(y, [1, 2, 5], 4, seed=0, trial=0)
    assert {k: v.tolist() for k, v in a.items()} == {
        k: v.tolist() for k, v in sample_shots(y, [1, 2, 5], 4, seed=0, trial=0).items()
    }
    for k, idx in a.items():
        assert np.bincount(y[idx], minlength=4).tolist() == [k] * 4 and len(set(idx)) == len(idx)
    assert set(a[1]) <= set(a[2]) <= set(a[5])
    others = [sample_shots(y, [2], 4, seed=s, trial=t)[2].tolist() for s, t in ((0, 1), (1, 0), (0, 2))]
    assert a[2].tolist() not in others and len({tuple(o) for o in others}) == 3  # another trial or seed: another draw


def test_refuses_more_shots_than_the_smallest_class_naming_it(store, tmp_path):
    with pytest.raises(ConfigError, match=r"--shots 10: 'train' holds only 8 images of class 'b'.*at most 8"):
        fewshot(store, shots=[1, 5, 10], runs=tmp_path)
    with pytest.raises(ConfigError, match="at least 1"):
        fewshot(store, shots=[0, 2], runs=tmp_path)
    with pytest.raises(ConfigError, match="one setting"):
        fewshot(store, "logreg", {"C": [0.1, 1.0]}, shots=[1], runs=tmp_path)
    with pytest.raises(ConfigError, match="n_neighbors=1"):
        fewshot(store, "knn", shots=[1], trials=1, runs=tmp_path)  # 5 neighbours, 3 rows


def test_curve_shape_and_summary(store, tmp_path):
    s = fewshot(store, "logreg", {"C": [1.0]}, shots=[8, 1, 2, 2], trials=4, seed=3, runs=tmp_path)
    assert [p["shots"] for p in s["points"]] == [1, 2, 8] and s["params"] == {"C": 1.0}
    for p in s["points"]:
        assert len(p["trials"]) == 4 and p["rows"] == 3 * p["shots"]
        assert p["mean"] == pytest.approx(np.mean(p["trials"])) and p["sd"] == pytest.approx(
            np.std(p["trials"], ddof=1)
        )
        assert p["mean_ci"]["low"] <= p["mean"] <= p["mean_ci"]["high"]
    assert s["points"][-1]["mean"] > s["points"][0]["mean"] and s["points"][-1]["mean"] > 0.8  # chance is 1/3
    assert s["test_rows"] == 60 and s["seed"] == 3 and s["trials"] == 4
    again = fewshot(store, "logreg", {"C": [1.0]}, shots=[1, 2, 8], trials=4, seed=3, runs=tmp_path)
    assert [p["trials"] for p in again["points"]] == [p["trials"] for p in s["points"]]  # seeded: the same curve
    saved = json.loads((tmp_path / f"{s['id']}.json").read_text())
    assert saved["points"] == s["points"] and Path(s["png"]).stat().st_size > 1000
    table = fewshot_table(s)
    assert "| 8 | 24 |" in table and " ± " in table and "95 % CI of the mean" in table


def test_mean_interval_is_student_t():
    ci = mean_interval([0.5, 0.6, 0.7])  # sd 0.1, t(0.975, 2) = 4.3027
    assert ci["estimate"] == pytest.approx(0.6) and ci["high"] - 0.6 == pytest.approx(4.302653 * 0.1 / 3**0.5)
    assert mean_interval([0.5]) is None and mean_interval([0.9, 1.0, 1.0])["high"] == 1.0


def test_cli_fewshot(store, tmp_path):
    runner = CliRunner()
    args = ["fewshot", "--store", str(store), "--runs", str(tmp_path), "--shots", "1,4", "--trials", "2"]
    res = runner.invoke(app, [*args, "--clf", "knn", "--param", "n_neighbors=1"])
    assert res.exit_code == 0, res.output
    assert "| 4 | 12 |" in res.output and "knn {'n_neighbors': 1}" in res.output
    res = runner.invoke(app, [*args, "--json", "--png", str(tmp_path / "c.png")])
    assert res.exit_code == 0 and json.loads(res.output)["png"] == str(tmp_path / "c.png")
    res = runner.invoke(app, ["fewshot", "--store", str(store), "--runs", str(tmp_path), "--shots", "1,x"])
    assert res.exit_code == 1 and "whole numbers" in res.output
