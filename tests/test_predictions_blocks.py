"""A run's stored predictions are verified and read in blocks (issue 21): ``get_run`` never loads a split whole, a
member over ``safezip.MAX_MEMBER`` is not refused for its size (it is read in blocks), and callers read lazily."""

import zipfile

import numpy as np
import pytest

from featstore import get_run
from featstore.errors import StoreError
from featstore.experiments.classifiers import build_classifier
from featstore.runs import folder as run_folder
from featstore.runs.write import write_run
from featstore.safezip import check_zip
from featstore.store.writer import synthetic_attrs

N, K, ROWS = 3000, 3, 100


def a_run(tmp_path):
    y = np.arange(N) % K
    proba = np.full((N, K), 0.1)
    proba[np.arange(N), y] = 0.8
    est = build_classifier("logreg").fit(np.arange(12.0).reshape(6, 2), [0, 1, 2, 0, 1, 2])
    record = {
        "kind": "fit",
        "id": "a",
        "clf": "logreg",
        "created_at": "2026-01-01T00:00:00",
        "store": "s",
        "extractor": "e",
        "fingerprint": synthetic_attrs((2,))["fingerprint"],
        "class_names": ["x", "y", "z"],
        "metrics": {},
        "params": {},
        "extractor_attrs": synthetic_attrs((2,)),
    }
    write_run(tmp_path, record, est, {"test": (proba, y, "paths", "listing"), "validation": (proba, y, "p", "l")})
    return proba, y


def test_predictions_are_verified_and_read_a_block_at_a_time(tmp_path, monkeypatch):
    proba, y = a_run(tmp_path)
    rec, folder = get_run("a", runs=tmp_path)
    monkeypatch.setattr(run_folder, "BLOCK_BYTES", ROWS * K * 8)
    real, sizes = zipfile.ZipExtFile.read, []

    def bounded(self, n=-1):  # any read of more than a block (or of a whole member) fails
        sizes.append(n)
        assert n is not None and 0 <= n <= ROWS * K * 8, f"read {n} bytes of a predictions member at once"
        return real(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", bounded)
    run_folder.verify_predictions(folder, rec)
    assert max(sizes) == ROWS * K * 8
    preds = run_folder.calibrated_predictions(folder, rec)
    blocks = list(preds.blocks("test"))
    assert len(blocks) == N // ROWS and np.array_equal(np.concatenate([b for _, b in blocks]), y)
    assert np.allclose(np.concatenate([p for p, _ in blocks]), proba)
    assert "test__proba" in preds and "train__proba" not in preds  # asked without reading a member
    monkeypatch.setattr(zipfile.ZipExtFile, "read", real)
    assert sorted(preds) == ["test__labels", "test__proba", "validation__labels", "validation__proba"]
    assert np.array_equal(preds["test__labels"], y) and np.allclose(preds["test__proba"], proba)


def test_a_member_over_the_zip_size_cap_is_read_in_blocks_not_refused(tmp_path, monkeypatch):
    a_run(tmp_path)
    monkeypatch.setattr(check_zip, "__defaults__", (50_000,))  # as if 3000 x 3 probabilities were over 4 GiB
    rec, folder = get_run("a", runs=tmp_path)
    assert run_folder.load_predictions(folder, rec)["test__proba"].shape == (N, K)
    (folder / "predictions.npz").write_bytes(b"PK not a zip")  # other refusals stay
    with pytest.raises(StoreError, match="stored predictions .* do not match their recorded sha256|sha256"):
        get_run("a", runs=tmp_path)
