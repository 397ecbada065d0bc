"""The tensors a built-in Keras layer makes inside it for one image, none of them its output, each with what it is.

:class:`featstore.models.activations._Walk` measures every layer's output at the concrete shapes of one image; a layer
whose output is small may still allocate a huge temporary inside its ``call``. Attacks found them one layer at a time
(attention scores, attack 39 #1; a MelSpectrogram's frames and a CategoryEncoding's one-hot, attack 43 #1, #5), so
every layer class featstore allows (:data:`featstore.models.keras_layers.WEIGHTLESS` and the layers with weights it
sizes) was read (Keras 3 on TensorFlow; extraction calls a model with ``training=False``, where a random augmentation
is the identity, and fine-tuning trains it) for what it makes beyond a small constant times its input and output, or
grows with a config value (audit fixBA, in ``docs/reliability.md``). What is counted here:

- attention (:func:`attention_scores`): scores, projections, a grouped-query layer's keys repeated over its heads;
- ``MelSpectrogram``: its framed signal and spectrum; a categorical encoding's one-hot over several axes of values;
- ``ContrastLimitedAdaptiveHistogramEqualization``: a one-hot of every pixel's value (256 per pixel and channel);
- ``Resizing``: its image padded to the output's aspect ratio, and the image resized along its height only (an
  antialiased or Lanczos resize: TensorFlow's ``ScaleAndTranslate`` keeps output height x input width);
- adaptive pooling: the input pooled along its first axes only (pooled axis by axis, at the output's size);
- when training (fine-tuning trains a saved model: its random layers act): ``Equalization``'s histogram of ``bins``,
  ``RandomGaussianBlur``'s kernel of ``kernel_size`` squared per channel.

An RNN unrolled over many steps makes no large tensor but a graph of its cell once per step: :func:`unrolled`.
"""

from __future__ import annotations

import math

# cell copies of an RNN with unroll=True, time steps x cells (an LSTM(4): 42 s and 350 MB to trace 1,024 steps; 4,096:
# 154 s, 2 GB)
MAX_UNROLLED_STEPS = 1024


def shape_of(tensor) -> tuple:
    """A symbolic tensor's shape without the batch axis (None where unknown)."""
    return tuple(None if d is None else int(d) for d in tuple(getattr(tensor, "shape", ()) or ())[1:])


def made_inside(op, args: tuple, kwargs: dict, outputs: list) -> list[tuple[tuple[int, ...], str]]:
    """The tensors the built-in layer ``op`` makes inside it for one image, called on ``args``/``kwargs`` (its
    call's, filled in) with ``outputs``. A 10-parameter model's MelSpectrogram (fft 16,384, stride 1, over a 192x192x3
    image flattened) made 6.8 GiB per image twice, a CategoryEncoding(2**18, "multi_hot") over 16 x 768 values 12
    GiB, while their outputs were 1.7 and 16 MB (attack 43 #1, #5). Empty for other layers and unknown sizes (an
    unknown size is refused as its input's: see ``_Walk``)."""
    signal = shape_of(args[0] if args else kwargs.get("inputs"))
    if not signal or None in signal:
        return attention_scores(op, args, kwargs)
    kind = type(op).__name__
    made = [*_image(op, kind, signal), *_signal(op, kind, signal, outputs)]
    return made + attention_scores(op, args, kwargs)


def _signal(op, kind: str, signal: tuple, outputs: list) -> list[tuple[tuple[int, ...], str]]:
    """An audio layer's frames; a categorical encoding's one-hot over several axes (TensorFlow's bincount takes one:
    Keras one-hot encodes every value, then reduces)."""
    if kind == "MelSpectrogram":  # frames x fft_length (every frame padded to it), and their complex spectrum
        stride, fft = int(op.sequence_stride), int(op.fft_length)
        frames = math.prod(signal[:-1]) * ((signal[-1] + stride + 1) // stride)  # (Keras's own count of its frames)
        return [((frames, fft), "framed signal"), ((frames, fft // 2 + 1, 2), "spectrum (real and imaginary parts)")]
    expands = getattr(op, "output_mode", None) in ("multi_hot", "count", "tf_idf") and len(signal) > 1
    if expands and outputs and shape_of(outputs[0])[-1:] != (None,):
        return [((*signal, *shape_of(outputs[0])[-1:]), "one-hot encoding")]
    return []


def _image(op, kind: str, signal: tuple) -> list[tuple[tuple[int, ...], str]]:
    """What an image layer makes beyond its output: CLAHE's one-hot histograms, ``Resizing``'s padded and half-resized
    image, adaptive pooling's input pooled along its first axes; when training, Equalization's histogram and
    RandomGaussianBlur's kernel. Empty for other layers."""
    first = getattr(op, "data_format", "channels_last") == "channels_first"
    sides, channels = (signal[1:], signal[0]) if first else (signal[:-1], signal[-1])
    if kind == "ContrastLimitedAdaptiveHistogramEqualization" and len(sides) == 2:
        grid = [max(1, int(g)) for g in op.tile_grid_size]  # each tile's pixels one-hot encoded over 256 values
        tiles = [-(-s // g) for s, g in zip(sides, grid)]
        return [((*grid, channels, tiles[0] * tiles[1], 256), "one-hot of every pixel's value (tile histograms)")]
    if kind == "Resizing" and len(sides) == 2:
        return _resized(op, sides, channels)
    if kind == "Equalization":  # when training (fine-tuning): a histogram, its cdf and a lookup table of `bins` each
        return [((max(1, int(op.bins)),), "histogram of its bins (when training: fine-tuning)")]
    if kind == "RandomGaussianBlur":  # when training: a kernel of kernel_size per channel, whatever the image
        return [((*(max(1, int(k)) for k in op.kernel_size), channels), "Gaussian kernel (when training: fine-tuning)")]
    if kind.startswith(("AdaptiveAveragePooling", "AdaptiveMaxPooling")):
        out = op.output_size if isinstance(op.output_size, (tuple, list)) else (op.output_size,) * len(sides)
        return _pooled(list(sides), [int(o) for o in out], channels)
    return []


def _resized(op, sides: tuple, channels: int) -> list[tuple[tuple[int, ...], str]]:
    """``Resizing``: ``pad_to_aspect_ratio`` pads the image to the output's aspect ratio before resizing (a 1 x
    100,000 output pads a 224 x 224 image to 224 x 22.4 million); an antialiased (bilinear, bicubic) or Lanczos resize
    (TensorFlow's ``ScaleAndTranslate``) first resizes along the height only: output height x input width."""
    (h, w), (th, tw) = sides, (max(1, int(op.height)), max(1, int(op.width)))
    made = []
    if getattr(op, "pad_to_aspect_ratio", False):
        h, w = max(h, int(w * th / tw)), max(w, int(h * tw / th))
        made.append(((h, w, channels), "image padded to the output's aspect ratio"))
    elif getattr(op, "crop_to_aspect_ratio", False):
        h, w = max(1, min(h, int(w * th / tw))), max(1, min(w, int(h * tw / th)))
    if op.interpolation in ("lanczos3", "lanczos5") or op.antialias and op.interpolation in ("bilinear", "bicubic"):
        made.append(((th, w, channels), "image resized along its height only (antialiased resize)"))
    return made


def _pooled(sides: list[int], out: list[int], channels: int) -> list[tuple[tuple[int, ...], str]]:
    """Adaptive pooling (TensorFlow): axis by axis, windows of two sizes pooled along the axis and concatenated, then
    gathered at the output's size; the later axes keep the input's sides until pooled (an output of 2**20 x 1 from a
    224 x 224 image makes 2**20 x 224 per channel)."""
    made = []
    for k, (n, o) in enumerate(zip(sides, out)):
        small = -(-n // max(1, o))
        both = max(0, n - small + 1) + max(0, n - small)  # the small and the big windows' pools, concatenated
        made.append(((*out[:k], both, *sides[k + 1 :], channels), "input pooled along its first axes"))
        made.append(((*out[: k + 1], *sides[k + 1 :], channels), "input pooled along its first axes"))
    return made


def attention_scores(op, args: tuple, kwargs: dict) -> list[tuple[tuple[int, ...], str]]:
    """The tensors an attention layer makes inside it for one image, none of them a layer's output, each with what it
    is: its scores (heads x query tokens x key tokens; x the features where it adds query and key before summing them:
    ``AdditiveAttention``, ``Attention(score_mode="concat")``) and a multi-head layer's projections (tokens x heads x
    key or value size; a grouped-query layer repeats its keys and values over the query heads), from the concrete
    shapes of its call's query and key, taken by name (``args``, ``kwargs``: the call's, filled in). A 2 MB model's
    MultiHeadAttention over 4,096 tokens with 256 heads took 16 GiB per image while every output was under 1 MiB
    (attack 39 #1); the key is never the last input (an ``attention_mask=`` is: 16 GiB counted 256 MiB), nor the sum's
    features left out (16 GiB counted 64 MiB), nor the projections (4 GiB each uncounted) (attack 40 #8, #9). Empty
    for other layers."""
    kind = type(op).__name__
    if kind in ("MultiHeadAttention", "GroupedQueryAttention"):
        named = dict(zip(("query", "value", "key"), args)) | kwargs
        query, key = named.get("query"), named.get("key")
        key = named.get("value") if key is None else key
    elif kind in ("Attention", "AdditiveAttention"):
        given = list(args[0] if args else kwargs.get("inputs") or ())
        query, key = (given[0], given[2] if len(given) > 2 else given[1]) if len(given) > 1 else (None, None)
    else:
        return []
    shapes = [shape_of(t) for t in (query, key)]
    if any(len(sh) < 2 or None in sh for sh in shapes):
        return []  # an unknown token count is refused as its input's (see _Walk)
    tq, tk = (math.prod(shapes[0][:-1]), math.prod(shapes[1][:-1]))  # tokens: every axis but the features'
    if kind == "AdditiveAttention" or getattr(op, "score_mode", "dot") == "concat":  # tanh(q[:, None] + k[None])
        return [((tq, tk, max(shapes[0][-1], shapes[1][-1])), "attention scores")]
    if kind in ("Attention", "AdditiveAttention"):
        return [((1, tq, tk), "attention scores")]
    if kind == "GroupedQueryAttention":
        heads = kv_heads = int(op.num_query_heads)  # Keras repeats each key and value head over the query heads
        qk = v = int(op.head_dim)
    else:
        heads = kv_heads = int(op.num_heads)
        qk, v = int(op.key_dim), int(op.value_dim or op.key_dim)
    scores = (heads, tq, tk)
    axes = getattr(op, "_attention_axes", None) if kind == "MultiHeadAttention" else None
    if axes is not None:  # axial attention: attended along ``attention_axes`` only, once per position of the others
        rank = len(shapes[0]) + 1  # (Keras's own reading of a negative axis: the input's rank with the batch axis)
        along = {a if a >= 0 else rank + a for a in axes}  # (43 #7: counted as full attention, 8 GiB for 64 MiB)
        dims = [(i + 1 in along, q, k) for i, (q, k) in enumerate(zip(shapes[0][:-1], shapes[1][:-1]))]
        scores = (
            math.prod(q for attended, q, _ in dims if not attended) * heads,
            math.prod(q for attended, q, _ in dims if attended),
            math.prod(k for attended, _, k in dims if attended),
        )
    return [
        (scores, "attention scores"),
        ((tq, heads, qk), "query projections"),
        ((tk, kv_heads, max(qk, v)), "key or value projections"),
        ((tq, heads, v), "attention outputs before their projection"),
    ]


def unrolled(op, given: list) -> int:
    """The cell copies TensorFlow traces for ``op`` (an RNN, ConvLSTM or a Bidirectional of them with
    ``unroll=True``) at its input's shape: time steps x cells (a ``StackedRNNCells`` holds several: 16 LSTM cells over
    256 steps took 35 s and 1.2 GB, counted as 256: attack 44 #8) x directions; 0 where it does not unroll."""
    layers = [getattr(op, "forward_layer", None), getattr(op, "backward_layer", None)]
    layers = [op] if type(op).__name__ != "Bidirectional" else [lyr for lyr in layers if lyr is not None]
    if not given or len(given[0].shape) < 3 or not any(getattr(lyr, "unroll", False) is True for lyr in layers):
        return 0
    steps = given[0].shape[1]
    cells = sum(len(getattr(getattr(lyr, "cell", None), "cells", None) or [None]) for lyr in layers)
    return int(steps) * cells if steps is not None else 0
