"""Hostile image folders, one row each: how to build it and what a correct ``extract`` of it gives.

``HOSTILE_FOLDER_CASES`` rows are ``(case_id, build, expect)``:

- ``build(root)`` makes ``root/data/train/<class>/...`` (and, for some cases, folders beside
  ``root/data``); it calls ``pytest.skip`` where the platform cannot make the case (no symlinks,
  no FIFOs, no non-UTF-8 names).
- ``expect`` describes ``extract(root / "data", "train", ...)``: ``rows`` stored rows, ``failed``
  failure records, ``skipped_links`` entries in ``discover(...).skipped_links``, and ``labels``
  ``{class name: stored rows of that class}`` whose keys are exactly the store's class names.

Every tree starts from classes ``a`` and ``b`` with two good 8x8 PNGs each. Not in the table: an
unusual decoder exception (cannot be made as a file; ``tests/test_images.py`` monkeypatches one).
Add a case by appending a row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _png(path: Path, value: int = 100) -> None:
    """One small valid PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _base(root: Path) -> Path:
    """data/train/{a,b}/img{0,1}.png; returns the split folder."""
    train = root / "data" / "train"
    for cls, value in (("a", 50), ("b", 200)):
        for i in range(2):
            _png(train / cls / f"img{i}.png", value + i)
    return train


def _link(target: str | Path, at: Path) -> None:
    """A symlink at ``at`` to ``target`` (skips where symlinks cannot be made)."""
    try:
        os.symlink(target, at)
    except (OSError, NotImplementedError) as exc:
        pytest.skip(f"cannot make symlinks here: {exc}")


def _fifo(root: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(_base(root) / "a" / "pipe.jpg")


def _non_utf8(root: Path) -> None:
    train = _base(root)
    raw = os.path.join(os.fsencode(train / "a"), b"bad\xff.png")
    try:
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:  # e.g. APFS refuses names that are not UTF-8
        pytest.skip(f"file system refuses non-UTF-8 names: {exc}")
    with os.fdopen(fd, "wb") as fh:
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(fh, "PNG")


def _outside_folder_linking_back(root: Path) -> None:
    train = _base(root)
    _png(root / "extra" / "e.png")
    _link(train / "a", root / "extra" / "back")  # reached from b through "out": class a's images must not become b's
    _link(root / "extra", train / "b" / "out")


def _same_outside_folder_twice(root: Path) -> None:
    train = _base(root)
    _png(root / "extra" / "e.png")
    _link(root / "extra", train / "a" / "x")
    _link(root / "extra", train / "b" / "y")  # walked already under a: not a second label


def _link_cycle(root: Path) -> None:
    train = _base(root)
    _link("l2.jpg", train / "a" / "l1.jpg")
    _link("l1.jpg", train / "a" / "l2.jpg")


def _class_link_outside(root: Path) -> None:
    train = _base(root)
    for i in range(2):
        _png(root / "elsewhere" / "c" / f"c{i}.png")
    _link(root / "elsewhere" / "c", train / "c")


def _subfolder_of_other_class(root: Path) -> None:
    train = _base(root)
    _png(train / "a" / "sub" / "s.png")
    _link("../a/sub", train / "b" / "x")


def _file_outside(root: Path) -> None:
    train = _base(root)
    _png(root / "pool" / "p.png")
    _link(root / "pool" / "p.png", train / "b" / "p.png")


def _dir_outside(root: Path) -> None:
    train = _base(root)
    _png(root / "extra" / "e.png")
    _link(root / "extra", train / "a" / "more")


def _folder_named_like_image(root: Path) -> None:
    _png(_base(root) / "a" / "folder.jpg" / "inner.png")


def _sibling_split(kind: str) -> Callable[[Path], None]:
    """A link from train into the validation split of the same data root (a leak between splits)."""

    def build(root: Path) -> None:
        train = _base(root)
        _png(root / "data" / "validation" / "a" / "v0.png", 90)
        target, at = {
            "dir": ("../../validation/a", train / "a" / "more"),
            "file": ("../../validation/a/v0.png", train / "a" / "v.png"),
            "class": ("../validation/a", train / "c"),
        }[kind]
        _link(target, at)

    return build


def _simple(build: Callable[[Path], None]) -> Callable[[Path], None]:
    """A builder that makes the base tree, then calls ``build(train)``."""
    return lambda root: build(_base(root))


BASE = {"a": 2, "b": 2}

HOSTILE_FOLDER_CASES: list[tuple[str, Callable[[Path], None], dict]] = [
    (
        "dir_link_to_split",
        _simple(lambda t: _link("..", t / "b" / "up")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "dir_link_to_data_root",
        _simple(lambda t: _link("../..", t / "b" / "root")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "dir_link_to_filesystem_root",
        _simple(lambda t: _link(os.path.abspath(os.sep), t / "b" / "slash")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "dir_link_into_other_class",
        _simple(lambda t: _link("../a", t / "b" / "x")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "dir_link_into_subfolder_of_other_class",
        _subfolder_of_other_class,
        {"rows": 5, "failed": 0, "skipped_links": 1, "labels": {"a": 3, "b": 2}},
    ),
    (
        "outside_folder_linking_back_into_a_class",
        _outside_folder_linking_back,
        {"rows": 5, "failed": 0, "skipped_links": 1, "labels": {"a": 2, "b": 3}},
    ),
    (
        "same_outside_folder_from_two_classes",
        _same_outside_folder_twice,
        {"rows": 5, "failed": 0, "skipped_links": 1, "labels": {"a": 3, "b": 2}},
    ),
    (
        "dir_link_outside_is_followed",
        _dir_outside,
        {"rows": 5, "failed": 0, "skipped_links": 0, "labels": {"a": 3, "b": 2}},
    ),
    (
        "symlink_loop_to_own_class",
        _simple(lambda t: _link(".", t / "a" / "loop")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    ("symlink_cycle_of_file_links", _link_cycle, {"rows": 4, "failed": 0, "skipped_links": 2, "labels": BASE}),
    (
        "dangling_link",
        _simple(lambda t: _link("nowhere.jpg", t / "a" / "gone.jpg")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "class_folder_link_to_other_class",
        _simple(lambda t: _link("a", t / "c")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "class_folder_link_to_split",
        _simple(lambda t: _link(".", t / "c")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "class_folder_link_outside_is_a_class",
        _class_link_outside,
        {"rows": 6, "failed": 0, "skipped_links": 0, "labels": {"a": 2, "b": 2, "c": 2}},
    ),
    (
        "file_link_into_other_class",
        _simple(lambda t: _link("../a/img0.png", t / "b" / "dup.png")),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "file_link_outside_is_followed",
        _file_outside,
        {"rows": 5, "failed": 0, "skipped_links": 0, "labels": {"a": 2, "b": 3}},
    ),
    (
        "dir_link_into_another_split",
        _sibling_split("dir"),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "file_link_into_another_split",
        _sibling_split("file"),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    (
        "class_folder_link_into_another_split",
        _sibling_split("class"),
        {"rows": 4, "failed": 0, "skipped_links": 1, "labels": BASE},
    ),
    ("fifo_named_jpg", _fifo, {"rows": 4, "failed": 1, "skipped_links": 0, "labels": BASE}),
    ("non_utf8_name", _non_utf8, {"rows": 5, "failed": 0, "skipped_links": 0, "labels": {"a": 3, "b": 2}}),
    (
        "zero_byte_file",
        _simple(lambda t: (t / "a" / "zero.jpg").write_bytes(b"")),
        {"rows": 4, "failed": 1, "skipped_links": 0, "labels": BASE},
    ),
    (
        "text_named_png",
        _simple(lambda t: (t / "b" / "note.png").write_text("not an image")),
        {"rows": 4, "failed": 1, "skipped_links": 0, "labels": BASE},
    ),
    (
        "folder_named_like_an_image",
        _folder_named_like_image,
        {"rows": 5, "failed": 0, "skipped_links": 0, "labels": {"a": 3, "b": 2}},
    ),
]
