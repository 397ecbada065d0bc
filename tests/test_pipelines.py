"""The real-data recipes run end to end on a tiny subset when the Fashion-MNIST IDX files are present."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IDX = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (IDX / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist; .ci/run tries to)",
)


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_pipeline_on_a_tiny_subset(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipelines" / "fashion_mnist.py"),
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
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "fm" / "results.md").read_text()
    assert "vgg16@block3_pool" in table and "raw pixels" in table and "(chosen)" in table
    chosen = float(re.search(r"test accuracy (\d\.\d+)", res.stdout).group(1))
    assert chosen > 0.5, res.stdout  # ten classes: chance is 0.1
    assert (tmp_path / "fm" / "sweep.png").stat().st_size > 1000
