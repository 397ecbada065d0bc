"""Attack 24 #15 (issue #19): ``fit --runs s.runs/<run>`` (a tab-completed run folder) recorded the new run inside the
other run, where ``featstore runs`` never listed it and ``runs evaluate`` of the outer run failed. A runs folder that
holds run.json is refused, naming the folder that holds the runs. Synthetic store, no TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import StoreError, fit
from featstore.store.writer import write_arrays


def test_a_run_folder_is_not_a_runs_folder(tmp_path):
    """Sabotage: the run.json check in ``runs_root`` removed fails it (the run is written inside the other)."""
    path = tmp_path / "s.h5"
    write_arrays(
        path, "x", "train", np.random.default_rng(0).random((20, 4), np.float32), np.arange(20) % 2, ["a", "b"]
    )
    first = fit(path, "logreg", validation="none")
    inner = tmp_path / "s.runs" / first.id
    with pytest.raises(StoreError, match=r"is a run folder \(it holds run.json\), not a runs folder; .*/s\.runs$"):
        fit(path, "logreg", validation="none", runs=inner)
    assert sorted(p.name for p in inner.iterdir() if p.is_dir()) == []


def test_discover_refuses_an_empty_split_by_name(tmp_path):
    """Attack 24 #22: ``discover(root, "")`` named a link that does not exist. Sabotage: its check_names removed."""
    from featstore import ConfigError
    from featstore.images.listing import discover

    with pytest.raises(ConfigError, match="split='' is an empty split name"):
        discover(tmp_path, "")
