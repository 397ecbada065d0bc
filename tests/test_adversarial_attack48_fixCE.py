"""Attack 48 M3, M5, L1-L5: export's shards never replace a colleague's (empty) folder, the API checks Keras's
settings file before featstore's own first import of Keras, its float16 line names that file, report and fit on a
full disk say truly what is left, and featstore's temporary folder's lines (a link, a relative XDG_CACHE_HOME, the
home cache used instead) are true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import featstore

OTHER = 54321  # a uid (and gid) no one has
root_only = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from featstore.store import writer

    path = tmp_path_factory.mktemp("a48") / "features.h5"
    X = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    writer.write_arrays(path, "synthetic", "train", X, np.arange(12) % 2, ["a", "b"], batch_size=4)
    return path


@root_only
def test_export_shards_never_replace_a_colleagues_empty_folder(store, tmp_path):
    """M3: rename(2) onto an empty folder needs only write on its parent (a team folder, 2775): bob's empty folder was
    replaced by hers, which he could not write in. Refused in one line naming the folder, the owner and the fix."""
    pytest.importorskip("pyarrow")
    from featstore import export
    from featstore.errors import OutputError

    team = tmp_path / "team"
    team.mkdir()
    os.chmod(team, 0o2777)
    sub = team / "sub"
    sub.mkdir()
    os.chmod(sub, 0o2775)
    os.chown(sub, OTHER, OTHER)
    with pytest.raises(OutputError, match=r"--out .*/team/sub: it is uid 54321's \(mode 2775\) folder, not yours") as e:
        export(store, "train", sub, rows_per_file=5)
    assert "ask uid 54321 to remove it" in str(e.value)
    st = os.stat(sub)
    assert (st.st_uid, os.listdir(sub)) == (OTHER, [])
    assert sorted(os.listdir(team)) == ["sub"]  # no temporary folder left beside it


def _python(code: str, keras_home: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python whose Keras settings are in ``keras_home`` (featstore of this checkout first)."""
    env = dict(os.environ, KERAS_HOME=str(keras_home), PYTHONPATH=str(Path(featstore.__file__).parent.parent))
    env.pop("KERAS_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_api_refuses_a_fifo_at_keras_settings_file_before_its_own_keras_import(tmp_path):
    """M5: featstore.extract in a script that had not imported Keras imported it itself, and Keras waited on the FIFO
    for ever: the check was the command's import hook only. Now ``import featstore`` installs one for the API."""
    from PIL import Image

    for c in "ab":
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "data" / "train" / c / "0.png")
    os.mkfifo(tmp_path / "keras.json")
    code = (
        "import sys, featstore\n"
        "assert 'keras' not in sys.modules\n"
        "try:\n"
        f"    featstore.extract({str(tmp_path / 'data')!r}, 'train', {str(tmp_path / 'x.h5')!r},\n"
        "        featstore.ExtractorConfig(model='vgg16', weights='none', image_size=32))\n"
        "except featstore.ConfigError as e:\n"
        "    print('REFUSED', e)\n"
    )
    try:
        done = _python(code, tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("featstore.extract waited on the FIFO at keras.json")
    assert f"REFUSED Keras's settings file {tmp_path / 'keras.json'} is not a regular file" in done.stdout, done.stderr
    # a module that builds Keras models, imported as it is (no public name used): the hook is in place too
    code = "import featstore.models.extractor\ntry:\n    import keras\nexcept featstore.ConfigError:\n    print('REFUSED')\n"
    assert _python(code, tmp_path, timeout=60).stdout.strip() == "REFUSED"


def test_import_featstore_leaves_a_float16_settings_file_to_check_loaded_which_names_it(tmp_path):
    """M5's hook refuses only what would hang or read without bound: the caller's own Keras with float16 still
    imports. L1: check_loaded's line names the file the value came from, not only keras.config.set_*."""
    (tmp_path / "keras.json").write_text(
        '{"floatx": "float16", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"}'
    )
    code = (
        "import featstore, keras\n"
        "print('FLOATX', keras.config.floatx())\n"
        "from featstore.kerasconfig import check_loaded\n"
        "try:\n"
        "    check_loaded(training=False)\n"
        "except featstore.ConfigError as e:\n"
        "    print('REFUSED', e)\n"
        "keras.config.set_floatx('float32')\n"
        "keras.config.set_epsilon(0.1)\n"
        "try:\n"
        "    check_loaded(training=False)\n"
        "except featstore.ConfigError as e:\n"
        "    print('REFUSED', e)\n"
    )
    done = _python(code, tmp_path)
    assert "FLOATX float16" in done.stdout, done.stderr
    first, second = [line for line in done.stdout.splitlines() if line.startswith("REFUSED")]
    assert f"floatx came from Keras's settings file {tmp_path / 'keras.json'}, read when Keras was imported" in first
    assert "epsilon 0.1" in second and "change it back with keras.config.set_*" in second  # not the file's


def _full_at(monkeypatch, module, name: str) -> None:
    """``module.write_atomic`` fails as on a full disk for the file ``name`` (others are written)."""
    import errno

    from featstore import outputs

    real = module.write_atomic

    def write_atomic(path, write, what, *args, **kwargs):
        if Path(path).name == name:
            raise outputs._output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), Path(path), what)
        return real(path, write, what, *args, **kwargs)

    monkeypatch.setattr(module, "write_atomic", write_atomic)


def test_a_report_stopped_by_a_full_disk_says_what_it_left(store, tmp_path, monkeypatch):
    """L2: "Nothing was written there" (of the file that failed) read as the whole report's, yet the site folder kept
    the files written before it: said now, with the folder's removal where the report made it."""
    from featstore.errors import OutputError
    from featstore.report.site import sitefolder
    from featstore.report.site.build import build_report

    _full_at(monkeypatch, sitefolder, "index.html")
    out = tmp_path / "site"
    with pytest.raises(OutputError) as e:
        build_report(store, out=out, leaks=False)
    line = str(e.value)
    assert "Nothing was written there" not in line
    assert f"{out}/index.html: the disk is full" in line or "No space left" in line, line
    assert f"The report stopped there: {out} holds the files written before it" in line
    assert f"rm -r {out}" in line
    assert (out / ".featstore-report.json").is_file()  # what the line says is there


@pytest.mark.parametrize("given", ["runs", "a/b/runs"])
def test_a_fit_not_recorded_on_a_full_disk_leaves_no_runs_folder_it_made(tmp_path, monkeypatch, given):
    """L3: "Nothing was recorded (no partial folder is left)", yet the runs folder made for the run stayed, empty
    (and the levels made above it). A runs folder that was there already is kept."""
    import errno

    from featstore import fit
    from featstore.errors import OutputError
    from featstore.runs import write
    from tests.test_adversarial_attack3 import synthetic_store

    store = synthetic_store(tmp_path / "f.h5")

    def mark(folder, run_id, role):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / write.TMP_MARKER))

    monkeypatch.setattr(write, "_mark", mark)
    with pytest.raises(OutputError, match=r"the disk is full.*Nothing was recorded \(no partial folder is left\)"):
        fit(store, "logreg", runs=tmp_path / given)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5"]
    (tmp_path / "kept").mkdir()
    with pytest.raises(OutputError):
        fit(store, "logreg", runs=tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()


def test_the_users_own_link_at_her_temporary_folder_is_said_as_a_link(sticky, tmp_path, monkeypatch, caplog):
    """L4: her own link at <tmp>/featstore-<uid> (to her 0700 folder) was said as "it is not a folder"."""
    from featstore import tmpdir

    mine = tmp_path / "mytmp"
    mine.mkdir(mode=0o700)
    (sticky / f"featstore-{os.geteuid()}").symlink_to(mine)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="featstore"):
        assert tmpdir.own_tempdir() == str(tmp_path / "cache" / "featstore" / "tmp")
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "cannot be used (it is a link; featstore uses only a folder there)" in said, said


def test_a_relative_xdg_cache_home_is_ignored(sticky, tmp_path, monkeypatch):
    """L4: XDG_CACHE_HOME=cachex was taken from the current folder (the XDG spec: a relative one is ignored)."""
    from featstore import tmpdir

    (sticky / f"featstore-{os.geteuid()}").symlink_to(tmp_path)  # not usable: the home cache is chosen
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "cachex")
    monkeypatch.chdir(sticky)
    assert tmpdir.own_tempdir() == str(tmp_path / "home" / ".cache" / "featstore" / "tmp")
    assert not (sticky / "cachex").exists()


@root_only
def test_the_api_says_once_that_the_process_temporary_folder_moved(sticky, tmp_path, monkeypatch, caplog):
    """L5: where a colleague owns <tmp>/featstore-<uid>, the API's use_own_tempdir moved the whole process's
    tempfile folder to the home cache without a word: the caller's own large temporary files went to her quota."""
    import tempfile

    from featstore import tmpdir

    squat = sticky / f"featstore-{os.geteuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, OTHER, OTHER)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="featstore"):
        tmpdir.use_own_tempdir()
        moved = tempfile.gettempdir()
        monkeypatch.setattr(tempfile, "tempdir", str(sticky))
        tmpdir.use_own_tempdir()  # a second model built: not said again
    said = [r.getMessage() for r in caplog.records]
    assert moved == str(tmp_path / "cache" / "featstore" / "tmp")
    assert len(said) == 1, said
    assert f"{squat}, cannot be used (uid {OTHER} made it, not you: only they or an admin can remove it)" in said[0]
    assert (
        f"this process's temporary files (tempfile's folder: featstore's, TensorFlow's and your own code's) go to {moved}"
        in said[0]
    )
