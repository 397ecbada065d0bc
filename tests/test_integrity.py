"""Regression tests for the store's integrity promises (issue 8): stable fingerprints, mixed streaming, link-free
checks, names, locks, portability, format versions, compressed stores."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from featstore import ConfigError, ExtractorConfig, FeatureStore, StoreError, extract, fit, provenance
from featstore.store import writer
from featstore.store.check import check_store

from .conftest import write_images


def _fp(attrs: dict) -> str:
    return provenance.fingerprint(attrs)


def test_fingerprint_ignores_prose_and_versions_but_not_numbers(tiny_train):
    a = FeatureStore(tiny_train[1]).metadata()
    assert a["preprocess"] == "imagenet-caffe" and a["resize"] == provenance.RESIZE_ID and a["pillow_version"]
    same = dict(
        a,
        preprocess_description="reworded",
        resize_description="reworded",
        weights_description="x",
        pillow_version="0",
        keras_version="0",
        created_at="never",
    )
    assert _fp(same) == a["fingerprint"]
    for key, value in (
        ("input_size", 64),
        ("preprocess", "tf"),
        ("resize", "other/1"),
        ("dtype", "float16"),
        ("layer", "block4_pool"),
    ):
        assert _fp(dict(a, **{key: value})) != a["fingerprint"], key


# every backbone built twice in one process has one fingerprint: tests/test_backbones.py, with its forward pass


def test_train_then_validation_in_one_process_for_a_keras_numbered_model(data_root, tmp_path):
    """Keras numbers variables per process (conv2d_4); the digest must not see those names."""
    cfg = ExtractorConfig(model="mobilenet_v2", image_size=32, weights="none", seed=2, pooling="avg")
    extract(data_root, "train", tmp_path / "m.h5", cfg)
    extract(data_root, "validation", tmp_path / "m.h5", cfg)
    assert FeatureStore(tmp_path / "m.h5").splits() == ["train", "validation"]


@pytest.fixture(scope="module")
def sorted_store(tmp_path_factory):
    """A synthetic store whose rows are sorted by class (as extraction writes them), in 8-row chunks of 1 KiB rows."""
    path = tmp_path_factory.mktemp("sorted") / "sorted.h5"
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.0, (5, 256)).astype(np.float32)
    mp = pytest.MonkeyPatch()
    mp.setattr(writer, "CHUNK_BYTES", 8 * 1024)
    try:
        for split, n in (("train", 400), ("validation", 100), ("test", 200)):
            y = np.repeat(np.arange(5), n // 5).astype(np.int32)
            X = centers[y] + rng.normal(0, 2.5, (len(y), 256)).astype(np.float32)
            writer.write_arrays(path, "synthetic", split, X, y, [f"c{i}" for i in range(5)], batch_size=64)
    finally:
        mp.undo()
    return path


def test_shuffled_blocks_mix_classes_from_the_whole_split(sorted_store):
    fs = FeatureStore(sorted_store)
    blocks = list(fs.iter_batches("train", max_bytes=64 * 1024, shuffle=True, seed=3))
    assert [len(b[1]) for b in blocks] == fs.block_lengths("train", max_bytes=64 * 1024)
    assert all(len(np.unique(y)) >= 3 for _, y in blocks[:-1])  # 64 rows from 8 random chunks of a 5-class split
    X, y = fs.load("train")
    assert sorted(map(bytes, np.concatenate([b[0] for b in blocks]))) == sorted(map(bytes, X))


def test_streamed_sgd_on_a_class_sorted_store_matches_in_memory(sorted_store, tmp_path):
    streamed = fit(sorted_store, "sgd", {"epochs": [10]}, memory_budget=4 * 64 * 1024, runs=tmp_path)
    memory = fit(sorted_store, "sgd", runs=tmp_path)
    assert streamed["streamed"] and not memory["streamed"]
    a, b = streamed["metrics"]["test"]["accuracy"], memory["metrics"]["test"]["accuracy"]
    assert abs(a - b) <= 0.02, (a, b)


def test_check_opens_the_file_per_block(sorted_store, monkeypatch):
    from featstore.store import check, locking

    opened = []
    real = locking.open_h5
    monkeypatch.setattr(locking, "open_h5", lambda *a, **k: (opened.append(1), real(*a, **k))[1])
    monkeypatch.setattr(check, "BLOCK_CHUNKS", 2)
    assert check_store(sorted_store) == []
    assert len(opened) > 10  # the layout once, then one opening per 16 rows of each split


@pytest.mark.parametrize("kind", ["external-link", "soft-link", "dangling-link", "virtual", "external-storage"])
def test_check_reports_objects_pointing_outside_without_following_them(tiny_train, tmp_path, kind):
    path = tiny_train[1]
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as o:
        o["x"] = np.full((12, 1, 1, 512), np.nan, np.float32)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 4096)
    with h5py.File(path, "a") as f:
        sg = f["vgg16/train"]
        del sg["features"]
        if kind == "external-link":
            sg["features"] = h5py.ExternalLink(str(other), "x")
        elif kind == "soft-link":
            sg["features"] = h5py.SoftLink("/vgg16/train/labels")
        elif kind == "dangling-link":
            sg["features"] = h5py.SoftLink("/nowhere")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(12, 1, 1, 512), dtype="float32")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(12, 1, 1, 512))
            sg.create_virtual_dataset("features", layout)
        else:
            sg.create_dataset("features", shape=(2, 1, 1, 512), dtype="float32", external=[(str(raw), 0, 4096)])
    problems = check_store(path)
    assert any("points outside the store" in p for p in problems), problems
    assert not any("NaN" in p for p in problems), "check read another file's bytes"
    with pytest.raises(StoreError, match="point outside it"):
        FeatureStore(path)


@pytest.mark.parametrize("bad", ["a/b", ".", "..", ".hidden", "", "x y"])
def test_split_and_extractor_names_are_one_plain_name(data_root, tiny_config, tmp_path, bad):
    if bad:  # an empty --name means the default (the model's name)
        with pytest.raises(ConfigError, match="name .* is not allowed"):
            extract(data_root, "train", tmp_path / "f.h5", tiny_config, name=bad)
    why = "split name .* is not allowed" if bad else "split='' is an empty split name"  # errors.check_names
    with pytest.raises(ConfigError, match=why):
        extract(data_root, bad, tmp_path / "f.h5", tiny_config)
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.lock").exists()


def test_unparsable_lock_timeout_is_explained(data_root, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATSTORE_LOCK_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="FEATSTORE_LOCK_TIMEOUT='soon' is not a number of seconds"):
        extract(data_root, "train", tmp_path / "f.h5", tiny_config)


def test_no_lock_file_left_after_success_or_failure(data_root, tiny_config, tmp_path):
    from featstore import WeightsError

    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "f.h5"]
    with pytest.raises(WeightsError):
        extract(
            data_root,
            "validation",
            path,
            ExtractorConfig(model="vgg16", image_size=32, weights=str(tmp_path / "missing.h5")),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "f.h5"]


def test_a_second_writer_is_refused_with_the_first_ones_pid(data_root, tiny_config, tmp_path):
    from featstore import StoreBusyError

    path = tmp_path / "f.h5"
    with writer.writer_lock(path):
        assert writer.lock_holder(path) == os.getpid()
        with pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"):
            extract(data_root, "train", path, tiny_config)
    assert writer.lock_holder(path) is None


def test_import_needs_no_posix_only_module():
    """As on Windows: no fcntl, no os.statvfs. The read-only mount check (statvfs) answers False there instead of failing."""
    code = (
        "import os, sys; sys.modules['fcntl'] = None; del os.statvfs; import featstore, featstore.store.writer, "
        "featstore.cli; import inspect, featstore.store.locking as l, featstore.store.space as s, featstore.store.writer "
        "as w; src = ''.join(inspect.getsource(m) for m in (l, s, w)); assert 'fcntl' not in src; "
        "assert s.read_only_fs('.') is False; assert 'statvfs' not in ''.join(inspect.getsource(m) for m in (l, w))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_stores_of_an_older_format_are_refused_with_what_to_do(tiny_train, tiny_config):
    data_root, path = tiny_train
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
    for fn in (lambda: FeatureStore(path), lambda: extract(data_root, "train", path, tiny_config, overwrite=True)):
        with pytest.raises(
            StoreError, match="format_version 1, written by an older featstore.*Extract again into a new --store"
        ):
            fn()


def test_compressed_store_is_not_larger_than_uncompressed(tmp_path):
    rng = np.random.default_rng(1)
    X = np.maximum(rng.normal(0, 1, (600, 4, 4, 64)), 0).astype(np.float32)  # ReLU-like: compressible
    y = np.zeros(600, np.int32)
    sizes = {}
    for comp in ("none", "gzip", "lzf"):
        writer.write_arrays(tmp_path / f"{comp}.h5", "s", "train", X, y, ["a"], batch_size=32, compression=comp)
        sizes[comp] = (tmp_path / f"{comp}.h5").stat().st_size
    assert sizes["gzip"] < sizes["none"] and sizes["lzf"] < sizes["none"], sizes


def test_complete_split_with_changed_images_is_refused_with_a_summary(tiny_train, tiny_config):
    data_root, path = tiny_train
    write_images(data_root, "train", {"cat": 8}, seed=9)  # two added, and the first six rewritten (other bytes)
    (data_root / "train" / "dog" / "img_000.png").unlink()
    with pytest.raises(StoreError, match=r"changed since .*2 added, 1 removed, 6 changed.*--overwrite"):
        extract(data_root, "train", path, tiny_config)
    assert extract(data_root, "train", path, tiny_config, overwrite=True).rows == 13


# ------------------------------------------------------------------ found by the second attack (review of issue 8)
def test_a_link_planted_at_the_pid_file_is_not_written_through(data_root, tiny_config, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "f.h5.lock.pid").symlink_to(victim)
    extract(data_root, "train", tmp_path / "f.h5", tiny_config)
    assert victim.read_text() == "precious" and (tmp_path / "f.h5.lock.pid").is_symlink()


def test_a_split_folder_linked_to_another_split_is_refused(data_root, tiny_config, tmp_path):
    import shutil

    from featstore import DataError

    shutil.rmtree(data_root / "test")
    (data_root / "test").symlink_to("validation")
    with pytest.raises(DataError, match="is the same folder as split folder .*validation.*two splits"):
        extract(data_root, "test", tmp_path / "f.h5", tiny_config)


@pytest.mark.parametrize("where", ["vgg16/train/failed", "vgg16"])
def test_external_links_on_the_way_are_not_opened(tiny_train, tiny_config, tmp_path, where):
    data_root, path = tiny_train
    fifo = tmp_path / "other.h5"
    os.mkfifo(fifo)  # opening it would hang: the test finishing proves it was never opened
    with h5py.File(path, "a") as f:
        del f[where]
        f[where] = h5py.ExternalLink(str(fifo), "/x")
    assert any("points outside the store" in p for p in check_store(path))
    with pytest.raises(StoreError, match="point outside it"):
        extract(data_root, "train", path, tiny_config)


def test_a_damaged_compressed_chunk_is_reported_not_a_traceback(data_root, tiny_config, tmp_path):
    path = tmp_path / "g.h5"
    extract(data_root, "train", path, tiny_config, compression="gzip", batch_size=4)
    with h5py.File(path, "r") as f:
        offset = f["vgg16/train/features"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as fh:  # bit rot in the second chunk
        fh.seek(offset + 4)
        fh.write(b"\xff" * 16)
    with pytest.raises(StoreError, match=r"rows 0\.\.11 cannot be read .* damaged"):
        FeatureStore(path).load("train")
    assert any("cannot be read: the file is damaged" in p for p in check_store(path))


def test_object_names_that_are_not_utf8_are_refused(tiny_train):
    path = tiny_train[1]
    with h5py.File(path, "a") as f:
        f.create_group(b"bad\xff")
    with pytest.raises(StoreError, match="not UTF-8"):
        FeatureStore(path)


def test_check_reports_one_file_hard_linked_under_two_labels(data_root, tiny_config, tmp_path):
    os.link(data_root / "train" / "cat" / "img_000.png", data_root / "train" / "dog" / "twin.png")
    path = tmp_path / "s.h5"
    extract(data_root, "train", path, tiny_config)
    assert any("stored under two or more labels" in p for p in check_store(path))


def test_a_read_that_never_returns_becomes_a_failure_record(data_root, tiny_config, tmp_path, monkeypatch):
    import importlib
    import threading

    ex = importlib.import_module("featstore.images.decode")
    real = ex.load_image
    monkeypatch.setattr(ex, "DECODE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(
        ex, "load_image", lambda p, s: threading.Event().wait() if p.endswith("img_001.jpg") else real(p, s)
    )
    r = extract(data_root, "train", tmp_path / "f.h5", tiny_config, decode_threads=2)
    assert r.failed == 2 and all("took over 1 s" in reason for _, reason in r.failures)  # cat/img_001 and dog/img_001


def test_progressive_jpeg_and_transparent_palette_reserve_their_real_cost(tmp_path, monkeypatch):
    from PIL import Image

    from featstore.images import decode

    reserved = []
    real = decode.DecodeBudget.reserve
    monkeypatch.setattr(decode.DecodeBudget, "reserve", lambda self, n: (reserved.append(n), real(self, n))[1])
    rgb = np.random.default_rng(0).integers(0, 255, (400, 600, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "base.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "prog.jpg", quality=90, progressive=True)
    decode.load_image(tmp_path / "base.jpg", 32)
    decode.load_image(tmp_path / "prog.jpg", 32)
    assert reserved[1] >= reserved[0] + 400 * 600 * 3 * 2  # full-size coefficient buffers of a progressive file
    (tmp_path / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(decode.ImageError):  # never handed to Ghostscript, whatever the name says
        decode.load_image(tmp_path / "eps.jpg", 32)
