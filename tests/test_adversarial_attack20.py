"""Attack 20: empty path options, legend labels starting with '_', key and folder advice, and path columns chunked
one row a chunk (findings 5, 8, 9 and 10 of branch attack20's REPORT.md). Synthetic stores and arrays only; each test
failed before its fix."""

from __future__ import annotations

import os

import pytest

from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


# ------------------------------------------------------------------ 8. empty path options
@pytest.mark.parametrize(
    "args, option",
    [
        (("fit", "--store", "STORE", "--runs", ""), "--runs"),
        (("fit", "--store", "STORE", "--runs= "), "--runs"),
        (("export", "--store", "", "--split", "train", "--out", "x.csv"), "--store"),
        (("export", "--store", "STORE", "--split", "train", "--out", ""), "--out"),
        (("runs", "--store", "STORE", "--runs", ""), "--runs"),
    ],
)
def test_an_empty_path_option_is_refused_naming_it(tmp_path, monkeypatch, args, option):
    """Finding 8: ``fit --runs ''`` (an unset $RUNS) recorded the run into the current folder (typer makes '' the
    path '.'), ``export --store ''`` said "store . is not a regular file". Now one line naming the empty option."""
    store = synthetic_store(tmp_path / "s.h5")
    monkeypatch.chdir(tmp_path)
    result = cli(*[store if a == "STORE" else a for a in args])
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert out.startswith(f"error: {option} is empty") and len(out.strip().splitlines()) == 1, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # nothing recorded in the current folder


# ------------------------------------------------------------------ 9. legend labels starting with '_'
def test_a_split_starting_with_underscore_is_named_in_the_compare_legend(tmp_path, monkeypatch):
    """Finding 9: matplotlib leaves labels starting with ``_`` out of a legend; a split ``_holdout`` (a valid name)
    was drawn in ``runs compare``'s chart but missing from its legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from featstore.plots import compare_png

    seen = []
    legend = Axes.legend

    def spy(self, *args, **kwargs):
        made = legend(self, *args, **kwargs)
        seen.extend(t.get_text().strip() for t in made.get_texts())
        return made

    monkeypatch.setattr(Axes, "legend", spy)
    compare_png(["run-a", "run-b"], {"_holdout": [0.9, 0.4], "test": [0.5, 0.8]}, tmp_path / "c.png")
    assert seen == ["_holdout", "test"]


# ------------------------------------------------------------------ 10. key and folder advice
def test_an_open_key_folder_is_named_as_a_folder_with_chmod_as_the_fix(tmp_path, monkeypatch):
    """Finding 10: a config folder made 0775 was called "featstore's key" and the fix given was to remove it (with
    the user's other files in it); ``chmod go-w`` is the fix, and the folder is kept."""
    from featstore.errors import ConfigError
    from featstore.keys import user_key

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    folder = tmp_path / "xdg" / "featstore"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o775)
    with pytest.raises(ConfigError) as err:
        user_key()
    message = str(err.value)
    assert message.startswith(f"the folder {folder} holding featstore's key may be written by others (mode 0775)")
    assert f"chmod go-w {folder}" in message and "remove" not in message, message


def test_a_key_open_to_others_says_so_and_gives_chmod_600(tmp_path, monkeypatch):
    """Finding 10: a 0640 key of one's own said "belongs to user id 0 or is open to others": which one, and the fix."""
    from featstore.errors import ConfigError
    from featstore.keys import user_key

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    key = tmp_path / "xdg" / "featstore" / "key"
    key.parent.mkdir(parents=True, mode=0o700)
    key.write_bytes(b"k" * 32)
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError) as err:
        user_key()
    message = str(err.value)
    assert "may be read or written by others (mode 0640)" in message and "belongs to" not in message, message
    assert f"chmod 600 {key}" in message, message


# ------------------------------------------------------------------ 5. one row a chunk
class _Counted:
    """A dataset (or its id) whose chunk look-ups are counted; everything else is the real one's."""

    def __init__(self, real, counts):
        self._real, self._counts = real, counts

    def __getattr__(self, name):
        if name == "get_chunk_info_by_coord":
            self._counts.append(1)
        if name == "id":
            return _Counted(self._real.id, self._counts)
        return getattr(self._real, name)


def test_path_lengths_of_a_column_chunked_one_row_a_chunk_walk_the_index_once(tmp_path):
    """Finding 5: vlen_lengths looked each chunk up in HDF5's index (O(index) each): a path column chunked one row a
    chunk made reading 40,000 paths' lengths take 14.9 s (h5py read them in 0.32 s). Now one walk of the index."""
    import h5py

    from featstore.store.strings import vlen_lengths

    paths = [f"img/{'x' * (i % 7)}{i}.png" for i in range(600)]
    with h5py.File(tmp_path / "s.h5", "w") as f:
        ds = f.create_dataset("paths", data=paths, dtype=h5py.string_dtype(), chunks=(1,), maxshape=(None,))
        ds.resize((700,))  # rows 600.. never written: empty strings
    with h5py.File(tmp_path / "s.h5", "r") as f:
        counts: list = []
        got = vlen_lengths(_Counted(f["paths"], counts), 3, 650)
        want = [len(p.encode()) for p in paths[3:]] + [0] * 50
        assert got.tolist() == want
        assert len(counts) == 0, f"{len(counts)} chunk look-ups"
        assert vlen_lengths(_Counted(f["paths"], counts), 5, 9).tolist() == want[2:6]  # a few rows: looked up
