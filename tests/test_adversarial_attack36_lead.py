"""Attack 36 #3-#5: teams share a folder by a default ACL or a set-group-ID bit, and a run by its group bits.

featstore makes every output and folder private first and gives it its final mode once complete. That mode was the
umask's: in a folder with a default ACL (where a plain ``open``/``mkdir`` ignores the umask) the ACL's mask became the
umask's group bits, so a colleague granted ``rwx`` could not write a run (#5); the chmod cleared the set-group-ID bit
a new folder inherits, so figures drawn into a run later got the drawer's own group (#4); and a colleague's ``runs
evaluate`` made the owner's group-writable run a folder of hers with her umask's mode, shutting its author out (#3),
while her lock file (``0644``) made his concurrent command run unlocked beside hers. Root's made-up colleague: uid
54321, group 54320."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from featstore.modes import DEFAULT_ACL, fresh_mode
from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback

COLLEAGUE, TEAM = 54321, 54320
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to made-up users and groups needs root")
ANY = 0xFFFFFFFF  # an ACL entry's id where it has none


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def shared_by_acl(folder: Path) -> Path:
    """``folder`` with the default ACL ``setfacl -d -m u::rwx,u:54321:rwx,g::r-x,m::rwx,o::---`` (skips where the
    file system keeps no ACLs)."""
    folder.mkdir()
    try:
        os.setxattr(
            folder,
            DEFAULT_ACL,
            _acl((0x01, 7, ANY), (0x02, 7, COLLEAGUE), (0x04, 5, ANY), (0x10, 7, ANY), (0x20, 0, ANY)),
        )
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"this file system keeps no ACLs ({exc.strerror})")
        raise
    return folder


def _mask(path: Path) -> int:
    """The ACL mask's permissions of ``path``'s access ACL."""
    acl = os.getxattr(path, "system.posix_acl_access")
    return next(p for t, p in (struct.unpack_from("<HH", acl, at) for at in range(4, len(acl), 8)) if t == 0x10)


def test_fresh_mode_is_what_a_plain_open_or_mkdir_gives(tmp_path):
    folder = shared_by_acl(tmp_path / "team")
    (folder / "plain").mkdir()
    (folder / "plain.txt").write_text("")
    fd = os.open(folder, os.O_RDONLY)
    try:
        assert fresh_mode(fd, folder=True) == stat.S_IMODE((folder / "plain").stat().st_mode) == 0o770
        assert fresh_mode(fd, folder=False) == stat.S_IMODE((folder / "plain.txt").stat().st_mode) == 0o660
    finally:
        os.close(fd)
    old = os.umask(0o027)
    try:
        assert fresh_mode(-1, folder=True) == 0o750 and fresh_mode(-1, folder=False) == 0o640
    finally:
        os.umask(old)


def test_outputs_and_run_folders_in_a_folder_shared_by_a_default_acl_keep_the_colleagues_grant(tmp_path):
    """#5: the run folder's mask was r-x and an export's r-- (umask 022): the colleague's rwx could not write."""
    from featstore import fit
    from featstore.outputs import write_text

    folder = shared_by_acl(tmp_path / "team")
    old = os.umask(0o022)
    try:
        out = write_text(folder / "x.csv", "a,b\n", "--out")
        store = synthetic_store(folder / "s.h5")
        rid = fit(store, "logreg", runs=folder / "s.runs")["id"]
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o660 and _mask(out) == 6, oct(out.stat().st_mode)
    run = folder / "s.runs" / rid
    assert stat.S_IMODE(run.stat().st_mode) == 0o770 and _mask(run) == 7, oct(run.stat().st_mode)


@needs_root
def test_a_run_folder_keeps_its_team_folders_set_group_id_bit_and_its_figures_the_group(tmp_path):
    """#4: the run folder lost the bit, so `runs show`'s figures got the drawer's primary group."""
    from featstore import fit
    from tests.test_adversarial_attack4 import cli, no_traceback

    team = tmp_path / "team"
    team.mkdir()
    os.chown(team, -1, TEAM)
    team.chmod(0o2770)
    store = synthetic_store(team / "s.h5")
    rid = fit(store, "logreg", runs=team / "s.runs")["id"]
    run = team / "s.runs" / rid
    assert run.stat().st_mode & stat.S_ISGID and run.stat().st_gid == TEAM, oct(run.stat().st_mode)
    no_traceback(cli("runs", "--store", store, "--runs", team / "s.runs", "show", rid))
    figures = sorted(run.glob("*.png"))
    assert figures and {p.stat().st_gid for p in figures} == {TEAM}, [(p.name, p.stat().st_gid) for p in figures]


@needs_root
def test_recording_a_split_in_a_colleagues_group_writable_run_keeps_it_writable_by_its_author(tmp_path):
    """#3: the new version was the recorder's folder with her umask's mode (0755): its author could no longer write it."""
    from tests.test_adversarial_attack4 import cli, no_traceback

    team = tmp_path / "team"
    team.mkdir()
    store = synthetic_store(team / "s.h5")
    synthetic_store(store, splits=("v2",))  # a split the run was not evaluated on
    runs = team / "s.runs"
    no_traceback(cli("fit", "--store", store, "--runs", runs, "--clf", "logreg"))
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    os.chown(run, COLLEAGUE, TEAM)  # the colleague's run, group-writable, in the team's group
    run.chmod(0o775)
    old = os.umask(0o022)
    try:
        out = no_traceback(cli("runs", "--store", store, "--runs", runs, "evaluate", run.name, "--split", "v2"))
    finally:
        os.umask(old)
    assert "recorded in run" in out, out
    st = run.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o775 and st.st_gid == TEAM, (st.st_uid, oct(st.st_mode))


def _denied(monkeypatch) -> None:
    """What an ordinary user meets opening another user's 0644 lock file for writing (root opens it): EACCES."""
    from filelock import FileLock

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", self.lock_file)

    monkeypatch.setattr(FileLock, "acquire", denied)


def test_another_users_lock_file_still_keeps_two_commands_apart(tmp_path, monkeypatch, caplog):
    """#3 (seen on the way): her 0644 lock file could not be opened for writing, so his command ran unlocked beside
    hers, with a warning that a killed command had left it. flock needs no write access: a read-only descriptor locks."""
    import fcntl

    from featstore.runs.versions import run_lock

    lock = tmp_path / ".r1.lock"
    lock.touch()
    _denied(monkeypatch)
    hers = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(hers, fcntl.LOCK_EX)  # her command, running
        with caplog.at_level("WARNING", logger="featstore"), run_lock(tmp_path, "r1", wait=False) as held:
            assert held is False  # busy: not run beside hers
        assert not [r for r in caplog.records if "not locked" in r.getMessage()]
    finally:
        os.close(hers)  # her command ends
    with run_lock(tmp_path, "r1", wait=False) as held:
        assert held is True
    assert not lock.exists()  # removed on release, as a lock of one's own


def test_a_lock_file_the_user_may_not_even_read_is_said_not_silently_skipped(tmp_path, monkeypatch, caplog):
    from featstore.runs.versions import run_lock

    lock = tmp_path / ".r1.lock"
    lock.touch()
    _denied(monkeypatch)
    real = os.open

    def no_read(path, flags, *a, **k):
        if os.fspath(path) == str(lock):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", no_read)
    with caplog.at_level("WARNING", logger="featstore"), run_lock(tmp_path, "r1") as held:
        assert held is True
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"run r1 is not locked: {lock} is " in said and "which you may not lock" in said, said
    assert "may be running now" in said, said  # not only "a killed command left it"


@needs_root
@pytest.mark.parametrize("when", ["ahead", "at the rename"])
def test_resuming_a_colleagues_store_in_a_sticky_folder_says_who_can(tmp_path, monkeypatch, when):
    """#9: the rename's EPERM named the temporary relative to the folder's descriptor: "you may not make files in the
    folder <the user's current folder>", and nothing said that only the store's owner can resume it."""
    from featstore import sticky
    from featstore.errors import StoreError
    from featstore.store.compact import compact
    from tests.test_adversarial_attack34_sticky import refuse_renames_onto, team

    store = synthetic_store_in(team(tmp_path))
    os.chown(store, COLLEAGUE, -1)
    before = store.read_bytes()
    if when == "ahead":  # an ordinary user: said before any copy
        monkeypatch.setattr(sticky, "privileged", lambda: False)
    else:  # the kernel's EPERM at the rename (root is not stopped by the sticky bit: simulated)
        refuse_renames_onto(monkeypatch, store)
    with pytest.raises(StoreError) as err:
        compact(store)
    line = str(err.value)
    assert line.startswith(f"cannot resume store {store}: {store} is uid {COLLEAGUE}'s, in a folder with the sticky"), (
        line
    )
    assert f"Ask uid {COLLEAGUE} to run the same command" in line, line
    assert store.read_bytes() == before and sorted(p.name for p in store.parent.iterdir()) == ["s.h5"]


def synthetic_store_in(folder: Path) -> Path:

    return synthetic_store(folder / "s.h5")


@needs_root
def test_a_colleagues_link_refused_by_protected_symlinks_gets_the_link_rules_line(tmp_path):
    """#8: under fs.protected_symlinks=1 (most distributions' default) the kernel answers EACCES for a colleague's link
    in a sticky folder before featstore's link rule looks; the CLI said "you may not read it (owner unknown). Ask its
    owner for access", of a file the user may read."""
    from featstore.cli.denied import denied_line
    from tests.test_adversarial_attack34_sticky import team

    folder = team(tmp_path)
    real = folder / "real.keras"
    real.write_bytes(b"PK")
    link = folder / "m.keras"
    link.symlink_to(real)
    os.lchown(link, COLLEAGUE, -1)
    line = denied_line(PermissionError(errno.EACCES, "Permission denied", str(link)))
    assert line.startswith(f"the path {link} leads through {link}, a symbolic link made by uid {COLLEAGUE}"), line
    assert f"give {real}" in line and f"rm {link}" in line, line


def _closed_to_us(monkeypatch, folder: Path) -> None:
    """``folder`` (the colleague's) as an ordinary user meets it, mode 0700: opening it or anything in it is EACCES
    (root opens them)."""
    os.chown(folder, COLLEAGUE, -1)
    folder.chmod(0o700)
    real = os.open

    def closed(path, flags, *a, dir_fd=None, **k):
        full = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path) if dir_fd is not None else os.fspath(path)
        if os.path.abspath(full) == str(folder) or os.path.abspath(full).startswith(f"{folder}/"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *a, dir_fd=dir_fd, **k)

    monkeypatch.setattr(os, "open", closed)


@needs_root
def test_a_colleagues_similarity_index_is_not_used_and_the_search_is_exact(tmp_path, monkeypatch, caplog):
    """#7: his `similar --build-index` made `<store>.index/` his (0700, by design); every `similar` of hers then failed
    with "folder ... is not writable by you", of a folder she may write, and `--exact` was not named."""
    from featstore.errors import FeatstoreError
    from featstore.experiments.similar import similar
    from featstore.experiments.similar_index import build_similarity_index
    from tests.test_adversarial_attack4 import cli, no_traceback

    store = synthetic_store_in(tmp_path)
    build_similarity_index(store, None, "train")
    _closed_to_us(monkeypatch, tmp_path / "s.h5.index")
    with caplog.at_level("WARNING", logger="featstore"):
        assert similar("train/0", store, k=3).method == "exact"
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{tmp_path / 's.h5.index'} is uid {COLLEAGUE}'s and closed to you (mode 0700" in said, said
    assert "the search is exact" in said, said
    with pytest.raises(FeatstoreError, match="--exact"):
        similar("train/0", store, k=3, use_index=True)
    out = no_traceback(cli("similar", "train/0", "--store", store, "--split", "train", "--build-index"))
    assert f"is uid {COLLEAGUE}'s and closed to you" in out and "or search without an index: --exact" in out, out


@needs_root
def test_a_colleagues_run_closed_to_the_user_is_said_as_his_not_broken(tmp_path, monkeypatch):
    """#10: his run folder 0700 (fitted with umask 077): listed as "broken", with "remove <his run folder>", which a
    group-writable runs folder let her do to his intact run."""
    from featstore import fit

    store, runs = synthetic_store_in(tmp_path), tmp_path / "runs"
    his, mine = fit(store, "logreg", runs=runs)["id"], fit(store, "svm", runs=runs)["id"]
    _closed_to_us(monkeypatch, runs / his)
    out = no_traceback(cli("runs", "--store", store, "--runs", runs))
    assert "1 run folder(s) of other users not readable by you, not used:" in out and "broken" not in out, out
    assert f"is uid {COLLEAGUE}'s and not readable by you ({runs / his}: mode 0700)" in out and mine in out, out
    assert f"ask uid {COLLEAGUE} to share the run (chmod -R g+rX {runs / his})" in out and "remove" not in out, out
    out = no_traceback(cli("runs", "--store", store, "--runs", runs, "show", his))
    assert f"run {his} cannot be used: run record" in out and "remove" not in out, out


@needs_root
def test_a_colleagues_model_file_closed_to_the_user_is_said_as_his(tmp_path, monkeypatch):
    """#10: his model file 0600 in a readable run: "run artifact ... cannot be opened: Permission denied"."""
    from featstore import fit

    store, runs = synthetic_store_in(tmp_path), tmp_path / "runs"
    rid = fit(store, "logreg", runs=runs)["id"]
    synthetic_store(store, splits=("v2",))  # a split the run was not evaluated on: its model is loaded
    model = runs / rid / "model.skops"
    os.chown(model, COLLEAGUE, -1)
    real = os.open

    def closed(path, flags, *a, dir_fd=None, **k):
        name = os.fspath(path)
        reopened = name.startswith("/proc/self/fd/") and os.readlink(name) == str(model)  # an O_PATH descriptor's
        if (name == str(model) or reopened) and not flags & getattr(os, "O_PATH", 0):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *a, dir_fd=dir_fd, **k)

    monkeypatch.setattr(os, "open", closed)
    out = no_traceback(cli("runs", "--store", store, "--runs", runs, "evaluate", rid, "--split", "v2"))
    assert f"run artifact {model} is uid {COLLEAGUE}'s and not readable by you" in out and "remove" not in out, out


@needs_root
def test_a_colleagues_world_writable_run_does_not_make_the_users_version_world_writable(tmp_path):
    """Attack 38 #1 (of #3's fix): his 0777 run gave her recorded version 0777: anyone could plant files in her folder."""
    store, runs, run = colleagues_run(tmp_path, 0o777)
    out = no_traceback(cli("runs", "--store", store, "--runs", runs, "evaluate", run.name, "--split", "v2"))
    assert "recorded in run" in out and stat.S_IMODE(run.stat().st_mode) == 0o775, (out, oct(run.stat().st_mode))


@needs_root
def test_evaluating_a_colleagues_run_the_user_may_not_change_is_said_before_any_work(tmp_path, monkeypatch):
    """Attack 38 #3: his run made with umask 022 (0755) in the team's group-writable runs folder: her evaluate computed
    the split, then said "<runs> is not writable; make it writable", of a runs folder she may write."""
    from featstore import sticky
    from featstore.experiments import evaluate

    store, runs, run = colleagues_run(tmp_path, 0o755)
    monkeypatch.setattr(sticky, "privileged", lambda: False)  # an ordinary user, whom the folder's mode stops
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(run) else real(p, m, **k))
    scored = []
    monkeypatch.setattr(evaluate, "add_split", lambda *a, **k: scored.append(1))  # reached only if not refused
    out = no_traceback(cli("runs", "--store", store, "--runs", runs, "evaluate", run.name, "--split", "v2"))
    assert f"run folder {run} is uid {COLLEAGUE}'s (mode 0755), which you may not change" in out, out
    assert f"ask uid {COLLEAGUE} to run `featstore runs evaluate {run.name}`" in out and "is not writable" not in out
    assert not scored


def test_a_link_swapped_in_at_a_lock_name_is_refused_not_run_unlocked(tmp_path, monkeypatch):
    """Attack 38 #7: a link put at the lock's name after its check (while the user waited) made the block run with
    nothing locked, silently (held=True)."""
    from featstore.errors import StoreError
    from featstore.runs import versions

    lock = tmp_path / ".r1.lock"
    real = versions._acquire

    def swapped(*a, **k):  # the colleague's link lands between the check and the lock's own open (O_NOFOLLOW)
        lock.unlink(missing_ok=True)
        lock.symlink_to(tmp_path / "elsewhere")
        return real(*a, **k)

    monkeypatch.setattr(versions, "_acquire", swapped)
    with pytest.raises(StoreError, match="is not a regular file"), versions.run_lock(tmp_path, "r1"):
        pass


@needs_root
def test_resuming_a_colleagues_world_writable_store_gives_no_o_plus_w(tmp_path):
    """Attack 38 #11: resuming bob's interrupted 0777 store made the rewritten store the user's file, mode 0777."""
    from featstore.store.compact import compact

    store = synthetic_store_in(tmp_path)
    os.chown(store, COLLEAGUE, -1)
    store.chmod(0o777)
    compact(store)
    assert stat.S_IMODE(store.stat().st_mode) == 0o775, oct(store.stat().st_mode)


def test_share_fix_says_chgrp_where_the_user_is_not_in_the_group(tmp_path):
    """Attack 38 #5, #10: "chmod g+w" of a run in its owner's own group lets no one else in."""
    from featstore.sticky import share_fix

    st = os.stat(tmp_path)
    assert share_fix(st, tmp_path, "w") == f"chmod -R g+w {tmp_path}"  # the user's own group
    other = os.stat_result((*st[:5], 54329, *st[6:]))  # a group the user is not in
    assert share_fix(other, tmp_path, "w").startswith("chgrp -R <a group you both are in>"), share_fix(
        other, tmp_path, "w"
    )


def test_a_hard_link_at_a_run_lock_name_is_refused(tmp_path, monkeypatch):
    """Attack 38 #4: a colleague's hard link to the store at a run's lock name: the run lock held the store's inode, and
    the store's own HDF5 lock then waited 120 s on it and blamed "another process"."""
    from featstore.errors import StoreError
    from featstore.runs.versions import run_lock

    store = synthetic_store_in(tmp_path)
    os.link(store, tmp_path / ".r1.lock")
    with pytest.raises(StoreError, match="is not featstore's lock file"), run_lock(tmp_path, "r1"):
        pass
    _denied(monkeypatch)  # the same through a read-only descriptor (the store 0644 to the user)
    with pytest.raises(StoreError, match="is not featstore's lock file"), run_lock(tmp_path, "r1"):
        pass


def colleagues_run(tmp_path: Path, mode: int) -> tuple[Path, Path, Path]:
    """A store with a split ``v2`` no run was evaluated on, and a logreg run of the colleague's (group TEAM, ``mode``):
    (store, runs folder, run folder)."""
    store, runs = synthetic_store_in(tmp_path), tmp_path / "runs"
    synthetic_store(store, splits=("v2",))
    no_traceback(cli("fit", "--store", store, "--runs", runs, "--clf", "logreg"))
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    os.chown(run, COLLEAGUE, TEAM)
    run.chmod(mode)
    return store, runs, run
