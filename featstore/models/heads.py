"""Whether a model gives a classifier's output, and which layer is its classifier: walked back from the model's
output in its graph (:func:`classifier_head`). A saved model's default cut is the layer feeding that classifier
(:func:`featstore.models.saved.default_cut`); a model nested in another that gives one is named in the cut's lines.

>>> x = keras.Input((8,))                                              # doctest: +SKIP
>>> m = keras.Model(x, keras.layers.Dense(3, name="fc")(keras.layers.Dense(4, name="emb")(x)))  # doctest: +SKIP
>>> head, feeder = classifier_head(m); head.name, feeder              # doctest: +SKIP
('fc', 'emb')
"""

from __future__ import annotations


def ends_in_dense(model, depth: int = 0) -> bool:
    """Whether ``model`` gives a classifier's output (:func:`classifier_head` finds one)."""
    return classifier_head(model, depth) is not None


def classifier_head(model, depth: int = 0) -> tuple[object, str | None] | None:
    """``(the classifier's layer, the layer feeding it)`` where ``model`` gives a classifier's output, else None.
    Walking back from its output through layers without weights (any: an activation, dropout, a reshape, a
    ``Rescaling`` for temperature scaling: attack 48 #1), each taking one input: a Dense layer, or a model nested there
    that gives one (at most 64 deep), is the head; past a softmax, poolings are walked through too and the first layer
    with weights is the head, whatever it is (a 1x1 convolution to the classes, SqueezeNet's: its Dense-built
    squeeze-excitation was cut instead, 50 #1). A join (``Add``), the input, a pooling (a Dense before it acts per
    position: ConvNeXt's pointwise convolutions, 46 #3) or another layer with weights ends the walk: features. A model
    without a graph of nodes (subclassed) is walked along its layer list. ``(softmax, None)``: a softmax with no layer
    of weights behind it."""
    import keras

    if depth >= 64:
        return None
    outputs = keras.tree.flatten(getattr(getattr(model, "_functional", None) or model, "outputs", None) or [])
    if outputs:  # several outputs: a classifier where any of them is one
        return next((found for t in outputs if (found := _head_behind(t, depth)) is not None), None)
    listed = [lyr for lyr in getattr(model, "layers", None) or () if not isinstance(lyr, keras.layers.InputLayer)]
    soft = None
    for i in range(len(listed) - 1, -1, -1):  # no graph: in order
        found = _head_is(listed[i], depth, soft is not None)
        if found == "softmax":
            soft = soft or listed[i]
        elif found is not None:
            return (listed[i], listed[i - 1].name if i else None) if found else None
    return (soft, None) if soft is not None else None


def _head_behind(tensor, depth: int) -> tuple[object, str | None] | None:
    """:func:`classifier_head` walking back from ``tensor`` (bounded: a graph has no cycle, but its size is the file's)."""
    soft = None
    for _ in range(100_000):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None)
        found = False if layer is None else _head_is(layer, depth, soft is not None)
        inputs = [] if layer is None else list(layer._inbound_nodes[history.node_index].input_tensors)
        feeder = getattr(getattr(inputs[0], "_keras_history", None), "operation", None) if len(inputs) == 1 else None
        if found == "softmax":
            soft = soft or layer
        elif found is not None:
            return (layer, getattr(feeder, "name", None)) if found else (soft, None) if soft is not None else None
        if len(inputs) != 1:  # a join (Add, Concatenate): no one head behind it
            return (soft, None) if soft is not None else None
        tensor = inputs[0]
    return None


def _head_is(layer, depth: int, past_softmax: bool = False) -> bool | str | None:
    """True: ``layer`` is (or gives) a classifier's output; False: a layer with weights that is not one, the input, a
    pooling; "softmax": a weightless softmax to walk through; None: a weightless layer to walk through (a pooling too,
    ``past_softmax``: a fully convolutional head's)."""
    import keras

    pools = tuple(v for k, v in vars(keras.layers).items() if "Pool" in k and isinstance(v, type))
    if isinstance(layer, keras.layers.InputLayer):
        return False
    if isinstance(layer, pools):
        return None if past_softmax else False
    soft = isinstance(layer, keras.layers.Softmax) or getattr(layer, "activation", None) is keras.activations.softmax
    if hasattr(layer, "layers") and ends_in_dense(layer, depth + 1):
        return True
    if layer.weights:
        return soft or past_softmax or isinstance(layer, keras.layers.Dense)
    return "softmax" if soft else None
