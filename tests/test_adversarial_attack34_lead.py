"""Attack 34 #1: run as an ordinary user, a path inside a folder the user may not enter (a colleague's ``0700``) made
``Path.exists``/``is_dir``/``os.scandir`` raise PermissionError, and eight commands ended in a traceback. The CLI says
it in one line: the path, the folder that is closed to the user (owner, mode), and the way out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_adversarial_attack4 import cli, no_traceback


def _closed(monkeypatch, folder: Path) -> None:
    """``folder`` as an ordinary user sees a colleague's ``0700`` folder: nothing under it can be looked at, and it
    cannot be entered (root, which the suite may run as, can do both: the kernel's answers are simulated)."""
    real_stat, real_access = os.stat, os.access
    inside = str(folder) + os.sep

    def stat(path, *a, **k):
        if os.fspath(path).startswith(inside):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *a, **k)

    def access(path, mode, *a, **k):
        if os.fspath(path) == str(folder) and mode & os.X_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize(
    "args",
    [
        ("info", "{priv}/s.h5"),
        ("extract", "--data", "{data}", "--split", "train", "--store", "{tmp}/s.h5", "--model", "{priv}/m.keras"),
        ("runs", "--runs", "{priv}/runs"),
    ],
)
def test_a_path_in_a_folder_closed_to_the_user_is_one_line_naming_that_folder(tmp_path, monkeypatch, args):
    priv = tmp_path / "priv"
    priv.mkdir(mode=0o700)
    data = tmp_path / "data"
    (data / "train" / "a").mkdir(parents=True)
    _closed(monkeypatch, priv)
    out = no_traceback(cli(*[a.format(priv=priv, data=data, tmp=tmp_path) for a in args]))
    assert f"you may not enter the folder {priv} (" in out and "mode 0700), which is on its path" in out, out
    assert "Ask its owner for access" in out, out


def test_a_real_closed_folder_as_an_ordinary_user(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root enters every folder: run as an ordinary user (the simulated test above covers root)")
    priv = tmp_path / "priv"
    priv.mkdir()
    priv.chmod(0)
    try:
        out = no_traceback(cli("info", priv / "s.h5"))
    finally:
        priv.chmod(0o700)
    assert f"you may not enter the folder {priv}" in out, out


def test_a_run_lock_leaves_no_file_behind_and_still_keeps_two_commands_apart(tmp_path):
    """Attack 34 #2: ``.<id>.lock`` stayed after every command that locked a run (a read-only ``runs show`` too); in a
    shared runs folder the first user's 0644 file made every other user's lock on that run none."""
    from featstore import fit
    from featstore.runs.versions import run_lock
    from tests.test_adversarial_attack3 import synthetic_store

    store, runs = synthetic_store(tmp_path / "s.h5"), tmp_path / "runs"
    rid = fit(store, "logreg", runs=runs)["id"]
    no_traceback(cli("runs", "--store", store, "--runs", runs, "show", rid))
    with run_lock(runs, rid) as held:
        with run_lock(runs, rid, wait=False) as second:
            assert (held, second) == (True, False)  # the lock works
    assert sorted(p.name for p in runs.iterdir() if p.name.endswith(".lock")) == []
