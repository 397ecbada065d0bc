"""Attack 53 #1-#7: similar shows a stored query from its own split's folder, probe checks every extractor's splits
before the first fit and keeps the finished ones, a runs folder a failed fit/probe/fewshot made is removed, similar
takes --trust-model and speaks of the store, fewshot takes --validation, report's default site folder is never the
store, and a refused --build-index makes no folder."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .report_stores import write_split


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), rgb, np.uint8)).save(path)


def _mean_rgb(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB")).reshape(-1, 3).mean(0)


@pytest.fixture
def two_roots(tmp_path):
    """Train extracted from data/v1, test (extracted again) from data/v2; v1 still holds an old test/cat/q.png (red)
    and the stored test image is v2's (blue)."""
    v1, v2 = tmp_path / "data" / "v1", tmp_path / "data" / "v2"
    train = [f"train/{c}/t{i}.png" for c in ("cat", "dog", "fox") for i in range(4)]
    for p in train:
        _png(v1 / p, (0, 200, 0))
    _png(v1 / "test/cat/q.png", (255, 0, 0))
    _png(v2 / "test/cat/q.png", (0, 0, 255))
    X = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    store = tmp_path / "f.h5"
    write_split(store, "train", X, np.repeat(np.arange(3), 4), train, v1)
    write_split(store, "test", X[:1] + 0.1, np.zeros(1, int), ["test/cat/q.png"], v2)
    return store, v2 / "test/cat/q.png"


def test_similar_html_shows_the_query_from_its_own_splits_folder(two_roots, tmp_path, monkeypatch):
    """#1: the query's picture and link came from the searched split's folder (v1's old red file); they come from
    the query's own split's source_root."""
    from featstore.experiments.similar import similar
    from featstore.report.site.similar_page import similar_html

    store, blue = two_roots
    monkeypatch.chdir(tmp_path)
    got = similar("test/cat/q.png", store, split="train", k=3)
    assert got.query_file() == str(blue) and got.query_root == str(blue.parents[2])
    page = similar_html(got, tmp_path / "q.html", store).read_text()
    query = re.findall(r'src="data:image/png;base64,([^"]+)"', page)[0]  # the first picture: the query's
    assert _mean_rgb(query)[2] > 200 and _mean_rgb(query)[0] < 50
    assert f'href="{blue.as_uri()}"' in page
    # given as the file itself, the same file (not one of that name under the searched split's folder)
    assert similar(str(blue), store, split="train", k=3).query_file() == str(blue)
