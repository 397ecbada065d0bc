"""Eighth attack (issue #19, "outputs safe, inputs bounded"): ``export --rows-per-file`` shard folders (their mode,
and the recovery of a killed export) and ``write_arrays`` inputs. Each test failed before its fix."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from featstore import ConfigError, export
from featstore.store import writer
from featstore.store.check import check_store
from tests.test_adversarial_attack3 import synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("a8") / "f.h5")


# ------------------------------------------------------------------ export --rows-per-file
def test_shard_folder_gets_the_umask_mode_like_every_other_output(store, tmp_path):
    """The shard folder was mkdtemp's hidden folder renamed: mode 0700 whatever the umask, so the group (a Spark
    or DuckDB job under another user) could not read an export that single files (``write_atomic``) and run folders
    make readable."""
    pytest.importorskip("pyarrow")
    old = os.umask(0o022)
    try:
        export(store, "train", tmp_path / "shards", rows_per_file=10)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shards").stat().st_mode) == 0o755


def test_recovery_never_takes_another_exports_shards(store, tmp_path, caplog):
    """A killed export of ``sh.b`` leaves its earlier shards in ``.sh.b.XXXXXXXX.old/shards``; the glob
    ``.sh.*.old`` of an export to ``sh`` matched it, "put back" sh.b's shards as sh's earlier export, and the new
    export then deleted them: sh.b's only copy was lost, under a warning that named the wrong export."""
    pytest.importorskip("pyarrow")
    export(store, "train", tmp_path / "sh.b", rows_per_file=7)
    import subprocess
    import sys

    from featstore.leftovers import host_tag

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    aside = tmp_path / f".sh.b.fs{gone.pid}-{host_tag()}-k2j3h4g5.old"  # a killed export's name
    aside.mkdir()
    os.replace(tmp_path / "sh.b", aside / "shards")
    export(store, "validation", tmp_path / "sh", rows_per_file=100)
    assert (aside / "shards").is_dir() and len(list((aside / "shards").iterdir())) == 5
    assert "put back" not in caplog.text
    export(store, "train", tmp_path / "sh.b", rows_per_file=7)  # its own recovery still finds it
    assert not aside.exists()


# ------------------------------------------------------------------ write_arrays inputs
@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.bool_])
def test_write_arrays_refuses_a_dtype_no_reader_accepts(tmp_path, dtype):
    """``write_arrays`` wrote float64/int/bool features as given: every reader then called the store damaged
    ("extract again into a new --store", ``check`` too), though only the one extractor was. Refused before writing."""
    p = synthetic_store(tmp_path / "f.h5")
    with pytest.raises(ConfigError, match="float32"):
        writer.write_arrays(p, "t", "train", np.ones((6, 4), dtype), np.array([0, 1] * 3), ["a", "b"])
    assert check_store(p) == []
