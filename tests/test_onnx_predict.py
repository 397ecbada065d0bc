"""predict --runtime onnx: a run's extractor rebuilt and checked with Keras, then run with ONNX Runtime from the cut
that extract --runtime onnx left in <store>.cache/onnx/ (or exported there once). One tiny VGG16 (32 px, random
weights) cut at block2_pool for the whole module."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from featstore import ConfigError, ensemble, extract, fit, predict  # noqa: E402
from featstore.models import onnx_runtime  # noqa: E402
from featstore.runs.apply import ApplyOptions  # noqa: E402
from featstore.runs.kinds import EnsembleKind, FinetuneKind  # noqa: E402

from .conftest import TINY_CONFIG, write_data_root  # noqa: E402
from .test_cli import run  # noqa: E402

CUT = replace(TINY_CONFIG, layer="block2_pool")  # tf2onnx's export time grows with the weights: 0.3 s here, not 7 s


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Train extracted with --runtime onnx (the export made once, kept in the store's cache), validation and test with
    Keras; a logreg and a knn run on them, and their ensemble."""
    root = tmp_path_factory.mktemp("onnx_predict")
    data = write_data_root(root / "data")
    store = root / "f.h5"
    extract(data, "train", store, replace(CUT, runtime="onnx"), batch_size=6)
    for split in ("validation", "test"):
        extract(data, split, store, CUT, batch_size=6)
    logreg = fit(store, "logreg", {})
    knn = fit(store, "knn", {})
    ens = ensemble([logreg["id"], knn["id"]], store=store)
    return {"data": data, "store": store, "logreg": logreg, "ens": ens}


@pytest.fixture
def calls(monkeypatch) -> dict:
    """Every ONNX Runtime start (load or export, then the check) and every export from now on, counted; each still runs."""
    seen = {"start": [], "export": []}
    for name, key in (("start", "start"), ("export_cut", "export")):
        real = getattr(onnx_runtime, name)
        monkeypatch.setattr(
            onnx_runtime, name, lambda *a, real=real, key=key, **k: seen[key].append(1) or real(*a, **k)
        )
    return seen


def _by_path(rows: list[dict]) -> dict:
    return {r["path"]: r for r in rows}


@pytest.mark.parametrize("which", ["logreg", "ens"])
def test_onnx_predictions_equal_keras_ones_from_the_extracts_cut(made, calls, which):
    images = [made["data"] / "test"]
    keras_rows = _by_path(predict(made[which]["id"], images, store=made["store"], runtime="keras"))
    assert calls["start"] == []
    onnx_rows = _by_path(predict(made[which]["id"], images, store=made["store"], runtime="onnx"))
    assert calls["start"] == [1]  # ONNX Runtime ran the features (an ensemble's members share one extractor)
    # the cut that extract --runtime onnx exported into <store>.cache/onnx/ is loaded, not exported again (a missing
    # or damaged one is exported there: featstore.models.onnx_runtime.start, tests/test_onnx.py)
    assert calls["export"] == []
    assert keras_rows.keys() == onnx_rows.keys() and len(keras_rows) == 6
    for path, k in keras_rows.items():
        o = onnx_rows[path]
        assert o["label"] == k["label"] and o["error"] == k["error"] == ""
        assert abs(o["probability"] - k["probability"]) < 1e-3, (path, o, k)


def test_a_run_predicts_with_the_runtime_its_features_were_extracted_with_unless_told(made, calls, tmp_path):
    """Train was extracted with --runtime onnx: predict runs the run's extractor with ONNX Runtime by default (the
    cached cut, not exported again), --runtime keras overrides it; a run on a store extracted with Keras only, or with
    no store file to read, runs with Keras."""
    images = [made["data"] / "test"]
    predict(made["logreg"]["id"], images, store=made["store"])
    assert calls == {"start": [1], "export": []}
    predict(made["logreg"]["id"], images, store=made["store"], runtime="keras")
    assert calls["start"] == [1]
    keras_store = tmp_path / "k.h5"
    for split in ("train", "validation", "test"):
        extract(made["data"], split, keras_store, CUT, batch_size=6)
    rid = fit(keras_store, "logreg", {})["id"]
    predict(rid, images, store=keras_store)
    assert calls["start"] == [1]
    from featstore.runs.apply import recorded_runtime

    fp = made["logreg"]["fingerprint"]
    assert recorded_runtime(made["store"], fp) == "onnx" and recorded_runtime(keras_store, fp) == "keras"
    assert recorded_runtime(tmp_path / "none.h5", fp) == "keras" and recorded_runtime(made["store"], "other") == "keras"


def test_a_recorded_onnx_runtime_that_cannot_run_names_the_keras_option(made, monkeypatch):
    """The user did not ask for ONNX Runtime (the store's record did): when it cannot run (here: not installed), the
    message says why predict chose it and how to run with Keras."""
    real = onnx_runtime.check_runtime

    def missing(runtime, *a, **k):
        if runtime == "onnx":
            raise ConfigError('--runtime onnx needs onnxruntime: pip install "featstore[onnx]"')
        return real(runtime, *a, **k)

    monkeypatch.setattr(onnx_runtime, "check_runtime", missing)
    with pytest.raises(ConfigError, match=r"(?s)pip install.*extracted with --runtime onnx.*give --runtime keras"):
        predict(made["logreg"]["id"], [made["data"] / "test"], store=made["store"])


def test_cli_runtime_option_and_refusals(made):
    ok = run(
        "predict", "--run", made["logreg"]["id"], "--runtime", "onnx", "--store", made["store"], made["data"] / "test"
    )
    assert ok.exit_code == 0, ok.output
    assert len([ln for ln in ok.output.splitlines() if "\t" in ln]) == 6
    bad = run("predict", "--run", made["logreg"]["id"], "--runtime", "tflite", "--store", made["store"], made["data"])
    assert bad.exit_code != 0 and "runtime" in bad.output and "onnx" in bad.output and "Traceback" not in bad.output


def test_a_fine_tuned_run_is_refused_with_the_onnx_runtime():
    """A fine-tuned model is not a frozen extractor: refused before its model is loaded, naming the fix."""
    rec = SimpleNamespace(id="finetune-abc123")
    with pytest.raises(ConfigError, match="finetune-abc123 is a fine-tuned model.*leave out --runtime"):
        FinetuneKind().for_images(rec, None, ApplyOptions(runtime="onnx"))


class _Rec(dict):
    """A record stand-in: run.json keys as items and as attributes."""

    __getattr__ = dict.__getitem__


def test_an_ensemble_with_a_fine_tuned_member_is_refused_before_any_member_is_built(calls):
    """The fitted member comes first, but nothing is built or exported for it: every member is checked first."""
    fitted, tuned = _Rec(kind="fit", id="logreg-a"), _Rec(kind="finetune", id="finetune-b")
    ens = _Rec(kind="ensemble", id="ensemble-c", members=["logreg-a", "finetune-b"])
    found = {"logreg-a": (fitted, None), "finetune-b": (tuned, None)}
    with pytest.raises(ConfigError, match="finetune-b is a fine-tuned model"):
        EnsembleKind().for_images(ens, None, ApplyOptions(found.get, runtime="onnx"))
    assert calls == {"start": [], "export": []}


def test_a_run_of_mixed_precision_features_says_so_not_to_leave_out_an_option_predict_has_not(calls):
    from featstore.models.extractor import Extractor
    from featstore.runs.apply import rebuild_extractor

    attrs = Extractor(replace(TINY_CONFIG, mixed_precision=True)).attrs
    with pytest.raises(ConfigError, match="computed in mixed float16 .*leave out --runtime") as info:
        rebuild_extractor(attrs, runtime="onnx")
    assert "--mixed-precision:" not in str(info.value) and calls["start"] == []
