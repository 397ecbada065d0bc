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
    real = shards.shutil.rmtree

    def killed(path, *a, **k):  # the kill: the aside copy is never removed
        if not str(path).endswith(".old"):
            real(path, *a, **k)

    monkeypatch.setattr(shards.shutil, "rmtree", killed)
    export(store, "train", out, rows_per_file=6)
    monkeypatch.setattr(shards.shutil, "rmtree", real)
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
