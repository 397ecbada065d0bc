"""Attack 28 #7 and #8: a run folder's marker read through one descriptor; a folder featstore makes for one write is
trusted only when it is the very folder it made (nothing deleted in one swapped onto its name)."""

from __future__ import annotations

import os
import stat
import threading

from featstore.runs import swap
from featstore.runs.versions import TMP_MARKER


def test_a_marker_swapped_for_a_fifo_after_its_check_is_not_waited_on(tmp_path, monkeypatch):
    """#7: read_marker checked the marker by name (lstat), then opened the name again with a blocking open(): a FIFO a
    colleague renamed there in between blocked `featstore runs` for ever. The race placed: the marker is a FIFO, and
    any check by name is told it is a regular file (what it saw before the swap). Sabotage: the old lstat-then-open()
    fails it (the read blocks: the thread is still waiting after 5 s)."""
    folder = tmp_path / ".logreg-000000.x.old.tmp"
    folder.mkdir()
    os.mkfifo(folder / TMP_MARKER)
    regular = os.lstat(__file__)
    real = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: regular if str(p).endswith(TMP_MARKER) else real(p, *a, **k))
    got: list = []
    reader = threading.Thread(target=lambda: got.append(swap.read_marker(folder)), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock it (a writer opening the FIFO) before failing
        os.close(os.open(folder / TMP_MARKER, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert got == [None] and stat.S_ISFIFO(real(folder / TMP_MARKER).st_mode)


def _own_private_folder(at):
    """A 0700 folder of this user's holding work (what a colleague renames onto featstore's new folder's name)."""
    (at / "ch1").mkdir(parents=True)
    (at / "thesis.tex").write_text("years of work")
    (at / "ch1" / "results.txt").write_text("more")
    os.chmod(at, 0o700)
    return at


def test_a_folder_of_the_users_renamed_onto_a_private_folders_name_loses_nothing(tmp_path, monkeypatch):
    """#8: between the private folder's mkdir and its open, a colleague renamed the user's own 0700 folder onto its name
    (rename onto an empty folder is atomic): it passed the owner and mode checks, the output was written there and
    every file in it deleted on the way out. Now a folder not empty is refused, and the clean-up removes only what the
    write made. Sabotage: the ``os.listdir`` test in PrivateFolder.make removed fails it (thesis.tex is deleted)."""
    import pytest

    from featstore import renames
    from featstore.errors import OutputError
    from featstore.outputs import write_atomic

    notes = _own_private_folder(tmp_path / "notes")
    real = renames._make

    def swapped(parent, name):
        made = real(parent, name)
        os.rename(notes, tmp_path / made)  # the colleague's `mv -T notes <name>`, just after featstore's mkdir
        return made

    monkeypatch.setattr(renames, "_make", swapped)
    with pytest.raises(OutputError):
        write_atomic(tmp_path / "train.csv", lambda tmp: tmp.write_text("a,b\n"), "--out")
    moved = [p for p in tmp_path.iterdir() if p.name.startswith(".train.csv")]
    assert len(moved) == 1 and (moved[0] / "thesis.tex").read_text() == "years of work"
    assert (moved[0] / "ch1" / "results.txt").exists() and not (tmp_path / "train.csv").exists()


def test_a_folder_of_the_users_renamed_onto_an_own_folders_name_loses_nothing(tmp_path, monkeypatch):
    """#8: the same for a run folder or shards (OwnFolder): the swapped-in folder was refused as "replaced by another",
    then emptied by the clean-up that followed (fit deleted the user's private run). Sabotage: ``self.close()`` before
    the refusal in OwnFolder.__init__ removed fails it (the folder is emptied)."""
    import pytest

    from featstore import renames
    from featstore.errors import OutputError

    run = _own_private_folder(tmp_path / "logreg-42b9f6")
    real = renames.tempfile.mkdtemp

    def swapped(**kw):
        made = real(**kw)
        os.rename(run, made)
        return made

    monkeypatch.setattr(renames.tempfile, "mkdtemp", swapped)
    with pytest.raises(OutputError, match="was left as it is .a folder of yours. someone moved it there"):
        renames.OwnFolder(tmp_path, ".logreg.", ".tmp")
    moved = [p for p in tmp_path.iterdir() if p.name.startswith(".logreg.")]
    assert len(moved) == 1 and (moved[0] / "thesis.tex").read_text() == "years of work"
