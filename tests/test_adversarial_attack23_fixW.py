"""Attack 23 findings 4 and 8, attack 23 #2 / attack 24 #4 (issue #19): a plain ``similar`` searches exactly, with one
warning, when an untrusted index can be neither loaded nor built again; ``export --out X.npz`` replaces only an npz
featstore wrote (its ``featstore.npy`` member); a chart option never replaces a chart a runs record owns. Synthetic
stores only. Each test failed with its fix sabotaged (named in its docstring)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from featstore.errors import OutputError
from featstore.experiments.similar import similar
from featstore.experiments.similar_index import build_similarity_index, index_dir
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack20_fixI import store as attack20_store

store = attack20_store  # 400 train rows of 4 values, and their index (signed with the session's key)


def _folder(store):
    return index_dir(store, "ex", "train")


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ attack 23 #4, #8: a plain similar is exact
def test_a_plain_similar_with_an_index_folder_others_may_write_in_searches_exactly(store, caplog):
    """An index folder not trusted (group-writable here; another user's on a shared store raised the same
    CacheNotTrusted): a plain ``similar`` failed, advising to remove the folder. Now: exact, one warning with the
    reason; asked for (``use_index=True``) it is an error that names ``--exact``.
    Sabotage: ``except CacheNotMade as exc:`` -> ``except ZeroDivisionError as exc:`` in ``similar._index`` fails it."""
    os.chmod(_folder(store), 0o777)
    with caplog.at_level(logging.WARNING):
        assert similar("train/0", store, k=3).method == "exact"
    (said,) = _warnings(caplog)
    assert "group or others may write into it" in said and "the search is exact" in said, said
    with pytest.raises(OutputError, match="--exact"):
        similar("train/0", store, k=3, use_index=True)


def test_a_plain_similar_whose_rebuild_does_not_fit_the_budget_searches_exactly(tmp_path, caplog):
    """An index.json of an older format must be rebuilt; the rebuild's PCA sample does not fit --memory-budget: a
    plain ``similar`` ended in that ConfigError. Now: exact, one warning with the rebuild's reason.
    Sabotage: ``except FeatstoreError as exc:`` -> ``except OutputError as exc:`` (the build only) fails it."""
    store = tmp_path / "wide.h5"
    rng = np.random.default_rng(0)
    write_arrays(store, "ex", "train", rng.random((600, 512)).astype("f4"), np.arange(600) % 2, ["a", "b"])
    build_similarity_index(store, split="train")
    meta = _folder(store) / "index.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 1}))
    with caplog.at_level(logging.WARNING):
        assert similar("train/0", store, k=3, max_bytes=300_000).method == "exact"
    (said,) = _warnings(caplog)
    assert "not trusted" in said and "cannot be built again" in said and "the search is exact" in said, said


def test_an_index_folder_of_another_user_asked_for_says_ask_its_owner_and_exact(store, monkeypatch, caplog):
    """Another user's index folder (a colleague's, on a shared store; simulated by this process's euid): the error
    said "remove it ... or make it yours": not the user's to remove. Now: ask its owner, or ``--exact``; a plain
    ``similar`` is exact with that reason.
    Sabotage: the owner's message in ``caches._check_level`` -> the "remove it" one fails it."""
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(_folder(store)).st_uid + 4321)
    with pytest.raises(OutputError, match=r"ask its owner .*--exact") as err:
        similar("train/0", store, k=3, use_index=True)
    assert "remove it (" not in str(err.value), err.value
    with caplog.at_level(logging.WARNING):
        assert similar("train/0", store, k=3).method == "exact"
    (said,) = _warnings(caplog)
    assert "ask its owner" in said and "the search is exact" in said, said


# ------------------------------------------------------------------ attack 23 #2 / attack 24: a user's own npz
def test_export_npz_replaces_its_own_export_never_a_users_npz_with_export_s_names(store, tmp_path):
    """``np.savez(out, features=X, labels=y)`` (a user's data set, not featstore's) passed as an earlier export and
    was replaced. Now an export carries ``featstore.npy`` (checked by its header, bounded) and only such an npz is
    replaced; the user's is refused, its bytes kept.
    Sabotage: ``return False`` -> ``return True`` for an npz without featstore.npy in ``is_export`` fails it."""
    from featstore.store.export_files import is_export

    out = tmp_path / "mine.npz"
    np.savez(out, features=np.zeros((10, 4), "f4"), labels=np.zeros(10, "i8"))
    before = out.read_bytes()
    assert not is_export(out, "npz")
    r = cli("export", "--store", str(store), "--split", "train", "--out", str(out))
    assert r.exit_code == 1 and "mine.npz" in r.output and out.read_bytes() == before, r.output
    no_traceback(r)
    ours = tmp_path / "ours.npz"
    assert cli("export", "--store", str(store), "--split", "train", "--out", str(ours)).exit_code == 0
    assert is_export(ours, "npz") and list(np.load(ours)["featstore"][:1]) == ["featstore"]
    r = cli("export", "--store", str(store), "--split", "train", "--out", str(ours))
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------ attack 24 #4: a record's chart
@pytest.mark.parametrize("kind", ["sweep", "probe", "fewshot"])
def test_a_chart_option_never_replaces_the_chart_a_runs_record_owns(tmp_path, kind):
    """``runs compare --out s.runs/sweep-<id>.png`` replaced the sweep's heat map (stamped: featstore drew it), and
    the record still named it. Now refused in one line, the chart kept; another name in that folder is still fine.
    Sabotage: ``refuse_record_chart(out, what)`` commented out in ``compare.check_chart_name`` fails it."""
    from featstore.experiments.compare import check_chart_name
    from featstore.plots import confusion_png

    runs = tmp_path / "s.runs"
    runs.mkdir()
    chart = runs / f"{kind}-f36505.png"
    confusion_png(np.eye(2, dtype=int), ["a", "b"], "t", chart)
    (runs / f"{kind}-f36505.json").write_text(json.dumps({"kind": kind, "png": str(chart)}))
    before = chart.read_bytes()
    with pytest.raises(OutputError, match=f"is the chart of the {kind} record {kind}-f36505.json"):
        check_chart_name(chart, "--png")
    assert chart.read_bytes() == before
    assert check_chart_name(runs / "mine.png", "--png") == runs / "mine.png"
