"""Repeated draws in the Fashion-MNIST recipe: ``--seeds`` gives mean ± sd over carves, targets judged on the mean."""

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from .test_pipelines import run_recipe

ROOT = Path(__file__).resolve().parents[1]
IDX = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (IDX / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist; .ci/run tries to)",
)


@pytest.fixture(scope="module")
def recipe():
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        import fashion_mnist
        import seeds

        yield fashion_mnist, seeds
    finally:
        sys.path.remove(str(ROOT / "pipelines"))


def _args(**kw):
    base = dict(
        train=100, validation=50, test=100, image_size=32, weights="hed-bsds500", layers="block3_pool", clf="logreg",
        model="vgg16", no_baselines=False, seeds="0,1,2", seed=0, target=0.75, target_single=None, param=None,
    )  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def _draw(seed, test, ensemble=True):
    rows = [
        {"features": "vgg16", "clf": "logreg", "run": f"logreg-{seed}", "validation": 0.8, "test": test},
        {"features": "raw pixels", "clf": "SVM (RBF) on raw pixels", "run": None, "validation": 0.7}
        | {"test": test - 0.05, "note": f"C={10 * (seed + 1)}"},
    ]
    if ensemble:
        rows.append(
            {"features": "runs of the sweep", "clf": "greedy ensemble", "run": f"ens-{seed}", "validation": 0.82}
            | {"test": test + 0.01, "note": "2 runs"}
        )
    win = {"id": f"logreg-{seed}", "what": "logreg on vgg16", "validation": 0.8, "test": test}
    return {"seed": seed, "rows": rows, "winner": win, "single": win, "extract_s": 6.0, "n_test": 100}


def test_seed_table_gives_mean_sd_interval_and_judges_targets_on_the_mean(recipe):
    fm, seeds = recipe
    draws = [_draw(0, 0.70), _draw(1, 0.76), _draw(2, 0.79, ensemble=False)]
    table = fm.seeds_table(_args(), ["logreg:C=10"], draws, started=0.0)
    assert "--seeds 0,1,2 --target 0.75" in table and "not ImageNet" in table and "Mean ± sd over 3 draws" in table
    row = next(line for line in table.splitlines() if line.startswith("| vgg16 | logreg |"))
    assert "0.7500 ± 0.0458" in row and "0.7000, 0.7600, 0.7900" in row  # mean and sample sd of the three tests
    low, high = map(float, re.search(r"\[(\d\.\d+), (\d\.\d+)\]", row).groups())
    assert low == pytest.approx(0.75 - 4.302653 * 0.0458258 / 3**0.5, abs=1e-4) and high == pytest.approx(
        0.75 + 4.302653 * 0.0458258 / 3**0.5, abs=1e-4
    )
    assert "(per seed: C=10; C=20; C=30, chosen on validation)" in table  # the baseline's C chosen per seed
    assert "not in every draw: greedy ensemble on runs of the sweep: in 2 of 3 draws" in table
    assert "target (chosen on validation) ≥ 0.75: reached on the mean (0.7500" in table
    assert "contains it, so the seeds cannot tell" in table
    assert seeds.judge("x", 0.8, [0.7, 0.71, 0.72]).startswith("target x ≥ 0.8: missed") and "below it" in seeds.judge(
        "x", 0.8, [0.7, 0.71, 0.72]
    )


def test_single_draw_table_keeps_the_old_shape_with_wilson_intervals(recipe):
    fm, _ = recipe
    d = _draw(0, 0.71) | {"n_validation": 50, "seconds": 12.0}
    table = fm.single_table(_args(seeds=None), ["logreg:C=10"], d)
    assert "--seeds" not in table and "| vgg16 | logreg (chosen) | 0.8000 [0.6696, 0.8876] | 0.7100 [" in table
    assert "(C=10, chosen on validation)" in table


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_pipeline_with_seeds_on_a_tiny_subset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fm"
    run_recipe(monkeypatch, capsys, "--out", out, "--train", "40", "--validation", "20", "--test", "20", "--image-size",
               "32", "--layers", "block5_pool", "--clf", "logreg", "--seeds", "0,1", "--target", "0.5")  # fmt: skip
    table = (out / "results.md").read_text()
    assert "--seeds 0,1" in table and "Mean ± sd over 2 draws (seeds 0, 1)" in table
    assert re.search(r"\| vgg16 \| logreg \| \d\.\d{4} ± \d\.\d{4} \| \d\.\d{4} ± \d\.\d{4} \| \[", table), table
    assert "raw pixels | logistic regression on raw pixels (per seed: C=" in table
    assert "target (chosen on validation) ≥ 0.5" in table
    for seed in (0, 1):
        assert (out / f"seed{seed}" / "results.md").read_text().count("[") >= 4  # every figure with its interval
        assert (out / f"seed{seed}" / "sweep.png").is_file()
    data = [sorted(p.name for p in (out / f"seed{s}" / "data" / "train").rglob("*.png")) for s in (0, 1)]
    assert data[0] != data[1]  # each seed a different carve
    saved = json.loads((out / "results.json").read_text())
    assert [d["seed"] for d in saved["draws"]] == [0, 1] and "--seeds 0,1" in saved["command"]


def test_transfer_recipe_compares_options_trial_by_trial():
    sys.path.insert(0, str(ROOT / "pipelines"))
    try:
        import transfer_own_model
    finally:
        sys.path.remove(str(ROOT / "pipelines"))
    # (b) is ahead of (a) by 0.02 in every trial: larger than chance; (c) - (a) moves around 0: within noise
    results = [
        {"a": a, "b": a + 0.02 + e, "c": a + d}
        for a, e, d in [(0.85, 0.001, 0.03), (0.9, -0.001, -0.03), (0.88, 0.0, 0.01)]
    ]
    lines = transfer_own_model.paired_lines(results, [0, 1, 2])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| (")}
    assert "+0.020 ± 0.001" in rows["(b) − (a)"] and rows["(b) − (a)"].endswith("| larger than chance |")
    assert rows["(c) − (a)"].endswith("| within noise |")
    from scipy import stats

    p = stats.ttest_rel([r["c"] for r in results], [r["a"] for r in results]).pvalue
    assert f"| {p:.3f} |" in rows["(c) − (a)"]
