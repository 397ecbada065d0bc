import h5py
import numpy as np
import pytest

from featstore import ExtractorConfig, FeatureStore, StoreError, extract, provenance
from featstore.store import writer

from .conftest import write_images


def test_layout_and_provenance(data_root, tiny_config, tmp_path):
    path = tmp_path / "features.h5"
    r = extract(data_root, "train", path, tiny_config, batch_size=5)
    assert (r.rows, r.written, r.failed, r.skipped) == (12, 12, 0, False)
    extract(data_root, "validation", path, tiny_config)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 2
        g = f["vgg16"]
        for key in (
            "model",
            "layer",
            "input_size",
            "pooling",
            "preprocess",
            "weights_source",
            "weights_sha256",
            "dtype",
            "keras_version",
            "tensorflow_version",
            "created_at",
            "fingerprint",
        ):
            assert key in g.attrs, key
        assert g.attrs["weights_source"] == "none" and g.attrs["layer"] == "block5_pool"
        assert (
            g.attrs["preprocess"] == "imagenet-caffe" and "vgg16.preprocess_input" in g.attrs["preprocess_description"]
        )
        tr = g["train"]
        assert tr["features"].shape == (12, 1, 1, 512) and tr["features"].dtype == np.float32
        assert tr["features"].maxshape == (None, 1, 1, 512) and tr["features"].chunks[0] >= 1
        assert list(tr["labels"][:]) == [0] * 6 + [1] * 6
        assert tr["paths"].asstr()[0] == "train/cat/img_000.png"
        assert list(tr.attrs["class_names"]) == ["cat", "dog"]
        assert tr.attrs["complete"] and list(tr.attrs["commit"]) == [12, 0, 12]  # committed_rows, n_failed, images_done
        assert g["validation"]["features"].shape[0] == 6
    store = FeatureStore(path)
    X, y = store.load("train")
    assert X.shape == (12, 1, 1, 512) and y.tolist() == [0] * 6 + [1] * 6
    assert store.class_names() == ["cat", "dog"]
    assert store.metadata()["fingerprint"] == provenance.fingerprint(store.metadata())


def test_features_equal_a_direct_model_call(data_root, tiny_config, tmp_path):
    from featstore import Extractor, load_image

    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config, batch_size=4)
    X, _ = FeatureStore(path).load("train")
    ex = Extractor(tiny_config)
    imgs = np.stack([load_image(data_root / p, 32) for p in FeatureStore(path).paths("train")])
    np.testing.assert_allclose(X, ex(imgs), rtol=1e-5, atol=1e-5)


def test_rerun_is_noop_and_overwrite_replaces(data_root, tiny_config, tmp_path):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    before = FeatureStore(path).split_info("train")
    again = extract(data_root, "train", path, tiny_config)
    assert again.skipped and again.rows == 12 and again.written == 0
    assert FeatureStore(path).split_info("train")["started_at"] == before["started_at"]
    redo = extract(data_root, "train", path, tiny_config, overwrite=True)
    assert not redo.skipped and redo.written == 12


def test_float16_and_pooling(data_root, tmp_path):
    cfg = ExtractorConfig(
        model="vgg16", image_size=64, weights="none", pooling="avg", dtype="float16", layer="block4_pool"
    )
    r = extract(data_root, "train", tmp_path / "f.h5", cfg)
    X, _ = FeatureStore(tmp_path / "f.h5").load("train")
    assert X.dtype == np.float16 and X.shape == (12, 512) and r.feature_shape == (512,)


def test_class_mismatch_is_an_error(data_root, tiny_config, tmp_path):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    write_images(data_root, "validation", {"bird": 2})
    with pytest.raises(StoreError, match=r"classes of split 'validation' differ.*\['bird', 'cat', 'dog'\]"):
        extract(data_root, "validation", path, tiny_config)
    assert FeatureStore(path).load("train")[0].shape[0] == 12  # nothing lost


def test_other_extractor_under_same_name_shows_both_fingerprints(data_root, tiny_config, tmp_path):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    other = ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=8)
    with pytest.raises(StoreError, match=r"fingerprint \w{12}, this run's is \w{12} \(weights_digest"):
        extract(data_root, "validation", path, other)
    extract(data_root, "validation", path, other, name="vgg16_seed8")  # --name is the way out
    assert FeatureStore(path).extractors() == ["vgg16", "vgg16_seed8"]


def test_resume_after_partial_write_matches_clean_run(data_root, tiny_config, tmp_path, monkeypatch):
    clean = tmp_path / "clean.h5"
    extract(data_root, "train", clean, tiny_config, batch_size=4)
    path = tmp_path / "f.h5"
    real_commit, calls = writer.SplitWriter.commit, []

    def dying_commit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted after one committed batch
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(writer.SplitWriter, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        extract(data_root, "train", path, tiny_config, batch_size=4)
    monkeypatch.setattr(writer.SplitWriter, "commit", real_commit)
    assert FeatureStore(path).split_info("train")["committed_rows"] == 4
    with pytest.raises(StoreError, match="not complete"):
        FeatureStore(path).load("train")
    r = extract(data_root, "train", path, tiny_config, batch_size=4)
    assert r.resumed_from == 4 and r.written == 8
    a, b = FeatureStore(clean), FeatureStore(path)
    np.testing.assert_array_equal(a.load("train")[0], b.load("train")[0])
    assert a.paths("train") == b.paths("train")


def test_changed_images_on_resume_is_explained(data_root, tiny_config, tmp_path):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config)
    with h5py.File(path, "a") as f:
        f["vgg16/train"].attrs["complete"] = False
    write_images(data_root, "train", {"cat": 7})
    with pytest.raises(StoreError, match="images of split .train. changed since.*--overwrite"):
        extract(data_root, "train", path, tiny_config)


def test_resume_with_other_options_is_explained(data_root, tiny_config, tmp_path):
    path = tmp_path / "f.h5"
    extract(data_root, "train", path, tiny_config, batch_size=4)
    with h5py.File(path, "a") as f:
        f["vgg16/train"].attrs["complete"] = False
    with pytest.raises(StoreError, match=r"started with another --batch-size \(4 then, 8 now\).*--overwrite"):
        extract(data_root, "train", path, tiny_config, batch_size=8)
    assert extract(data_root, "train", path, tiny_config, batch_size=4).rows == 12


def test_compression_option(data_root, tiny_config, tmp_path):
    from featstore import ConfigError

    extract(data_root, "train", tmp_path / "f.h5", tiny_config, compression="gzip")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["vgg16/train/features"].compression == "gzip"
    np.testing.assert_array_equal(
        FeatureStore(tmp_path / "f.h5").load("train")[0],
        extract(data_root, "train", tmp_path / "g.h5", tiny_config)
        and FeatureStore(tmp_path / "g.h5").load("train")[0],
    )
    with pytest.raises(ConfigError, match="choose one of: none, lzf, gzip"):
        extract(data_root, "train", tmp_path / "h.h5", tiny_config, compression="zstd")


def test_mixed_precision_is_close_and_fingerprinted(tiny_config):
    from dataclasses import replace

    from featstore import Extractor

    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    full = Extractor(tiny_config)
    half = Extractor(replace(tiny_config, mixed_precision=True))
    a, b = full(x), half(x)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * float(np.abs(a).max()))
    assert half.attrs["compute_dtype"] == "mixed_float16" and half.attrs["fingerprint"] != full.attrs["fingerprint"]
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_decode_threads_do_not_change_rows(data_root, tiny_config, tmp_path):
    a = extract(data_root, "train", tmp_path / "a.h5", tiny_config, decode_threads=0, batch_size=5)
    b = extract(data_root, "train", tmp_path / "b.h5", tiny_config, decode_threads=3, batch_size=5)
    assert a.rows == b.rows == 12
    fa, fb = FeatureStore(tmp_path / "a.h5"), FeatureStore(tmp_path / "b.h5")
    assert fa.paths("train") == fb.paths("train")
    np.testing.assert_array_equal(fa.load("train")[0], fb.load("train")[0])


def test_the_forward_pass_is_traced_at_the_start_of_a_loop_not_when_an_extractor_is_only_described(
    data_root, tiny_config, tmp_path, monkeypatch
):
    """An extractor built for its fingerprint only (a Ray driver, a run's check) never traces its model; an extract
    traces it once, when the engine binds it (start-up), before the first batch; no batch traces it again."""
    from featstore import Extractor
    from featstore.models import extractor as extractor_module
    from featstore.models import forward

    traced = []
    real = forward.trace
    monkeypatch.setattr(forward, "trace", lambda *a, **k: traced.append(k.get("jit", False)) or real(*a, **k))
    Extractor(tiny_config)
    assert traced == []
    seen = []
    real_bind = extractor_module.Extractor.features

    def features(self, images):
        seen.append(len(traced))  # traces done before this batch ran
        return real_bind(self, images)

    monkeypatch.setattr(extractor_module.Extractor, "features", features)
    extract(data_root, "train", tmp_path / "f.h5", tiny_config, batch_size=4)
    assert traced == [False] and seen and set(seen) == {1}


def test_the_decode_threads_start_before_the_warm_up_so_the_first_batch_decodes_meanwhile(
    data_root, tiny_config, tmp_path, monkeypatch
):
    """The first batch is decoded during the model's warm-up (start-up), not afterwards with the model idle (issue 22)."""
    from featstore.images import decode
    from featstore.models import extractor as extractor_module

    decoded, at_warm_up = [], []
    real_load, real_warm_up = decode.load_image, extractor_module.Extractor.warm_up
    monkeypatch.setattr(decode, "load_image", lambda *a, **k: decoded.append(1) or real_load(*a, **k))

    def warm_up(self):
        at_warm_up.append(len(decoded))
        return real_warm_up(self)

    monkeypatch.setattr(extractor_module.Extractor, "warm_up", warm_up)
    r = extract(data_root, "train", tmp_path / "f.h5", tiny_config, batch_size=4, decode_threads=2)
    assert r.rows == 12 and len(at_warm_up) == 1 and at_warm_up[0] >= 1


def test_local_outcomes_closed_before_iteration_stop_their_decode_threads(data_root):
    """LocalEngine.outcomes starts its decode threads at once; close() stops them even if nothing was read."""
    import threading
    import time
    from types import SimpleNamespace

    from featstore.extraction.local import LocalEngine

    def decoders() -> int:
        return sum(t.name.startswith("featstore-decode") for t in threading.enumerate())

    before = decoders()
    engine = LocalEngine(decode_threads=3)
    engine.bind(SimpleNamespace(config=SimpleNamespace(image_size=8), warm_up=lambda: None), batch_size=2)
    outcomes = engine.outcomes(sorted(str(p) for p in (data_root / "train").glob("*/*")))
    assert decoders() == before + 3
    outcomes.close()
    deadline = time.monotonic() + 10
    while decoders() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert decoders() == before
