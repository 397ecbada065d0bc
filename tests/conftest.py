"""Tiny synthetic fixtures: a few 32x32 images per class and random-weight models saved to files."""

from __future__ import annotations

import functools
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import typer.testing  # noqa: E402
from PIL import Image  # noqa: E402

# typer's CliRunner turns the Typer app into a click command on every invoke (22 ms: it reads every command's
# signature and type hints); the suite invokes the CLI over a thousand times, so the command is built once per app.
typer.testing._get_command = functools.cache(typer.testing._get_command)

from featstore import ExtractorConfig, extract  # noqa: E402

SIZE = 32

# Under pytest-xdist (`pytest -n 2`; pyproject's addopts say --dist loadfile --no-loadscope-reorder) each file runs whole
# on one worker, files in collection order. The README's and docs' blocks are one chain (about half the suite) that
# cannot be split, so its file starts first: started last, it would finish minutes after everything else.
RUN_FIRST = ("test_docs.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """RUN_FIRST's files first; every other test keeps its place (a stable sort, so no module is split)."""
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)


@pytest.fixture(scope="session", autouse=True)
def _private_config_home(tmp_path_factory):
    """featstore's per-user key (featstore.keys, which signs the ONNX cache's records) in a folder of the test session,
    never in the home of whoever runs the suite; CLI and docs subprocesses inherit it."""
    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config"))
    yield
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before


def write_images(root: Path, split: str, classes: dict[str, int], seed: int = 0, size: int = 40) -> list[Path]:
    """Write ``classes[name]`` random RGB images per class under root/split/name/, alternating PNG and JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for ci, (name, n) in enumerate(classes.items()):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            base[..., ci % 3] = np.clip(base[..., ci % 3].astype(int) + 80, 0, 255)  # a class signal
            p = folder / f"img_{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
            Image.fromarray(base).save(p)
            out.append(p)
    return out


def write_data_root(root: Path) -> Path:
    """train (6 per class), validation (3) and test (3), classes cat and dog, under ``root``."""
    write_images(root, "train", {"cat": 6, "dog": 6}, seed=1)
    write_images(root, "validation", {"cat": 3, "dog": 3}, seed=2)
    write_images(root, "test", {"cat": 3, "dog": 3}, seed=3)
    return root


# VGG16 on 32x32 input with seeded random weights: (1, 1, 512) features, fast on a CPU.
TINY_CONFIG = ExtractorConfig(model="vgg16", image_size=SIZE, weights="none", seed=7)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """train (6 per class), validation (3) and test (3), classes cat and dog."""
    return write_data_root(tmp_path / "data")


@pytest.fixture
def tiny_config() -> ExtractorConfig:
    """VGG16 on 32x32 input with seeded random weights: (1, 1, 512) features, fast on a CPU."""
    return TINY_CONFIG


@pytest.fixture(scope="session")
def _tiny_train_src(tmp_path_factory) -> Path:
    """data_root's images and a store of their train split extracted with tiny_config; made once, copied by tiny_train."""
    root = tmp_path_factory.mktemp("tiny_train")
    extract(write_data_root(root / "data"), "train", root / "f.h5", TINY_CONFIG)
    return root


@pytest.fixture
def tiny_train(_tiny_train_src: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``(data_root, store)`` as ``extract(data_root, "train", tmp_path / "f.h5", tiny_config)`` leaves them: a private
    copy of one session-wide extraction (file times kept, so a resume sees the same listing); safe to damage.

    The store's ``source_root`` names the session's folder, not the copy (a store-level test never follows it)."""
    data = shutil.copytree(_tiny_train_src / "data", tmp_path / "data")
    path = shutil.copy2(_tiny_train_src / "f.h5", tmp_path / "f.h5")
    return Path(data), Path(path)


@pytest.fixture(scope="session")
def vgg16_weights_file(tmp_path_factory) -> Path:
    """A random-weight VGG16 conv base saved with save_weights, to load through --weights PATH."""
    import keras

    keras.utils.set_random_seed(123)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path_factory.mktemp("weights") / "vgg16_random.weights.h5"
    model.save_weights(path)
    return path


def make_store(root: Path, per_class: tuple[int, int, int]) -> Path:
    """train/validation/test of classes cat, dog, fox; VGG16@32, seeded random weights, block3_pool avg-pooled (1 KiB rows)."""
    data = root / "data"
    for (split, seed), n in zip((("train", 1), ("validation", 2), ("test", 3)), per_class):
        write_images(data, split, {"cat": n, "dog": n, "fox": n}, seed=seed)
    path = root / "features.h5"
    cfg = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=3, pooling="avg", layer="block3_pool")
    for split in ("train", "validation", "test"):
        extract(data, split, path, cfg)
    return path


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """10/5/5 images per class of 3 classes, extracted once per session."""
    return make_store(tmp_path_factory.mktemp("runs"), (10, 5, 5))


def interrupt_after_one_batch(monkeypatch: pytest.MonkeyPatch, *args, **kwargs) -> None:
    """``extract(*args, **kwargs)`` stopped (as by SIGKILL) after its first committed batch: a split left to resume."""
    from featstore.store import writer

    real, calls = writer.SplitWriter.commit, []

    def killed(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(writer.SplitWriter, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        extract(*args, **kwargs)
    monkeypatch.undo()


def ray_actor_died(ray, error: Exception):
    """The ActorDiedError Ray gives the driver when an actor's constructor raises ``error``, built as Ray builds it
    (a RayTaskError around the worker's formatted traceback), without a cluster."""
    import traceback

    try:
        raise error
    except Exception as exc:
        return ray.exceptions.ActorDiedError(ray.exceptions.RayTaskError("__init__", traceback.format_exc(), exc))


def finetune_source(root: Path, size: int = 32) -> dict:
    """What the fine-tuning tests start from, in ``root``: two classes of 8/4/4 images (train/validation/test), a store
    of VGG16@``size`` with seeded random weights (cut at block5_pool) and a dense run (phase A): ``root``, ``data``,
    ``store``, ``dense`` (its id)."""
    from featstore import ExtractorConfig, extract, fit

    data = root / "data"
    for split, n, seed in (("train", 8, 1), ("validation", 4, 2), ("test", 4, 3)):
        write_images(data, split, {"cat": n, "dog": n}, seed=seed)
    store = root / "f.h5"
    cfg = ExtractorConfig(model="vgg16", image_size=size, weights="none", seed=7)
    for split in ("train", "validation", "test"):
        extract(data, split, store, cfg)
    dense = fit(store, "dense", {"epochs": [3], "units": [16]})
    return {"root": root, "data": data, "store": store, "dense": dense["id"]}


@pytest.fixture(scope="session")
def _finetune_source_once(tmp_path_factory) -> dict:
    """finetune_source at 32 px, made once per session (per xdist worker): three extractions and a dense fit that
    test_finetune, test_adversarial_messages and test_adversarial_attack40_fixAW each made for themselves."""
    return finetune_source(tmp_path_factory.mktemp("finetune_source"), 32)


@pytest.fixture(scope="module")
def finetune_source_32(_finetune_source_once, tmp_path_factory) -> dict:
    """``finetune_source(root, 32)`` as a module's own: a copy of the session's folder (store, runs, images; file times
    kept) that the module may change. ``data`` stays the folder the store was extracted from (its ``source_root``),
    as finetune_source leaves it; no test changes those images (copy them first, as the tests that damage one do)."""
    src = _finetune_source_once
    root = tmp_path_factory.mktemp("ft") / "c"
    shutil.copytree(src["root"], root, symlinks=True)
    return {**src, "root": root, "store": root / src["store"].relative_to(src["root"])}


@pytest.fixture
def sticky(tmp_path, monkeypatch):
    """A 1777 folder (a team's /tmp) as the process's temporary folder, nothing said of it yet in this process."""
    import tempfile

    from featstore import tmpdir

    folder = tmp_path / "team"
    folder.mkdir()
    folder.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setattr(tmpdir, "_SAID", set())
    return folder


def trainval_store(path, n: int, d: int):
    """Pure-noise train, validation and test of ``n`` rows of ``d`` features, and trainval = train's and validation's
    rows (a final refit's split), written from arrays into extractor group ``first``."""
    from featstore.store.writer import write_arrays

    rng, y = np.random.default_rng(0), np.arange(n) % 2
    X = {s: rng.normal(size=(n, d)).astype(np.float32) for s in ("train", "validation", "test")}
    for s in X:
        write_arrays(path, "first", s, X[s], y, ["a", "b"])
    write_arrays(path, "first", "trainval", np.concatenate([X["train"], X["validation"]]), np.tile(y, 2), ["a", "b"])
    return path
