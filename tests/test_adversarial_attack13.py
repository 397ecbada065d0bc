"""Thirteenth attack (issue #19, "every file featstore writes is safe to open, every input it reads is bounded"): the
store's compaction (every resume rewrites the store) and writer lock with linked stores, class lists that differ
between splits, side files opened as found (``<store>.lock.pid``, the similarity index, cached map layouts: a FIFO
made commands wait forever), a fit that diverged, a store of many splits, names printed raw by ``report``, and
outputs that lost their permissions. Each test failed before its fix. Stores are synthetic (``writer.write_arrays``):
no test here imports TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from featstore.errors import StoreError
from featstore.store.compact import compact
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture(scope="module")
def store_src(tmp_path_factory):
    """A synthetic 3-split store (read-only source: copy before changing it)."""
    return synthetic_store(tmp_path_factory.mktemp("a13") / "f.h5")


@pytest.fixture
def store(store_src, tmp_path):
    """A private copy of ``store_src``."""
    return shutil.copy(store_src, tmp_path / "f.h5")


# ------------------------------------------------------------------ compaction: the rewrite every resume starts with
def test_compaction_never_writes_through_a_link_at_its_temporary_name(store, tmp_path):
    """Compaction wrote its copy to the fixed name ``.<store>.compact.tmp`` with h5py's "w" (open with O_TRUNC, links
    followed): a link planted there (or left by anything) had its target overwritten by the store, and the link was
    then renamed onto the store, so the store became a link to that file. The leftover name is now removed and the copy
    created with O_EXCL."""
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / ".f.h5.compact.tmp")
    compact(store)
    assert victim.read_text() == "precious"
    assert not os.path.islink(store) and no_traceback(cli("check", store)).strip().endswith("OK")


def test_compaction_of_a_linked_store_rewrites_the_store_not_the_link(store, tmp_path):
    """``--store link.h5`` (a link to the real store, e.g. on a data disk): compaction renamed its copy onto the link,
    so the link became a separate file and the real store kept the killed run's uncommitted tail; every later write
    went to the copy beside the link."""
    link = tmp_path / "link.h5"
    os.symlink(store, link)
    compact(link)
    assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(store)
    assert not os.path.exists(tmp_path / ".link.h5.compact.tmp")


def test_compaction_keeps_the_stores_permissions(store):
    """A store kept private (chmod 600) became readable by everyone (0644, h5py's default under the umask) after the
    first resume rewrote it."""
    os.chmod(store, 0o600)
    compact(store)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600


def test_a_fifo_at_compactions_temporary_name_is_one_message(store, tmp_path):
    """A FIFO (or folder) at ``.<store>.compact.tmp`` ended the resume in h5py's "Illegal seek" OSError traceback."""
    os.mkfifo(tmp_path / ".f.h5.compact.tmp")
    with pytest.raises(StoreError, match="compact.tmp.*remove it"):
        compact(store)


# ------------------------------------------------------------------ class lists: one meaning per label
def _set_classes(store, split: str, names: list[str]) -> None:
    import h5py
    import numpy as np

    with h5py.File(store, "a") as f:
        f[f"s/{split}"].attrs["class_names"] = np.array(names, dtype=h5py.string_dtype())


@pytest.mark.parametrize("command", ["fit", "leaks", "export"])
def test_splits_with_different_class_lists_are_refused_not_fitted(store, tmp_path, command):
    """``featstore check`` named a test split whose class list was train's reversed (label 0 = "c" there, "a" in
    train), but fit, probe, sweep, leaks and export read it: fit recorded a run whose test accuracy compared labels
    of different classes (silently wrong), leaks called pairs of different classes "same label"."""
    _set_classes(store, "test", ["c", "b", "a"])
    args = {"fit": ["fit", "--store", store, "--runs", tmp_path / "runs"], "leaks": ["leaks", "--store", store]}
    args["export"] = ["export", "--store", store, "--split", "test", "--out", tmp_path / "x.npz"]
    out = no_traceback(cli(*args[command]))
    assert "error:" in out and "different class lists" in out and "'test'" in out, out
    assert not list(tmp_path.glob("runs/*/run.json")) and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("names,words", [(["a", "a", "c"], "repeat ['a']"), (["", "b", "c"], "empty name")])
def test_a_class_list_naming_two_classes_alike_is_refused(store, tmp_path, names, words):
    """A split whose class_names repeat a name (or hold an empty one) was fitted and predicted: two classes printed,
    recorded and exported under one name. Every split's list is edited alike, so only the names are wrong."""
    from featstore.errors import ConfigError
    from featstore.store.writer import write_arrays

    for split in ("train", "validation", "test"):
        _set_classes(store, split, names)
    out = no_traceback(cli("fit", "--store", store, "--runs", tmp_path / "runs"))
    assert "error:" in out and words in out, out
    import numpy as np

    with pytest.raises(ConfigError, match="distinct, non-empty class names"):
        write_arrays(tmp_path / "w.h5", "s", "train", np.zeros((2, 2), np.float32), np.array([0, 1]), names[:2])


# ------------------------------------------------------------------ <store>.lock.pid: read by info, never waited on
@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_info_never_waits_on_or_reads_whole_a_planted_writer_pid_file(store, tmp_path, kind):
    """``featstore info`` names a live writer from ``<store>.lock.pid``, read with ``read_text()``: a FIFO there made
    ``info`` wait forever (and a busy store's "another featstore process" error too), and a sparse 8 GiB file was read
    whole (MemoryError traceback under a 4 GiB limit). It is now at most 64 bytes of a regular file, else no writer."""
    import threading
    import tracemalloc

    from featstore.store.locking import lock_holder

    pid = tmp_path / "f.h5.lock.pid"
    if kind == "fifo":
        os.mkfifo(pid)
    else:
        with open(pid, "wb") as fh:
            fh.truncate(256 << 20)  # sparse: no disk used
    found = []
    tracemalloc.start()
    reader = threading.Thread(target=lambda: found.append(lock_holder(store)), daemon=True)
    reader.start()
    reader.join(5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if reader.is_alive():
        with open(pid, "w"):  # let the waiting reader go
            pass
        pytest.fail(f"lock_holder waited on the FIFO at {pid}")
    assert found == [None] and peak < 1 << 20, (found, peak)
    assert "classes (3)" in no_traceback(cli("info", store))


# ------------------------------------------------------------------ the similarity index: never waited on
def _without_waiting(fn, fifo, seconds: float = 5.0):
    """fn()'s result or exception, run in a thread; fails the test (releasing the reader) if it waits on ``fifo``."""
    import threading

    got = []

    def run():
        try:
            got.append(fn())
        except Exception as exc:  # noqa: BLE001 - returned to the test
            got.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        with open(fifo, "wb"):  # a writer at last: the blocked open returns
            pass
        t.join(seconds)
        pytest.fail(f"waited on the FIFO {fifo}")
    return got[0]


@pytest.mark.parametrize("name", ["vectors.npy", "model.npz"])
def test_a_fifo_in_the_similarity_index_is_one_message_not_a_wait(store, name):
    """``featstore similar QUERY`` opens ``<store>.index/<extractor>/<split>/vectors.npy`` and ``model.npz`` as found:
    a FIFO at either name made it wait forever (index.json, checked with is_file, was fine)."""
    from featstore import FeatureStore
    from featstore.experiments.similar_index import build_similarity_index, index_dir, load_index

    build_similarity_index(store, split="train", dims=4)
    part = index_dir(store, "s", "train") / name
    part.unlink()
    os.mkfifo(part)
    got = _without_waiting(lambda: load_index(FeatureStore(store), "s", "train"), part)
    assert isinstance(got, StoreError) and f"{name} is not a regular file" in str(got), got
    out = no_traceback(cli("similar", "--store", store, "train/0"))
    assert "error:" in out and "--build-index" in out, out


def test_a_fifo_at_a_cached_map_layout_is_ignored_not_waited_on(store, tmp_path):
    """``report`` caches each map's layout as ``<store>.cache/maps/map-*.npz`` and opened it with ``safezip.check_zip``
    (``open(path, "rb")``): a FIFO there made every later ``report`` wait forever. check_zip now opens without
    blocking and refuses anything but a regular file, so the layout is computed again (and every other zip featstore
    checks, run folders' included, gets the same guard)."""
    from featstore.safezip import check_zip

    site = tmp_path / "site"
    assert "error" not in no_traceback(cli("report", "--store", store, "--out", site))
    (cached,) = (tmp_path / "f.h5.cache" / "maps").glob("map-*.npz")
    cached.unlink()
    os.mkfifo(cached)
    got = _without_waiting(lambda: check_zip(cached), cached)
    assert isinstance(got, ValueError) and "not a regular file" in str(got), got
    out = no_traceback(cli("report", "--store", store, "--out", site))
    assert "error" not in out and (site / "index.html").is_file(), out


# ------------------------------------------------------------------ a fit that diverged
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::sklearn.exceptions.ConvergenceWarning")  # as a user
def test_a_fit_that_diverges_is_one_message_not_a_traceback(store_src, tmp_path):
    """``fit --clf logreg --param C=1e-300`` (C is only required to be finite and positive) and ``--clf dense --param
    lr=1e30`` fitted a model whose probabilities are NaN for every row, then ended in the calibration's "ValueError:
    probabilities must be finite and non-negative" traceback; sweep the same, and fewshot printed a curve of chance
    accuracy without a word. Now one line naming the setting."""
    runs = tmp_path / "runs"
    args = ["--clf", "logreg", "--param", "C=1e-300", "--param", "max_iter=5"]
    out = no_traceback(cli("fit", "--store", store_src, "--runs", runs, *args))
    assert "error:" in out and "diverged" in out and "'C': 1e-300" in out, out
    assert not list(runs.glob("*/run.json"))
    few = ["fewshot", "--store", store_src, "--runs", runs, *args, "--shots", "2", "--trials", "1"]
    out = no_traceback(cli(*few))  # it printed a curve of chance accuracy, the model's NaN probabilities unsaid
    assert "error:" in out and "diverged" in out and "cannot be fitted" not in out, out


# ------------------------------------------------------------------ names reach the terminal escaped
def test_report_prints_its_index_path_escaped(store, tmp_path):
    """``report`` printed the path of its index as given: a store (or --out) named with an OSC sequence (a store
    someone sent, ``s\\x1b]0;title\\x07.h5``) set the terminal's title; every other command's paths were escaped."""
    hostile = tmp_path / "s\x1b]0;pwned\x07.h5"
    os.rename(store, hostile)
    out = no_traceback(cli("report", "--store", hostile))
    assert "\x1b" not in out and "index.html" in out and "\\x1b" in out, out


def test_a_store_of_many_splits_is_described_in_linear_work(store, monkeypatch):
    """Every split opened listed every split of its extractor (``split in hard_groups(g)``): work grew with the square of
    the number of splits, so a 4 MB store of 1,000 splits (h5py ``copy`` of one split) made ``featstore info`` take
    75 s on main, and 217 s with the class-list comparison above done against every split. Now each split opened looks
    at itself and at the first other split: 400 splits, 12.1 s on main, 4.5 s now (``info``, the 2-core test machine)."""
    import h5py

    from featstore import FeatureStore
    from featstore.store import metadata

    n = 100
    with h5py.File(store, "a") as f:
        for i in range(n):
            f.copy(f["s/test"], f["s"], name=f"x{i:03d}")
    looked = [0]
    listed, single = metadata.hard_groups, metadata._hard_group

    def counted_list(g):
        names = listed(g)
        looked[0] += len(names)
        return names

    def counted_one(g, name):
        looked[0] += 1
        return single(g, name)

    monkeypatch.setattr(metadata, "hard_groups", counted_list)
    monkeypatch.setattr(metadata, "_hard_group", counted_one)
    info = FeatureStore(store).info()
    assert len(info["extractors"]["s"]["splits"]) == n + 3
    assert looked[0] < 20 * n, f"{looked[0]} group look-ups for {n + 3} splits"


# ------------------------------------------------------------------ outputs keep the permissions of what they replace
def test_an_output_replaced_keeps_its_permissions(store, tmp_path):
    """Every output is written to a temporary file and renamed onto its name, with the umask's mode: an export (or
    predictions, a chart) that its owner had made private (chmod 600) became readable by everyone (0644) at the next
    run that replaced it. A new file still gets the umask's mode."""
    out = tmp_path / "train.csv"
    args = ["export", "--store", store, "--split", "train", "--out", out]
    assert "error" not in no_traceback(cli(*args))
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~_umask()
    os.chmod(out, 0o600)
    assert "error" not in no_traceback(cli(*args))
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_store_named_through_a_link_has_one_writer_lock(store, tmp_path):
    """The writer's lock was ``<name given>.lock``: ``extract --store link.h5`` (a link to the store) and ``extract
    --store f.h5`` each took a lock of their own, so two writers could append to one store at once (and ``info`` on
    one name did not see the writer of the other). The lock is now beside the store the link points to."""
    from featstore.errors import StoreBusyError
    from featstore.store.locking import lock_holder, writer_lock

    link = tmp_path / "link.h5"
    os.symlink(store, link)
    with writer_lock(link):
        assert lock_holder(store) == os.getpid()
        with pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"), writer_lock(store):
            pass


@pytest.mark.parametrize("where", ["f.h5.index", "f.h5.index/s/train"])
def test_a_file_in_the_way_of_the_similarity_index_is_one_line(store, tmp_path, where):
    """``similar --build-index`` with a file at ``<store>.index`` (or at its split's folder) ended in a
    NotADirectoryError / FileExistsError traceback from ``mkdir``."""
    blocker = tmp_path / where
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    out = no_traceback(cli("similar", "--store", store, "--build-index", "train/0"))
    assert f"error: the similarity index folder {blocker} is not a folder; move it away" in out, out
    assert blocker.read_text() == "not a folder"
