"""Attack 42 #8, #5: the set-group-ID bit a plain ``mkdir`` gives, lost on run and export folders in a set-group-ID
folder of a group the user is not in (Linux clears the bit on any chmod by a non-member without CAP_FSETID, folders
included; only a ``mkdir`` with the final mode keeps it).

#8: ``OwnFolder._remade`` (the ``mkdir`` beside) was skipped for group-writable modes (the usual team share: a default
ACL giving the group ``rwx``, or umask 002); the folder beside is now made for them too, and must hold exactly the
entries moved into it (a colleague may write in it from its ``mkdir`` on), else they go back and the bit is lost.
#5: replacing an earlier export, its mode was carried by a chmod (bit cleared) and ``publish`` then saw no bit to keep.

Root keeps the bit on a chmod (CAP_FSETID), so each case runs in a forked child as an ordinary user (uid ``USER``, in
no group but its own); skipped where the tests do not run as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import traceback
from pathlib import Path

import pytest

from featstore import renames
from featstore.store import shards

USER, GROUP, OTHER = 54331, 54332, 54333  # a scratch user, a project group it is not in, a colleague

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to switch users")


@pytest.fixture
def base():
    """A folder the scratch user may reach (every folder above it searchable by others); removed after."""
    folder = Path(tempfile.mkdtemp(prefix="attack42-fixAY-"))
    folder.chmod(0o755)
    if any(not p.stat().st_mode & stat.S_IXOTH for p in folder.parents):
        shutil.rmtree(folder)
        pytest.skip("the temporary folder is not reachable by other users")
    yield folder
    shutil.rmtree(folder)


def _project(base: Path, mode: int) -> Path:
    """A folder ``root:GROUP`` of ``mode``; skips where the file system keeps no set-group-ID bit."""
    folder = base / "project"
    folder.mkdir()
    os.chown(folder, 0, GROUP)
    folder.chmod(mode)
    if not folder.stat().st_mode & stat.S_ISGID:
        pytest.skip("this file system keeps no set-group-ID bit on folders")
    return folder


def _as_user(fn, mask: int) -> None:
    """``fn()`` in a child forked as the scratch user (umask ``mask``); its failure, with its traceback, as this one."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(USER)
            os.setuid(USER)
            os.umask(mask)
            fn()
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        said = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said


def _export(out: Path, text: bytes) -> None:
    """``export --rows-per-file``'s folder written (one stand-in shard, no real Parquet)."""
    shards.refuse_shard_folder = lambda out: None  # (the child's own copy of the module)
    shards.write_shards(out, lambda f: (f / "part-00000.parquet").write_bytes(text))


def _plain(project: Path, mask: int) -> os.stat_result:
    """What a plain ``mkdir`` there gives the scratch user."""
    _as_user(lambda: (project / "plain").mkdir(), mask)
    return (project / "plain").stat()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_a_replaced_export_keeps_the_bit_a_plain_mkdir_gives(base, mask):
    """#5: the second export of a name, whose mode is the first one's, keeps the bit. Sabotage: ``give`` returning the
    mode its chmod left (``| (mode & stat.S_ISGID)`` dropped) fails it, as does ``_remade`` reading the bit off the
    folder its chmod had cleared it from."""
    project = _project(base, 0o2777)
    plain = _plain(project, mask)
    for text in (b"first", b"second"):
        _as_user(lambda text=text: _export(project / "sh", text), mask)
        made = (project / "sh").stat()
        assert (oct(made.st_mode), made.st_gid) == (oct(plain.st_mode), plain.st_gid) == (oct(made.st_mode), GROUP)
        assert (project / "sh" / "part-00000.parquet").read_bytes() == text
    assert sorted(os.listdir(project)) == ["plain", "sh"]  # nothing hidden left


def test_a_group_writable_export_keeps_the_bit(base):
    """#8, umask 002 in a ``2777`` folder: ``drwxrwsr-x`` as a plain mkdir, first and replaced. Sabotage: the
    ``want & 0o022`` guard put back into ``_remade`` fails it."""
    project = _project(base, 0o2777)
    plain = _plain(project, 0o002)
    assert stat.S_IMODE(plain.st_mode) == 0o2775
    for text in (b"first", b"second"):
        _as_user(lambda text=text: _export(project / "sh", text), 0o002)
        assert oct((project / "sh").stat().st_mode) == oct(plain.st_mode)
        assert (project / "sh" / "part-00000.parquet").read_bytes() == text
    assert sorted(os.listdir(project)) == ["plain", "sh"]


def test_a_team_share_by_acl_keeps_the_bit_and_the_acl(base):
    """#8 as reported: a ``2770`` project shared with the user by ACL, its default ACL giving the group ``rwx``: the
    export's folder is ``drwxrws---`` with the ACL a plain mkdir gets, also replaced (its ACL and user attribute
    carried). Sabotage: the ``want & 0o022`` guard back fails it; so do ``same_xattrs`` not called, or setting an
    attribute that is already there (an access ACL set clears the bit)."""
    project = _project(base, 0o2770)
    acl = f"u::rwx,g::rwx,u:{USER}:rwx,m::rwx,o::---"
    setfacl = ["setfacl", "-m", f"u:{USER}:rwx", "-d", "-m", acl, str(project)]
    if shutil.which("setfacl") is None or subprocess.run(setfacl, capture_output=True).returncode:
        pytest.skip("no setfacl, or a file system without ACLs")
    plain = _plain(project, 0o022)
    assert stat.S_IMODE(plain.st_mode) == 0o2770
    for text in (b"first", b"second"):
        _as_user(lambda text=text: _export(project / "sh", text), 0o022)
        assert oct((project / "sh").stat().st_mode) == oct(plain.st_mode)
        for name in ("system.posix_acl_access", "system.posix_acl_default"):
            assert os.getxattr(project / "sh", name) == os.getxattr(project / "plain", name)
        if text == b"first":
            os.setxattr(project / "sh", "user.note", b"team")  # (no chmod: the bit stays)
    assert os.getxattr(project / "sh", "user.note") == b"team"  # carried onto the folder made beside


def test_a_colleagues_file_in_the_folder_beside_is_never_published(base):
    """#8: the folder beside is group-writable from its mkdir on; a colleague's file put there while the entries move
    in: they are moved back, the user's folder published without it (the bit lost rather than his file in the run),
    the folder with his file left and said. Sabotage: ``_remade`` not comparing the entries it holds fails it."""
    project = _project(base, 0o2777)

    def racing() -> None:
        rename, done = os.rename, []

        def and_his(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if not done:  # the first entry moved into the folder beside: his file there too
                done.append(Path(f"/proc/self/fd/{dst_dir_fd}/his.txt").write_text("his"))

        renames.os.rename = and_his  # (the child's own os module)
        with renames.OwnFolder(project, ".x.", ".tmp") as own:
            (own.at / "mine.txt").write_text("mine")
            own.publish(project / "x")
        renames.os.rename = rename

    _as_user(racing, 0o002)
    assert sorted(os.listdir(project / "x")) == ["mine.txt"]
    assert stat.S_IMODE((project / "x").stat().st_mode) == 0o775  # chmod-ed: the bit lost
    left = [p for p in project.iterdir() if p.name != "x"]
    assert len(left) == 1 and sorted(os.listdir(left[0])) == ["his.txt"]


def test_a_colleagues_folder_put_at_the_name_beside_is_not_written_in(base):
    """#8: in a non-sticky folder others may write, a colleague renames the folder made beside away and puts his own
    (empty, of the same mode, the user let write in it by an ACL) at its name: the descriptor opened on it is checked (owner), nothing is moved into
    his folder, the user's is published (chmod-ed: the bit lost). Sabotage: the owner check dropped fails it."""
    project = _project(base, 0o2777)
    his = project / "his"
    his.mkdir()
    os.chown(his, OTHER, GROUP)
    his.chmod(0o2775)
    if shutil.which("setfacl") is None or subprocess.run(["setfacl", "-m", f"u:{USER}:rwx", str(his)]).returncode:
        pytest.skip("no setfacl, or a file system without ACLs")  # (he lets the user write in it: 2775 still)

    def racing() -> None:
        mkdir = os.mkdir

        def and_swapped(path, mode=0o777, *, dir_fd=None):
            mkdir(path, mode, dir_fd=dir_fd)
            if Path(path).name.startswith(".x."):  # the folder beside: renamed away, his at its name
                os.rename(path, project / "stolen")
                os.rename(his, path)

        with renames.OwnFolder(project, ".x.", ".tmp") as own:
            (own.at / "mine.txt").write_text("mine")
            renames.os.mkdir = and_swapped  # (the child's own os module)
            own.publish(project / "x")

    _as_user(racing, 0o002)
    mine = (project / "x").stat()
    assert (mine.st_uid, sorted(os.listdir(project / "x"))) == (USER, ["mine.txt"])
    assert stat.S_IMODE(mine.st_mode) == 0o775
