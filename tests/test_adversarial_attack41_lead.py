"""Attack 41 (on the fixes of 2026-12-06 after 14:13), the lead's fixes.

- #1: a model wrapped in ``TimeDistributed`` (or layers in a ``keras.layers.Pipeline``) was one layer to the activation
  bound: only the wrapper's output was measured (64 KiB) while the wrapped model made 16 GiB per frame; extract died
  of SIGSEGV. The held layers are measured at the shapes they take (one frame; in turn).
- #2: a layer whose call gives several tensors (a nested model with two outputs, an attention layer returning its
  scores) made ``models --layers`` and ``extract --layer`` end in tracebacks; now "N outputs: not a cut" and one line.
"""

from __future__ import annotations

import pytest

from featstore.errors import ConfigError


def _wide():
    """UpSampling2D(64) then a 4,096-filter 1x1 Conv2D on a 16x16 frame: 1024 x 1024 x 4096 float32 = 16 GiB."""
    import keras

    return [keras.layers.UpSampling2D(64), keras.layers.Conv2D(4096, 1, name="wide_conv")]


@pytest.mark.parametrize("holder", ["TimeDistributed(model)", "TimeDistributed(layer)", "Pipeline"])
def test_layers_held_by_a_layer_are_measured_where_they_run(holder):
    import keras

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((32, 32, 3))
    if holder == "Pipeline":
        pooled = keras.layers.GlobalAveragePooling2D()
        x = keras.layers.Pipeline([*_wide(), pooled], name="pipe")(keras.layers.Resizing(16, 16)(i))
        expected = (1024, 1024, 4096)
    else:
        frames = keras.layers.Reshape((4, 16, 16, 3), name="frames")(i)
        if holder == "TimeDistributed(model)":
            fi = keras.Input((16, 16, 3))
            u, conv = _wide()
            inner = keras.Model(fi, keras.layers.GlobalAveragePooling2D()(conv(u(fi))), name="inner")
            x = keras.layers.Flatten()(keras.layers.TimeDistributed(inner, name="td")(frames))
        else:
            x = keras.layers.TimeDistributed(keras.layers.UpSampling2D(64), name="td")(frames)
            x = keras.layers.TimeDistributed(keras.layers.Conv2D(4096, 1, name="wide_conv"))(x)
            x = keras.layers.GlobalAveragePooling3D()(x)
        expected = (1024, 1024, 4096) if holder == "TimeDistributed(model)" else (4, 1024, 1024, 4096)
    model = keras.Model(i, keras.layers.Dense(2)(x))
    got = largest_activation(model)
    assert got.shape == expected, got  # was the wrapper's output: (4, 4096) / (4096,)
    with pytest.raises(ConfigError, match="over featstore's bound of 4 GiB per image"):
        check_activations(model, "m.keras", resizable=False)


def test_a_layer_giving_several_tensors_is_no_cut(tmp_path):
    import keras
    from keras import layers as L

    from featstore.models.backbones import cut_model
    from featstore.report.tables import layers_table

    t = keras.Input((16, 16, 3))
    two = keras.Model(t, [L.Conv2D(4, 3, name="ca")(t), L.Conv2D(6, 3, name="cb")(t)], name="two")
    i = keras.Input((16, 16, 3))
    p, q = two(i)
    model = keras.Model(i, L.Dense(2, name="head")(L.Flatten()(L.Concatenate(name="concatenate")([p, q]))))
    for pooling in ("none", "avg"):
        with pytest.raises(
            ConfigError, match="'two' gives 2 tensors, .* cut at a layer after it .*--layer concatenate"
        ):
            cut_model(model, "two", pooling, "twoout")
    model.save(tmp_path / "twoout.keras")
    listed = layers_table(str(tmp_path / "twoout.keras"))
    assert "2 outputs: not a cut" in listed and "concatenate" in listed, listed
    y = L.Reshape((64, 12))(i)
    o, _ = L.MultiHeadAttention(2, 8, name="mha")(y, y, return_attention_scores=True)
    scored = keras.Model(i, L.Dense(2)(L.Flatten()(o)))
    with pytest.raises(ConfigError, match="'mha' gives 2 tensors"):
        cut_model(scored, "mha", "none", "mhascores")
