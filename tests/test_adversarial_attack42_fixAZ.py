"""Attack 42 #7's last part and #2's other side: no private temporary folder is one line per command (not the CLI's
warning and then the command's error), and Ray's workers and a local Ray featstore starts keep their temporary files
in a folder only the user may rename entries in."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from featstore.errors import ConfigError

LINE = "in which other users may rename entries"


@pytest.fixture
def shared(monkeypatch, tmp_path):
    """tempfile's folder in a folder anyone may rename entries in (no sticky bit), XDG_CACHE_HOME a private one."""
    from featstore import tmpdir

    monkeypatch.setattr(tmpdir, "_SAID", set())
    team = tmp_path / "team"
    (team / "scratch").mkdir(parents=True)
    team.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(team / "scratch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return team


def _featstore(tmp_path, *args: str) -> list[str]:
    """stderr lines of ``featstore ARGS`` with TMPDIR in a folder anyone may rename entries in and ~/.cache's
    replacement open to renames too: no private temporary folder anywhere."""
    team, cache = tmp_path / "team", tmp_path / "opencache"
    for folder in (team / "scratch", cache):
        folder.mkdir(parents=True, exist_ok=True)
    team.chmod(0o777)
    cache.chmod(0o777)
    env = {**os.environ, "TMPDIR": str(team / "scratch"), "XDG_CACHE_HOME": str(cache)}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "featstore.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    return done.stderr.splitlines()


def test_no_private_temporary_folder_is_said_once_and_only_where_needed(tmp_path):
    """#7: `extract` printed the CLI's warning and then its own error, the same line twice; a command that needs no
    temporary folder said it too. Sabotage: the CLI's warning back in ``_private_tempdir`` (two lines, and one for
    `classifiers`); the import hook left out (extract of a built-in backbone went on with the shared folder)."""
    from tests.conftest import write_data_root

    data = write_data_root(tmp_path / "data")
    said = _featstore(
        tmp_path, "extract", "--model", "vgg16", "--weights", "none", "--image-size", "32", "--data", str(data),
        "--split", "train", "--store", str(tmp_path / "s.h5"), "--no-progress",
    )  # fmt: skip
    lines = [line for line in said if LINE in line]
    assert len(lines) == 1 and lines[0].startswith("error: temporary folder"), said
    assert "set TMPDIR to a folder of yours" in lines[0]
    assert not (tmp_path / "s.h5").exists()
    said = _featstore(tmp_path, "classifiers")
    assert not [line for line in said if LINE in line], said


def test_the_import_hook_refuses_tensorflow_only_while_there_is_no_private_folder(shared, tmp_path):
    from featstore.cli.main import _BeforeKeras

    hook = _BeforeKeras()
    assert hook.find_spec("numpy") is None
    (tmp_path / "cache").mkdir(mode=0o777)
    (tmp_path / "cache").chmod(0o777)
    with pytest.raises(ConfigError, match="set TMPDIR to a folder of yours"):
        hook.find_spec("tensorflow")
    (tmp_path / "cache").chmod(0o700)
    assert hook.find_spec("keras") is None  # found by now: the import goes on, in that folder
    assert tempfile.tempdir == str(tmp_path / "cache" / "featstore" / "tmp")


def test_a_ray_worker_keeps_its_temporary_files_in_a_private_folder(shared, tmp_path, caplog):
    """#2's other side: a worker inherits the TMPDIR of the Ray that started it (a team's 2775 folder); TensorFlow's
    autograph modules were written there. Now the worker picks its own private folder, without a line per worker."""
    from featstore.extraction.ray import worker_tempdir

    with caplog.at_level("WARNING", logger="featstore"):
        worker_tempdir()
    assert tempfile.tempdir == str(tmp_path / "cache" / "featstore" / "tmp")
    assert not [r for r in caplog.records if LINE in r.getMessage()]
    tempfile.tempdir = str(shared / "scratch")
    (tmp_path / "cache").chmod(0o777)
    with pytest.raises(ConfigError, match="set TMPDIR to a folder of yours"):
        worker_tempdir()


def test_forward_picks_the_workers_temporary_folder_before_anything_else(monkeypatch):
    """Sabotage: the call left out of Forward.__init__ (it goes on to TensorFlow and the extractor)."""
    from featstore.extraction import ray as ray_engine

    class Picked(Exception):
        pass

    def picked():
        raise Picked

    monkeypatch.setattr(ray_engine, "worker_tempdir", picked)
    with pytest.raises(Picked):
        ray_engine.Forward(None, False, 1, [], 0, 1.0)


def test_a_local_ray_is_started_in_a_private_folder_where_tmpdir_is_shared(shared, monkeypatch):
    """A local Ray featstore starts kept its session (logs, sockets, spilled objects) in <TMPDIR>/ray, a team's folder
    (and, attack 43 #13, with /tmp too: Ray makes ray/ and each session 0777 without the sticky bit); now always in a
    folder only the user may enter where its socket paths fit: RAY_TMPDIR where it is one, the private temporary
    folder where it is one (~/.cache/featstore/tmp: not one level more, which took /home/alice past the sockets' 107
    bytes: 43 #20), else the 0700 scratch folder in it; else one line naming the fix. Sabotage: ``_local_root``
    returning None."""
    from featstore.extraction.ray_address import _local_root

    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    root = _local_root()  # /tmp: the user's featstore-<uid> (0700) in it, not Ray's own /tmp/ray
    assert root == f"/tmp/featstore-{os.geteuid()}/ray", root
    assert stat.S_IMODE(os.stat(os.path.dirname(root)).st_mode) == 0o700
    monkeypatch.setenv("TMPDIR", str(shared / "scratch"))
    short = tempfile.mkdtemp(dir="/tmp")  # 0700, like ~/.cache/featstore/tmp; tmp_path is too long for the sockets
    try:
        monkeypatch.setattr(tempfile, "tempdir", short)
        assert _local_root() == os.path.join(short, "ray")  # already a folder only the user may enter
        monkeypatch.setenv("RAY_TMPDIR", short)
        assert _local_root() == os.path.join(short, "ray")
        monkeypatch.delenv("RAY_TMPDIR")
        long = os.path.join(short, "x" * 40)
        os.mkdir(long, 0o700)
        monkeypatch.setattr(tempfile, "tempdir", long)
        assert _local_root() == root  # too long there: the scratch folder in /tmp instead (attack 45 #2)
        monkeypatch.setenv("RAY_TMPDIR", short)  # the fix it names
        assert _local_root() == os.path.join(short, "ray")
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_fit_refused_by_featstore_is_its_own_line(monkeypatch):
    """`fit --clf dense` with no private temporary folder said "dense with {...} cannot be fitted on these 4 rows:
    temporary folder ...": featstore's own refusal (the import hook's, raised inside the Keras head's fit) is not the
    rows' fault. Sabotage: ``except FeatstoreError: raise`` left out of fit_one."""
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.pipeline import Pipeline

    from featstore.experiments import classifiers
    from featstore.experiments.selection import fit_one

    class Refused(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            raise ConfigError("temporary folder /srv/team/tmp, in which other users may rename entries: set TMPDIR")

    monkeypatch.setattr(classifiers, "build_classifier", lambda name, params: Pipeline([("head", Refused())]))
    with pytest.raises(ConfigError) as got:
        fit_one("dense", {}, np.zeros((4, 2)), np.array([0, 1, 0, 1]), None)
    assert str(got.value).startswith("temporary folder /srv/team/tmp"), got.value


def test_the_engine_starts_its_local_ray_in_that_folder(shared, tmp_path, monkeypatch):
    """ray.init is given the private folder as ``_temp_dir``, its logs are named there, and the data root still
    reaches the workers' visibility check (the first version's folder variable shadowed it). Sabotage: the
    ``_temp_dir`` argument left out."""
    ray = pytest.importorskip("ray")
    from featstore.extraction.ray import RayEngine, RayOptions

    asked = []

    def init(address=None, **kw):
        asked.append(kw.get("_temp_dir"))
        raise Exception("The current node timed out during startup")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(shared / "scratch"))
    short = tempfile.mkdtemp(dir="/tmp")
    try:
        monkeypatch.setattr(tempfile, "tempdir", short)
        root = os.path.join(short, "ray")
        with pytest.raises(ConfigError, match=f"its logs under {root}/session_latest/logs"):
            RayEngine(RayOptions()).start(tmp_path, None)
        assert asked == [root]
        seen = []
        monkeypatch.setattr(ray, "init", lambda **kw: None)
        with RayEngine(RayOptions()) as engine:  # closed: its log filters and fd 2's filter removed for later tests
            monkeypatch.setattr(engine, "_check_resources", lambda: None)
            monkeypatch.setattr(engine, "_check_data_visible", lambda root, first: seen.append(root))
            engine.start(tmp_path, None)
        assert seen == [tmp_path]
    finally:
        shutil.rmtree(short, ignore_errors=True)
