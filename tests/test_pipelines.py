"""The real-data recipes run end to end on a tiny subset when the Fashion-MNIST IDX files are present."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IDX = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (IDX / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist; .ci/run tries to)",
)


def run_recipe(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    """``python pipelines/fashion_mnist.py ARGS`` run in this process (the script's main with that command line); what
    it printed. The tests' subject is what the recipe computes and writes, not its process: a fresh one imported
    TensorFlow and featstore again (~6 CPU-s). An exception fails the test where the script would exit non-zero."""
    monkeypatch.syspath_prepend(str(ROOT / "pipelines"))
    import fashion_mnist

    monkeypatch.setattr(sys, "argv", [str(ROOT / "pipelines" / "fashion_mnist.py"), *map(str, args)])
    capsys.readouterr()
    fashion_mnist.main()
    return capsys.readouterr().out


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_pipeline_on_a_tiny_subset(tmp_path, monkeypatch, capsys):
    stdout = run_recipe(
        monkeypatch,
        capsys,
        *[
            "--out",
            str(tmp_path / "fm"),
            "--train",
            "200",
            "--validation",
            "100",
            "--test",
            "100",
            "--image-size",
            "32",
            "--layers",
            "block3_pool,block4_pool",
            "--clf",
            "logreg",
        ],
    )
    table = (tmp_path / "fm" / "results.md").read_text()
    assert "vgg16@block3_pool" in table and "raw pixels" in table and "(chosen)" in table
    chosen = float(re.search(r"test accuracy (\d\.\d+)", stdout).group(1))
    assert chosen > 0.5, stdout  # ten classes: chance is 0.1
    assert (tmp_path / "fm" / "sweep.png").stat().st_size > 1000
