"""Attack 57 #1-#6, #10: the Python API's argument check let numpy values through unconverted (a probe's summary, a
report's map cache and threadpoolctl then failed after the work; six functions refused np.int64(5) as out of range),
took any numpy array for a whole number, called an array "too large for a number", gave show_run a copy of the
caller's `unsaved` list (its PNG errors were lost), and left FeatureStore methods unchecked (`block_lengths("64MB")`
a traceback, `paths(start=-N)` a scrambled list on long splits)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import featstore
from featstore.apiargs import ArgumentError, checked
from featstore.store import pathcols
from featstore.store.writer import write_arrays


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("a57") / "s.h5"
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("validation", 15), ("test", 15)):
        y = np.arange(n) % 3
        write_arrays(path, "e", split, (rng.normal(size=(n, 4)) + y[:, None]).astype(np.float32), y, ["a", "b", "c"])
    return path


def test_numpy_numbers_are_passed_on_as_pythons():
    def f(n: int, x: float, on: bool, ns: list[int]):
        return n, x, on, ns

    got = checked(f)(np.int64(5), np.float32(0.5), np.True_, [np.int32(2)])
    assert got == (5, 0.5, True, [2]) and [type(v) for v in got[:3]] == [int, float, bool] and type(got[3][0]) is int
    assert checked(f)(np.array(7), 1, False, [])[0] == 7  # a 0-d array is its number


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (np.array([2, 3]), "n=array([2, 3]) is a ndarray; give a whole number (an int)"),
        (np.array([2.5]), "n=array([2.5]) is a ndarray; give a whole number (an int)"),
    ],
)
def test_an_array_is_never_a_whole_number(value, said):
    with pytest.raises(ArgumentError) as err:
        checked(g)(value)
    assert str(err.value) == f"g(): {said}"


def g(n: int):
    return n


def test_an_array_where_a_number_belongs_is_not_called_too_large():
    def g(x: float):
        return x

    with pytest.raises(ArgumentError, match=r"^g\(\): x=array\(\[0\.1\]\) is a ndarray; give a number$"):
        checked(g)(np.array([0.1]))
    with pytest.raises(ArgumentError, match=r"too large for a number"):
        checked(g)(10**400)


def test_the_callers_own_list_and_dict_are_passed_on(tmp_path):
    def h(items: list[str], params: dict[str, list]):
        return items, params

    items, params = ["a"], {"C": [1.0]}
    got = checked(h)(items, params)
    assert got[0] is items and got[1] is params  # an out-parameter filled by the function reaches the caller


def test_show_run_reports_an_unwritten_png_in_the_callers_list(store):
    rec = featstore.fit(store, "logreg")
    (store.parent / "s.runs" / rec.id / "confusion_test.png").mkdir()
    unsaved: list[str] = []
    featstore.show_run(rec.id, store, unsaved=unsaved)
    assert len(unsaved) == 1 and "confusion_test.png" in unsaved[0]


def test_probe_with_numpy_ints_saves_its_summary(store):
    summary = featstore.probe(store, ks=[np.int64(3)], max_iter=np.int64(200), knn=False)
    assert summary["cells"] and "not_saved" not in summary and os.path.isfile(summary["json"])


def test_featurestore_methods_take_sizes_and_slices_as_python_does(store, monkeypatch):
    fs = featstore.FeatureStore(store)
    assert fs.block_lengths("train", max_bytes="64MB") == [30]
    with pytest.raises(ArgumentError, match=r"start=1\.5 is a float"):
        fs.paths("train", start=1.5)
    every = fs.paths("train")
    assert fs.paths("train", stop=-1) == every[:-1] and fs.paths("train", start=-3) == every[-3:]
    monkeypatch.setattr(pathcols, "PATH_BLOCK_ROWS", 4)  # a split of more than one read block (65,536 rows)
    assert fs.paths("train", start=-10) == every[-10:] and fs.paths("train", start=-40) == every


def test_bytes_are_not_a_number():
    """float(b"1.5") is 1.5 in Python: the check must not take bytes for a number."""

    def k(x: float):
        return x

    with pytest.raises(ArgumentError, match=r"x=b'1\.5' is a bytes; give a number"):
        checked(k)(b"1.5")
