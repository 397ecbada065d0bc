"""Issue #19 (attack 23 #15/#16): the final rename of an output (``write_atomic``) or a compacted store (``compact``)
was by name, in the store's folder: in a folder others can write without a sticky bit (``root:team 2775``), a link
swapped in at the temporary's name between featstore's check and the rename replaced the output or the store. Both
now write in a private folder (0700) beside the target and rename through descriptors (``featstore.renames``).

Each test says the one-line sabotage that was seen to fail it."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import leftovers, renames
from featstore.errors import OutputError, StoreError
from featstore.leftovers import STALE_AGE_S, host_tag
from featstore.outputs import write_atomic
from featstore.store import compact as compact_mod
from featstore.store import space
from featstore.store.compact import compact
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack13_leftovers import _dead_pid


def _store(path: Path) -> Path:
    write_arrays(path, "x", "train", np.arange(8, dtype=np.float32).reshape(4, 2), [0, 1, 0, 1], ["a", "b"])
    return path


def _private(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.featstore-tmp"))


def _swap_private_folder(folder: Path, temp: str, victim: Path) -> None:
    """What a colleague does in a shared folder: rename the writer's private folder away, put a folder of theirs at
    its name holding a link, named as the writer's temporary, to the victim."""
    (mine,) = _private(folder)
    os.rename(mine, folder / "moved-away")
    os.mkdir(mine)
    os.symlink(victim, mine / temp)


@pytest.fixture
def victim(tmp_path) -> Path:
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=...\n")
    return victim


# ------------------------------------------------------------------ 1. a swap at the private folder's name
def test_write_atomic_writes_and_renames_its_own_file_whatever_is_swapped_at_the_folders_name(tmp_path, victim):
    """The private folder renamed away and an attacker's folder with a link put at its name, while the output is
    written: the output is the file written, the link's target untouched. Sabotage: ``PrivateFolder.path`` returning
    the by-name path (``self.target.parent / self.name / name``) instead of ``/proc/self/fd/...`` fails it (the
    write goes through the link into the victim)."""
    out = tmp_path / "train.csv"

    def write(tmp):
        _swap_private_folder(tmp_path, ".train.csv.tmp", victim)
        tmp.write_text("path,label\n")

    write_atomic(out, write, "--out")
    assert not out.is_symlink() and out.read_text() == "path,label\n"
    assert victim.read_text() == "export PATH=...\n"


def test_compaction_renames_its_own_copy_whatever_is_swapped_at_the_folders_name(tmp_path, victim, monkeypatch):
    """The same right before the compaction's rename: the store is the copy h5py wrote, never the link. Sabotage:
    ``os.replace(self.target.parent / self.name / self.temp, self.target)`` (by name) in place of the rename through
    descriptors in ``PrivateFolder.put`` fails it (the store becomes the link)."""
    path = _store(tmp_path / "s.h5")
    real = compact_mod._own_permissions

    def swap_then_set(fd, before, *bits):
        _swap_private_folder(tmp_path, ".s.h5.compact.tmp", victim)
        real(fd, before, *bits)

    monkeypatch.setattr(compact_mod, "_own_permissions", swap_then_set)
    compact(path)
    assert not path.is_symlink() and victim.read_text() == "export PATH=...\n"
    with h5py.File(path, "r") as f:
        assert f["x/train/features"][:].tolist() == np.arange(8).reshape(4, 2).tolist()


def test_a_private_folder_others_may_write_is_refused(tmp_path, monkeypatch):
    """What is opened at the private folder's name must be a folder of this user that no one else can write (an
    attacker's folder swapped in before it was opened, here one made 0777). Sabotage: the ``st.st_mode & 0o077`` test
    in ``PrivateFolder.make`` removed fails it."""
    real = renames._make

    def made_open(parent, name):
        made = real(parent, name)
        os.chmod(made, 0o777, dir_fd=parent)
        return made

    monkeypatch.setattr(renames, "_make", made_open)
    out = tmp_path / "o.csv"
    with pytest.raises(OutputError, match=f"someone else can write {tmp_path}"):
        write_atomic(out, lambda tmp: tmp.write_text("x\n"), "--out")
    path = _store(tmp_path / "s.h5")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"someone else can write {tmp_path}.*store was not changed"):
        compact(path)
    assert path.read_bytes() == before and not out.exists()


@pytest.mark.parametrize(("mode", "ok"), [(0o777, False), (0o1777, True), (0o755, True)])
def test_without_proc_a_writer_goes_by_name_only_where_no_one_else_can_rename(tmp_path, monkeypatch, mode, ok):
    """Where there is no ``/proc/self/fd`` (macOS), a writer that opens by path goes through the private folder's
    name only when the target's folder is this user's alone or sticky; else one line. Sabotage: the refusal at the end
    of ``PrivateFolder.path`` replaced by the by-name path fails the 0777 case."""
    monkeypatch.setattr(renames, "proc_path", lambda fd: None)
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, mode)
    out = folder / "o.csv"
    if ok:
        write_atomic(out, lambda tmp: tmp.write_text("x\n"), "--out")
        assert out.read_text() == "x\n"
    else:
        with pytest.raises(OutputError, match="someone else can write"):
            write_atomic(out, lambda tmp: tmp.write_text("x\n"), "--out")
        assert not out.exists()
    assert not _private(folder)


def test_without_proc_a_folder_above_that_others_may_rename_is_refused_too(tmp_path, monkeypatch):
    """The user's own 0755 ``proj`` inside a team folder others may write (no sticky bit): a colleague can rename
    ``proj`` away and put hers at its name, redirecting a write by name onto the user's files (attack 26 #7). Without
    ``/proc/self/fd`` every folder up to ``/`` must be safe; ``proj`` alone was checked. Sabotage: ``by_name`` checking
    ``real`` only (not its parents) fails it."""
    from featstore.renames import OwnFolder

    monkeypatch.setattr(renames, "proc_path", lambda fd: None)
    team = tmp_path / "team"
    (team / "proj").mkdir(parents=True)
    os.chmod(team, 0o777)
    with pytest.raises(OutputError, match="someone else can write"):
        write_atomic(team / "proj" / "o.csv", lambda tmp: tmp.write_text("x\n"), "--out")
    with pytest.raises(OutputError, match="no /proc/self/fd to write there safely"):
        OwnFolder(team / "proj", ".shards.", ".tmp")
    assert os.listdir(team / "proj") == []
    os.chmod(team, 0o755)  # no one else may rename in it now: by name, as before
    write_atomic(team / "proj" / "o.csv", lambda tmp: tmp.write_text("x\n"), "--out")
    assert (team / "proj" / "o.csv").read_text() == "x\n"


# ------------------------------------------------------------------ 2. a folder that cannot be written, a full disk
def _cannot_make(parent, name):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def _no_copy(*a, **k):
    pytest.fail("copy work started")


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_compaction_in_a_folder_you_cannot_write_is_one_line_before_any_copy(tmp_path, monkeypatch, how):
    """Attack 23 #12. ``chmod``: the real thing (skipped as root, where CI runs); ``simulated``: making the private
    folder fails with EACCES. Sabotage: the ``except OSError`` around ``private.make()`` in ``compact`` removed fails
    it (a PermissionError)."""
    path = _store(tmp_path / "s.h5")
    before = path.read_bytes()
    monkeypatch.setattr(compact_mod, "_copy_split", _no_copy)
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes any folder")
        os.chmod(tmp_path, 0o555)
    else:
        monkeypatch.setattr(renames, "_make", _cannot_make)
    try:
        with pytest.raises(StoreError) as err:
            compact(path)
    finally:
        os.chmod(tmp_path, 0o755)
    assert str(err.value) == (
        f"resuming rewrites store {path} beside it, in {tmp_path}, which you cannot write: make the folder "
        f"writable, or copy the store somewhere you can write and resume there"
    )
    assert path.read_bytes() == before and not _private(tmp_path)


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_write_atomic_in_a_folder_you_cannot_write_is_one_line(tmp_path, monkeypatch, how):
    """Sabotage: ``raise _output_error(...)`` in ``write_atomic`` replaced by ``raise`` fails it."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes any folder")
        os.chmod(folder, 0o555)
    else:
        monkeypatch.setattr(renames, "_make", _cannot_make)
    try:
        with pytest.raises(OutputError) as err:
            write_atomic(folder / "o.csv", lambda tmp: pytest.fail("written"), "--out")
    finally:
        os.chmod(folder, 0o755)
    assert str(err.value) == (
        f"cannot write --out {folder / 'o.csv'}: folder {folder} is not writable by you; write to another folder. "
        f"Nothing was written there."
    )
    assert list(folder.iterdir()) == []


def test_a_disk_filling_while_compacting_leaves_the_store_unchanged(tmp_path, monkeypatch):
    """HDF5's ENOSPC out of the copy: one line saying the store is unchanged. Sabotage: the ``_disk_full`` branch in
    ``compact`` removed fails it (h5py's OSError)."""
    path = _store(tmp_path / "s.h5")
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28, No space left on device)")

    monkeypatch.setattr(compact_mod, "_copy_split", full)
    with pytest.raises(StoreError, match=r"the disk filled while store .* the store is unchanged\. Free some space"):
        compact(path)
    assert path.read_bytes() == before and not _private(tmp_path)


def test_a_real_full_disk_while_compacting_leaves_the_store_unchanged(tmp_path, monkeypatch):
    """The same on a 3 MiB tmpfs (root only, as CI runs; skipped elsewhere) holding a 2.3 MB store: HDF5's own ENOSPC,
    the space check let through. Sabotage: as above."""
    import shutil
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        src = tmp_path / "src.h5"
        rows = np.random.default_rng(0).normal(size=(1800, 256)).astype(np.float32)
        write_arrays(src, "x", "train", rows, np.arange(1800) % 2, ["a", "b"])
        path = Path(shutil.copy(src, mnt / "s.h5"))
        before = path.read_bytes()
        monkeypatch.setattr(compact_mod, "ensure_space", lambda *a, **k: None)
        with pytest.raises(StoreError, match=r"the disk filled while store .* the store is unchanged"):
            compact(path)
        assert path.read_bytes() == before and sorted(p.name for p in mnt.iterdir()) == ["s.h5"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ------------------------------------------------------------------ 3. nothing left behind
@pytest.mark.parametrize("failure", [None, ValueError, KeyboardInterrupt])
def test_no_private_folder_remains_after_a_write(tmp_path, failure):
    """Sabotage: the ``os.rmdir`` in ``PrivateFolder._close`` removed fails it."""

    def write(tmp):
        tmp.write_text("x\n")
        if failure is not None:
            raise failure("stop")

    if failure is None:
        write_atomic(tmp_path / "o.csv", write, "--out")
    else:
        with pytest.raises(failure):
            write_atomic(tmp_path / "o.csv", write, "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["o.csv"] if failure is None else [])


@pytest.mark.parametrize("fail", [False, True])
def test_no_private_folder_remains_after_a_compaction(tmp_path, monkeypatch, fail):
    path = _store(tmp_path / "s.h5")
    if fail:
        monkeypatch.setattr(compact_mod, "_copy_split", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            compact(path)
    else:
        compact(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


# ------------------------------------------------------------------ 4. a killed run's private folder
def _leftover(folder: Path, name: str, temp: str, pid: int, old: bool = True, extra: str | None = None) -> Path:
    """A private folder as a killed featstore write leaves it, its temporary half written."""
    made = folder / f".{name}.fs{pid}-{host_tag()}-abc123.featstore-tmp"
    made.mkdir(mode=0o700)
    (made / temp).write_bytes(b"\0" * 3000)
    if extra:
        (made / extra).write_text("not featstore's")
    if old:
        for p in [*made.iterdir(), made]:
            os.utime(p, (time.time() - 2 * STALE_AGE_S,) * 2)
    return made


def test_a_killed_writes_private_folder_is_swept(tmp_path, caplog, monkeypatch):
    """Only a folder of featstore's pattern, of a gone process, old, holding only its temporary is removed.
    Sabotage: the ``remove_private`` call in ``featstore.leftovers.sweep`` removed fails it."""
    monkeypatch.setattr(leftovers, "_swept", set())  # once per folder and process: tmp_path's inode may be reused
    dead = _dead_pid()
    gone = _leftover(tmp_path, "a.csv", ".a.csv.tmp", dead)
    fresh = _leftover(tmp_path, "b.csv", ".b.csv.tmp", dead, old=False)
    alive = _leftover(tmp_path, "c.csv", ".c.csv.tmp", os.getpid())
    foreign = _leftover(tmp_path, "d.csv", ".d.csv.tmp", dead, extra="notes.txt")
    with caplog.at_level(logging.WARNING, logger="featstore.outputs"):
        write_atomic(tmp_path / "o.csv", lambda tmp: tmp.write_text("x\n"), "--out")
    assert not gone.exists() and fresh.exists() and alive.exists() and foreign.exists()
    assert "removed 1 temporary file(s)" in caplog.text and gone.name in caplog.text


def test_a_killed_compactions_private_folder_is_removed_before_the_space_check(tmp_path, monkeypatch):
    """Under the store's writer lock a killed compaction's folder of the same store goes at any age, before the room
    for the copy is counted. Sabotage: the ``remove_compactions(path)`` call in ``compact`` removed fails it (refused
    for lack of space)."""
    path = _store(tmp_path / "s.h5")
    leftover = _leftover(tmp_path, "s.h5", ".s.h5.compact.tmp", _dead_pid(), old=False)
    os.truncate(leftover / ".s.h5.compact.tmp", path.stat().st_size)
    cap = 2 * path.stat().st_size + space.SPACE_MARGIN + 4096

    def usage(_folder):
        used = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
        return type("U", (), {"total": cap, "used": used, "free": cap - used})()

    monkeypatch.setattr(space.shutil, "disk_usage", usage)
    compact(path)
    assert not leftover.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_the_space_message_names_a_private_folder(tmp_path, monkeypatch):
    """Sabotage: the ``PRIVATE.fullmatch`` branch of ``_leftovers_note`` removed fails it."""
    made = _leftover(tmp_path, "o.h5", ".o.h5.compact.tmp", os.getpid(), old=False)
    monkeypatch.setattr(space.shutil, "disk_usage", lambda _f: type("U", (), {"total": 10, "used": 10, "free": 0})())
    with pytest.raises(StoreError, match=rf"not enough disk space.*{made.name} \(3 kB"):
        space.ensure_space(tmp_path / "s.h5", 100)
