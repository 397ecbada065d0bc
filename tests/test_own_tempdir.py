"""Attack 46 #4 (High): in a sticky TMPDIR (/tmp, a team's 1777 scratch folder) no one may rename the user's entries,
so it passed as private; but a fixed name there, such as ``__pycache__``, is anyone's to make first: TensorFlow's
autograph writes each converted function as ``<tmp>/__autograph_generated_file*.py`` and imports it, and Python took
its bytecode from a colleague's ``<tmp>/__pycache__``: his code ran in her featstore process (and in her Ray actors).
The command's and a Ray worker's temporary folder is now one only the user may enter."""

from __future__ import annotations

import os
import tempfile

import pytest

from featstore import tmpdir
from featstore.errors import ConfigError

root_only = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")


@pytest.fixture
def sticky(tmp_path, monkeypatch):
    folder = tmp_path / "team"
    folder.mkdir()
    folder.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(tmpdir, "_SAID", set())
    return folder


def test_a_sticky_shared_folder_gives_a_folder_only_the_user_may_enter(sticky):
    """Sabotage: own_tempdir returning the private folder as it is: the shared sticky folder itself."""
    own = tmpdir.own_tempdir()
    assert own == str(sticky / f"featstore-{os.geteuid()}")
    assert os.stat(own).st_mode & 0o777 == 0o700
    assert tmpdir.own_tempdir(quiet=True) == own  # a Ray worker's, the same folder


def test_a_folder_of_the_users_own_closed_to_others_is_used_as_it_is(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(mine))
    assert tmpdir.own_tempdir() == str(mine)


@root_only
def test_a_colleagues_folder_at_the_users_name_is_refused_in_one_line(sticky):
    squat = sticky / f"featstore-{os.geteuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, 54321, 54321)
    with pytest.raises(ConfigError) as got:
        tmpdir.own_tempdir()
    line = str(got.value)
    assert f"temporary folder {sticky} is open to other users" in line and "uid 54321's" in line, line
    assert line.endswith("set TMPDIR to a folder of yours (mode 0700)")


def test_the_command_and_a_ray_worker_keep_their_temporary_files_there(sticky, monkeypatch):
    """Sabotage: the CLI's tempfile.tempdir (or worker_tempdir's) left at the private folder: the sticky one."""
    from typer.testing import CliRunner

    from featstore.cli import app
    from featstore.extraction.ray_address import worker_tempdir

    own = str(sticky / f"featstore-{os.geteuid()}")
    assert CliRunner().invoke(app, ["classifiers"]).exit_code == 0
    assert tempfile.tempdir == own
    monkeypatch.setattr(tempfile, "tempdir", str(sticky))
    worker_tempdir()
    assert tempfile.tempdir == own
