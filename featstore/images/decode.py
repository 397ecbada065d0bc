"""Decode one image file to a fixed-size RGB array, and decode many in threads that never hang a run.

Only regular files are opened (never blocking: a FIFO named ``x.jpg`` is refused, not waited on); any
exception a decoder raises becomes an :class:`ImageError` whose message is the reason recorded in the
store; decodes running at the same time share a memory budget (:class:`DecodeBudget`). :func:`iter_decoded`
decodes a list of files in threads, in order, for extraction (local and Ray), predict and fine-tuning alike. What
the resize does is recorded in stores as ``featstore.provenance.RESIZE_ID`` / ``RESIZE_DESCRIPTION``.

>>> load_image("data/train/cat/001.jpg", 224).shape   # doctest: +SKIP
(224, 224, 3)
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featstore.errors import ConfigError, check_paths
from featstore.linkrule import full_path, walk
from featstore.output_images import BY_PATH, reach_regular
from featstore.outputs import terminal_safe

logger = logging.getLogger(__name__)

MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (0.25 GiB of RGBA)
MAX_DECODE_THREADS = 256  # more only wait on the decode budget; a 20-digit count started threads until killed (OOM)
DEFAULT_DECODE_BUDGET = 1 << 30  # bytes of decoded pixels all decode threads may hold together
DECODE_TIMEOUT_S = (
    120.0  # for one image in iter_decoded; a decode thread still stuck then is abandoned (it is a daemon)
)
_STRIP_PIXELS = 1 << 21  # 16/32-bit pixels rescaled at a time (16 MiB of float64)
_KNOWN_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)  # worded by Pillow
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)


class ImageError(Exception):
    """One image could not be used; the message is the reason recorded in the store (always valid UTF-8)."""

    def __init__(self, reason: str):
        super().__init__(printable(reason))


def printable(text: str) -> str:
    r"""``text`` with undecodable file-name bytes, control characters (escape sequences, line breaks) and bidi
    overrides shown as ``\x..`` escapes: safe to log, print to a terminal and store as UTF-8
    (:func:`featstore.outputs.terminal_safe`).

    >>> printable("train/cat/bad\udcff.png"), printable("a\x1b]0;title\x07.png")
    ('train/cat/bad\\xff.png', 'a\\x1b]0;title\\x07.png')
    """
    return terminal_safe(text)


class DecodeBudget:
    """Bytes of decoded pixels that concurrent decodes may hold together, reserved first come, first served.

    An image that does not fit waits until others finish; one larger than the whole budget decodes
    alone. The estimate comes from the header (see ``load_image``), before any pixel is decoded.

    >>> budget = DecodeBudget(1 << 30)
    >>> with budget.reserve(300 << 20):
    ...     budget.in_use
    314572800
    """

    def __init__(self, limit: int):
        self.limit = limit  # bytes
        self.in_use = 0  # bytes reserved now
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()  # waiting tickets, oldest first (no starvation)

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block, waiting for room first."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (self.in_use and self.in_use + nbytes > self.limit):
                    self._cond.wait()
            except BaseException:  # Ctrl-C while waiting in the main thread: give up the place in the queue
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += nbytes
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget(DEFAULT_DECODE_BUDGET)  # shared by every decode thread; replace it to change the limit


def load_image(
    path: str | os.PathLike, size: int, max_pixels: int = MAX_PIXELS, budget: DecodeBudget | None = None
) -> np.ndarray:
    """Decode one image to a ``(size, size, 3)`` uint8 RGB array, or raise ImageError with the reason.

    EXIF orientation is applied; grayscale, 16-bit, palette, RGBA and CMYK become RGB (alpha dropped,
    as Keras's ``load_img`` does); an animated image gives its first frame. Only regular files are
    opened. Every ``Exception`` a decoder raises (``MemoryError`` included) becomes an ImageError;
    ``KeyboardInterrupt`` and ``SystemExit`` pass through.

    >>> load_image("data/train/cat/001.png", 32).shape   # doctest: +SKIP
    (32, 32, 3)
    """
    check_paths(required=True, path=path)  # '' was "file vanished"
    try:
        with open_image_file(path) as fh:
            st_size = os.fstat(fh.fileno()).st_size
            try:
                return _decode(fh, size, max_pixels, budget or DECODE_BUDGET)
            except UnidentifiedImageError:
                raise ImageError(_unidentified(fh, st_size)) from None
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"file vanished: {exc}") from exc
    except MemoryError:
        raise ImageError("out of memory while decoding") from None
    except _KNOWN_ERRORS as exc:
        raise ImageError(f"cannot decode: {exc}") from exc
    except Exception as exc:  # any other decoder bug: one failure record, never an aborted run
        raise ImageError(f"cannot decode: {type(exc).__name__}: {exc}") from exc


def _unidentified(fh: BinaryIO, st_size: int) -> str:
    """Why Pillow could not identify an open file: empty only when it reads as 0 bytes (a /proc or /sys pseudo-file
    reports size 0 and holds data); one byte is read to tell."""
    if st_size:
        return "not an image Pillow can identify"
    try:
        fh.seek(0)
        empty = not fh.read(1)
    except OSError:
        return "not an image Pillow can identify (it reports 0 bytes and cannot be read again: a pseudo-file?)"
    if empty:
        return "empty file (0 bytes)"
    return "not an image Pillow can identify (it reports 0 bytes but holds data: a /proc or /sys pseudo-file?)"


def open_image_file(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for reading without ever blocking; ImageError for FIFOs, sockets and devices, and for an
    image whose path leads through a link another user made, wherever on it (:func:`foreign_link`). Thumbnails, leak
    pictures, ``similar`` and each batch of an extraction open images by path again, after the listing: a colleague's
    link at the data root put the user's private photos in the team's report (attacks 30 #1, 31 #1). The rule is held
    on the file actually reached: the name is first opened with ``O_PATH`` (which reads nothing and calls no device's
    driver), the path is walked (one ``lstat`` per part) and must reach that very file through no other user's link
    (:func:`_check_opened`), and only a regular file is then opened for reading, through ``/proc/self/fd`` (a link to
    a device swapped in after a look by name had the device opened, attack 33 #2)."""
    if not BY_PATH:
        return _open_by_name(path)

    def checked(st: os.stat_result) -> None:  # the link rule on the file reached; anything but a regular file refused
        _check_opened(path, st)
        _refuse_irregular(st.st_mode)

    fd, st = reach_regular(path, True, checked)
    return _reading(fd, st)


def _open_by_name(path: str | os.PathLike) -> BinaryIO:
    """:func:`open_image_file` where there is no ``O_PATH`` or ``/proc`` (macOS): checked by name before the opening
    (never through a link put at the name since: ``O_NOFOLLOW``) and on the file opened after it."""
    lst = os.lstat(path)
    if not stat.S_ISREG(mode := os.stat(path).st_mode):  # before opening: opening some devices has effects
        _reach(path)  # (a link of another user's to it: that reason first)
        _refuse_irregular(mode)
    nofollow = 0 if stat.S_ISLNK(lst.st_mode) else getattr(os, "O_NOFOLLOW", 0)  # a link swapped in since: refused
    fd = os.open(path, _OPEN_FLAGS | nofollow)  # O_NONBLOCK: a FIFO swapped in after the check still cannot block
    try:
        st = os.fstat(fd)
        _check_opened(path, st)
    except BaseException:
        os.close(fd)
        raise
    return _reading(fd, st)


def _reading(fd: int, st: os.stat_result) -> BinaryIO:
    """The file open at ``fd`` (read-only, non-blocking) as a blocking binary file, once it is the regular file ``st``."""
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise ImageError("replaced by another file while it was opened; not read")
        _refuse_irregular(now.st_mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _reach(path: str | os.PathLike) -> tuple[str | None, os.stat_result | None]:
    """The real path ``path`` leads to and its ``lstat`` (None, None: nothing there, or the links loop), once no link on
    the way is another user's (:func:`featstore.linkrule.walk`: one ``lstat`` per part); ImageError with the reason."""
    links, end, st = walk(path, error=ImageError, what="the image")
    for link, lst, target in links:
        if why := foreign_link(link, lst):
            real = os.path.normpath(os.path.join(os.path.dirname(link), target))
            via = link != full_path(path, ImageError, "the image")  # a folder's link, or one the name points to
            raise ImageError(f"its path leads through {link} -> {real}: {why}" if via else why)
    return end, st


def _check_opened(path: str | os.PathLike, st: os.stat_result) -> None:
    """ImageError unless ``path`` reaches, through no other user's link, the file opened (``st``: its ``fstat``): a
    link another user put on the path just for the opening, and took away after it, is said so."""
    end, now = _reach(path)
    if end is None and len(os.fsencode(full_path(path, ImageError, "the image"))) >= 4096:  # PATH_MAX: walk failed
        raise ImageError("cannot be checked: its full path is longer than this system takes (move it nearer to /)")
    if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise ImageError(
            "replaced by another file while it was opened (someone else can rename entries in its folders); not read"
        )


def foreign_link(path: str, st: os.stat_result | None = None) -> str | None:
    """Why the link ``path`` (its lstat ``st``, when known) is not followed because another user made it, or None
    (not a link, or yours or root's: the rule the store's own name follows)."""
    st = os.lstat(path) if st is None else st
    if not stat.S_ISLNK(st.st_mode) or st.st_uid in (os.geteuid(), 0):
        return None
    return (
        f"a link made by another user (uid {st.st_uid}); featstore follows only your own or root's links: make the "
        f"link yourself (or copy the images) if you mean to use what it points to"
    )


def _refuse_irregular(mode: int) -> None:
    """ImageError unless ``mode`` is a regular file's."""
    if not stat.S_ISREG(mode):
        kinds = (
            (stat.S_ISFIFO, "fifo"),
            (stat.S_ISSOCK, "socket"),
            (stat.S_ISCHR, "character device"),
            (stat.S_ISBLK, "block device"),
            (stat.S_ISDIR, "directory"),
        )
        kind = next((name for test, name in kinds if test(mode)), "special file")
        raise ImageError(f"not a regular file ({kind})")


def _decode(fh: BinaryIO, size: int, max_pixels: int, budget: DecodeBudget) -> np.ndarray:
    """The pixels of an open file, resized; memory reserved from ``budget`` while decoding."""
    with Image.open(fh, formats=FORMATS) as im:
        w, h = im.size
        if w * h > max_pixels:  # checked from the header, before any pixel is decoded
            raise ImageError(f"refused: {w}x{h} pixels is over the {max_pixels} limit (decompression bomb?)")
        im.seek(0)
        need = 0
        if im.format in ("JPEG", "MPO"):
            if im.info.get("progressive") or im.info.get("progression"):
                need += (
                    w * h * len(im.getbands()) * 2
                )  # libjpeg keeps every DCT coefficient of a progressive file, at full size
            im.draft(None, (size, size))  # let libjpeg decode at the smallest scale still >= size (2x faster on photos)
        if im.mode == "P" and "transparency" in im.info:
            need += im.size[0] * im.size[1] * 7  # the RGBA copy, then the RGB one
        with budget.reserve(need + decode_bytes(im.mode, *im.size)):
            ImageOps.exif_transpose(im, in_place=True)  # in place: no full-size copy when there is nothing to rotate
            if im.mode.startswith("I") or im.mode == "F":
                gray = _to_gray8(im).resize((size, size), Image.BILINEAR)  # resize 1 channel, then copy it to 3
                return np.asarray(gray.convert("RGB"), dtype=np.uint8)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


# Pillow formats opened: those the listed extensions name (JPEG covers the MPO files of many cameras), and TIFF.
# Never EPS or PDF, whose plugins run Ghostscript, whatever a file's name says.
FORMATS = ("JPEG", "PNG", "BMP", "DIB", "GIF", "WEBP", "TIFF")


def decode_bytes(mode: str, width: int, height: int) -> int:
    """Estimated peak bytes to decode a ``width`` x ``height`` image of Pillow ``mode``: the pixels plus a 4-byte/pixel copy.

    >>> decode_bytes("I;16", 1000, 1000)
    6000000
    """
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4  # Pillow's storage per pixel
    return width * height * (per_pixel + 4)


def _to_gray8(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float image to 8-bit "L", rescaled (not clipped), a strip at a time (no full-size float copy)."""
    w, h = im.size
    if im.mode.startswith("I;16"):
        top = 65535.0
    else:
        hi = float(im.getextrema()[1])
        top = (65535.0 if hi > 255 else 255.0) if im.mode == "I" else max(hi, 1.0)  # "I": usually a 16-bit PNG
    out = Image.new("L", (w, h))
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        strip = np.asarray(im.crop((0, y, w, min(h, y + rows))), dtype=np.float64)
        out.paste(Image.fromarray(np.clip(strip / top * 255.0 + 0.5, 0, 255).astype(np.uint8)), (0, y))
    return out


class DaemonPool(Executor):
    """A thread pool whose threads never hold up Ctrl-C or interpreter exit (ThreadPoolExecutor joins its threads).

    ``shutdown`` cancels queued work and returns at once; a task still running is abandoned.

    >>> pool = DaemonPool(2)
    >>> pool.submit(sum, [1, 2]).result()
    3
    >>> pool.shutdown()
    """

    def __init__(self, workers: int, name: str = "featstore-decode"):
        check_threads(workers, low=1)
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)``; its Future."""
        fut: Future = Future()
        self._tasks.put((fut, fn, args, kwargs))
        return fut

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = True) -> None:
        """Stop the threads after their current task; never waits for them (``wait`` is accepted and ignored)."""
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    task = self._tasks.get_nowait()
                    if task is not None:
                        task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        """Run queued tasks until a None arrives."""
        while (task := self._tasks.get()) is not None:
            fut, fn, args, kwargs = task
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)


def iter_decoded(
    paths: Sequence[str], size: int, threads: int, ahead: int
) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """Decode images in a pool of ``threads``, at most ``ahead`` in flight; yields (path, array or None, reason) in order.

    ``threads=0`` decodes in the calling thread, between model calls (best when the model already uses every core).
    The threads are daemons: on Ctrl-C, an error or an early ``close()`` the generator returns at once, queued
    decodes are cancelled and one still running is abandoned, never waited for. Example::

        for path, img, reason in iter_decoded(["a.jpg", "b.png"], 224, threads=4, ahead=64): ...
    """
    check_threads(threads)  # here, not at the first next(): refused before the caller's own work too
    return _iter_decoded(paths, size, threads, ahead)


def check_threads(threads: int, low: int = 0) -> None:
    """ConfigError unless ``threads`` is a count of decoding threads from ``low`` to :data:`MAX_DECODE_THREADS`."""
    if isinstance(threads, bool) or not hasattr(threads, "__index__") or not low <= int(threads) <= MAX_DECODE_THREADS:
        raise ConfigError(
            f"decoding threads (--workers, --decode-threads) must be from {low} to {MAX_DECODE_THREADS}, got {threads!r}"
        )


def _iter_decoded(
    paths: Sequence[str], size: int, threads: int, ahead: int
) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """:func:`iter_decoded` after its check."""
    if threads == 0:
        for p in paths:
            try:
                yield p, load_image(p, size), ""
            except ImageError as exc:
                yield p, None, str(exc)
        return
    pools = [DaemonPool(threads)]
    pending: collections.deque = collections.deque()
    it = iter(paths)
    try:
        pending.extend((p, pools[-1].submit(load_image, p, size)) for p in itertools.islice(it, ahead))
        while pending:
            p, fut = pending.popleft()
            pending.extend((q, pools[-1].submit(load_image, q, size)) for q in itertools.islice(it, 1))
            try:
                img, reason = fut.result(timeout=DECODE_TIMEOUT_S), ""
            except ImageError as exc:
                img, reason = None, str(exc)
            except (
                concurrent.futures.TimeoutError
            ):  # a file that blocks when read (/proc, a hung network mount): skipped
                img, reason = (
                    None,
                    f"decoding took over {DECODE_TIMEOUT_S:.0f} s (a file that blocks when read?); skipped",
                )
                # the stuck thread keeps its worker: what has not started moves to fresh ones
                pools.append(DaemonPool(threads))
                pending = collections.deque(
                    (q, pools[-1].submit(load_image, q, size) if f.cancel() else f) for q, f in pending
                )
            yield p, img, reason
    finally:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
