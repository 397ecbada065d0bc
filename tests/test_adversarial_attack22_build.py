"""Attack 22 #13 (issue #19): the similarity index's PCA sample is filled a ``step``-row slice at a time; a block's
short last slice was written into a full ``step``-row slice of the sample, so a sample arriving in two or more blocks
whose row counts are not multiples of ``step`` ended in a numpy broadcast traceback (the default case for wide
features: 1,400 rows of 25,088 values). Synthetic store, no TensorFlow."""

from __future__ import annotations

import numpy as np

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
