"""Attack 48 M3, M5, L1-L5: export's shards never replace a colleague's (empty) folder, the API checks Keras's
settings file before featstore's own first import of Keras, its float16 line names that file, report and fit on a
full disk say truly what is left, and featstore's temporary folder's lines (a link, a relative XDG_CACHE_HOME, the
home cache used instead) are true."""

from __future__ import annotations

import os

import numpy as np
import pytest

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
