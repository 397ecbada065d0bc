"""Attack 23 #7 and #5, attack 24 #6 (issue #19): a killed compaction's leftover on a tight disk, stores write_arrays
wrote that every reader called crafted, and a repeated item in a comma list."""

from __future__ import annotations

import shutil
from collections import namedtuple

import numpy as np
import pytest

from featstore.errors import ConfigError, StoreError
from featstore.store import space
from featstore.store.compact import compact
from featstore.store.writer import synthetic_attrs, write_arrays
from tests.test_adversarial_attack2 import cli, no_traceback
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack22_names import COMMA_OPTIONS

_Usage = namedtuple("_Usage", "total used free")


def _tiny_store(path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 2000)).astype(np.float32)
    write_arrays(
        path, "s", "train", feats, (np.arange(40) % 2).astype(np.int32), ["a", "b"], attrs=synthetic_attrs((2000,))
    )


def test_compaction_leftover_is_removed_before_the_space_check(tmp_path, monkeypatch):
    """A disk with room for one copy of the store: the leftover of a killed compaction (half a copy) used to make
    every later compaction refuse for lack of space (its room was counted before it was removed)."""
    store = tmp_path / "s.h5"
    _tiny_store(store)
    size = store.stat().st_size
    leftover = tmp_path / ".s.h5.compact.tmp"
    leftover.write_bytes(b"\0" * (size // 2))
    cap = 2 * size + space.SPACE_MARGIN + 4096  # the store, its copy, the margin: nothing more

    def disk_usage(_folder):
        used = sum(p.lstat().st_size for p in tmp_path.iterdir() if p.is_file())
        return _Usage(cap, used, cap - used)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    compact(store)
    assert not leftover.exists()


def test_the_space_message_names_featstore_leftovers(tmp_path, monkeypatch):
    store = tmp_path / "s.h5"
    (tmp_path / ".other.h5.compact.tmp").write_bytes(b"\0" * 5000)
    monkeypatch.setattr(shutil, "disk_usage", lambda _f: _Usage(10, 10, 0))
    with pytest.raises(StoreError, match=r"not enough disk space.*\.other\.h5\.compact\.tmp \(5 kB"):
        space.ensure_space(store, 100)


@pytest.mark.parametrize(
    ("names", "attrs", "match"),
    [
        (["a" * 5000, "b"], None, r"class_names is a string of 5,000 bytes, over the 4,096"),
        (["caf\udce9", "b"], None, r"class_names 'caf\\udce9' is not UTF-8 text"),
        ([0, 1], None, r"class_names holds int '0', not a str"),
        (None, {"notes": "x" * 70_000}, r"attrs\['notes'\] is a string of 70,000 bytes, over the 65,536"),
    ],
)
def test_write_arrays_refuses_what_readers_refuse_before_opening(tmp_path, names, attrs, match):
    """Written, then every reader called the store crafted (or h5py failed after the extractor group was made)."""
    store = tmp_path / "s.h5"
    feats = np.zeros((4, 3), np.float32)
    attrs = attrs and synthetic_attrs((3,)) | attrs
    with pytest.raises(ConfigError, match=match):
        write_arrays(store, "s", "train", feats, np.array([0, 1, 0, 1]), names or ["a", "b"], attrs=attrs)
    assert not store.exists()


def test_write_arrays_refuses_more_class_names_than_readers_accept(tmp_path, monkeypatch):
    monkeypatch.setattr(space, "MAX_NAMES", 3)
    with pytest.raises(ConfigError, match=r"class_names a list of at most 3 str, not 4 names"):
        write_arrays(tmp_path / "s.h5", "s", "train", np.zeros((1, 3), np.float32), [0], list("abcd"))
    assert not (tmp_path / "s.h5").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("repeats") / "s.h5")


@pytest.mark.parametrize("command, option", list(COMMA_OPTIONS), ids=[" ".join(k) for k in COMMA_OPTIONS])
def test_a_repeated_item_of_a_comma_list_is_refused_naming_the_option(tmp_path, store, command, option):
    """`sweep --clf logreg,logreg --extractor s,s` fitted and recorded each run twice; `--clf`, probe's and fewshot's
    lists dropped the repeat silently; `extract --layer a,a` refused. Every comma list now refuses, before any work."""
    words, valid = COMMA_OPTIONS[(command, option)]
    value = f"{valid}, {valid}"
    result = cli(command, *[w.format(tmp=tmp_path, store=store) for w in words], option, value)
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert out.strip() == f"error: {option} {value!r} lists {valid!r} twice; give each value once", out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new.h5").exists()


@pytest.mark.parametrize("kwargs", [{"extractors": ["s", "s"]}, {"clfs": ["logreg", "logreg"]}])
def test_the_sweep_api_refuses_a_repeated_extractor_or_classifier(tmp_path, store, kwargs):
    from featstore import sweep

    with pytest.raises(ConfigError, match="lists '(s|logreg)' twice; give each once"):
        sweep(store, **{"clfs": ["logreg"], "runs": tmp_path / "runs", **kwargs})
    assert not (tmp_path / "runs").exists()
