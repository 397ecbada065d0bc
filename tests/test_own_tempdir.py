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
def test_a_colleagues_folder_at_the_users_name_falls_back_to_the_home_cache(sticky, tmp_path, monkeypatch, caplog):
    """Attack 47 #3: a colleague's mkdir <tmp>/featstore-<uid> refused every TensorFlow command of hers (a whole host's
    users with one loop). Now the home cache folder is used, said once; refused only where it cannot be used either.
    Sabotage: the fall-back left out: the refusal."""
    squat = sticky / f"featstore-{os.geteuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, 54321, 54321)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="featstore"):
        assert tmpdir.own_tempdir() == str(tmp_path / "cache" / "featstore" / "tmp")
    said = [r.getMessage() for r in caplog.records]
    assert (
        len(said) == 1
        and f"{squat}, cannot be used (uid 54321 made it, not you: only they or an admin can remove it)" in said[0]
    ), said
    assert "featstore keeps its temporary files in" in said[0]
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null")
    with pytest.raises(ConfigError) as got:
        tmpdir.own_tempdir()
    assert "uid 54321 made it, not you" in str(got.value) and "set TMPDIR to a folder of yours" in str(got.value)


def test_the_python_api_builds_its_models_with_a_temporary_folder_only_the_user_may_enter(sticky):
    """Attack 47 #1 (High): featstore.extract in a notebook left tempfile's folder at the sticky /tmp; autograph's
    modules were imported through a colleague's __pycache__ there. Sabotage: use_own_tempdir left out of
    check_loaded: the sticky folder stays."""
    from featstore.models.extractor import Extractor, ExtractorConfig

    Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))
    assert tempfile.gettempdir() == str(sticky / f"featstore-{os.geteuid()}")


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


def test_matplotlib_gets_a_config_folder_where_the_home_one_cannot_be_made(tmp_path, monkeypatch):
    """Attack 51 L6: a home folder that cannot be written added two long matplotlib warnings to every extract."""
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / "home").write_text("not a folder")  # (root may write anywhere: a home that is a file cannot hold one)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tmpdir.quiet_matplotlib(str(tmp_path))
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "matplotlib") and (tmp_path / "matplotlib").is_dir()
    monkeypatch.setenv("MPLCONFIGDIR", "/theirs")
    tmpdir.quiet_matplotlib(str(tmp_path))
    assert os.environ["MPLCONFIGDIR"] == "/theirs"  # the user's stays
    monkeypatch.delenv("MPLCONFIGDIR")
    monkeypatch.setenv("HOME", str(tmp_path / "fine"))
    tmpdir.quiet_matplotlib(str(tmp_path))
    assert "MPLCONFIGDIR" not in os.environ and (tmp_path / "fine" / ".config" / "matplotlib").is_dir()


def test_no_home_at_all_is_no_traceback(tmp_path, monkeypatch):
    """Review: Path.home() outside the try: `env -i`, a container's --user 12345 without a passwd entry ended every
    command in RuntimeError before it ran."""
    from pathlib import Path

    def nowhere():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(nowhere))
    tmpdir.quiet_matplotlib(str(tmp_path))
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "matplotlib")
