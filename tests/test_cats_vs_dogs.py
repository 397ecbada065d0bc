"""pipelines/cats_vs_dogs.py on tiny synthetic stand-ins of both download layouts, corrupt files included."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featstore import discover
from featstore.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cats_vs_dogs", ROOT / "pipelines" / "cats_vs_dogs.py")
cvd = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cats_vs_dogs", cvd)  # dataclasses look their module up there
_spec.loader.exec_module(cvd)

N = 10  # images per class in the fake download
CORRUPT = {("cats", 1): "empty", ("cats", 5): "text", ("dogs", 6): "truncated"}  # train, validation and test once each


def _jpeg(cls: str, i: int) -> bytes:
    """A 24x24 JPEG: cats reddish with a bright square top-left, dogs bluish with a dark bar; noise on top."""
    rng = np.random.default_rng(i * 2 + (cls == "dogs"))
    img = rng.integers(0, 60, (24, 24, 3)).astype(np.uint8)
    if cls == "cats":
        img[..., 0] += 180
        img[2:10, 2:10] = 255
    else:
        img[..., 2] += 180
        img[14:18, :] = 0
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def fake_download(root: Path, layout: str) -> Path:
    """N images per class in the Microsoft (PetImages/Cat/0.jpg) or Kaggle (train/cat.0.jpg) layout, corrupt files and Thumbs.db."""
    for cls in ("cats", "dogs"):
        if layout == "microsoft":
            folder = root / "PetImages" / ("Cat" if cls == "cats" else "Dog")
            name = "{}.jpg"
        else:
            folder = root / "train"
            name = cls[:-1] + ".{}.jpg"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(N):
            data = _jpeg(cls, i)
            kind = CORRUPT.get((cls, i))
            data = {"empty": b"", "text": b"this is not a JPEG\n", "truncated": data[: len(data) // 3]}.get(kind, data)
            (folder / name.format(i)).write_bytes(data)
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight 16x16 CNN saved as .keras (cut at 'flatten')."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    path = tmp_path_factory.mktemp("cvd_model") / "tiny.keras"
    model.save(path)
    return path


def _sources(manifest: dict, split: str) -> set[str]:
    return {f for files in manifest["files"][split].values() for f in files}


@pytest.mark.parametrize("layout", ["microsoft", "kaggle"])
def test_pipeline_on_a_tiny_fake_download(tmp_path, tiny_model, layout, capsys, monkeypatch):
    download = fake_download(tmp_path / "dl", layout)
    out = tmp_path / "out"
    calls = []
    if layout == "kaggle":  # phase B really runs (featstore finetune); the spy records what it receives
        real = cvd.phase_b
        monkeypatch.setattr(cvd, "phase_b", lambda *a: calls.append(a) or real(*a))
    summary = cvd.main(
        [
            "--download",
            str(download),
            "--out",
            str(out),
            "--train",
            "8",
            "--validation",
            "4",
            "--test",
            "4",
            "--model",
            str(tiny_model),
            "--layer",
            "flatten",
            "--epochs",
            "3",
            "--lr",
            "1e-3",
            "--batch-size",
            "8",
        ]
        + (
            [
                "--finetune",
                "--finetune-from",
                "conv1",
                "--finetune-epochs",
                "2",
                "--finetune-lr",
                "1e-3",
                "--augment",
                "flip",
            ]
            if layout == "kaggle"
            else []
        )
    )
    man = summary["manifest"]
    assert man["layout"] == layout
    # the requested sizes, half per class, disjoint splits (by name and by file on disk)
    for split, n in (("train", 8), ("validation", 4), ("test", 4)):
        for cls in ("cats", "dogs"):
            assert len(os.listdir(out / "data" / split / cls)) == n // 2
        assert len(discover(out / "data", split).items) == n  # extraction's own walk accepts every placed file
    srcs = [_sources(man, s) for s in ("train", "validation", "test")]
    assert not (srcs[0] & srcs[1] or srcs[0] & srcs[2] or srcs[1] & srcs[2])
    inodes = [{os.stat(p).st_ino for p in (out / "data" / s).rglob("*.jpg")} for s in ("train", "validation", "test")]
    assert sum(map(len, inodes)) == 16 == len(set().union(*inodes))
    assert man["placed"] == {"hard": 16}
    # every corrupt file is reported, per split, with its name and the download's name; none crashed anything
    assert {s: len(v) for s, v in summary["failed"].items()} == {"train": 1, "validation": 1, "test": 1}
    text = (out / "results.md").read_text()
    assert "Unreadable images: 3 (train 1, validation 1, test 1)" in text
    for cls, i in CORRUPT:
        stored = f"{cls}/{i}.jpg" if layout == "microsoft" else f"{cls}/{cls[:-1]}.{i}.jpg"
        assert re.search(rf"- `(train|validation|test)/{re.escape(stored)}` \(download: `[^`]*{i}\.jpg`\): \S", text), (
            stored
        )
    thumbs = 2 if layout == "microsoft" else 1  # one per class folder, or one in Kaggle's flat folder
    assert "Thumbs.db" in text and f"not JPEG images, not used: {thumbs}" in text
    # the table: both classifiers with validation accuracy, test only for the chosen one, which beats chance
    if layout == "kaggle":
        ((args, run_id, data, store, runs),) = calls
        assert args.finetune_from == "conv1" and run_id == summary["dense"] and run_id.startswith("dense-")
        assert (data, store, runs) == (out / "data", out / "features.h5", out / "runs")
        phase_b = [r for r in summary["rows"] if r["phase"] == "B"]
        assert (
            len(phase_b) == 2
            and "no augmentation" in phase_b[0]["classifier"]
            and "augmentation flip" in phase_b[1]["classifier"]
        )
        for r in phase_b:
            assert f"| B | fine-tuned from conv1 (phase A's head, {run_id}) | {r['run']}: RMSprop lr 0.001" in text
            assert 0 <= r["validation"] <= 1 and 0 <= r["test"] <= 1
        assert "conv1): run" in text
    else:
        assert "not run (--finetune not given)" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| A |")]
    assert len(table) == 2 and sum("(chosen)" in ln for ln in table) == 1
    chosen = next(ln for ln in table if "(chosen)" in ln)
    val, test = map(float, re.findall(r"\| (\d\.\d{4}) ", chosen + " "))
    assert val >= 0.75 and test >= 0.5, text
    assert "not evaluated (not chosen)" in next(ln for ln in table if "(chosen)" not in ln)
    assert f"--download {download}" in text and "your saved model" in text and "phase B" in text
    assert "| A |" in capsys.readouterr().out


def test_seeded_sample_is_deterministic_and_symlinks_are_followed(tmp_path):
    dl = cvd.find_download(fake_download(tmp_path / "dl", "microsoft") / "PetImages")
    sizes = {"train": 6, "validation": 4, "test": 4}
    a = cvd.carve(dl, tmp_path / "a", sizes, sample="random", seed=3, link="symlink")
    b = cvd.carve(dl, tmp_path / "b", sizes, sample="random", seed=3, link="copy")
    assert a["files"] == b["files"] and a["placed"] == {"symlink": 14} and b["placed"] == {"copy": 14}
    assert a["files"] != cvd.carve(dl, tmp_path / "c", sizes, sample="first")["files"]
    for split in ("train", "validation", "test"):
        listing = discover(tmp_path / "a" / "data", split)
        assert len(listing.items) == sizes[split] and not listing.skipped_links
    assert (
        cvd.carve(dl, tmp_path / "a", sizes, sample="random", seed=3, link="copy") == a
    )  # same choice: reused as it is
    with pytest.raises(DataError, match="other options"):
        cvd.carve(dl, tmp_path / "a", sizes, sample="first")
    with pytest.raises(DataError, match="asks? for"):
        cvd.carve(dl, tmp_path / "d", {"train": 20, "validation": 2, "test": 2})


def test_layouts_are_detected_or_refused_with_both_named(tmp_path):
    fake_download(tmp_path / "ms", "microsoft")
    fake_download(tmp_path / "kg", "kaggle")
    assert cvd.find_download(tmp_path / "ms").layout == "microsoft"
    assert cvd.find_download(tmp_path / "kg" / "train").layout == "kaggle"
    dl = cvd.find_download(tmp_path / "kg")
    assert [p.name for p in dl.images["cats"][:3]] == ["cat.0.jpg", "cat.1.jpg", "cat.2.jpg"]
    assert [p.name for p in dl.images["dogs"]][-2:] == ["dog.8.jpg", "dog.9.jpg"]  # numeric, not by name
    with pytest.raises(DataError, match="PetImages/Cat.*train/cat.0.jpg"):
        cvd.find_download(tmp_path)  # neither directly: ms/ and kg/ are one level further
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="unpack it first"):
        cvd.find_download(tmp_path / "x.zip")


def test_bad_finetune_options_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: flip"):
        cvd.run(
            cvd.parser().parse_args(
                ["--download", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--finetune", "--augment", "blur"]
            ),
            "cmd",
        )
    with pytest.raises(ConfigError, match="--lr must be a positive number"):
        cvd.run(
            cvd.parser().parse_args(
                ["--download", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--finetune", "--finetune-lr", "0"]
            ),
            "cmd",
        )
    assert not (tmp_path / "o").exists()
