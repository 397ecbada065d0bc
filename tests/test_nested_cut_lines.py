"""Attack 45 #5: a layer inside a nested classifier was refused with "cut at that model's output (--layer model)",
the classifier's logits, which featstore's own default-cut line calls "not features" (and --layer model then stored
them without a word); two deep, the "save it on its own" fix named the outer nested model, refused again."""

from __future__ import annotations

import logging

import pytest

from featstore.errors import ConfigError
from featstore.models.backbones import cut_outputs


def _classifier(keras, name: str, dense: bool = True):
    L = keras.layers
    head = [L.Dense(4, activation="relu", name="fc"), L.Dense(2, name="logits")] if dense else []
    return keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="conv"), L.GlobalAveragePooling2D(name="gap"), *head], name=name
    )


def test_the_fixes_name_the_innermost_model_and_never_a_classifiers_output(caplog):
    """Sabotage: the old line (its '--layer model' fix, the outermost model's save): both asserts on the fix fail."""
    import keras

    prob = keras.Sequential([keras.Input((16, 16, 3)), _classifier(keras, "model"), keras.layers.Softmax()])
    with pytest.raises(ConfigError) as got:
        cut_outputs(prob, ["gap"], "none", "prob.keras")
    line = str(got.value)
    assert "--layer model" not in line and "model.get_layer('model').save('base.keras')" in line, line
    wrapped = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255), _classifier(keras, "classifier")], name="wrapped"
    )
    deep = keras.Sequential([keras.Input((16, 16, 3)), wrapped], name="outer")
    with pytest.raises(ConfigError) as got:
        cut_outputs(deep, ["gap"], "none", "deep.keras")
    line = str(got.value)
    assert "inside 'classifier', a model nested in 'wrapped' in deep.keras" in line, line
    assert "model.get_layer('wrapped').get_layer('classifier').save('base.keras')" in line, line
    assert "--layer wrapped" not in line
    with caplog.at_level(logging.WARNING, logger="featstore"):
        cut_outputs(prob, ["model"], "none", "prob.keras")  # asked for: cut, and said
    assert any("classifier inside" in r.getMessage() for r in caplog.records), caplog.text


def test_a_nested_feature_model_keeps_its_cut_at_the_output():
    import keras

    outer = keras.Sequential([keras.Input((16, 16, 3)), _classifier(keras, "features", dense=False)])
    with pytest.raises(ConfigError, match=r"cut at that model's output \(--layer features\), or save it"):
        cut_outputs(outer, ["conv"], "none", "f.keras")


def test_a_nested_backbone_with_dense_blocks_ending_in_pooling_gives_features(caplog):
    """Attack 46 #3: Sequential([ConvNeXtTiny(pooling="avg"), Dense(2, softmax)]): ConvNeXt's pointwise convolutions are
    Dense layers, so its pooled output, featstore's own default cut, was warned as "a classifier inside ... logits",
    and a layer inside it lost the one-flag fix. Sabotage: 'any Dense inside' instead of 'ends in Dense': both fail."""
    import keras

    from featstore.models.saved import nested_head

    L = keras.layers
    blocks = keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="stem"), L.Dense(8, name="pointwise"),
         L.GlobalAveragePooling2D(name="pool")], name="backbone",
    )  # fmt: skip
    model = keras.Sequential([keras.Input((16, 16, 3)), blocks, L.Dense(2, activation="softmax", name="head")])
    with caplog.at_level(logging.WARNING, logger="featstore"):
        cut_outputs(model, ["backbone"], "none", "ct.keras")
    assert not [r for r in caplog.records if "classifier" in r.getMessage()], caplog.text
    with pytest.raises(ConfigError, match=r"cut at that model's output \(--layer backbone\), or save it"):
        cut_outputs(model, ["stem"], "none", "ct.keras")
    preprocessed = keras.Sequential([keras.Input((16, 16, 3)), L.Rescaling(1 / 255), blocks])
    assert nested_head(preprocessed) is None  # its last layer, the pooled features, is a fine default cut


@pytest.mark.parametrize("act", ["sigmoid", "linear", "softmax"])
def test_a_nested_classifier_ending_in_an_activation_layer_is_still_a_classifier(act):
    """Attack 47 #2 (a regression by 46 #3's fix): Dense(3) then Activation("sigmoid"), nested: its class scores were
    the default cut, stored as features ("there is no Dense layer"). Sabotage: no tail of weightless layers: sigmoid
    and linear pass."""
    import keras

    from featstore.models.saved import nested_head

    L = keras.layers
    classifier = keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="conv"), L.GlobalAveragePooling2D(name="gap"),
         L.Dense(3, name="logits"), L.Activation(act, name="act")], name="classifier",
    )  # fmt: skip
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Rescaling(1 / 255), classifier])
    assert nested_head(model) == ("classifier", "gap")
