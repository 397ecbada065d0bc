"""Attack 19, finding 10's note: the report's map layouts under ``<store>.cache/maps/`` were trusted by name, as the
ONNX cache was: a planted (or copied) ``.npz`` with the sampled rows and any points was drawn as the store's map. A
layout now carries an HMAC under this user's key (featstore.keys) and is reused only when it verifies. Synthetic
stores (``write_arrays``, PCA), no TensorFlow. Each test failed before the fix (sabotage said in each)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from featstore.experiments.projection import project
from featstore.store.writer import write_arrays


def _store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    write_arrays(path, "syn", "train", rng.normal(size=(40, 8)).astype(np.float32), np.arange(40) % 2, ["a", "b"])
    return path


def _replace_points(path: Path, xy: np.ndarray) -> None:
    with np.load(path) as z:
        arrays = dict(z)
    with open(path, "wb") as fh:
        np.savez(fh, **{**arrays, "xy": xy})


def test_a_planted_map_layout_is_made_again_with_one_warning(tmp_path, caplog):
    """Before: the planted points were drawn (``cached`` True). Sabotage: ``if not verifies(...)`` -> ``if False``
    in ``projection._cached`` fails it."""
    store = _store(tmp_path)
    cache = Path(f"{store}.cache") / "maps"
    first = project(store, max_rows=30, method="pca", cache=cache)
    assert project(store, max_rows=30, method="pca", cache=cache).cached  # this user's own layout is reused
    (path,) = cache.glob("*.npz")
    planted = np.zeros_like(first.xy)  # every point on one spot: "no structure in these features"
    _replace_points(path, planted)
    with caplog.at_level(logging.WARNING, logger="featstore.experiments.projection"):
        again = project(store, max_rows=30, method="pca", cache=cache)
    assert not again.cached and np.allclose(again.xy, first.xy)
    assert [m for m in caplog.messages if "is not signed with your featstore key" in m], caplog.messages


def test_a_layout_from_another_users_cache_is_not_reused(tmp_path, monkeypatch):
    """A store's cache copied from elsewhere (another key). Sabotage: as above."""
    store = _store(tmp_path)
    cache = Path(f"{store}.cache") / "maps"
    project(store, max_rows=30, method="pca", cache=cache)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-user"))
    assert not project(store, max_rows=30, method="pca", cache=cache).cached
    assert project(store, max_rows=30, method="pca", cache=cache).cached  # re-signed with this key, then reused


def test_a_planted_thumbnail_is_made_again_not_shown(tmp_path, monkeypatch):
    """A picture planted at a cached thumbnail's name (or a cache copied from another user) was shown for the image.
    Sabotage: ``verifies(...)`` -> ``True`` in ``ThumbCache._signed`` fails it."""
    from PIL import Image

    from featstore.report.site.thumbs import ThumbCache

    image = tmp_path / "cat.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(image)
    folder = tmp_path / "s.h5.cache" / "thumbs"
    first = ThumbCache(folder).make([str(image)])[str(image)]
    again = ThumbCache(folder)
    again.make([str(image)])
    assert again.reused == 1  # this user's own thumbnail is reused
    cached = again.path(first.key)
    own = cached.read_bytes()
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(cached)  # another picture at its name
    planted = ThumbCache(folder)
    planted.make([str(image)])
    assert (planted.reused, planted.made) == (0, 1) and cached.read_bytes() == own
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "other-user"))
    other = ThumbCache(folder)
    other.make([str(image)])
    assert (other.reused, other.made) == (0, 1)  # signed with another key: made again


def test_a_planted_failure_note_does_not_hide_a_good_image(tmp_path):
    """Attack 20, finding 7: a planted ``<key>.txt`` (the key is a public digest of path, size and mtime) hid a good
    image's thumbnail and showed the planter's text in every later report. A note is now kept with its HMAC under
    this user's key and used only when it verifies. Sabotage: ``_note`` returning the text unverified fails it."""
    from PIL import Image

    from featstore.report.site.thumbs import ThumbCache

    image, broken = tmp_path / "cat.png", tmp_path / "broken.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(image)
    broken.write_bytes(b"not a png")
    folder = tmp_path / "s.h5.cache" / "thumbs"
    cache = ThumbCache(folder)
    good, bad = (cache.make([str(image), str(broken)])[str(p)] for p in (image, broken))
    assert good.key and not bad.key and bad.reason
    again = ThumbCache(folder)
    assert again.make([str(broken)])[str(broken)].reason == bad.reason and again.made == 0  # its own note: reused
    good_path = again.path(good.key)
    good_path.unlink()  # the thumbnail gone, a note planted in its place
    good_path.with_suffix(".txt").write_text("corrupt image -- see http://evil.example/fix")
    planted = ThumbCache(folder)
    shown = planted.make([str(image)])[str(image)]
    assert shown.key == good.key and not shown.reason and planted.made == 1
