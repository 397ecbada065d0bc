import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore import DataError, FeatureStore, discover, extract, load_image
from featstore.images import ImageError

from .conftest import write_images


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels: what a decompression bomb looks like before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _jpeg_bytes(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture
def odd_images(tmp_path):
    """One folder of every awkward kind of file, good and bad; returns {name: path}."""
    d = tmp_path / "odd"
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    files = {}

    def add(name, writer):
        p = d / name
        writer(p)
        files[name] = p

    add("zero.jpg", lambda p: p.write_bytes(b""))
    add("truncated.jpg", lambda p: p.write_bytes(_jpeg_bytes(rgb)[:200]))
    add("text.jpg", lambda p: p.write_text("this is not an image\n"))
    add("cmyk.jpg", lambda p: Image.fromarray(rgb).convert("CMYK").save(p))
    add("gray16.png", lambda p: Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)).save(p))
    add("gray.png", lambda p: Image.fromarray(rgb[..., 0]).save(p))
    add("rgba.png", lambda p: Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(p))
    add("palette.png", lambda p: Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(p, transparency=0))
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 200)]
    add("animated.gif", lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0))
    add("bomb.png", lambda p: _png_header_only(p, 30000, 30000))
    add("ünïcødé 猫.png", lambda p: Image.fromarray(rgb).save(p))

    def exif_rotated(p):
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 CW to display
        Image.fromarray(rgb).save(p, exif=exif.tobytes())

    add("exif_rot.jpg", exif_rotated)
    return files


GOOD = ["cmyk.jpg", "gray16.png", "gray.png", "rgba.png", "palette.png", "animated.gif", "ünïcødé 猫.png", "exif_rot.jpg"]
BAD = {"zero.jpg": "empty file", "truncated.jpg": "cannot decode", "text.jpg": "not an image", "bomb.png": "decompression bomb"}


@pytest.mark.parametrize("name", GOOD)
def test_awkward_but_valid_images_decode_to_rgb(odd_images, name):
    arr = load_image(odd_images[name], 16)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_raise_with_reason(odd_images, name):
    with pytest.raises(ImageError, match=BAD[name]):
        load_image(odd_images[name], 16)


def test_specific_conversions(odd_images):
    g16 = load_image(odd_images["gray16.png"], 30)
    assert g16.max() > 200 and (g16[..., 0] == g16[..., 1]).all()  # rescaled from 16 bits, not clipped to white/black
    gif = load_image(odd_images["animated.gif"], 8)
    assert abs(int(gif.mean()) - 10) <= 2  # first frame
    plain = odd_images["exif_rot.jpg"].with_name("plain.jpg")
    with Image.open(odd_images["exif_rot.jpg"]) as im:
        assert im.size == (30, 20)
        im.save(plain, quality=100)  # same pixels, no orientation tag
    upright, rotated = load_image(plain, 16).astype(int), load_image(odd_images["exif_rot.jpg"], 16).astype(int)
    err_rotated = np.abs(rotated - np.rot90(upright, k=-1)).mean()  # rotated 90 degrees clockwise, as the tag says
    assert err_rotated < 8 and np.abs(rotated - upright).mean() > 3 * err_rotated


def test_bad_images_are_recorded_and_run_continues(tmp_path, tiny_config, odd_images):
    root = tmp_path / "data"
    write_images(root, "train", {"a": 3, "b": 3})
    for name, p in odd_images.items():
        target = root / "train" / "b" / name
        target.write_bytes(p.read_bytes())
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    r = extract(root, "train", tmp_path / "f.h5", tiny_config, batch_size=4)
    store = FeatureStore(tmp_path / "f.h5")
    assert r.failed == len(BAD) and r.rows == 6 + len(GOOD)
    failed = dict(store.failures("train"))
    assert set(failed) == {f"train/b/{n}" for n in BAD}
    assert "decompression bomb" in failed["train/b/bomb.png"]
    X, y = store.load("train")
    paths = store.paths("train")
    assert len(X) == len(y) == len(paths)
    assert all((label == 0) == p.startswith("train/a/") for p, label in zip(paths, y))  # labels stay aligned
    assert "train/b/ünïcødé 猫.png" in paths


def test_discover_symlink_loop_and_ignored_files(tmp_path):
    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 2})
    os.symlink(root / "train" / "a", root / "train" / "a" / "loop")
    (root / "train" / "b" / "readme.md").write_text("x")
    listing = discover(root, "train")
    assert len(listing.items) == 4 and listing.n_ignored == 1 and listing.skipped_dirs
    assert listing.class_names == ["a", "b"]


def test_discover_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass --data"):
        discover(tmp_path / "nope", "train")
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="splits found in .*: train"):
        discover(tmp_path / "d", "validation")
    with pytest.raises(DataError, match="no class folders"):
        discover(tmp_path / "d", "train")
    (tmp_path / "d" / "train" / "cat").mkdir()
    (tmp_path / "d" / "train" / "cat" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images .* 1 other files ignored"):
        discover(tmp_path / "d", "train")


def test_a_run_of_bad_files_is_committed_in_batches(tmp_path, tiny_config):
    from featstore import writer

    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 2})
    for i in range(9):
        (root / "train" / "b" / f"zz_bad{i}.jpg").write_bytes(b"")
    calls = []
    real = writer.append

    def spy(*args, **kwargs):
        calls.append((len(args[5]), len(args[6])))  # rows, failures per commit
        return real(*args, **kwargs)

    import pytest as _pytest
    mp = _pytest.MonkeyPatch()
    mp.setattr(writer, "append", spy)
    try:
        r = extract(root, "train", tmp_path / "f.h5", tiny_config, batch_size=4)
    finally:
        mp.undo()
    assert r.rows == 4 and r.failed == 9
    assert max(rows + failed for rows, failed in calls) <= 4 and len(calls) == 4  # 13 images, commits of at most 4
