"""Refusing to replace an image featstore did not make: a CSV or npz named over one of the dataset's images
(:func:`refuse_image`), a chart named over an image featstore did not draw (:func:`refuse_foreign_image`,
:func:`refuse_unstamped`: featstore's charts carry :data:`CHART_METADATA`'s stamp). Re-exported by
:mod:`featstore.outputs`, where every output's other checks are.

>>> CHART_METADATA
{'Software': 'featstore'}
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

from featstore.errors import OutputError

# one opening of what is at a name, for a look at its bytes: never waited on (a FIFO), never followed (a link), not a
# terminal of this process (also runs.files' one opening of a run's file)
READ_ONCE = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)

_IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


BY_PATH = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")  # a file reached without being opened (Linux)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def reach_regular(
    path: str | os.PathLike, follow: bool, check: Callable[[os.stat_result], object] | None = None
) -> tuple[int, os.stat_result] | None:
    """``path`` reached with ``O_PATH`` (through links when ``follow``; else a link at the name is none), which reads
    nothing and calls no device's driver (opening some has effects: attack 33 #2, #6, #7); ``check(st)`` run on what
    was reached (it may raise); then only a regular file opened for reading, non-blocking, through ``/proc/self/fd``
    (that very file: no rename can redirect it): ``(descriptor, its stat)``, or None where it is not a regular file.
    Linux only (:data:`BY_PATH`); an OSError of the reopening names ``path``, not the descriptor."""
    where = os.open(path, os.O_PATH | os.O_CLOEXEC | (0 if follow else _NOFOLLOW))
    try:
        st = os.fstat(where)
        if check is not None:
            check(st)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            return os.open(f"/proc/self/fd/{where}", READ_ONCE & ~_NOFOLLOW), st
        except OSError as exc:  # (EACCES: named by the path given)
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
    finally:
        os.close(where)


def regular_fd(path: str | os.PathLike, follow: bool = False) -> int | None:
    """A read-only, non-blocking descriptor of the regular file at ``path`` (through links when ``follow``; else a link
    at the name is none), or None where there is none: :func:`reach_regular` (no device's driver called). Without
    ``O_PATH`` (macOS), opened non-blocking by name and closed again unless a regular file. OSError where nothing can
    be reached there (FileNotFoundError: nothing there), for the caller to word. The one opening that output looks,
    ``--model``/``--weights`` files (:mod:`featstore.models.held_input`) and a run's files share."""
    if BY_PATH:
        found = reach_regular(path, follow)
        return None if found is None else found[0]
    fd = os.open(path, (READ_ONCE & ~_NOFOLLOW) | (0 if follow else _NOFOLLOW))
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


@contextlib.contextmanager
def regular_file(path: str | os.PathLike, follow: bool = False) -> Iterator[BinaryIO | None]:
    """The regular file at ``path``, opened once for reading, never waited on and, unless ``follow``, never through a
    link at the name; None where there is none (nothing, a link, a folder, FIFO, device, or unreadable:
    ``check_output`` says which). Opened by name after a check of the name, a FIFO another user renamed onto it in
    between blocked ``export``, ``predict``, ``leaks`` and ``similar`` forever (attack 31 #5); a device is never
    opened (its driver's open can have effects: attack 33 #6, #7). Example::

        with regular_file("predictions.csv") as fh:
            head = fh.read(12) if fh is not None else b""
    """
    try:
        fd = regular_fd(path, follow)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        fd = None
    if fd is None:
        yield None
        return
    with os.fdopen(fd, "rb") as fh:
        yield fh


def refuse_image(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse a CSV/npz/Parquet output whose name holds an image (PNG, JPEG, GIF, BMP, TIFF, WebP): a slip that
    names one of the dataset's images (``predict photos/ --out photos/cat.png``) would have replaced it. Example::

        refuse_image("predictions.csv", "--out")
    """
    try:
        with regular_file(path) as fh:
            if fh is None:
                return  # nothing there (or not a readable file): check_output says what is wrong with it
            head = fh.read(12)
    except OSError:
        return
    kind = next((k for sig, k in _IMAGE_SIGNATURES.items() if head.startswith(sig)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    if kind is not None:
        raise OutputError(
            f"{what} {path} is an image ({kind}); featstore never replaces an image with its output. "
            f"Give a new file name"
        )


CHART_METADATA = {"Software": "featstore"}  # stamped into every chart featstore draws (savefig's metadata)


def refuse_foreign_image(path: str | os.PathLike, what: str = "--png") -> None:
    """Refuse a chart name holding an image featstore did not draw (a PNG without :data:`CHART_METADATA`'s stamp, or a
    JPEG, GIF, ...): ``runs compare --out data/train/cat/1.png`` would have replaced one of the dataset's images with a
    chart. A chart featstore drew is replaced as before. Example::

        refuse_foreign_image("compare.png", "--out")
    """
    try:
        with regular_file(path) as fh:
            if fh is None:
                return  # nothing there (or not a readable file): check_output says what is wrong with it
            head = fh.read(12)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and _stamped(fh):
                return
    except OSError:
        return
    try:
        refuse_image(path, what)
    except OutputError:
        raise OutputError(
            f"{what} {path} is an image not drawn by featstore; featstore never replaces it with a chart. "
            f"Give a new file name, e.g. chart.png, or remove it first if it is a chart from an older featstore"
        ) from None


def refuse_unstamped(path: str | os.PathLike, what: str = "PNG") -> None:
    """Refuse a default chart name (one featstore chose, e.g. ``<store>.leaks.png``) that holds any file featstore did
    not draw: a user's own file there is never replaced without being named. Nothing there, or a chart featstore drew
    (:data:`CHART_METADATA`'s stamp), passes. Example::

        refuse_unstamped("features.h5.leaks.png")
    """
    try:
        with regular_file(path) as fh:
            if fh is None or (fh.read(8) == b"\x89PNG\r\n\x1a\n" and _stamped(fh)):
                return  # nothing there, or not a regular file (check_output says what is wrong with it); or a chart
    except OSError:
        return
    raise OutputError(
        f"{what} {path} already exists and was not drawn by featstore; featstore never replaces it with a chart at a "
        f"name it chose. Move that file away, or name the chart yourself"
    )


def _stamped(fh) -> bool:
    """Whether the PNG open in ``fh`` has a ``tEXt`` chunk ``Software`` = featstore before its
    image data (at most 16 chunks of at most 1 MiB each are looked at)."""
    fh.seek(8)
    for _ in range(16):
        header = fh.read(8)
        if len(header) < 8 or header[4:] == b"IDAT":
            return False
        size = int.from_bytes(header[:4], "big")
        if header[4:] == b"tEXt" and size <= 1 << 20:
            key, _, value = fh.read(size).partition(b"\0")
            if key == b"Software" and value.startswith(CHART_METADATA["Software"].encode()):
                return True
            fh.seek(4, os.SEEK_CUR)
        else:
            fh.seek(size + 4, os.SEEK_CUR)
    return False
