"""Attack 54's findings, fixed on branch fixCI: Ctrl-C of a parallel sweep, a split rewritten while a fit scores it,
the API's size and type checks, a killed report's pages, and sweep's advice after Ctrl-C."""

from __future__ import annotations

import re

import pytest

import featstore
from featstore.apiargs import ArgumentError
from featstore.errors import ConfigError
from featstore.units import MAX_BYTES, parse_bytes


# 3, 7: sizes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [2**63, 10**30, True, 1.5, -1])
def test_api_size_refused_up_front(tmp_path, budget):
    """fit(memory_budget=2**63) fitted and scored everything, then was refused unrecorded with advice to remove a folder
    never written; True was 1 byte. Now refused before the store is even opened (it does not exist here)."""
    with pytest.raises(ConfigError, match=r"^fit\(\): memory_budget") as exc:
        featstore.fit(tmp_path / "missing.h5", memory_budget=budget)
    assert "\n" not in str(exc.value) and "remove the folder" not in str(exc.value)


def test_api_size_strings_taken(tmp_path):
    """export(max_bytes="64MB") was a TypeError; every size argument takes what --memory-budget takes."""
    with pytest.raises(featstore.StoreError, match="does not exist"):  # got past the size: the store is what is missing
        featstore.export(tmp_path / "missing.h5", "train", tmp_path / "o.csv", max_bytes="64MB")
    with pytest.raises(ConfigError, match=r"^build_similarity_index\(\): max_bytes '1 GBB' is not a size"):
        featstore.build_similarity_index(tmp_path / "missing.h5", max_bytes="1 GBB")


def test_memory_budget_bound_is_accepted():
    """The refusal named '8 EiB, 2**63 bytes': 2**63 itself was refused and EiB is no unit. The bound it names now is
    accepted, in the spelling it gives, and one more byte is refused."""
    assert parse_bytes(str(MAX_BYTES)) == MAX_BYTES == parse_bytes(MAX_BYTES)
    for too_big in (MAX_BYTES + 1, str(MAX_BYTES + 1), "9300000TB"):
        with pytest.raises(ConfigError) as exc:
            parse_bytes(too_big)
        named = re.findall(r"at most (\d+) bytes.*e\.g\. (\w+)\)", str(exc.value))
        assert named, exc.value
        assert parse_bytes(named[0][0]) == MAX_BYTES and parse_bytes(named[0][1]) < MAX_BYTES


# 5, 6: the API's argument types ------------------------------------------------------------------------------------
CALLS = {
    "fit(5)": (lambda: featstore.fit(5), r"fit\(\): store=5 is an int; give a path"),
    "fit(test=5)": (lambda: featstore.fit("s.h5", test=5), r"fit\(\): test=5 is an int; give a str or None"),
    "params scalar": (
        lambda: featstore.fit("s.h5", params={"C": 1}),
        r"params\['C'\]=1 is an int; give a list, e.g. \[1\]",
    ),
    "params pairs": (
        lambda: featstore.fit("s.h5", params=[("C", [1])]),
        r"params=\[\('C', \[1\]\)\] is a list; give a dict",
    ),
    "params overflow": (lambda: featstore.fit("s.h5", params={"C": [10**400]}), r"parameter C="),
    "weights overflow": (lambda: featstore.ensemble(["a", "b"], weights=[10**400, 1]), r"weights\[0\]=.* too large"),
    "shots int": (lambda: featstore.fewshot(shots=5), r"fewshot\(\): shots=5 is an int; give a list of whole numbers"),
    "shots 2.5": (lambda: featstore.fewshot(shots=[2.5]), r"shots\[0\]=2.5 is a float; give a whole number"),
    "record_split": (lambda: featstore.record_split("r", 5), r"record_split\(\): split=5"),
    "index split": (lambda: featstore.build_similarity_index(split=None), r"split=None is None; give a str"),
    "list_runs": (lambda: featstore.list_runs(runs=5), r"list_runs\(\): runs=5 is an int"),
    "similar": (lambda: featstore.similar(5), r"similar\(\): query=5"),
    "export bytes": (lambda: featstore.export("s.h5", "train", b"x.csv"), r"out=b'x.csv' is a bytes; give a path"),
    "FeatureStore": (lambda: featstore.FeatureStore(5), r"store=5 is an int; give a path"),
    "clf None": (lambda: featstore.fit("s.h5", None), r"fit\(\): clf=None"),
    "sweep clfs": (lambda: featstore.sweep("s.h5", 5), r"sweep\(\): clfs=5 is an int; give a list"),
}


@pytest.mark.parametrize("name", CALLS)
def test_api_wrong_argument_one_line(tmp_path, monkeypatch, name):
    """Each was a traceback from deep inside (pathlib, h5py, numpy, float()) or silently changed; now one line naming
    the function, the argument and what it takes, before any work (nothing exists in this folder)."""
    monkeypatch.chdir(tmp_path)
    call, line = CALLS[name]
    with pytest.raises(ConfigError) as exc:
        call()
    assert re.search(line, str(exc.value)) and "\n" not in str(exc.value), exc.value
    assert not any(tmp_path.iterdir())


def test_argument_error_is_a_type_error():
    with pytest.raises(TypeError):
        featstore.fit(5)
    assert issubclass(ArgumentError, ConfigError)


def test_one_string_is_one_item(tmp_path, monkeypatch):
    """ensemble("id") took each character for a run id and sweep(clfs="logreg") said "lists 'g' twice"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="at least two run ids"):
        featstore.ensemble("logreg-0159df")
    with pytest.raises(featstore.StoreError, match="does not exist"):  # past the classifiers: the store is missing
        featstore.sweep("missing.h5", "logreg")
    with pytest.raises(featstore.StoreError, match="does not exist"):  # a generator of ids is a list, not len()'s error
        featstore.sweep("missing.h5", (c for c in ["logreg", "svm"]))
