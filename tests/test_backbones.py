import inspect

import numpy as np
import pytest

from featstore import ConfigError, get_backbone, list_backbones
from featstore.models.backbones import cut_model, validate_size

REQUIRED = {"vgg16", "vgg19", "resnet50", "inception_v3", "xception", "mobilenet_v2", "densenet121", "efficientnet_b0"}


def test_registry_has_the_required_backbones():
    assert REQUIRED <= set(list_backbones())


@pytest.mark.slow
@pytest.mark.parametrize("name", list_backbones())
def test_backbone_builds_and_matches_declared_shape(name):
    from featstore import Extractor, ExtractorConfig

    spec = get_backbone(name)
    # declared shape at the default size, checked against the built graph
    assert tuple(spec.build(spec.default_size).output_shape[1:]) == spec.output_shape(spec.default_size)
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
    spec = get_backbone(name)
    size = 150 if spec.min_size <= 150 else spec.min_size
    assert tuple(spec.build(size).output_shape[1:]) == spec.output_shape(size)


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
