import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore import DataError, FeatureStore, discover, extract, load_image
from featstore.images.listing import ImageError

from .conftest import write_images


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h pixels: what a decompression bomb looks like before decoding."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


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
    add("gray16.png", lambda p: Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).save(p))
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


GOOD = [
    "cmyk.jpg",
    "gray16.png",
    "gray.png",
    "rgba.png",
    "palette.png",
    "animated.gif",
    "ünïcødé 猫.png",
    "exif_rot.jpg",
]
BAD = {
    "zero.jpg": "empty file",
    "truncated.jpg": "cannot decode",
    "text.jpg": "not an image",
    "bomb.png": "decompression bomb",
}


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
    assert len(listing.items) == 4 and listing.n_ignored == 1 and listing.skipped_links
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
    from featstore.store import writer

    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 2})
    for i in range(9):
        (root / "train" / "b" / f"zz_bad{i}.jpg").write_bytes(b"")
    calls = []
    real = writer.SplitWriter.commit

    def spy(self, features, labels, paths, failures, *args, **kwargs):
        calls.append((len(paths), len(failures)))  # rows, failures per commit
        return real(self, features, labels, paths, failures, *args, **kwargs)

    import pytest as _pytest

    mp = _pytest.MonkeyPatch()
    mp.setattr(writer.SplitWriter, "commit", spy)
    try:
        r = extract(root, "train", tmp_path / "f.h5", tiny_config, batch_size=4)
    finally:
        mp.undo()
    assert r.rows == 4 and r.failed == 9
    assert max(rows + failed for rows, failed in calls) <= 4 and len(calls) == 4  # 13 images, commits of at most 4


# --- issue 8: hostile folders, special files, decoder exceptions, decode memory, non-UTF-8 names ---

import importlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from .adversarial_images import HOSTILE_FOLDER_CASES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread; its result, or a test failure if it is still running after ``seconds``."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (hung)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _unblock(fifo: Path) -> None:
    """Open the FIFO for writing and close it, so that a reader stuck on it (old code) gets EOF."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.parametrize("case_id,build,expect", HOSTILE_FOLDER_CASES, ids=[c[0] for c in HOSTILE_FOLDER_CASES])
def test_hostile_folder_listing_and_decoding(tmp_path, case_id, build, expect):
    """Each table row, at the image level (discover + load_image); the full extract runs in the adversarial module."""
    from featstore.images.listing import discover as discover_

    build(tmp_path)
    listing = discover_(tmp_path / "data", "train")
    assert len(listing.skipped_links) == expect["skipped_links"], listing.skipped_links
    assert listing.class_names == sorted(expect["labels"])
    ok: dict[str, int] = dict.fromkeys(listing.class_names, 0)
    failed = 0
    for rel, label in listing.items:
        try:
            _within(10, load_image, listing.root / rel, 8)
            ok[listing.class_names[label]] += 1
        except ImageError:
            failed += 1
    assert (sum(ok.values()), failed, ok) == (expect["rows"], expect["failed"], expect["labels"])
    listing.digest()  # never raises, whatever the names


def test_dir_link_to_split_is_reported_with_reason(tmp_path, caplog):
    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 2})
    os.symlink("..", root / "train" / "b" / "x")
    listing = discover(root, "train")
    assert [lab for _, lab in listing.items] == [0, 0, 1, 1]
    assert listing.skipped_links == [("train/b/x", "points to the split folder, the data root or a parent of them")]
    assert any(r.levelname == "WARNING" and "train/b/x" in r.getMessage() for r in caplog.records)


def test_files_under_several_labels_are_grouped_whole_in_listing_order(tmp_path, caplog):
    """discover groups rows by file from 16 bytes a row (device, inode arrays), not a dict entry per row (~350 bytes
    a row: ~350 MB at 10⁶ images): each shared file once, with all its rows, the files in the order of their first row."""
    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 1, "c": 1})
    a = root / "train" / "a"
    os.link(a / "img_001.jpg", root / "train" / "b" / "x1.jpg")
    os.link(a / "img_000.png", root / "train" / "b" / "x0.png")
    os.link(a / "img_000.png", root / "train" / "c" / "x0.png")
    discover(root, "train")
    said = [r.getMessage() for r in caplog.records if "one file under" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].endswith("under 3 labels: train/a/img_000.png, train/b/x0.png, train/c/x0.png"), said[0]
    assert said[1].endswith("under 2 labels: train/a/img_001.jpg, train/b/x1.jpg"), said[1]


def test_one_file_under_two_labels_is_warned_and_reported(tmp_path, caplog):
    from featstore.images.listing import duplicate_files

    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 2})
    os.link(root / "train" / "a" / "img_000.png", root / "train" / "b" / "same.png")  # a hard link: not a symlink
    listing = discover(root, "train")
    assert "one file under 2 labels" in caplog.text
    dups = duplicate_files(root, listing.items)
    assert [sorted(d.rows) for d in dups] == [[("train/a/img_000.png", 0), ("train/b/same.png", 1)]]
    assert dups[0].real_path == os.path.realpath(root / "train" / "a" / "img_000.png")
    stored = [(os.fsencode(p), lab) for p, lab in listing.items]  # bytes, as a store gives them back
    assert len(duplicate_files(root, stored)) == 1
    assert duplicate_files(root, [("train/a/img_000.png", 0), ("train/a/img_000.png", 0)]) == []
    assert len(duplicate_files(root, [("train/a/img_000.png", 0)] * 2, across_labels=False)) == 1


def test_listing_digest_and_diff_cover_size_and_mtime(tmp_path):
    root = tmp_path / "data"
    write_images(root, "train", {"a": 3, "b": 2})
    before = discover(root, "train")
    assert before.entries()[0] == ("train/a/img_000.png", 0, before.sizes[0], before.mtimes_ns[0])
    st = os.stat(root / "train" / "a" / "img_001.jpg")
    os.utime(root / "train" / "a" / "img_001.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only
    after = discover(root, "train")
    assert after.items == before.items and after.digest() != before.digest()
    (root / "train" / "b" / "img_000.png").unlink()
    write_images(root, "train", {"c": 1})
    (root / "train" / "a" / "img_002.png").write_bytes((root / "train" / "a" / "img_002.png").read_bytes() + b"\0")
    d = discover(root, "train").diff(before.entries())
    assert (d.added, d.removed, d.changed) == (
        ["train/c/img_000.png"],
        ["train/b/img_000.png"],
        ["train/a/img_001.jpg", "train/a/img_002.png"],
    )
    assert d.summary() == (
        "1 added, 1 removed, 2 changed (first: train/c/img_000.png, train/b/img_000.png, "
        "train/a/img_001.jpg, train/a/img_002.png)"
    )
    assert d.summary(first=1).endswith("(first: train/c/img_000.png, ...)")
    assert not before.diff((os.fsencode(p), lab, s, m) for p, lab, s, m in before.entries())


def test_non_utf8_name_is_listed_digested_and_loaded(tmp_path):
    from featstore.images.listing import path_from_store, path_to_store, printable

    root = tmp_path / "data"
    write_images(root, "train", {"a": 1, "b": 1})
    raw = os.path.join(os.fsencode(root / "train" / "a"), b"bad\xff.png")
    try:
        fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        pytest.skip(f"file system refuses non-UTF-8 names: {exc}")
    with os.fdopen(fd, "wb") as fh:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(fh, "PNG")
    listing = discover(root, "train")
    name = "train/a/bad\udcff.png"
    assert (name, 0) in listing.items
    assert len(listing.digest()) == 64
    assert load_image(root / name, 8).shape == (8, 8, 3)
    assert path_to_store(name) == b"train/a/bad\xff.png" and path_from_store(path_to_store(name)) == name
    assert printable(name) == "train/a/bad\\xff.png"
    with pytest.raises(ImageError) as err:
        load_image(root / "train" / "a" / "gone\udcff.png", 8)
    str(err.value).encode("utf-8")  # reasons are valid UTF-8 whatever the name


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    try:
        with pytest.raises(ImageError, match=r"not a regular file \(fifo\)"):
            _within(10, load_image, fifo, 8)
    finally:
        _unblock(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_among_images_extract_completes_with_failure_record(tmp_path, tiny_config):
    root = tmp_path / "data"
    write_images(root, "train", {"a": 2, "b": 2})
    fifo = root / "train" / "a" / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        r = _within(120, lambda: extract(root, "train", tmp_path / "f.h5", tiny_config, batch_size=2, decode_threads=2))
    finally:
        _unblock(fifo)
    assert (r.rows, r.failed) == (4, 1)
    assert dict(FeatureStore(tmp_path / "f.h5").failures("train")) == {"train/a/pipe.jpg": "not a regular file (fifo)"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_predict_collects_named_fifo_and_skips_link_to_parent(tmp_path):
    from featstore.experiments.predict import collect_images

    write_images(tmp_path, "in", {"x": 1})
    _png = tmp_path / "in" / "x" / "img_000.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "sibling.png")
    os.symlink("../..", tmp_path / "in" / "x" / "up")  # -> tmp_path, which holds sibling.png and in/ itself
    os.mkfifo(tmp_path / "pipe.jpg")
    assert collect_images([tmp_path / "in", tmp_path / "pipe.jpg"]) == [_png, tmp_path / "pipe.jpg"]


class _Boom(Exception):
    """A decoder bug nobody planned for."""


@pytest.mark.parametrize(
    "exc",
    [
        __import__("struct").error("unpack requires a buffer of 4 bytes"),
        IndexError("list index out of range"),
        ZeroDivisionError("division by zero"),
        _Boom("odd"),
        MemoryError(),
    ],
)
def test_any_decoder_exception_becomes_a_failure_record(odd_images, monkeypatch, exc):
    from PIL import ImageFile

    from featstore.images.decode import iter_decoded

    def broken_load(self):
        raise exc

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError, match="out of memory" if isinstance(exc, MemoryError) else type(exc).__name__):
        load_image(odd_images["gray.png"], 8)
    rows = list(iter_decoded([str(odd_images["gray.png"]), str(odd_images["zero.jpg"])], 8, threads=2, ahead=2))
    assert [(img is None, bool(reason)) for _, img, reason in rows] == [(True, True), (True, True)]


def test_closing_decoder_with_a_stuck_worker_returns_promptly(monkeypatch):
    extract_mod = importlib.import_module("featstore.images.decode")

    release = threading.Event()
    threading.Timer(
        10, release.set
    ).start()  # old code would wait for this; the test fails on the time instead of hanging

    def fake_load(path, size):
        if path == "stuck":
            release.wait()
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(extract_mod, "load_image", fake_load)
    gen = extract_mod.iter_decoded(["ok", "stuck"] + ["more"] * 20, 8, threads=2, ahead=8)
    assert next(gen)[0] == "ok"
    t = time.monotonic()
    gen.close()
    assert time.monotonic() - t < 2
    release.set()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX-only")
def test_ctrl_c_ends_a_run_with_a_stuck_decode_within_seconds(tmp_path):
    script = (
        "import importlib, signal, threading\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even if this suite runs in the background (SIG_IGN)\n"
        "ex = importlib.import_module('featstore.images.decode')\n"
        "ex.load_image = lambda p, s: threading.Event().wait()  # a decode that never returns\n"
        "gen = ex.iter_decoded(['a.jpg', 'b.jpg'], 8, threads=2, ahead=2)\n"
        "print('ready', flush=True)\n"
        "next(gen)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{proc.pid}/status")
            sig = (
                [ln for ln in status.read_text().splitlines() if ln.startswith(("Sig", "Shd", "Threads"))]
                if status.exists()
                else []
            )
            pytest.fail(
                f"the child did not end within 60 s of SIGINT; its signal state: {sig}; parent's mask "
                f"{signal.pthread_sigmask(signal.SIG_BLOCK, [])}, SIGINT handler {signal.getsignal(signal.SIGINT)}"
            )
        assert time.monotonic() - t < 5 and "KeyboardInterrupt" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_large_16bit_png_decodes_without_full_size_float_copies(tmp_path):
    """6000x6000 16-bit (84 KB): numpy's peak (traced) was 824 MB in the old float64 path; now strips of 16 MB."""
    import tracemalloc

    path = tmp_path / "big16.png"
    Image.fromarray(np.full((6000, 6000), 40000, np.uint16)).save(path)
    tracemalloc.start()
    try:
        img = load_image(path, 224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert int(img[0, 0, 0]) == round(40000 / 65535 * 255) and (img == img[0, 0, 0]).all()
    assert peak < 100 * 2**20  # one full-size float64 copy alone is 288 MB


def test_decode_budget_queues_big_images_and_lets_one_over_budget_run_alone():
    from featstore.images.listing import DecodeBudget

    budget = DecodeBudget(100)
    order: list[str] = []
    inside, leave = threading.Event(), threading.Event()

    def second():
        with budget.reserve(50):
            order.append("50 in")
            inside.set()
            leave.wait(5)

    with budget.reserve(80):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        assert order == [] and budget.in_use == 80  # 80 + 50 > 100: waits
        order.append("80 out")
    assert inside.wait(5) and order == ["80 out", "50 in"] and budget.in_use == 50
    leave.set()
    t.join(5)
    assert budget.in_use == 0
    with budget.reserve(10**9):  # larger than the whole budget: runs when nothing else does
        assert budget.in_use == 10**9


def test_load_image_reserves_its_header_estimate(odd_images, tmp_path):
    from featstore.images.listing import DecodeBudget

    seen: list[int] = []

    class Spy(DecodeBudget):
        def reserve(self, nbytes):
            seen.append(nbytes)
            return super().reserve(nbytes)

    path = tmp_path / "g16.png"
    Image.fromarray(np.full((300, 200), 1000, np.uint16)).save(path)
    load_image(path, 16, budget=Spy(1 << 20))
    assert seen == [300 * 200 * (2 + 4)]


def test_listing_order_is_by_path_components_as_before(tmp_path, monkeypatch):
    """Files are listed in the order of their path components (a sub-folder 'x' before 'x.png' and 'x-1.png'), as
    sorting Path objects gave; the walk now sorts split strings, and slices relative paths instead of parsing them."""
    cls = tmp_path / "train" / "c"
    for rel in ("x/a.png", "x.png", "x-1.png", "x/b/z.png", "w.png"):
        (cls / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(cls / rel)
    got = [p for p, _ in discover(tmp_path, "train").items]
    want = sorted((f"train/c/{r}" for r in ("x/a.png", "x.png", "x-1.png", "x/b/z.png", "w.png")), key=Path)
    assert got == want == ["train/c/w.png", "train/c/x/a.png", "train/c/x/b/z.png", "train/c/x-1.png", "train/c/x.png"]
    assert [p for p, _ in discover(str(tmp_path) + "/", "train").items] == want  # a root given with a trailing slash
    monkeypatch.chdir(tmp_path)
    assert [p for p, _ in discover(".", "train").items] == want  # and as "."
