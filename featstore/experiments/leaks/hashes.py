"""Exact copies by content: the sha256 of the image files' bytes, whatever the features say.

Two checks share one listing of the files (the stored paths joined to each split's ``source_root``, one ``stat``
each): :func:`same_bytes` pairs query rows with a reference row holding the same bytes (only files whose size also
occurs on the other side are hashed), and :func:`~featstore.experiments.leaks.within.copies_within` groups the rows
of one split whose files hold the same bytes (only files whose size occurs twice in the split are hashed). Two files
with the same bytes have the same size, so the cost is a ``stat`` per image plus the few candidates read, each
distinct file once (rows naming one file through other spellings, ``d1/../a.png`` and ``d2/../a.png``, or hard links
share its digest: keyed by device, inode, size and modification time). A file that is gone, is not a regular file or
is larger than :data:`MAX_HASH_BYTES` is listed with the reason, never opened blindly (a FIFO would block) and never
a crash. A file that changed since extraction (another size or mtime than the split's recorded listing:
:func:`featstore.store.changed.changed_rows`) is not the image the row's features were computed from: it is neither
hashed nor paired as a "same bytes" copy (attack 64 #10: a name reused for another picture was a copy of train's),
and is listed in ``unhashed`` as "changed since extraction" and counted in :attr:`Listing.changed`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from featstore.images.decode import ImageError, open_image_file
from featstore.store.changed import changed_rows
from featstore.store.reader import FeatureStore

MAX_HASH_BYTES = 1 << 30  # a larger "image" is not hashed (listed as such)
READ = 1 << 20
CHANGED = "changed since extraction"


@dataclass
class Listing:
    """A split's files: their paths (joined to ``source_root``) and, per row, what one ``stat`` told (numpy arrays:
    size -1 where the file cannot be compared; device, inode and modification time identify the file)."""

    files: list[str]
    root: str  # the split's source_root: files[i] is os.path.join(root, stored path i)
    size: np.ndarray  # int64
    dev: np.ndarray  # uint64
    ino: np.ndarray  # uint64
    mtime: np.ndarray  # int64, nanoseconds
    changed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # rows whose file changed since
    # extraction (size -1 here: never hashed)


def _stat(path: str) -> tuple[os.stat_result | None, str]:
    """(stat of a regular file, "") or (None, why it cannot be compared)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "not found"
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size > MAX_HASH_BYTES:
        return None, f"larger than {MAX_HASH_BYTES >> 20} MiB"
    return st, ""


def _sha256(path: str, size: int, seen: dict[tuple, tuple[str, str]], keep: bool = True) -> tuple[str, str]:
    """(hex digest, "") of at most ``size`` bytes read from a regular file, or ("", why not); a file already hashed
    (``seen``: by device, inode, size and modification time of the file opened) is not read again: 250 rows naming one
    32 MiB file read 7.8 GiB. ``keep=False`` reads ``seen`` without adding to it (the caller dedups by itself)."""
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
            if key in seen:
                return seen[key]
            got = _read_digest(fh.fileno(), size)
            if keep:
                seen[key] = got
            return got
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


def listing(fs: FeatureStore, name: str, split: str, unhashed: dict[str, list[str]]) -> Listing | None:
    """The split's files and one ``stat`` of each, or None when they cannot be found (no ``source_root``: said in
    ``unhashed``, as is each file that cannot be compared)."""
    root = str(fs.split_info(split, name).get("source_root") or "")
    paths = fs.paths(split, name)
    if not root:
        unhashed[split] = [f"all {len(paths)} files (no source_root recorded)"]
        return None
    files = [os.path.join(root, p) for p in paths]
    del paths
    n = len(files)
    out = Listing(
        files, root, np.full(n, -1, np.int64), np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.int64)
    )
    for i, p in enumerate(files):
        st, why = _stat(p)
        if st is None:
            unhashed.setdefault(split, []).append(f"{p} ({why})")
            continue
        out.size[i], out.dev[i], out.ino[i], out.mtime[i] = st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns
    out.changed = np.flatnonzero(changed_rows(fs, name, split, stats=(out.size, out.mtime)))
    for i in out.changed:  # another picture at the row's path: not the image extracted, never "the same bytes"
        unhashed.setdefault(split, []).append(f"{files[i]} ({CHANGED})")
    out.size[out.changed] = -1
    return out


def same_bytes(
    fs: FeatureStore,
    name: str,
    queries: Sequence[str],
    reference: str,
    seen: dict[tuple, tuple[str, str]] | None = None,
    listings: dict[str, Listing | None] | None = None,
    unhashed: dict[str, list[str]] | None = None,
) -> tuple[dict[str, dict[int, int]], dict[str, list[str]]]:
    """Query rows whose image file has the same bytes as a reference row's: ``{split: {query row: train row}}``.

    Also returns ``{split: ["path (why)", ...]}`` for files that could not be compared (gone, not regular, too big);
    the paths are as found (print them through :func:`featstore.outputs.terminal_safe`). ``seen`` (the digests read,
    by file), ``listings`` and ``unhashed`` are filled for :func:`~featstore.experiments.leaks.within.copies_within`
    when given.

    >>> matches, unhashed = same_bytes(FeatureStore("features.h5"), "vgg16", ["test"], "train")  # doctest: +SKIP
    >>> matches                                                                                  # doctest: +SKIP
    {'test': {17: 204}}
    """
    seen = {} if seen is None else seen  # each distinct file hashed once, whatever the rows naming it
    listings = {} if listings is None else listings
    unhashed = {} if unhashed is None else unhashed
    for split in dict.fromkeys([reference, *queries]):
        if split not in listings:
            listings[split] = listing(fs, name, split, unhashed)
    matches: dict[str, dict[int, int]] = {s: {} for s in queries}
    ref = listings[reference]
    if ref is None:
        return matches, unhashed
    wanted = np.unique(np.concatenate([listings[q].size for q in queries if listings[q] is not None] or [[]]))
    wanted = wanted[wanted >= 0]
    by_hash: dict[str, int] = {}
    for row in np.flatnonzero((ref.size >= 0) & np.isin(ref.size, wanted)):
        row = int(row)
        digest, why = _sha256(ref.files[row], int(ref.size[row]), seen)
        if why:
            unhashed.setdefault(reference, []).append(f"{ref.files[row]} ({why})")
        elif digest:
            by_hash.setdefault(digest, row)
    have = np.unique(ref.size[list(by_hash.values())]) if by_hash else np.zeros(0, np.int64)
    for q in queries:
        got = listings[q]
        if got is None:
            continue
        for row in np.flatnonzero((got.size >= 0) & np.isin(got.size, have)):
            row = int(row)
            digest, why = _sha256(got.files[row], int(got.size[row]), seen)
            if why:
                unhashed.setdefault(q, []).append(f"{got.files[row]} ({why})")
            elif digest in by_hash:
                matches[q][row] = by_hash[digest]
    return matches, unhashed
