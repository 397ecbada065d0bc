"""Attack 24 #5 (issue #19): nothing bounded a cut's activation; a 16 KB genuine model upsampling 32 px images 200
times (164 MB of features a row) made extract ask TensorFlow for 5.2 GB a batch and end in a 71-line
ResourceExhaustedError. A batch whose features pass 4 GiB is refused before any image is read, naming the batch size
that fits; an out-of-memory in the forward pass is one line."""

from __future__ import annotations

import pytest

from featstore import ConfigError, ExtractorConfig, extract
from featstore.extraction import local


@pytest.fixture(scope="module")
def upsampling_model(tmp_path_factory):
    import keras
    from keras import layers as L

    i = keras.Input((16, 16, 3))
    path = tmp_path_factory.mktemp("models") / "up.keras"
    keras.Model(i, L.UpSampling2D(64)(L.Conv2D(1, 1, name="conv")(i))).save(path)  # (1024, 1024, 1): 4 MiB a row
    return path


def test_a_batch_of_features_over_4_gib_is_refused_before_any_image(upsampling_model, data_root, tmp_path):
    """Sabotage: the ``refuse_huge_batches`` call removed from the pass fails it (the batch would be read)."""
    config = ExtractorConfig(model=str(upsampling_model), image_size=16, preprocess="none")
    with pytest.raises(ConfigError, match=r"a batch of 2000 images holds 7.8 GiB .* give --batch-size 1024 or less"):
        extract(data_root, "train", tmp_path / "f.h5", config, batch_size=2000)


def test_out_of_memory_in_the_forward_pass_is_one_line(monkeypatch):
    """Sabotage: the ``except`` in ``LocalEngine.forward`` removed lets the TensorFlow error through."""
    import numpy as np

    class ResourceExhaustedError(Exception):  # what TensorFlow raises (matched by name: no import of TensorFlow here)
        pass

    class Extractor:
        def features(self, images):
            raise ResourceExhaustedError("OOM when allocating tensor with shape[8,6400,6400,1]\\nmore lines")

    engine = local.LocalEngine()
    engine.extractor = Extractor()
    with pytest.raises(
        ConfigError, match=r"ran out of memory on a batch of 2 images \(OOM when allocating .*--batch-size"
    ):
        engine.forward([np.zeros((4, 4, 3), np.uint8)] * 2)
