"""Attack 17 (issue 19), the store and its exports: rows for what the seventeenth fresh attack found (reproducers on
branch attack17). Stores are synthetic (``writer.write_arrays``, no TensorFlow); each test failed before its fix."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store import writer
from tests import test_adversarial_attack14 as a14
from tests.test_adversarial_attack4 import cli, no_traceback

store_src, store = a14.store_src, a14.store  # a synthetic 3-split store (+ 'extra'), and a private copy of it


def _gone_pid() -> int:
    """The pid of a process that ran and is gone."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------ 6. export --rows-per-file's probe name
@pytest.mark.parametrize("planted", ["folder", "fifo", "link"])
def test_what_sits_at_out_dot_shards_is_not_said_of_out(store, tmp_path, planted):
    """Finding 6: the parent of --out was probed under the name <out>.shards, and the message rewritten to name --out:
    a user's folder, FIFO or link at sh.shards gave "--out …/sh is a folder", "is not a regular file", "is a symbolic
    link … Remove it" of an --out that did not exist. Only the folder is probed now, under a name no one has."""
    pytest.importorskip("pyarrow")
    shards = tmp_path / "sh.shards"
    {"folder": shards.mkdir, "fifo": lambda: os.mkfifo(shards), "link": lambda: shards.symlink_to("/etc/passwd")}[
        planted
    ]()
    out = tmp_path / "sh"
    result = cli("export", "--store", store, "--split", "test", "--out", out, "--rows-per-file", "4")
    assert result.exit_code == 0, no_traceback(result)
    assert sorted(p.name for p in out.iterdir())[0] == "part-00000.parquet"
    assert os.path.lexists(shards) and not [p for p in tmp_path.iterdir() if p.name.startswith(".sh.")]


# ------------------------------------------------------------------ 11. the earlier export hidden for ever
def test_an_earlier_export_left_aside_by_a_kill_is_removed_once_abandoned(store, tmp_path, monkeypatch, caplog):
    """Finding 11: a kill after write_shards' second rename left the whole earlier export hidden as .<out>.XXXX.old for
    ever (looked at only when --out was missing). Its name now carries its writer's pid and machine: once that process
    is gone and the folder 10 minutes old, the next export removes it and says so; a younger one is named, kept."""
    pytest.importorskip("pyarrow")
    from featstore import export
    from featstore.leftovers import host_tag
    from featstore.store import shards

    out = tmp_path / "s"
    export(store, "train", out, rows_per_file=4)
    real = shards.remove_held

    def killed(fd, path, *a, **k):  # the kill: the aside copy is never removed
        if not str(path.parent).endswith(".old"):
            real(fd, path, *a, **k)

    monkeypatch.setattr(shards, "remove_held", killed)
    export(store, "train", out, rows_per_file=6)
    monkeypatch.setattr(shards, "remove_held", real)
    parts = sorted(out.iterdir())
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(list((left / "shards").iterdir())) > len(parts)  # the whole earlier export (4-row shards)
    assert re.fullmatch(rf"\.s\.fs{os.getpid()}-{host_tag()}-[0-9a-z_]+\.old", left.name), left.name
    dead = left.with_name(left.name.replace(f"fs{os.getpid()}-", f"fs{_gone_pid()}-"))
    left.rename(dead)
    with caplog.at_level(logging.WARNING):
        export(store, "train", out, rows_per_file=6)  # gone, but young: named with how to remove it
    assert dead.is_dir() and f"rm -r {dead}" in caplog.text, caplog.text
    old = time.time() - 700
    os.utime(dead, (old, old))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        export(store, "train", out, rows_per_file=6)
    assert not dead.exists() and f"removed {dead}" in caplog.text, caplog.text
    assert sorted(out.iterdir()) == parts  # the newer export is untouched


# ------------------------------------------------------------------ 7. what is at <store>.lock
@pytest.mark.parametrize("planted", ["link", "dangling", "fifo", "notes", "hard"])
def test_a_lock_name_featstore_did_not_make_is_named_never_locked_or_removed(tmp_path, planted):
    """Finding 7: a symbolic link at <store>.lock gave ELOOP and the advice "make the folder writable, or run
    --no-locking" (which turns the one-writer safety off); a FIFO there was locked, then deleted on release."""
    from featstore.store.locking import writer_lock

    lock = tmp_path / "f.h5.lock"
    notes = tmp_path / "notes"
    notes.write_text("precious")
    {
        "link": lambda: lock.symlink_to(notes),
        "dangling": lambda: lock.symlink_to(tmp_path / "nothing"),
        "fifo": lambda: os.mkfifo(lock),
        "notes": lambda: lock.write_text("my own notes"),
        "hard": lambda: os.link(notes, lock),
    }[planted]()
    with pytest.raises(StoreError) as err:
        with writer_lock(tmp_path / "f.h5", True):
            pass
    said = str(err.value)
    assert said.startswith(f"{lock} is ") and f"rm {lock}" in said and "no-locking" not in said, said
    assert os.path.lexists(lock) and notes.read_text() == "precious"
    with writer_lock(tmp_path / "g.h5", True):  # featstore's own (empty) lock is taken and removed as before
        assert (tmp_path / "g.h5.lock").exists()
    assert not (tmp_path / "g.h5.lock").exists()


@pytest.mark.parametrize("which", ["store lock", "file lock"])
def test_a_fifo_planted_between_the_check_and_the_open_is_refused(tmp_path, monkeypatch, which):
    """What is at a lock's name is checked, then filelock opens the name: a FIFO planted in between was locked (and a
    store's lock then deleted on release). The held descriptor is now checked too; nothing is written, one line."""
    from featstore.runs import versions
    from featstore.store import locking

    lock = tmp_path / ("f.h5.lock" if which == "store lock" else "f.h5.leaks.json.lock")
    real_lstat = os.lstat

    def lstat_then_plant(path, *a, **k):
        st = real_lstat(path, *a, **k)  # FileNotFoundError where nothing is there yet
        if os.fspath(path) == str(lock) and not planted:
            planted.append(lock)
            os.unlink(lock)
            os.mkfifo(lock)  # the race: planted just after featstore looked at its own empty file
        return st

    planted = []
    lock.touch()  # featstore's own (a killed writer's leftover): passes the check

    monkeypatch.setattr(os, "lstat", lstat_then_plant)
    with pytest.raises(StoreError, match="FIFO|replaced while it was being locked|not a regular file"):
        if which == "store lock":
            with locking.writer_lock(tmp_path / "f.h5", True):
                pass
        else:
            with versions.file_lock(lock, "leaks record", "busy"):
                pass
    monkeypatch.setattr(os, "lstat", real_lstat)
    assert os.path.lexists(lock) and os.stat(lock).st_mode & 0o170000 == 0o010000  # the FIFO is left where it was


# ------------------------------------------------------------------ 5. a store with a second name
def test_a_store_with_a_second_name_is_never_written_in_place(store, tmp_path):
    """Finding 5: the store was updated in place through a hard link, so a `cp -al` snapshot gained the new split (and
    a kill mid-extract damaged both names). Writing (write_arrays, extract's lock, finetune's cache) is refused."""
    import h5py

    from featstore.store.locking import writer_lock

    snap = tmp_path / "snapshot"
    snap.mkdir()
    os.link(store, snap / "f.h5")
    X, y = np.zeros((6, 8), np.float32), np.arange(6) % 3
    with pytest.raises(StoreError) as err:
        writer.write_arrays(store, "s", "more", X, y, ["a", "b", "c"])
    said = str(err.value)
    assert f"store {store} has 2 names" in said and "cp --reflink=never" in said, said
    with pytest.raises(StoreError, match="has 2 names"):
        with writer_lock(store, False):  # extract and finetune's cache take it first, --no-locking or not
            pass
    with h5py.File(snap / "f.h5", "r") as f:
        assert "more" not in f["s"]
    os.unlink(snap / "f.h5")  # the fix the line names: now a file of its own
    writer.write_arrays(store, "s", "more", X, y, ["a", "b", "c"])


# ------------------------------------------------------------------ 1. paths whose heap IDs share one string
def _shared_paths(path, split: str, n: int, big: int, key: str = "paths") -> None:
    """Split ``split``'s ``key`` column made contiguous, every row's heap ID pointing at row 0's string of ``big``
    bytes (as the attack's store): a file of a few MB whose rows read back as n x big bytes."""
    import h5py

    from featstore.store.layout import STR

    with h5py.File(path, "a") as f:
        del f[f"s/{split}/{key}"]
        data = np.array(["x" * big] + [f"r{i}" for i in range(1, n)], dtype=object)
        offset = f.create_dataset(f"s/{split}/{key}", data=data, dtype=STR).id.get_offset()
    with open(path, "r+b") as fh:  # 16-byte heap IDs (4 length, 8 address, 4 index): all now row 0's
        fh.seek(offset)
        first = fh.read(16)
        fh.seek(offset)
        fh.write(first * n)


@pytest.fixture
def two_splits(tmp_path):
    """train and test of 1,000 rows each (2 classes, 4 values; a 2.8 MB file): the attack's store."""
    path = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        y = np.repeat(np.arange(2), 500).astype(np.int32)
        writer.write_arrays(path, "s", split, rng.normal(size=(1000, 4)).astype(np.float32), y, ["a", "b"])
    return path


@pytest.mark.parametrize("big, said", [(256 << 10, "over the 4,096-byte limit"), (4096, "add up to")])
def test_paths_sharing_one_heap_string_are_refused_before_they_are_read(two_splits, tmp_path, monkeypatch, big, said):
    """Finding 1: 600 test paths pointing at one 1 MiB string made a 3.8 MB store export 629 MB and fit peak at 2.1 GB
    (memory rows x string, not the file). Lengths are read from the heap IDs first: a path over 4,096 bytes, or rows
    adding up to more than the file holds, is one line naming the column, before a string is read."""
    import h5py

    _shared_paths(two_splits, "test", 1000, big)  # 1000 x 4,096 bytes: more than the file holds
    read, real = [], h5py.Dataset.__getitem__

    def spy(ds, *args, **kwargs):  # a string of the shared column read at all: the bound came too late
        if ds.name == "/s/test/paths":
            read.append(args)
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    for args in (
        ("export", "--store", two_splits, "--split", "test", "--out", tmp_path / "x.csv"),
        ("fit", "--store", two_splits, "--runs", tmp_path / "runs", "--validation", "none", "--test", "test"),
        ("check", two_splits),
    ):
        result = cli(*args)
        out = no_traceback(result)
        assert result.exit_code != 0 and "s/test/paths" in out and said in out, (args[0], out[-2000:])
        assert len(out) < 4000, args[0]  # never the string itself
        assert not read, (args[0], read)
    assert not (tmp_path / "x.csv").exists()


def test_lengths_come_from_the_heap_ids_of_every_layout_featstore_writes(tmp_path):
    """vlen_lengths reads heap IDs from the raw storage: contiguous, chunked, a chunk never written, rows across chunk
    edges; equal to the strings' own lengths."""
    import h5py

    from featstore.store.layout import STR
    from featstore.store.strings import vlen_lengths

    words = [("é" * (i % 37)).encode() + b"\xff" * (i % 3) for i in range(1000)]
    with h5py.File(tmp_path / "c.h5", "w") as f:
        cases = {
            "contiguous": {},
            "chunked": {"chunks": (64,), "maxshape": (None,)},
        }
        for name, kw in cases.items():
            f.create_dataset(name, data=np.array(words, dtype=object), dtype=STR, **kw)
        f.create_dataset("sparse", shape=(300,), dtype=STR, chunks=(50,))[120:130] = words[:10]
    with h5py.File(tmp_path / "c.h5", "r") as f:
        for name in cases:
            assert vlen_lengths(f[name], 0, 1000).tolist() == [len(w) for w in words], name
            assert vlen_lengths(f[name], 63, 201).tolist() == [len(w) for w in words[63:201]], name
        want = [0] * 120 + [len(w) for w in words[:10]] + [0] * 170
        assert vlen_lengths(f["sparse"], 0, 300).tolist() == want


# ------------------------------------------------------------------ 2. class names sharing one heap string
def _shared_names(path, k: int, big: int, key: str = "class_names", extractor: bool = False) -> None:
    """Every split's ``key`` (``extractor``: the extractor's): k strings, every heap ID pointing at the first, a string
    of ``big`` bytes."""
    import struct

    import h5py

    with h5py.File(path, "a") as f:
        for group in ["s"] if extractor else [f"s/{split}" for split in f["s"]]:
            f[group].attrs[key] = np.array(["x" * big] + [f"c{i}" for i in range(1, k)], dtype=h5py.string_dtype())
    data = bytearray(path.read_bytes())
    i, pattern = 0, struct.pack("<I", big)
    while (i := data.find(pattern, i)) >= 0:
        if struct.unpack("<I", data[i + 16 : i + 20])[0] == 2:  # the next element is "c1": all k point at element 0
            data[i : i + 16 * k] = bytes(data[i : i + 16]) * k
        i += 4
    path.write_bytes(data)


def test_class_names_sharing_one_heap_string_are_one_short_line(store, tmp_path):
    """Finding 2: 120 class names pointing at one 1 MiB string made info take 10 s and print 3 MB, and fit print one
    error line of 1 MB (and compare the names K^2 times). Each name is measured before any is compared or shown: one
    short line, the name cut."""
    _shared_names(store, 40, 64 << 10)
    for args in (("info", store), ("fit", "--store", store, "--runs", tmp_path / "runs"), ("check", store)):
        result = cli(*args)
        out = no_traceback(result)
        assert "class_names[0] is a string of 65,536 bytes, over the 4,096-byte limit ('xxxx" in out and "…)" in out, (
            args[0],
            out[-3000:],
        )
        assert len(out) < 6000, (args[0], len(out))


def test_any_string_attribute_sharing_one_heap_string_is_one_short_line(store, tmp_path):
    """Finding 2, other attributes: an extractor's attribute of 30 strings sharing one 100 KB string was read whole by
    every command (info printed it). String attributes are bounded at 64 KiB each, before use."""
    _shared_names(store, 30, 100_000, key="notes", extractor=True)
    for args in (("info", store), ("fit", "--store", store, "--runs", tmp_path / "runs")):
        result = cli(*args)
        out = no_traceback(result)
        assert "s attribute: notes[0] is a string of 100,000 bytes, over the 65,536-byte limit" in out, out[-3000:]
        assert len(out) < 6000, (args[0], len(out))


def test_repeated_class_names_are_found_in_linear_time():
    """validate_split's `classes.count(c)` for every name was quadratic in the number of names (K = 300 long names:
    info still running after 60 s); the repeats are now found in one pass (50,000 names: quadratic is 2.5e9 steps)."""
    from featstore.store.strings import repeated

    names = [f"c{i}" for i in range(50_000)] + ["c7", "c99", "c7"]
    t = time.monotonic()
    assert repeated(names) == ["c7", "c99"]
    assert time.monotonic() - t < 5


def test_the_similarity_index_names_rows_through_the_same_bound(two_splits):
    """The index's few neighbour names (``similar_files.read_names``) were read by row without the bound: a row
    pointing at a shared 256 KiB string is refused there too, before it is read."""
    from featstore.errors import StoreError
    from featstore.experiments.similar_files import read_names
    from featstore.store.reader import FeatureStore

    _shared_paths(two_splits, "test", 1000, 256 << 10)
    with pytest.raises(StoreError, match="over the 4,096-byte limit"):
        read_names(FeatureStore(two_splits), "s", "test", np.array([3, 7]))
    assert read_names(FeatureStore(two_splits), "s", "train", np.array([3, 3]))[0] == ["train/3", "train/3"]


def test_only_featstores_own_aside_folders_are_put_back_or_removed(store, tmp_path, monkeypatch):
    """Attack 18, finding 1: with --out missing, a user's own ``.shards.backup.old/shards`` was "put back" as an
    earlier export (and the rest of that folder deleted), and a link ``.shards2.x.old`` to a folder elsewhere had that
    folder moved onto --out. Only a real folder of this user, named with featstore's tag and holding nothing but
    shards, is taken; anything else is left as it was."""
    pytest.importorskip("pyarrow")
    from featstore import export
    from featstore.leftovers import host_tag

    monkeypatch.chdir(tmp_path)
    backup = tmp_path / ".shards.backup.old"
    (backup / "shards").mkdir(parents=True)
    (backup / "notes.txt").write_text("my notes")
    (backup / "shards" / "data.txt").write_text("precious")
    elsewhere = tmp_path / "elsewhere" / "shards"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep.txt").write_text("not featstore's")
    gone = _gone_pid()
    (tmp_path / f".shards2.fs{gone}-{host_tag()}-x.old").symlink_to(elsewhere.parent)
    mixed = tmp_path / f".shards3.fs{gone}-{host_tag()}-y.old"  # tagged, but holding a file of the user's
    (mixed / "shards").mkdir(parents=True)
    (mixed / "mine.txt").write_text("mine")
    for out in ("shards", "shards2", "shards3"):
        export(store, "test", tmp_path / out, rows_per_file=20)
        assert all(p.name.startswith("part-") for p in (tmp_path / out).iterdir()), (
            out
        )  # a new export, nothing put back
    assert (backup / "notes.txt").read_text() == "my notes" and (backup / "shards" / "data.txt").exists()
    assert (elsewhere / "keep.txt").exists() and (mixed / "mine.txt").exists()
