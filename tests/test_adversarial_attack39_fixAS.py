"""Attack 39 #4, #6.

#4: ``export --rows-per-file N --out drop/shards`` into a folder the user may write in but not list (a drop folder,
``1733``) was refused as "cannot be listed by you ... featstore reads the folders it writes in (an earlier output's
files, its own leftovers)" though there was no earlier output: the shards' folder's parent was opened ``O_RDONLY`` to
check it. It is reached with ``O_PATH`` now; only replacing an earlier export there (moved aside, found again by a
listing after a kill) is refused, with that reason.

#6: ``report --out rep`` where ``rep`` is a colleague's copy of the user's report folder (his, ``0777``, its manifest
copied) was taken as the user's: the manifest rewritten, then a link inside met half-way (or, without one, the whole
report written into his folders). ``--out`` and each level below it are refused in one line, before anything is
written, unless they are the user's and no one else may write them beyond what a plain ``mkdir`` there gives.

Root reads every folder: an unlistable folder is simulated (as in the attack 36 tests); another user's folder is
``chown``'d where the suite runs as root.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from featstore.errors import ConfigError
from featstore.store.shards import refuse_shard_folder, write_shards
from tests.test_adversarial_attack36_fixAO import unlistable

OTHER = 54321  # a user and group that are not this one


def _unlistable(monkeypatch, folder: Path) -> None:
    """:func:`unlistable`, and its ``..`` opened for reading from a folder made in it refused as the kernel does."""
    unlistable(monkeypatch, folder)
    if os.geteuid() != 0:
        return
    inner, where = os.open, os.path.abspath(folder)

    def opening(path, flags, *a, dir_fd=None, **k):
        if path == ".." and dir_fd is not None and not flags & getattr(os, "O_PATH", 0):
            if os.path.realpath(f"/proc/self/fd/{dir_fd}/..") == where:
                raise PermissionError(errno.EACCES, "Permission denied", path)
        return inner(path, flags, *a, dir_fd=dir_fd, **k)

    monkeypatch.setattr(os, "open", opening)


def test_shards_go_into_a_folder_that_cannot_be_listed(tmp_path, monkeypatch):
    """#4. Sabotage: ``_held`` in shards.py opening ``..`` with ``DIR`` (O_RDONLY) again fails it."""
    drop = tmp_path / "drop"
    drop.mkdir()
    _unlistable(monkeypatch, drop)
    out = drop / "shards"
    refuse_shard_folder(out)
    write_shards(out, lambda folder: (folder / "part-00000.parquet").write_bytes(b"shard"))
    monkeypatch.undo()
    drop.chmod(0o700)
    assert (out / "part-00000.parquet").read_bytes() == b"shard"
    assert sorted(p.name for p in drop.iterdir()) == ["shards"]  # no hidden folder left


def test_replacing_an_earlier_export_in_a_folder_that_cannot_be_listed_says_why(tmp_path, monkeypatch):
    """#4: an earlier export there is moved aside while the new one goes in, and only a listing finds it after a kill:
    refused before any work, with that reason (not "an earlier output's files, its own leftovers")."""
    drop = tmp_path / "drop"
    (drop / "shards").mkdir(parents=True)
    _unlistable(monkeypatch, drop)
    with pytest.raises(ConfigError) as err:
        refuse_shard_folder(drop / "shards")
    line = str(err.value)
    assert f"--out {drop / 'shards'} exists, in a folder you cannot list (mode 0300" in line
    assert "killed in between" in line and f"--out {drop / 'shards.2'}" in line and "leftovers" not in line
    monkeypatch.undo()
    drop.chmod(0o700)
