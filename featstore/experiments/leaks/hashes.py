"""Exact copies between splits by content: the sha256 of the image files' bytes, whatever the features say.

Files are found through the stored paths and each split's ``source_root``. Only files whose size also occurs on the
other side are hashed (two files with the same bytes have the same size), so the cost is a ``stat`` per image plus
the few candidates read, each distinct file once (rows naming one file through other spellings, ``d1/../a.png`` and
``d2/../a.png``, or hard links share its digest: keyed by device, inode, size and modification time). A file that is
gone, is not a regular file or is larger than :data:`MAX_HASH_BYTES` is listed with the reason, never opened blindly
(a FIFO would block) and never a crash.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence

from featstore.images.decode import ImageError, open_image_file
from featstore.store.reader import FeatureStore

MAX_HASH_BYTES = 1 << 30  # a larger "image" is not hashed (listed as such)
READ = 1 << 20


def _size(path: str) -> tuple[int, str]:
    """(size in bytes, "") of a regular file, or (-1, why it cannot be compared)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return -1, "not found"
    except OSError as exc:
        return -1, exc.strerror or type(exc).__name__
    if not stat.S_ISREG(st.st_mode):
        return -1, "not a regular file"
    if st.st_size > MAX_HASH_BYTES:
        return -1, f"larger than {MAX_HASH_BYTES >> 20} MiB"
    return st.st_size, ""


def _sha256(path: str, size: int, seen: dict[tuple, tuple[str, str]]) -> tuple[str, str]:
    """(hex digest, "") of at most ``size`` bytes read from a regular file, or ("", why not); a file already hashed
    (``seen``: by device, inode, size and modification time of the file opened) is not read again: 250 rows naming one
    32 MiB file read 7.8 GiB."""
    try:  # opened as every image is opened again (the link rule on the whole path, on the file reached; never a device)
        fh = open_image_file(path)
    except ImageError as exc:  # a colleague's link at the data root had her see which private photos are twins
        return "", str(exc)  # (attack 33 #8)
    except OSError as exc:
        return "", exc.strerror or type(exc).__name__
    with fh:
        try:
            st = os.fstat(fh.fileno())
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, size)
            if key not in seen:
                seen[key] = _read_digest(fh.fileno(), size)
            return seen[key]
        except OSError as exc:
            return "", exc.strerror or type(exc).__name__


def _read_digest(fd: int, size: int) -> tuple[str, str]:
    """(hex digest, "") of the open file's first ``size`` bytes, or ("", why not)."""
    try:
        h, left = hashlib.sha256(), size + 1  # one byte more: a file that grew is not the file listed
        while left > 0 and (chunk := os.read(fd, min(READ, left))):
            h.update(chunk)
            left -= len(chunk)
        return (h.hexdigest(), "") if left == 1 else ("", "changed while being read")
    except OSError as exc:
        return "", exc.strerror or type(exc).__name__


def _files(fs: FeatureStore, name: str, split: str) -> tuple[list[str], str]:
    """The split's stored paths joined to its source_root, or ([], why they cannot be found)."""
    root = str(fs.split_info(split, name).get("source_root") or "")
    if not root:
        return [], "no source_root recorded"
    return [os.path.join(root, p) for p in fs.paths(split, name)], ""


def same_bytes(
    fs: FeatureStore, name: str, queries: Sequence[str], reference: str
) -> tuple[dict[str, dict[int, int]], dict[str, list[str]]]:
    """Query rows whose image file has the same bytes as a reference row's: ``{split: {query row: train row}}``.

    Also returns ``{split: ["path (why)", ...]}`` for files that could not be compared (gone, not regular, too big);
    the paths are as found (print them through :func:`featstore.outputs.terminal_safe`).

    >>> matches, unhashed = same_bytes(FeatureStore("features.h5"), "vgg16", ["test"], "train")  # doctest: +SKIP
    >>> matches                                                                                  # doctest: +SKIP
    {'test': {17: 204}}
    """
    files, unhashed, sizes = {}, {}, {}
    for split in dict.fromkeys([reference, *queries]):
        files[split], why = _files(fs, name, split)
        if why:
            unhashed[split] = [f"all {len(fs.paths(split, name))} files ({why})"]
            continue
        sizes[split] = []
        for p in files[split]:
            size, why = _size(p)
            sizes[split].append(size)
            if why:
                unhashed.setdefault(split, []).append(f"{p} ({why})")
    matches: dict[str, dict[int, int]] = {s: {} for s in queries}
    if reference not in sizes:
        return matches, unhashed
    wanted = {s for q in queries if q in sizes for s in sizes[q] if s >= 0}
    by_hash: dict[str, int] = {}
    seen: dict[tuple, tuple[str, str]] = {}  # each distinct file hashed once, whatever the rows naming it
    for row, size in enumerate(sizes[reference]):
        if size >= 0 and size in wanted:
            digest, why = _sha256(files[reference][row], size, seen)
            if why:
                unhashed.setdefault(reference, []).append(f"{files[reference][row]} ({why})")
            elif digest:
                by_hash.setdefault(digest, row)
    have = {sizes[reference][r] for r in by_hash.values()}
    for q in queries:
        for row, size in enumerate(sizes.get(q, [])):
            if size >= 0 and size in have:
                digest, why = _sha256(files[q][row], size, seen)
                if why:
                    unhashed.setdefault(q, []).append(f"{files[q][row]} ({why})")
                elif digest in by_hash:
                    matches[q][row] = by_hash[digest]
    return matches, unhashed
