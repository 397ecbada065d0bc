"""Attack 22 #13 (issue #19): the similarity index's PCA sample is filled a ``step``-row slice at a time; a block's
short last slice was written into a full ``step``-row slice of the sample, so a sample arriving in two or more blocks
whose row counts are not multiples of ``step`` ended in a numpy broadcast traceback (the default case for wide
features: 1,400 rows of 25,088 values). Synthetic store, no TensorFlow."""

from __future__ import annotations

import re

import numpy as np
import pytest

from featstore.errors import ConfigError
from featstore.experiments.similar_index import build_similarity_index
from featstore.store.writer import write_arrays


def test_a_sample_in_uneven_blocks_builds(tmp_path, monkeypatch):
    """600 rows of 1,024 values with a 4 MiB budget (what the PCA refusal advises for it): several blocks of picks,
    cut where they pass the budget. Sabotage: the old ``S[at + i : at + i + step] = ...`` fails it."""
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((600, 8)) @ rng.standard_normal((8, 1024))).astype(np.float32)  # rank 8: PCA's case
    write_arrays(tmp_path / "s.h5", "x", "train", X, np.arange(600) % 3, ["a", "b", "c"])
    meta = build_similarity_index(tmp_path / "s.h5", "x", "train", max_bytes=4 << 20)
    assert meta["rows"] == 600 and meta["sample"] > 0, meta


@pytest.mark.parametrize(
    "kwargs, said",
    [
        ({"sample": 100}, "sample must be a whole number of at least 2 x dims (512), not 100"),
        ({"sample": 0}, "not 0"),
        ({"sample": 2.5}, "not 2.5"),
        ({"seed": -1}, "seed -1: give an integer"),
    ],
)
def test_sample_and_seed_are_checked_before_any_work(tmp_path, kwargs, said):
    """Attack 22 #15: sample under dims, 0, negative or fractional, and a negative seed ended in scikit-learn's or
    numpy's exceptions after the split was scanned. Sabotage: either check removed fails its rows."""
    write_arrays(tmp_path / "s.h5", "x", "train", np.ones((4, 2), np.float32), [0, 1, 0, 1], ["a", "b"])
    with pytest.raises(ConfigError, match=re.escape(said)):
        build_similarity_index(tmp_path / "s.h5", "x", "train", **kwargs)


def test_an_index_of_another_split_says_which_split(tmp_path):
    """Attack 22 #12: the train index copied to the validation split's folder was "stale: built from fingerprint X,
    the store's has X" (the same X). It now says what it was built for. Sabotage: the old message fails it."""
    import shutil

    from featstore.experiments.similar import similar
    from featstore.experiments.similar_index import index_dir

    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        X = rng.random((300, 8)).astype(np.float32)
        write_arrays(tmp_path / "s.h5", "x", split, X, np.arange(300) % 2, ["a", "b"])
    build_similarity_index(tmp_path / "s.h5", "x", "train", dims=2, sample=100)
    shutil.copytree(index_dir(tmp_path / "s.h5", "x", "train"), index_dir(tmp_path / "s.h5", "x", "validation"))
    with pytest.raises(ConfigError, match="split 'train', .* not 'x', split 'validation'"):
        similar("validation/0", tmp_path / "s.h5", split="validation", use_index=True)
