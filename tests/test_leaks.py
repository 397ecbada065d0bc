"""featstore leaks: planted copies among distinct images are found, distinct images are not, the result shows in info.

The distinct images are smooth random colour fields (a 4x4 random field enlarged to 40 px, a class tint and a
little pixel noise): independent, hence distinct, and like photos they survive resizing and JPEG. The pure
pixel-noise images of ``write_images`` do not: resampled noise is new noise, so a resized copy of one is
not a near-duplicate for any feature extractor (measured: centred similarity 0.64 to its original).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featstore import ExtractorConfig, FeatureStore, extract, find_leaks
from featstore.cli import app
from featstore.errors import ConfigError, StoreError
from featstore.experiments.leaks import leaks_line, leaks_png, record_path
from featstore.store.writer import write_arrays

CLASSES = ("cat", "dog", "fox")
# VGG16 at 32 px with seeded random weights, cut at block3_pool: (4, 4, 256) per image.
CONFIG = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=7, layer="block3_pool")


def smooth_image(rng: np.random.Generator, cls: int, size: int = 40) -> Image.Image:
    """A random 4x4 colour field enlarged (bicubic) to size, tinted by class, plus +-8 levels of pixel noise."""
    low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    im = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).astype(int)
    im[..., cls] += 60
    im += rng.integers(-8, 9, size=im.shape)
    return Image.fromarray(np.clip(im, 0, 255).astype(np.uint8))


def write_smooth(root: Path, split: str, per_class: int, rng: np.random.Generator) -> None:
    """per_class distinct PNGs per class under root/split/<class>/."""
    for ci, name in enumerate(CLASSES):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            smooth_image(rng, ci).save(root / split / name / f"{split}_{i:02d}.png")


def plant(root: Path) -> set[tuple[str, str]]:
    """Copies of train images in test: exact (bytes), resized 40->56, JPEG quality 70 (filed under another class)."""
    train = root / "train"
    shutil.copy(train / "cat/train_01.png", root / "test/cat/copy_exact.png")
    Image.open(train / "dog/train_02.png").resize((56, 56), Image.BILINEAR).save(root / "test/dog/copy_resized.png")
    Image.open(train / "fox/train_03.png").convert("RGB").save(root / "test/cat/copy_jpeg70.jpg", quality=70)
    return {
        ("test/cat/copy_exact.png", "train/cat/train_01.png"),
        ("test/dog/copy_resized.png", "train/dog/train_02.png"),
        ("test/cat/copy_jpeg70.jpg", "train/fox/train_03.png"),
    }


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> dict:
    """A store of 8/3/4 distinct images per class (train/validation/test) plus 3 planted copies in test."""
    root = tmp_path_factory.mktemp("leaks")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("validation", 3), ("test", 4)):
        write_smooth(root / "data", split, n, rng)
    planted = plant(root / "data")
    store = root / "features.h5"
    for split in ("train", "validation", "test"):
        extract(root / "data", split, store, CONFIG)
    return {"root": root, "data": root / "data", "store": store, "planted": planted}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_planted_copies_found_and_no_distinct_pair(leaky):
    report = find_leaks(leaky["store"], record=False)
    cal = report.calibration
    assert cal.method == "train-quantile" and cal.quantile == 0.99 and cal.sample == cal.train_rows == 24
    assert report.threshold == cal.threshold and 0 < report.threshold < 0.9
    assert cal.caveat().startswith("only 24 train rows measured")  # 24 rows cannot place a 1 % tail
    found = {(p.query_path, p.train_path) for p in report.pairs}
    assert leaky["planted"] <= found and len(found - leaky["planted"]) <= 2  # look-alikes, said in the caveat
    assert report.rows == {"test": 15, "validation": 9} and report.same_bytes == {"test": 1, "validation": 0}
    sims = {p.query_path: p for p in report.pairs}
    assert sims["test/cat/copy_exact.png"].similarity == 1.0 and sims["test/cat/copy_exact.png"].same_bytes
    assert not sims["test/dog/copy_resized.png"].same_bytes
    assert report.pairs == sorted(report.pairs, key=lambda p: -p.similarity)
    # measured: exact 1.000, resized 0.999, JPEG-70 0.988; the closest distinct pair 0.499, medians 0.34 / 0.27
    fixed = find_leaks(leaky["store"], threshold=0.9, record=False)
    assert (
        fixed.calibration.method == "given" and {(p.query_path, p.train_path) for p in fixed.pairs} == leaky["planted"]
    )
    assert fixed.counts == {"test": 3, "validation": 0}
    assert all(p.similarity < 0.7 for p in fixed.near_misses), fixed.near_misses
    assert max(fixed.median.values()) < 0.5
    assert [p.same_label for p in fixed.pairs if p.query_path == "test/cat/copy_jpeg70.jpg"] == [False]
    only_exact = find_leaks(leaky["store"], query=["test"], threshold=1.0, record=False)
    assert [p.query_path for p in only_exact.pairs] == ["test/cat/copy_exact.png"]


def test_blocked_search_equals_brute_force(tmp_path):
    """Several train blocks, several query tiles and a float16 store give the brute-force centred-cosine answer."""
    rng = np.random.default_rng(1)
    X = rng.gamma(1.0, size=(3000, 2, 2, 64)).astype(np.float16)  # 512 B rows: ~2048 rows per chunk, 2 chunks
    Q = rng.gamma(1.0, size=(700, 2, 2, 64)).astype(np.float16)
    Q[:5] = X[[10, 2500, 7, 2999, 1234]] + rng.normal(0, 0.05, size=(5, 2, 2, 64)).astype(np.float16)
    path = tmp_path / "arr.h5"
    for split, F in (("train", X), ("test", Q)):
        write_arrays(path, "synthetic", split, F, np.arange(len(F)) % 2, ["a", "b"], batch_size=512)
    chunk = FeatureStore(path).split_info("train")["chunks"][0] * 512
    small = find_leaks(path, threshold=0.95, max_bytes=8 * chunk, record=False)  # one chunk per block
    big = find_leaks(path, threshold=0.95, max_bytes=1 << 30, record=False)
    mu = X.reshape(3000, -1).astype(np.float64).mean(0)

    def norm(F):
        R = F.reshape(len(F), -1).astype(np.float64) - mu
        return R / np.linalg.norm(R, axis=1, keepdims=True)

    S = norm(Q) @ norm(X).T
    assert {p.query_path: p.train_path for p in small.pairs} == {
        f"test/{i}": f"train/{j}" for i, j in enumerate([10, 2500, 7, 2999, 1234])
    }
    for p in small.pairs:
        assert p.similarity == pytest.approx(S[int(p.query_path.split("/")[1])].max(), abs=1e-4)
    assert small.pairs == big.pairs and small.median == pytest.approx(big.median)
    assert small.median["test"] == pytest.approx(np.median(S.max(1)), abs=1e-4)
    with pytest.raises(ConfigError, match="max_bytes .* too small"):
        find_leaks(path, max_bytes=chunk, record=False)
    # the calibration, blocked and sampled, equals the brute-force held-out quantile: row i against the others,
    # centred on the mean of the others (as a new query would be)
    cal_small = find_leaks(path, max_bytes=8 * chunk, sample=500, record=False).calibration
    cal_big = find_leaks(path, max_bytes=1 << 30, sample=500, record=False).calibration
    F = X.reshape(3000, -1).astype(np.float64)
    held = []
    for i in np.sort(np.random.default_rng(0).choice(3000, 500, replace=False)):
        m = (F.sum(0) - F[i]) / 2999
        R = F - m
        R /= np.linalg.norm(R, axis=1, keepdims=True)
        s = R @ R[i]
        s[i] = -np.inf
        held.append(s.max())
    assert cal_small.sample == cal_big.sample == 500 and cal_small.train_rows == 3000
    assert cal_small.threshold == pytest.approx(np.quantile(held, 0.99), abs=2e-4)
    assert cal_small.threshold == pytest.approx(cal_big.threshold, abs=1e-5)
    assert cal_small.median == pytest.approx(np.median(held), abs=2e-4)
    png, missing = leaks_png(small, tmp_path / "p.png", top=2)  # no source_root: placeholders, said so
    assert png.stat().st_size > 0 and len(missing) == 4


def test_cli_lists_pairs_writes_png_and_csv_and_info_shows_count(leaky, tmp_path):
    store = tmp_path / "features.h5"
    shutil.copy(leaky["store"], store)
    r = run("info", store)
    assert r.exit_code == 0 and "leaks: not checked (featstore leaks)" in r.output
    r = run(
        "leaks",
        "--store",
        store,
        "--threshold",
        "0.9",
        "--png",
        tmp_path / "pairs.png",
        "--out",
        tmp_path / "pairs.csv",
    )
    assert r.exit_code == 0, r.output
    assert "vgg16: threshold 0.9 (given)" in r.output
    assert (
        "test: 3 of 15 rows have a near-duplicate in train (1 with the same file bytes, similarity >= 0.9;" in r.output
    )
    assert "validation: 0 of 9 rows" in r.output
    assert "same bytes  test/cat/copy_exact.png  ~  train/cat/train_01.png" in r.output
    assert "test/cat/copy_jpeg70.jpg  ~  train/fox/train_03.png  (labels differ)" in r.output
    assert f"wrote {tmp_path / 'pairs.png'}" in r.output and "missing" not in r.output
    with Image.open(tmp_path / "pairs.png") as im:
        assert im.format == "PNG" and im.size[1] > 500
    rows = (tmp_path / "pairs.csv").read_text().splitlines()
    assert rows[0] == "query_split,query_path,train_path,similarity,same_label,same_bytes" and len(rows) == 4
    assert rows[1] == "test,test/cat/copy_exact.png,train/cat/train_01.png,1.000000,True,True"
    rec = json.loads(record_path(store).read_text())["extractors"]["vgg16"]
    assert (
        rec["counts"] == {"test": 3, "validation": 0}
        and rec["fingerprint"] == FeatureStore(store).metadata()["fingerprint"]
        and rec["calibration"]["method"] == "given"
        and rec["same_bytes"] == {"test": 1, "validation": 0}
    )
    r = run("info", store)
    assert (
        "leaks: 3 test / 0 validation rows with a near-duplicate in train (threshold 0.9, given; featstore leaks)"
        in r.output
    )
    r = run("leaks", "--store", store)  # calibrated: the record says how
    assert r.exit_code == 0 and "vgg16: threshold 0.3" in r.output and "(calibrated: 0.99 quantile" in r.output
    assert "note: only 24 train rows measured" in r.output
    assert "calibrated on train, quantile 0.99; featstore leaks)" in run("info", store).output
    rec = json.loads(record_path(store).read_text())["extractors"]["vgg16"]["calibration"]
    assert rec["method"] == "train-quantile" and rec["quantile"] == 0.99 and rec["sample"] == 24 and rec["seed"] == 0
    r = run("leaks", "--store", store, "--split", "validation", "--threshold", "0.6", "--top", "1")
    assert r.exit_code == 0 and "no pair at or above 0.6; the closest is 0." in r.output, r.output
    assert (
        tmp_path / "features.h5.leaks.png"
    ).is_file()  # the default PNG: the nearest pairs, titled below the threshold
    assert "leaks: 0 validation rows with a near-duplicate in train (threshold 0.6" in run("info", store).output


def test_missing_image_drawn_as_placeholder(leaky, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(leaky["data"], data)
    store = tmp_path / "f.h5"
    for split in ("train", "test"):
        extract(data, split, store, CONFIG)
    (data / "train/cat/train_01.png").unlink()
    r = run("leaks", "--store", store, "--threshold", "0.9", "--png", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    assert "not compared by content (train, 1): " in r.output and "train_01.png (not found)" in r.output
    assert (
        "1 image(s) not found, drawn as placeholders" in r.output
        and "missing: train:train/cat/train_01.png" in r.output
    )


def test_stale_and_damaged_records(leaky, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(leaky["data"], data)
    store = tmp_path / "f.h5"
    for split in ("train", "validation", "test"):
        extract(data, split, store, CONFIG)
    find_leaks(store, threshold=0.9)
    assert "leaks: 3 test / 0 validation" in run("info", store).output
    (data / "validation/cat/validation_00.png").unlink()
    extract(data, "validation", store, CONFIG, overwrite=True)
    out = run("info", store).output
    assert "leaks: STALE (split 'validation' was re-extracted or changed since); re-run featstore leaks" in out, out
    rec = json.loads(record_path(store).read_text())
    rec["extractors"]["vgg16"]["fingerprint"] = "0" * 64
    record_path(store).write_text(json.dumps(rec))
    assert "leaks: STALE (recorded for other features: the fingerprint differs)" in run("info", store).output
    record_path(store).write_text("{not json")
    r = run("info", store)
    assert r.exit_code == 0 and f"leaks: record {record_path(store)} is damaged: it is not JSON" in r.output
    find_leaks(store, threshold=0.9)  # an unreadable record is kept aside (<record>.damaged), a new one written
    assert Path(f"{record_path(store)}.damaged").read_text() == "{not json"
    entry = FeatureStore(store).info()["extractors"]["vgg16"]
    assert leaks_line(store, "vgg16", entry).startswith("leaks: 3 test / 0 validation")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "holdout"], "unknown split 'holdout' for extractor 'vgg16'; choose from: test, train, validation"),
        (["--split", "train"], "split 'train' is the reference"),
        (["--threshold", "0"], r"threshold 0.0 is not in \(0, 1\]; leave it out to calibrate it on train"),
        (["--threshold", "1.5"], r"threshold 1.5 is not in \(0, 1\]"),
        (["--threshold", "nan"], r"threshold nan is not in \(0, 1\]"),
        (["--quantile", "1"], r"quantile 1.0 is not in \(0, 1\)"),
        (["--quantile", "0"], r"quantile 0.0 is not in \(0, 1\)"),
        (["--top", "0"], "--top must be at least 1"),
        (["--extractor", "resnet50"], "has no extractor 'resnet50'; it has: vgg16"),
    ],
)
def test_bad_input_gives_clear_errors(leaky, args, message):
    import re

    r = run("leaks", "--store", leaky["store"], *args)
    assert r.exit_code == 1 and re.search(message, r.output.replace("\n", " ")), r.output
    assert "Traceback" not in r.output


def test_store_without_train_or_query_split(tmp_path):
    X = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    path = tmp_path / "s.h5"
    write_arrays(path, "synthetic", "test", X, np.zeros(20, int), ["a"])
    r = run("leaks", "--store", path)
    assert r.exit_code == 1 and "has no 'train' split to compare with (it has: test)" in r.output
    path2 = tmp_path / "t.h5"
    write_arrays(path2, "synthetic", "train", X, np.zeros(20, int), ["a"])
    write_arrays(path2, "synthetic", "holdout", X, np.zeros(20, int), ["a"])
    with pytest.raises(
        StoreError, match=r"has no test or validation split; name the splits to check with --split \(it has: holdout\)"
    ):
        find_leaks(path2, record=False)
    r = find_leaks(path2, query=["holdout"], record=False)
    assert r.counts == {"holdout": 20}  # every row is its own copy
    assert r.unhashed == {
        "train": ["all 20 files (no source_root recorded)"],
        "holdout": ["all 20 files (no source_root recorded)"],
    }


def test_help_fits_80_columns_and_leaks_needs_no_tensorflow(leaky, tmp_path):
    import os
    import subprocess
    import sys

    r = CliRunner().invoke(app, ["leaks", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0 and "…" not in r.output and "--threshold" in r.output, r.output
    store = tmp_path / "f.h5"
    shutil.copy(leaky["store"], store)
    code = (
        "import sys; from typer.testing import CliRunner; from featstore.cli import app; "
        "r = CliRunner().invoke(app, ['leaks', '--store', sys.argv[1]]); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(app, ['info', sys.argv[1]]); assert 'leaks: ' in r.output and 'calibrated' in r.output, r.output; "
        "print(sorted(set(sys.modules) & {'tensorflow', 'keras', 'sklearn'}))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.run([sys.executable, "-c", code, str(store)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "[]", p.stdout + p.stderr


@pytest.mark.parametrize("n", [80_000, 3_000, 10])
def test_held_out_best_equals_the_whole_tile(n):
    """The candidate search (one product of unit rows, exact float64 on the few close pairs) gives the whole tile's
    held-out maximum and its row; n=10 takes the whole-tile path (the bound is loose), as does a tile of one row."""
    from featstore.experiments.leaks.search import _held_out, held_out_best, unit_rows

    rng = np.random.default_rng(n)
    base = np.maximum(rng.standard_normal((1500, 64)), 0).astype(np.float32)
    t = base - base.mean(0)
    t[100:130] = t[5]  # copies: several close candidates for those rows
    t[300] = t[301] + 1e-3
    a = t[:400].copy()
    own = np.arange(400)
    own[200:] = -1  # half of them are rows of another split
    S = _held_out(a, t, n)
    S[np.arange(200), own[:200]] = -np.inf
    v, j = held_out_best(a, t, unit_rows(t), n, own)
    np.testing.assert_allclose(v, S.max(axis=1), atol=2e-6)
    tied = j != S.argmax(axis=1)  # only where the rows are exact copies (t[5], t[100:130]): the float32 product S
    assert np.array_equal(t[j[tied]], t[S.argmax(axis=1)[tied]])  # gave one a last bit more (numpy 2.4.6's BLAS)
    one = t[:1]
    v1, j1 = held_out_best(one.copy(), one, unit_rows(one), n, np.array([0]))  # only itself: -inf, as argmax gives
    assert v1[0] == -np.inf and j1[0] == 0
