"""Audit fixBA: the temporaries built-in layers make inside them count toward one image's bound (or are refused).

Every model here is built symbolically (Keras infers shapes; no forward pass runs), so a model whose pass would take
tens of GiB costs nothing to test. Each case names the layer, what it makes and its shape per image; an ordinary
use of the same layer is not refused.
"""

from __future__ import annotations

import pytest

from featstore.errors import ConfigError

keras = pytest.importorskip("keras")
L = keras.layers


def _model(i, x):
    """``x`` pooled to a small head, so that nothing but the layer under test is large."""
    if len(x.shape) > 2:
        x = L.Flatten()(L.AveragePooling2D(x.shape[1:3])(x)) if len(x.shape) == 4 else L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(2)(x))


def _largest(model):
    from featstore.models.activations import largest_activation

    return largest_activation(model)


def _refused(model, match: str) -> None:
    from featstore.models.activations import check_activations

    with pytest.raises(ConfigError, match=match):
        check_activations(model, "m.keras", resizable=False)


def test_clahe_one_hot_encodes_every_pixel_over_256_values():
    """CLAHE (default tiles 8 x 8) sums a one-hot of every pixel's value per tile: 256 floats per pixel and channel,
    12 GiB for one 2048 x 2048 RGB image whose output is its 48 MiB input; at 224 px it is 147 MiB, not refused."""
    i = keras.Input((2048, 2048, 3))
    x = L.Rescaling(1.0, name="scale")(i)
    model = _model(i, L.ContrastLimitedAdaptiveHistogramEqualization(value_range=(0, 1), name="clahe")(x))
    got = _largest(model)
    assert (got.layer, got.shape) == ("clahe", (8, 8, 3, 256 * 256, 256)), got
    _refused(model, r"'clahe' makes 8 x 8 x 3 x 65536 x 256 float32 one-hot of every pixel's value .*12\.9 GB")
    small = keras.Input((224, 224, 3))
    got = _largest(_model(small, L.ContrastLimitedAdaptiveHistogramEqualization(name="clahe")(small)))
    assert got.nbytes == 224 * 224 * 3 * 256 * 4 and got.nbytes < 200 << 20, got


def test_resizing_pads_the_image_to_the_outputs_aspect_ratio():
    """Resizing(1, 100000, pad_to_aspect_ratio=True) pads a 224 x 224 image to 224 x 22.4 million (60 GB) before
    resizing it to its 1.2 MB output; an ordinary aspect ratio pads a little."""
    i = keras.Input((224, 224, 3))
    x = L.Rescaling(1.0, name="scale")(i)
    model = _model(i, L.Resizing(1, 100000, pad_to_aspect_ratio=True, name="pad")(x))
    assert _largest(model).shape == (224, 22400000, 3)
    _refused(model, r"'pad' makes 224 x 22400000 x 3 float32 image padded to the output's aspect ratio")
    got = _largest(_model(i, L.Resizing(256, 128, pad_to_aspect_ratio=True, name="pad")(i)))
    assert (got.shape, got.scores) == ((448, 224, 3), "image padded to the output's aspect ratio"), got


@pytest.mark.parametrize("how", [{"antialias": True}, {"interpolation": "lanczos3"}])
def test_an_antialiased_resize_first_resizes_along_the_height_only(how):
    """An antialiased or Lanczos resize (TensorFlow's ScaleAndTranslate) keeps output height x input width: 2**20 x 1
    from 2048 x 2048 makes 8 GiB, its output 4 MiB (measured at 1/32 of it: 573 MiB for an 8 MiB output). Plain
    bilinear makes nothing more."""
    i = keras.Input((2048, 2048, 1))
    x = L.Rescaling(1.0, name="scale")(i)
    model = _model(i, L.Resizing(2**20, 1, name="resize", **how)(x))
    got = _largest(model)
    assert (got.layer, got.shape) == ("resize", (2**20, 2048, 1)), got
    _refused(model, r"'resize' makes 1048576 x 2048 x 1 float32 image resized along its height only .*--layer scale")
    got = _largest(_model(i, L.Resizing(2**20, 1, name="resize")(i)))
    assert (got.shape, got.scores) == ((2**20, 1, 1), ""), got  # its output


def test_adaptive_pooling_pools_one_axis_at_a_time_at_the_outputs_size():
    """AdaptiveAveragePooling2D((2**20, 2)) on 512 x 512 x 3 pools the height to 2**20 first, and concatenates the
    two window sizes' pools along the width: 2**20 x 513 x 3 (6 GiB) for a 24 MiB output (measured at 1/8 of it, 256
    x 256 to 2**17 x 2: 386 MiB counted, one pass grew by 816 MiB). Pooling down (7 x 7) makes less than twice its
    input."""
    i = keras.Input((512, 512, 3))
    x = L.Rescaling(1.0, name="scale")(i)
    model = _model(i, L.AdaptiveAveragePooling2D((2**20, 2), name="pool")(x))
    assert _largest(model).shape == (2**20, 513, 3)
    _refused(model, r"'pool' makes 1048576 x 513 x 3 float32 input pooled along its first axes")
    got = _largest(_model(i, L.AdaptiveMaxPooling2D(7, name="pool")(i)))
    assert got.nbytes <= 2 * 512 * 512 * 3 * 4, got


def test_grouped_query_attention_repeats_keys_over_the_query_heads():
    """GroupedQueryAttention(64 query heads, 1 key head, head_dim 512) repeats its keys and values 64 times: 65,536
    key tokens x 64 x 512 is 8 GiB, counted as the 128 MiB of one head before."""
    i = keras.Input((256, 256, 3))
    keys = L.Reshape((65536, 3), name="tokens")(i)
    query = L.GlobalAveragePooling1D(keepdims=True, name="query")(keys)
    att = L.GroupQueryAttention(512, 64, 1, name="gqa")(query, keys)
    model = _model(i, att)
    assert _largest(model).shape == (65536, 64, 512)
    _refused(model, r"'gqa' makes 65536 x 64 x 512 float32 key or value projections")


def test_an_rnn_unrolled_over_thousands_of_steps_is_refused():
    """LSTM(4, unroll=True) over 2,048 steps: no large tensor, but TensorFlow traces its cell 2,048 times (4,096
    steps took 154 s and 2 GB before the first image); a Bidirectional one twice. 16 unrolled steps pass."""
    from featstore.models.activations import check_activations

    i = keras.Input((2048, 1))
    _refused(keras.Model(i, L.LSTM(4, unroll=True, name="rnn")(i)), r"'rnn' unrolls 2,048 cell steps .*unroll=False")
    j = keras.Input((600, 1))
    bi = L.Bidirectional(L.GRU(4, unroll=True), name="bi")(j)
    _refused(keras.Model(j, bi), r"'bi' unrolls 1,200 cell steps")
    short = keras.Input((16, 1))
    assert check_activations(keras.Model(short, L.LSTM(4, unroll=True)(short)), "m.keras", resizable=False)
    assert check_activations(keras.Model(i, L.LSTM(4, name="rnn")(i)), "m.keras", resizable=False)  # a loop


def test_a_training_only_histogram_or_kernel_of_a_config_size_counts():
    """Fine-tuning trains a saved model, so its random layers act: Equalization(bins=2**31) makes an 8 GiB histogram
    (and its cdf and lookup table) per channel, RandomGaussianBlur(kernel_size=32769) a 12 GiB kernel, whatever the
    image; Keras's defaults (256 bins, a 3 x 3 kernel) make a few KiB. (An Equalization returns its input tensor as
    its symbolic output, a cycle in a Functional graph: it runs in a Pipeline.)"""
    i = keras.Input((64, 64, 3))
    x = L.Rescaling(1.0, name="scale")(i)
    eq = L.Pipeline([L.Equalization(bins=2**31, name="eq")], name="pipe")(x)
    _refused(_model(i, eq), r"'eq' \(inside 'pipe'\) makes 2147483648 float32 histogram of its bins \(when training")
    blur = L.RandomGaussianBlur(kernel_size=32769, name="blur")(x)
    _refused(_model(i, blur), r"'blur' makes 32769 x 32769 x 3 float32 Gaussian kernel \(when training")
    for layer in (L.Pipeline([L.Equalization()]), L.RandomGaussianBlur()):
        got = _largest(_model(i, layer(x)))
        assert got.scores == "" and got.shape == (64, 64, 3), got


@pytest.mark.parametrize("layer", ["RandAugment(num_ops=100)", "AugMix(num_chains=10, chain_depth=10)"])
def test_an_augmentation_chain_of_a_hundred_layers_is_refused_before_keras_builds_it(tmp_path, layer):
    """AugMix and RandAugment build every augmentation they chain into the graph a fine-tuning trains (num_chains x
    chain_depth, num_ops): over 64 is refused from the config; Keras's defaults (9, 2) pass."""
    from featstore.models.keras_sizes import keras_zip_problem

    i = keras.Input((32, 32, 3))
    keras.Model(i, eval(f"L.{layer}")(i)).save(tmp_path / "aug.keras")
    problem = keras_zip_problem(tmp_path / "aug.keras")
    assert problem and "chains 100 augmentations per image" in problem and "over 64" in problem, problem
    keras.Model(i, L.AugMix()(L.RandAugment()(i))).save(tmp_path / "ok.keras")
    assert keras_zip_problem(tmp_path / "ok.keras") is None
