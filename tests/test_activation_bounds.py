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
