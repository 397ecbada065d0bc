"""Attack 19, finding 10: a planted ``<store>.cache/onnx/<key>.onnx`` with a ``<key>.json`` whose sha256 the planter
computed was run as the extractor (the 4 seeded check images cannot tell it from the cut). The record now holds an
HMAC under this user's secret key (featstore.keys), so only what this user's featstore exported and checked is loaded;
anything else is exported again with one warning. The tiny cut, its export and the planted graph (which passes the
start-up check and gives other features on the dataset's images) are tests/test_onnx.py's. Each test failed before
the fix, or fails with its one-line sabotage (said in each)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from featstore import ConfigError, FeatureStore, extract, keys  # noqa: E402
from featstore.models import onnx_runtime  # noqa: E402

from . import test_onnx as _onnx  # noqa: E402
from .test_onnx import ONNX, cached_files, with_cache  # noqa: E402

made, planted, counted = _onnx.made, _onnx.planted, _onnx.counted  # its fixtures: the tiny cut, exported once here

LOGGER = "featstore.models.onnx_runtime"


def _agrees_with_keras(made, store, split: str = "train") -> bool:
    xa, xb = FeatureStore(made["root"] / "keras.h5").load(split)[0], FeatureStore(store).load(split)[0]
    return bool(np.abs(xa - xb).max() <= onnx_runtime.ONNX_TOLERANCE * np.abs(xa).max())


def _plant(cached, data: bytes) -> None:
    """What f10 did: the planted bytes, and the record's sha256 recomputed (a digest anyone can compute)."""
    cached.write_bytes(data)
    rec = json.loads(onnx_runtime.record_path(cached).read_text())
    onnx_runtime.record_path(cached).write_text(json.dumps({**rec, "sha256": hashlib.sha256(data).hexdigest()}))


def test_a_planted_cut_with_its_recomputed_digest_is_exported_again(made, tmp_path, counted, caplog, planted):
    """Before: loaded (its sha256 matched the record) and the train features were the planted ones. Sabotage: a
    ``return None`` in ``unrecorded`` before its key_id and HMAC checks fails it (and the next two tests)."""
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    _plant(cached, planted)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = extract(made["data"], "train", store, ONNX)
    assert r.rows == 12 and counted == [1] and _agrees_with_keras(made, store)
    said = [m for m in caplog.messages if "is exported again" in m]
    assert len(said) == 1 and "its HMAC does not verify against" in said[0], caplog.messages
    assert cached.read_bytes() != planted and onnx_runtime.unrecorded(cached, cached.read_bytes()) is None


def test_a_cache_copied_from_another_user_or_machine_is_not_trusted(made, tmp_path, counted, caplog, monkeypatch):
    """A store's cache signed with someone else's key (here: another config folder, so another key). Before: loaded
    as it was (its digest matched). Sabotage: as the first test."""
    store = with_cache(made, tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-user"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = extract(made["data"], "validation", store, ONNX)
    assert r.rows == 6 and counted == [1]
    assert any("was not signed with your featstore key" in m for m in caplog.messages), caplog.messages
    (cached,) = cached_files(store)
    assert onnx_runtime.unrecorded(cached, cached.read_bytes()) is None  # re-signed with this user's key
    extract(made["data"], "test", store, ONNX)
    assert counted == [1]  # and then reused


def test_the_key_is_made_once_private_and_reused(tmp_path, monkeypatch):
    """Sabotage: making the key file 0o644 fails the mode assertion (and the next read refuses it)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    key = keys.user_key()
    path = tmp_path / "cfg" / "featstore" / "key"
    assert len(key) == 32 and keys.user_key() == key and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # no temporary file left


@pytest.mark.parametrize("how", ["readable", "linked", "folder-linked", "short"])
def test_a_key_featstore_would_not_have_made_is_refused_naming_it(made, tmp_path, monkeypatch, how):
    """A key others may have read (or a link to one) could have signed a planted record. Before: no key was read, the
    extract ran. Sabotage: ``st.st_mode & 0o077`` -> ``& 0`` in ``_read`` fails "readable"."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    folder = tmp_path / "cfg" / "featstore"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "key").write_bytes(b"k" * 32)
    os.chmod(elsewhere / "key", 0o600)
    if how == "readable":
        (folder / "key").write_bytes(b"k" * 32)
        os.chmod(folder / "key", 0o644)
        message = r"key .*/cfg/featstore/key may be read or written by others \(mode 0644\).*chmod 600"
    elif how == "linked":
        (folder / "key").symlink_to(elsewhere / "key")
        message = r"featstore's key .*/cfg/featstore/key is a symbolic link"
    elif how == "folder-linked":
        folder.rmdir()
        folder.symlink_to(elsewhere)
        message = (
            r"the folder .*/cfg/featstore holding featstore's key is a symbolic link.*Remove it \(`rm .*/cfg/featstore`"
        )
    else:
        (folder / "key").write_bytes(b"k" * 5)
        os.chmod(folder / "key", 0o600)
        message = "holds 5 bytes, not 32"
    makes = (
        r"featstore makes the folder and a new key"
        if how == "folder-linked"
        else r"remove it \(featstore makes a new one"
    )
    with pytest.raises(ConfigError, match=message + r".*" + makes):
        extract(made["data"], "validation", with_cache(made, tmp_path), ONNX)


def test_without_a_key_nothing_cached_is_trusted_and_it_is_said_once(
    made, tmp_path, counted, caplog, monkeypatch, planted
):
    """A read-only home (here: the config folder's place is a file): the cut is exported for each run, never loaded
    from the cache, even with a record whose digest matches, and nothing is written there. Before: the planted pair
    was loaded. Sabotage: ``(key is None or not _make_folder(cache))`` -> ``(not _make_folder(cache))`` in ``start``
    fails it."""
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "not-a-folder"))
    monkeypatch.setattr(keys, "_warned", set())
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    _plant(cached, planted)
    with caplog.at_level(logging.WARNING):
        extract(made["data"], "train", store, ONNX)
        extract(made["data"], "validation", store, ONNX)
    assert counted == [1, 1] and _agrees_with_keras(made, store) and cached.read_bytes() == planted  # not replaced
    said = [m for m in caplog.messages if "cannot keep its key" in m]
    assert len(said) == 1 and "not-a-folder" in said[0] and "made again each time" in said[0], caplog.messages


def test_an_extractor_on_the_cache_runs_a_fresh_export_not_the_planted_one(made, tmp_path, planted, caplog):
    """What predict builds (f10's path: its extractor starts ONNX Runtime the same way). Sabotage: as the first test."""
    from featstore.models.extractor import Extractor

    (cached,) = cached_files(with_cache(made, tmp_path))
    _plant(cached, planted)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ex = Extractor(ONNX, runtime_cache=cached.parent)
    assert ex.runtime_file[1] != hashlib.sha256(planted).hexdigest()
    assert any("its HMAC does not verify" in m for m in caplog.messages)


def test_a_cached_file_without_a_record_is_never_read(made, tmp_path, counted, caplog, monkeypatch):
    """Attack 21 finding 13: the cached file was read whole (up to 2 GiB) before its record was looked at: a planted
    2 GiB sparse file with no record added 2.1 GB to the peak once. The record is checked first now. Sabotage: giving
    ``unrecorded`` the file's bytes at its first call in ``start`` (the old order) fails it."""
    store = with_cache(made, tmp_path)
    (cached,) = cached_files(store)
    onnx_runtime.record_path(cached).unlink()
    cached.write_bytes(b"planted")
    reads, real = [], onnx_runtime.read_cached
    monkeypatch.setattr(
        onnx_runtime, "read_cached", lambda p, *a, **k: reads.append((p.name, k.get("read", True))) or real(p, *a, **k)
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = extract(made["data"], "train", store, ONNX)
    assert r.rows == 12 and _agrees_with_keras(made, store)
    assert (cached.name, True) not in reads[: reads.index((cached.name, False)) + 2], reads  # looked at, not read
    assert any("no record" in m and "is exported again" in m for m in caplog.messages), caplog.messages
