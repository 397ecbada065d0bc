"""Attack 52: class scores stored as features, a recorded batch size trusted to size a read, copies of several groups
held to the first group's split, and a fine-tuning's cache told to use --overwrite.

#1 A saved model ending in a softmax over logits the default-cut walk did not see (a nested logits backbone, an
EinsumDense, a convolution with a softmax before a pooling) was cut at its output: its probabilities were stored, said as
"it does not end in a classifier". #2 Keras's MobileNets saved with ``classifier_activation=None`` were cut at their
logits; with the softmax, before their 1x1-convolution classifier. #3 The copies' first-batch check read, decoded and
ran as many rows at once as the split's ``batch_size`` attribute said (2**31-1: the whole split). #4 Copies of several
``--layer`` groups were checked against, and mapped onto the rows of, the first group's split only. #5 A fine-tuning
cache's "cannot be read now" refusal named --overwrite, which finetune does not have.
"""

from __future__ import annotations

import logging
import os
import shlex

import h5py
import pytest

from featstore import ExtractorConfig, StoreError, extract
from featstore.errors import ConfigError

from .conftest import interrupt_after_one_batch

# ---------------------------------------------------------------------------------------------------------------- #1


def _scores_models(folder):
    """name -> (saved file, what its default cut must be: a layer name, or None for a refusal naming --layer)."""
    import keras

    L = keras.layers
    made = {}

    def save(name, model, cut):
        model.save(folder / f"{name}.keras")
        made[name] = (folder / f"{name}.keras", cut)

    def conv_logits():  # SqueezeNet's logits (a 1x1 convolution to the classes, pooled), its softmax outside it
        x = keras.Input((32, 32, 3))
        h = L.Conv2D(10, 1, name="logits_conv")(L.Conv2D(8, 3, activation="relu", name="c1")(x))
        return keras.Model(x, L.GlobalAveragePooling2D(name="gap")(h), name="backbone")

    x = keras.Input((32, 32, 3))
    save("nested_softmax", keras.Model(x, L.Softmax(name="probs")(conv_logits()(x))), None)
    h = L.GlobalAveragePooling2D(name="pooled")(L.Conv2D(8, 3, name="c1")(x))
    fc = L.EinsumDense("ab,bc->ac", output_shape=10, name="fc")
    save("einsum_softmax", keras.Model(x, L.Softmax(name="probs")(fc(h))), "pooled")
    c1 = L.Conv2D(8, 3, name="c1")(x)
    for name, conv in (("conv", L.Conv2D), ("separable", L.SeparableConv2D)):
        scores = conv(10, 1, activation="softmax", name="cls")(c1)  # per position, then averaged
        save(f"{name}_softmax_gap", keras.Model(x, L.GlobalAveragePooling2D(name="gap")(scores)), "c1")
    # class scores behind which the only layer of weights is no classifier featstore knows: refused, not stored
    h = L.PReLU(name="prelu")(L.GlobalAveragePooling2D(name="pooled")(L.Conv2D(8, 3, name="c1")(x)))
    save("scores_no_head", keras.Model(x, L.Softmax(name="probs")(h)), None)
    save("features", keras.Model(x, L.GlobalAveragePooling2D(name="gap")(L.Conv2D(8, 3, name="c1")(x))), "gap")
    return made


@pytest.fixture(scope="module")
def scores_models(tmp_path_factory):
    return _scores_models(tmp_path_factory.mktemp("scores"))


@pytest.mark.parametrize(
    "name", ["nested_softmax", "einsum_softmax", "conv_softmax_gap", "separable_softmax_gap", "scores_no_head"]
)
def test_class_scores_are_never_the_default_cut(scores_models, name, caplog):
    """Each is cut before its real head, or its default cut is refused in one line naming --layer; `featstore models
    --layers` marks the same default cut, or none."""
    from featstore.models.extractor import Extractor
    from featstore.report.tables import layers_table

    path, cut = scores_models[name]
    table = layers_table(str(path))
    config = ExtractorConfig(model=str(path))
    if cut is None:
        with pytest.raises(ConfigError) as err:
            Extractor(config)
        line = str(err.value)
        assert line.startswith(f"{name}.keras has no default cut: ") and "Pass --layer NAME" in line, line
        assert "\n" not in line and "default cut" not in table
        return
    with caplog.at_level(logging.INFO, logger="featstore.models.extractor"):
        built = Extractor(config)
    assert built.outputs[0][0] == cut
    assert f"cutting at {cut!r}, the layer feeding its classifier" in caplog.text, caplog.text
    assert [r for r in table.splitlines() if "default cut" in r][0].split()[0] == cut


def test_the_scores_without_a_head_line_names_the_scores(scores_models):
    from featstore.models.extractor import Extractor

    with pytest.raises(ConfigError, match=r"its output is class scores \('probs'\) with no layer of weights behind"):
        Extractor(ExtractorConfig(model=str(scores_models["scores_no_head"][0])))


def test_does_not_end_in_a_classifier_is_said_only_of_features(scores_models, tmp_path, caplog):
    """The log line is said of a features model, whose output is stored; it was said of the models above."""
    from tests.conftest import write_data_root

    data = write_data_root(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="featstore.models.extractor"):
        r = extract(data, "train", tmp_path / "f.h5", ExtractorConfig(model=str(scores_models["features"][0])))
    assert "cutting at 'gap', its last layer (it does not end in a classifier)" in caplog.text
    assert r.feature_shape == (8,)


# ---------------------------------------------------------------------------------------------------------------- #2


def _feeder(model, name: str) -> str:
    layer = model.get_layer(name)
    return layer._inbound_nodes[0].input_tensors[0]._keras_history.operation.name


@pytest.fixture(scope="module")
def mobilenets():
    import keras

    apps = keras.applications
    built = {}
    for act in ("softmax", None):
        built["v1", act] = apps.MobileNet(input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=act)
        built["v3", act] = apps.MobileNetV3Small(
            input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=act
        )
    return built


@pytest.mark.parametrize("act", ["softmax", None])
@pytest.mark.parametrize(("version", "head"), [("v1", "conv_preds"), ("v3", "logits")])
def test_keras_mobilenets_are_cut_before_their_convolution_classifier_with_or_without_softmax(
    mobilenets, version, head, act
):
    from featstore.models.saved import default_cut, no_default_cut

    model = mobilenets[version, act]
    assert default_cut(model) == _feeder(model, head) and not no_default_cut(model)


def test_a_fully_convolutional_features_model_is_still_cut_at_its_output():
    import keras

    from featstore.models.saved import default_cut

    L = keras.layers
    x = keras.Input((32, 32, 3))
    h = L.Conv2D(16, 1, name="c2")(L.Conv2D(8, 3, strides=2, name="c1")(x))  # 15x15 positions: features per position
    assert default_cut(keras.Model(x, L.Flatten(name="flat")(h))) == "flat"
    assert default_cut(keras.Model(x, L.GlobalAveragePooling2D(name="gap")(h))) == "gap"
    notop = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, include_top=False, pooling="avg")
    assert default_cut(notop) == notop.layers[-1].name


# ---------------------------------------------------------------------------------------------------------------- #3


def _forward_sizes(monkeypatch) -> list[int]:
    from featstore.extraction.local import LocalEngine

    sizes, real = [], LocalEngine.forward
    monkeypatch.setattr(LocalEngine, "forward", lambda self, p, t=None: sizes.append(len(p)) or real(self, p, t))
    return sizes


def test_a_batch_size_attribute_over_extracts_bound_is_refused_as_damaged(
    data_root, tiny_config, tmp_path, monkeypatch
):
    """A crafted batch_size of 2**31-1: the copies' check read and ran the whole split at once. A row of tiny_config is
    2 KiB: a batch of 4 fits the bound set here, the split's 12 rows do not."""
    from featstore.extraction import pipeline

    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=4)
    with h5py.File(store, "r+") as f:
        f["vgg16"]["train"].attrs["batch_size"] = 2**31 - 1
    monkeypatch.setattr(pipeline, "MAX_BATCH_BYTES", 2048 * 8)
    sizes = _forward_sizes(monkeypatch)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    line = str(err.value)
    assert "records batch_size=2147483647" in line and "the split is damaged" in line and "--overwrite" in line, line
    assert "--batch-size" not in line and "\n" not in line
    assert sizes == []  # nothing decoded and run for the check
    with h5py.File(store, "r") as f:
        assert "augmented" not in f["vgg16"]["train"]


def test_a_first_call_this_process_cannot_hold_is_refused_without_naming_batch_size(
    data_root, tiny_config, tmp_path, monkeypatch
):
    from featstore.models.room import Room

    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=12)  # one call of 12: the copies' check keeps it
    monkeypatch.setattr("featstore.extraction.same_numerics.memory_room", lambda: Room(1000, "a test's limit"))
    sizes = _forward_sizes(monkeypatch)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    line = str(err.value)
    assert "was made in calls of 12 images (its batch_size attribute)" in line and "held by a test's limit" in line
    assert "--batch-size" not in line and sizes == [], line


def test_the_checks_out_of_memory_does_not_say_to_lower_batch_size(data_root, tiny_config, tmp_path, monkeypatch):
    from featstore.models.extractor import Extractor

    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=12)
    real = Extractor.features

    def features(self, images):
        if len(images) == 12:
            raise MemoryError("Unable to allocate")
        return real(self, images)

    monkeypatch.setattr(Extractor, "features", features)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    line = str(err.value)
    assert "ran out of memory computing its first call of 12 images again" in line and "--batch-size" not in line


def test_a_batch_size_attribute_within_the_bounds_still_checks_the_split_as_made(
    data_root, tiny_config, tmp_path, monkeypatch
):
    store = tmp_path / "f.h5"
    extract(data_root, "train", store, tiny_config, batch_size=8)
    sizes = _forward_sizes(monkeypatch)
    r = extract(data_root, "train", store, tiny_config, batch_size=4, augment=1)
    assert r.augmented.rows == 12 and sizes[0] == 8 and max(sizes[1:]) == 4


# ---------------------------------------------------------------------------------------------------------------- #4

LAYERS = ("block4_pool", "block5_pool")


def _layers_config(tiny_config, *layers):
    from dataclasses import replace

    return replace(tiny_config, cut_layers=tuple(layers))


def test_copies_of_a_second_group_made_otherwise_name_what_differs(data_root, tiny_config, tmp_path):
    store = tmp_path / "f.h5"
    both = _layers_config(tiny_config, *LAYERS)
    extract(data_root, "train", store, both, batch_size=4)
    with h5py.File(store, "r+") as f:
        f["vgg16@block5_pool"]["train"].attrs["jit"] = True  # as a split made with --jit (its bits the same here)
    with pytest.raises(StoreError, match=r"^split 'train' of 'vgg16@block5_pool' in .* was made with --jit"):
        extract(data_root, "train", store, both, batch_size=4, augment=1)


def test_copies_of_groups_whose_splits_hold_other_rows_are_refused(data_root, tiny_config, tmp_path, monkeypatch):
    """One image unreadable when @block4_pool's split was made, readable when @block5_pool's was (the same listing):
    the second group's copies were made from, and recorded as copies of, the first group's 11 rows."""
    from featstore.images import decode

    store, real = tmp_path / "f.h5", decode.load_image
    lost = os.path.join("cat", sorted(os.listdir(data_root / "train" / "cat"))[0])

    def unreadable(path, *args, **kwargs):
        if str(path).endswith(lost):
            raise decode.ImageError("unreadable then")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decode, "load_image", unreadable)
    four, five = (_layers_config(tiny_config, lyr) for lyr in LAYERS)
    extract(data_root, "train", store, four, name="vgg16@block4_pool", batch_size=4)
    monkeypatch.undo()
    extract(data_root, "train", store, five, name="vgg16@block5_pool", batch_size=4)
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, _layers_config(tiny_config, *LAYERS), batch_size=4, augment=1)
    line = str(err.value)
    assert line.startswith("the copies of 'vgg16@block4_pool' and 'vgg16@block5_pool' cannot be made in one run"), line
    assert (
        "(11 and 12 rows; first differing at row 0" in line and "--layer block5_pool --name vgg16@block5_pool" in line
    )
    with h5py.File(store, "r") as f:
        assert not any("augmented" in f[g]["train"] for g in f)
    # the way out it names: each group's copies in a run of its own, each from its own rows
    r4 = extract(data_root, "train", store, four, name="vgg16@block4_pool", batch_size=4, augment=1)
    r5 = extract(data_root, "train", store, five, name="vgg16@block5_pool", batch_size=4, augment=1)
    assert (r4.augmented.rows, r5.augmented.rows) == (11, 12)


# ---------------------------------------------------------------------------------------------------------------- #5


def test_a_fine_tuning_caches_unreadable_first_image_names_no_overwrite(data_root, tiny_config, tmp_path, monkeypatch):
    from featstore.store.pathcols import read_paths
    from featstore.store.reader import CACHE_PURPOSE

    store = tmp_path / "f.h5"
    kw = {"name": "vgg16@block5_pool", "purpose": CACHE_PURPOSE, "batch_size": 4}
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, **kw)
    with h5py.File(store, "r") as f:
        first = data_root / read_paths(f["vgg16@block5_pool"]["train"]["paths"], 1)[0]
    st = first.stat()
    first.write_bytes(b"\0" * st.st_size)  # bit rot: the same size and time, so the listing is the same
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, **kw)
    line = str(err.value)
    assert "cannot be read now" in line and "delete the group so that the fine-tuning caches it again" in line, line
    assert "--overwrite" not in line


def _caching_refused(ft, monkeypatch, refused) -> str:
    """The line of a fine-tuning whose cache's extraction is ``refused`` (a stand-in for ``pipeline.extract``)."""
    from featstore.experiments.finetune import FinetuneConfig, finetune
    from featstore.extraction import pipeline

    monkeypatch.setattr(pipeline, "extract", refused)
    with pytest.raises(StoreError) as err:
        finetune(ft["dense"], FinetuneConfig("block5_conv2", epochs=1, batch_size=4), store=ft["store"])
    return str(err.value)


def test_finetune_says_it_has_no_overwrite_where_its_caches_refusal_names_it(finetune_source_32, monkeypatch):
    """Every extract refusal that names --overwrite (a resume under other settings, a damaged split) reaches finetune
    through its cache: it says what works there."""
    from featstore.store.resume import refuse_resume

    def refused(*args, **kwargs):
        then = {"listing_sha256": "x", "batch_size": 32, "compression": "none", "jit": True}
        refuse_resume(then, {**then, "jit": False}, "train", kwargs["name"], args[2])

    ft = finetune_source_32
    line = _caching_refused(ft, monkeypatch, refused)
    assert "by adding --overwrite" in line and "names --overwrite: featstore finetune has none" in line, line
    command = line.split("delete it (", 1)[1].split(") and fine-tune again", 1)[0]  # one shell word (attack 78 #8)
    assert shlex.split(command) == [
        "python",
        "-c",
        f"import h5py; del h5py.File({str(ft['store'])!r}, 'a')['vgg16@block5_conv1']",
    ]


def test_finetune_says_how_to_start_its_cache_again_whatever_the_refusals_wording(finetune_source_32, monkeypatch):
    """The way to start the cache again is not chosen by matching "--overwrite" in extract's text (a rewording, or a
    line saying "without --overwrite", decided it): every refusal met while caching gets it."""

    def refused(*args, **kwargs):
        raise StoreError(f"{args[2]}: the split cannot be written here; free some space and run it again")

    line = _caching_refused(finetune_source_32, monkeypatch, refused)
    assert "free some space" in line and "to start the cache again, delete it" in line, line
    assert "pass --no-cache" in line
