"""A resumed split is computed as it was started (attack 49 #1), and augmented copies as the split they augment (#3):
the split's first batch is computed again before anything is written, to the same bits or refused.

The machine-made differences (a thread count, another CPU's instruction set) cannot be made in one test process, so
the stored rows are moved by one unit in the last place instead: what a run on a machine computing otherwise sees.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from featstore import FeatureStore, StoreError, extract

from .conftest import interrupt_after_one_batch


def _nudge(store, key: str = "train", row: int = 1) -> None:
    """Move one stored value of ``key``'s first batch by one unit in the last place."""
    with h5py.File(store, "r+") as f:
        ds = f["vgg16"][key]["features"]
        value = ds[row]
        flat = value.reshape(-1)
        flat[0] = np.nextafter(flat[0], np.float32(np.inf))
        ds[row] = value


def test_a_resume_computing_the_first_batch_otherwise_is_refused(data_root, tiny_config, tmp_path, monkeypatch):
    store = tmp_path / "f.h5"
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, batch_size=4)
    monkeypatch.undo()
    _nudge(store)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4)
    line = str(err.value)
    assert re.match(
        rf"^vgg16/train in {re.escape(str(store))} was started by a run that computed its features otherwise: its first "
        r"4 rows, computed again here, differ in 1 of 2048 values \(at most \d\.\d+e-\d\d\)\. Another machine, CPU or "
        r"thread count \(TF_NUM_INTRAOP_THREADS, a job's cores\), or TensorFlow's oneDNN setting",
        line,
    ), line
    assert "Resume it where and as it was started, or start it again here with --overwrite (overwrite=True)" in line
    assert FeatureStore(store).split_info("train")["committed_rows"] == 4  # nothing written
    extract(data_root, "train", store, tiny_config, batch_size=4, overwrite=True)  # the way out it names
    assert FeatureStore(store).split_info("train")["committed_rows"] == 12


def test_a_resume_computing_as_it_started_goes_on_bit_identical(data_root, tiny_config, tmp_path, monkeypatch):
    clean, store = tmp_path / "clean.h5", tmp_path / "f.h5"
    extract(data_root, "train", clean, tiny_config, batch_size=4)
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, batch_size=4)
    monkeypatch.undo()
    extract(data_root, "train", store, tiny_config, batch_size=4)  # the check passes: the same bits
    assert FeatureStore(store).load("train")[0].tobytes() == FeatureStore(clean).load("train")[0].tobytes()


def test_copies_of_a_split_computed_otherwise_are_refused(data_root, tiny_config, tmp_path):
    """49 #3: extract --augment with TF_ENABLE_ONEDNN_OPTS=1 added copies of the other kernels to a split extracted
    without, and fit --augmented trained on both."""
    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=4)
    _nudge(store, row=0)
    with pytest.raises(
        StoreError, match=r"^vgg16/train in .* was made by a run that computed .* copies made here would be of another"
    ):
        extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    with h5py.File(store, "r") as f:
        assert "augmented" not in f["vgg16"]["train"]  # no copies' group made


def test_the_refusal_says_what_the_split_recorded_of_its_machine(data_root, tiny_config, tmp_path, monkeypatch):
    from featstore.models.forward import machine

    store = tmp_path / "f.h5"
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, batch_size=4)
    monkeypatch.undo()
    with h5py.File(store, "r") as f:
        assert {k: f["vgg16"]["train"].attrs[k] for k in ("threads", "cpu")} == machine()
    _nudge(store)
    here = {**machine(), "threads": machine()["threads"] + 7}
    monkeypatch.setattr("featstore.extraction.same_numerics.machine", lambda: here)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4)
    assert f"(it recorded threads {here['threads'] - 7} then, {here['threads']} now)." in str(err.value)


def test_copies_of_a_split_made_with_another_batch_size_are_made(data_root, tiny_config, tmp_path):
    """51 #4: the split's first rows are computed again as they were made, in calls of its own --batch-size (one
    image a call: batch 1), not of this run's (4 rows in one call: other last digits, a false refusal)."""
    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=1)
    r = extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    assert r.augmented.rows == 12


@pytest.mark.parametrize(
    ("key", "value", "said"), [("jit", True, "with --jit (jit=True)"), ("engine", "ray", "with --engine ray")]
)
def test_copies_of_a_split_made_otherwise_name_what_differs(data_root, tiny_config, tmp_path, key, value, said):
    """Review: copies of a split made on Ray, or with --jit, were refused by the bit check, blaming the machine."""
    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=4)
    with h5py.File(store, "r+") as f:
        f["vgg16"]["train"].attrs[key] = value  # as a split made so
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    line = str(err.value)
    assert f"split 'train' of 'vgg16' in {store} was made {said}" in line and "Extract the split again with" in line, (
        line
    )


def test_groups_started_in_calls_of_other_sizes_are_each_checked_in_their_own(monkeypatch, tmp_path):
    """Each --layer group's first rows are computed again in a call of its own first call's size: a group started in
    calls of 1 image was checked in the call of 3 another group recorded, whose last bits may differ (a false
    "computed its features otherwise" refusal); a real difference in either group is still refused."""
    from featstore.extraction import same_numerics as sn

    class Engine:  # features that depend on the call's size, as oneDNN's kernels may
        def outcomes(self, paths):
            return iter([(p, None) for p in paths])

        def forward(self, payloads, transform=None):
            n = len(payloads)
            return [np.array([[i + g + n / 1000] for i in range(n)], np.float32) for g in range(2)]

    def stored(n_a, n_b, nudge=0.0):
        a, b = Engine().forward(["x"] * n_a)[0], Engine().forward(["x"] * n_b)[1]
        return lambda *args: ([a, b + nudge], ["r/0.png", "r/1.png", "r/2.png"], {})

    monkeypatch.setattr(sn, "stored_first_batch", stored(1, 3))
    sn.same_numerics(None, ["a", "b"], "train", tmp_path, Engine(), 4, max_batch_bytes=1 << 30)  # each its own call
    monkeypatch.setattr(sn, "stored_first_batch", stored(1, 3, nudge=1e-3))

    class File:
        path = tmp_path / "f.h5"

    with pytest.raises(StoreError, match=r"^b/train in .* computed its features otherwise: its first 3 rows"):
        sn.same_numerics(File(), ["a", "b"], "train", tmp_path, Engine(), 4, max_batch_bytes=1 << 30)
