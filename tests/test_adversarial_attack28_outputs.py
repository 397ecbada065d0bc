"""Attack 28 #5, #6 (branch attack28, reproducers ``output_drops_acl_group.py``, ``evaluate_opens_private_run.py``): a
replaced output kept only the old file's mode bits, not its group, ACL or user.* attributes; a run's new version
(``runs evaluate``) and a re-export of shards got the umask's modes, opening a run or export made private
(``chmod -R go-rwx``) to every user. Stores are synthetic (no TensorFlow); the group cases need root (chgrp to any
group), ACL cases a file system that takes them."""

from __future__ import annotations

import errno
import logging
import os
import struct

import pytest

from featstore.errors import OutputError
from featstore.outputs import write_text
from tests import test_adversarial_attack14 as a14

store_src, store, run = a14.store_src, a14.store, a14.run  # a synthetic 4-split store and a logreg run of it

ACL = "system.posix_acl_access"
NOID, BOB, TEAM = 0xFFFFFFFF, 54321, 4242


def _acl(group_perm: int = 0, default: bool = False) -> bytes:
    """``user::rw- user:bob:r-- group::<group_perm> mask::r-- other::---`` as setfacl writes it (``default``: rwx)."""
    own = 7 if default else 6
    entries = [(0x01, own, NOID), (0x02, 4, BOB), (0x04, group_perm, NOID), (0x10, 4, NOID), (0x20, 0, NOID)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _entries(acl: bytes) -> dict[tuple[int, int], int]:
    """An ACL's entries: ``{(tag, id): permissions}``."""
    return {(t, i): p for t, p, i in (struct.unpack_from("<HHI", acl, at) for at in range(4, len(acl), 8))}


def _set(path, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value)
    except OSError as exc:
        pytest.skip(f"this file system takes no {name} ({exc.strerror})")


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file a group this user is not in needs root")


def test_a_replaced_output_keeps_its_acl_and_user_attributes(tmp_path):
    """#5 A: `setfacl -m u:bob:r train.csv` (group::---) was dropped by the next export: bob locked out, the file's group
    let in (the mode's group bits were the ACL's mask). Sabotage: the ``give`` call in ``write_atomic`` removed fails
    it."""
    out = tmp_path / "train.csv"
    write_text(out, "a\n", "--out")
    _set(out, ACL, _acl())
    _set(out, "user.project", b"thesis")
    acl = os.getxattr(out, ACL)
    write_text(out, "b\n", "--out")
    assert out.read_text() == "b\n" and os.getxattr(out, ACL) == acl
    assert os.getxattr(out, "user.project") == b"thesis" and os.stat(out).st_mode & 0o777 == 0o640


def test_a_replaced_output_keeps_its_group(tmp_path):
    """#5 B: `chgrp team results.csv` went back to the user's primary group, locking the team out. Sabotage: the
    ``fchown`` in ``carry.own_permissions`` removed fails it."""
    _root()
    out = tmp_path / "results.csv"
    write_text(out, "a\n", "--out")
    os.chown(out, -1, TEAM)
    os.chmod(out, 0o640)
    write_text(out, "b\n", "--out")
    st = os.stat(out)
    assert (st.st_gid, st.st_mode & 0o777, out.read_text()) == (TEAM, 0o640, "b\n")


def test_a_group_the_user_may_not_give_gets_no_access_and_is_said(tmp_path, monkeypatch, caplog):
    """Where the old group cannot be given (the user is not in it), the new file is in the user's group: that group
    had no access, so it gets none (mode bits and the ACL's group:: entry cleared; bob's grant and the mask kept), and
    one warning line says so. Sabotage: ``mode &= ~0o070`` removed fails the plain file; ``_no_group`` returning the
    ACL unchanged fails the ACL one."""
    _root()
    plain, shared = tmp_path / "plain.csv", tmp_path / "shared.csv"
    for out in (plain, shared):
        write_text(out, "a\n", "--out")
        os.chown(out, -1, TEAM)
        os.chmod(out, 0o640)
    _set(shared, ACL, _acl(group_perm=4))

    def refused(fd, uid, gid):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    with caplog.at_level(logging.WARNING, "featstore.carry"):
        write_text(plain, "b\n", "--out")
        write_text(shared, "b\n", "--out")
    st = os.stat(plain)
    assert (st.st_gid, st.st_mode & 0o777) == (os.getegid(), 0o600)
    got = _entries(os.getxattr(shared, ACL))
    assert os.stat(shared).st_gid == os.getegid() and got[(0x04, NOID)] == 0  # group:: emptied
    assert got[(0x02, BOB)] == 4 and got[(0x10, NOID)] == 4  # bob still reads
    lines = [r.getMessage() for r in caplog.records if "which you may not give" in r.getMessage()]
    assert len(lines) == 2 and "plain.csv" in lines[0] and "chgrp" in lines[0], lines


def test_an_acl_the_new_file_cannot_take_is_refused_and_nothing_is_replaced(tmp_path, monkeypatch):
    """One line naming the attribute and the fix, the old file unchanged. Sabotage: ``raise refuse(...)`` in
    ``carry.own_xattrs`` replaced by ``continue`` fails it."""
    out = tmp_path / "train.csv"
    write_text(out, "a\n", "--out")
    _set(out, ACL, _acl())

    def refused(fd, name, value, *a):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refused)
    with pytest.raises(OutputError) as err:
        write_text(out, "b\n", "--out")
    text = str(err.value)
    assert f"--out {out} carries the extended attribute {ACL}" in text and "nothing was written there" in text
    assert "setfacl -b" in text and out.read_text() == "a\n" and os.getxattr(out, ACL) == _acl()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


def test_an_acl_inherited_from_the_folder_is_not_added_to_a_file_that_had_none(tmp_path):
    """A folder's default ACL reached the new file through its private folder: a file whose ACL the user removed
    (setfacl -b) got one back. Sabotage: the ``removexattr`` loop in ``carry.own_xattrs`` removed fails it."""
    folder = tmp_path / "team"
    folder.mkdir()
    out = folder / "train.csv"
    write_text(out, "a\n", "--out")
    _set(folder, "system.posix_acl_default", _acl(default=True))
    write_text(out, "b\n", "--out")
    with pytest.raises(OSError):
        os.getxattr(out, ACL)
    assert os.stat(out).st_mode & 0o777 == 0o644 or os.stat(out).st_mode & 0o777 == 0o664


def test_runs_evaluate_keeps_a_private_runs_modes_group_and_acl(run):
    """#6: a run made private (chmod -R go-rwx) came back 0755 with run.json and predictions.npz 0644, readable by
    every user. Sabotage: ``mode = None`` in place of ``_own(new, folder)`` in ``add_split`` fails the folder's mode;
    the file loop of ``carry.give_folder`` removed fails the files'."""
    from featstore.experiments.evaluate import evaluate_and_record

    store, runs, rid = run
    folder = runs / rid
    os.chmod(folder, 0o700)
    for p in folder.iterdir():
        os.chmod(p, 0o600)
    _set(folder / "run.json", ACL, _acl())
    if os.geteuid() == 0:
        for p in (folder, *folder.iterdir()):
            os.chown(p, -1, TEAM)
    evaluate_and_record(rid, "test", store, runs)
    assert os.stat(folder).st_mode & 0o7777 == 0o700
    modes = {p.name: os.stat(p).st_mode & 0o777 for p in folder.iterdir()}
    assert modes.pop("run.json") == 0o640 and set(modes.values()) == {0o600}, modes  # run.json's: the ACL's mask
    assert os.getxattr(folder / "run.json", ACL) == _acl()
    if os.geteuid() == 0:
        assert {os.stat(p).st_gid for p in (folder, *folder.iterdir())} == {TEAM}


def test_a_reexport_of_shards_keeps_the_folders_and_shards_modes_and_group(store, tmp_path):
    """#6 (shards): `export --rows-per-file` again replaced a 0700 folder of 0600 shards with 0755 / 0644 ones. A shard
    the earlier export did not have takes the first earlier shard's. Sabotage: ``mode = None`` kept in
    ``write_shards`` (no ``give_folder``) fails it."""
    pytest.importorskip("pyarrow")
    from featstore import export

    out = tmp_path / "sh"
    export(store, "train", out, rows_per_file=10)
    os.chmod(out, 0o700)
    for p in out.iterdir():
        os.chmod(p, 0o600)
        if os.geteuid() == 0:
            os.chown(p, -1, TEAM)
    if os.geteuid() == 0:
        os.chown(out, -1, TEAM)
    before = len(list(out.iterdir()))
    export(store, "train", out, rows_per_file=3)
    shards = list(out.iterdir())
    assert len(shards) > before and os.stat(out).st_mode & 0o777 == 0o700
    assert {os.stat(p).st_mode & 0o777 for p in shards} == {0o600}
    if os.geteuid() == 0:
        assert {os.stat(p).st_gid for p in (out, *shards)} == {TEAM}


def test_a_resumes_rewrite_in_a_group_it_may_not_give_is_said_and_closed_to_that_group(store, monkeypatch, caplog):
    """The compaction shares the helpers (moved from store/compact.py to featstore/carry.py): its group left the
    writer's with the old group's bits (0660 for another group) and no word. Sabotage: the ``say_group`` call in
    ``compact._own_xattrs`` removed fails it."""
    from featstore.store.compact import compact

    _root()
    os.chown(store, -1, TEAM)
    os.chmod(store, 0o660)

    def refused(fd, uid, gid):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    with caplog.at_level(logging.WARNING, "featstore.carry"):
        compact(store)
    st = os.stat(store)
    assert (st.st_gid, st.st_mode & 0o777) == (os.getegid(), 0o600)
    (line,) = [r.getMessage() for r in caplog.records if "which you may not give" in r.getMessage()]
    assert line.startswith(f"store {store} was in group") and f"chgrp {TEAM} {store} && chmod g+rw {store}" in line


def test_another_users_file_at_the_name_gives_its_replacement_nothing(tmp_path):
    """Attack 30 #2: a colleague's earlier export at the name, with her ACL entry, made the user's re-export (umask 077)
    a file of the user's that she could read and rewrite: only this user's own file passes on its mode, group and ACL;
    another's replacement gets the umask's mode. Sabotage: the ``st_uid`` test in ``carry.Own.of`` removed fails it."""
    _root()
    out = tmp_path / "train.csv"
    write_text(out, "a\n", "--out")
    _set(out, ACL, _acl(group_perm=6))
    os.chmod(out, 0o660)
    os.chown(out, BOB, -1)  # hers
    mask = os.umask(0o077)
    try:
        write_text(out, "b\n", "--out")
    finally:
        os.umask(mask)
    st = os.stat(out)
    assert out.read_text() == "b\n" and st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o600
    with pytest.raises(OSError) as err:
        os.getxattr(out, ACL)
    assert err.value.errno == errno.ENODATA
