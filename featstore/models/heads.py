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


def classifier_heads(model, depth: int = 0, past_scores: bool = False) -> list[tuple[object, str | None]]:
    """``(the classifier's layer, the layer feeding it)`` of each output of ``model`` that is a classifier's, in order,
    each once. Walking back from an output through layers without weights (any: an activation, dropout, a reshape, a
    ``Rescaling`` for temperature scaling: attack 48 #1), each taking one input, a Dense layer (an ``EinsumDense`` too),
    or a model nested there that gives one (at most 64 deep), is the head. Past class scores (a softmax, sigmoid or
    log-softmax), poolings and normalisations (a BatchNormalization on the logits) are walked through too, and a Dense
    or a convolution is the head (a 1x1 convolution to the classes, SqueezeNet's: its Dense-built squeeze-excitation
    was cut instead, 50 #1; the normalisation itself was taken for the head, 51 #1), and so is a model nested there
    whose own walk, past those scores, finds one (its logits: 52 #1). A pooling fed by class scores (a convolution with
    a softmax, averaged per position) is walked through as if past them; a convolution whose output is one position,
    flattened or reshaped to the output's vector (a Dense in disguise: Keras's MobileNets' classifier, saved without
    its softmax, 52 #2), is the head without scores. A join (``Add``), the input, a pooling (a Dense before it acts
    per position: ConvNeXt's pointwise convolutions, 46 #3) or another layer with weights (a normalised embedding)
    ends the walk: features. A model without a graph of nodes (subclassed) is walked along its layer list.
    ``(scores layer, None)``: class scores with no layer of weights behind them that is a head (a default cut there is
    refused: :func:`featstore.models.saved.refuse_no_default_cut`). ``past_scores``: the walk starts past scores (a
    nested model's, walked from the outer model's softmax)."""
    import keras

    if depth >= 64:
        return []
    outputs = keras.tree.flatten(getattr(getattr(model, "_functional", None) or model, "outputs", None) or [])
    if outputs:
        found = [head for t in outputs if (head := _head_behind(t, depth, past_scores)) is not None]
        return [head for i, head in enumerate(found) if head[0] not in [h[0] for h in found[:i]]]
    listed = [lyr for lyr in getattr(model, "layers", None) or () if not isinstance(lyr, keras.layers.InputLayer)]
    soft, flat = None, False
    for i in range(len(listed) - 1, -1, -1):  # no graph: in order
        feeder = listed[i - 1] if i else None
        one = flat and _one_position(listed[i], getattr(listed[i], "output", None))
        found = _head_is(listed[i], depth, past_scores or soft is not None, feeder, one)
        flat = flat or isinstance(listed[i], (keras.layers.Flatten, keras.layers.Reshape))
        if found == "scores":
            soft = soft or listed[i]
        elif found is not None:
            return [(listed[i], feeder.name if feeder is not None else None)] if found else []
    return [(soft, None)] if soft is not None else []


def _head_behind(tensor, depth: int, past_scores: bool = False) -> tuple[object, str | None] | None:
    """:func:`classifier_heads` walking back from ``tensor`` (bounded: a graph has no cycle, but its size is the
    file's)."""
    import keras

    soft, flat = None, False
    for _ in range(100_000):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None)
        inputs = [] if layer is None else list(layer._inbound_nodes[history.node_index].input_tensors)
        feeder = getattr(getattr(inputs[0], "_keras_history", None), "operation", None) if len(inputs) == 1 else None
        one = flat and _one_position(layer, tensor)
        found = False if layer is None else _head_is(layer, depth, past_scores or soft is not None, feeder, one)
        flat = flat or isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape))
        if found == "scores":
            soft = soft or layer
        elif found is not None:
            return (layer, getattr(feeder, "name", None)) if found else (soft, None) if soft is not None else None
        if len(inputs) != 1:  # a join (Add, Concatenate): no one head behind it
            return (soft, None) if soft is not None else None
        tensor = inputs[0]
    return None


def _one_position(layer, output) -> bool:
    """Whether ``output`` (``layer``'s) holds one position: every spatial side 1 (a convolution after a global pooling
    that keeps its dimensions)."""
    shape = getattr(output, "shape", None)
    if shape is None or len(shape) < 3:
        return False
    first = getattr(layer, "data_format", "channels_last") == "channels_first"
    return all(side == 1 for side in (shape[2:] if first else shape[1:-1]))


def gives_scores(layer, distribution: bool = False) -> bool:
    """Whether ``layer`` makes class scores: a softmax layer, or a layer whose activation is a softmax, sigmoid or
    log-softmax (``distribution``: a softmax or log-softmax only, scores over the classes that sum to one)."""
    import keras

    if layer is None:
        return False
    kinds = ("softmax", "log_softmax") if distribution else SCORES
    return (
        isinstance(layer, keras.layers.Softmax) or getattr(getattr(layer, "activation", None), "__name__", "") in kinds
    )


def dense_layers() -> tuple[type, ...]:
    """The layer classes that are a Dense head: ``Dense``, and ``EinsumDense`` (the same product, another spelling)."""
    import keras

    return keras.layers.Dense, keras.layers.EinsumDense


def _head_is(
    layer, depth: int, past_scores: bool = False, feeder=None, one_position: bool = False
) -> bool | str | None:
    """True: ``layer`` is (or gives) a classifier's output; False: the input, a pooling, a layer with weights that is
    not one; "scores": a weightless softmax, sigmoid or log-softmax to walk through; None: a weightless layer to walk
    through (``past_scores``: a pooling or a normalisation too, a fully convolutional head's; a pooling whose
    ``feeder`` gives scores too). ``one_position``: the layer's output is one position flattened to the output's
    vector (a convolution there is a Dense)."""
    import keras

    pools = tuple(v for k, v in vars(keras.layers).items() if "Pool" in k and isinstance(v, type))
    if isinstance(layer, keras.layers.InputLayer):
        return False
    if isinstance(layer, pools):  # past a distribution (softmax): a sigmoid before a pooling is a gate (55 #4)
        return None if past_scores or gives_scores(feeder, distribution=True) else False
    if hasattr(layer, "layers") and classifier_heads(layer, depth + 1, past_scores):
        return True
    scores = gives_scores(layer)
    if layer.weights:
        convs = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
        convs += (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
        linear = getattr(getattr(layer, "activation", None), "__name__", "linear") == "linear"  # a ReLU'd one: features
        if (
            isinstance(layer, dense_layers())
            or isinstance(layer, convs)
            and (scores or past_scores or one_position and linear)
        ):
            return True
        return None if past_scores and "Normalization" in type(layer).__name__ else False
    if "Normalization" in type(layer).__name__ and not past_scores:  # an L2-normalised embedding: features (review)
        return False
    return "scores" if scores else None
