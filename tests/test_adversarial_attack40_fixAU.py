"""Attack 40 #1, #4, #5.

#1: ``others_may_write`` read the mode bits only. With an access ACL the group bits are the ACL's mask over every named
user and group, and the "user's own private group" exception (umask 002) trusted a Keras cache, or Ray's cluster file,
that a colleague named in the ACL (``setfacl -m u:bob:rwx``) may write. The ACL's entries are read now (the file's
descriptor or path): a named user other than this one, or a group other than the user's private one, with ``w``, may
write. Where the file system has no ACLs, the mode bits alone, as before.

#5: in a set-group-ID folder of a group the user is not in, a folder featstore made (0700, written, then given its
final mode by ``fchmod``) lost the bit a plain ``mkdir`` keeps: Linux clears it on a chmod by a non-member. Where the
mode already matches no chmod is made; else, where no one else may write a folder of that mode, a plain ``mkdir``
beside it takes its entries and its place. Root keeps the bit on a chmod, so the kernel's clearing is simulated.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from featstore import modes, renames
from featstore.errors import ConfigError, OutputError
from featstore.modes import others_may_write

OTHER = 54321  # a user and group that are not this one


def _setfacl(path: Path, *args: str) -> None:
    """``setfacl args path``; skips where there is no setfacl or the file system takes no ACLs."""
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed")
    if subprocess.run(["setfacl", *args, str(path)], check=False, capture_output=True).returncode:
        pytest.skip("this file system takes no ACLs")


@pytest.fixture
def own_group(monkeypatch):
    """The user's group taken as the user's private group (no one else in it), as on Debian with umask 002."""
    monkeypatch.setattr(modes, "_private_group", lambda gid: gid == os.getegid())


def _may_write(path: Path) -> tuple[bool, bool]:
    """``others_may_write`` of ``path`` asked by its path and by a descriptor of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return others_may_write(os.stat(path), path), others_may_write(os.fstat(fd), fd)
    finally:
        os.close(fd)


@pytest.mark.usefixtures("own_group")
def test_a_file_a_named_acl_user_may_write_is_others_may_write(tmp_path):
    """#1. Sabotage: ``_access_acl`` returning None (the mode bits alone) fails it."""
    file = tmp_path / "ray_current_cluster"
    file.write_text("127.0.0.1:9\n")
    file.chmod(0o664)  # umask 002 in the user's private group: no one else may write it
    assert _may_write(file) == (False, False)
    _setfacl(file, "-m", f"u:{OTHER}:rw-")  # ls: -rw-rw-r--+ (the group bits are the mask now)
    assert (file.stat().st_mode & 0o777) == 0o664
    assert _may_write(file) == (True, True)
    _setfacl(file, "-m", "m::r--")  # the mask takes w from every named entry: no one else may write
    assert _may_write(file) == (False, False)
    _setfacl(file, "-b")
    _setfacl(file, "-m", f"u:{os.geteuid()}:rw-,g:{OTHER}:r--")  # the user named, a group that may only read
    assert _may_write(file) == (False, False)
    _setfacl(file, "-m", f"g:{OTHER}:rw-")  # a colleague's group that may write
    assert _may_write(file) == (True, True)
    assert others_may_write(file.stat()) is False  # (no descriptor nor path given: the mode bits, as before)


@pytest.mark.usefixtures("own_group")
def test_without_acls_the_mode_bits_alone(tmp_path, monkeypatch):
    """#1: a file system without ACLs (ENOTSUP) or a system without xattrs: the private group exception as before."""
    file = tmp_path / "f"
    file.write_text("x")
    file.chmod(0o664)

    def unsupported(*a, **k):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "getxattr", unsupported)
    assert _may_write(file) == (False, False)
    file.chmod(0o666)
    assert _may_write(file) == (True, True)


@pytest.mark.usefixtures("own_group")
def test_a_keras_cache_shared_by_an_acl_is_not_private(tmp_path):
    """#1: ``KERAS_HOME`` shared with a colleague by ``setfacl -m u:bob:rwx`` (``drwxrwxr-x+``): Keras's download folder
    that others can write, refused (it was taken as private and Keras downloaded into it by name). Sabotage: weights's
    ``others_may_write(st, folder)`` given no path fails it."""
    from featstore.models.weights import _others_write

    home = tmp_path / ".keras"
    (home / "models").mkdir(parents=True)
    (home / "models").chmod(0o775)
    assert _others_write(home / "models", home) is None
    _setfacl(home / "models", "-m", f"u:{OTHER}:rwx")
    assert _others_write(home / "models", home) == home / "models"


@pytest.mark.usefixtures("own_group")
def test_rays_cluster_file_a_named_acl_user_may_write_is_not_trusted(tmp_path, monkeypatch):
    """#1: ``--address auto`` with Ray's file of the user's (0664, the user's private group) that ``u:bob:rw`` may write:
    its address not used. Sabotage: ray.py's ``others_may_write(st, fd)`` given no descriptor fails it."""
    from featstore.extraction.ray import _auto

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    file = tmp_path / "ray" / "ray_current_cluster"
    file.write_text("127.0.0.1:9\n")
    file.chmod(0o664)
    assert _auto("auto", "--address")[0] == "127.0.0.1:9"
    _setfacl(file, "-m", f"u:{OTHER}:rw-")
    with pytest.raises(
        ConfigError,
        match=rf"is yours, but user uid {OTHER} \(its ACL\) may write it, so the address in it is not trusted",
    ):
        _auto("auto", "--address")


@pytest.mark.usefixtures("own_group")
def test_a_report_folder_a_named_acl_user_may_write_is_refused(tmp_path):
    """#1 with attack 39 #6's check: the user's report folder that ``u:bob:rwx`` may write (no default ACL: a plain
    mkdir there gives ``0755``) is refused; in a team folder whose default ACL gives that grant it is what a plain mkdir
    gives, and taken (attack 39's test of a default-ACL team folder covers the group's grant). Sabotage:
    sitefolder's ``others_may_write(st, fd)`` given no descriptor fails it."""
    from featstore.report.site.build import _prepare

    out = tmp_path / "rep"
    out.mkdir()
    out.chmod(0o755)
    site, _ = _prepare(out)
    site.close()
    _setfacl(out, "-m", f"u:{OTHER}:rwx")
    with pytest.raises(OutputError, match=r"--out .*rep is writable by others \(mode 0775\)"):
        _prepare(out)
    team = tmp_path / "team"
    team.mkdir()
    _setfacl(team, "-d", "-m", f"u::rwx,u:{OTHER}:rwx,g::r-x,o::r-x")
    (team / "rep").mkdir()  # inherits the grant, as its default ACL
    site, _ = _prepare(team / "rep")
    site.close()


@pytest.fixture
def not_in_group(monkeypatch, tmp_path):
    """A ``2777`` folder of a group the user is not in, where a chmod clears the set-group-ID bit as Linux does for a
    non-member (root keeps it: simulated); its folder."""
    folder = tmp_path / "project"
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, -1, OTHER)
    folder.chmod(0o2777)
    if not folder.stat().st_mode & 0o2000:
        pytest.skip("this file system keeps no set-group-ID bit on folders")
    inner = os.fchmod

    def fchmod(fd, mode):
        if os.fstat(fd).st_gid != os.getegid():
            mode &= ~0o2000
        inner(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    monkeypatch.setattr(renames, "_keeps_setgid", lambda st: False)
    return folder


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_shards_in_a_set_group_id_folder_of_another_group_keep_the_bit(not_in_group, mask):
    """#5: ``export --rows-per-file``'s folder gets the mode a plain mkdir there gives, the bit included, its shards
    kept. Sabotage: ``publish`` not asking ``_remade`` fails umask 022; always chmod-ing fails both."""
    from featstore.store.shards import write_shards

    old = os.umask(mask)
    try:
        (not_in_group / "plain.d").mkdir()
        write_shards(not_in_group / "shards", lambda f: (f / "part-00000.parquet").write_bytes(b"shard"))
    finally:
        os.umask(old)
    plain = (not_in_group / "plain.d").stat()
    made = (not_in_group / "shards").stat()
    assert made.st_mode == plain.st_mode and made.st_mode & 0o2000
    assert made.st_gid == plain.st_gid
    assert (not_in_group / "shards" / "part-00000.parquet").read_bytes() == b"shard"
    assert sorted(p.name for p in not_in_group.iterdir()) == ["plain.d", "shards"]  # nothing hidden left


def test_a_folder_others_may_write_is_remade_too(not_in_group):
    """#5: where the final mode lets others write (umask 002), the folder is remade too (attack 42 #8: it was chmod-ed,
    the bit lost, in every team share), its contents kept, nothing hidden left."""
    old = os.umask(0o002)
    try:
        with renames.OwnFolder(not_in_group, ".x.", ".tmp") as own:
            (own.at / "f").write_bytes(b"x")
            own.publish(not_in_group / "x")
    finally:
        os.umask(old)
    assert (not_in_group / "x" / "f").read_bytes() == b"x"
    assert (not_in_group / "x").stat().st_mode & 0o7777 == 0o2775
    assert os.listdir(not_in_group) == ["x"]


@pytest.fixture
def append_only(tmp_path):
    """An append-only folder of the user's (``chattr +a``: entries made, never renamed over nor removed); skips where
    the flag cannot be set (not root, a file system without it)."""
    folder = tmp_path / "drop"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+a", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +a is not possible here")
    yield folder
    subprocess.run(["chattr", "-a", str(folder)], check=True)


def _writes(folder: Path) -> list[str]:
    """The lines of a whole-file output and of ``--rows-per-file`` shards written into ``folder``, each refused."""
    from featstore.outputs import write_text
    from featstore.store.shards import write_shards

    lines = []
    with pytest.raises(OutputError) as err:
        write_text(folder / "fs.csv", "a,b\n", "--out")
    lines.append(str(err.value))
    with pytest.raises(OutputError) as err:
        write_shards(folder / "shards", lambda f: (f / "part-00000.parquet").write_bytes(b"shard"))
    lines.append(str(err.value))
    return lines


def test_an_append_only_folder_is_refused_up_front_with_its_reason(append_only):
    """#4a: an output and shards in an append-only folder: one line with the true reason, no private folder left (each
    run left two that no one could remove, "not writable by you"). Sabotage: ``refuse_unusable`` not called in
    ``PrivateFolder.make`` and ``OwnFolder`` fails it."""
    (append_only / "plain.txt").write_text("x")  # a plain write works there
    for line in _writes(append_only):
        assert (
            f"{append_only} is append-only (chattr +a): featstore writes each output into a folder of its own" in line
        )
        assert "not writable by you" not in line and line.endswith("Nothing was written there.")
    assert sorted(p.name for p in append_only.iterdir()) == ["plain.txt"]


def test_a_default_acl_that_shuts_new_folders_to_their_owner_is_refused_up_front(tmp_path, monkeypatch):
    """#4b: a folder whose default ACL gives new entries' owner ``rw-`` (root passes every permission check: the user's
    case is taken). Sabotage: ``refuse_unusable`` not called fails it."""
    monkeypatch.setattr(modes, "_checks_permissions", lambda: True)
    folder = tmp_path / "aclrw"
    folder.mkdir()
    _setfacl(folder, "-d", "-m", "u::rw-,g::r--,o::---")
    for line in _writes(folder):
        assert f"{folder} has a default ACL that gives new folders' owner rw- (setfacl -d -m u::rw-)" in line
        assert f"`setfacl -d -m u::rwx {folder}`" in line and "not writable by you" not in line
    assert list(folder.iterdir()) == []
    _setfacl(folder, "-d", "-m", "u::rwx")
    assert modes.unusable(folder, folder) is None


def test_a_private_folder_that_cannot_be_removed_is_said(tmp_path, monkeypatch, caplog):
    """#4: what the up-front check cannot foresee (here an rmdir refused): the folder left is named, not left
    silently. Sabotage: ``_left`` not called in ``PrivateFolder._close`` fails it."""
    from featstore.outputs import write_text

    real = os.rmdir

    def refused(path, *a, **k):
        if str(path).endswith(".featstore-tmp"):
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real(path, *a, **k)

    monkeypatch.setattr(os, "rmdir", refused)
    write_text(tmp_path / "out.csv", "a\n")
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".featstore-tmp")]
    assert f"left {left}, featstore's own folder, which could not be removed (Operation not permitted)" in caplog.text
