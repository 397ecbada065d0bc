"""Attack 22 findings 6 and 9 (issue #19): a plain ``similar`` (no index asked for) searches exactly, with one
warning, where an index cannot be trusted nor built again (no key of yours; a folder no index can be written in);
index.json, the report's leak pairs and the thumbnail cache's files are opened once (``O_NOFOLLOW | O_NONBLOCK``) and
checked on that descriptor (:func:`featstore.caches.read_small`), so a FIFO renamed there after a check by name is
refused, never waited on. Synthetic stores only; the race is simulated without timing: every check by name (stat,
lstat) is told the genuine regular file's stat while a FIFO sits at the name, and any blocking open of a FIFO fails
the test at once instead of hanging it. Each test failed with its fix sabotaged (named in its docstring)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import logging
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from featstore import FeatureStore, keys
from featstore.caches import NotRegular, read_small
from featstore.errors import ConfigError, OutputError, StoreError
from featstore.experiments import similar_index
from featstore.experiments.similar import similar
from featstore.experiments.similar_index import index_dir, load_index
from featstore.report.site import storeview, thumbs
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack20_fixI import store as attack20_store

store = attack20_store  # 400 train rows of 4 values, and their index (signed with the session's key)


def _meta(store):
    return index_dir(store, "ex", "train") / "index.json"


# ------------------------------------------------------------------ 6. no index asked for: an exact search
def test_without_a_key_a_plain_similar_searches_exactly_whatever_the_index_s_format(
    store, tmp_path, monkeypatch, caplog
):
    """XDG_CONFIG_HOME naming a file (no key can be kept): with a format-1 index.json a plain ``similar`` said
    "building it again", then failed for want of a key to sign an index nobody asked for. Now: exact, one warning
    (the key's, naming XDG_CONFIG_HOME as not a folder, not "File exists"); ``use_index=True`` is still refused.
    Sabotage: ``if user_key() is None:`` -> ``if False:`` in ``similar._index`` fails it (ConfigError); the key's
    ``raise OSError(exc.errno, _not_a_folder(...))`` -> ``raise`` fails the message check."""
    meta = json.loads(_meta(store).read_text())
    _meta(store).write_text(json.dumps({**meta, "format": 1}))
    (tmp_path / "cfg").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setattr(keys, "_warned", set())
    with caplog.at_level(logging.WARNING):
        assert similar("train/0", store, k=3).method == "exact"
    (said,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"(XDG_CONFIG_HOME ({tmp_path / 'cfg'}) is not a folder)" in said and "File exists" not in said, said
    with pytest.raises(ConfigError, match="no key of yours to sign the similarity index with"):
        similar("train/0", store, k=3, use_index=True)


def test_an_untrusted_index_in_a_read_only_folder_is_searched_without(store, tmp_path, monkeypatch, caplog):
    """A shared store whose index a colleague built (signed with their key) in a folder no file can be made in (a
    read-only file system: the probe file's mkstemp fails with EROFS, as under the reproducer's read-only bind mount):
    a plain ``similar`` said "building it again" then failed. Now exact, one warning saying why; ``--index`` still
    fails in one line. Sabotage: ``except CacheNotMade as exc:`` -> ``except ZeroDivisionError as exc:`` in
    ``similar._index`` fails it (OutputError)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "you"))  # your key, not the one that signed the index

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(similar_index.tempfile, "mkstemp", read_only)
    before = _meta(store).read_bytes()
    with caplog.at_level(logging.WARNING):
        assert similar("train/0", store, k=3).method == "exact"
    (said,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "not signed with your featstore key" in said and "cannot be built again here (the file system" in said
    assert "read-only); the search is exact" in said and "building it again" not in said, said
    assert _meta(store).read_bytes() == before  # nothing rebuilt, nothing removed
    result = cli("similar", "--store", store, "-k", "2", "train/0")
    assert result.exit_code == 0 and "exact search over 400 rows" in result.output, result.output
    with pytest.raises(OutputError, match="cannot build the similarity index .* is read-only"):
        similar("train/0", store, k=3, use_index=True)
    out = no_traceback(cli("similar", "--store", store, "--index", "train/0"))
    assert "error: cannot build the similarity index" in out, out


# ------------------------------------------------------------------ 9. a FIFO renamed in after a check by name
@pytest.fixture
def fifo_race(monkeypatch):
    """``race(path)``: a FIFO at ``path`` from now on, while every stat or lstat of that name still reports the
    regular file that was there (the check ran before the planter's rename; ``lie=False``: the FIFO is seen). Any open
    of that FIFO without O_NONBLOCK, or through open()/io.open (which cannot be non-blocking), fails the test at once."""
    real_stat, real_lstat, real_open, real_io_open = os.stat, os.lstat, os.open, io.open
    raced: dict[str, os.stat_result | None] = {}

    def is_raced(path, dir_fd=None) -> bool:
        if isinstance(path, int) or dir_fd is not None:
            return False
        return os.path.basename(os.fsdecode(os.fspath(path))) in raced

    def fake_stat(path, *a, dir_fd=None, follow_symlinks=True):
        if is_raced(path, dir_fd) and raced[os.path.basename(os.fsdecode(os.fspath(path)))] is not None:
            return raced[os.path.basename(os.fsdecode(os.fspath(path)))]
        return real_stat(path, *a, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    def fake_lstat(path, *a, dir_fd=None):
        return fake_stat(path, *a, dir_fd=dir_fd, follow_symlinks=False)

    def blocking(path) -> bool:
        try:
            return is_raced(path) and stat.S_ISFIFO(real_lstat(path).st_mode)
        except OSError:
            return False

    def guarded_open(path, flags, *a, **k):
        if blocking(path) and not flags & os.O_NONBLOCK:
            raise AssertionError(f"a blocking os.open of the FIFO {path}")
        return real_open(path, flags, *a, **k)

    def guarded_io_open(file, *a, **k):
        if not isinstance(file, int) and blocking(file):
            raise AssertionError(f"a blocking open() of the FIFO {file}")
        return real_io_open(file, *a, **k)

    def race(path, lie=True):
        raced[path.name] = real_stat(path) if lie else None
        path.unlink()
        os.mkfifo(path)

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "lstat", fake_lstat)
    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_io_open)
    monkeypatch.setattr(builtins, "open", guarded_io_open)
    return race


def test_index_json_a_fifo_after_the_check_is_refused_not_waited_on(store, fifo_race):
    """``read_meta`` lstat'ed index.json, stat'ed it, then ``read_text`` opened it again by name: a FIFO renamed in
    between hung ``similar`` for ever (3 of 361 load_index calls against a planter, on main). Now one line naming it.
    Sabotage: ``raw = read_small(path, MAX_META_BYTES)`` -> ``raw = path.read_bytes()`` in ``read_meta`` fails it
    (a blocking open of the FIFO)."""
    fifo_race(_meta(store))
    with pytest.raises(StoreError, match=r"index.json cannot be used \(index.json is not a regular file \(a pipe"):
        load_index(FeatureStore(store), "ex", "train")


def test_leak_pairs_a_fifo_after_the_check_is_found_again_not_waited_on(tmp_path, fifo_race):
    """The report's leak-pairs cache (``_read_cache``: is_symlink, is_file, stat, then ``read_text`` by name) hung
    ``report`` the same way. Now the cache is not used (found again). Sabotage: ``raw = read_small(file,
    MAX_CACHE_BYTES)`` -> ``raw = file.read_bytes()`` in ``_read_cache`` fails it."""
    pairs = tmp_path / "leaks-0123456789abcdef01234567.json"
    pairs.write_text(json.dumps({"pairs": [], "near": [], "roots": {}}))
    assert storeview._read_cache(pairs) == {"pairs": [], "near": [], "roots": {}}
    fifo_race(pairs)
    assert storeview._read_cache(pairs) is None


@pytest.mark.parametrize("file", [".png", ".mac", ".txt"])
def test_thumbnail_cache_files_a_fifo_after_the_check_are_made_again_not_waited_on(tmp_path, fifo_race, file):
    """A cached thumbnail, its HMAC and a failure note were checked by name (``_regular``: lstat) and then opened by
    name. Now read once through :func:`read_small`: not reused (made again), never waited on. Sabotage: ``return
    read_small(path, at_most)`` -> ``return path.read_bytes()`` in ``thumbs._read`` fails it."""
    cache = thumbs.ThumbCache(tmp_path / "thumbs")
    cache._secret = b"k" * 32
    key = "ab" + "0" * 30
    png = cache.path(key)
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG not really")
    png.with_suffix(".mac").write_text(keys.sign(cache._secret, "thumbs", png.name, png.read_bytes()))
    mac = keys.sign(cache._secret, "thumb-note", thumbs._noted(png.name), b"empty file (0 bytes)")
    png.with_suffix(".txt").write_text(f"{mac}\nempty file (0 bytes)")
    assert cache._signed(key) and cache._signed_note(key) == "empty file (0 bytes)"
    fifo_race(png.with_suffix(file))
    if file == ".txt":
        assert cache._signed_note(key) is None and cache._signed(key)
    else:
        assert not cache._signed(key)
    if file == ".png":
        assert cache.data_uri(thumbs.Thumb("x.png", key)) is None


@pytest.mark.parametrize("how", ["hard link", "copy"])
def test_a_thumbnail_swapped_for_a_fifo_is_not_exported_into_the_site(tmp_path, fifo_race, monkeypatch, how):
    """``export`` hard-linked whatever was at the cached name into the site (a FIFO renamed there after the thumbnail
    was checked became a FIFO in the site), or copied it with ``shutil.copyfile`` by name. Now the linked inode is
    checked, and the copy reads the one descriptor :func:`read_small` checked: not shown, never waited on. Sabotage:
    ``if not _regular(target, MAX_THUMB_BYTES):`` -> ``if False:`` fails "hard link"; ``_read(cached,
    MAX_THUMB_BYTES)`` -> ``cached.read_bytes()`` in ``export`` fails "copy"."""
    cache = thumbs.ThumbCache(tmp_path / "thumbs")
    key = "ab" + "0" * 30
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"png")
    fifo_race(cache.path(key), lie=False)
    if how == "copy":
        monkeypatch.setattr(thumbs.os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    (tmp_path / "site").mkdir()
    assert cache.export(thumbs.Thumb("x.png", key), tmp_path / "site") is None
    assert not os.path.lexists(tmp_path / "site" / f"{key}.png")


def test_map_layout_a_fifo_after_its_zip_check_is_made_again_not_waited_on(tmp_path, fifo_race, monkeypatch, caplog):
    """A cached map layout was checked by ``check_zip`` (one non-blocking open) and then opened again by name by
    ``zipfile.ZipFile(path)``: a FIFO renamed in between hung ``report``. Now the layout read is the one descriptor
    :func:`featstore.caches.open_regular` checked. Sabotage: ``with open_cached(path) as fh, zipfile.ZipFile(fh) as
    z:`` -> ``with zipfile.ZipFile(path) as z:`` in ``projection._cached`` fails it."""
    from featstore.experiments import projection

    path = projection._cache_file(tmp_path, "ex", "k")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.npy", b"not a layout")
    real = projection.check_zip
    monkeypatch.setattr(projection, "check_zip", lambda p: (real(p), fifo_race(Path(p))))  # checked, then swapped
    with caplog.at_level(logging.WARNING):
        assert projection._cached(tmp_path, "ex", "k", {"train": np.arange(3)}) is None
    assert any("is made again" in m and "not a regular file (a pipe" in m for m in caplog.messages), caplog.messages


def test_read_small_refuses_links_fifos_and_larger_files_in_one_open(tmp_path):
    """The shared helper: None for a missing file; a link, a FIFO, a folder or a file over the bound is NotRegular
    (``link`` and ``size`` say which), from one open and its fstat. Sabotage: ``O_NOFOLLOW`` dropped from
    ``caches._OPEN_FILE`` fails the link case."""
    (tmp_path / "ok").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    os.mkfifo(tmp_path / "fifo")
    assert read_small(tmp_path / "ok", 5) == b"12345" and read_small(tmp_path / "missing", 5) is None
    with pytest.raises(NotRegular, match="link is not a regular file \\(a symbolic link\\)") as err:
        read_small(tmp_path / "link", 5)
    assert err.value.link
    for name in ("fifo", "."):
        with pytest.raises(NotRegular, match="is not a regular file \\(a pipe, device, folder or socket\\)"):
            read_small(tmp_path / name, 5)
    with pytest.raises(NotRegular, match="ok is 5 bytes, more than the 4 featstore writes there") as err:
        read_small(tmp_path / "ok", 4)
    assert err.value.size == 5
