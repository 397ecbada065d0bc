import functools
import inspect

import numpy as np
import pytest

from featstore import ConfigError, get_backbone, list_backbones
from featstore.models.backbones import cut_model, validate_size

REQUIRED = {"vgg16", "vgg19", "resnet50", "inception_v3", "xception", "mobilenet_v2", "densenet121", "efficientnet_b0"}
# the newer CNNs (issue 22): one member per family gets every check; the larger members one build each (CI time)
NEWER = {
    "convnext_tiny": ("convnext_small", "convnext_base"),
    "efficientnet_v2_b0": ("efficientnet_v2_b1", "efficientnet_v2_b2", "efficientnet_v2_b3", "efficientnet_v2_s"),
    "resnet50_v2": ("resnet101_v2", "resnet152_v2"),
}
LARGER = [name for members in NEWER.values() for name in members]
FULLY_CHECKED = [name for name in list_backbones() if name not in LARGER]


@functools.cache
def built_shape(name: str, size: int) -> tuple[int, ...]:
    """The output shape of ``name``'s conv base built at ``size`` px, built once per process: VGG16's and VGG19's
    default size is the odd size 150, so the declared-shape and odd-size tests ask for the same build.

    The whole graph is built (every layer's ``build`` and symbolic call: the shapes Keras infers), its weights are
    left uninitialised (a stateless scope that does not initialise them on exit): an output shape never depends on
    weight values, and drawing them was over half of a deep build (ResNet101V2 at 150 px)."""
    import keras
    from keras.src.backend.common import global_state

    pending = "uninitialized_variables"  # the scope's record of them: the next scope to end would initialise them
    before = list(global_state.get_global_attribute(pending) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            return tuple(get_backbone(name).build(size).output_shape[1:])
    finally:
        global_state.set_global_attribute(pending, before)


def test_registry_has_the_required_backbones():
    assert REQUIRED | set(NEWER) | set(LARGER) <= set(list_backbones())


@pytest.mark.slow
@pytest.mark.parametrize("name", FULLY_CHECKED)
def test_backbone_builds_and_matches_declared_shape(name):
    from featstore import Extractor, ExtractorConfig

    spec = get_backbone(name)
    # declared shape at the default size, checked against the built graph
    assert built_shape(name, spec.default_size) == spec.output_shape(spec.default_size)
    # built twice in one process at the smallest input (random weights): one fingerprint, although Keras numbers the
    # second build's variables on (conv2d_4); then a real forward pass through featstore's own preprocessing
    size = spec.min_size
    cfg = ExtractorConfig(model=name, image_size=size, weights="none", seed=1)
    first, second = Extractor(cfg), Extractor(cfg)
    assert first.attrs["fingerprint"] == second.attrs["fingerprint"]
    out = np.asarray(second(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")))
    assert out.shape == (2, *spec.output_shape(size))
    assert np.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", list_backbones())
def test_output_formula_at_an_odd_size(name):
    """Every backbone, the larger members of a family too: one build at 150 px checks its spatial formula and its
    channels (EfficientNetV2-B2 and -B3 end in 1408 and 1536, not 1280)."""
    spec = get_backbone(name)
    size = 150 if spec.min_size <= 150 else spec.min_size
    assert built_shape(name, size) == spec.output_shape(size)


@pytest.mark.parametrize("name", list_backbones())
def test_each_backbone_uses_its_own_keras_preprocess_and_weight_file(name):
    import importlib

    spec = get_backbone(name)
    module = importlib.import_module(f"keras.src.applications.{spec.module}")
    x = np.random.default_rng(1).uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(spec.preprocess(x.copy()), module.preprocess_input(x.copy()))
    # the cache file name featstore reports offline is the one Keras downloads to
    fname = spec.imagenet_file(spec.default_size)
    source = inspect.getsource(module)
    stem = fname.split("_weights")[0] if "_weights" in fname else fname.split("_notop")[0]
    assert stem in source and ("no_top" in fname or "notop" in fname)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="choose one of: vgg16, vgg19"):
        get_backbone("vgg17")


def test_image_size_too_small():
    with pytest.raises(ConfigError, match="at least 75"):
        validate_size(get_backbone("inception_v3"), 64)


def test_layer_cut_and_pooling():
    spec = get_backbone("vgg16")
    base = spec.build(64)
    assert cut_model(base, "block4_pool", "none", "vgg16").output_shape[1:] == (4, 4, 512)
    assert cut_model(base, "block3_pool", "avg", "vgg16").output_shape[1:] == (256,)
    with pytest.raises(ConfigError, match="Did you mean: block4_pool"):
        cut_model(base, "block4_poool", "none", "vgg16")
    with pytest.raises(ConfigError, match="choose one of: none, avg, max"):
        cut_model(base, None, "mean", "vgg16")


def test_convnext_default_cut_has_one_name_in_every_build():
    """ConvNeXt's base ends in an unnamed LayerNormalization that Keras numbers per build (layer_normalization,
    layer_normalization_2, ...); the recorded (and fingerprinted) layer must not depend on how many were built
    before, or a second extraction in one process, resume and predict would see another extractor."""
    spec = get_backbone("convnext_tiny")
    names = {spec.build(32).layers[-1].name for _ in range(2)}
    assert names == {"convnext_tiny_head_layernorm"}


def test_newer_cnns_take_the_input_their_keras_docs_say():
    """ConvNeXt and EfficientNetV2 normalise inside the model (0..255 in: Keras's docs, "preprocessing is included
    in the model"); ResNet-V2 takes [-1, 1] like Inception ("tf" mode), not ResNet50's caffe mode."""
    x = np.full((1, 2, 2, 3), 255.0, dtype="float32")
    for name in ("convnext_tiny", "efficientnet_v2_b0"):
        assert get_backbone(name).preprocess_mode == "none"
        np.testing.assert_array_equal(get_backbone(name).preprocess(x.copy()), x)
    np.testing.assert_allclose(get_backbone("resnet50_v2").preprocess(x.copy()), 1.0)
