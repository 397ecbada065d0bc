"""Attack 45 #4: the activation bound was per image and a batch's was unbounded: VGG16 at 4096 px makes 4 GiB an image
(within the bound), and the default batch of 32 (4 images in the split: a 16 GiB, 2^32-value tensor) died of SIGSEGV
after three minutes, no line. Now a batch goes through the model as many images at a time as keep its largest tensor
within the bound, said once; the features are the same."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from featstore.models import activations
from featstore.models.activations import Largest, rows_at_once
from featstore.models.traced_bound import Traced


def test_rows_at_once_keeps_the_batch_largest_tensor_within_the_bound():
    gib = 1 << 30
    walk = Largest("block1_conv2", (4096, 4096, 64), 4 * gib, "block1_conv1")
    assert rows_at_once(32, walk) == (1, 4 * gib)  # VGG16 at 4096 px: one image a call
    assert rows_at_once(32, Largest("b", (1,), gib // 8, None)) == (32, gib // 8)  # 4 GiB at 32: all at once
    assert rows_at_once(32, Largest("b", (1,), gib // 8 + 1, None))[0] == 31
    traced = Traced("op", "Conv2D", (1, 8), "float32", gib, "b")
    assert rows_at_once(32, None, traced) == (4, gib)  # the traced pass's, where larger than the walk's
    config_only = Traced("op", "Const", (8,), "float32", 3 * gib, "b", from_image=False)
    assert rows_at_once(32, None, config_only)[0] == 32  # made once, whatever the batch
    assert rows_at_once(5, None, None) == (5, 0)


def test_a_batch_over_the_bound_goes_through_the_model_in_parts_with_the_same_features(monkeypatch, caplog):
    """Sabotage: rows_at_once giving every row: the model was called with all 6 images at once."""
    from featstore.models.extractor import Extractor, ExtractorConfig

    ex = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))
    ex.check_traced()
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    whole = ex.features(images)[0]
    calls = []
    forward = ex._forward
    monkeypatch.setattr(ex, "_forward", lambda x: calls.append(len(x)) or forward(x))
    peak = max(ex.largest_activation.nbytes, ex._traced.nbytes)
    monkeypatch.setattr(activations, "MAX_ACTIVATION_BYTES", 2 * peak)
    with caplog.at_level(logging.INFO, logger="featstore"):
        parts = ex.features(images)[0]
        ex.features(images)
    assert calls == [2, 2, 2] * 2
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)
    said = [r.getMessage() for r in caplog.records if "at a time" in r.getMessage()]
    assert len(said) == 1 and "2 image(s) at a time" in said[0], said


@pytest.mark.parametrize("rows", [1, 0])
def test_small_and_empty_batches_are_one_call(rows):
    assert rows_at_once(rows, Largest("b", (1,), 1 << 20, None))[0] == max(rows, 1)


def test_the_start_up_checks_run_the_rows_one_call_takes(monkeypatch, tmp_path):
    """Attack 45 #7: --jit compiled and checked a whole --batch-size (17 GiB at once where features() calls the model
    with 3 images), --runtime onnx checked 4 images in one call. Sabotage: jit_batch or ONNX_CHECK_ROWS passed as
    they were: the spies see 8 and 4 rows."""
    from featstore.models import forward, onnx_runtime
    from featstore.models.extractor import Extractor, ExtractorConfig

    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    config = ExtractorConfig(model="vgg16", weights="none", image_size=32)
    probe = Extractor(config)
    probe.check_traced()
    peak = max(probe.largest_activation.nbytes, probe._traced.nbytes)
    monkeypatch.setattr(activations, "MAX_ACTIVATION_BYTES", peak * 5 // 2)  # one image fits, two do too, three not
    seen = []
    for module, name in ((forward, "check_jit"), (onnx_runtime, "check_agreement")):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name):
            seen.append((_name, args[4] if _name == "check_jit" else args[5]))
            return _real(*args)

        monkeypatch.setattr(module, name, spy)
    Extractor(config, jit=True, jit_batch=8)
    probe.use_runtime("onnx", tmp_path / "onnx")
    assert seen == [("check_jit", 2), ("check_agreement", 2)]


def test_finetuning_from_the_images_is_refused_where_a_batch_passes_the_bound(finetune_source_32, monkeypatch):
    """Attack 45's note: a fine-tuning step holds a whole --batch-size of activations at once and nothing bounded it
    (the images' batches are split, a training step cannot be). Sabotage: the check left out: the fine-tuning trains."""
    from featstore.errors import ConfigError
    from featstore.experiments.finetune import FinetuneConfig, finetune
    from featstore.models.extractor import Extractor, ExtractorConfig

    probe = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))
    probe.check_traced()
    monkeypatch.setattr(
        activations, "MAX_ACTIVATION_BYTES", max(probe.largest_activation.nbytes, probe._traced.nbytes) * 5 // 2
    )
    config = FinetuneConfig("block5_conv1", epochs=1, batch_size=4, cache=False)
    with pytest.raises(ConfigError, match=r"give --batch-size 2 or less"):
        finetune(finetune_source_32["dense"], config, store=finetune_source_32["store"])


def test_a_fine_tuned_model_applied_to_images_takes_the_rows_one_call_may(tmp_path, monkeypatch):
    """The same for a fine-tuned run's model on images (predict, runs evaluate): its own largest tensor, measured when it
    is loaded, sizes its calls. Sabotage: proba's rows_at_once left out: one call of 6 images."""
    import keras

    from featstore.models.finetuned import FinetunedModel

    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.GlobalAveragePooling2D(),
         keras.layers.Dense(2, activation="softmax")]
    )  # fmt: skip
    model.save(tmp_path / "tuned.keras")
    tuned = FinetunedModel.load(tmp_path / "tuned.keras", {"input_size": 8, "preprocess": "none"})
    assert tuned.largest.layer == "conv"
    calls = []
    real = tuned.model
    tuned.model = lambda x, training: calls.append(len(x)) or real(x, training=training)
    monkeypatch.setattr(activations, "MAX_ACTIVATION_BYTES", tuned.largest.nbytes * 2)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    assert tuned.proba(images).shape == (6, 2)
    assert calls == [2, 2, 2]


def test_running_out_of_memory_while_decoding_a_training_image_is_said_as_the_process_s(monkeypatch, tmp_path):
    """Attack 46 #2: a fine-tuning batch too large for the process's memory was said as "<image> was extracted into the
    store but cannot be read now (out of memory while decoding); restore it, or re-run extract": the image was fine.
    Sabotage: the out-of-memory case left out: the old line."""
    from featstore.errors import DataError
    from featstore.images import decode
    from featstore.runs.apply import SplitImages, image_batches

    monkeypatch.setattr(
        decode, "iter_decoded", lambda paths, *a: iter([(paths[0], None, "out of memory while decoding")])
    )
    images = SplitImages(tmp_path, ["a/1.png"], np.array([0]))
    with pytest.raises(DataError) as got:
        list(image_batches(images, 32, 20, None, 1))
    line = str(got.value)
    assert line.startswith("this process ran out of memory while decoding") and "with 20 images a batch" in line, line
    assert "restore it" not in line


def test_finetunes_cache_is_extracted_in_batches_that_fit(finetune_source_32, monkeypatch, caplog):
    """Attack 46 #9: the cached cut was extracted with extract's batch of 32 whatever finetune's --batch-size, and
    refused with extract's advice (--layer, --pooling: no finetune options; --batch-size changed nothing). Now the
    cache is made in batches whose features fit. Sabotage: no retry: the HugeBatch line."""
    import logging

    from featstore.experiments.finetune import FinetuneConfig, finetune
    from featstore.extraction import pipeline

    row = 2 * 2 * 512 * 4  # block4_pool's output at 32 px, float32: the cache of block5_conv1's input
    monkeypatch.setattr(pipeline, "MAX_BATCH_BYTES", row * 5)
    with caplog.at_level(logging.INFO, logger="featstore"):
        run = finetune(
            finetune_source_32["dense"],
            FinetuneConfig("block5_conv1", epochs=1, batch_size=4),
            store=finetune_source_32["store"],
        )
    assert run["id"].startswith("finetune")
    assert any("5 images a batch" in r.getMessage() for r in caplog.records), caplog.text


def test_finetunes_re_extract_command_carries_the_batch_that_fits():
    """Attack 47 #4: the re-extract command finetune hands out for a cache made in smaller batches had no --batch-size
    and was refused as given (extract's batch of 32). Sabotage: the --batch-size part left out of extract_command."""
    from featstore.experiments.finetune_cache import cache_batch, extract_command
    from featstore.models.extractor import ExtractorConfig

    class Store:
        def __init__(self, shape):
            self.shape = shape

        def metadata(self, group):
            return {"feature_shape": self.shape, "dtype": "float32"}

    cfg = ExtractorConfig("vgg16", 150, "block5_conv2", weights="imagenet")
    assert cache_batch(Store([4, 4, 512]), "g") is None  # 32 KiB a row: extract's 32 fits
    big = Store([191, 191, 1024])  # ~142 MiB a row: 28 of them fit in 4 GiB
    line = extract_command(cfg, "data", "train", "f.h5", "g", cache_batch(big, "g"))
    assert line.endswith("--batch-size 28 --overwrite"), line


def test_finetuning_from_the_cache_is_held_to_the_bound_by_the_layers_above_the_cut():
    """Attack 47 #6: the training-step bound looked only at the path from the images; from the cache (the default) an
    upsampling top of 142 MiB a row ran a batch of 32 and died of SIGSEGV. Sabotage: the cached path skipped: no
    refusal."""
    from types import SimpleNamespace

    import keras

    from featstore.errors import ConfigError
    from featstore.experiments.finetune import FinetuneConfig, _refuse_big_steps

    L = keras.layers
    top = keras.Sequential([keras.Input((40, 40, 8)), L.UpSampling2D(18, name="up"), L.Conv2D(72, 1, name="wide")])
    built = SimpleNamespace(top=top, rows_per_call=lambda rows: rows)  # the whole model's bound lets every row pass
    with pytest.raises(ConfigError, match=r"cached rows through the layers above the cut .* give --batch-size 28 or"):
        _refuse_big_steps(built, FinetuneConfig("up", batch_size=32), cached=True)
    _refuse_big_steps(built, FinetuneConfig("up", batch_size=28), cached=True)
    _refuse_big_steps(built, FinetuneConfig("up", batch_size=32), cached=False)
