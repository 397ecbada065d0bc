"""Attack 48 #1, #2: the default cut of a saved model, and "a classifier inside", follow what the model ends in.

#1: a nested classifier ending Dense -> Rescaling (temperature scaling) had its logits stored as features, said as
"there is no Dense layer": ``ends_in_dense`` skipped only a fixed list of layers after the Dense. It now walks back from
the output through every weightless layer. #2: a saved no-top ConvNeXt (pooled) was cut inside its last block's MLP,
``default_cut`` cutting "before the last Dense" whatever the model ends in."""

from __future__ import annotations

import pytest

from featstore.models.backbones import ends_in_dense
from featstore.models.saved import default_cut, nested_head

TAILS = ["rescaling", "relu", "leaky_relu", "softmax", "dropout", "identity", "flatten", "reshape", "chain"]


def _tail(L, kind):
    made = {
        "rescaling": lambda: [L.Rescaling(1 / 1.5, name="temperature")],
        "relu": lambda: [L.ReLU()],
        "leaky_relu": lambda: [L.LeakyReLU()],
        "softmax": lambda: [L.Softmax()],
        "dropout": lambda: [L.Dropout(0.2)],
        "identity": lambda: [L.Identity()],
        "flatten": lambda: [L.Flatten()],
        "reshape": lambda: [L.Reshape((3, 1))],
        "chain": lambda: [L.Rescaling(0.5), L.Reshape((3, 1)), L.Activation("sigmoid"), L.Flatten()],
    }
    return made[kind]()


def _trunk(keras, inp):
    L = keras.layers
    return L.GlobalAveragePooling2D(name="gap")(L.Conv2D(4, 3, name="conv")(inp))


@pytest.mark.parametrize("kind", TAILS)
def test_a_nested_classifier_ending_in_weightless_layers_is_no_default_cut(kind):
    """Sabotage (the old fixed tail list): rescaling, relu, leaky_relu and chain fail."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Dense(3, name="logits")(_trunk(keras, inp))
    for layer in _tail(L, kind):
        x = layer(x)
    functional = keras.Model(inp, x, name="classifier")
    sequential = keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3, name="conv"), L.GlobalAveragePooling2D(name="gap"),
         L.Dense(3, name="logits"), *_tail(L, kind)], name="classifier",
    )  # fmt: skip
    for clf in (functional, sequential):
        assert ends_in_dense(clf), (kind, clf)
        outer_in = keras.Input((16, 16, 3))
        outer = keras.Model(outer_in, clf(L.Rescaling(1 / 255, name="scale")(outer_in)), name="wrapped")
        assert nested_head(outer) == ("classifier", "gap"), kind


def test_the_walk_stops_at_joins_weighted_layers_and_the_input():
    """A Dense whose output is joined with another branch, normalised or pooled, or no weighted layer: features."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    feat = _trunk(keras, inp)
    joined = L.Add()([L.Dense(4)(feat), L.Dense(4)(feat)])
    assert not ends_in_dense(keras.Model(inp, L.ReLU()(joined)))
    assert not ends_in_dense(keras.Model(inp, L.LayerNormalization()(L.Dense(4)(feat))))
    assert not ends_in_dense(keras.Model(inp, L.Rescaling(0.5)(inp)))
    pointwise = L.Dense(4)(L.Conv2D(4, 3)(inp))  # a Dense per position, then pooled: a block's, not a head (46 #3)
    assert not ends_in_dense(keras.Model(inp, L.Flatten()(L.MaxPooling2D()(pointwise))))
    assert ends_in_dense(keras.Model(inp, L.Softmax()(L.GlobalAveragePooling2D()(pointwise))))  # probabilities
    assert ends_in_dense(keras.Model(inp, [L.Dense(4)(feat), feat]))  # two outputs, one of them logits

    class Sub(keras.Model):  # no graph of nodes: walked along its layers
        def __init__(self):
            super().__init__()
            self.dense, self.scale = L.Dense(3), L.Rescaling(0.5)

        def call(self, x):
            return self.scale(self.dense(x))

    sub = Sub()
    sub(keras.ops.zeros((1, 4)))
    assert ends_in_dense(sub)


def test_classic_heads_keep_their_cut_before_the_last_dense():
    import keras

    L = keras.layers
    cnn = keras.Sequential(
        [keras.Input((16, 16, 3)), L.Conv2D(4, 3), L.Flatten(name="flat"), L.Dense(8, name="fc"),
         L.Dropout(0.5, name="drop"), L.Dense(3, name="logits"), L.Rescaling(1 / 2.0, name="temperature")],
    )  # fmt: skip
    assert default_cut(cnn) == "drop"
    vgg = keras.applications.VGG16(include_top=True, weights=None, input_shape=(32, 32, 3))
    assert default_cut(vgg) == "fc2"
