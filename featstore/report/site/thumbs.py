"""Thumbnails of stored images, made once from the source files and cached beside the store.

A thumbnail is the image as the model saw it (square, :func:`featstore.images.decode.load_image`: regular files only,
bounded decoding) at ``side`` pixels, saved as PNG under ``<store>.cache/thumbs/<ab>/<key>.png``. Its key is a digest
of the file's absolute path, size, modification time, inode and change time (``st_ctime_ns``, which no user can set:
a picture replaced by another of the same size with its mtime kept, as ``cp -p``, ``rsync -a`` or ``tar x`` leave it,
still gets a new one) and of the side, so a changed image gets a new thumbnail and an unchanged one is never decoded
again. An image that cannot be read gets no thumbnail and the pages show a placeholder with its reason, cached as
``<key>.txt`` (its first line the reason's HMAC, which covers the Pillow version) only when it is a property of the
file's bytes (:func:`permanent`: not an image Pillow identifies, truncated, a decompression bomb): a failure that may
pass (out of memory, an I/O error, no permission, a file that vanished or blocked) is tried again next time (a note
for it showed a placeholder for a readable image for ever; attack 21). A cached thumbnail is reused only when
``<key>.mac`` beside it holds its HMAC under this user's key (:mod:`featstore.keys`), a note only when its HMAC
verifies: one planted there, or copied with a store from another user, is made again (without a key, every thumbnail
is, and no note is kept).

>>> cache = ThumbCache(Path("features.h5.cache/thumbs"))      # doctest: +SKIP
>>> cache.make(["/data/test/bag/1.png"])["/data/test/bag/1.png"].reason   # doctest: +SKIP
''
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featstore.caches import cache_folder, read_small, write_cached, write_cached_text
from featstore.errors import OutputError
from featstore.keys import sign, user_key, verifies
from featstore.outputs import terminal_safe, write_atomic

logger = logging.getLogger(__name__)

SIDE = 96  # pixels
VERSION = 1  # bump when thumbnails are made differently
MAX_REASON = 300  # characters of a cached failure reason
MAX_THUMB_BYTES = 1 << 20  # a cached thumbnail (96 px PNG, a few KB) is never larger; a bigger file was planted


@dataclass(frozen=True)
class Thumb:
    """An image's thumbnail, or why there is none."""

    source: str  # the image file (absolute)
    key: str | None  # the cached file's stem; None when the image has no thumbnail
    reason: str = ""  # why there is none ("" when there is one)


def _key(source: str, side: int) -> str | None:
    """The cache key of a file as it is now (None when it cannot be stat'ed)."""
    try:
        st = os.stat(source)
    except OSError:
        return None
    stamp = b"%d/%d/%d/%d" % (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)  # ctime: set by the system only
    what = b"\0".join([os.fsencode(source), stamp, b"%d/%d" % (side, VERSION)])
    return hashlib.sha256(what).hexdigest()[:32]


class ThumbCache:
    """The thumbnails of one store (see the module docstring); ``workers`` decoding threads."""

    def __init__(self, folder: Path, side: int = SIDE, workers: int = 2):
        self.folder = Path(folder)
        self.side = side
        self.workers = workers
        self.made = 0  # decoded in this process
        self.reused = 0  # found in the cache
        self._known: dict[str, Thumb] = {}
        self._secret: bytes | None = None  # this user's key, read at the first make()

    def path(self, key: str) -> Path:
        """The cached PNG of a key."""
        return self.folder / key[:2] / f"{key}.png"

    def make(self, sources: list[str]) -> dict[str, Thumb]:
        """The thumbnail of each source file, decoding (in threads) only those not cached yet."""
        from featstore.images.decode import iter_decoded

        todo: dict[str, str] = {}
        self._secret = self._secret or user_key()
        buckets: set[str] = set()  # <ab>/ folders checked: a link there is refused, never read or written through
        for src in dict.fromkeys(sources):
            if src in self._known:
                continue
            key = _key(src, self.side)
            if key is not None and key[:2] not in buckets:
                cache_folder(self.folder.parent, self.folder.name, key[:2], what="thumbnail cache")
                buckets.add(key[:2])
            if key is None:
                self._known[src] = Thumb(src, None, "not found" if not os.path.lexists(src) else "cannot be read")
            elif self._signed(key):  # a bigger, planted or unsigned file: made again, never linked
                self._known[src], self.reused = Thumb(src, key), self.reused + 1
            elif (noted := self._signed_note(key)) is not None:  # a failure note this user's featstore wrote
                self._known[src] = Thumb(src, None, noted)
            else:
                todo[src] = key
        if todo:
            for src, img, reason in iter_decoded(list(todo), self.side, self.workers, 64):
                self._known[src] = self._save(src, todo[src], img, reason)
        return {s: self._known[s] for s in sources}

    def missing(self) -> list[Thumb]:
        """The images asked for that have no thumbnail (each with its reason), in the order first asked."""
        return [t for t in self._known.values() if t.key is None]

    def _save(self, src: str, key: str, img, reason: str) -> Thumb:
        """Cache one decoded image (or its failure); a cache that cannot be written is logged, the pages still work."""
        from PIL import Image

        target = self.path(key)
        try:
            if img is None:
                if self._secret is not None and permanent(reason):  # "<HMAC>\n<reason>": a planted one hid an image
                    note = reason[:MAX_REASON]
                    mac = sign(self._secret, "thumb-note", _noted(target.name), note.encode("utf-8", "surrogateescape"))
                    write_cached_text(
                        self.folder.parent, target.with_suffix(".txt"), f"{mac}\n{note}", "thumbnail cache"
                    )
                return Thumb(src, None, reason)
            buf = io.BytesIO()
            gray = bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
            picture = Image.fromarray(img[..., 0] if gray else img)  # a grayscale image as one channel: 3x smaller
            picture.save(buf, format="PNG", compress_level=1)  # 5x faster than the default level, a little larger
            write_cached(self.folder.parent, target, lambda tmp: tmp.write_bytes(buf.getvalue()), "thumbnail cache")
            if self._secret is not None:
                mac = sign(self._secret, "thumbs", target.name, buf.getvalue())
                write_cached_text(self.folder.parent, target.with_suffix(".mac"), mac, "thumbnail cache")
        except (OSError, OutputError) as exc:
            logger.warning("thumbnail of %s not cached: %s", terminal_safe(src), exc)
            return Thumb(src, None, reason or "the thumbnail cache cannot be written")
        self.made += 1
        return Thumb(src, key, reason)

    def _signed_note(self, key: str) -> str | None:
        """The cached failure reason of ``key`` when its note verifies under this user's key (else it is decoded again)."""
        return _note(self._secret, self.path(key).with_suffix(".txt"), self.path(key).name)

    def _signed(self, key: str) -> bool:
        """Whether the cached thumbnail of ``key`` is a regular file of at most MAX_THUMB_BYTES whose ``.mac`` holds
        its HMAC under this user's key."""
        path = self.path(key)
        if self._secret is None:
            return False
        data, signed = _read(path, MAX_THUMB_BYTES), _read(path.with_suffix(".mac"), 128)
        if data is None or signed is None:
            return False
        return verifies(self._secret, "thumbs", path.name, data, signed.decode("ascii", errors="replace"))

    def export(self, thumb: Thumb, folder: Path, before: Callable[[str], None] | None = None) -> str | None:
        """Put a thumbnail into a site's ``folder`` (once): a hard link to the cached file where the file system
        allows it (cached files are replaced, never changed in place), else a copy. Its file name there, or None.
        ``before(name)`` is called before a file is put there (the report's journal: a killed report's thumbnails
        were in no manifest and stayed in the site for ever, attack 55 #1)."""
        if thumb.key is None:
            return None
        name = f"{thumb.key}.png"
        target = folder / name
        if _regular(target):
            return name
        if before is not None:
            before(name)
        cached = self.path(thumb.key)
        try:
            os.link(cached, target)  # refuses an existing name (a planted link included)
        except OSError:
            if (data := _read(cached, MAX_THUMB_BYTES)) is None:  # read once, never a blocking open by name
                return self._gone(cached)
            write_atomic(target, lambda tmp: tmp.write_bytes(data), "report thumbnail")
            return name
        if not _regular(target, MAX_THUMB_BYTES):  # the inode linked: a FIFO renamed there since it was checked
            target.unlink()
            return self._gone(cached)
        return name

    @staticmethod
    def _gone(cached: Path) -> None:
        logger.warning("cached thumbnail %s changed since it was checked; not shown", terminal_safe(str(cached)))

    def data_uri(self, thumb: Thumb) -> str | None:
        """The thumbnail as a ``data:`` URI (a page that must stand alone), or None."""
        import base64

        if thumb.key is None:
            return None
        path = self.path(thumb.key)
        data = _read(path, MAX_THUMB_BYTES)  # bounded: the cache folder is not trusted to hold what we wrote
        if not data:
            logger.warning(
                "cached thumbnail %s is not a regular file of at most %d bytes; not shown", path, MAX_THUMB_BYTES
            )
            return None
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _note(secret: bytes | None, path: Path, name: str) -> str | None:
    """The failure reason in the note ``path`` when its first line is the HMAC of the rest under ``secret``."""
    if secret is None or (raw := _read(path, 4 * MAX_REASON + 130)) is None:
        return None
    mac, _, reason = raw.decode("utf-8", errors="surrogateescape").partition("\n")
    if not permanent(reason) or not verifies(
        secret, "thumb-note", _noted(name), reason.encode("utf-8", "surrogateescape"), mac
    ):
        return None
    return reason


def permanent(reason: str) -> bool:
    """Whether a decoding failure (:func:`featstore.images.decode.load_image`'s reason) is a property of the file's
    bytes, worth a note: not an image Pillow identifies, empty, over the pixel limit, or what Pillow said of its content
    (truncated, a decompression bomb). Never an OSError with an errno (I/O error, no permission), running out of
    memory, a file that vanished or blocked, nor a file reporting 0 bytes (a pseudo-file): these may pass.

    >>> permanent("cannot decode: image file is truncated (8 bytes not processed)")
    True
    >>> permanent("out of memory while decoding"), permanent("cannot decode: [Errno 5] Input/output error")
    (False, False)
    """
    if "[Errno " in reason or "(it reports 0 bytes" in reason:
        return False
    return reason.startswith(
        ("not an image Pillow can identify", "empty file (0 bytes)", "refused: ", "cannot decode: ")
    )


def _noted(name: str) -> str:
    """What a failure note's HMAC is bound to: the thumbnail's name and the Pillow version (an upgraded Pillow may read
    the file: its notes are not trusted, the file is decoded again)."""
    import PIL

    return f"{name}/pillow-{PIL.__version__}"


def _read(path: Path, at_most: int) -> bytes | None:
    """The bytes of the cached file ``path`` (:func:`featstore.caches.read_small`: opened once, never through a link
    nor waiting on a FIFO renamed there after a check by name); None when it is missing, not a regular file of at most
    ``at_most`` bytes, or cannot be read (the thumbnail or note is made again)."""
    try:
        return read_small(path, at_most)
    except (OSError, ValueError):
        return None


def _regular(path: Path, at_most: int | None = None) -> bool:
    """A regular file, not a link (a link planted in the cache is never followed into a site), of at most ``at_most``
    bytes when given."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and (at_most is None or st.st_size <= at_most)
