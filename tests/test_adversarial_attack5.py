"""A fifth, independent attack (bounded inputs, outputs, crafted files): one test per problem found, each failing
before its fix. Stores are synthetic (``writer.write_arrays``), so no test imports TensorFlow.
"""

from __future__ import annotations

import pytest

from tests.test_adversarial_attack3 import synthetic_store, tiny_pngs
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


# ------------------------------------------------------------------ a compressed chunk that unpacks to far more than its rows
def _gzip_bomb_features(store, rows_per_chunk: int) -> None:
    """Train's features rewritten as one gzip chunk of ``rows_per_chunk`` rows (its rows, then zeros), compressed as it
    is written so the test never holds the chunk: a few hundred KB on disk."""
    import zlib

    import h5py

    with h5py.File(store, "a") as f:
        sg = f["s/train"]
        X = sg["features"][()]
        del sg["features"]
        ds = sg.create_dataset(
            "features", shape=X.shape, maxshape=(None, X.shape[1]), chunks=(rows_per_chunk, X.shape[1]),
            dtype="float32", compression="gzip",
        )  # fmt: skip
        z = zlib.compressobj(6)
        packed = [z.compress(X.tobytes())]
        zeros = bytes(1 << 20)
        left = rows_per_chunk * X.shape[1] * 4 - X.nbytes
        while left > 0:
            packed.append(z.compress(zeros[: min(left, len(zeros))]))
            left -= len(zeros)
        packed.append(z.flush())
        ds.id.write_direct_chunk((0, 0), b"".join(packed))


def test_a_compressed_chunk_is_not_unpacked_beyond_its_rows(tmp_path):
    """A crafted store of 30 train rows whose features are one gzip chunk of 2**24 rows (512 MiB of zeros, 500 KB on
    disk): `check` and `fit` unpacked the whole chunk to read 30 rows (1 GiB resident for a 1 GiB chunk; up to 4 GiB
    per dataset at HDF5's limit), with no word. Now every reader refuses it, naming the dataset and the fix."""
    store = synthetic_store(tmp_path / "s.h5")
    _gzip_bomb_features(store, 1 << 24)
    for command in (("check", store), ("fit", "--store", store, "--runs", tmp_path / "runs")):
        out = no_traceback(cli(*command))
        assert "train/features: one compressed chunk unpacks to 512 MiB for 30 committed rows" in out, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ------------------------------------------------------------------ a split that holds no rows (every image failed)
@pytest.fixture
def empty_test(tmp_path):
    """The synthetic store with a complete test split of no rows (as an extract where every image failed leaves)."""
    import numpy as np

    from featstore.store import writer

    store = synthetic_store(tmp_path / "s.h5", splits=("train", "validation"))
    writer.write_arrays(store, "s", "test", np.zeros((0, 8), np.float32), np.zeros(0, np.int32), ["a", "b", "c"])
    return store


@pytest.mark.parametrize(
    "command",
    [("fit",), ("sweep", "--clf", "logreg,knn"), ("probe",), ("fewshot", "--shots", "1"), ("fit", "--test", "none", "--validation", "test")],
    ids=["fit", "sweep", "probe", "fewshot", "fit-validation"],
)  # fmt: skip
def test_a_split_without_rows_is_named_before_any_fit(empty_test, tmp_path, command):
    """A complete split of no rows (every image of it failed to decode): `probe` ended in scikit-learn's traceback;
    `fit` fitted, then said the classifier's settings 'cannot predict'; `sweep` fitted and recorded every run, then
    said the chosen model 'was altered or damaged after the fit. Fit the classifier again'; fewshot advised other
    parameters or more shots. None named the empty split."""
    runs = tmp_path / "runs"
    out = no_traceback(cli(*command, "--store", empty_test, "--runs", runs))
    assert "'test' of 's'" in out and "holds no rows" in out, out
    assert not runs.exists() or not any(runs.iterdir()), "refused before any fit"


def test_runs_evaluate_names_a_split_without_rows(tiny_store, empty_test):
    """`runs evaluate RUN --split test` on a split of no rows said the run's model 'was altered or damaged after the
    fit. Fit the classifier again', which cannot help."""
    _, runs, ids = tiny_store
    out = no_traceback(cli("runs", "--store", empty_test, "--runs", runs, "evaluate", ids[0], "--split", "test"))
    assert "holds no rows" in out and "altered" not in out, out


# ------------------------------------------------------------------ --image-size 0 is not "the default"
def test_image_size_zero_is_refused_not_replaced_by_the_default(tmp_path):
    """`extract --image-size 0` extracted at VGG16's default 150 px without a word (0 was read as "not given"): 40 s
    of work into a store whose input size is not the one asked for. -1 was refused; 0 is now too. No TensorFlow."""
    tiny_pngs(tmp_path / "data", {"train": {"a": ["0.png"], "b": ["0.png"]}})
    out = no_traceback(
        cli("extract", "--data", tmp_path / "data", "--split", "train", "--store", tmp_path / "s.h5", "--weights", "none",
            "--image-size", "0")
    )  # fmt: skip
    assert "--image-size 0 is too small for vgg16" in out, out
    assert not (tmp_path / "s.h5").exists()


# ------------------------------------------------------------------ what the fifth attack observed, fixed by the lead
def test_report_jobs_is_a_bounded_count(tiny_store, tmp_path):
    """`report --jobs 0` (or a negative count) was taken without a word."""
    store, runs, _ = tiny_store
    for jobs in ("0", "-3", "100000"):
        out = no_traceback(cli("report", "--store", store, "--runs", runs, "--out", tmp_path / "site", "--jobs", jobs))
        assert "--jobs" in out and "from 1 to 256" in out, out
    assert not (tmp_path / "site").exists()


def test_a_planted_oversized_cached_thumbnail_is_not_read_whole(tmp_path, caplog):
    """`similar --html` inlines cached thumbnails as data: URIs and read a cached file whole, whatever its size: a
    file planted in the store's cache folder was read into memory (and into the page) without a bound."""
    from featstore.report.site.thumbs import MAX_THUMB_BYTES, Thumb, ThumbCache

    cache = ThumbCache(tmp_path / "thumbs")
    key = "ab" + "0" * 30
    cache.path(key).parent.mkdir(parents=True)
    with open(cache.path(key), "wb") as fh:
        fh.truncate(MAX_THUMB_BYTES + 10)  # sparse: no real gigabytes needed to show the bound
    assert cache.data_uri(Thumb("x.png", key)) is None
    assert "not shown" in caplog.text
    cache.path(key).write_bytes(b"\x89PNG small")
    assert cache.data_uri(Thumb("x.png", key)).startswith("data:image/png;base64,")
