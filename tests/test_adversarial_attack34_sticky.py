"""Attack 34 #3-#6: in a folder with the sticky bit (a team folder made ``1777``) only an entry's owner or the folder's
owner may rename or remove it; the kernel's EPERM was read as "folder not writable; make it writable", and the fixes
named were ones only another user could do. Root ignores the sticky bit: the colleague (uid 54321) and the folder's
owner (uid 54322) are made-up users, and the kernel's EPERM is simulated where the suite runs as root."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from featstore import sticky
from featstore.errors import OutputError

COLLEAGUE, FOLDER_OWNER = 54321, 54322
EPERM = PermissionError(errno.EPERM, "Operation not permitted")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to made-up users needs root")


def team(tmp_path: Path) -> Path:
    """A team folder as teams make them: another user's, mode 1777."""
    folder = tmp_path / "team"
    folder.mkdir()
    os.chown(folder, FOLDER_OWNER, -1)
    folder.chmod(0o1777)
    return folder


def theirs(path: Path, text: str = "x\n", mode: int = 0o666) -> Path:
    """A file of the colleague's at ``path``."""
    path.write_text(text)
    path.chmod(mode)
    os.lchown(path, COLLEAGUE, -1)
    return path


def refuse_renames_onto(monkeypatch, target: Path) -> None:
    """The kernel's answer to an ordinary user renaming onto, or away, ``target`` (the colleague's): EPERM."""
    real = os.replace

    def replace(src, dst, *a, **k):
        for name, fd in ((src, k.get("src_dir_fd")), (dst, k.get("dst_dir_fd"))):
            full = os.path.join(os.readlink(f"/proc/self/fd/{fd}"), name) if fd is not None else os.fspath(name)
            if os.path.abspath(full) == str(target):
                raise PermissionError(errno.EPERM, "Operation not permitted", os.fspath(src), os.fspath(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)


@needs_root
def test_the_sticky_entry_is_told_apart_from_a_folder_not_writable(tmp_path):
    folder = team(tmp_path)
    found = sticky.refused(EPERM, theirs(folder / "x.csv"))
    assert found is not None and found.owner == "uid 54321" and found.mode == 0o1777, found
    assert sticky.refused(PermissionError(errno.EACCES, "Permission denied"), folder / "x.csv") is None  # a mode's
    mine = folder / "mine.csv"
    mine.write_text("")
    assert sticky.refused(EPERM, mine) is None  # this user's own entry: the sticky bit does not stop its owner
    os.chown(folder, 0, -1)
    assert sticky.refused(EPERM, folder / "x.csv") is None  # the folder's owner may rename any entry


@needs_root
def test_a_reexport_over_a_colleagues_file_in_a_sticky_folder_says_so(tmp_path, monkeypatch):
    """Attack 34 #4b: "folder team is not writable by you; write to another folder", of a 1777 folder."""
    from featstore.outputs import write_text

    out = theirs(team(tmp_path) / "x.csv")
    refuse_renames_onto(monkeypatch, out)
    with pytest.raises(OutputError) as err:
        write_text(out, "a,b\n", "--out")
    line = str(err.value)
    assert f"{out} is uid 54321's, in a folder with the sticky bit ({out.parent}, mode 1777)" in line, line
    assert "ask uid 54321 to remove it" in line and "not writable" not in line, line
    assert out.read_text() == "x\n"


@needs_root
def test_the_clis_permission_line_says_sticky_folder_not_a_mode_that_lets_the_user_write(tmp_path):
    """Attack 34 #5: "you may not change it (a34bob's, mode 0666)": 0666 lets her write; the folder is sticky."""
    from featstore.cli.denied import denied_line

    record = theirs(team(tmp_path) / "s.h5.leaks.json")
    line = denied_line(PermissionError(errno.EPERM, "Operation not permitted", str(record)))
    assert "in a folder with the sticky bit" in line and "may not change it" not in line, line
    assert "ask uid 54321 to remove it" in line, line


def colleagues_run(tmp_path: Path, test: str = "none") -> tuple[Path, Path, str]:
    """(store, runs, run id): a run of the colleague's (fitted without a test split) in a sticky team runs folder."""
    from featstore import fit
    from tests.test_adversarial_attack3 import synthetic_store

    store = synthetic_store(tmp_path / "s.h5")
    runs = team(tmp_path)
    rid = fit(store, "logreg", runs=runs, test=test)["id"]
    for dirpath, dirnames, filenames in os.walk(runs / rid):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, COLLEAGUE, -1)
    return store, runs, rid


@needs_root
def test_evaluating_a_colleagues_run_in_a_sticky_runs_folder_says_whose_it_is_before_any_work(tmp_path, monkeypatch):
    """Attack 34 #4: "s.runs is not writable (Operation not permitted); make it writable": it is (1777)."""
    from featstore.experiments import evaluate

    store, runs, rid = colleagues_run(tmp_path)
    monkeypatch.setattr(sticky, "privileged", lambda: False)  # as an ordinary user, whom the sticky bit stops
    monkeypatch.setattr(evaluate, "add_split", lambda *a: pytest.fail("the run's new version was written"))
    _, figures, said = evaluate.evaluate_and_record(rid, "test", store, runs)
    assert said.startswith("not recorded: ") and f"{runs / rid} is uid 54321's, in a folder with the sticky bit" in said
    assert f"ask uid 54321 to run `featstore runs evaluate {rid}`" in said and "not writable" not in said, said
    assert figures["n"] == 15  # the figures are still computed and shown


@needs_root
def test_the_sticky_refusal_of_the_runs_swap_is_said_as_it_is(tmp_path, monkeypatch):
    from featstore.experiments.evaluate import evaluate_and_record

    store, runs, rid = colleagues_run(tmp_path)
    refuse_renames_onto(monkeypatch, runs / rid)
    said = evaluate_and_record(rid, "test", store, runs)[2]
    assert f"{runs / rid} is uid 54321's, in a folder with the sticky bit ({runs}, mode 1777)" in said, said
    assert "copy the run into a --runs folder of yours" in said and "not writable" not in said, said
    assert sorted(p.name for p in runs.iterdir()) == [rid]  # nothing half-made is left


@needs_root
def test_a_colleagues_hidden_run_in_a_sticky_runs_folder_names_who_can_put_it_back(tmp_path, monkeypatch):
    """Attack 34 #6: his `runs evaluate` killed between its two renames; for her, "featstore puts the run back 10
    minutes after its last change, or move <old> to <run>" (neither can happen: the sticky bit refuses both)."""
    import shutil
    import time

    from featstore.runs import swap

    store, runs, rid = colleagues_run(tmp_path)
    new, old = runs / f".{rid}.abcd.tmp", runs / f".{rid}.abcd.old.tmp"
    shutil.copytree(runs / rid, new)
    swap.mark(new, rid, "new")
    os.rename(runs / rid, old)
    swap.mark(old, rid, "old", "x")
    for folder in (new, old):
        for name in [folder, *folder.iterdir()]:
            os.lchown(name, COLLEAGUE, -1)
    refuse_renames_onto(monkeypatch, runs / rid)
    left = swap.reveal(runs, time.time() + 2 * swap.ORPHAN_AGE_S)  # his writer is gone, long ago
    line = left[rid]
    assert "by uid 54321's `runs evaluate`" in line, line
    assert f"{new} is uid 54321's, in a folder with the sticky bit" in line, line
    assert "uid 54321's next featstore command on this runs folder" in line and f"mv {new} {runs / rid}" in line, line
    assert "minutes after its last change" not in line, line
    assert sorted(p.name for p in runs.iterdir()) == sorted([new.name, old.name])


@needs_root
def test_leaks_with_a_colleagues_record_in_a_sticky_folder_sets_nothing_aside_and_says_why_once(tmp_path, monkeypatch):
    """Attack 34 #5: each run hard-linked his damaged record aside (`.damaged`, `.damaged.1`, ...), then could not
    replace it, in a line that said his 0666 file kept her out, and "... must be writable" of a 1777 folder."""
    from tests.test_adversarial_attack3 import synthetic_store
    from tests.test_adversarial_attack4 import cli, no_traceback

    folder = team(tmp_path)
    store = synthetic_store(folder / "s.h5")
    record = theirs(folder / "s.h5.leaks.json", "garbage\n")
    monkeypatch.setattr(sticky, "privileged", lambda: False)  # as an ordinary user, whom the sticky bit stops
    for _ in range(2):
        out = no_traceback(cli("leaks", "--store", store))
        assert f"leaks record not written: {record} is uid 54321's, in a folder with the sticky bit" in out, out
        assert "ask uid 54321 to remove it" in out and "must be writable" not in out, out
        assert "folder of yours. `featstore info` will not show these counts (printed above)." in out, out
        assert "test: 0 of 15 rows" in out, out
    assert sorted(p.name for p in folder.iterdir() if "leaks.json" in p.name) == [record.name]
    assert record.read_text() == "garbage\n"
    info = no_traceback(cli("info", store))  # "re-run featstore leaks to replace it", which never can for her
    assert "it is uid 54321's, in a folder with the sticky bit: ask uid 54321 to remove it, then re-run" in info, info


@needs_root
def test_a_damaged_record_that_cannot_be_removed_is_not_left_linked_aside(tmp_path, monkeypatch):
    """The kernel's EPERM at the unlink of his record (root is not stopped by the sticky bit, so the check before any
    work lets it through): the hard link made aside is taken back, and the line says why."""
    from featstore.experiments.leaks import record as leaks_record
    from tests.test_adversarial_attack17_runs import _report

    folder = team(tmp_path)
    record = theirs(folder / "s.h5.leaks.json", "garbage\n")
    real = os.unlink

    def unlink(path, *a, **k):
        if os.fspath(path) == str(record):
            raise PermissionError(errno.EPERM, "Operation not permitted", os.fspath(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OutputError, match="in a folder with the sticky bit"):
        leaks_record.write_record(_report(folder / "s.h5", "s1"))
    assert sorted(p.name for p in folder.iterdir() if "leaks.json" in p.name) == [record.name]


@needs_root
def test_a_colleagues_read_only_store_names_him_not_a_chmod_only_he_can_do(tmp_path, monkeypatch):
    """Attack 34 #3a: "store s.h5 is read-only; make it writable (chmod u+w s.h5)": only its owner may chmod it."""
    from featstore.errors import StoreError
    from featstore.store.space import check_writable
    from tests.test_adversarial_attack3 import synthetic_store

    store = synthetic_store(tmp_path / "s.h5")
    store.chmod(0o644)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, *a, **k: False if os.fspath(p) == str(store) else real(p, m, *a, **k)
    )
    with pytest.raises(StoreError, match=r"chmod u\+w"):  # one's own store: chmod is the fix
        check_writable(store)
    os.chown(store, COLLEAGUE, -1)
    with pytest.raises(StoreError) as err:
        check_writable(store)
    line = str(err.value)
    assert f"store {store} is uid 54321's and not writable by you (mode 0644): ask uid 54321 to make it" in line, line
    assert "copy it into a folder of yours and pass that --store" in line and "chmod u+w" not in line, line


@needs_root
def test_a_colleagues_scratch_base_is_said_once_with_a_fix_the_user_can_do(tmp_path, monkeypatch, caplog):
    """Attack 34 #3b: a colleague made ``/tmp/featstore-<her uid>`` first: "... Remove it" (in sticky /tmp only he
    may), printed twice per command."""
    import tempfile

    from featstore.models.scratch import scratch_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    base = tmp_path / f"featstore-{os.geteuid()}"
    base.mkdir(mode=0o755)
    os.chown(base, COLLEAGUE, -1)
    for _ in range(2):
        with scratch_folder("preset") as tmp:
            assert tmp.parent == tmp_path
    said = [r.getMessage() for r in caplog.records if r.name == "featstore.models.scratch"]
    assert len(said) == 1, said
    assert f"{base} is not a private folder of yours (it is uid 54321's)" in said[0], said
    assert "ask uid 54321 or an admin to remove it, or set TMPDIR to a folder of yours" in said[0], said


@needs_root
def test_a_report_of_a_store_whose_cache_folder_is_a_colleagues_uses_a_private_one(tmp_path, monkeypatch):
    """Attack 34 #4b: a colleague's ``0700`` ``<store>.cache`` (his earlier report of the team store): every report of
    hers failed, "cannot use the cache folder ...: folder team is not writable by you" (no option moves the cache)."""
    from featstore.report.site.build import build_report
    from tests.test_adversarial_attack3 import synthetic_store

    folder = team(tmp_path)
    store = synthetic_store(folder / "s.h5")
    cache = folder / "s.h5.cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, COLLEAGUE, -1)
    real = os.open

    def closed(path, flags, *a, **k):  # his 0700 folder, as she meets it
        full = os.path.join(os.readlink(f"/proc/self/fd/{k['dir_fd']}"), path) if k.get("dir_fd") else path
        if os.path.abspath(os.fspath(full)) == str(cache):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", closed)
    result = build_report(store, out=tmp_path / "rep", map_method="pca")
    assert (tmp_path / "rep" / "index.html").is_file() and not list(cache.iterdir())
    note = f"the cache folder {cache} is uid 54321's and closed to you (mode 0700: featstore makes each user's caches"
    assert any("caches are not kept" in n and note in n for n in result.notes), result.notes


@needs_root
@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_colleagues_file_or_link_at_out_in_a_sticky_folder_names_whose_not_remove_it(tmp_path, monkeypatch, kind):
    """Attack 45 #6: his notes or his link at --out in a 1777 drop folder got "remove that file first" / "Remove it",
    which she cannot do. Sabotage: the sticky check left out of check_output: the old lines come back."""
    from featstore.outputs import check_own_output

    folder = team(tmp_path)
    out = folder / ("out.csv" if kind == "file" else "link.csv")
    if kind == "file":
        theirs(out)
    else:
        out.symlink_to(tmp_path / "elsewhere.csv")
        os.lchown(out, 54321, 54321)
    monkeypatch.setattr(sticky, "privileged", lambda: False)  # as an ordinary user, whom the sticky bit stops
    with pytest.raises(OutputError) as got:
        check_own_output(out, "--out", "an export (csv)", (".csv",), lambda p: False)
    line = str(got.value)
    assert f"{out} is uid 54321's, in a folder with the sticky bit ({folder}, mode 1777)" in line, line
    assert "ask uid 54321 to remove it" in line and "emove it or" not in line and "remove that file" not in line, line
