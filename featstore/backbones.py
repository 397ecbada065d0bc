"""Backbone registry: name -> Keras application, its preprocessing, input size and output shape.

Keras is imported lazily so that listing models, reading stores and ``--help`` stay fast.

>>> spec = get_backbone("vgg16")
>>> spec.default_size, spec.output_shape(150)
(150, (4, 4, 512))
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ConfigError, choices_error

POOLINGS = ("none", "avg", "max")

# What each Keras preprocessing mode does to an RGB image with values 0..255.
PREPROCESS_MODES = {
    "caffe": "RGB->BGR, minus the ImageNet channel means, no scaling",
    "tf": "scaled to [-1, 1]",
    "torch": "scaled to [0, 1], then ImageNet mean/std normalisation",
    "none": "identity: the model rescales inside (expects 0..255)",
}


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

    @property
    def preprocess_name(self) -> str:
        """Human-readable name of the preprocessing, as recorded in stores."""
        return f"keras.applications.{self.module}.preprocess_input ({self.preprocess_mode}: {PREPROCESS_MODES[self.preprocess_mode]})"

    def preprocess(self, batch):
        """Apply this model's own ``preprocess_input`` to a float32 RGB batch in 0..255."""
        module = importlib.import_module(f"keras.applications.{self.module}")
        return module.preprocess_input(batch)

    def build(self, size: int, weights: str | None = None):
        """Build the Keras conv base (``include_top=False``) for ``size``x``size`` RGB input."""
        import keras

        builder = getattr(keras.applications, self.app)
        return builder(include_top=False, weights=weights, input_shape=(size, size, 3))


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
    if size < spec.min_size:
        raise ConfigError(
            f"--image-size {size} is too small for {spec.name}: it needs at least {spec.min_size} "
            f"pixels (default {spec.default_size})"
        )


def validate_pooling(pooling: str) -> None:
    """Refuse a pooling that is not one of POOLINGS."""
    if pooling not in POOLINGS:
        raise choices_error("pooling", pooling, POOLINGS)


def cut_model(base, layer: str | None, pooling: str, model_name: str):
    """The extractor: ``base`` cut at ``layer`` (None = its last layer), then optional global pooling."""
    import keras

    validate_pooling(pooling)
    if layer is None:
        out = base.output
    else:
        names = [lyr.name for lyr in base.layers]
        if layer not in names:
            near = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(near)}?" if near else ""
            raise ConfigError(
                f"unknown layer {layer!r} for {model_name}.{hint} "
                f"List its layers with `featstore models {model_name} --layers`."
            )
        out = base.get_layer(layer).output
    if pooling != "none":
        if len(out.shape) != 4:
            raise ConfigError(f"--pooling {pooling} needs a 4-D conv output; layer gives {tuple(out.shape)}")
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        out = pool(name=f"featstore_{pooling}_pool")(out)
    return keras.Model(base.input, out, name=f"{base.name}_featstore")


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
    return lambda s: f"{prefix}_weights_tf_dim_ordering_tf_kernels_notop.h5"


for _spec in (
    BackboneSpec("vgg16", "VGG16", "vgg16", "caffe", 150, 32, 512, _floor32, _notop("vgg16")),
    BackboneSpec("vgg19", "VGG19", "vgg19", "caffe", 150, 32, 512, _floor32, _notop("vgg19")),
    BackboneSpec("resnet50", "ResNet50", "resnet", "caffe", 224, 32, 2048, _ceil32, _notop("resnet50")),
    BackboneSpec("inception_v3", "InceptionV3", "inception_v3", "tf", 299, 75, 2048, _inception_v3, _notop("inception_v3")),
    BackboneSpec("xception", "Xception", "xception", "tf", 299, 71, 2048, _xception, _notop("xception")),
    BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224, 32, 1280, _ceil32, _mobilenet_v2_file),
    BackboneSpec("densenet121", "DenseNet121", "densenet", "torch", 224, 32, 1024, _densenet, _notop("densenet121")),
    BackboneSpec("efficientnet_b0", "EfficientNetB0", "efficientnet", "none", 224, 32, 1280, _ceil32, lambda s: "efficientnetb0_notop.h5"),
):
    register_backbone(_spec)
