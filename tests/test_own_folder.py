"""Run folders and export shards in a folder others can write (attack 25 #2, #3): a new folder is 0700 and written
through its descriptor until it is whole, then given the umask's mode and renamed only while its name is still it.

The attacks are simulated in-process at the moment the writer runs (a colleague's rename and links); the reproducers
with two real users are on branch attack25."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import OutputError
from featstore.renames import OwnFolder


def _swap_for_links(folder: OwnFolder, victim: Path, names: list[str]) -> Path:
    """What a colleague who may write the parent can do: rename the folder away and put a folder of links to the
    victim's file at its name. Returns where the real folder went."""
    away = folder.name.with_name(folder.name.name + ".away")
    os.rename(folder.name, away)
    folder.name.mkdir()
    for n in names:
        (folder.name / n).symlink_to(victim)
    return away


def test_a_folder_written_through_its_descriptor_is_private_until_published(tmp_path):
    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    with OwnFolder(tmp_path, ".run.", ".tmp") as folder:
        assert stat.S_IMODE(os.stat(folder.name).st_mode) == 0o700  # no one else can plant an entry in it
        away = _swap_for_links(folder, victim, ["run.json"])
        (folder.at / "run.json").write_text("the record\n")  # through the descriptor: into the real folder
        assert victim.read_text() == "mine\n" and (away / "run.json").read_text() == "the record\n"
        with pytest.raises(OutputError, match=r"was replaced by another \(someone else can write .*\); nothing was"):
            folder.publish(tmp_path / "run")
    assert not (tmp_path / "run").exists() and victim.read_text() == "mine\n"


def test_published_folder_gets_the_umask_mode_and_nothing_is_left(tmp_path):
    old = os.umask(0o002)
    try:
        with OwnFolder(tmp_path, ".run.", ".tmp") as folder:
            (folder.at / "a").write_text("x")
            folder.publish(tmp_path / "run")
        with OwnFolder(tmp_path, ".other.", ".tmp") as folder:
            (folder.at / "b").write_text("x")  # not published: removed on leaving
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o775
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_fit_writes_its_run_through_the_folders_descriptor(store, tmp_path, monkeypatch):
    """A colleague's folder of links put at the run's temporary name while the fit runs: the user's file is untouched,
    the fit refused in one line, nothing recorded (it wrote run.json through the link: attack 25 #3)."""
    from featstore import fit
    from featstore.runs import write as runwrite

    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    drafts, real_make, real_write = [], runwrite._make_temp, runwrite._write_contents
    monkeypatch.setattr(runwrite, "_make_temp", lambda *a, **k: drafts.append(real_make(*a, **k)) or drafts[-1])

    def swapped(at, *a):
        _swap_for_links(drafts[-1], victim, [runwrite.RECORD, runwrite.PREDICTIONS, runwrite.TMP_MARKER])
        return real_write(at, *a)

    monkeypatch.setattr(runwrite, "_write_contents", swapped)
    with pytest.raises(OutputError, match="someone else can write"):
        fit(store, "logreg", runs=tmp_path / "runs")
    assert victim.read_text() == "mine\n"
    assert [p.name for p in (tmp_path / "runs").iterdir() if not p.name.endswith((".away", ".lock"))] == [
        drafts[-1].name.name  # only the colleague's folder of links, at the temporary's name
    ]


def test_export_shards_are_written_through_the_folders_descriptor(tmp_path, monkeypatch):
    """The shard folder swapped for a folder of links at its name while the shards are written: the user's file is
    untouched and the export refused in one line (it wrote shards through the links, rc 0: attack 25 #2)."""
    from featstore.store import shards

    victim = tmp_path / "bashrc"
    victim.write_text("mine\n")
    made = []
    real = shards.OwnFolder

    class Spied(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(shards, "OwnFolder", Spied)

    def write(folder: Path) -> None:
        _swap_for_links(made[-1], victim, [f"part-{i:05d}.parquet" for i in range(3)])
        for i in range(3):
            (folder / f"part-{i:05d}.parquet").write_bytes(np.arange(4).tobytes())

    with pytest.raises(OutputError, match="someone else can write"):
        shards.write_shards(tmp_path / "shards", write)
    assert victim.read_text() == "mine\n" and not (tmp_path / "shards").exists()
