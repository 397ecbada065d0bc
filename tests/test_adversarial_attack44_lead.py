"""Attack 44's cases fixed by the lead (reproducers on branch attack44)."""

from __future__ import annotations

import pytest

from featstore.errors import ConfigError


def test_a_parallel_search_gives_joblib_the_private_temporary_folder(store, tmp_path, monkeypatch):
    """Attack 44 #2: ``fit --jobs 2`` over a grid had joblib dump the training features for its worker processes into
    the team's TMPDIR (by name, unpickled by the workers): a teammate renamed the folder and the fit died with a
    traceback. joblib is given featstore's private temporary folder, and where there is none the fit is refused in its
    one line before any fit."""
    import joblib

    from featstore import fit, tmpdir

    seen = []
    real = joblib.Parallel.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("temp_folder"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(joblib.Parallel, "__init__", spy)
    monkeypatch.setattr(tmpdir, "private_tempdir", lambda: str(tmp_path))
    fit(store, "logreg", {"C": [0.1, 1.0]}, runs=tmp_path / "r", jobs=2)
    assert str(tmp_path) in seen, seen

    def none():
        raise ConfigError("temporary folder /team/tmp, in which other users may rename entries: set TMPDIR")

    monkeypatch.setattr(tmpdir, "private_tempdir", none)
    with pytest.raises(ConfigError, match="^temporary folder /team/tmp"):
        fit(store, "logreg", {"C": [0.1, 1.0]}, runs=tmp_path / "r", jobs=2)
