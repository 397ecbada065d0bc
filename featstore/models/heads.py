"""Whether a model gives a classifier's output, and which layer is its classifier: walked back from the model's
output in its graph (:func:`classifier_head`). A saved model's default cut is the layer feeding that classifier
(:func:`featstore.models.saved.default_cut`); a model nested in another that gives one is named in the cut's lines.

>>> x = keras.Input((8,))                                              # doctest: +SKIP
>>> m = keras.Model(x, keras.layers.Dense(3, name="fc")(keras.layers.Dense(4, name="emb")(x)))  # doctest: +SKIP
>>> head, feeder = classifier_head(m); head.name, feeder              # doctest: +SKIP
('fc', 'emb')
"""

from __future__ import annotations

SCORES = ("softmax", "sigmoid", "log_softmax")  # activations that make class scores of a classifier's output


def ends_in_dense(model, depth: int = 0) -> bool:
    """Whether ``model`` gives a classifier's output (:func:`classifier_heads` finds one)."""
    return bool(classifier_heads(model, depth))


def classifier_head(model, depth: int = 0) -> tuple[object, str | None] | None:
    """The first of :func:`classifier_heads`, or None."""
    return next(iter(classifier_heads(model, depth)), None)


def classifier_heads(model, depth: int = 0) -> list[tuple[object, str | None]]:
    """``(the classifier's layer, the layer feeding it)`` of each output of ``model`` that is a classifier's, in order,
    each once. Walking back from an output through layers without weights (any: an activation, dropout, a reshape, a
    ``Rescaling`` for temperature scaling: attack 48 #1), each taking one input, a Dense layer, or a model nested there
    that gives one (at most 64 deep), is the head. Past class scores (a softmax, sigmoid or log-softmax), poolings and
    normalisations (a BatchNormalization on the logits) are walked through too, and a Dense or a convolution is the
    head (a 1x1 convolution to the classes, SqueezeNet's: its Dense-built squeeze-excitation was cut instead, 50 #1;
    the normalisation itself was taken for the head, 51 #1). A join (``Add``), the input, a pooling (a Dense before it
    acts per position: ConvNeXt's pointwise convolutions, 46 #3) or another layer with weights (a normalised
    embedding) ends the walk: features. A model without a graph of nodes (subclassed) is walked along its layer list.
    ``(scores layer, None)``: class scores with no layer of weights behind them."""
    import keras

    if depth >= 64:
        return []
    outputs = keras.tree.flatten(getattr(getattr(model, "_functional", None) or model, "outputs", None) or [])
    if outputs:
        found = [head for t in outputs if (head := _head_behind(t, depth)) is not None]
        return [head for i, head in enumerate(found) if head[0] not in [h[0] for h in found[:i]]]
    listed = [lyr for lyr in getattr(model, "layers", None) or () if not isinstance(lyr, keras.layers.InputLayer)]
    soft = None
    for i in range(len(listed) - 1, -1, -1):  # no graph: in order
        found = _head_is(listed[i], depth, soft is not None)
        if found == "scores":
            soft = soft or listed[i]
        elif found is not None:
            return [(listed[i], listed[i - 1].name if i else None)] if found else []
    return [(soft, None)] if soft is not None else []


def _head_behind(tensor, depth: int) -> tuple[object, str | None] | None:
    """:func:`classifier_heads` walking back from ``tensor`` (bounded: a graph has no cycle, but its size is the
    file's)."""
    soft = None
    for _ in range(100_000):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None)
        found = False if layer is None else _head_is(layer, depth, soft is not None)
        inputs = [] if layer is None else list(layer._inbound_nodes[history.node_index].input_tensors)
        feeder = getattr(getattr(inputs[0], "_keras_history", None), "operation", None) if len(inputs) == 1 else None
        if found == "scores":
            soft = soft or layer
        elif found is not None:
            return (layer, getattr(feeder, "name", None)) if found else (soft, None) if soft is not None else None
        if len(inputs) != 1:  # a join (Add, Concatenate): no one head behind it
            return (soft, None) if soft is not None else None
        tensor = inputs[0]
    return None


def _head_is(layer, depth: int, past_scores: bool = False) -> bool | str | None:
    """True: ``layer`` is (or gives) a classifier's output; False: the input, a pooling, a layer with weights that is
    not one; "scores": a weightless softmax, sigmoid or log-softmax to walk through; None: a weightless layer to walk
    through (``past_scores``: a pooling or a normalisation too, a fully convolutional head's)."""
    import keras

    pools = tuple(v for k, v in vars(keras.layers).items() if "Pool" in k and isinstance(v, type))
    if isinstance(layer, keras.layers.InputLayer):
        return False
    if isinstance(layer, pools):
        return None if past_scores else False
    if hasattr(layer, "layers") and ends_in_dense(layer, depth + 1):
        return True
    scores = (
        isinstance(layer, keras.layers.Softmax) or getattr(getattr(layer, "activation", None), "__name__", "") in SCORES
    )
    if layer.weights:
        convolution = isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))
        if isinstance(layer, keras.layers.Dense) or convolution and (scores or past_scores):
            return True
        return None if past_scores and "Normalization" in type(layer).__name__ else False
    if "Normalization" in type(layer).__name__ and not past_scores:  # an L2-normalised embedding: features (review)
        return False
    return "scores" if scores else None
