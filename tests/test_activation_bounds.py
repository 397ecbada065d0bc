"""One image's activations bounded before any image runs (attack 37 #1, #3), and the out-of-memory line's advice.

Every model here is built with random weights and declares huge activations, but none is ever run: each check must
refuse before a forward pass (the forward pass is made to fail the test if it starts)."""

import pytest

from featstore import ConfigError, ExtractorConfig
from featstore.models import forward
from featstore.models.extractor import Extractor

keras = pytest.importorskip("keras")


@pytest.fixture
def no_forward_pass(monkeypatch):
    """Fail the test if a forward pass is traced or run (the checks must refuse before one)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass was started")

    monkeypatch.setattr(forward, "trace", refuse)
    monkeypatch.setattr(Extractor, "warm_up", refuse)


def _wide_model(path, before: bool):
    """A genuine saved model whose one Conv2D(8192) on 1024 x 1024 images outputs 34.4 GB per image (about 1 MB of
    weights), optionally after a small layer a --layer can cut at."""
    inp = keras.Input((1024, 1024, 3))
    x = keras.layers.Conv2D(2, 1, name="small")(inp) if before else inp
    x = keras.layers.Conv2D(8192, 3, padding="same", name="wide")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    keras.Model(inp, keras.layers.Dense(2, name="dense")(x)).save(path)
    return path


def test_a_saved_model_whose_layer_takes_34_gb_per_image_is_refused_before_any_image(tmp_path, no_forward_pass):
    path = _wide_model(tmp_path / "wide.keras", before=True)
    with pytest.raises(ConfigError) as err:
        Extractor(ExtractorConfig(model=str(path)))
    message = str(err.value)
    assert message.startswith(f"{path}: its layer 'wide' outputs 1024 x 1024 x 8192 float32 values per image, 34.4 GB")
    assert "cut before it with --layer small" in message and "--image-size" not in message, message
    assert "\n" not in message
    Extractor(ExtractorConfig(model=str(path), layer="small"))  # the way out it names is taken: 8 MB per image


def test_a_wide_first_layer_says_no_layer_fits(tmp_path, no_forward_pass):
    path = _wide_model(tmp_path / "wide.keras", before=False)
    with pytest.raises(
        ConfigError,
        match=r"wide.keras: its layer 'wide' .* first layer and its input side is fixed, so this model cannot run within",
    ):
        Extractor(ExtractorConfig(model=str(path)))


def test_the_cli_says_it_in_one_line_before_any_image(tmp_path, no_forward_pass):
    from tests.conftest import write_data_root
    from tests.test_adversarial_attack2 import no_traceback
    from tests.test_adversarial_attack4 import cli

    path = _wide_model(tmp_path / "wide.keras", before=False)
    store = tmp_path / "w.h5"
    result = cli("extract", "--model", path, "--data", write_data_root(tmp_path / "data"), "--split", "train",
                 "--store", store)  # fmt: skip
    out = no_traceback(result)
    assert result.exit_code != 0 and f"{path}: its layer 'wide'" in out and "34.4 GB" in out, out
    assert not store.exists()


def test_the_registered_backbones_pass_far_below_the_bound(no_forward_pass):
    from featstore.models.activations import MAX_ACTIVATION_BYTES

    for model, size, largest in (("vgg16", 224, 224 * 224 * 64 * 4), ("vgg16", 150, 150 * 150 * 64 * 4)):
        ex = Extractor(ExtractorConfig(model=model, weights="none", image_size=size))
        assert ex.largest_activation.nbytes == largest and largest * 300 < MAX_ACTIVATION_BYTES
    ex = Extractor(ExtractorConfig(model="mobilenet_v2", weights="none", image_size=224))
    assert ex.largest_activation.nbytes * 800 < MAX_ACTIVATION_BYTES


def _preset(folder, backbone):
    import keras_hub

    backbone.save_to_preset(folder)
    side = backbone.image_shape[0]
    keras_hub.layers.ViTImageConverter(image_size=(side, side), scale=1 / 127.5, offset=-1.0).save_to_preset(folder)
    return folder


def test_a_preset_whose_mlp_takes_gigabytes_per_image_is_refused_naming_config_json(tmp_path, no_forward_pass):
    """A genuine ViT preset (8 MB of weights) whose MLP over 16,385 tokens takes 8 GiB per image and block: within
    every parameter and attention bound (1 head: 1 GiB), refused before KerasHub builds it."""
    keras_hub = pytest.importorskip("keras_hub")
    from featstore.models.hub import HubSpec

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(128, 128, 3), patch_size=1, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=131072
    )
    folder = _preset(tmp_path / "vitmlp", backbone)
    with pytest.raises(ConfigError) as err:
        HubSpec.from_model(str(folder))
    message = str(err.value)
    assert message.startswith(f"{folder / 'config.json'}: 16,384 patches (image_shape 128, patch_size 1) x 131,072")
    assert "8.0 GiB per image and block, over 4 GiB" in message and "fit at image_shape 90 or less" in message


def test_an_image_size_whose_mlp_takes_gigabytes_is_refused_with_the_largest_that_fits(tmp_path, no_forward_pass):
    """A resizable DINOv2 preset with one head (attention within its bound up to 32,768 tokens) and 65,536 MLP
    channels: at --image-size 2534 its 32,764 tokens take 8 GiB per image and block in the MLP."""
    keras_hub = pytest.importorskip("keras_hub")

    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=1, hidden_dim=8, num_heads=1, intermediate_dim=65536, image_shape=(56, 56, 3),
        position_embedding_shape=(56, 56, 3), num_register_tokens=2,
    )  # fmt: skip
    folder = _preset(tmp_path / "dinomlp", backbone)
    with pytest.raises(ConfigError) as err:
        ExtractorConfig(model=str(folder), image_size=2534).validated()
    message = str(err.value)
    assert message.startswith(f"{folder / 'config.json'}: at --image-size 2534, 32,764 tokens x 65,536 channels")
    assert message.endswith("give --image-size 1778 or less"), message
    ExtractorConfig(model=str(folder), image_size=1778).validated()


class ResourceExhaustedError(Exception):  # TensorFlow's class, by name: the engines recognise it so
    pass


def _oom_line(extractor, n):
    from featstore.extraction.local import refuse_out_of_memory

    with pytest.raises(ConfigError) as err:
        refuse_out_of_memory(
            ResourceExhaustedError("OOM when allocating tensor with shape[1,16385,262144]"), n, extractor
        )
    return str(err.value)


def test_the_out_of_memory_line_gives_only_fixes_that_can_help(tmp_path, monkeypatch):
    """At a batch of 1 no smaller --batch-size; never --pooling (it pools after the cut); --image-size only where the
    model takes another; a --layer before the largest layer where there is one."""
    from types import SimpleNamespace

    from featstore.extraction.local import warm_up

    monkeypatch.setattr(forward, "trace", lambda *a, **k: None)
    path = _wide_model(tmp_path / "wide.keras", before=True)
    saved = Extractor(ExtractorConfig(model=str(path), layer="small"))  # fixed input side
    line = _oom_line(saved, 1)
    assert "--batch-size" not in line and "--pooling" not in line and "--image-size" not in line, line
    assert "ran out of memory on a batch of 1 images" in line
    assert "--batch-size (this batch: 4)" in _oom_line(saved, 4)
    vgg = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=64))
    line = _oom_line(vgg, 1)
    assert "--image-size" in line and "--batch-size" not in line and "--pooling" not in line, line
    vit = SimpleNamespace(spec=SimpleNamespace(family=SimpleNamespace(resizable=False)), largest_activation=None)
    line = _oom_line(vit, 1)  # a fixed-size preset: every block takes the same, no --layer helps
    assert "--layer" not in line and "--image-size" not in line and "--batch-size" not in line, line

    def oom():
        raise ResourceExhaustedError("OOM when allocating tensor with shape[16385,262144]")

    with pytest.raises(ConfigError, match="batch of 1 images") as err:  # the warm-up's line: the same advice
        warm_up(SimpleNamespace(warm_up=oom, spec=vit.spec, largest_activation=None))
    assert "--batch-size" not in str(err.value) and "--pooling" not in str(err.value)
