"""Attack 20, finding 6 and its leftovers (issue #19): the similarity index signed with this user's key, ``similar
--memory-budget``, the report's leak-pairs cache signed, and the key folder's link named as a folder. Synthetic
stores only; each test failed with its fix sabotaged (the sabotage is named in its docstring)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from featstore import FeatureStore, keys
from featstore.errors import ConfigError
from featstore.experiments import similar_files
from featstore.experiments.similar import similar
from featstore.experiments.similar_index import build_similarity_index, index_dir, load_index
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack4 import cli, no_traceback


@pytest.fixture
def store(tmp_path):
    """400 train rows of 4 values (as the attack's reproducer), and their index."""
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    write_arrays(path, "ex", "train", rng.random((400, 4)).astype("f4"), np.arange(400) % 2, ["a", "b"])
    build_similarity_index(path, split="train")
    return path


def _folder(store):
    return index_dir(store, "ex", "train")


def _rows(result) -> list[int]:
    return [n.row for n in result.neighbours]


def _hashes(monkeypatch) -> list[int]:
    """A list that grows by one each time vectors.npy is hashed at query time."""
    seen: list[int] = []
    digest = similar_files.hashlib.file_digest

    def counted(fh, name):
        seen.append(1)
        return digest(fh, name)

    monkeypatch.setattr(similar_files.hashlib, "file_digest", counted)
    return seen


def _rebuilt(caplog) -> list[str]:
    return [m for m in caplog.messages if "building it again" in m]


# ------------------------------------------------------------------ 6. the similarity index signed
def test_a_planted_vectors_npy_is_built_again_with_one_warning(store, caplog):
    """Finding 6: a vectors.npy of the same size, its true neighbours pushed away, silently changed which rows came
    back (no warning). Now it is not the signed file: built again, said once, and the answer is the exact one.
    Sabotage: ``!= meta.get("vectors_sha256")`` -> ``== ...`` in ``check_vectors`` fails it."""
    exact = _rows(similar("train/0", store, k=3, use_index=False))
    v = np.load(_folder(store) / "vectors.npy")
    top = v @ v[0]
    v[top > np.sort(top)[-150]] = -v[0]
    np.save(_folder(store) / "vectors.npy", v)
    with caplog.at_level(logging.WARNING):
        got = similar("train/0", store, k=3)
    assert got.method == "index" and _rows(got) == exact
    (said,) = _rebuilt(caplog)
    assert "vectors.npy is not the file featstore wrote and signed" in said and str(_folder(store)) in said
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _rows(similar("train/0", store, k=3)) == exact and not _rebuilt(caplog)  # the new index is trusted


def test_an_unchanged_index_is_not_hashed_and_a_copy_is_hashed_once(store, monkeypatch, caplog):
    """The fast path reads vectors.npy's identity, not its bytes; the same bytes under a new inode (``cp``) are
    hashed once and signed again with their new identity, not rebuilt. Sabotage: the ``write_cached_text`` of the
    re-signed record in ``_trusted`` turned into ``pass`` fails it (hashed at every later query)."""
    seen = _hashes(monkeypatch)
    first = _rows(similar("train/0", store, k=3))
    assert seen == []
    vectors = _folder(store) / "vectors.npy"
    shutil.copy2(vectors, vectors.with_suffix(".copy"))
    os.replace(vectors.with_suffix(".copy"), vectors)  # the same bytes and mtime, another inode and ctime
    with caplog.at_level(logging.WARNING):
        assert _rows(similar("train/0", store, k=3)) == first and seen == [1] and not _rebuilt(caplog)
        assert _rows(similar("train/0", store, k=3)) == first and seen == [1]


@pytest.mark.parametrize("how", ["format 1", "edited", "other key"])
def test_an_unsigned_or_foreign_index_is_built_again_with_one_warning(store, tmp_path, monkeypatch, caplog, how):
    """An index.json of the older format (unsigned), edited by hand (sizes, digests and identity recomputed by whoever
    planted vectors.npy), or signed with another user's key is not trusted: built again, said once. Sabotage:
    ``if why := unsigned(index.meta, key)`` -> ``if False`` in ``_trusted`` fails the last two."""
    meta_path = _folder(store) / "index.json"
    meta = json.loads(meta_path.read_text())
    if how == "format 1":
        meta = {k: v for k, v in meta.items() if k not in ("hmac", "key_id", "vectors_sha256", "vectors_identity")}
        meta_path.write_text(json.dumps({**meta, "format": 1}))
    elif how == "edited":
        meta_path.write_text(json.dumps({**meta, "seed": 7}))
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
    with caplog.at_level(logging.WARNING):
        assert similar("train/0", store, k=3).method == "index"
    (said,) = _rebuilt(caplog)
    why = {"format 1": "older featstore", "edited": "does not verify", "other key": "not signed with your"}[how]
    assert why in said, said
    assert load_index(FeatureStore(store), "ex", "train") is not None  # the new one verifies


def test_without_a_key_no_index_is_trusted_nor_built(store, tmp_path, monkeypatch):
    """With no usable key (a read-only home) nothing cached is trusted: the search is exact, an index asked for or
    built is refused in one line naming XDG_CONFIG_HOME. Sabotage: ``return None`` -> ``return index`` under ``if
    (key := user_key()) is None`` in ``_trusted`` fails it."""
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "not-a-folder"))
    monkeypatch.setattr(keys, "_warned", set())
    assert similar("train/0", store, k=3).method == "exact"
    with pytest.raises(ConfigError, match="no key of yours to check the similarity index with; set XDG_CONFIG_HOME"):
        similar("train/0", store, k=3, use_index=True)
    with pytest.raises(ConfigError, match="no key of yours to sign the similarity index with; set XDG_CONFIG_HOME"):
        build_similarity_index(store, split="train")


# ------------------------------------------------------------------ similar --memory-budget
@pytest.fixture
def wide(tmp_path):
    """600 rows of 300 values: a PCA sample of 512 rows (2 x 256 dims) needs 1,228,800 bytes."""
    path = tmp_path / "w.h5"
    rng = np.random.default_rng(1)
    write_arrays(path, "ex", "train", rng.random((600, 300)).astype("f4"), np.arange(600) % 2, ["a", "b"])
    return path


def test_similar_takes_a_memory_budget_and_its_refusal_names_it(wide):
    """``similar`` had no --memory-budget, and the PCA sample's refusal told the command line user to give
    ``max_bytes``. Sabotage: ``option="--memory-budget"`` dropped from the CLI's build call fails it."""
    out = no_traceback(cli("similar", "--store", wide, "--build-index", "--memory-budget", "1MB", "train/0"))
    assert "give --memory-budget at least 1,228,800 (1.23 MB" in out and "max_bytes" not in out, out
    assert "fewer dims" not in out  # the command line has no --dims
    with pytest.raises(ConfigError, match=r"give max_bytes at least 1,228,800 \(1.23 MB.*\), or fewer dims"):
        build_similarity_index(wide, split="train", max_bytes=10**6)
    result = cli("similar", "--store", wide, "--build-index", "--memory-budget", "2.5MB", "-k", "2", "train/0")
    assert result.exit_code == 0 and "index search over 600 rows" in result.output, result.output
    out = no_traceback(cli("similar", "--store", wide, "--memory-budget", "0", "train/0"))
    assert "--memory-budget must be more than 0 bytes" in out, out
    assert "--memory-budget" in no_traceback(cli("similar", "--help"))


# ------------------------------------------------------------------ the report's leak pairs signed
def test_planted_leak_pairs_of_the_store_s_own_files_are_found_again(tmp_path, caplog):
    """The leak-pairs cache (``<store>.cache/leaks-<key>.json``, a key anyone can compute) was checked to name the
    store's files only: pairs of the store's own files with other similarities and flags, or none at all, were shown
    as found. Now signed: found again, said once. Sabotage: the ``unsealed`` check in ``leak_view`` turned into
    ``False`` fails it."""
    from featstore.report.site.storeview import leak_view
    from tests.leaks_stores import eight_and_two

    store = eight_and_two(tmp_path)
    cache = tmp_path / "cache"
    honest = leak_view(FeatureStore(store), "s", cache, "")
    assert honest.pairs
    (planted,) = cache.glob("leaks-*.json")
    found = json.loads(planted.read_text())
    found["pairs"] = [[p[0], p[1], p[2], 0.01, False, False] for p in found["pairs"]]  # the store's paths
    planted.write_text(json.dumps(found))
    with caplog.at_level(logging.WARNING):
        view = leak_view(FeatureStore(store), "s", cache, "")
    assert [(p.similarity, p.same_label) for p in view.pairs] == [(p.similarity, p.same_label) for p in honest.pairs]
    assert len([m for m in caplog.messages if "are found again: it does not verify" in m]) == 1, caplog.messages


# ------------------------------------------------------------------ the key's folder a link
def test_a_linked_key_folder_is_named_as_the_folder_with_the_fix(tmp_path, monkeypatch):
    """``$XDG_CONFIG_HOME/featstore`` a link said "featstore's key .../featstore is a symbolic link or not a folder
    ... remove it (featstore makes a new one": the folder was called the key. Sabotage: ``_refuse_link(path.parent)``
    -> ``_refuse(path.parent, "is a symbolic link or not a folder")`` fails it."""
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "featstore").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    with pytest.raises(ConfigError) as err:
        keys.user_key()
    folder = tmp_path / "cfg" / "featstore"
    assert str(err.value).startswith(f"the folder {folder} holding featstore's key is a symbolic link;"), err.value
    assert f"Remove it (`rm {folder}`" in str(err.value) and "set XDG_CONFIG_HOME" in str(err.value)
