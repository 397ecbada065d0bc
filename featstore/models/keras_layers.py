"""What one Keras layer entry of a ``config.json`` builds (a lower bound of its parameters) and the shape it puts out.

An allow-list: :func:`term` knows every built-in ``keras.layers`` class (and ConvNeXt's and Inception-ResNet's own
layers, featstore's own TokenPool); a KerasHub layer (a fine-tuned ViT's) is bounded as KerasHub presets are
(:func:`hub_count`); any other class (a custom layer, ``TFSMLayer``, ``JaxLayer``...) raises :class:`Unbounded`,
whose message names the class and the fix, since what it builds cannot be sized before Keras builds it. The class is the one
Keras will build: a ``registered_name`` (looked up first by Keras) or a ``module`` outside Keras makes it unknown.
Every size is clamped to :data:`CAP` as it is read and every product is capped, so no config makes Python's integers
grow; a shape of more than :data:`MAX_RANK` dimensions is refused.
"""

from __future__ import annotations

import math
import re

CAP = 1 << 63  # any size or product over this counts as this (a float32 tensor of it is 32 EiB)
MAX_RANK = 8  # dimensions of a shape (Keras's layers take at most 5; ConvLSTM3D's input 6)
# Layers (and models holding them) that build no variable of their own, or only a fixed-size one (a random layer's
# seed state); preprocessing layers whose tables are the config's own lists (bounded by its 16 MiB)
WEIGHTLESS = frozenset(
    "Functional Sequential Model InputLayer Flatten Reshape Permute RepeatVector Activation ReLU LeakyReLU ELU Softmax "
    "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout Add Subtract "
    "Multiply Average Maximum Minimum Concatenate Dot Rescaling Resizing CenterCrop ZeroPadding1D ZeroPadding2D "
    "ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D UpSampling3D MaxPooling1D MaxPooling2D "
    "MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D "
    "GlobalMaxPooling3D GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D Identity Masking "
    "ActivityRegularization Lambda TimeDistributed Bidirectional UnitNormalization StackedRNNCells Pipeline "
    "AdaptiveAveragePooling1D AdaptiveAveragePooling2D AdaptiveAveragePooling3D AdaptiveMaxPooling1D "
    "AdaptiveMaxPooling2D AdaptiveMaxPooling3D CategoryEncoding Discretization Hashing HashedCrossing IntegerLookup "
    "StringLookup TextVectorization MelSpectrogram MaxNumBoundingBoxes AugMix AutoContrast CutMix Equalization MixUp "
    "RandAugment RandomBrightness RandomColorDegeneration RandomColorJitter RandomContrast RandomCrop "
    "RandomElasticTransform RandomErasing RandomFlip RandomGaussianBlur RandomGrayscale RandomHue RandomInvert "
    "RandomPerspective RandomPosterization RandomRotation RandomSaturation RandomSharpness RandomShear "
    "RandomTranslation RandomZoom Solarization ContrastLimitedAdaptiveHistogramEqualization "
    "keras.src.applications.convnext.StochasticDepth keras.src.applications.inception_resnet_v2.CustomScaleLayer "
    "featstore>TokenPool".split()
)
# Augmentations an AugMix or RandAugment layer chains per image (its config's keys, with Keras's defaults): each is
# built into the graph a fine-tuning trains, as many image-sized tensors (audit fixBA; Keras's defaults chain 9 and 2)
CHAINS = {"AugMix": (("num_chains", 3), ("chain_depth", 3)), "RandAugment": (("num_ops", 2),)}
MAX_CHAINED = 64
NORMALIZATION = frozenset("BatchNormalization LayerNormalization GroupNormalization RMSNormalization".split())
# Layers whose output has their input's shape
SAME_SHAPE = frozenset(
    "Activation ReLU LeakyReLU ELU Softmax PReLU Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D "
    "GaussianNoise GaussianDropout AlphaDropout Identity Masking ActivityRegularization Rescaling UnitNormalization "
    "Normalization BatchNormalization LayerNormalization GroupNormalization RMSNormalization Add Subtract Multiply "
    "Average Maximum Minimum keras.src.applications.convnext.LayerScale "
    "keras.src.applications.convnext.StochasticDepth".split()
)
ALIASES = {"Convolution" + s: "Conv" + s for s in ("1D", "2D", "3D", "1DTranspose", "2DTranspose", "3DTranspose")}
ALIASES |= {"SeparableConvolution1D": "SeparableConv1D", "SeparableConvolution2D": "SeparableConv2D"}


class Unbounded(ValueError):
    """A layer entry whose size cannot be bounded (an unknown class, a shape of too many dimensions)."""


def kind_of(layer: dict) -> str:
    """The class Keras builds for a layer entry: its ``class_name`` when Keras resolves it among its own layers (no
    ``registered_name``, ``module`` ``keras``/``keras.layers`` or none), else ``module.class_name`` or
    ``registered_name`` (Keras looks it up first; KerasHub's layers are found by it once KerasHub is imported)."""
    name, module, registered = str(layer.get("class_name"))[:80], layer.get("module"), layer.get("registered_name")
    if registered not in (None, ""):
        return str(registered)[:80]
    if module in (None, "keras", "keras.layers", "keras.models") or str(module).startswith("keras.src.layers."):
        return ALIASES.get(name, name)
    return f"{str(module)[:80]}.{name}"


def size(v) -> int:
    """A size from a config, clamped to [0, CAP]: a number as Keras casts it (int()), a list as the (capped) product
    of its entries; 0 otherwise. A list longer than MAX_RANK is refused (Unbounded)."""
    if isinstance(v, bool) or v is None:
        return 0
    if isinstance(v, int):
        return min(max(0, v), CAP)
    if isinstance(v, float):
        return min(max(0, int(v)), CAP) if math.isfinite(v) and abs(v) < CAP else CAP
    if isinstance(v, list) and v and not nested(v):
        return mul(*(max(1, size(x)) for x in rank_checked(v)))
    return 0


def mul(*xs: int) -> int:
    """The product of sizes, capped at CAP after each step (the integers stay under 2**127)."""
    out = 1
    for x in xs:
        out = min(CAP, out * x)
    return out


def rank_checked(shape: list) -> list:
    if len(shape) > MAX_RANK:
        raise Unbounded(f"a shape or kernel size of {len(shape):,} dimensions (Keras's layers take at most {MAX_RANK})")
    return shape


def nested(v: list) -> bool:
    return any(isinstance(x, (list, dict)) for x in v)


def dims(shape: list | None) -> list[int | None] | None:
    """A shape's entries as sizes (None where unknown), or None for no shape."""
    if not isinstance(shape, list) or not shape or nested(shape):
        return None
    return [size(d) or None for d in rank_checked(shape)]


def axes_size(axis, shape: list | None, n: int) -> int:
    """The size of a layer's ``axis`` (an int or a list) in its input ``shape``: ``n`` for the last axis (or when the
    shape is unknown)."""
    total = 1
    for a in axis if isinstance(axis, list) else [axis]:
        if not shape or not isinstance(a, int) or a in (-1, len(shape) - 1) or not -len(shape) <= a < len(shape):
            total = mul(total, n)
        else:
            total = mul(total, max(1, size(shape[a])))
    return total


def quantized_halves(c: dict) -> bool:
    """Whether a layer's dtype policy packs two weights into each stored int8 (Keras's int4 quantization)."""
    dtype = c.get("dtype")
    cfg = dtype.get("config") if isinstance(dtype, dict) else None
    cfg = cfg if isinstance(cfg, dict) else {}  # any JSON value in a crafted file (a string was a traceback)
    text = " ".join(str(x) for x in ((dtype or {}).get("class_name"), cfg.get("mode"), cfg.get("name")))
    return "int4" in text.lower() if isinstance(dtype, dict) else "int4" in str(dtype).lower()


def term(layer: dict, shape: list | None, others: list, widest: int) -> tuple[int, str]:
    """A lower bound of the parameters one layer entry builds from its input ``shape`` (batch first; ``others``: the
    shapes of its further inputs, an attention layer's value and key), and a description; Unbounded for a class whose
    size is not known here."""
    kind, c = kind_of(layer), layer["config"]
    if kind in CHAINS:
        chained = mul(*(size(c.get(k, d)) for k, d in CHAINS[kind]))
        if chained > MAX_CHAINED:
            keys = " x ".join(k for k, _ in CHAINS[kind])
            raise Unbounded(
                f"layer {str(c.get('name', '?'))[:60]!r} chains {chained:,} augmentations per image ({keys}), over "
                f"{MAX_CHAINED}: TensorFlow builds each into the graph it trains (Keras's defaults: 9 and 2); save it "
                f"with fewer"
            )
    if kind in ("StringLookup", "IntegerLookup", "TextVectorization") and c.get("pad_to_max_tokens"):
        tokens = size(c.get("max_tokens"))  # tf_idf weights padded to max_tokens at construction (float64, then a copy)
        return mul(3, tokens) if c.get("output_mode") == "tf_idf" else 0, f"{kind} max_tokens {tokens}"
    if kind in WEIGHTLESS:
        return 0, kind
    name = str(c.get("name", "?"))[:60]
    conv = kind.startswith(("Conv", "SeparableConv", "DepthwiseConv")) and not kind.startswith("ConvLSTM")
    channel = 1 if conv and c.get("data_format") == "channels_first" and shape and len(shape) > 2 else -1
    if kind.startswith("ConvLSTM") and c.get("data_format") == "channels_first" and shape and len(shape) > 3:
        channel = 2  # (batch, time, channels, *sides)
    n = (size(shape[channel]) if shape else 0) or widest  # the axis its weights span: channels, or the last
    widths = [size(o[-1]) if o else 0 for o in others]
    count, what = _count(kind, c, shape, widths, n)
    if count is None and _from_hub(layer):
        count, what = hub_count(c, name)
    if count is None:  # not sized here: its variables are counted as Keras makes them (models.build_guard)
        return 0, f"{kind} layer {name} (not sized before the build)"
    if quantized_halves(c) and kind in ("Dense", "EinsumDense", "Embedding", "ReversibleEmbedding"):
        count //= 2  # two int4 weights in each stored int8 (Keras's model.quantize("int4"))
    return count, f"{kind} layer {name} ({what}, input {n})"


def _count(kind: str, c: dict, shape, others: list[int], n: int) -> tuple[int | None, str]:
    units, filters = size(c.get("units")), size(c.get("filters"))
    if kind == "Dense":
        return mul(n, units) + (units if c.get("use_bias", True) is not False else 0), f"units {units}"
    if kind == "EinsumDense":
        return einsum_kernel(c, shape, n), f"equation {str(c.get('equation'))[:40]!r}"
    if kind.startswith("ConvLSTM"):
        kernel = size(c.get("kernel_size")) or 1
        kernels, what = mul(4, kernel, n + filters, filters), f"kernel {kernel}, filters {filters}"  # four gates
        batch = size((shape or [0])[0]) if c.get("stateful") else 0  # its states: 2 of (batch, *output sides, filters)
        states = mul(2, batch, *conv_sides(c, shape), filters) if batch else 0
        return kernels + states, what + (f", stateful batch {batch}" if batch else "")
    if kind.startswith(("Conv", "SeparableConv", "DepthwiseConv")):
        kernel, groups = size(c.get("kernel_size")) or 1, max(1, size(c.get("groups")))
        depth = size(c.get("depth_multiplier")) or 1
        if kind.startswith("Depthwise"):
            return mul(kernel, n, depth), f"kernel {kernel}, depth {depth}"
        if kind.startswith("Separable"):
            return mul(kernel, n, depth) + mul(n, depth, filters), f"kernel {kernel}, filters {filters}"
        return mul(kernel, n // groups or 1, filters), f"kernel {kernel}, filters {filters}"
    if kind in ("Embedding", "ReversibleEmbedding"):
        count = mul(size(c.get("input_dim")), size(c.get("output_dim")))
        untied = kind == "ReversibleEmbedding" and c.get("tie_weights") is False
        return count * (1 + untied), f"input_dim {size(c.get('input_dim'))}, output_dim {size(c.get('output_dim'))}"
    if kind in ("LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell"):
        gates = 4 if kind.startswith("LSTM") else 3 if kind.startswith("GRU") else 1
        batch = size((shape or [0])[0]) if c.get("stateful") else 0  # a stateful RNN's states: (batch, units) each
        states = mul(2 if kind.startswith("LSTM") else 1, batch, units)
        return mul(gates, units, n + units) + states, f"units {units}" + (f", stateful batch {batch}" if batch else "")
    if kind == "RNN":  # the wrapper's own size: a stateful one's states, (batch, each state size of its cell)
        batch = size((shape or [0])[0]) if c.get("stateful") else 0
        per = cell_states(c.get("cell")) if batch else 0
        return mul(batch, per), f"stateful batch {batch}, states {per} a row" if batch else "no weights of its own"
    if kind in ("MultiHeadAttention", "GroupQueryAttention"):
        return attention(c, n, others)
    if kind in NORMALIZATION:  # weights over its axis: gamma and beta unless off; BatchNormalization's 2 statistics
        axes = axes_size(c.get("axis", -1), shape, n)
        if kind == "RMSNormalization":
            return axes, f"axis size {axes}"
        count = 2 * (kind == "BatchNormalization") + (c.get("center") is not False) + (c.get("scale") is not False)
        return count * axes, f"axis size {axes}"
    if kind == "Normalization":  # mean and variance over its axes: adapted, or the config's broadcast to them
        axes, mean = axes_size(c.get("axis", -1), shape, n), c.get("mean")
        given = 0 if mean is None else len(mean) if isinstance(mean, list) else 1  # values the config holds itself
        return 2 * max(0, axes - given), f"axis size {axes}"
    if kind == "PReLU":  # alpha over every input axis but the batch's and the shared ones
        shared = c.get("shared_axes") if isinstance(c.get("shared_axes"), list) else [c.get("shared_axes")]
        return mul(*(1 if i in shared else size(d) or 1 for i, d in enumerate(shape or []) if i)), "alpha"
    if kind == "keras.src.applications.convnext.LayerScale":
        return size(c.get("projection_dim")), "gamma"
    if kind in ("Attention", "AdditiveAttention"):
        scale = (n if kind == "AdditiveAttention" else 1) if c.get("use_scale") else 0
        return scale + (c.get("score_mode") == "concat"), "scale"
    if kind == "SpectralNormalization":  # its u vector over the wrapped layer's outputs (the layer is counted itself)
        inner = c.get("layer", {}).get("config", {}) if isinstance(c.get("layer"), dict) else {}
        return max(1, size(inner.get("units")) or size(inner.get("filters"))), "u"
    if kind == "STFTSpectrogram":
        frame = size(c.get("frame_length"))
        fft = size(c.get("fft_length")) or frame
        kernels = 1 + (c.get("mode") not in ("real", "imag"))  # a real and an imaginary kernel but in those modes
        return kernels * mul(frame, fft // 2 + 1), f"frame {frame}, fft {fft}"
    return None, ""


def conv_sides(c: dict, shape: list | None) -> list[int]:
    """The output sides of a ConvLSTM layer fed ``shape`` (batch, time, sides and channels), by its padding, strides
    and dilation as Keras computes them; 1 for a side not known (a lower bound)."""
    if not shape or len(shape) < 4:
        return []
    sides = shape[3:] if c.get("data_format") == "channels_first" else shape[2:-1]
    out = []
    for i, side in enumerate(sides):
        kernel, stride, rate = (max(1, at(c.get(k), i)) for k in ("kernel_size", "strides", "dilation_rate"))
        if not side:
            out.append(1)
        elif str(c.get("padding", "valid")).lower() in ("same", "causal"):
            out.append((side - 1) // stride + 1)
        else:
            out.append(max(0, (side - rate * (kernel - 1) - 1) // stride + 1))
    return out


def at(v, i: int) -> int:
    """Entry ``i`` of a per-side option (an int for every side, or a list of them), as a size."""
    return size(v[i]) if isinstance(v, list) and i < len(v) else size(v) if not isinstance(v, list) else 1


CELL_STATES = {"LSTMCell": 2, "GRUCell": 1, "SimpleRNNCell": 1}  # states of `units` each a cell keeps


def cell_states(cell) -> int:
    """The numbers a row of an RNN wrapper's states holds: its cell's (or stacked cells') ``units`` times the states
    each keeps; 0 for a cell not known here (its states are counted as Keras makes them: models.build_guard)."""
    total, stack = 0, [cell]
    while stack:  # a stack, not recursion: cells nested in a crafted config as deep as JSON allows
        item = stack.pop()
        if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
            continue
        kind = kind_of(item)
        if kind == "StackedRNNCells" and isinstance(item["config"].get("cells"), list):
            stack.extend(item["config"]["cells"])
        total = min(CAP, total + mul(CELL_STATES.get(kind, 0), size(item["config"].get("units"))))
    return total


HUB_PACKAGES = ("keras_hub", "keras_nlp", "keras_cv")  # the packages Keras imports a class's module from
HUB_SIZES = {"hidden_dim": 1 << 16, "embedding_dim": 1 << 16, "intermediate_dim": 1 << 18, "mlp_dim": 1 << 18,
             "num_heads": 1 << 16, "vocabulary_size": 1 << 22, "input_dim": 1 << 22}  # fmt: skip
HUB_OTHER = 1 << 16  # any other whole number in a KerasHub layer's config (image sides, patches, key_dim...)


def _from_hub(layer: dict) -> bool:
    module, registered = str(layer.get("module")), str(layer.get("registered_name"))
    return module.startswith(HUB_PACKAGES) or registered.startswith(tuple(f"{p}>" for p in HUB_PACKAGES))


def hub_count(c: dict, name: str) -> tuple[int, str]:
    """A KerasHub layer (a fine-tuned ViT's blocks and patch embedding...), bounded as KerasHub presets are
    (:mod:`featstore.models.preset_json`): each size within its bound (:data:`HUB_SIZES`, any other whole number
    at most :data:`HUB_OTHER`), and at least half its attention and MLP kernels, its patch embedding and its
    embedding table counted."""
    for key, value in c.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "seed":
            most = HUB_SIZES.get(key, HUB_OTHER)
            if value > most:
                raise Unbounded(f"layer {name!r}'s {key} is {size(value):,}, over the {most:,} KerasHub models use")
    h, heads = size(c.get("hidden_dim")) or size(c.get("embedding_dim")), max(1, size(c.get("num_heads")))
    mlp, patch = size(c.get("intermediate_dim")) or size(c.get("mlp_dim")), size(c.get("patch_size"))
    count = 2 * h * heads * (h // heads) + h * mlp // 2 + patch * patch * size(c.get("num_channels")) * h
    count += size(c.get("vocabulary_size")) * h + size(c.get("input_dim")) * size(c.get("output_dim"))
    return count, f"hidden_dim {h}, num_heads {heads}, mlp {mlp}"


def attention(c: dict, n: int, others: list) -> tuple[int, str]:
    """MultiHeadAttention's (or GroupQueryAttention's) four projections, each from its own input's width."""
    heads = size(c.get("num_heads")) or size(c.get("num_query_heads"))
    shared = size(c.get("num_key_value_heads")) or heads  # key and value heads (grouped query attention)
    key = size(c.get("key_dim")) or size(c.get("head_dim"))
    value = size(c.get("value_dim")) or key
    v = others[0] if others and others[0] else n
    k = others[1] if len(others) > 1 and others[1] else v
    out = c.get("output_shape")
    out = size(out) if not isinstance(out, list) or len(out) <= 1 else size(out[-1])  # Keras: the last axis
    count = mul(n, heads, key) + mul(k, shared, key) + mul(v, shared, value) + mul(heads, value, out or n)
    return count, f"num_heads {heads}, key_dim {key}, value_dim {value}, output {out or n}"


def einsum_kernel(c: dict, shape: list | None, n: int) -> int:
    """The elements of an EinsumDense kernel: each of its equation's weight letters sized from the input shape (the
    last letter ``n`` when the shape is unknown) or from ``output_shape`` (batch not included), 1 when neither says;
    as Keras lays out ``abc,cd->abd``, ``...b,bc->...c`` and ``ab...,bc->ac...``."""
    m = re.fullmatch(
        r"\s*(\.\.\.)?([a-zA-Z]+)(\.\.\.)?,([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)(\.\.\.)?\s*", str(c.get("equation"))[:200]
    )
    if not m:
        return n  # not an equation Keras accepts: it builds nothing; at least the input width otherwise
    left, spec_in, weights, spec_out = bool(m[1]), m[2], m[4], m[6]
    out = c.get("output_shape")
    out = rank_checked(out) if isinstance(out, list) else [out]
    out = out if left else [None, *out]  # positions of the output letters: after the batch unless elided on the left
    count = 1
    for letter in weights:
        if letter in spec_in:
            i = spec_in.index(letter) - (len(spec_in) if left else 0)
            known = shape and -len(shape) <= i < len(shape)
            dim = size(shape[i]) if known else n if letter == spec_in[-1] else 1
        elif letter in spec_out:
            i = spec_out.index(letter)
            dim = size(out[i]) if i < len(out) else 1
        else:
            dim = 1
        count = mul(count, max(1, dim))
    return count


def output_shape(layer: dict, shapes: list) -> list | None:
    """The shape (batch first, None where unknown) a layer entry puts out given its inputs' ``shapes``, where the
    config says it simply; None otherwise. Only used for layers whose ``build_config`` is missing."""
    kind, c = kind_of(layer), layer["config"]
    s = shapes[0] if shapes else None
    if kind == "InputLayer":
        return dims(c.get("batch_shape") or c.get("batch_input_shape"))
    if s is None:
        return None
    if kind in SAME_SHAPE:
        return s
    last = size(c.get("units")) or size(c.get("filters")) or None
    if kind == "Dense" or kind in ("LSTM", "GRU", "SimpleRNN") and c.get("return_sequences"):
        return [*s[:-1], last]
    if kind in ("LSTM", "GRU", "SimpleRNN"):
        return [s[0], last]
    if kind.startswith(("Conv", "SeparableConv", "DepthwiseConv")) and not kind.startswith("ConvLSTM"):
        first = c.get("data_format") == "channels_first"
        out = last or (s[1 if first else -1] or 1) * (size(c.get("depth_multiplier")) or 1)
        return [s[0], out, *[None] * (len(s) - 2)] if first else [s[0], *[None] * (len(s) - 2), out]
    if kind == "Embedding":
        return [*s, size(c.get("output_dim")) or None]
    if kind == "Flatten":
        return [s[0], mul(*s[1:]) if all(s[1:]) else None]
    if kind == "Reshape":
        return [s[0], *(dims(c.get("target_shape")) or [None])]
    if kind == "Concatenate" and c.get("axis", -1) == -1 and all(x and x[-1] for x in shapes):
        return [*s[:-1], min(CAP, sum(x[-1] for x in shapes))]
    if kind.startswith(("GlobalMaxPooling", "GlobalAveragePooling")) and c.get("data_format") != "channels_first":
        return [s[0], *[1] * (len(s) - 2), s[-1]] if c.get("keepdims") else [s[0], s[-1]]
    if kind.startswith(("MaxPooling", "AveragePooling")) and c.get("data_format") != "channels_first":
        return [s[0], *[None] * (len(s) - 2), s[-1]]
    if kind in ("MultiHeadAttention", "GroupQueryAttention"):
        out = size(c.get("output_shape"))
        return [*s[:-1], out or s[-1]]
    return None
