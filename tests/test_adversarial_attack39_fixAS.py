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
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from featstore.errors import ConfigError, OutputError
from featstore.report.site.build import MANIFEST, _prepare
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


def _report_folder(root: Path, runs: bool = False) -> Path:
    """A report folder as ``report`` leaves it: manifest, pages, ``maps/`` (and a run's gallery folder)."""
    out = root / "rep"
    site, _ = _prepare(out)
    with site:
        site.write_text("maps/m.html", "<p>map</p>", "report page")
        if runs:
            site.write_text("galleries/r1/g.html", "<p>gallery</p>", "report page")
        site.write_text(MANIFEST, json.dumps({"files": ["maps/m.html"], "complete": True}), "report manifest")
    return out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="another user's folder: chown needs root")


@needs_root
def test_a_colleagues_copy_of_the_report_folder_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """#6: his folder (0777, the manifest copied byte for byte, a link at thumbs): one line naming it and the fix; the
    manifest not rewritten. Sabotage: ``_trusted`` returning at once fails it."""
    out = _report_folder(tmp_path)
    marker = (out / MANIFEST).read_bytes()
    (out / "thumbs").symlink_to(tmp_path)
    for p in (out, out / "maps", out / MANIFEST):
        os.chown(p, OTHER, OTHER, follow_symlinks=False)
    out.chmod(0o777)
    (out / "maps").chmod(0o777)
    with pytest.raises(OutputError) as err:
        _prepare(out)
    assert str(err.value).startswith(f"--out {out} is uid {OTHER}'s, not yours (mode 0777)")
    assert f"Give another --out, or ask uid {OTHER} to remove it" in str(err.value) and "nothing was written" in str(
        err.value
    )
    assert (out / MANIFEST).read_bytes() == marker and os.stat(out / MANIFEST).st_uid == OTHER


@pytest.mark.parametrize("level", ["maps", "galleries/r1"])
def test_a_level_others_may_write_is_refused_before_the_manifest_is_rewritten(tmp_path, level):
    """#6: the user's own report, a level below it made writable by all (or another user's): refused in one line
    before the manifest is rewritten (it was met only when written, half-way). Sabotage: ``site.check_levels`` dropped
    from ``_prepare`` fails it."""
    out = _report_folder(tmp_path, runs=True)
    marker = (out / MANIFEST).read_bytes()
    (out / level).chmod(0o777)
    with pytest.raises(OutputError) as err:
        _prepare(out)
    assert f"--out {out}: its folder {out / level} is writable by others (mode 0777)" in str(err.value)
    assert f"Make it yours alone (chmod go-w {out / level}; setfacl -b" in str(err.value)  # (attack 43 #15)
    assert (out / MANIFEST).read_bytes() == marker
    (out / level).chmod(0o755)
    (out / "thumbs").symlink_to(tmp_path)
    with pytest.raises(OutputError, match="thumbs is a link or a file, not a folder"):
        _prepare(out)


@needs_root
def test_the_users_report_in_a_team_folder_with_a_default_acl_is_accepted_again(tmp_path):
    """#6: a report folder made in a set-group-ID team folder whose default ACL gives the group ``rwx`` (a group with
    other members) is group-writable, as a plain mkdir there makes it: the user's re-run takes it. Sabotage: ``loose``
    in ``_trusted`` ignoring ``fresh_mode`` fails it."""
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed")
    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, -1, OTHER)  # a group this user is not the only member of (unknown: taken as others)
    team.chmod(0o2770)
    if subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rwx,o::-", str(team)], check=False).returncode:
        pytest.skip("this file system takes no ACLs")
    out = _report_folder(team, runs=True)
    assert (out.stat().st_mode & 0o2070, (out / "maps").stat().st_mode & 0o070) == (0o2070, 0o070)
    site, old = _prepare(out)  # the re-run: accepted, its earlier files known
    site.close()
    assert old == {"maps/m.html"}
