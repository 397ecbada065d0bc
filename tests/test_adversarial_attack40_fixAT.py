"""Attack 40 #3: a model nested in the saved one, built on unknown sides or token counts, is measured at the concrete
shapes of its call (not "each unknown dimension = the outer input's side"): any shape-changing layer inside it
(UpSampling, a strided Conv2DTranspose, a Reshape or Flatten into tokens, a Concatenate) is refused before any image;
a dimension Keras cannot tell even then is refused, not guessed; the lines quote the layer with balanced quotes."""

from __future__ import annotations

import pytest

from featstore.errors import ConfigError

keras = pytest.importorskip("keras")
L = keras.layers


def _nested(inner_input, body, outer_input, name="inner"):
    """``Input(outer_input) -> [pre] -> inner -> Dense(2)``, ``inner`` built on ``inner_input`` as ``body(t)``."""
    t = keras.Input(inner_input)
    inner = keras.Model(t, body(t), name=name)
    i = keras.Input(outer_input)
    return keras.Model(i, L.Dense(2, name="head")(inner(i)))


def _refused(model, match):
    from featstore.models.activations import check_activations

    with pytest.raises(ConfigError, match=match) as err:
        check_activations(model, "nested.keras", resizable=False)
    return str(err.value)


def test_upsampling_inside_a_model_nested_on_unknown_sides_is_measured_at_its_call():
    """The report's upsample.keras: wide_conv is 8192 x 8192 x 256 (64 GiB); counted 1024 x 1024 x 256 (1 GiB)."""
    model = _nested(
        (None, None, 3),
        lambda t: L.GlobalAveragePooling2D()(L.Conv2D(256, 1, name="wide_conv")(L.UpSampling2D(8)(t))),
        (1024, 1024, 3),
        name="inner_up",
    )
    line = _refused(model, r"its layer 'wide_conv' \(inside 'inner_up'\) outputs 8192 x 8192 x 256 float32 values")
    assert "(64.0 GiB)" in line and "refused before any image runs" in line, line


def test_tokens_from_a_reshape_into_a_nested_attention_count_their_real_number():
    """The report's tokens.keras: 4,096 tokens from a Reshape into a model nested on (None, 3): scores 256 x 4096 x
    4096 (16 GiB) were counted 256 x 64 x 64 (4 MiB); and the out-of-memory advice's quotes are balanced."""
    from types import SimpleNamespace

    from featstore.models.activations import largest_activation, memory_advice

    t = keras.Input((None, 3))
    x = L.MultiHeadAttention(num_heads=256, key_dim=1, name="mha")(L.Dense(8)(t), L.Dense(8)(t))
    inner = keras.Model(t, L.GlobalAveragePooling1D()(x), name="inner")
    i = keras.Input((64, 64, 3))
    model = keras.Model(i, L.Dense(2)(L.Dense(16, name="feat")(inner(L.Reshape((4096, 3), name="reshape")(i)))))
    _refused(model, r"its layer 'mha' \(inside 'inner'\) makes 256 x 4096 x 4096 float32 attention scores per image")
    largest = largest_activation(model)
    advice = memory_advice(SimpleNamespace(largest_activation=largest, spec=None), 1)
    assert "cut at a --layer before 'mha' (inside 'inner') (e.g. reshape;" in advice, advice


@pytest.mark.parametrize(
    "body, inner_input, outer_input, shape",
    [
        # a strided Conv2DTranspose: 8x the side
        (lambda t: L.Conv2DTranspose(256, 1, strides=8, name="grow")(t), (None, None, 3), (1024, 1024, 3), "8192 x"),
        # a Concatenate along a side: 2048 x 1024 x 1024 (8 GiB) counted 1024 x 1024 x 1024 (4 GiB, passed)
        (
            lambda t: L.Conv2D(1024, 1, name="grow")(L.Concatenate(axis=1)([t, t])),
            (None, None, 3),
            (1024, 1024, 3),
            "2048 x 1024 x 1024",
        ),
        # a Flatten-like Reshape of unknown sides into tokens, then attention: 4,096 tokens counted 64
        (
            lambda t: L.MultiHeadAttention(256, 1, name="grow")(L.Reshape((-1, 3))(t), L.Reshape((-1, 3))(t)),
            (None, None, 3),
            (64, 64, 3),
            "256 x 4096 x 4096",
        ),
    ],
)
def test_every_shape_changing_layer_inside_a_nested_model_is_measured(body, inner_input, outer_input, shape):
    _refused(_nested(inner_input, body, outer_input), rf"its layer 'grow' \(inside 'inner'\) [a-z]+ {shape}")


def test_deeper_nesting_is_measured_at_each_calls_shapes_and_named_by_its_path():
    t = keras.Input((None, None, 3))
    up = L.GlobalAveragePooling2D()(L.Conv2D(256, 1, name="wide_conv")(L.UpSampling2D(8)(t)))
    deep = keras.Model(t, up, name="inner")
    t = keras.Input((None, None, 3))
    mid = keras.Model(t, deep(L.Conv2D(3, 1)(t)), name="mid")
    i = keras.Input((1024, 1024, 3))
    model = keras.Model(i, mid(i))
    _refused(model, r"its layer 'wide_conv' \(inside 'inner' inside 'mid'\) outputs 8192 x 8192 x 256")


def test_a_dimension_unknown_even_at_the_calls_shapes_is_refused_not_guessed():
    class Dynamic(L.Layer):  # a layer whose output length depends on the values (as a nonzero or a filter)
        def call(self, x):
            return x

        def compute_output_shape(self, shape):
            return (shape[0], None, shape[-1])

    class Broken(L.Layer):  # shape code that fails at the call's shapes (armed once the model is built)
        armed = False

        def call(self, x):
            return x

        def compute_output_shape(self, shape):
            if self.armed:
                raise ValueError("cannot take this side")
            return shape

    t = keras.Input((None, 3))
    inner = keras.Model(t, Dynamic(name="dyn")(t), name="inner")
    i = keras.Input((4096, 3))
    line = _refused(
        keras.Model(i, inner(L.Dense(3, name="pre")(i))),
        r"at its input shape, layer 'dyn' \(inside 'inner'\): its output \(None, 3\) has a dimension Keras cannot tell",
    )
    assert "refuses what it cannot measure: cut before it with --layer pre, or save" in line, line
    broken = _nested((None, 3), lambda t: L.Dense(4)(Broken(name="odd")(t)), (4096, 3))
    Broken.armed = True
    _refused(
        broken,
        r"layer 'odd' \(inside 'inner'\): Keras cannot tell its output shape from its inputs' \(\(4096, 3\),\) "
        r"\(ValueError: cannot take this side\)",
    )


def test_a_backbone_nested_at_unknown_sides_is_measured_at_the_image_side_quickly():
    """The transfer-learning layout: MobileNetV2 on (None, None, 3) inside a classifier at 224 px is measured as at
    224 px (its largest tensor 113 x 113 x 96), in well under a second, with no forward pass."""
    import time

    from featstore.models.activations import check_activations

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(None, None, 3), pooling="avg")
    i = keras.Input((224, 224, 3))
    model = keras.Model(i, L.Dense(3)(base(i)))
    start = time.perf_counter()
    largest = check_activations(model, "transfer.keras", resizable=False)
    assert time.perf_counter() - start < 5
    assert largest.shape == (113, 113, 96) and largest.inside == (base.name,), largest
