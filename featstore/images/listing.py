"""Find images in ``<root>/<split>/<class>/...`` folders: which files, under which label, and what changed.

A class's images are the files under its class folder, walked by :mod:`featstore.images.walk`: links are
followed only where that cannot give an image a second label or walk a folder twice (``ImageListing.skipped_links``
says which were not, and why; logged as warnings), and a split folder that is, holds or lies inside another split's
is refused. Every file with an image extension is listed (a FIFO or socket too: ``load_image`` records it as "not a
regular file").

Paths are ``str`` as ``os.fsdecode`` gives them: a non-UTF-8 name keeps its bytes as surrogates, and
``path_to_store`` / ``path_from_store`` turn it into the exact bytes and back.

>>> listing = discover("data/fashion_mnist", "train")  # doctest: +SKIP
>>> listing.class_names[:2], len(listing.items)        # doctest: +SKIP
(['ankle_boot', 'bag'], 300)
"""

from __future__ import annotations

import array
import errno
import hashlib
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featstore.errors import DataError, check_names, check_paths
from featstore.images.decode import (  # noqa: F401 - re-exported: images is the public face of the image side
    DECODE_BUDGET,
    MAX_PIXELS,
    DecodeBudget,
    ImageError,
    load_image,
    printable,
)
from featstore.images.listing_diff import ListingColumns, ListingDiff, diff_listing  # noqa: F401 - re-exported
from featstore.images.walk import (  # noqa: F401 - re-exported: IMAGE_EXTENSIONS, FoundImages, find_images
    IMAGE_EXTENSIONS,
    FolderWalk,
    FoundImages,
    Ident,
    find_images,
    ignored_summary,
    inside,
    lineage,
    refuse_foreign_data,
)

logger = logging.getLogger(__name__)


def path_to_store(p: str) -> bytes:
    r"""The bytes a path is stored as: ``os.fsencode``, lossless also for non-UTF-8 names.

    The store writes them into its UTF-8 string datasets as they are (a non-UTF-8 name stays invalid
    UTF-8 there) and reads them back with ``.asstr(errors="surrogateescape")``.

    >>> path_to_store("train/cat/bad\udcff.png")
    b'train/cat/bad\xff.png'
    """
    return os.fsencode(p)


def path_from_store(b: bytes | str) -> str:
    r"""A stored path as the ``str`` a listing uses (``os.fsdecode``: undecodable bytes become surrogates).

    >>> path_from_store(b"train/cat/bad\xff.png") == "train/cat/bad\udcff.png"
    True
    """
    return b if isinstance(b, str) else os.fsdecode(b)


class ListingEntry(NamedTuple):
    """One listed image as the store records it."""

    path: str  # relative to the data root
    label: int  # index into class_names
    size: int  # bytes (of the link target for a link)
    mtime_ns: int  # modification time, nanoseconds


@dataclass(frozen=True)
class ImageListing:
    """Images of one split, in the order they are written to the store."""

    root: Path  # the data root (paths are relative to it)
    split: str  # split folder name
    class_names: list[str]  # sorted class folder names; label i is class_names[i]
    items: list[tuple[str, int]]  # (path relative to root, label), class-major then path order
    n_ignored: int = 0  # files without an image extension
    skipped_links: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of links not followed
    sizes: Sequence[int] = field(default_factory=list)  # bytes of items[i] (discover gives an array.array)
    mtimes_ns: Sequence[int] = field(default_factory=list)  # modification time of items[i], nanoseconds
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)  # digest(), once computed

    def __post_init__(self) -> None:
        if not len(self.items) == len(self.sizes) == len(self.mtimes_ns):
            raise ValueError(f"{len(self.items)} items but {len(self.sizes)} sizes and {len(self.mtimes_ns)} mtimes")

    def entries(self) -> list[ListingEntry]:
        """(path, label, size, mtime_ns) per item: what a store records to tell later whether the images changed."""
        return [ListingEntry(p, label, s, m) for (p, label), s, m in zip(self.items, self.sizes, self.mtimes_ns)]

    def digest(self) -> str:
        """sha256 of the ordered (path, label, size, mtime) list: tells whether a resumed run sees the same work.

        Computed once per listing (a resume compares it twice), one text per 65,536 rows encoded at once: 10⁶ rows in
        about 0.5 s instead of 1.7 s. The bytes hashed are ``f"{label}\t{size}\t{mtime}\t{len(raw)}\t" + raw +
        "\n"`` per row, with ``raw`` the path's file-system bytes (the digest of stores written before).
        """
        if self._digest is None:
            h = hashlib.sha256()
            for i in range(0, len(self.items), 1 << 16):
                rows = zip(
                    self.items[i : i + (1 << 16)], self.sizes[i : i + (1 << 16)], self.mtimes_ns[i : i + (1 << 16)]
                )
                text = "".join([f"{label}\t{size}\t{mtime}\t{_byte_len(p)}\t{p}\n" for (p, label), size, mtime in rows])
                h.update(text.encode("utf-8", "surrogateescape"))  # os.fsencode of each path, all at once
            object.__setattr__(self, "_digest", h.hexdigest())
        return self._digest

    def diff(self, old: ListingColumns | Iterable[tuple[str | bytes, int, int, int]]) -> ListingDiff:
        """What changed since ``old``: the recorded listing as :class:`ListingColumns` (read in blocks), or entries as
        ``entries()`` gave them (stored bytes paths accepted). At most ``listing_diff.SHOWN`` names of each kind are kept.

        >>> listing.diff(stored_entries).summary()   # doctest: +SKIP
        '3 added, 1 removed, 2 changed (first: train/a/x.png, train/b/y.jpg, ...)'
        """
        cols = old if isinstance(old, ListingColumns) else ListingColumns.of(old)
        new_nums = np.array([[label for _, label in self.items], self.sizes, self.mtimes_ns], dtype=np.int64)
        return diff_listing([p for p, _ in self.items], new_nums.reshape(3, len(self.items)), cols)


def _byte_len(path: str) -> int:
    """Length of ``os.fsencode(path)`` (a path that is ASCII is its own bytes)."""
    return len(path) if path.isascii() else len(os.fsencode(path))


class DuplicateFile(NamedTuple):
    """One file on disk reached by several rows."""

    real_path: str  # the file (real path of its first row)
    rows: list[tuple[str, int]]  # (path, label) of every row that is this file


def _not_a_folder(root: Path) -> str:
    """Why ``root`` is no folder, in words: a link loop and a link to nothing both looked like "does not exist"."""
    try:
        os.stat(root)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if os.path.islink(root):
            return f"is a symbolic link to {printable(os.readlink(root))}, which does not exist"
        return "does not exist"
    return "is a file, not a folder" if os.path.isfile(root) else "is not a folder (a FIFO, device or socket)"


def discover(root: str | os.PathLike, split: str) -> ImageListing:
    """List the images of ``root/split/<class>/**`` with labels from the class folder names.

    >>> discover("data", "train").class_names   # doctest: +SKIP
    ['cat', 'dog']
    """
    check_paths(required=True, root=root)  # '' would list the current folder
    check_names("split", required=True, split=split)  # "" named a link that does not exist
    root = Path(root)
    refuse_foreign_data(root, "data root", "--data")
    if not root.is_dir():
        raise DataError(
            f"data root {printable(str(root))} {_not_a_folder(root)}; pass --data ROOT, a folder holding "
            f"<split>/<class>/<images>"
        )
    split_dir = root / split
    refuse_foreign_data(split_dir, "split folder", "--data")
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        if _holds_images(root, present):
            raise DataError(
                f"split folder {printable(str(split_dir))} does not exist, and {printable(str(root))} looks like one "
                f"split itself: its folders {printable(', '.join(present[:5]))}{', ...' if len(present) > 5 else ''} "
                f"hold images, as class folders do. --data (data= in Python) names the folder above the splits: pass "
                f"--data {printable(str(root.parent))} if this is its {root.name!r} split, or lay the images out as "
                f"<data>/{split}/<class>/<images>. To carve validation and test splits out of one folder, move a share "
                f"of each class's files into <data>/validation/<class>/ and <data>/test/<class>/ (pipelines/"
                f"cats_vs_dogs.py carves seeded splits)"
            )
        raise DataError(
            f"split folder {printable(str(split_dir))} does not exist; "
            f"splits found in {printable(str(root))}: {printable(', '.join(present)) or 'none'}"
        )
    _refuse_overlapping_split(root, split, split_dir)
    walk = FolderWalk(lineage(split_dir) | lineage(root), base=root, split_dir=split_dir)
    candidates = sorted(_class_folders(split_dir), key=lambda e: (e.is_symlink(), e.name))  # real folders first
    for e in candidates:  # a link cannot claim a real folder's place
        try:
            walk.add_class(e.name, e.path)
        except OSError as err:
            raise _unreadable_class(e.path, err) from None
    class_names = sorted(walk.classes)
    undecodable = [n for n in class_names if n != n.encode("utf-8", "surrogateescape").decode("utf-8", "replace")]
    if undecodable:  # class names are text everywhere (the store's attribute, CSV, reports): no bytes to keep
        raise DataError(
            f"class folder(s) of {printable(str(split_dir))} named with bytes that are not UTF-8: "
            f"{', '.join(printable(n) for n in undecodable[:5])}; a class name must be text. Rename the folder(s)"
        )
    if not class_names:
        raise DataError(
            f"{printable(str(split_dir))} has no class folders; put images in {printable(str(split_dir))}/<class name>/"
        )
    items: list[tuple[str, int]] = []
    sizes, mtimes = array.array("q"), array.array("q")  # 8 bytes a number, not ~36 as a list of ints
    devs, inos = array.array("Q"), array.array("Q")  # each row's file: 16 bytes a row, not a dict entry of ~350
    empty: list[str] = []
    for label, name in enumerate(class_names):
        folder = str(split_dir / name)
        try:
            found = walk.files(folder, own=name)
        except OSError as err:  # its own stat(); a folder inside it that cannot be read is a DataError already
            raise _unreadable_class(folder, err) from None
        if not found:
            empty.append(name)
        rel_folder = str((split_dir / name).relative_to(root))
        for path, st in found:  # every path is folder + os.sep + ...: sliced, not parsed (Path per file: 3 s at 10⁵)
            rel = (
                rel_folder + path[len(folder) :]
                if path.startswith(folder + os.sep)
                else str(Path(path).relative_to(root))
            )
            items.append((rel, label))
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
            devs.append(st.st_dev)
            inos.append(st.st_ino)
    if not items:
        raise DataError(
            f"no images under {printable(str(split_dir))}/<class>/ "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)}; {walk.ignored} other files ignored)"
        )
    if empty:
        shown = ", ".join(printable(str(split_dir / n)) for n in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(
            f"{len(empty)} class folder(s) of {printable(str(split_dir))} hold no images: {shown} (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}; links not followed are logged above). A class without images would be "
            f"stored as a class of 0 rows, which no classifier can learn and every metric would count. Put images "
            f"in it, or move the folder out of every split"
        )
    if walk.ignored:
        logger.info("%s: %s", printable(str(split_dir)), ignored_summary(walk.ignored_suffixes))
    for dup in _collisions(root, _shared(devs, inos, items), across_labels=True):
        logger.warning(
            "%s is one file under %d labels: %s",
            printable(dup.real_path),
            len({lab for _, lab in dup.rows}),
            ", ".join(printable(p) for p, _ in dup.rows),
        )
    return ImageListing(root, split, class_names, items, walk.ignored, walk.skipped, sizes, mtimes)


def _class_folders(split_dir: Path) -> list[os.DirEntry]:
    """The entries of ``split_dir`` that are class folders (not hidden); one whose stat() fails, a broken link or a
    loop of links among them, is refused naming it: left out, its images were missing from the split without a word."""
    out = []
    with os.scandir(split_dir) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    out.append(e)
                elif e.is_symlink() and not os.path.exists(e.path):
                    raise OSError(errno.ENOENT, "a broken link: its target is missing", e.path)
            except OSError as err:
                raise _unreadable_class(e.path, err) from None
    return out


def _unreadable_class(path: str, err: OSError) -> DataError:
    """A class folder whose stat() failed (a broken link, a loop of links, no permission, a failing disk), named."""
    return DataError(
        f"class folder {printable(path)} cannot be read ({err.strerror or err}); a class left out would drop its "
        f"images from the split without a word. Fix the link or its permissions, or move it out of "
        f"{printable(os.path.dirname(path))}"
    )


def _holds_images(root: Path, folders: list[str], look: int = 200) -> bool:
    """Whether one of ``root``'s ``folders`` holds an image file directly (a class folder, not a split): a bounded look."""
    for name in folders:
        try:
            with os.scandir(root / name) as entries:
                for e in itertools.islice(entries, look):
                    if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
                        return True
        except OSError:
            continue
    return False


def duplicate_files(
    root: str | os.PathLike, rows: Iterable[tuple[str | bytes, int]], *, across_labels: bool = True
) -> list[DuplicateFile]:
    """Rows (path relative to ``root``, label) that are one file on disk (same device and inode: symlinks, hard links).

    ``across_labels=True`` keeps only files under two or more labels (mislabeled rows); ``False``
    also reports a file listed twice under one label. Missing files are passed over.

    >>> duplicate_files("data", [("train/a/x.png", 0), ("train/b/y.png", 1)])   # doctest: +SKIP
    [DuplicateFile(real_path='/data/train/a/x.png', rows=[('train/a/x.png', 0), ('train/b/y.png', 1)])]
    """
    groups: dict[Ident, list[tuple[str, int]]] = {}
    for path, label in rows:
        p = path_from_store(path)
        try:
            st = os.stat(os.path.join(root, p))
        except OSError:
            continue
        groups.setdefault((st.st_dev, st.st_ino), []).append((p, int(label)))
    return _collisions(root, groups, across_labels)


def _shared(devs: array.array, inos: array.array, items: list[tuple[str, int]]) -> dict[Ident, list[tuple[str, int]]]:
    """The rows of ``items`` that share a file (device and inode) with another row, grouped by file."""
    if len(items) < 2:
        return {}
    d, i = np.frombuffer(devs, np.uint64), np.frombuffer(inos, np.uint64)
    order = np.lexsort((i, d))
    same = (d[order][1:] == d[order][:-1]) & (i[order][1:] == i[order][:-1])
    groups: dict[Ident, list[int]] = {}
    for k in np.flatnonzero(same):  # pairs of neighbours in file order (rows in listing order): m rows give m - 1
        rows = groups.setdefault((int(d[order[k]]), int(i[order[k]])), [int(order[k])])
        rows.append(int(order[k + 1]))
    # files in the order of their first row, as a dict filled row by row would give
    return {key: [items[r] for r in rows] for key, rows in sorted(groups.items(), key=lambda g: g[1][0])}


def _collisions(
    root: str | os.PathLike, groups: dict[Ident, list[tuple[str, int]]], across_labels: bool
) -> list[DuplicateFile]:
    """The groups of more than one row (of more than one label when ``across_labels``)."""
    return [
        DuplicateFile(os.path.realpath(os.path.join(root, rows[0][0])), rows)
        for rows in groups.values()
        if len(rows) > 1 and (not across_labels or len({label for _, label in rows}) > 1)
    ]


def _refuse_overlapping_split(root: Path, split: str, split_dir: Path) -> None:
    """Refuse a split folder that is, holds, or lies inside another split folder (e.g. ``test -> validation``): a leak."""
    real = os.path.realpath(split_dir)
    for other in sorted(root.iterdir()):
        if other.name == split or other.name.startswith(".") or not other.is_dir():
            continue
        theirs = os.path.realpath(other)
        if inside(real, theirs) or inside(theirs, real):
            how = "is the same folder as" if real == theirs else "lies inside" if inside(real, theirs) else "contains"
            raise DataError(
                f"split folder {printable(str(split_dir))} {how} split folder {printable(str(other))} (through a link): "
                f"the same images would be in two splits, which inflates test scores. Give each split a folder of its own."
            )
