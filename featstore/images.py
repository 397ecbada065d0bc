"""Find images in ``<root>/<split>/<class>/...`` folders and decode any of them to RGB arrays.

>>> listing = discover("data/fashion_mnist", "train")  # doctest: +SKIP
>>> listing.class_names[:2], len(listing.items)        # doctest: +SKIP
(['ankle_boot', 'bag'], 300)
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (0.25 GiB of RGBA)
RESIZE = "PIL bilinear to a square, aspect ratio not kept; JPEG draft (DCT-scaled) decoding"  # recorded in stores


class ImageError(Exception):
    """One image could not be used; the message is the reason recorded in the store."""


@dataclass(frozen=True)
class ImageListing:
    """Images of one split, in the order they are written to the store."""

    root: Path  # the data root (paths are relative to it)
    split: str  # split folder name
    class_names: list[str]  # sorted class folder names; label i is class_names[i]
    items: list[tuple[str, int]]  # (path relative to root, label), class-major then path order
    n_ignored: int = 0  # files without an image extension
    skipped_dirs: list[str] = field(default_factory=list)  # symlink loops / repeated folders not followed

    def entries(self):  # TEMP until the images branch lands
        return [(p, l, 0, 0) for p, l in self.items]

    def diff(self, old):  # TEMP until the images branch lands
        class D:
            def summary(self_):
                return "changed"
        return D()

    def digest(self) -> str:
        """sha256 of the ordered (path, label) list: tells whether a resumed run sees the same work."""
        h = hashlib.sha256()
        for path, label in self.items:
            h.update(f"{label}\t{path}\n".encode())
        return h.hexdigest()


def discover(root: str | os.PathLike, split: str) -> ImageListing:
    """List the images of ``root/split/<class>/**`` with labels from the class folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; pass --data ROOT, a folder holding <split>/<class>/<images>")
    split_dir = root / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"split folder {split_dir} does not exist; splits found in {root}: {', '.join(present) or 'none'}"
        )
    class_names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise DataError(f"{split_dir} has no class folders; put images in {split_dir}/<class name>/")
    items: list[tuple[str, int]] = []
    ignored = 0
    skipped: list[str] = []
    for label, name in enumerate(class_names):
        files, n_ignored = _walk_images(split_dir / name, skipped)
        ignored += n_ignored
        items.extend((str(p.relative_to(root)), label) for p in files)
    if not items:
        raise DataError(
            f"no images under {split_dir}/<class>/ (looked for {', '.join(IMAGE_EXTENSIONS)}; {ignored} other files ignored)"
        )
    if ignored:
        logger.info("%s: ignored %d files without an image extension", split_dir, ignored)
    return ImageListing(root, split, class_names, items, ignored, skipped)


def _walk_images(folder: Path, skipped: list[str]) -> tuple[list[Path], int]:
    """Image files under ``folder`` (symlinks followed, loops skipped), sorted; count of other files."""
    seen: set[str] = set()
    found: list[Path] = []
    ignored = 0
    def unreadable(err: OSError) -> None:
        raise DataError(f"cannot read folder {err.filename}: {err.strerror}; fix its permissions or move it out of the data root")

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=unreadable):
        real = os.path.realpath(dirpath)
        if real in seen:
            skipped.append(dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if fname.startswith("."):
                continue
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / fname)
            else:
                ignored += 1
    return sorted(found), ignored


def load_image(path: str | os.PathLike, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image to a ``(size, size, 3)`` uint8 RGB array, or raise ImageError with the reason.

    EXIF orientation is applied; grayscale, 16-bit, palette, RGBA and CMYK become RGB (alpha dropped,
    as Keras's ``load_img`` does); an animated image gives its first frame.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:  # checked from the header, before any pixel is decoded
                raise ImageError(f"refused: {w}x{h} pixels is over the {max_pixels} limit (decompression bomb?)")
            im.seek(0)
            if im.format == "JPEG":
                im.draft(None, (size, size))  # let libjpeg decode at the smallest scale still >= size (2x faster on photos)
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
            rgb = rgb.resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"file vanished: {exc}") from exc
    except UnidentifiedImageError:
        size_b = os.path.getsize(path) if os.path.exists(path) else -1
        raise ImageError("empty file (0 bytes)" if size_b == 0 else "not an image Pillow can identify") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"cannot decode: {exc}") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; 16/32-bit integer and float images are rescaled, not clipped."""
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "I":  # 32-bit integer: usually a 16-bit PNG; 8-bit range kept as is
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            top = max(float(arr.max(initial=0)), 1.0)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")
