"""Attack 31 #1, #3 (branch attack31, reproducers ``f1_report_thumbs_foreign_root_link.sh``,
``f3_carry_xattrs_race.py``): an image reopened by path was held to the link rule only at its name and its folder, so a
colleague's link at the team's data root put the user's private photos into the team's report; a replaced output's
owner was checked by ``lstat`` and its ACL then read by name, so a colleague exchanging her file with the user's in
between gave the user's new export her ACL entry. Links and files are given to another user: root only."""

from __future__ import annotations

import ctypes
import errno
import os
import struct

import pytest
from PIL import Image

from featstore import carry, output_images
from featstore.images import decode
from featstore.images.decode import ImageError, iter_decoded, load_image
from featstore.outputs import write_text

BOB, NOID = 54321, 0xFFFFFFFF
ACL = "system.posix_acl_access"


def _theirs(link) -> None:
    """``link`` given to another user (root only)."""
    os.lchown(link, BOB, -1)
    if os.lstat(link).st_uid != BOB:
        pytest.skip("cannot give a link to another user here (not root)")


def _data(root, color: str):
    """A data root ``root`` with one image of ``color`` at ``train/cat/0.png``; the image's path."""
    img = root / "train" / "cat" / "0.png"
    img.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4), color).save(img)
    return img


def test_an_image_reopened_by_path_is_held_to_the_link_rule_on_its_whole_path(tmp_path, monkeypatch):
    """#1: ``load_image`` checked only the image's name and its folder: a colleague's ``data -> ~you/thesis_data`` at
    the data root (two folders above the image) was followed. Now the whole path is walked once the image is open, and
    must reach the file opened: a link another user made anywhere on it is a per-image failure with the rule's reason,
    also one renamed into place just for the opening; the user's own link is followed. Sabotage: the ``_reach``
    loop's ``raise`` removed fails the first part (the private photo is decoded), the ``_check_opened`` call removed
    fails the second (the link there at the opening is followed)."""
    private = _data(tmp_path / "private" / "thesis_data", "white")
    team = tmp_path / "team"
    team.mkdir()
    (team / "data").symlink_to(private.parents[2])
    _theirs(team / "data")
    shown = team / "data" / "train" / "cat" / "0.png"
    with pytest.raises(ImageError, match=r"its path leads through .*/team/data -> .*thesis_data: a link made by an"):
        load_image(shown, 4)
    ((_, img, why),) = list(iter_decoded([str(shown)], 4, threads=0, ahead=1))  # a failure recorded, not a crash
    assert img is None and "a link made by another user (uid 54321)" in why

    mine = tmp_path / "mine"
    mine.symlink_to(private.parents[2])  # the user's own link: followed, as before
    assert load_image(mine / "train" / "cat" / "0.png", 4)[0, 0].tolist() == [255, 255, 255]

    # the team's real data folder, swapped for her link just for the opening and put back after it
    (team / "data").unlink()
    real = _data(team / "data", "black")
    assert load_image(real, 4)[0, 0].tolist() == [0, 0, 0]
    swap = _SwapForTheOpening(team / "data", private.parents[2])
    monkeypatch.setattr(decode, "os", swap)  # the opening by name (no O_PATH)
    monkeypatch.setattr(output_images, "os", swap)  # the O_PATH opening (output_images.reach_regular)
    with pytest.raises(ImageError, match="replaced by another file while it was opened"):
        load_image(real, 4)
    assert decode.os.swapped


class _SwapForTheOpening:
    """``decode``'s (and ``output_images``') ``os``, whose first ``open`` is made while ``folder`` is another user's link to ``target``."""

    def __init__(self, folder, target):
        self.folder, self.target, self.swapped = folder, target, False

    def __getattr__(self, name):
        return getattr(os, name)

    def open(self, *args, **kwargs):
        if self.swapped:
            return os.open(*args, **kwargs)
        self.swapped = True
        aside = self.folder.with_name("data.bob")
        os.rename(self.folder, aside)
        self.folder.symlink_to(self.target)
        _theirs(self.folder)
        try:
            return os.open(*args, **kwargs)
        finally:
            self.folder.unlink()
            os.rename(aside, self.folder)


def _acl_for_her() -> bytes:
    """``user::rw- user:bob:rw- group::r-- mask::rw- other::r--``: her ACL entry granting herself the file."""
    entries = [(0x01, 6, NOID), (0x02, 6, BOB), (0x04, 4, NOID), (0x10, 6, NOID), (0x20, 4, NOID)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _exchange(a, b) -> None:
    """renameat2(RENAME_EXCHANGE) of ``a`` and ``b``: what a colleague may do in a folder without the sticky bit."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("no renameat2 here")
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:
        pytest.skip(f"renameat2(RENAME_EXCHANGE) refused here ({os.strerror(ctypes.get_errno())})")


class _ExchangeAfterCheck:
    """``carry``'s ``os``, exchanging ``a`` and ``b`` just after the first ``stat``/``lstat`` of ``a``'s name: the
    point between the owner's check and the reading of the attributes, however the check is made."""

    def __init__(self, a, b):
        self.a, self.b, self.done = a, b, False

    def __getattr__(self, name):
        return getattr(os, name)

    def _after(self, path) -> None:
        if not self.done and os.path.basename(os.fspath(path)) == os.path.basename(self.a):
            self.done = True
            _exchange(self.a, self.b)

    def lstat(self, path, *args, **kwargs):
        st = os.lstat(path, *args, **kwargs)
        self._after(path)
        return st

    def stat(self, path, *args, **kwargs):
        st = os.stat(path, *args, **kwargs)
        self._after(path)
        return st


def test_a_file_exchanged_after_the_owner_check_gives_the_replacement_nothing(tmp_path, monkeypatch):
    """#3: ``Own.of`` checked the owner by ``lstat`` and read the ACL by name: her file exchanged with the user's in
    between gave the user's new export her ACL entry (she could read and rewrite it). Owner and attributes now come
    from one descriptor: the file read is the file checked, hers, so nothing is carried; the same for each file of a
    folder replaced (``own_folder``). Sabotage: ``Own.of`` reverted to ``lstat`` + ``shared_xattrs(path)`` fails both
    parts (her ACL is carried; her entry's attributes are recorded as the user's file's)."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    team = tmp_path / "team"
    team.mkdir()
    out, hers = team / "train.csv", team / "b.csv"
    write_text(out, "id,x\n1,2\n", "--out")
    hers.write_text("hers\n")
    try:
        os.setxattr(hers, ACL, _acl_for_her())
    except OSError as exc:
        pytest.skip(f"this file system takes no ACL ({exc.strerror})")
    os.chown(hers, BOB, -1)
    hook = _ExchangeAfterCheck(out, hers)
    monkeypatch.setattr(carry, "os", hook)
    mask = os.umask(0o022)
    try:
        write_text(out, "id,x\n3,4\n", "--out")
    finally:
        os.umask(mask)
    assert hook.done and os.lstat(hers).st_uid == 0  # the exchange was made: the user's old file is at her name
    st = os.lstat(out)
    assert out.read_text() == "id,x\n3,4\n" and st.st_uid == 0 and st.st_mode & 0o777 == 0o644
    with pytest.raises(OSError) as err:
        os.getxattr(out, ACL)
    assert err.value.errno == errno.ENODATA  # not her ACL

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part-0.csv").write_text("mine\n")
    os.rename(hers, folder / "b.csv")  # (now the user's: the exchange above made it so)
    (folder / "b.csv").unlink()
    (folder / "b.csv").write_text("hers\n")
    os.setxattr(folder / "b.csv", ACL, _acl_for_her())
    os.chown(folder / "b.csv", BOB, -1)
    monkeypatch.setattr(carry, "os", _ExchangeAfterCheck(folder / "part-0.csv", folder / "b.csv"))
    own, files = carry.own_folder(folder)
    assert own is not None and "part-0.csv" not in files  # her file now, read from the descriptor: nothing of hers
    assert not any(ACL in f.xattrs for f in files.values())
