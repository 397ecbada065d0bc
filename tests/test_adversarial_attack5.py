"""A fifth, independent attack (bounded inputs, outputs, crafted files): one test per problem found, each failing
before its fix. Stores are synthetic (``writer.write_arrays``), so no test imports TensorFlow.
"""

from __future__ import annotations

import pytest

from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """Three 3-class splits of 8-value rows, and two runs: (store, runs, [run ids])."""
    from featstore import fit

    root = tmp_path_factory.mktemp("attack5")
    store = synthetic_store(root / "s.h5")
    runs = root / "runs"
    return store, runs, [fit(store, clf, runs=runs)["id"] for clf in ("logreg", "knn")]


# ------------------------------------------------------------------ --jobs of fit and sweep: a count with bounds
@pytest.mark.parametrize("jobs", ["0", "100000", "99999999999999999999"])
@pytest.mark.parametrize("command", [("fit", "--param", "C=0.1", "--param", "C=1"), ("sweep", "--clf", "logreg,knn")])
def test_jobs_is_a_bounded_count(tiny_store, tmp_path, monkeypatch, command, jobs):
    """`fit --jobs 0` with a search ended in joblib's ValueError traceback; `fit --jobs 100000` started 100,000 loky
    worker processes at once (loky spawns max_workers up front: the machine runs out of memory), and `sweep --jobs`
    had no upper bound either (a thread pool of that many threads)."""
    import joblib

    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was started")

    monkeypatch.setattr(joblib, "Parallel", no_pool)
    store, _, _ = tiny_store
    runs = tmp_path / "runs"
    out = no_traceback(cli(*command, "--jobs", jobs, "--store", store, "--runs", runs))
    assert "--jobs" in out and "from 1 to 256" in out, out
    assert not runs.exists() or not any(runs.iterdir()), "refused before any fit"
