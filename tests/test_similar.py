"""featstore similar (issue 20): the nearest stored images by centred cosine, exact (streamed) or from an index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import build_similarity_index, similar
from featstore.cli import app
from featstore.errors import ConfigError
from featstore.experiments.similar_index import index_dir

from .report_stores import CLASSES, HOSTILE, write_split


def centred_cosine(Q: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The reference: rows minus X's mean, unit length, dot products (float64)."""
    m = X.mean(axis=0)
    a, b = Q - m, X - m
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.fixture
def store(tmp_path):
    """train: 300 rows of (2, 2, 16) features in 3 classes; test: 12 rows; images written for each row."""
    from PIL import Image

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 64))
    root = tmp_path / "data"
    out = {}
    for split, n in (("train", 300), ("test", 12)):
        y = np.arange(n) % 3
        X = np.maximum(centres[y] * 1.5 + rng.normal(0, 1, (n, 64)), 0).astype(np.float32).reshape(n, 2, 2, 16)
        paths = [f"{split}/{CLASSES[c]}/{i:04d}.png" for i, c in enumerate(y)]
        if split == "test":
            paths[5] = f"test/{CLASSES[y[5]]}/{HOSTILE}"
        for p, c in zip(paths, y):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 60 * c, np.uint8)).save(root / p)
        write_split(tmp_path / "f.h5", split, X, y, paths, root)
        out[split] = (X.reshape(n, -1).astype(np.float64), y, paths)
    return tmp_path / "f.h5", out


def test_exact_search_streams_in_blocks_and_equals_brute_force(store):
    path, data = store
    X, _, paths = data["train"]
    Q, qy, qpaths = data["test"]
    S = centred_cosine(Q, X)
    for i in (0, 7):
        got = similar(qpaths[i], path, k=10, max_bytes=16 * 256 * 4)  # blocks of whole chunks, many of them
        want = np.argsort(-S[i], kind="stable")[:10]
        assert [n.row for n in got.neighbours] == want.tolist()
        assert np.allclose([n.similarity for n in got.neighbours], S[i][want], atol=1e-5)
        assert got.query_kind == "stored" and got.query_split == "test" and got.method == "exact"
        assert [n.path for n in got.neighbours] == [paths[r] for r in want]
        assert got.neighbours[0].label == CLASSES[qy[i]]  # the classes are well apart


def test_a_stored_query_is_found_by_its_file_and_left_out_of_its_own_split(store, tmp_path):
    path, data = store
    _, _, paths = data["train"]
    by_file = similar(tmp_path / "data" / paths[4], path, k=5)
    by_path = similar(paths[4], path, k=5)
    assert by_file.neighbours == by_path.neighbours and by_file.query_row == 4
    assert 4 not in [n.row for n in by_path.neighbours]  # itself, at similarity 1, is no answer
    assert similar(paths[4], path, split="test", k=3).neighbours  # searched in another split: nothing left out


def test_the_index_gives_the_exact_answer_and_is_refused_once_stale(store, tmp_path):
    path, data = store
    _, _, qpaths = data["test"]
    meta = build_similarity_index(path, split="train", dims=8)
    assert meta["rows"] == 300 and meta["dims"] == 8 and meta["reduced"]
    for q in qpaths[:4]:
        exact = similar(q, path, k=6, use_index=False)
        fast = similar(q, path, k=6)  # the index is used when there is one
        assert fast.method == "index" and [n.row for n in fast.neighbours] == [n.row for n in exact.neighbours]
        assert [n.similarity for n in fast.neighbours] == [n.similarity for n in exact.neighbours]
    X, y, paths = data["train"]
    write_split(path, "train", X[:-1].astype(np.float32).reshape(-1, 2, 2, 16), y[:-1], paths[:-1], tmp_path / "data")
    with pytest.raises(ConfigError, match="stale: split 'train' changed"):
        similar(qpaths[0], path)
    assert similar(qpaths[0], path, use_index=False).method == "exact"  # --exact still answers
    shutil.rmtree(index_dir(path, "synthetic", "train"))
    with pytest.raises(ConfigError, match="no similarity index"):
        similar(qpaths[0], path, use_index=True)


def test_unknown_queries_and_bad_k_are_refused_with_the_way_out(store):
    path, _ = store
    with pytest.raises(ConfigError, match="neither an image stored"):
        similar("test/cat/nope.png", path)
    with pytest.raises(ConfigError, match="k must be"):
        similar("test/cat/0000.png", path, k=0)
    with pytest.raises(ConfigError, match="no split"):
        similar("test/cat/0000.png", path, split="holdout")


def test_cli_prints_the_table_builds_the_index_and_writes_a_gallery(store, tmp_path):
    path, data = store
    q = data["test"][2][5]  # the image named like markup
    html = tmp_path / "near.html"
    r = CliRunner().invoke(app, ["similar", q, "--store", str(path), "-k", "4", "--build-index", "--html", str(html)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "index search over 300 rows" in lines[0] and lines[1].split() == ["rank", "similarity", "label", "path"]
    assert len(lines) == 7 and lines[-1] == f"wrote {html}"
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 5  # the query and 4 neighbours, inside the file
    assert "<img src=x" not in page and "&lt;img src=x onerror" in page


@pytest.mark.slow
def test_a_new_image_is_extracted_through_the_stores_own_extractor(store, tmp_path):
    """The conftest store (VGG16 at 32 px, random weights): a copy of a stored image, elsewhere, finds its original."""
    from .conftest import make_store

    path = make_store(tmp_path / "vgg", (4, 2, 2))
    from featstore import FeatureStore

    fs = FeatureStore(path)
    rel = fs.paths("train")[5]
    copy = tmp_path / "elsewhere.png"
    shutil.copy(tmp_path / "vgg" / "data" / rel, copy)
    got = similar(copy, path, k=3)
    assert got.query_kind == "new" and got.neighbours[0].path == rel
    assert got.neighbours[0].similarity > 0.999


def test_float16_lookup_is_numpys_cast_and_exact_search_matches_normalised():
    """The faster float16 conversion and the centred-in-place products give what normalised() gave."""
    from featstore.experiments.leaks.search import _rows, normalised

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    got, want = _rows(every), every.astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((500, 64)), 0).astype(np.float16)
    mean, q = _rows(X).mean(axis=0), _rows(X[:1])[0]
    qn = normalised(q[None], mean)[0]
    R = _rows(X) - mean
    fast = (R @ qn) / np.linalg.norm(R, axis=1)
    assert np.allclose(fast, normalised(X, mean) @ qn, atol=1e-6)


def test_the_index_proposes_more_candidates_as_the_split_grows(store, monkeypatch):
    """The reduction's error is the same at any size, so the rows that can swap with the k-th neighbour grow with the
    split: candidates are 10 k, at least 100, and one row in 800 (recall@10 0.90 -> 1.00 at 800,000 rows)."""
    from featstore.experiments import similar_index

    assert [similar_index.candidates(n, k) for n, k in ((300, 6), (80_000, 10), (800_000, 10), (10**6, 50))] == [
        100,
        100,
        1000,
        1250,
    ]
    path, data = store
    build_similarity_index(path, split="train", dims=8)
    seen = []
    read = similar_index.read_rows
    monkeypatch.setattr(similar_index, "candidates", lambda rows, k: 150)
    monkeypatch.setattr(
        similar_index, "read_rows", lambda fs, n, s, rows: seen.append(len(rows)) or read(fs, n, s, rows)
    )
    similar(data["test"][2][0], path, k=6)
    assert seen == [150]  # the search re-ranks exactly the rows candidates() asks for


@pytest.mark.parametrize("build", [False, True])
def test_nan_rows_are_refused_naming_similar_not_leaks(tmp_path, build):
    """The NaN/overflow refusal is leaks' scan: from similar (searching, or building its index) it said "so leaks
    (like fit) refuses", a command the user did not run."""
    from featstore.errors import StoreError
    from featstore.store.writer import write_arrays

    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    X[3, 1] = np.nan
    write_arrays(tmp_path / "n.h5", "e", "train", X, np.arange(30) % 3, ["a", "b", "c"])
    call = build_similarity_index if build else similar
    with pytest.raises(StoreError, match=r"NaN or inf.*so similar \(like fit\) refuses") as got:
        call("train/4", tmp_path / "n.h5") if not build else call(tmp_path / "n.h5", split="train")
    assert "leaks" not in str(got.value)
