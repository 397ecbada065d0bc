"""Backbone registry: name -> Keras application, its preprocessing, input size and output shape.

Keras is imported lazily so that listing models, reading stores and ``--help`` stay fast.

>>> spec = get_backbone("vgg16")
>>> spec.default_size, spec.output_shape(150)
(150, (4, 4, 512))
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from featstore import provenance
from featstore.errors import ConfigError, choices_error
from featstore.models.heads import classifier_head, ends_in_dense  # noqa: F401 (classifier_head: re-exported)
from featstore.models.layout import data_format_at

logger = logging.getLogger(__name__)

POOLINGS = ("none", "avg", "max")

# Preprocessing ids (recorded and fingerprinted) -> what they do to an RGB image with values 0..255.
PREPROCESS_MODES = {
    "imagenet-caffe": "RGB->BGR, minus the ImageNet channel means, no scaling (Keras 'caffe' mode: VGG, ResNet)",
    "imagenet-torch": "scaled to [0, 1], then ImageNet mean/std normalisation (Keras 'torch' mode: DenseNet)",
    "tf": "scaled to [-1, 1] (Keras 'tf' mode: Inception, Xception, MobileNetV2)",
    "scale01": "scaled to [0, 1]",
    "none": "identity: the model rescales inside (expects 0..255)",
}
_KERAS_MODE = {"imagenet-caffe": "caffe", "imagenet-torch": "torch", "tf": "tf"}
# What each preprocessing makes of pixels 0..255: (lowest, highest, whether the values stay whole numbers). A saved
# model with an integer input (uint8: a serving model) holds only a preprocessing whose values its dtype holds: Keras
# casts the others silently (``--preprocess tf``'s [-1, 1] became 0 or 1: a blank image, attack 58 #1).
PREPROCESS_RANGES = {
    "imagenet-caffe": (-123.68, 255 - 103.939, False),
    "imagenet-torch": (-0.485 / 0.229, (1 - 0.406) / 0.225, False),
    "tf": (-1.0, 1.0, False),
    "scale01": (0.0, 1.0, False),
    "none": (0.0, 255.0, True),
}


def validate_preprocess(mode: str) -> str:
    """Refuse a preprocessing id that is not one of PREPROCESS_MODES."""
    if mode not in PREPROCESS_MODES:
        raise choices_error("preprocess", mode, PREPROCESS_MODES)
    return mode


def preprocess(batch, mode: str):
    """Apply preprocessing ``mode`` to a float32 RGB (or grayscale) batch with values 0..255."""
    if mode == "none":
        return batch
    if mode == "scale01":
        return batch / 255.0
    if batch.shape[-1] != 3:
        raise ConfigError(
            f"--preprocess {mode} needs RGB input; this model takes {batch.shape[-1]} channel(s): use none or scale01"
        )
    from keras.applications import imagenet_utils

    return imagenet_utils.preprocess_input(batch, data_format="channels_last", mode=_KERAS_MODE[mode])


@dataclass(frozen=True)
class BackboneSpec:
    """What featstore knows about one backbone, without importing Keras."""

    name: str  # registry key, e.g. "vgg16"
    app: str  # keras.applications constructor, e.g. "VGG16"
    module: str  # keras.applications submodule holding preprocess_input, e.g. "vgg16"
    preprocess_mode: str  # key of PREPROCESS_MODES
    default_size: int  # input side in pixels when --image-size is not given
    min_size: int  # smallest input side the architecture accepts
    channels: int  # channels of the last conv layer's output
    spatial: Callable[[int], int]  # input side -> output side of the full conv base
    imagenet_file: Callable[[int], str]  # input side -> file name Keras caches the notop weights under

    def output_shape(self, size: int, pooling: str = "none") -> tuple[int, ...]:
        """Shape of one image's features for the full conv base at ``size`` pixels."""
        if pooling != "none":
            return (self.channels,)
        side = self.spatial(size)
        return (side, side, self.channels)

    channels_in: int = 3  # image channels the model takes
    output_layer: str | None = None  # a stable name for the base's last layer where Keras numbers it per build

    @property
    def preprocess_name(self) -> str:
        """Human-readable name of the preprocessing, as recorded in stores."""
        return f"keras.applications.{self.module}.preprocess_input ({self.preprocess_mode}: {PREPROCESS_MODES[self.preprocess_mode]})"

    def preprocess(self, batch):
        """This model's own preprocessing (equal to its ``keras.applications`` ``preprocess_input``) of a 0..255 batch."""
        return preprocess(batch, self.preprocess_mode)

    def build(self, size: int, weights: str | None = None):
        """Build the Keras conv base (``include_top=False``) for ``size``x``size`` RGB input."""
        import keras

        builder = getattr(keras.applications, self.app)
        base = builder(include_top=False, weights=weights, input_shape=(size, size, 3))
        if self.output_layer:  # ConvNeXt ends in an unnamed LayerNormalization: "layer_normalization_<n>" per build
            base.layers[-1].name = self.output_layer
        return base


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (plug-ins call this); returns the spec."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    if spec.preprocess_mode not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocess mode {spec.preprocess_mode!r}")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    """Names of the registered backbones, in registration order."""
    return list(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under ``name``; unknown names list the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise choices_error("model", name, list_backbones()) from None


def validate_size(spec: BackboneSpec, size: int) -> None:
    """Refuse an input side the architecture cannot take, before any model is built."""
    from featstore.provenance import MAX_IMAGE_SIZE

    if size < spec.min_size:
        raise ConfigError(
            f"--image-size {size} is too small for {spec.name}: it needs at least {spec.min_size} "
            f"pixels (default {spec.default_size})"
        )
    if size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"--image-size {size} is above featstore's largest input side, {MAX_IMAGE_SIZE} pixels "
            f"(default for {spec.name}: {spec.default_size})"
        )


def validate_pooling(pooling: str) -> None:
    """Refuse a pooling that is not one of POOLINGS."""
    if pooling not in POOLINGS:
        raise choices_error("pooling", pooling, POOLINGS)


TO_CHANNELS_LAST = "featstore_channels_last_"  # the Permute that stores a channels_first cut's map as (H, W, C)


def cut_outputs(base, layers: list[str | None], pooling: str, model_name: str) -> list[tuple[str, object]]:
    """``(layer name, output tensor)`` for each requested cut of ``base`` (None = its last layer), then optional pooling.

    A map (3-D to 5-D) that :func:`~featstore.models.layout.data_format_at` finds channels_first (a PyTorch port's) is stored
    channels_last through a ``Permute`` (:data:`TO_CHANNELS_LAST`) inside the cut model, so that ONNX, ``--jit`` and
    predict compute the same, and every reduce (``reduce=avg``, ``export --features avg``, a fine-tuning head) averages
    over its height and width (attack 60 #1); the record says so (``map_layout``, fingerprinted)."""
    import keras

    validate_pooling(pooling)
    names = [lyr.name for lyr in base.layers]
    out = []
    for layer in layers:
        if layer is None:
            layer = base.layers[-1].name
        if layer not in names:
            inside = _nested_holding(base, layer)
            if inside is not None:  # no tensor of the outer graph holds it: the nested model's own graph does
                raise ConfigError(_nested_line(layer, inside, base, model_name))
            near = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"unknown layer {layer!r} for {model_name}.{hint} "
                f"List its layers with `featstore models {model_name} --layers`."
            )
        found = base.get_layer(layer)
        if getattr(found, "activation", None) is keras.activations.softmax:
            logger.warning(
                "layer %r of %s is the classifier's output (class probabilities), not image features", layer, model_name
            )
        elif hasattr(found, "layers") and ends_in_dense(found):  # (attack 45 #5: stored as features without a word)
            logger.warning(
                "layer %r of %s is a model with a classifier inside (Dense layers): its output is that classifier's "
                "(class probabilities or logits), not image features", layer, model_name
            )  # fmt: skip
        t = outer_output(base, found)
        if pooling != "none":
            if len(t.shape) != 4:
                raise ConfigError(
                    f"--pooling {pooling} needs a 4-D conv output, and layer {layer} of {model_name} gives "
                    f"{tuple(t.shape)[1:]} per image: leave --pooling out, or cut at a conv layer (--layer NAME; "
                    f"`featstore models {model_name} --layers` lists them)"
                )
            layout = data_format_at(base, t)  # channels_first: a PyTorch port's (pooled over C and H: attack 58 #2)
            if layout is None:
                raise ConfigError(
                    f"--pooling {pooling} pools over the height and width of layer {layer} of {model_name}, but no "
                    f"layer up to it says which of its axes {tuple(t.shape)[1:]} are the channels (one moves or mixes axes: "
                    f"Permute, Reshape, EinsumDense, an op or a layer featstore does not know); pass --pooling none to store "
                    f"its output as it is, or cut at a convolution or "
                    f"pooling layer (--layer NAME; `featstore models {model_name} --layers` lists them)"
                )
            pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
            t = pool(data_format=layout, name=f"featstore_{pooling}_pool_{layer}")(t)
        elif axes := channels_last_axes(base, t):  # stored (..., C), as every map is: reduce=avg took C, H (60 #1)
            t = keras.layers.Permute(axes, name=f"{TO_CHANNELS_LAST}{layer}")(t)
        out.append((layer, t))
    return out


def channels_last_axes(base, t) -> tuple[int, ...] | None:
    """The ``Permute`` axes that store the map ``t`` (a cut's tensor in ``base``'s graph) channels last, where
    :func:`~featstore.models.layout.data_format_at` finds it channels_first (a Conv1D's (C, L) too: attack 61 #2); None
    for a vector or a map stored as it is. Fine-tuning's cached cut is stored so, and its top permutes it back
    (:func:`featstore.models.finetuned.build_model`: attack 62 #1)."""
    if len(t.shape) < 3 or data_format_at(base, t) != "channels_first":
        return None
    return (*range(2, len(t.shape)), 1)


def layout_of(cut) -> dict:
    """``{"map_layout": ...}`` for a saved model's cut that stores a channels_first map channels_last; ``{"layout_checked":
    "unknown"}`` for a map of any rank (2-D a row or more) whose channels no layer up to the cut says: a reduce is
    refused then (attack 66 #2; 68 #1: a Permute's (C, L) rows were skipped, recorded checked and averaged over C);
    else ``{}``: a vector, or a map the walk ends channels last. Registry backbones are not walked (attack 68 #6)."""
    if cut.layers[-1].name.startswith(TO_CHANNELS_LAST):
        return {"map_layout": provenance.MOVED_CHANNELS_LAST}
    t = cut.outputs[0]
    known = len(t.shape) < 3 or data_format_at(cut, t) is not None
    return {} if known else {provenance.LAYOUT_CHECKED: provenance.UNKNOWN}


class NoOneOutput(ConfigError):
    """A layer with no one output to cut at (called twice, or giving several tensors): at a default cut, the model has
    no default cut (the other ConfigErrors of :func:`cut_outputs` are about the user's options: attack 43 #3)."""


def outer_output(base, layer):
    """The output of ``layer`` where ``base`` calls it: the tensor of that call's node in ``base``'s own graph (a
    Sequential keeps its graph in ``_functional``). ``layer.output`` is its first call's: for a model nested in ``base``
    (a Keras application inside a classifier), the one of its own inner graph, not connected to ``base``'s inputs
    (attack 39 #8, 40 #7). Falls back to ``layer.output`` where ``base`` has no graph of nodes. A layer ``base`` calls
    more than once (a shared backbone: Siamese nets, test-time augmentation) has no one output: ConfigError naming its
    calls and a layer after it that takes them all (its first call was cut silently: attack 40 #14); so does a call that
    gives several tensors (attack 41 #2: a traceback wherever one tensor was assumed)."""
    calls = outer_calls(base, layer)
    if len(calls) > 1:
        raise NoOneOutput(_called_again(getattr(base, "_functional", None) or base, layer.name, calls))
    outputs = calls[0].output_tensors if calls else layer.output
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if len(outputs) > 1:  # a model with two outputs, attention returning its scores: one tensor or none (attack 41 #2)
        graph = getattr(base, "_functional", None) or base
        joins = _takers(graph, {id(t) for t in outputs})
        after = f" (e.g. --layer {joins[0]})" if joins else ""
        raise NoOneOutput(
            f"layer {layer.name!r} gives {len(outputs)} tensors, and featstore cuts at one: cut at a layer after it "
            f"that takes them{after}, or save a model of the one you want as its output and pass it as --model"
        )
    return outputs[0]


def outer_calls(base, layer) -> list:
    """The nodes of ``base``'s own graph that call ``layer`` (one for most layers; none where it has no graph)."""
    from keras.src.ops.function import make_node_key

    nodes = getattr(getattr(base, "_functional", None) or base, "_nodes", None) or ()
    return [node for index, node in enumerate(layer._inbound_nodes) if make_node_key(layer, index) in nodes]


def _called_again(graph, name: str, calls: list) -> str:
    """The line for a layer called ``len(calls)`` times in ``graph``: on what, and the first layer taking them all."""

    def source(node) -> str:
        return ", ".join(t._keras_history.operation.name for t in node.input_tensors) or "?"

    joins = _takers(graph, {id(t) for node in calls for t in node.output_tensors})
    after = f" (e.g. --layer {joins[0]})" if joins else ""
    return (
        f"layer {name!r} is called {len(calls)} times in this model (on {'; on '.join(map(source, calls))}), so it "
        f"has no one output to cut at: cut at a layer after it that takes every call's output{after}, or save the "
        f"model of one call on its own and pass it as --model"
    )


def _takers(graph, made: set[int]) -> list[str]:
    """The layers of ``graph``, first first, whose call takes more than one of the tensors ``made`` (their ids)."""
    return [
        node.operation.name
        for depth in sorted(getattr(graph, "_nodes_by_depth", {}), reverse=True)
        for node in graph._nodes_by_depth[depth]
        if node.operation is not None and sum(id(t) in made for t in node.input_tensors) > 1
    ]


def _nested_holding(base, name: str) -> list[str] | None:
    """The names of the models nested in ``base`` down to the one that holds a layer called ``name`` (at any depth),
    outermost first; None where none does."""
    stack = [([top.name], top) for top in base.layers]
    while stack:
        path, model = stack.pop()
        for inner in getattr(model, "layers", None) or ():
            if inner.name == name:
                return path
            stack.append(([*path, inner.name], inner))
    return None


def _nested_line(layer: str, path: list[str], base, model_name: str) -> str:
    """Refusing ``--layer`` ``layer``, inside the nested models ``path`` of ``base``: save the innermost that holds it
    on its own; cut at the outermost's output only where that is features (it holds no Dense layer: its output is a
    classifier's, whose logits were stored as features: attack 45 #5)."""
    getter = "model" + "".join(f".get_layer({n!r})" for n in path)
    save = f"save it on its own ({getter}.save('base.keras')) and pass it as --model with --layer {layer}"
    cut = "" if ends_in_dense(base.get_layer(path[0])) else f"cut at that model's output (--layer {path[0]}), or "
    within = f"{path[-1]!r}, a model nested in " + (f"{path[0]!r} in " if len(path) > 1 else "")
    return f"layer {layer!r} is inside {within}{model_name}, and featstore cuts only at the outer model's layers: {cut}{save}"


def cut_model(base, layer: str | None, pooling: str, model_name: str):
    """The extractor: ``base`` cut at ``layer`` (None = its last layer), then optional global pooling."""
    import keras

    return keras.Model(
        base.inputs[0], cut_outputs(base, [layer], pooling, model_name)[0][1], name=f"{base.name}_featstore"
    )


# --- output side formulas (checked against the built models by tests/test_backbones.py) ---
def _floor32(s: int) -> int:
    return s // 32


def _ceil32(s: int) -> int:
    return math.ceil(s / 32)


def _inception_v3(s: int) -> int:
    x = (s - 3) // 2 + 1 - 2  # conv 3x3/2 valid, conv 3x3 valid
    x = (x - 3) // 2 + 1 - 2  # maxpool 3x3/2, conv 3x3 valid
    x = (x - 3) // 2 + 1  # maxpool 3x3/2
    x = (x - 3) // 2 + 1  # mixed3 reduction
    return (x - 3) // 2 + 1  # mixed8 reduction


def _xception(s: int) -> int:
    x = (s - 3) // 2 + 1 - 2  # conv 3x3/2 valid, conv 3x3 valid
    for _ in range(4):  # four "same" max-pool reductions
        x = math.ceil(x / 2)
    return x


def _densenet(s: int) -> int:
    x = math.ceil(s / 2)  # zero-pad 3, conv 7x7/2
    x = (x - 1) // 2 + 1  # zero-pad 1, maxpool 3x3/2
    return x // 8  # three transition avg-pools 2x2/2


def _mobilenet_v2_file(s: int) -> str:
    rows = s if s in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


def _notop(prefix: str) -> Callable[[int], str]:
    return _named(f"{prefix}_weights_tf_dim_ordering_tf_kernels_notop.h5")


def _named(file_name: str) -> Callable[[int], str]:
    return lambda s: file_name  # one weights file whatever the input side


for _spec in (
    BackboneSpec("vgg16", "VGG16", "vgg16", "imagenet-caffe", 150, 32, 512, _floor32, _notop("vgg16")),
    BackboneSpec("vgg19", "VGG19", "vgg19", "imagenet-caffe", 150, 32, 512, _floor32, _notop("vgg19")),
    BackboneSpec("resnet50", "ResNet50", "resnet", "imagenet-caffe", 224, 32, 2048, _ceil32, _notop("resnet50")),
    BackboneSpec(
        "inception_v3", "InceptionV3", "inception_v3", "tf", 299, 75, 2048, _inception_v3, _notop("inception_v3")
    ),
    BackboneSpec("xception", "Xception", "xception", "tf", 299, 71, 2048, _xception, _notop("xception")),
    BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224, 32, 1280, _ceil32, _mobilenet_v2_file),
    BackboneSpec(
        "densenet121", "DenseNet121", "densenet", "imagenet-torch", 224, 32, 1024, _densenet, _notop("densenet121")
    ),
    BackboneSpec(
        "efficientnet_b0",
        "EfficientNetB0",
        "efficientnet",
        "none",
        224,
        32,
        1280,
        _ceil32,
        _named("efficientnetb0_notop.h5"),
    ),
    # the newer CNNs: ConvNeXt and EfficientNetV2 normalise inside the model (their preprocess_input is the identity,
    # they take 0..255); ResNet-V2 takes Inception-style [-1, 1] input
    *(
        BackboneSpec(
            f"convnext_{v}",
            f"ConvNeXt{v.title()}",
            "convnext",
            "none",
            224,
            32,
            ch,
            _floor32,
            _named(f"convnext_{v}_notop.h5"),
            output_layer=f"convnext_{v}_head_layernorm",
        )
        for v, ch in (("tiny", 768), ("small", 768), ("base", 1024))
    ),
    *(
        BackboneSpec(
            f"efficientnet_v2_{v}",
            f"EfficientNetV2{v.upper()}",
            "efficientnet_v2",
            "none",
            size,
            32,
            ch,
            _ceil32,
            _named(f"efficientnetv2-{v}_notop.h5"),
        )
        for v, size, ch in (
            ("b0", 224, 1280),
            ("b1", 240, 1280),
            ("b2", 260, 1408),
            ("b3", 300, 1536),
            ("s", 384, 1280),
        )
    ),
    *(
        BackboneSpec(f"resnet{d}_v2", f"ResNet{d}V2", "resnet_v2", "tf", 224, 32, 2048, _ceil32, _notop(f"resnet{d}v2"))
        for d in (50, 101, 152)
    ),
):
    register_backbone(_spec)
