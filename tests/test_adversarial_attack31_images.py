"""Attack 31 #1, #3 (branch attack31, reproducers ``f1_report_thumbs_foreign_root_link.sh``,
``f3_carry_xattrs_race.py``): an image reopened by path was held to the link rule only at its name and its folder, so a
colleague's link at the team's data root put the user's private photos into the team's report; a replaced output's
owner was checked by ``lstat`` and its ACL then read by name, so a colleague exchanging her file with the user's in
between gave the user's new export her ACL entry. Links and files are given to another user: root only."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from featstore.images import decode
from featstore.images.decode import ImageError, iter_decoded, load_image

BOB, NOID = 54321, 0xFFFFFFFF


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
    monkeypatch.setattr(decode, "os", _SwapForTheOpening(team / "data", private.parents[2]))
    with pytest.raises(ImageError, match="replaced by another file while it was opened"):
        load_image(real, 4)
    assert decode.os.swapped


class _SwapForTheOpening:
    """``decode``'s ``os``, whose first ``open`` is made while ``folder`` is another user's link to ``target``."""

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
