"""Attack 22 finding 3 and attack 21 finding 14 (issue #19): the similarity index signs the identity of the file it
wrote (from the descriptor that wrote it, after the rename), never of whatever is at its name; a thumbnail's failure
note is kept only for a reason that is a property of the file's bytes. Synthetic stores and tiny images; each test
failed with its fix sabotaged (the sabotage is named in its docstring)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from featstore.errors import OutputError
from featstore.experiments import similar_index
from featstore.experiments.similar import similar
from featstore.experiments.similar_files import check_vectors, identity
from featstore.experiments.similar_index import build_similarity_index, index_dir, load_index
from featstore.images import decode
from featstore.report.site import thumbs
from featstore.store.reader import FeatureStore
from featstore.store.writer import write_arrays

N, D = 400, 8


@pytest.fixture
def store(tmp_path):
    """N rows of D values whose last row is a near-copy of row 0, with its index built."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)).astype("f4")
    X[N - 1] = X[0] + 0.01 * rng.standard_normal(D).astype("f4")
    path = tmp_path / "s.h5"
    write_arrays(path, "ex", "train", X, np.arange(N) % 2, ["a", "b"])
    build_similarity_index(path, split="train")
    return path


def _planted(path, shape) -> None:
    """A valid vectors.npy of the right shape whose rows point anywhere (train/0's true neighbour never proposed)."""
    V = np.random.default_rng(1).standard_normal(shape).astype("<f4")
    with open(path, "wb") as fh:
        np.save(fh, V / np.linalg.norm(V, axis=1, keepdims=True))


def _true_neighbour_found(store) -> bool:
    return f"train/{N - 1}" in [n.path for n in similar("train/0", store, k=5, use_index=None).neighbours]


# ------------------------------------------------------------------ attack 22, 3: the identity of the file written
@pytest.mark.parametrize("when", ["vectors.npy renamed over, model.npz being written", "model.npz's temporary swapped"])
def test_a_file_renamed_in_while_the_index_is_built_is_refused_never_signed(store, tmp_path, monkeypatch, when):
    """A planter renames a valid vectors.npy onto the index's name after featstore renamed its own there (or a
    model.npz onto the temporary featstore wrote): the build refuses in one line and signs nothing, and no later query
    trusts the planted file. Before: index.json signed the planted file's identity (lstat by name after the rename)
    and every later query used it unhashed (train/{N-1} MISSING). Sabotage: ``_stats`` signing
    ``os.lstat((at or folder) / f)`` as before (or ``os.fstat(fd)`` for ``same_file(...)`` in ``renamed_identity``)
    fails it."""
    assert _true_neighbour_found(store)
    folder = index_dir(store, "ex", "train")
    spare = tmp_path / "spare"
    if when.startswith("vectors"):
        _planted(spare, (N, D))
    else:
        with open(spare, "wb") as fh:
            np.savez(fh, mean=np.zeros(D, "f4"), components=np.zeros((0, D), "f4"), pca_mean=np.zeros(D, "f4"))
    assert spare.is_file()
    real = similar_index.written

    def planter(fh, held, name):
        real(fh, held, name)
        if name == "model.npz" and spare.exists():  # vectors.npy is in place; model.npz not renamed yet
            os.replace(spare, folder / "vectors.npy" if when.startswith("vectors") else fh.name)

    monkeypatch.setattr(similar_index, "written", planter)
    with pytest.raises(OutputError) as err:
        build_similarity_index(store, split="train")
    shown = "vectors.npy" if when.startswith("vectors") else "model.npz"
    assert f"{shown} is not the file featstore just wrote" in str(err.value)
    assert "nothing was signed" in str(err.value)
    assert not (folder / "index.json").exists()
    assert load_index(FeatureStore(store), "ex", "train") is None  # no index: the search is exact
    assert _true_neighbour_found(store)


def test_the_written_file_changed_in_place_before_its_rename_is_refused(store, monkeypatch):
    """Rows overwritten in the temporary vectors.npy (same size) after featstore's last write and before the rename:
    its mtime is not the one its writing descriptor saw, so it is refused, never signed (signed, every later query
    would have trusted the altered rows unhashed: the identity read after the write matches them). Sabotage: drop
    the ``(after.st_size, after.st_mtime_ns) != (before...)`` test in ``renamed_identity``."""
    real = similar_index.written

    def writer(fh, held, name):
        real(fh, held, name)
        if name == "vectors.npy":
            time.sleep(0.05)  # past the file system's timestamp tick
            with open(fh.name, "r+b") as other:
                other.seek(-4 * D, os.SEEK_END)
                other.write(np.full(D, 0.5, "<f4").tobytes())

    monkeypatch.setattr(similar_index, "written", writer)
    with pytest.raises(OutputError, match="vectors.npy is not the file featstore just wrote"):
        build_similarity_index(store, split="train")
    assert not (index_dir(store, "ex", "train") / "index.json").exists()


def test_the_signed_identity_is_the_written_files_after_its_rename(store):
    """A clean build signs vectors.npy's identity as it is in place (the rename changed its ctime on Linux): the
    next query finds it equal and does not hash, and the sizes recorded are the written ones. Sabotage: ``return
    before`` (the fstat before the rename) in ``renamed_identity``."""
    folder = index_dir(store, "ex", "train")
    meta = json.loads((folder / "index.json").read_text())
    st = os.stat(folder / "vectors.npy")
    assert meta["vectors_identity"] == identity(st)
    assert meta["files"] == {"vectors.npy": st.st_size, "model.npz": os.stat(folder / "model.npz").st_size}
    with open(folder / "vectors.npy", "rb") as fh:
        assert check_vectors(fh, meta) is None  # trusted without hashing


# ------------------------------------------------------------------ attack 21, 14: transient thumbnail failures
def _image(tmp_path, name="a.png"):
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "reason",
    [
        "out of memory while decoding",
        "cannot decode: [Errno 5] Input/output error",
        "cannot decode: [Errno 13] Permission denied: 'a.png'",
        "file vanished: [Errno 2] No such file or directory",
        "decoding took over 120 s (a file that blocks when read?); skipped",
    ],
)
def test_a_transient_failure_is_not_kept(tmp_path, monkeypatch, reason):
    """A decode that failed for a reason that may pass leaves no note: the next ThumbCache decodes the readable image
    (before: the note kept the placeholder for ever). Sabotage: ``return True`` first in ``thumbs.permanent``."""
    src, folder = _image(tmp_path), tmp_path / "s.h5.cache" / "thumbs"

    def failing(path, size, *a, **k):
        raise decode.ImageError(reason)

    monkeypatch.setattr(decode, "load_image", failing)
    first = thumbs.ThumbCache(folder, workers=0).make([src])[src]
    assert (first.key, first.reason) == (None, reason)
    assert not list(folder.rglob("*.txt"))
    monkeypatch.undo()
    again = thumbs.ThumbCache(folder, workers=0)
    assert again.make([src])[src].key is not None and again.made == 1


def test_a_permanent_failure_is_kept_for_this_pillow_only(tmp_path, monkeypatch):
    """A file that is not an image keeps its note (not decoded again) while Pillow is the same; under another Pillow
    version the note is not trusted and the file is decoded again. Sabotage: ``_noted`` returning ``name``."""
    import PIL

    src = tmp_path / "data" / "x.png"
    src.parent.mkdir(parents=True)
    src.write_text("not a picture")
    folder = tmp_path / "s.h5.cache" / "thumbs"
    first = thumbs.ThumbCache(folder, workers=0).make([str(src)])[str(src)]
    assert first.reason.startswith("not an image Pillow can identify")
    assert len(list(folder.rglob("*.txt"))) == 1
    decoded: list[str] = []
    real = decode.load_image

    def counted(path, *a, **k):
        decoded.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(decode, "load_image", counted)
    assert thumbs.ThumbCache(folder, workers=0).make([str(src)])[str(src)].reason == first.reason
    assert decoded == []  # the note was trusted
    monkeypatch.setattr(PIL, "__version__", "0.0.1")
    thumbs.ThumbCache(folder, workers=0).make([str(src)])
    assert decoded == [str(src)]
