"""Walking image folders: which files are images, and which links are followed.

A link is followed only where that cannot give an image a second label or walk a folder twice: a directory link to
the split folder, the data root or a parent of them, into another class's folder, inside its own class folder, or to a
folder already walked is not followed (``FolderWalk.skipped`` says which and why; logged as warnings). Links to
folders outside the split are followed. A file link into another class's folder is skipped too; one elsewhere is
followed. A link another user made (neither you nor root) is never followed, whatever it points to: in a team folder a
colleague's link put the user's private photos into a store the team reads (attack 28 #4). Broken links are skipped
and reported, and so is any entry whose stat() fails (a path past PATH_MAX, no
permission, a failing disk): never left out unsaid. Every file with an image extension is listed (a FIFO or socket too:
``load_image`` records it as "not a regular file").

>>> find_images("new_images").files[:1]   # doctest: +SKIP
[PosixPath('new_images/dog.jpg')]
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
from pathlib import Path
from typing import NamedTuple

from featstore.errors import DataError
from featstore.images.decode import foreign_link, printable
from featstore.linkrule import foreign_on

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Ident = tuple[int, int]  # (st_dev, st_ino): one file or folder on disk, whichever path reaches it
SIBLING_SPLIT = "points into another split of the data root (its images would be in two splits: a leak)"


def refuse_foreign_data(path: str | os.PathLike, what: str, option: str) -> None:
    """Refuse a folder of images reached through a link another user made (on its path or at its name), in one line:
    a colleague's `data -> ~you/thesis_data` in a team folder put the user's private dataset into the team's store
    (attack 30 #4). The user's own and root's links are followed."""
    found = foreign_on(path, DataError, f"{option} ({what})")
    if found is not None:
        link, st, target = found
        real = os.path.normpath(os.path.join(os.path.dirname(link), target))
        raise DataError(
            f"{what} {printable(os.fspath(path))} leads through {printable(link)}, a link made by another user "
            f"(uid {st.st_uid}) to {printable(real)}; featstore follows only your own or root's links: give the real "
            f"path with {option} if you mean it"
        )


class FoundImages(NamedTuple):
    """Image files under one folder (``find_images``)."""

    files: list[Path]  # sorted
    n_ignored: int  # files without an image extension
    skipped_links: list[tuple[str, str]]  # (path, reason) of links not followed


def find_images(folder: str | os.PathLike) -> FoundImages:
    """Image files under ``folder``, sorted; links as in ``discover`` (a link to the folder, a parent or a folder already walked is not followed).

    >>> find_images("new_images").files[:1]   # doctest: +SKIP
    [PosixPath('new_images/dog.jpg')]
    """
    refuse_foreign_data(folder, "image folder", "the folder")
    walk = FolderWalk(lineage(os.path.dirname(os.path.realpath(folder))), base=None)
    files = [Path(p) for p, _ in walk.files(os.fspath(folder), own=None)]
    return FoundImages(files, walk.ignored, walk.skipped)


def ignored_summary(suffixes: collections.Counter) -> str:
    """What was ignored, by suffix, and what is read: for a log line.

    >>> ignored_summary(collections.Counter({".txt": 2, "": 1}))
    'ignored 3 files that are not images by their extension (.txt x2, no extension x1); featstore reads .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, .tiff'
    """
    kinds = ", ".join(f"{s or 'no extension'} x{n}" for s, n in suffixes.most_common(5))
    more = ", ..." if len(suffixes) > 5 else ""
    return (
        f"ignored {sum(suffixes.values())} files that are not images by their extension ({printable(kinds)}{more}); "
        f"featstore reads {', '.join(IMAGE_EXTENSIONS)}"
    )


def lineage(path: str | os.PathLike) -> set[Ident]:
    """Identities of ``path`` (resolved) and of every folder above it."""
    p, out = os.path.realpath(path), set()
    while True:
        try:
            st = os.stat(p)
            out.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(p)
        if parent == p:
            return out
        p = parent


def inside(path: str, folder: str) -> bool:
    """True when real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def unstattable(err: OSError) -> str:
    """The reason recorded for an entry whose stat() failed (it is left out of the listing, with a warning).

    >>> unstattable(OSError(errno.ENAMETOOLONG, "File name too long"))
    'cannot be read, so it is left out (File name too long); shorten its path, fix its permissions or move it out of the data root'
    """
    return (
        f"cannot be read, so it is left out ({err.strerror or err}); shorten its path, fix its permissions or move it "
        f"out of the data root"
    )


class FolderWalk:
    """One listing's walk: what is off limits, which folders were walked, which links were skipped."""

    def __init__(self, forbidden: set[Ident], base: Path | None, split_dir: Path | None = None):
        self.forbidden = forbidden  # the split folder, the data root and their parents
        self.base = base  # skipped paths are reported relative to it
        # links into the data root but outside this split would copy another split's images into this one
        self.fence = (
            (os.path.realpath(base), os.path.realpath(split_dir))
            if base is not None and split_dir is not None
            else None
        )
        self.classes: dict[str, str] = {}  # class name -> real path of its folder
        self.class_ids: dict[Ident, str] = {}  # identity of a class folder -> class name
        self._rank: dict[str, tuple[int, str]] = {}  # real path of a class folder -> (its place in `classes`, name)
        self.seen: set[Ident] = set()  # folders walked
        self.skipped: list[tuple[str, str]] = []  # (path, reason)
        self.ignored = 0  # files without an image extension
        self.ignored_suffixes: collections.Counter = collections.Counter()  # their suffixes ("" for none)

    def skip(self, path: str, reason: str) -> None:
        """Record and log a link (or folder) not followed, or an entry that cannot be stat'ed."""
        shown = str(Path(path).relative_to(self.base)) if self.base else path
        self.skipped.append((shown, reason))
        logger.warning("not following %s: %s", printable(shown), reason)

    def add_class(self, name: str, path: str) -> None:
        """Accept ``path`` as class ``name`` unless it is a link to the split, a parent, or another class."""
        if why := foreign_link(path):
            self.skip(path, why)
            return
        st, real = os.stat(path), os.path.realpath(path)
        owner = self._owner(real)
        if (st.st_dev, st.st_ino) in self.forbidden:
            self.skip(path, "points to the split folder, the data root or a parent of them (not a class)")
        elif self._other_split(real):
            self.skip(path, SIBLING_SPLIT)
        elif owner is not None:
            self.skip(path, f"points into class '{printable(owner)}' (not a class of its own)")
        else:
            self.classes[name] = real
            self.class_ids[(st.st_dev, st.st_ino)] = name
            self._rank.setdefault(real, (len(self._rank), name))

    def _owner(self, real: str) -> str | None:
        """The first class (in the order they were accepted) whose folder is real path ``real`` or holds it.

        Looked up by ``real``'s own folders, not by comparing it with every class: a split of 1,000 classes took
        half a million comparisons.
        """
        found, p = None, real
        while True:
            hit = self._rank.get(p)
            if hit is not None and (found is None or hit < found):
                found = hit
            parent = os.path.dirname(p)
            if parent == p:
                return None if found is None else found[1]
            p = parent

    def files(self, folder: str, own: str | None) -> list[tuple[str, os.stat_result]]:
        """Image files under ``folder`` (class ``own``'s folder, or any folder when None), sorted, each with its stat."""
        found: list[tuple[str, os.stat_result]] = []
        stack = [folder] if self._enter(folder, os.stat(folder), own) else []
        nested = False
        while stack:
            d = stack.pop()
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as err:
                raise DataError(
                    f"cannot read folder {printable(str(err.filename))}: {err.strerror}; "
                    "fix its permissions or move it out of the data root"
                ) from None
            subdirs = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                link = e.is_symlink()
                try:
                    why = link and foreign_link(e.path, e.stat(follow_symlinks=False))
                except OSError:
                    why = None  # gone meanwhile: the stat below says so
                if why:
                    self.skip(e.path, why)
                    continue
                try:
                    st = os.stat(e.path)  # follows links: the target's kind, size and mtime
                except OSError as err:  # never dropped unsaid: a path past PATH_MAX, no permission, a failing disk
                    broken = link and err.errno in (errno.ENOENT, errno.ELOOP)
                    self.skip(
                        e.path,
                        "broken link (its target is missing, or a loop of links)" if broken else unstattable(err),
                    )
                    continue
                if stat.S_ISDIR(st.st_mode):
                    reason = self._dir_link_reason(e.path, own) if link else None
                    if reason:
                        self.skip(e.path, reason)
                    elif self._enter(e.path, st, own):
                        subdirs.append(e.path)
                elif not e.name.lower().endswith(IMAGE_EXTENSIONS):
                    self.ignored += 1
                    self.ignored_suffixes[os.path.splitext(e.name)[1].lower()] += 1
                elif link and (reason := self._file_link_reason(e.path, own)):
                    self.skip(e.path, reason)
                else:
                    found.append((e.path, st))
            stack.extend(reversed(subdirs))
            nested = nested or bool(subdirs)
        if not nested:  # one folder's files, read in name order: already in path order
            return found
        return sorted(found, key=lambda f: f[0].split(os.sep))  # by path components, as Path sorts (no Path per file)

    def _enter(self, path: str, st: os.stat_result, own: str | None) -> bool:
        """Whether to walk folder ``path``; records why not."""
        ident = (st.st_dev, st.st_ino)
        other = self.class_ids.get(ident)
        if ident in self.forbidden:
            self.skip(path, "points to the split folder, the data root or a parent of them")
        elif other is not None and other != own:
            self.skip(path, f"is class '{printable(other)}''s folder (its images would get a second label)")
        elif ident in self.seen:
            self.skip(path, "already walked (a loop, or a second way to the same folder)")
        else:
            self.seen.add(ident)
            return True
        return False

    def _dir_link_reason(self, path: str, own: str | None) -> str | None:
        """Why a directory link must not be followed, or None."""
        real = os.path.realpath(path)
        for name, folder in self.classes.items():
            if inside(real, folder):
                return (
                    "points inside its own class folder (walked there already)"
                    if name == own
                    else f"points into class '{printable(name)}' (its images would get a second label)"
                )
        return SIBLING_SPLIT if self._other_split(real) else None

    def _file_link_reason(self, path: str, own: str | None) -> str | None:
        """Why a file link must not be listed, or None."""
        real = os.path.realpath(path)
        other = next((n for n, folder in self.classes.items() if n != own and inside(real, folder)), None)
        if other is not None:
            return f"points into class '{printable(other)}' (one file, two labels)"
        return SIBLING_SPLIT if self._other_split(real) else None

    def _other_split(self, real: str) -> bool:
        """True when real path ``real`` lies in the data root but outside this split (another split's images)."""
        return self.fence is not None and inside(real, self.fence[0]) and not inside(real, self.fence[1])
