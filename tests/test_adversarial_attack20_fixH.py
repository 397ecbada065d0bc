"""Attack 20 leftovers (issue #19, "outputs safe, inputs bounded"): a deflated ``model.weights.h5`` read once, not
re-inflated on every seek (finding 4); store attributes measured before they are read; ``.npz`` export without an
extra copy of each block. Synthetic files only; each test failed (or was shown to fail on sabotage) before its fix."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest


# ------------------------------------------------------------------ 4. deflated model.weights.h5
def _deflated_keras(folder, arrays: int, units: int = 2):
    """A .keras zip whose model.weights.h5 (``arrays`` arrays of 2,000 bytes) is DEFLATED, its config one Dense."""
    import h5py

    weights = folder / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        for i in range(arrays):
            f.create_dataset(f"l{i:05d}/vars/0", data=np.arange(500, dtype=np.float32) + i)
    config = {
        "class_name": "Dense",
        "config": {"name": "d", "units": units},
        "build_config": {"input_shape": [None, 4]},
    }
    path = folder / "m.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps(config))
        z.write(weights, "model.weights.h5")
    return path


def _count_inflated(monkeypatch) -> list[int]:
    """Patch zipfile's deflate decompressor to add the bytes it puts out to the returned one-item list."""
    inflated, real = [0], zipfile._get_decompressor

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            inflated[0] += len(out)
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(zipfile, "_get_decompressor", lambda kind: Counting(real(kind)))
    return inflated


def test_a_deflated_weights_member_is_inflated_once(tmp_path, monkeypatch):
    """Finding 4: zipfile's member object re-inflates from its start on each backward seek h5py makes, so the size
    check was quadratic in the arrays (1,000 arrays, a 3.6 MB file: 19.2 s). The member is now inflated once into a
    temporary file: the bytes inflated are the member's size, whatever the number of seeks (not a timed test)."""
    from featstore.models.keras_sizes import keras_zip_problem

    path = _deflated_keras(tmp_path, 300)
    size = zipfile.ZipFile(path).getinfo("model.weights.h5").file_size
    inflated = _count_inflated(monkeypatch)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert keras_zip_problem(path) is None
    assert size <= inflated[0] <= size + 1000, (inflated[0], size)  # the member once, plus config.json
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary copy is gone


def test_a_deflated_member_is_still_counted_and_a_full_disk_is_named(tmp_path, monkeypatch):
    """The inflated copy counts what the weights hold as before (an edited config is refused), a full temporary folder
    is one line naming it and the fix."""
    import errno

    from featstore.models import keras_sizes

    big = _deflated_keras(tmp_path, 10, units=10**8)
    assert "model.weights.h5 holds 5,000:" in keras_sizes.keras_zip_problem(big)  # the 10 arrays, read inflated

    class Full:
        def write(self, _block):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(keras_sizes.tempfile, "TemporaryFile", Full)
    problem = keras_sizes.keras_zip_problem(_deflated_keras(tmp_path, 10))
    assert "could not be inflated into a temporary file in" in problem and "No space left" in problem, problem
    assert "TMPDIR" in problem and "\n" not in problem


# ------------------------------------------------------------------ store attributes measured before they are read
@pytest.mark.parametrize(
    "key, command",
    [("notes", "info"), ("format_version", "info"), ("format_version", "check"), ("format_version", "fit")],
)
def test_a_large_store_attribute_is_refused_unread(tmp_path, monkeypatch, key, command):
    """HDF5 reads an attribute whole: a root attribute of 120 MiB of numbers made ``info`` take 721 MiB (tracemalloc)
    and 15 s before anything was said. Its stored size is now measured first and over the bound it is one line naming
    the store, the attribute and the fix, and is never read (here the bound is cut to 64 KiB, the attribute 128 KiB)."""
    import h5py

    from featstore.store import attr_values
    from tests.test_adversarial_attack3 import synthetic_store
    from tests.test_adversarial_attack4 import cli, no_traceback

    store = tmp_path / "s.h5"
    with h5py.File(store, "w", libver="latest") as f:  # dense attribute storage: an attribute over 64 KiB
        f.attrs["notes"] = np.zeros(1, np.float64)
    synthetic_store(store)
    with h5py.File(store, "a") as f:
        del f.attrs[key]
        f.attrs[key] = np.full(1 << 14, 2, np.int64)  # 128 KiB
    monkeypatch.setattr(attr_values, "MAX_ATTR_STORAGE", 64 << 10)
    read, real = [], h5py.AttributeManager.__getitem__
    monkeypatch.setattr(h5py.AttributeManager, "__getitem__", lambda self, k: read.append(k) or real(self, k))
    args = {"fit": ("fit", "--store", store, "--runs", tmp_path / "runs")}.get(command, (command, store))
    out = no_traceback(cli(*args))
    line = next((x for x in out.splitlines() if "131,072 bytes" in x), out)
    assert f"{store}:/ attribute: {key} stores 131,072 bytes, over the 65,536" in line, out
    assert "refused unread" in line and "new --store" in line, out
    assert key not in read, read


# ------------------------------------------------------------------ .npz export without a copy of each block
def test_npz_export_writes_each_features_block_without_copying_it(tmp_path):
    """``.npz`` export wrote each features block as ``X.tobytes()``: one more copy of the block (64 MiB by default)
    for every block. The block's own buffer is written now: the writer allocates a fraction of a block."""
    import tracemalloc

    from featstore.store.export import _write_npz

    X = np.ones((2048, 1024), np.float32)  # an 8 MiB block, already read
    meta = {"extractor": "s", "split": "train", "class_names": ["a", "b"]}
    out = tmp_path / "x.npz"
    tracemalloc.start()
    try:
        _write_npz(out, iter([(X, None, None, None)]), 2048, 1024, meta, np.zeros(2048, np.int64), ["p"] * 2048)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes // 4, peak
    with np.load(out) as z:
        assert np.array_equal(z["features"], X) and z["paths"].tolist() == ["p"] * 2048


# ------------------------------------------------------------------ keras_sizes: a lower bound for every layer option
def test_genuine_models_bound_at_most_what_they_store(tmp_path):
    """The bound must be a lower bound with no slack at all. It was not: an EinsumDense with a sequence axis in its
    ``output_shape`` (as a ViT's ``abc,cd->abd`` over 197 tokens) counted every output value as a unit, 116,346,624
    parameters for 589,824, and the genuine model was refused; Dense without bias, LayerNormalization without centre
    and scale, UnitNormalization (no weights at all), cross-attention of a narrower value, and normalizations over
    another axis counted more than Keras builds, which only the 2^24-parameter slack hid."""
    import keras

    L = keras.layers

    def seq(shape, *layers):
        return keras.Sequential([keras.Input(shape), *layers])

    q, v = keras.Input((5, 64)), keras.Input((7, 8))
    models = {
        "einsum_tokens": seq((197, 768), L.EinsumDense("abc,cd->abd", output_shape=(197, 768))),
        "einsum_heads": seq((10, 16), L.EinsumDense("btd,dnh->btnh", output_shape=(None, 4, 8), bias_axes="nh")),
        "einsum_elided": seq((5, 6, 16), L.EinsumDense("...b,bc->...c", output_shape=12)),
        "no_bias": seq((300,), L.Dense(300, use_bias=False), L.Dense(30, use_bias=False)),
        "norms": seq(
            (7, 4096),
            L.LayerNormalization(center=False, scale=False),
            L.UnitNormalization(),
            L.LayerNormalization(axis=1),
            L.BatchNormalization(axis=1),
            L.GroupNormalization(groups=4),
        ),
        "cross_attention": keras.Model([q, v], L.MultiHeadAttention(4, 16, value_dim=2, output_shape=3)(q, v)),
        "grouped_query": keras.Model(q, L.GroupQueryAttention(8, 4, 2)(q, q)),
    }
    assert_bounded_and_accepted(tmp_path, models)


def assert_bounded_and_accepted(tmp_path, models: dict) -> None:
    """Each Keras model saved, its config's bound above 0 and at most what it stores, and the file accepted."""
    from featstore.models.keras_sizes import implied_parameters, keras_zip_problem

    for name, model in models.items():
        path = tmp_path / f"{name}.keras"
        model.save(path)
        with zipfile.ZipFile(path) as z:
            bound, _ = implied_parameters(json.loads(z.read("config.json")))
        stored = sum(int(w.numpy().size) for w in model.weights)
        assert 0 < bound <= stored, (name, bound, stored)
        assert keras_zip_problem(path) is None, name


@pytest.mark.parametrize(
    "layer, at_least",
    [
        # GroupQueryAttention (Keras's name; "GroupedQueryAttention" was looked for) counted nothing
        ({"class_name": "GroupQueryAttention", "config": {"head_dim": 10**6, "num_query_heads": 4,
          "num_key_value_heads": 2}, "build_config": {"shapes_dict": {"query_shape": [None, 5, 8],
          "value_shape": [None, 5, 8]}}}, 4 * 8 * 10**6),
        # a normalization over a 10^9-wide axis 1 counted its last axis (1)
        ({"class_name": "LayerNormalization", "config": {"axis": [1]},
          "build_config": {"input_shape": [None, 10**9, 1]}}, 2 * 10**9),
        # an EinsumDense weight letter sized by output_shape
        ({"class_name": "EinsumDense", "config": {"equation": "abc,cd->abd", "output_shape": [5, 10**8]},
          "build_config": {"input_shape": [None, 5, 16]}}, 16 * 10**8),
    ],
)  # fmt: skip
def test_layer_sizes_the_formulas_missed_are_counted(layer, at_least):
    """What Keras allocates for these configs is counted (each was counted lower, or not at all, before)."""
    from featstore.models.keras_sizes import implied_parameters

    assert implied_parameters(layer)[0] >= at_least


def test_writes_measure_the_store_attributes_they_read(tmp_path, monkeypatch):
    """Adding a split read the extractor's attributes whole (``provenance.attrs_of``): writes now read them through
    the same bounded reader (here the bound is cut to 12 bytes, so the extractor's string attributes are over it)."""
    import h5py

    from featstore.errors import StoreError
    from featstore.store import attr_values, writer
    from tests.test_adversarial_attack3 import synthetic_store

    store = synthetic_store(tmp_path / "s.h5", splits=("train",))
    monkeypatch.setattr(attr_values, "MAX_ATTR_STORAGE", 12)
    read, real = [], h5py.AttributeManager.__getitem__
    monkeypatch.setattr(h5py.AttributeManager, "__getitem__", lambda self, k: read.append(k) or real(self, k))
    X, y = np.zeros((6, 8), np.float32), np.arange(6, dtype=np.int32) % 3
    with pytest.raises(StoreError) as err:
        writer.write_arrays(store, "s", "test", X, y, ["a", "b", "c"])
    msg = str(err.value)
    assert f"{store}:/s attribute: " in msg and "over the 12 featstore accepts" in msg, msg
    assert msg.split("attribute: ")[1].split()[0] not in read, (msg, read)


def test_compaction_measures_each_attribute_before_copying_it(tmp_path, monkeypatch):
    """A resumed store is rewritten (``compact``) with every attribute copied as stored; each was read whole. The
    copy now measures each first: over the bound (cut to 12 bytes here) the rewrite is refused, the store untouched."""
    import h5py

    from featstore.errors import StoreError
    from featstore.store import attr_values
    from featstore.store.compact import compact
    from tests.test_adversarial_attack3 import synthetic_store

    store = synthetic_store(tmp_path / "s.h5", splits=("train",))
    before = store.read_bytes()
    monkeypatch.setattr(attr_values, "MAX_ATTR_STORAGE", 12)
    read, real = [], h5py.AttributeManager.__getitem__
    monkeypatch.setattr(h5py.AttributeManager, "__getitem__", lambda self, k: read.append(k) or real(self, k))
    with pytest.raises(StoreError, match=r"s\.h5:/ attribute: featstore_version stores 16 bytes, over the 12"):
        compact(store)
    assert "featstore_version" not in read and store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # no temporary file left
