"""Attack 28 (branch attack28, reproducers with two users there): a colleague's link swapped in at a store's name between
featstore's link check and HDF5's opening (#1), a resume's compaction that read and replaced whatever the name led to
(#3), and reading commands that followed any link (#4). Each race is placed: the swap is done from inside a wrapped
function, at the point named in the test."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import featstore.store.compact as compact_mod
from featstore.errors import StoreError
from featstore.store.compact import compact
from featstore.store.locking import StoreFile, open_h5
from featstore.store.reader import FeatureStore
from featstore.store.writer import synthetic_attrs, write_arrays

X = np.zeros((6, 4), np.float32)
Y = np.array([0, 0, 0, 1, 1, 1], np.int32)
OTHER = 54321  # a uid that is neither this process's nor the folder's


def _store(path: Path, classes=("alpha", "beta"), split="train") -> Path:
    write_arrays(path, "s", split, X, Y, list(classes), attrs=synthetic_attrs((4,)))
    return path


def _scene(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The user's private store (home/thesis.h5), a team store (team/s.h5) and, ready, the colleague's link to the
    private store (team/.m, owned by OTHER); skipped where a link cannot be given away (not root)."""
    (tmp_path / "home").mkdir()
    private = _store(tmp_path / "home" / "thesis.h5")
    (tmp_path / "team").mkdir()
    team = _store(tmp_path / "team" / "s.h5", ("cat", "dog"))
    link = tmp_path / "team" / ".m"
    link.symlink_to(private)
    os.lchown(link, OTHER, -1)
    if os.lstat(link).st_uid != OTHER:
        pytest.skip("cannot give a link to another user here (not root)")
    return private, team, link


def _swap(team: Path, link: Path) -> None:
    """The colleague's ``mv s.h5 s.h5.mine && mv .m s.h5``: her link to the private store at the team store's name."""
    os.replace(team, team.with_name("s.h5.mine"))
    os.replace(link, team)


def _state(path: Path) -> tuple[bytes, int, int]:
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, st.st_ino


def _hook_h5py(monkeypatch, when, then) -> list:
    """``h5py.File`` that runs ``then()`` once, before the opening ``when(name, mode)`` picks."""
    real, fired = h5py.File, []

    def hooked(name, mode="r", *a, **k):
        if not fired and when(os.fspath(name), mode):
            fired.append(name)
            then()
        return real(name, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", hooked)
    return fired


def test_a_link_swapped_in_after_the_check_is_not_opened_for_writing(tmp_path, monkeypatch):
    """#1: the swap lands between the check of the name and HDF5's opening: HDF5 opens the file checked (through its
    descriptor), so the team store gets the write and the private store is untouched, not even HDF5's "open for
    writing" flag (written at the opening: its mtime). Sabotage: ``_existing`` giving HDF5 ``path`` in place of
    ``alias or path`` fails it (the private store is opened read-write, then refused)."""
    private, team, link = _scene(tmp_path)
    before = _state(private)
    fired = _hook_h5py(monkeypatch, lambda name, mode: mode != "r", lambda: _swap(team, link))
    with open_h5(team, "a") as f:
        f.attrs["note"] = "team"
    assert fired
    assert _state(private) == before
    with h5py.File(tmp_path / "team" / "s.h5.mine", "r") as f:
        assert f.attrs["note"] == "team"


def test_a_link_swapped_in_before_the_opening_is_refused_before_any_write(tmp_path, monkeypatch):
    """#1: the swap lands before featstore's own read-only opening: that descriptor is the private store's, and the
    walk after it meets the colleague's link: refused with the one line, nothing written. Sabotage: ``check_opened``
    in ``_existing`` removed fails it (the private split replaced by the team's rows)."""
    private, team, link = _scene(tmp_path)
    before = _state(private)
    real, fired = os.open, []

    def hooked(path, flags, *a, **k):
        if not fired and os.fspath(path) == str(team):
            fired.append(1)
            _swap(team, link)
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", hooked)
    with pytest.raises(StoreError, match=r"leads to a symbolic link made by uid 54321, not by you"):
        write_arrays(team, "s", "train", X, Y, ["cat", "dog"], attrs=synthetic_attrs((4,)))
    monkeypatch.undo()
    assert fired and _state(private) == before


def test_a_new_store_is_created_only_where_nothing_is(tmp_path, monkeypatch):
    """#1: a store that does not exist yet is made with O_EXCL (h5py "w-"), never "w" or "a" by name: a link put at the
    name since featstore looked is refused, the file it names unchanged; "w" is refused outright. Sabotage:
    ``open_checked`` creating with "a" fails it (the private store opened read-write through the link)."""
    private, team, link = _scene(tmp_path)
    new = tmp_path / "team" / "new.h5"
    before = _state(private)
    fired = _hook_h5py(monkeypatch, lambda name, mode: mode == "w-", lambda: os.replace(link, new))
    with pytest.raises(StoreError, match="symbolic link made by uid 54321"), open_h5(new, "a"):
        pass
    assert fired and new.is_symlink() and _state(private) == before
    with pytest.raises(ValueError, match="not 'w'"), open_h5(team, "w"):
        pass


def test_reading_commands_follow_only_the_users_own_links(tmp_path):
    """#4: ``export``/``fit``/``info`` opened a colleague's link at the store's name and published the private store
    beside it. Refused, naming the link, its owner and its target and how to use that file on purpose; the user's own
    link is read as before. Sabotage: the ``mode == "r"`` branch of ``open_checked`` returning the file unchecked fails
    it."""
    private, team, link = _scene(tmp_path)
    with pytest.raises(StoreError) as err:
        FeatureStore(link).splits()
    text = str(err.value)
    assert f"store {link} leads to a symbolic link made by uid 54321, not by you ({link} -> {private})" in text, text
    assert f"give the real path with --store {private}" in text and f"rm {link}" in text
    assert FeatureStore(private).splits() == ["train"]  # the target itself, on purpose
    os.lchown(link, os.geteuid(), -1)  # the user's own link
    assert FeatureStore(link).load("train")[1].tolist() == Y.tolist()


def test_a_link_swapped_in_while_a_reader_opens_is_refused(tmp_path, monkeypatch):
    """#4: the swap lands between the reader's look at the name and its read-only opening: the walk after the
    opening meets the link and refuses; nothing of the private store is read. Sabotage: ``_existing`` not calling
    ``check_opened`` fails it (the private store's class names come back)."""
    private, team, link = _scene(tmp_path)
    real, fired = os.open, []

    def hooked(path, flags, *a, **k):
        if not fired and os.fspath(path) == str(team) and not flags & (os.O_WRONLY | os.O_RDWR):
            fired.append(1)
            _swap(team, link)
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", hooked)
    with pytest.raises(StoreError, match="symbolic link made by uid 54321"):
        FeatureStore(team).splits()
    assert fired


def test_a_fifo_swapped_in_after_the_readers_check_is_not_waited_on(tmp_path):
    """Attack 30 #5: a FIFO renamed onto the store's name after its check and before HDF5's read-only opening made
    that opening (by name) wait for a writer forever. The reader gives HDF5 its checked non-blocking descriptor
    (``/proc/self/fd/N``), and the FIFO is met only through a non-blocking descriptor: one line. Sabotage: ``_existing``
    giving HDF5 ``path`` in place of ``alias or path`` fails it (the child waits on the FIFO until the timeout)."""
    import subprocess
    import sys

    path = _store(tmp_path / "s.h5", ("cat", "dog"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = (
        "import os, h5py\n"
        "from featstore.store.reader import FeatureStore\n"
        "real = h5py.File\n"
        "def swapped_first(name, mode='r', *a, **k):\n"
        f"    if os.path.exists({str(fifo)!r}): os.replace({str(fifo)!r}, {str(path)!r})\n"
        "    return real(name, mode, *a, **k)\n"
        "h5py.File = swapped_first\n"
        f"try: FeatureStore({str(path)!r}).splits()\n"
        "except Exception as e: print(type(e).__name__ + ':', e)\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the reader waited on a FIFO renamed onto the store's name")
    said = out.stdout.strip()
    assert out.returncode == 0 and said.startswith("StoreError: store ") and "\n" not in said, out.stdout + out.stderr
    assert "is not a regular file (a folder, FIFO or device)" in said, said  # (the retry's opening: the FIFO, unread)
    assert Path(path).is_fifo()  # the swap did happen, after the check


def _killed_store(path: Path) -> Path:
    """A store whose split is interrupted (one committed batch, not complete): what every resume compacts."""
    _store(path, ("cat", "dog"))
    with h5py.File(path, "a") as f:
        f["s/train"].attrs["complete"] = False
    return path


def test_compaction_reads_and_replaces_only_the_file_the_lock_checked(tmp_path):
    """#3 A: a colleague's link at the name once the lock is held: the compaction's opening refuses it; B: her own
    file at the name (no link): not the file the lock checked, refused. Neither the private store nor her file is
    rewritten. Sabotage: the ``store.checked`` comparison in ``_compact`` removed fails B (her file rewritten)."""
    private, team, link = _scene(tmp_path)
    _killed_store(team)
    before = _state(private)
    store = StoreFile(team)
    with store.lock():
        _swap(team, link)
        with pytest.raises(StoreError, match="symbolic link made by uid 54321"):
            compact(store)
    assert _state(private) == before and team.is_symlink()
    os.unlink(team)
    _killed_store(team)
    hers = _killed_store(tmp_path / "hers.h5")
    with store.lock():
        os.replace(team, team.with_name("s.h5.old"))
        os.replace(hers, team)  # another file at the name since the lock checked it (hers, in a shared folder)
        theirs = _state(team)
        with pytest.raises(StoreError, match="was replaced by another file during this run"):
            compact(store)
    assert _state(team) == theirs


def test_compaction_renames_its_copy_only_onto_the_file_it_read(tmp_path, monkeypatch):
    """#3 B: the colleague's link put at the name once the compaction has opened the team store: the copy (of the team
    store, the file read) is not renamed onto her link, and nothing of the private store is read or moved. Sabotage:
    the ``same_file(source, ...)`` test before ``private.put`` removed fails it (her link replaced by the copy)."""
    private, team, link = _scene(tmp_path)
    _killed_store(team)
    before = _state(private)
    real, fired = compact_mod.ensure_space, []

    def hooked(*a, **k):
        fired.append(1)
        _swap(team, link)
        return real(*a, **k)

    monkeypatch.setattr(compact_mod, "ensure_space", hooked)
    store = StoreFile(team)
    with store.lock(), pytest.raises(StoreError, match="was replaced by another file during this run"):
        compact(store)
    assert fired and team.is_symlink() and _state(private) == before
    assert not [p for p in team.parent.iterdir() if p.name not in ("s.h5", "s.h5.mine")]


def test_a_store_open_for_writing_is_named_by_its_own_name_in_messages(tmp_path, monkeypatch):
    """#1: HDF5 is given ``/proc/self/fd/<fd>`` for a store open for writing, and messages quote ``f.filename``: they
    still name the store as the user gave it. Sabotage: ``named`` doing nothing fails it."""
    path = _store(tmp_path / "s.h5")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as err, open_h5("s.h5", "a") as f:
        raise StoreError(f"{f.filename}:/s/train is damaged; run `featstore check {f.filename}`")
    assert str(err.value) == "s.h5:/s/train is damaged; run `featstore check s.h5`"
    assert path.exists()


def test_a_link_renamed_over_while_the_store_name_is_resolved_is_looked_up_again(tmp_path, monkeypatch):
    """#1 B (the swap loop): a link at the store's name renamed over between Python's ``lstat`` of it and its
    ``readlink`` (``Path.resolve``) was an ``OSError: [Errno 22] Invalid argument`` traceback. Looked up again now.
    Sabotage: the ``except OSError`` around ``resolved`` in ``StoreFile.__init__`` removed fails it."""
    _store(tmp_path / "s.h5")
    other = _store(tmp_path / "o.h5", ("cat", "dog"))
    link = tmp_path / "l.h5"
    link.symlink_to(tmp_path / "s.h5")
    real, fired = os.readlink, []

    def hooked(path, *a, **k):
        if not fired and os.fspath(path) == str(link):
            fired.append(1)
            os.replace(other, link)  # a file renamed over the link: its readlink is EINVAL
        return real(path, *a, **k)

    monkeypatch.setattr(os, "readlink", hooked)
    StoreFile(link)
    monkeypatch.undo()
    assert fired and FeatureStore(link).splits() == ["train"]
