"""Fine-tuning (phase B) warm-started from a dense run (issue 11): the head really loads, what is frozen stays frozen,
the cached cut trains like the images do, seeds repeat, runs work like feature runs, and bad input is refused clearly."""

import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore import (
    ConfigError,
    DataError,
    ExtractorConfig,
    FeatureStore,
    WeightsError,
    ensemble,
    evaluate_run,
    extract,
    fit,
    list_runs,
    predict,
)
from featstore.cli import app
from featstore.experiments.finetune import FinetuneConfig, finetune, warm_start_model
from featstore.models.finetuned import preprocess_images
from featstore.runs.folder import get_run

from .conftest import write_images

SIZE = 32


@pytest.fixture(scope="module")
def ft(finetune_source_32):
    """Two classes, 8/4/4 images each, VGG16@32 with seeded random weights cut at block5_pool; a dense run and a logreg run."""
    made = finetune_source_32  # this module's copy of the session's finetune_source(root, SIZE)
    return {**made, "logreg": fit(made["store"], "logreg")["id"]}


def _weights(model) -> dict:
    return {lyr.name: [np.array(w) for w in lyr.get_weights()] for lyr in model.layers if lyr.weights}


def _saved(run, store):
    import keras

    rec, folder = get_run(run["id"], store)
    return keras.saving.load_model(folder / "model.keras", safe_mode=True, compile=False)


def test_warm_start_gives_the_phase_a_heads_outputs_and_loss_on_the_first_batch(ft):
    import keras

    rec, folder = get_run(ft["dense"], ft["store"])
    built = warm_start_model(rec, folder, FinetuneConfig("block5_conv1"))
    fs = FeatureStore(ft["store"])
    X, y = fs.load("train")
    paths = fs.paths("train")[:4]
    from featstore.images.listing import load_image

    images = np.stack([load_image(str(ft["data"] / p), SIZE) for p in paths])
    ours = np.asarray(built.model(preprocess_images(images, rec["extractor_attrs"]), training=False))[:, 0]
    from featstore.runs.artifacts import load_estimator

    phase_a = load_estimator(folder, rec["artifact"]).predict_proba(X[:4])[:, 1]
    np.testing.assert_allclose(ours, phase_a, rtol=1e-4, atol=1e-5)
    bce = keras.losses.BinaryCrossentropy()
    assert float(bce(y[:4].astype("float32"), ours)) == pytest.approx(
        float(bce(y[:4].astype("float32"), phase_a)), rel=1e-4
    )
    fresh = warm_start_model(rec, folder, FinetuneConfig("block5_conv1", from_scratch_head=True))
    assert not np.allclose(
        np.asarray(fresh.model(preprocess_images(images, rec["extractor_attrs"]), training=False))[:, 0], phase_a
    )


# the options of test_frozen_layers_keep_their_weights_unfrozen_ones_change_and_seeds_repeat's fine-tunings
FROZEN = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "augment": "flip,rotate=0.1", "seed": 5}


@pytest.fixture(scope="module")
def cli_tuned(ft):
    """``featstore finetune`` of ft's dense run from block5_conv2 with FROZEN's options (augmented, from the images):
    the CLI's result and the run it recorded, trained once for several tests. test_cli_finetune_trains_and_records_a_run
    checks the result; the seeds test trains the same options through the API and needs the same weights; the tests of
    evaluate/predict/ensemble/show and of crafted run folders (on copies) use it as their fine-tuning run."""
    runs = ft["store"].with_suffix(".runs")
    before = set(os.listdir(runs))
    options = [f"--{k.replace('_', '-')}={v}" for k, v in FROZEN.items()]
    res = CliRunner().invoke(
        app,
        ["finetune", "--run", ft["dense"], "--unfreeze-from", "block5_conv2", *options, "--store", str(ft["store"])],
    )
    new = sorted(set(os.listdir(runs)) - before)
    assert res.exit_code == 0 and len(new) == 1, (new, res.output)
    return res, new[0]


def test_cli_finetune_trains_and_records_a_run(cli_tuned):
    res, run_id = cli_tuned
    assert res.exit_code == 0, res.output
    assert "run finetune-" in res.output and "validation: accuracy" in res.output
    assert f"run {run_id}" in res.output and run_id.startswith("finetune-")


@pytest.mark.slow
def test_frozen_layers_keep_their_weights_unfrozen_ones_change_and_seeds_repeat(ft, cli_tuned):
    from featstore.experiments.predict import rebuild_extractor

    a, _ = get_run(cli_tuned[1], ft["store"])  # the CLI's fine-tuning with these options: trained once for the module
    b = finetune(ft["dense"], FinetuneConfig("block5_conv2", **FROZEN), store=ft["store"])
    c = finetune(ft["dense"], FinetuneConfig("block5_conv2", **{**FROZEN, "seed": 6}), store=ft["store"])
    assert a["params"] == b["params"] != c["params"]  # the same options through the CLI and the API
    assert a["weights_digest"] == b["weights_digest"] != c["weights_digest"]
    assert a["trainable_layers"] == ["block5_conv2", "block5_conv3", "head_dense", "head_out"]
    assert a["cached_cut"] == "" and a["params"]["augment"] == "flip=horizontal,rotate=0.1"
    before = _weights(rebuild_extractor(a["extractor_attrs"]).model)
    saved = _saved(a, ft["store"])
    after = _weights(saved)
    for name, ws in before.items():
        same = all(np.array_equal(w0, w1) for w0, w1 in zip(ws, after[name]))
        assert same == (name not in ("block5_conv2", "block5_conv3")), name
    assert not any("random" in lyr.name.lower() or "augment" in lyr.name for lyr in saved.layers)  # none at inference


@pytest.mark.slow
def test_cached_cut_trains_like_the_images_and_is_reused(ft, caplog):
    import logging

    cfg = FinetuneConfig("block5_conv1", epochs=2, batch_size=4, lr=1e-3)
    with caplog.at_level(logging.INFO, logger="featstore"):
        cached = finetune(ft["dense"], cfg, store=ft["store"])
    assert cached["cached_cut"] == "vgg16@block4_pool" and "cached in the store as 'vgg16@block4_pool'" in caplog.text
    images = finetune(
        ft["dense"], FinetuneConfig("block5_conv1", epochs=2, batch_size=4, lr=1e-3, cache=False), store=ft["store"]
    )
    assert images["cached_cut"] == ""
    np.testing.assert_allclose(cached["history"]["loss"], images["history"]["loss"], rtol=1e-4)
    wc, wi = _weights(_saved(cached, ft["store"])), _weights(_saved(images, ft["store"]))
    for name in wc:
        for x, y in zip(wc[name], wi[name]):
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5, err_msg=name)
    fs = FeatureStore(ft["store"])
    assert "vgg16@block4_pool" in fs.extractors() and fs.extractors(caches=False) == ["vgg16"]
    assert fs.resolve() == "vgg16"  # commands that take the store's only extractor still find the user's
    res = CliRunner().invoke(app, ["check", str(ft["store"])])
    assert res.exit_code == 0, res.output
    for split in ("validation", "test"):
        assert cached["metrics"][split]["accuracy"] == images["metrics"][split]["accuracy"]


@pytest.mark.slow
def test_finetune_runs_evaluate_predict_ensemble_and_show_like_feature_runs(ft, ft_run):
    run, _ = get_run(ft_run, ft["store"])  # the CLI's fine-tuning (cli_tuned): one run less to train
    assert run["kind"] == "finetune" and run["from_run"] == ft["dense"]
    assert evaluate_run(run["id"], "test", ft["store"]) == run["metrics"]["test"]
    rows = predict(run["id"], [ft["data"] / "test"], store=ft["store"])
    assert len(rows) == 8 and all(r["label"] in ("cat", "dog") for r in rows)
    both = ensemble([run["id"], ft["logreg"]], store=ft["store"])
    assert set(both["metrics"]) == {"validation", "test"}
    res = CliRunner().invoke(app, ["runs", "show", run["id"], "--store", str(ft["store"])])
    assert res.exit_code == 0, res.output
    assert f"phase B from {ft['dense']}" in res.output and "curves.png" in res.output
    # attack 14: calibrated on validation as a fit is (it said "recorded before featstore calibrated runs")
    assert run.calibration["method"] == "temperature" and run.calibration["fitted_on"] == "validation"
    assert "calibration: temperature" in res.output and "before_calibration" in run["metrics"]["test"]
    listed = CliRunner().invoke(app, ["runs", "--store", str(ft["store"])])
    assert f"from={ft['dense']},unfreeze=block5_conv2" in listed.output


@pytest.mark.slow
def test_a_fine_tuned_run_is_evaluated_a_batch_of_images_at_a_time(ft, ft_run, tmp_path, monkeypatch):
    """Issue 21: `runs evaluate` of a fine-tuned run predicted the whole split before scoring it (10^6 rows x 1,000
    classes: 8 GB); now each batch of images is scored and written to predictions.npz as it comes."""
    from featstore.experiments.evaluate import evaluate_and_record
    from featstore.runs import kinds, predictions_file

    runs = _runs_with(ft, tmp_path / "runs", ft["dense"], ft_run)
    whole = evaluate_run(ft_run, "train", ft["store"], runs)  # 16 images: one batch of kinds.IMAGE_BATCH
    monkeypatch.setattr(kinds, "IMAGE_BATCH", 3)
    written, real = [], predictions_file._ProbaMember.write
    monkeypatch.setattr(predictions_file._ProbaMember, "write", lambda self, b: written.append(len(b)) or real(self, b))
    rec, m, said = evaluate_and_record(ft_run, "train", ft["store"], runs)
    assert said.startswith("recorded") and written == [3, 3, 3, 3, 3, 1], written
    assert m["n"] == whole["n"] == 16 and m["accuracy"] == whole["accuracy"]
    assert m["confusion_matrix"] == whole["confusion_matrix"]
    assert m["log_loss"] == pytest.approx(whole["log_loss"], rel=1e-5)  # the model's batches differ: float noise only


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"unfreeze_from": "block5_conv9"}, ConfigError, "did you mean block5_conv3, block5_conv2, block5_conv1"),
        ({"unfreeze_from": "block5_pool"}, ConfigError, "nothing of the backbone would train"),
        ({"unfreeze_from": "block5_conv1", "lr": 0.0}, ConfigError, "--lr must be a positive number"),
        ({"unfreeze_from": "block5_conv1", "lr": -1e-5}, ConfigError, "--lr must be a positive number"),
        ({"unfreeze_from": "block5_conv1", "augment": "blur"}, ConfigError, "choose one of: flip"),
        ({"unfreeze_from": "block5_conv1", "optimizer": "adagrad"}, ConfigError, "rmsprop, adam, sgd"),
        ({"unfreeze_from": "block5_conv1", "epochs": 0}, ConfigError, "--epochs must be an integer of at least 1"),
    ],
)
def test_bad_options_are_refused_with_what_is_valid(ft, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        finetune(ft["dense"], FinetuneConfig(**kwargs), store=ft["store"])


def test_unknown_layer_lists_the_layers_that_can_be_unfrozen(ft):
    with pytest.raises(
        ConfigError, match=r"layers that can be unfrozen .*block5_pool'\): block1_conv1 \.\.\. block5_conv3"
    ):
        finetune(ft["dense"], FinetuneConfig("conv_nothing"), store=ft["store"])


def test_a_layer_above_the_cut_is_explained(tmp_path):
    data = tmp_path / "data"
    for split, seed in (("train", 1), ("validation", 2)):
        write_images(data, split, {"cat": 3, "dog": 3}, seed=seed)
    store = tmp_path / "f.h5"
    cfg = ExtractorConfig(model="vgg16", image_size=SIZE, weights="none", seed=7, layer="block4_pool")
    for split in ("train", "validation"):
        extract(data, split, store, cfg)
    run = fit(store, "dense", {"epochs": [1], "units": [8]})
    with pytest.raises(ConfigError, match="block5_conv1 is above the store's cut layer 'block4_pool'.*block4_conv3"):
        finetune(run["id"], FinetuneConfig("block5_conv1"), store=store)


def test_only_a_dense_run_warm_starts_and_the_error_offers_from_scratch_head(ft):
    with pytest.raises(ConfigError, match="only a dense head can be warm-started.*--from-scratch-head"):
        finetune(ft["logreg"], FinetuneConfig("block5_conv1"), store=ft["store"])


def test_image_folders_with_other_classes_are_refused(ft, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ft["data"], other)
    for split in ("train", "validation"):
        (other / split / "dog").rename(other / split / "wolf")
    with pytest.raises(
        DataError, match=r"class folders .* are \['cat', 'wolf'\], but the run was fitted on \['cat', 'dog'\]"
    ):
        finetune(ft["dense"], FinetuneConfig("block5_conv1"), store=ft["store"], data=other)


def test_changed_images_are_refused(ft, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(ft["data"], other)
    (other / "train" / "cat" / "img_000.png").unlink()
    with pytest.raises(DataError, match="changed since the store was extracted \\(0 added, 1 removed"):
        finetune(ft["dense"], FinetuneConfig("block5_conv1"), store=ft["store"], data=other)


def test_weights_other_than_the_stores_are_refused(tmp_path, vgg16_weights_file):
    import keras

    data = tmp_path / "data"
    for split, seed in (("train", 1), ("validation", 2)):
        write_images(data, split, {"cat": 3, "dog": 3}, seed=seed)
    store = tmp_path / "f.h5"
    for split in ("train", "validation"):
        extract(data, split, store, ExtractorConfig(model="vgg16", image_size=SIZE, weights=str(vgg16_weights_file)))
    run = fit(store, "dense", {"epochs": [1], "units": [8]})
    keras.utils.set_random_seed(99)
    other = tmp_path / "other.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(other)
    with pytest.raises(WeightsError, match="not the ones the run was fitted on"):
        finetune(run["id"], FinetuneConfig("block5_conv1"), store=store, weights=str(other))


def _bn_cnn(seed: int = 0):
    """conv1 -> bn1 -> conv2 -> pool -> flatten -> hidden -> out: a small RGB model with BatchNormalization."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    return keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(x))


def test_batchnorm_statistics_stay_unchanged_and_layers_above_it_train(tmp_path):
    model = _bn_cnn()
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(np.linspace(0.1, 0.4, 4).astype("float32"))  # not the defaults: a reset would show
    bn.moving_variance.assign(np.linspace(1.5, 2.5, 4).astype("float32"))
    path = tmp_path / "bn.keras"
    model.save(path)
    data = tmp_path / "data"
    for split, seed in (("train", 1), ("validation", 2)):
        write_images(data, split, {"a": 4, "b": 4}, seed=seed, size=20)
    store = tmp_path / "f.h5"
    for split in ("train", "validation"):
        extract(data, split, store, ExtractorConfig(model=str(path), layer="pool"))
    run = fit(store, "dense", {"epochs": [1], "units": [8]})
    tuned = finetune(run["id"], FinetuneConfig("conv1", epochs=2, batch_size=4, lr=1e-2, cache=False), store=store)
    assert "bn1" not in tuned["trainable_layers"] and {"conv1", "conv2"} <= set(tuned["trainable_layers"])
    after = _weights(_saved(tuned, store))
    for w0, w1 in zip(bn.get_weights(), after["bn1"]):
        np.testing.assert_array_equal(w0, w1)
    assert not np.array_equal(model.get_layer("conv1").get_weights()[0], after["conv1"][0])


# ------------------------------------------------------------------ crafted finetune run folders (attacker rewrites sha256 values too)
@pytest.fixture(scope="module")
def ft_run(cli_tuned):
    """One fine-tuning of ft's dense run (the CLI's, see cli_tuned), to damage copies of."""
    return cli_tuned[1]


def _runs_with(ft, dest, *run_ids):
    """``dest``: a runs folder holding copies of only these run folders of ft's store. A copy of the whole folder took
    seconds per test: it holds every fine-tuning the module recorded, each a ~57 MB model.keras."""
    for run_id in run_ids:
        shutil.copytree(ft["store"].with_suffix(".runs") / run_id, dest / run_id)
    return dest


def _edit(folder, **changes):
    rec = json.loads((folder / "run.json").read_text())
    rec.update(changes)
    (folder / "run.json").write_text(json.dumps(rec))
    return rec


def _swap_model(make):
    """Replace model.keras by ``make()`` and reseal its sha256 in run.json."""

    def damage(folder, rec):
        from featstore.models.weights import sha256_file

        (folder / "model.keras").unlink()
        make().save(folder / "model.keras")
        _edit(
            folder,
            artifact={
                **rec["artifact"],
                "sha256": sha256_file(folder / "model.keras"),
                "size": (folder / "model.keras").stat().st_size,
            },
        )

    return damage


def _tiny(units: int, shape=(SIZE, SIZE, 3), nan: bool = False, activation="softmax"):
    def make():
        import keras

        m = keras.Sequential(
            [keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(units, activation=activation)]
        )
        if nan:
            m.layers[-1].set_weights(
                [np.full(m.layers[-1].kernel.shape, np.nan, "float32"), np.zeros(units, "float32")]
            )
        return m

    return make


# (id, damage(folder, record), outcome, message): "broken" = listed as broken by `featstore runs` and refused by `runs show`;
# "apply" = refused by `runs evaluate` and `predict` when the model meets images; "show" = `runs show` works
FINETUNE_RUN_CASES = [
    ("params_empty", lambda d, r: _edit(d, params={}), "broken", "params of the fine-tuning lacks lr"),
    (
        "params_lr_a_string",
        lambda d, r: _edit(d, params={**r["params"], "lr": "fast"}),
        "broken",
        "lr must be int or float",
    ),
    (
        "params_flag_a_string",
        lambda d, r: _edit(d, params={**r["params"], "from_scratch_head": "no"}),
        "broken",
        "from_scratch_head must be bool",
    ),
    ("trainable_layers_a_number", lambda d, r: _edit(d, trainable_layers=5), "broken", "trainable_layers must be list"),
    ("weights_digest_a_number", lambda d, r: _edit(d, weights_digest=5), "broken", "weights_digest must be str"),
    (
        "seconds_per_epoch_a_string",
        lambda d, r: _edit(d, seconds_per_epoch="slow"),
        "broken",
        "seconds_per_epoch must be int or float",
    ),
    (
        "history_strings",
        lambda d, r: _edit(d, phase_a_history={"loss": ["x"]}),
        "broken",
        "phase_a_history must map names to lists",
    ),
    (
        "no_fit_seconds",
        lambda d, r: (d / "run.json").write_text(json.dumps({k: v for k, v in r.items() if k != "fit_seconds"})),
        "show",
        "",
    ),
    (
        "model_of_three_classes",
        _swap_model(_tiny(3)),
        "apply",
        r"gives outputs \(None, 3\), but .*records \(32, 32, 3\) images and 2 classes",
    ),
    (
        "model_of_other_input",
        _swap_model(_tiny(1, shape=(64, 64, 3), activation="sigmoid")),
        "apply",
        r"takes inputs \(None, 64, 64, 3\)",
    ),
    (
        "model_gives_nan",
        _swap_model(_tiny(1, nan=True, activation="sigmoid")),
        "apply",
        "NaN, inf, probabilities outside",
    ),
    ("model_gives_logits", _swap_model(_tiny(1, activation="linear")), "apply", "NaN, inf, probabilities outside"),
]


@pytest.mark.parametrize("case_id, damage, outcome, needle", FINETUNE_RUN_CASES, ids=[c[0] for c in FINETUNE_RUN_CASES])
def test_crafted_finetune_run_folder(ft, ft_run, tmp_path, case_id, damage, outcome, needle):
    from featstore import StoreError

    runs = _runs_with(ft, tmp_path / "runs", ft["dense"], ft_run)  # the fine-tuning and its phase A
    rec = json.loads((runs / ft_run / "run.json").read_text())
    damage(runs / ft_run, rec)
    table = CliRunner().invoke(app, ["runs", "--store", str(ft["store"]), "--runs", str(runs)])
    assert table.exit_code == 0 and "Traceback" not in table.output, table.output
    shown = CliRunner().invoke(app, ["runs", "show", ft_run, "--store", str(ft["store"]), "--runs", str(runs)])
    assert not isinstance(shown.exception, Exception) or isinstance(shown.exception, SystemExit), shown.exception
    if outcome == "broken":
        assert "broken run folder" in table.output and needle in table.output.replace("\n", " ")
        assert shown.exit_code == 1 and needle in shown.output.replace("\n", " ")
        return
    assert shown.exit_code == 0, shown.output
    if outcome == "apply":
        with pytest.raises(StoreError, match=needle):
            evaluate_run(ft_run, "test", ft["store"], runs)
        with pytest.raises(StoreError, match=needle):
            predict(ft_run, [ft["data"] / "test" / "cat"], store=ft["store"], runs=runs)
        res = CliRunner().invoke(app, ["runs", "evaluate", ft_run, "--store", str(ft["store"]), "--runs", str(runs)])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output


def test_a_fit_run_with_a_phase_a_history_still_shows(ft, tmp_path):
    runs = _runs_with(ft, tmp_path / "runs", ft["logreg"])
    rec = json.loads((runs / ft["logreg"] / "run.json").read_text())
    _edit(runs / ft["logreg"], phase_a_history={"loss": [1.0, 0.5]})
    res = CliRunner().invoke(app, ["runs", "show", ft["logreg"], "--store", str(ft["store"]), "--runs", str(runs)])
    assert res.exit_code == 0 and rec["id"] in res.output, res.output


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"unfreeze_from": ""}, "--unfreeze-from must name a layer"),
        ({"unfreeze_from": None}, "--unfreeze-from must name a layer"),
        ({"unfreeze_from": "block5_conv3", "seed": -1}, "--seed must be an integer of at least 0"),
        ({"unfreeze_from": "block5_conv3", "seed": 2**40}, "--seed must be at most"),
        ({"unfreeze_from": "block5_conv3", "seed": True}, "--seed must be an integer"),
        ({"unfreeze_from": "block5_conv3", "epochs": True}, "--epochs must be an integer"),
        ({"unfreeze_from": "block5_conv3", "lr": True}, "--lr must be a positive number"),
        ({"unfreeze_from": "block5_conv3", "lr": float("nan")}, "--lr must be a positive number"),
        ({"unfreeze_from": "block5_conv3", "augment": "rotate=nan"}, "give a number above 0"),
        ({"unfreeze_from": "block5_conv3", "augment": "zoom=1e309"}, "give a number above 0"),
        ({"unfreeze_from": "block5_conv3", "memory_budget": "lots"}, "--memory-budget 'lots' is not a size"),
        ({"unfreeze_from": "block5_conv3", "memory_budget": 0}, "--memory-budget must be a size"),
        ({"unfreeze_from": "block5_conv3", "memory_budget": True}, "--memory-budget must be a size"),
    ],
)
def test_odd_option_values_are_refused_before_any_work(ft, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        finetune(ft["dense"], FinetuneConfig(**kwargs), store=ft["store"])


def test_a_diverging_fine_tuning_says_lower_the_lr_and_records_nothing(ft):
    before = {r["id"] for r in list_runs(ft["store"])}
    with pytest.raises(ConfigError, match="fine-tuning diverged.*Lower --lr"):
        finetune(ft["dense"], FinetuneConfig("block5_conv1", epochs=1, batch_size=4, lr=1e30), store=ft["store"])
    assert {r["id"] for r in list_runs(ft["store"])} == before


def _unreadable_copy(ft, tmp_path):
    """A copy of ft's data whose train/cat/img_000.png is garbage of the same size and mtime (the listing check cannot see it)."""
    import os

    other = tmp_path / "data"
    shutil.copytree(ft["data"], other)
    bad = other / "train" / "cat" / "img_000.png"
    st = bad.stat()
    bad.write_bytes(b"\0" * st.st_size)
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    return other


def test_an_image_unreadable_now_is_named_not_a_tensorflow_error(ft, tmp_path):
    other = _unreadable_copy(ft, tmp_path)
    with pytest.raises(DataError, match=r"img_000.png was extracted into the store but cannot be read now"):
        finetune(
            ft["dense"],
            FinetuneConfig("block5_conv3", epochs=1, batch_size=4, cache=False),
            store=ft["store"],
            data=other,
        )


def test_an_image_unreadable_now_is_named_when_caching(ft, tmp_path):
    store = tmp_path / "f.h5"
    shutil.copy(ft["store"], store)
    _runs_with(ft, store.with_suffix(".runs"), ft["dense"])
    other = _unreadable_copy(ft, tmp_path)
    with pytest.raises(Exception, match=r"lacks 1 of them \(e.g. train/cat/img_000.png\), which cannot be read now"):
        # a cut no other test caches: a complete cached group would never read the image again (and need not)
        finetune(ft["dense"], FinetuneConfig("block4_conv3", epochs=1, batch_size=4), store=store, data=other)


def test_a_group_in_the_way_of_the_cached_cut_offers_no_cache(ft, tmp_path):
    from featstore import StoreError

    store = tmp_path / "f.h5"
    shutil.copy(ft["store"], store)
    _runs_with(ft, store.with_suffix(".runs"), ft["dense"])
    extract(
        ft["data"],
        "train",
        store,
        ExtractorConfig(model="vgg16", image_size=SIZE, weights="none", seed=7, layer="block5_conv1", pooling="avg"),
        name="vgg16@block5_conv1",
    )
    with pytest.raises(StoreError, match=r"(?s)already holds an extractor named 'vgg16@block5_conv1'.*pass --no-cache"):
        finetune(ft["dense"], FinetuneConfig("block5_conv2", epochs=1, batch_size=4), store=store)


def test_rebatch_gives_full_batches_across_blocks():
    from featstore.experiments.finetune_cache import rebatch

    blocks = [(np.arange(a, b), np.arange(a, b)) for a, b in ((0, 3), (3, 4), (4, 11), (11, 13))]
    out = list(rebatch(iter(blocks), 4))
    assert [len(y) for _, y in out] == [4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in out]), np.arange(13))


def test_cached_cut_over_the_memory_budget_is_streamed_not_loaded(ft, tmp_path, monkeypatch):
    """Issue 21: the cached path loaded the cut's train and validation arrays whole (a 10⁶-image cut does not fit in
    memory). Over --memory-budget they are streamed in shuffled blocks of whole chunks; within it, loaded as before
    (the image path's order, the same history)."""
    import shutil

    from featstore.store import writer

    store = tmp_path / "f.h5"
    shutil.copy(ft["store"], store)
    _runs_with(ft, store.with_suffix(".runs"), ft["dense"])
    monkeypatch.setattr(writer, "CHUNK_BYTES", 8192)  # the cut (2, 2, 512) float32 is 8 KiB a row: one row a chunk
    loaded = []
    real_load = FeatureStore.load
    monkeypatch.setattr(
        FeatureStore,
        "load",
        lambda self, split, ext=None, **kw: loaded.append((split, ext)) or real_load(self, split, ext, **kw),
    )
    cfg = FinetuneConfig("block5_conv2", epochs=2, batch_size=3, lr=1e-3, memory_budget="40KB")
    streamed = finetune(ft["dense"], cfg, store=store)
    group = streamed["cached_cut"]
    assert group == "vgg16@block5_conv1" and streamed["streamed"] and streamed["memory_budget"] == 40_000
    assert not [s for s, ext in loaded if ext == group]  # neither train nor validation of the cut loaded whole
    assert len(streamed["history"]["loss"]) >= 1 and np.isfinite(streamed["history"]["loss"]).all()
    # within the budget: the arrays loaded whole, trained as without a budget (one epoch: the same loss is the check)
    within = finetune(
        ft["dense"], FinetuneConfig("block5_conv2", epochs=1, batch_size=3, lr=1e-3, memory_budget="1GB"), store=store
    )
    plain = finetune(ft["dense"], FinetuneConfig("block5_conv2", epochs=1, batch_size=3, lr=1e-3), store=store)
    assert within["streamed"] is False and (group and [s for s, ext in loaded if ext == group])
    assert within["history"]["loss"] == plain["history"]["loss"]
    with pytest.raises(ConfigError, match=r"--memory-budget 8 kB \(7.81 KiB\) is too small"):
        finetune(ft["dense"], FinetuneConfig("block5_conv2", epochs=1, batch_size=3, memory_budget="8KB"), store=store)
    res = CliRunner().invoke(app, ["runs", "show", streamed["id"], "--store", str(store)])
    assert res.exit_code == 0 and "streamed within 40 kB" in res.output, res.output


def test_memory_budget_without_a_cached_cut_is_refused_not_ignored(ft):
    """With --no-cache or --augment the images are read batch by batch: a --memory-budget was recorded and did
    nothing (attack 10's note); it is refused before training."""
    for extra in ({"cache": False}, {"augment": "flip"}):
        with pytest.raises(ConfigError, match="leave --memory-budget out"):
            finetune(
                ft["dense"], FinetuneConfig("block5_conv3", epochs=1, memory_budget="1GB", **extra), store=ft["store"]
            )


class _Tracked(np.ndarray):
    """Probabilities the model gave (and every array numpy derives from them): each one is known while it lives."""

    alive: list = []

    def __array_finalize__(self, obj):
        import weakref

        _Tracked.alive.append(weakref.ref(self))


@pytest.fixture(scope="module")
def streamed_ft(ft, tmp_path_factory):
    """A fine-tuning recorded with ``kinds.IMAGE_BATCH`` = 3 and an evaluation budget whose read-back blocks are 2
    rows (logits never kept whole): the rows of every probability block written, read back, turned into logits or
    per-row figures, and the rows of the model's probabilities still alive each time a new batch is predicted."""
    import gc

    from featstore.experiments import finetune as ft_mod
    from featstore.models.finetuned import FinetunedModel
    from featstore.runs import kinds, predictions_file
    from featstore.stats import calibration as stats_cal
    from featstore.stats import figures

    store = tmp_path_factory.mktemp("streamed") / "f.h5"
    shutil.copy(ft["store"], store)
    _runs_with(ft, store.with_suffix(".runs"), ft["dense"])
    seen = {key: [] for key in ("written", "read", "logits", "figures", "held", "whole", "model")}
    real = {
        "write": predictions_file._ProbaMember.write,
        "blocks": predictions_file.PredictionsWriter.blocks,
        "as_logits": stats_cal.as_logits,
        "of": figures.RowFigures.of.__func__,
        "proba": FinetunedModel.proba,
    }

    def blocks(self, split, rows):
        for block in real["blocks"](self, split, rows):
            seen["read"].append(len(block))
            yield block

    def proba(self, images, batch_size=32):
        gc.collect()
        alive = [a for r in _Tracked.alive if (a := r()) is not None and a.ndim == 2 and a.flags.owndata]
        seen["held"].append(sum(len(a) for a in alive))
        seen["model"][:] = [self]
        p = real["proba"](self, images, batch_size)
        out = _Tracked(p.shape, p.dtype)
        out[...] = p
        return out

    _Tracked.alive = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kinds, "IMAGE_BATCH", 3)
        mp.setattr(ft_mod, "EVAL_BUDGET", 4 * 2 * predictions_file.PROBA_COPIES * 8 * 2)  # 2 rows of 2 classes a read
        mp.setattr(
            predictions_file._ProbaMember, "write", lambda s, b: seen["written"].append(len(b)) or real["write"](s, b)
        )
        mp.setattr(predictions_file.PredictionsWriter, "blocks", blocks)
        mp.setattr(predictions_file.PredictionsWriter, "add", lambda s, split, p, *a: seen["whole"].append(len(p)))
        mp.setattr(stats_cal, "as_logits", lambda v, *a: seen["logits"].append(len(v)) or real["as_logits"](v, *a))
        mp.setattr(
            figures.RowFigures, "of", classmethod(lambda c, y, p: seen["figures"].append(len(p)) or real["of"](c, y, p))
        )
        mp.setattr(FinetunedModel, "proba", proba)
        rec = finetune(ft["dense"], FinetuneConfig("block5_conv3", epochs=1, batch_size=4, cache=False), store=store)
    return rec, store, seen


@pytest.mark.slow
def test_finetune_records_its_evaluation_a_batch_of_images_at_a_time(streamed_ft):
    """Issue 21: finetune predicted its validation and test splits whole, calibrated and scored the (N, K) arrays and
    wrote them at once (10⁵ rows x 1,000 classes: 800 MB a split). Now, as `runs evaluate` does, each batch of images
    is written to predictions.npz as it is predicted, the temperature is fitted on validation read back in blocks, and
    the figures come from per-row numbers: no step sees more than one batch's rows (3 here; 8 images a split)."""
    rec, _, seen = streamed_ft
    assert rec["splits"] == {"train": 16, "validation": 8, "test": 8} and not seen["whole"]
    assert seen["written"] == [3, 3, 2] * 2, seen["written"]  # validation, then test: one block a batch of images
    assert seen["read"] and max(seen["read"]) <= 2, seen["read"]  # validation read back (temperature, figures)
    assert seen["logits"] and max(seen["logits"]) <= 3, seen["logits"]  # never the whole split's logits
    assert seen["figures"] and max(seen["figures"]) <= 3, seen["figures"]
    assert len(seen["held"]) == 6 and max(seen["held"]) <= 3, seen["held"]  # only the last batch alive at each predict


@pytest.mark.slow
def test_finetunes_streamed_figures_are_the_whole_arrays(ft, streamed_ft):
    """The recorded figures and temperature are the whole stored arrays' exactly, and the ones the model's whole-split
    prediction (what finetune did before) gives up to the model's batch-size float noise."""
    from featstore.experiments.calibration import calibrate_on_validation
    from featstore.experiments.evaluate import run_metrics
    from featstore.runs.apply import split_images, split_proba
    from featstore.runs.files import json_default

    plain = lambda obj: json.loads(json.dumps(obj, default=json_default))  # noqa: E731 - as run.json holds it

    rec, store, seen = streamed_ft
    _, folder = get_run(rec["id"], store)
    with np.load(folder / "predictions.npz") as z:
        stored = {s: (z[f"{s}__proba"], z[f"{s}__labels"]) for s in ("validation", "test")}
    cal = calibrate_on_validation(*stored["validation"])
    assert rec["calibration"] == plain(cal) and cal["method"] == "temperature"
    got = rec.to_json()["metrics"]
    fs, model = FeatureStore(store), seen["model"][0]
    old = {}
    for split, (proba, y) in stored.items():
        want = run_metrics(y, proba.argmax(axis=1), list(rec.class_names), proba, cal)
        assert got[split] == plain(want), split
        images = split_images(fs, rec.extractor, split, ft["data"], list(rec.class_names))
        old[split] = (np.asarray(split_proba(images, model.image_size, 2, model.proba)), images.labels)
    old_cal = calibrate_on_validation(*old["validation"])
    assert old_cal["T"] == pytest.approx(cal["T"], rel=1e-4)
    for split, (proba, y) in old.items():
        before = run_metrics(y, proba.argmax(axis=1), list(rec.class_names), proba, old_cal)
        assert (
            got[split]["accuracy"] == before["accuracy"]
            and got[split]["confusion_matrix"] == before["confusion_matrix"]
        )
        assert got[split]["log_loss"] == pytest.approx(before["log_loss"], rel=1e-5)
        assert got[split]["ece"] == pytest.approx(before["ece"], rel=1e-4, abs=1e-6)


def test_split_images_reads_the_stored_listing_only_when_the_images_changed(ft, monkeypatch):
    """A fine-tuned run checks that the folder still holds the images the store was extracted from: the recorded
    digest first, the stored listing (10⁶ tuples at a million images) only when the digests differ, to name the
    change."""
    from featstore.runs.apply import split_images

    fs = FeatureStore(ft["store"])
    name = fs.resolve(None)
    read = []
    monkeypatch.setattr(FeatureStore, "listing", lambda self, *a: read.append(a) or [])
    images = split_images(fs, name, "test", ft["data"], fs.class_names(name))
    assert len(images.paths) == 8 and not read
    monkeypatch.setattr(FeatureStore, "split_info", lambda self, *a, **k: {"listing_sha256": "other"})
    with pytest.raises(DataError, match="changed since the store was extracted"):
        split_images(fs, name, "test", ft["data"], fs.class_names(name))
    assert read
