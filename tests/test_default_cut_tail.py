"""Attack 48 #1, #2: the default cut of a saved model, and "a classifier inside", follow what the model ends in.

#1: a nested classifier ending Dense -> Rescaling (temperature scaling) had its logits stored as features, said as
"there is no Dense layer": ``ends_in_dense`` skipped only a fixed list of layers after the Dense. It now walks back from
the output through every weightless layer. #2: a saved no-top ConvNeXt (pooled) was cut inside its last block's MLP,
``default_cut`` cutting "before the last Dense" whatever the model ends in."""

from __future__ import annotations

import logging

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


def test_a_model_with_dense_blocks_and_no_classifier_is_cut_at_its_output():
    """#2 (pointwise Dense in a block, then normalisation and pooling). Sabotage (cut before the last Dense whatever
    the model ends in): 'pw1' is the cut."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Dense(8, name="pw2")(L.Dense(16, activation="gelu", name="pw1")(L.Conv2D(4, 3, name="stem")(inp)))
    model = keras.Model(inp, L.GlobalAveragePooling2D(name="pool")(L.LayerNormalization(name="norm")(x)))
    assert default_cut(model) == "pool"


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


def test_a_no_top_convnext_is_cut_at_its_pooled_features():
    """The ConvNeXt of #2 at 32 px: its 768 pooled features (it was cut at 'convnext_tiny_stage_3_block_2_gelu', rows
    of (1, 1, 3072)). Sabotage (cut before the last Dense whatever the model ends in): fails."""
    import keras

    convnext = keras.applications.ConvNeXtTiny(include_top=False, pooling="avg", weights=None, input_shape=(32, 32, 3))
    last = convnext.layers[-1].name
    assert default_cut(convnext) == last and tuple(convnext.get_layer(last).output.shape) == (None, 768)
    assert not ends_in_dense(convnext)


def test_a_saved_model_with_dense_blocks_extracts_its_output(tmp_path, caplog):
    """End to end: the saved pointwise model's rows are its pooled features, said as its last layer."""
    import keras

    from featstore import ExtractorConfig, FeatureStore, extract
    from tests.conftest import write_data_root

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.LayerNormalization(name="norm")(L.Dense(8, name="pw")(L.Conv2D(4, 3, name="stem")(inp)))
    keras.Model(inp, L.GlobalAveragePooling2D(name="pool")(x)).save(tmp_path / "pointwise.keras")
    with caplog.at_level(logging.INFO, logger="featstore"):
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "pointwise.keras")),
        )
    said = [r.getMessage() for r in caplog.records if "cutting at" in r.getMessage()]
    assert len(said) == 1 and "cutting at 'pool', its last layer" in said[0], said
    X, _ = FeatureStore(tmp_path / "s.h5").load("train")
    assert X.shape == (12, 8), X.shape  # the pooled features (the old cut, 'stem', gave rows of (14, 14, 4))


def _fully_convolutional(se: bool):
    """SqueezeNet's head (a 1x1 convolution to the classes, pooled, softmax), with a squeeze-excitation block of Dense
    layers before it or not (attack 50 #1, #2)."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    if se:
        s = L.Dense(4, name="se_expand")(L.Dense(2, name="se_reduce")(L.GlobalAveragePooling2D(name="se_squeeze")(x)))
        x = L.Multiply(name="se_scale")([x, L.Reshape((1, 1, 8))(L.Dense(8, name="se_back")(s))])
    x = L.Conv2D(12, 3, padding="same", name="conv2")(x)
    return keras.Model(
        inp, L.Softmax(name="probs")(L.GlobalAveragePooling2D(name="gap")(L.Conv2D(5, 1, name="cls")(x)))
    )


@pytest.mark.parametrize("se", [True, False], ids=["squeeze-excitation", "plain"])
def test_a_fully_convolutional_classifier_is_cut_before_its_class_convolution(se):
    """50 #1: with a Dense-built squeeze-excitation, the cut went before its last Dense ('se_reduce': 4 values of the
    SE bottleneck, said as "the layer before its last Dense layer"); 50 #2: without, at the softmax's probabilities,
    said as "it does not end in a Dense classifier". Both are cut at the layer feeding the 1x1 class convolution."""
    from featstore.models.heads import classifier_head
    from featstore.models.saved import default_cut

    model = _fully_convolutional(se)
    head, feeder = classifier_head(model)
    assert (head.name, feeder) == ("cls", "conv2")
    assert default_cut(model) == "conv2"


def _heads_51(kind: str):
    """Attack 51's heads: a normalisation on the logits, sigmoid and log-softmax scores, two outputs."""
    import keras

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    conv = L.Conv2D(8, 3, padding="same", name="conv")(inp)
    gap = L.GlobalAveragePooling2D(name="gap")(conv)
    if kind == "dense_bn_softmax":  # Dense(5) -> BN -> softmax: the BN was taken for the head, cut at 'fc'
        return keras.Model(inp, L.Softmax()(L.BatchNormalization(name="bn")(L.Dense(5, name="fc")(gap)))), "gap"
    if kind == "conv_bn_head":  # SqueezeNet's with a BN: cut at 'cls', per-position class maps
        x = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(5, 1, name="cls")(conv)))
        return keras.Model(inp, L.Softmax()(L.GlobalAveragePooling2D()(x))), "conv"
    if kind in ("sigmoid", "log_softmax"):  # multi-label, a PyTorch port: stored as features
        x = L.GlobalAveragePooling2D()(L.Conv2D(5, 1, name="cls")(conv))
        return keras.Model(inp, L.Activation(kind)(x)), "conv"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["dense_bn_softmax", "conv_bn_head", "sigmoid", "log_softmax"])
def test_attack_51_heads_are_cut_before_their_classifier(kind):
    model, cut = _heads_51(kind)
    assert default_cut(model) == cut


def test_a_model_whose_outputs_end_in_two_classifiers_has_no_default_cut(tmp_path):
    """51 #3: outputs [aux, main] (Inception's auxiliary classifier) were cut before the first output's head, the aux
    one's pooled early features, said as "the layer feeding its classifier 'aux_fc'"."""
    import keras

    from featstore.errors import ConfigError
    from featstore.models.saved import refuse_no_default_cut

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    c1 = L.Conv2D(4, 3, name="c1")(inp)
    aux = L.Dense(3, activation="softmax", name="aux_fc")(L.GlobalAveragePooling2D(name="aux_gap")(c1))
    emb = L.GlobalAveragePooling2D(name="main_emb")(L.Conv2D(6, 3, name="c2")(c1))
    model = keras.Model(inp, [aux, L.Dense(3, activation="softmax", name="main_fc")(emb)])
    with pytest.raises(ConfigError) as got:
        refuse_no_default_cut(model, tmp_path / "two.keras")
    line = str(got.value)
    assert line.startswith("two.keras has no default cut: its outputs end in 2 classifiers ('aux_fc' fed by 'aux_gap', "
                           "'main_fc' fed by 'main_emb'). Pass --layer NAME"), line  # fmt: skip


def test_review_heads_nested_classifier_under_own_dense_and_an_l2_embedding(tmp_path):
    """A Dense-built squeeze-excitation in the outer model and a Sequential classifier nested at its end: the nested
    model's probabilities were the default cut, said as "it does not end in a classifier" (nested_head looks only
    where the outer model has no Dense). An L2-normalised embedding (Dense -> UnitNormalization) is features, not cut
    before its Dense."""
    import keras

    from featstore.errors import ConfigError
    from featstore.models.saved import no_default_cut, refuse_no_default_cut

    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    s = L.Dense(4, name="se_fc")(L.GlobalAveragePooling2D()(x))
    x = L.Multiply(name="se_mul")([x, L.Reshape((1, 1, 4))(s)])
    clf = keras.Sequential([L.Conv2D(5, 1), L.GlobalAveragePooling2D(), L.Softmax()], name="classifier")
    model = keras.Model(inp, clf(x))
    with pytest.raises(ConfigError, match=r"its classifier is 'classifier', a model nested in it.*--layer se_mul"):
        refuse_no_default_cut(model, tmp_path / "m.keras")
    assert no_default_cut(model)
    emb = keras.Model(inp, L.UnitNormalization(name="l2")(L.Dense(8, name="emb")(L.GlobalAveragePooling2D()(inp))))
    assert default_cut(emb) == "l2" and not no_default_cut(emb)
