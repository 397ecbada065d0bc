"""Attack 40 #12, #13, #10 (fixAX).

#12: ``_others_write`` looked at the first existing level of (``KERAS_HOME/models``, ``KERAS_HOME``) only: a private
``models/`` in a team's ``KERAS_HOME`` (``root:team 2775``, no sticky bit) passed, and Keras downloaded by name into
``KERAS_HOME/models/<file>`` while a colleague could rename ``models/`` away and put his folder or link there. Every
level up to ``/`` is checked now: the folder Keras writes in as before, and each one above for others who may rename
entries in it (not the user's nor root's, or writable by others without the sticky bit).

#13: Ray's refusal of ``ray_current_cluster`` said "written by another user (uid <the user's own>) or others may write
it": two cases in one line. Now two: written by <name> (not you); yours, but <the ACL's named user or group> may write it.

#10: a ``--store`` name of 247..255 bytes (legal) whose ``<store>.lock`` or ``.lock.pid`` is over NAME_MAX: "its full
path is 286 bytes, longer than this system takes: cd nearer to it", which no cd helps. Now the side file's name, its
length and the longest store name that fits, said before the lock (and the extraction) is taken.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featstore.models.weights import _others_write, _shared_line

OTHER = 54321  # a user and group that are not this one


def _keras(root: Path, mode: int, gid: int = -1) -> Path:
    """``root/keras/models`` made, ``models/`` private (0755), ``keras/`` of mode ``mode`` (group ``gid``): keras/."""
    home = root / "keras"
    (home / "models").mkdir(parents=True)
    (home / "models").chmod(0o755)
    os.chown(home, -1, gid)
    home.chmod(mode)
    return home


def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a folder another group or owner needs root")


def test_a_private_models_folder_in_a_team_writable_keras_home_is_refused(tmp_path):
    """#12. Sabotage: ``_others_write`` returning None after the first existing level (as before) fails it."""
    _root_only()
    home = _keras(tmp_path, 0o2775, OTHER)  # root:team 2775: every member may rename models/
    assert _others_write(home / "models", home) == home
    line = _shared_line("cached ImageNet weights file", home / "models" / "w.h5", home)
    assert f"inside {home}, in which others may rename entries (group gid {OTHER}; no sticky bit)" in line
    assert "rename models away" in line and "sticky bit on" in line and "KERAS_HOME to a folder of yours" in line
    home.chmod(0o3775)  # the sticky bit: only the user (and root) may rename models/
    assert _others_write(home / "models", home) is None
    home.chmod(0o2755)
    assert _others_write(home / "models", home) is None


def test_a_level_further_up_that_others_may_rename_in_is_refused(tmp_path):
    """#12: the team folder two levels up (``/proj/team/alice/.keras``), another user's folder above, a link of root's
    to a team folder: each refused where it is."""
    _root_only()
    team = tmp_path / "team"
    team.mkdir()
    home = _keras(team / "alice", 0o755)
    (team / "alice").chmod(0o755)
    os.chown(team, -1, OTHER)
    team.chmod(0o775)
    assert _others_write(home / "models", home) == team
    team.chmod(0o755)
    assert _others_write(home / "models", home) is None
    os.chown(team, OTHER, -1)  # another user's folder, 0755: its owner may rename alice/
    assert _others_write(home / "models", home) == team
    line = _shared_line("weights", home / "models" / "w.h5", team)
    assert f"inside {team}, in which others may rename entries (its owner uid {OTHER}; no sticky bit)" in line, line
    assert "could rename alice away" in line
    os.chown(team, 0, -1)
    link = tmp_path / "short"
    link.symlink_to(team / "alice")  # root's link to alice/ in the team folder, team-writable again
    team.chmod(0o775)
    assert _others_write(link / "keras" / "models", link / "keras") == team
    line = _shared_line("weights", link / "keras" / "models" / "w.h5", team)
    assert f"inside {team}, in which others may rename entries" in line and "a folder on the way" in line, line


def test_a_plain_keras_cache_in_a_home_of_the_users_passes(tmp_path):
    """#12: ``~/.keras`` (or none yet) in a home of the user's (0755, 0750) under folders of root's: not refused."""
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    for mode in (0o755, 0o750):
        home.chmod(mode)
        assert _others_write(home / ".keras" / "models", home / ".keras") is None  # Keras makes both
        (home / ".keras" / "models").mkdir(parents=True, exist_ok=True)
        assert _others_write(home / ".keras" / "models", home / ".keras") is None
        (home / ".keras" / "models").rmdir()
        (home / ".keras").rmdir()
    home.chmod(0o777)  # (Keras would make .keras in a folder anyone may write: refused, as before)
    assert _others_write(home / ".keras" / "models", home / ".keras") == home
    line = _shared_line("cached ImageNet weights file", home / ".keras" / "models" / "w.h5", home)
    assert f"into {home}, which other users can write (anyone (it is o+w))" in line


def _setfacl(path: Path, *args: str) -> None:
    """``setfacl args path``; skips where there is no setfacl or the file system takes no ACLs."""
    import shutil
    import subprocess

    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed")
    if subprocess.run(["setfacl", *args, str(path)], check=False, capture_output=True).returncode:
        pytest.skip("this file system takes no ACLs")


def test_rays_file_of_the_users_own_that_an_acl_shares_says_who_may_write_it(tmp_path, monkeypatch):
    """#13: Ray's cluster file of the user's own that ``u:bob:rw`` may write said "was written by another user (uid <the
    user's own>) or others may write it". Now: yours, who may write it (the ACL's named user, group), and the fix; a
    file of another user's: written by them (not you). Sabotage: ray.py's two refusals made one again fails it."""
    from featstore.errors import ConfigError
    from featstore.extraction.ray import _auto

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    file = tmp_path / "ray" / "ray_current_cluster"
    file.write_text("127.0.0.1:9\n")
    file.chmod(0o644)
    _setfacl(file, "-m", f"u:{OTHER}:rw-")
    with pytest.raises(ConfigError) as caught:
        _auto("auto", "--address")
    said = str(caught.value)
    assert f"{file} is yours, but user uid {OTHER} (its ACL) may write it" in said, said
    assert "another user" not in said and "remove it and start Ray again with RAY_TMPDIR set to a folder" in said
    _setfacl(file, "-b")
    _setfacl(file, "-m", f"g:{OTHER}:rw-")
    with pytest.raises(ConfigError, match=rf"is yours, but group gid {OTHER} \(its ACL\) may write it"):
        _auto("auto", "--address")
    _setfacl(file, "-b")
    if os.geteuid() == 0:
        os.chown(file, OTHER, -1)
        with pytest.raises(ConfigError, match=rf"{file} was written by uid {OTHER} \(not you\), so the address"):
            _auto("auto", "--address")


def test_a_store_name_whose_lock_files_name_is_too_long_says_so_before_any_work(tmp_path):
    """#10. Sabotage: writer_lock's ``side_name`` check removed fails it (a 251-byte name: "its name ... is 256 bytes,
    ... use a shorter name" of the lock, or on main "its full path ... cd nearer to it")."""
    from featstore.errors import StoreError
    from featstore.store.links import name_max
    from featstore.store.locking import writer_lock

    most = name_max(tmp_path)
    for size, end, what in ((most - 4, ".lock", "lock file"), (most - 8, ".lock.pid", "lock's pid file")):
        store = tmp_path / ("s" * (size - 3) + ".h5")
        with pytest.raises(StoreError) as caught, writer_lock(store, locking=True):
            pass
        said = str(caught.value)
        assert (
            f"its {what}'s name {'s' * 24}...{end} would be {most + 1} bytes, over the {most} a name may have" in said
        )
        assert said.endswith(f"use a store name of at most {most - 9} bytes") and "cd nearer" not in said, said
        assert os.listdir(tmp_path) == []  # nothing made
    store = tmp_path / ("s" * (most - 12) + ".h5")  # at most: it and every side file fit
    with writer_lock(store, locking=True):
        assert sorted(os.listdir(tmp_path)) == [f"{store.name}.lock", f"{store.name}.lock.pid"]


def test_a_path_too_long_by_a_name_in_it_names_the_name_not_the_full_path(tmp_path):
    """#10: ``too_long`` of a path with a name over NAME_MAX says that name; of a long path of short names, the full
    path. Sabotage: its name loop removed fails it."""
    from featstore.store.links import name_max, too_long

    said = too_long(tmp_path / ("n" * 300 + ".h5"))
    assert said.startswith(f"its name {'n' * 24}... is 303 bytes, over the {name_max(tmp_path)} a name may have"), said
    assert "cd nearer" not in said, said
    assert "cd nearer to it" in too_long(tmp_path / "/".join(["d" * 200] * 25))
