"""Attack 43's cases fixed by the lead (reproducers on branch attack43)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.errors import ConfigError


def test_pooling_at_a_flatten_default_cut_names_pooling_not_a_missing_cut(tmp_path):
    """Attack 43 #3: ``--pooling avg`` where the default cut is a Flatten was said as "the model has no default cut"
    (every ConfigError at the default cut was wrapped), while the listing called 'flat' the default cut."""
    import keras

    from featstore import ExtractorConfig, extract
    from tests.conftest import write_data_root

    i = keras.Input((16, 16, 3))
    x = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(2, 3, name="conv")(i))
    keras.Model(i, keras.layers.Dense(2, name="head")(x)).save(tmp_path / "small.keras")
    with pytest.raises(ConfigError) as err:
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "small.keras"), pooling="avg"),
        )
    assert "no default cut" not in str(err.value)
    assert "--pooling avg needs a 4-D conv output, and layer flat of" in str(err.value)
    assert "gives (392,) per image: leave --pooling out, or cut at a conv layer" in str(err.value)


def test_a_relative_link_goes_up_from_its_real_folder(tmp_path):
    """Attack 43 #2: ``~/proj`` a link to the project folder, in which ``tmp -> ../tmp`` names the projects' shared
    2777 tmp; ``os.path.abspath`` collapsed ``proj/../tmp`` to ``~/tmp`` (private) and the shared one went unseen."""
    import os

    from featstore.modes import renamable_by_others

    home, projects = tmp_path / "home", tmp_path / "data" / "projects"
    (projects / "alice-proj").mkdir(parents=True)
    (projects / "tmp").mkdir(mode=0o700)
    os.chmod(projects / "tmp", 0o2777)  # a team's scratch folder, no sticky bit
    (home / "tmp").mkdir(mode=0o700, parents=True)
    (home / "proj").symlink_to(projects / "alice-proj")
    (projects / "alice-proj" / "tmp").symlink_to("../tmp")
    assert renamable_by_others(home / "tmp") is None
    assert renamable_by_others(home / "proj" / "tmp") == str(projects / "tmp")
    assert renamable_by_others(f"{home}/proj/../tmp") == str(projects / "tmp")  # (the kernel goes up from the real one)
    os.chmod(projects / "tmp", 0o1777)  # with the sticky bit each user's entries are his
    assert renamable_by_others(home / "proj" / "tmp") is None


def test_a_mel_spectrograms_frames_count_as_its_activation():
    """Attack 43 #1: MelSpectrogram (fft 16,384, stride 1) over a 192x192x3 image flattened framed the signal into
    110,593 x 16,384 floats (6.8 GiB per image, and its rfft as much) while the bound counted its 1.7 MB output."""
    import keras

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((192, 192, 3))
    x = keras.layers.Reshape((192 * 192 * 3,), name="flat")(i)
    x = keras.layers.MelSpectrogram(fft_length=16384, sequence_length=16384, sequence_stride=1, num_mel_bins=4)(x)
    x = keras.layers.GlobalAveragePooling1D(data_format="channels_first", name="feat")(x)
    model = keras.Model(i, keras.layers.Dense(2)(x))
    got = largest_activation(model)
    assert got.scores == "spectrum (real and imaginary parts)" and got.shape == (110594, 8193, 2), got
    with pytest.raises(
        ConfigError, match=r"makes 110594 x 8193 x 2 float32 spectrum .* per image, 7\.2 GB.*--layer flat"
    ):
        check_activations(model, "mel.keras", resizable=False)
    small = keras.Input((64,))  # an ordinary one: 1 KiB of frames, not refused
    mel = keras.layers.MelSpectrogram(fft_length=32, sequence_length=16, sequence_stride=8, num_mel_bins=4)
    assert check_activations(keras.Model(small, mel(small)), "small.keras", resizable=False).nbytes < 2048


@pytest.mark.parametrize("mode", ["multi_hot", "count"])
def test_a_category_encodings_one_hot_counts_where_it_encodes_several_axes(mode):
    """Attack 43 #5: CategoryEncoding(2**18, multi_hot or count) over 16 x 768 values per image one-hot encodes every
    value before reducing (TensorFlow's bincount takes one axis only): 12 GiB per image, counted as its 16 MiB output.
    Over one axis (bincount) nothing but the output is made, and nothing more is counted."""
    import keras

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((64, 64, 3))
    rows = keras.layers.Reshape((16, 768), name="rows")(i)
    enc = keras.layers.CategoryEncoding(num_tokens=2**18, output_mode=mode, name="enc")(rows)
    model = keras.Model(i, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(enc)))
    got = largest_activation(model)
    assert (got.layer, got.shape, got.scores) == ("enc", (16, 768, 2**18), "one-hot encoding"), got
    with pytest.raises(
        ConfigError, match=r"'enc' makes 16 x 768 x 262144 float32 one-hot encoding per image.*--layer rows"
    ):
        check_activations(model, "enc.keras", resizable=False)
    flat = keras.layers.CategoryEncoding(num_tokens=2**18, output_mode=mode, name="enc")
    one_axis = keras.layers.Reshape((12288,))(i)
    got = largest_activation(keras.Model(i, flat(one_axis)))
    assert (got.layer, got.shape, got.scores) == ("enc", (2**18,), ""), got


@pytest.mark.parametrize(
    "code, says, not_said",
    [
        ("EROFS", "once the file system of {root} is writable again (it is mounted read-only), then record", "space"),
        ("EACCES", "once you may write {root} (its owner or an admin can make it so), then record", "space"),
        ("ENOSPC", "the disk is full. The run is kept whole in {run}: free some space on the disk of {root}", "once"),
    ],
)
def test_a_kept_finetune_run_names_the_fix_its_reason_needs(tmp_path, monkeypatch, code, says, not_said):
    """Attack 43 #4: the runs folder remounted read-only while finetune trained; the run was kept, and the line said
    "free some space on the disk ..., then mv", which cannot work on a read-only file system (nor when it is shut)."""
    import errno
    import os
    import tempfile
    from types import SimpleNamespace

    from featstore.errors import OutputError
    from featstore.experiments import finetune_space

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def record_into(folder):
        (folder / "finetune-1a2b3c").mkdir()
        return SimpleNamespace(id="finetune-1a2b3c")

    refused = OutputError("could not write")
    refused.cause = OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    root = tmp_path / "runs"
    line = str(finetune_space.keep_run(refused, record_into, root, 941.4, 3000))
    (run,) = tmp_path.glob("featstore-finetune-*/finetune-1a2b3c")
    assert line.startswith("fine-tuned for 941.4 s (3000 epochs), but could not write run finetune-1a2b3c"), line
    assert says.format(root=root, run=run) in line and not_said not in line.split("kept whole")[1], line
    assert f"`mv {run} {root}/`" in line and f"`mv {run} DIR/`" in line


def test_the_users_own_link_at_kerass_download_folder_is_followed(tmp_path):
    """Attack 43 #12: ``~/.keras/models`` the user's link to a 0700 folder on a bigger disk was refused as "other users
    can write (anyone (it is o+w))", the mode of the link itself."""
    import os

    from featstore.models.weights import _others_write, _shared_line

    home, big = tmp_path / ".keras", tmp_path / "bigdisk" / "keras-models"
    home.mkdir(mode=0o700)
    big.mkdir(mode=0o700, parents=True)
    (home / "models").symlink_to(big)
    assert _others_write(home / "models", home) is None
    os.chmod(big, 0o777)  # where it leads others may write: that folder named, with who may
    assert _others_write(home / "models", home) == big
    line = _shared_line("weights", home / "models" / "w.h5", big)
    assert f"download it into {big}, which other users can write (anyone (it is o+w))" in line, line


def test_kerass_download_folder_behind_a_dotdot_after_a_link_is_checked_where_the_kernel_goes(tmp_path):
    """Attack 43 #9: ``KERAS_HOME=~/proj/../kh`` with ``~/proj`` a link: ``os.path.abspath`` made it ``~/kh`` (missing,
    then ``~``: the user's), while Keras downloads into the team's ``kh/models`` beside the project."""
    import os

    from featstore.models.weights import _others_write

    home, projects = tmp_path / "home", tmp_path / "data" / "projects"
    (projects / "alice-proj").mkdir(parents=True)
    (projects / "kh" / "models").mkdir(parents=True)
    os.chmod(projects / "kh" / "models", 0o2777)  # the team's Keras cache
    home.mkdir(mode=0o700)
    (home / "proj").symlink_to(projects / "alice-proj")
    keras_home = f"{home}/proj/../kh"
    assert _others_write(Path(keras_home) / "models", Path(keras_home)) == Path(keras_home) / "models"
    os.chmod(projects / "kh" / "models", 0o700)
    assert _others_write(Path(keras_home) / "models", Path(keras_home)) is None


def test_a_colleagues_folder_at_a_shard_out_in_a_drop_folder_is_said_as_his(tmp_path, monkeypatch):
    """Attack 43 #8: a colleague's folder at ``--out`` in a drop folder (``1733``): "ask its owner, root, to let you
    read it", a fix that cannot work (a listing would not let her replace his folder). The sticky line comes first.
    Root ignores the sticky bit: ``privileged`` says no, as for an ordinary user."""
    import os

    from featstore import sticky
    from featstore.errors import OutputError
    from featstore.store.shards import refuse_shard_folder
    from tests.test_adversarial_attack34_sticky import COLLEAGUE, FOLDER_OWNER

    if os.geteuid() != 0:
        pytest.skip("chown to made-up users needs root")
    drop = tmp_path / "drop"
    drop.mkdir()
    os.chown(drop, FOLDER_OWNER, -1)
    drop.chmod(0o1733)
    (drop / "shards").mkdir(mode=0o777)
    os.chown(drop / "shards", COLLEAGUE, -1)
    monkeypatch.setattr(sticky, "privileged", lambda: False)
    with pytest.raises(OutputError) as err:
        refuse_shard_folder(drop / "shards")
    line = str(err.value)
    assert f"is uid {COLLEAGUE}'s, in a folder with the sticky bit ({drop}, mode 1733)" in line, line
    assert f"ask uid {COLLEAGUE} to remove it" in line and "let you read it" not in line


def _no_private_tmp(tmp_path, monkeypatch, cache_home):
    """tempfile's folder a team's (no sticky bit), XDG_CACHE_HOME ``cache_home``: :func:`featstore.tmpdir.choose`'s line."""
    import tempfile

    from featstore import tmpdir

    team = tmp_path / "team" / "scratch"
    team.mkdir(parents=True, exist_ok=True)
    team.parent.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(team))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return tmpdir.choose


def test_the_fallback_temporary_folder_is_said_as_it_is(tmp_path, monkeypatch):
    """Attack 43 #14: (a) the user's own ~/.cache/featstore/tmp, 0755, was said as "not a private folder of yours (mode
    0700)", the mode wanted, without the one command that fixes it; (b) XDG_CACHE_HOME=/dev/null as "others may rename
    entries in /dev/null"; (c) the user's own link there to a 0700 folder of hers refused as not a folder."""
    choose = _no_private_tmp(tmp_path, monkeypatch, tmp_path / "cache")
    mine = tmp_path / "cache" / "featstore" / "tmp"
    mine.mkdir(parents=True, mode=0o755)
    mine.chmod(0o755)
    with pytest.raises(ConfigError) as err:
        choose()
    assert (
        f"{mine} cannot take featstore's temporary files either (it is open to others, mode 0755): chmod 700 {mine} (it is yours), or set TMPDIR"
        in str(err.value)
    ), err.value
    mine.rmdir()
    big = tmp_path / "bigdisk"
    big.mkdir(mode=0o700)
    mine.symlink_to(big)  # (c)
    assert choose()[0] == str(mine)
    choose = _no_private_tmp(tmp_path, monkeypatch, "/dev/null")  # (b)
    with pytest.raises(ConfigError, match=r"\(/dev/null is not a folder\): set TMPDIR to a folder of yours"):
        choose()


def test_a_colleagues_folder_inside_the_users_report_names_a_fix_she_can_do(tmp_path):
    """Attack 43 #15: a teammate's folder put inside her report (``rep/runs``, his): the fix said ``rm -r rep``, which
    deleted her pages and failed on his folder. Moving it out of the way needs no right on it."""
    import os

    from featstore.errors import OutputError
    from tests.test_adversarial_attack39_fixAS import OTHER, _prepare, _report_folder

    if os.geteuid() != 0:
        pytest.skip("another user's folder: chown needs root")
    out = _report_folder(tmp_path, runs=True)
    os.chown(out / "maps", OTHER, OTHER)
    with pytest.raises(OutputError) as err:
        _prepare(out)
    line = str(err.value)
    assert f"its folder {out / 'maps'} is uid {OTHER}'s, not yours" in line, line
    assert f"Move it out of the way (mv {out / 'maps'} {out / 'maps'}.uid {OTHER})" not in line  # (quoted: a space)
    assert f"Move it out of the way (mv {out / 'maps'} '{out / 'maps'}.uid {OTHER}')" in line, line
    assert "rm -r" not in line


def _inside_models():
    """Models whose layers make a tensor over the bound inside their call while every output is small (attack 43 #6,
    #10, #16, #17): (model, side, layer, operation, what the line says it makes)."""
    import keras
    from keras import layers as L

    i = keras.Input((256, 256, 3))
    x = L.SeparableConv2D(1, 3, depth_multiplier=4096, padding="same", name="sep")(L.Conv2D(16, 1, name="c1")(i))
    yield keras.Model(i, L.GlobalAveragePooling2D()(x)), 256, "sep", "DepthwiseConv2dNative", "256 x 256 x 65536"
    i = keras.Input((2048, 2048, 3))
    x = L.ContrastLimitedAdaptiveHistogramEqualization(name="clahe")(i)
    x = L.Conv2D(8, 3, strides=4, name="conv")(x)
    yield keras.Model(i, L.GlobalAveragePooling2D()(x)), 2048, "clahe", "OneHot", "8 x 8 x 3 x 65536 x 256"
    i = keras.Input((64, 64, 3))
    x = L.Conv2D(4, 3, dilation_rate=4096, padding="same", name="dil")(L.Conv2D(64, 1, name="c1")(i))
    yield keras.Model(i, L.GlobalAveragePooling2D()(x)), 64, "dil", "SpaceToBatchND", "16777216 x 3 x 3 x 64"
    i = keras.Input((1024, 1024, 3))
    t = L.Reshape((1024 * 1024, 3), name="tok")(i)
    q = L.Reshape((1, 3), name="q")(L.GlobalAveragePooling1D(name="gap")(t))
    x = L.GroupQueryAttention(head_dim=8, num_query_heads=512, num_key_value_heads=1, name="gqa")(q, t)
    yield keras.Model(i, L.Flatten()(x)), 1024, "gqa", "Tile", "1048576 x 1 x 512 x 8"


def test_every_tensor_of_the_traced_forward_pass_is_held_to_the_bound():
    """Attack 43 #6, #10, #16, #17: a SeparableConv2D's depthwise step (16 GiB), CLAHE's one-hot histograms (12 GiB),
    a dilated convolution's SpaceToBatchND (36 GiB), grouped attention's repeated keys (16 GiB): each counted as its
    layer's small output. The traced graph of one image holds every operation to the bound."""
    from featstore.models.traced_bound import check_traced

    for model, side, layer, op, dims in _inside_models():
        with pytest.raises(ConfigError) as err:
            check_traced(model, side, 3, "m.keras", resizable=False)
        line = str(err.value)
        assert f"m.keras: its layer '{layer}' makes " in line and " float32 values per image inside it" in line, line
        assert f"makes {dims} float32 values per image inside it (operation {op})" in line or layer == "gqa", line
        first = (
            "no layer comes before it and its input side is fixed" if layer == "clahe" else "cut before it with --layer"
        )
        assert f"refused before any image runs: {first}" in line, line


def test_ordinary_backbones_pass_the_traced_bound():
    """No false refusal: VGG16 at 224 px (its largest tensor 12.8 MB) and a MobileNetV2 at 224 px."""
    import keras

    from featstore.models.traced_bound import check_traced

    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    assert check_traced(vgg, 224, 3, "vgg16", resizable=True).nbytes == 224 * 224 * 64 * 4
    mobile = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(224, 224, 3))
    assert check_traced(mobile, 224, 3, "mobilenetv2", resizable=True).nbytes < 8 << 20


def test_extract_refuses_a_model_with_a_huge_tensor_inside_a_layer_before_any_image(tmp_path):
    """The refusal reaches extract before the first image: one line, nothing written into the store."""
    import h5py
    import keras
    from keras import layers as L

    from featstore import ExtractorConfig, extract
    from tests.conftest import write_data_root

    i = keras.Input((64, 64, 3))
    x = L.SeparableConv2D(1, 3, depth_multiplier=65536, padding="same", name="sep")(L.Conv2D(16, 1, name="c1")(i))
    keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D(name="feat")(x))).save(tmp_path / "sep.keras")
    with pytest.raises(ConfigError, match=r"sep\.keras: its layer 'sep' makes 64 x 64 x 1048576 float32 values"):
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "sep.keras"), layer="feat", image_size=64),
        )
    if (tmp_path / "s.h5").exists():
        with h5py.File(tmp_path / "s.h5", "r") as f:
            rows = []
            f.visititems(lambda name, obj: rows.append(obj.shape[0]) if name.endswith("features") else None)
            assert not any(rows), rows


def test_a_classifier_nested_in_the_saved_model_is_no_default_cut(tmp_path):
    """Attack 43 #11: ``Model(i, classifier(Rescaling(i)))``: the default cut was 'classifier', its softmax output
    stored as features, said as "there is no Dense layer"; the listing marked it the default cut."""
    import keras
    from keras import layers as L

    from featstore import ExtractorConfig, extract
    from featstore.report.tables import layers_table
    from tests.conftest import write_data_root

    j = keras.Input((16, 16, 3))
    x = L.Dense(16, name="penultimate")(L.GlobalAveragePooling2D(name="gap")(L.Conv2D(4, 3, name="conv")(j)))
    classifier = keras.Model(j, L.Dense(10, activation="softmax", name="probs")(x), name="classifier")
    i = keras.Input((16, 16, 3))
    keras.Model(i, classifier(L.Rescaling(1 / 255, name="scale")(i))).save(tmp_path / "wrapped.keras")
    with pytest.raises(ConfigError) as err:
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "wrapped.keras")),
        )
    line = str(err.value)
    assert line.startswith("wrapped.keras has no default cut: its last Dense layer is inside 'classifier'"), line
    assert "its default cut is 'penultimate'" in line and "Pass --layer NAME" in line
    assert "default cut" not in layers_table(str(tmp_path / "wrapped.keras"))


def test_axial_attention_is_counted_along_its_axes():
    """Attack 43 #7: MultiHeadAttention(attention_axes=(1,)) over 128 x 128 positions makes 128 x 8 heads x 128 x 128
    scores (64 MiB), and was counted as full attention, 8 x 16384 x 16384 (8 GiB): a normal model refused."""
    import keras
    from keras import layers as L

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((128, 128, 3))
    x = L.Conv2D(16, 1, name="c1")(i)
    x = L.MultiHeadAttention(num_heads=8, key_dim=8, attention_axes=(1,), name="axial")(x, x)
    model = keras.Model(i, L.Dense(2)(L.GlobalAveragePooling2D()(x)))
    got = largest_activation(model)
    assert got.nbytes <= 128 * 8 * 128 * 128 * 4, got
    assert check_activations(model, "axial.keras", resizable=False) is not None  # not refused
    j = keras.Input((128, 128, 3))
    full = L.MultiHeadAttention(num_heads=8, key_dim=8, name="full")(L.Conv2D(16, 1)(j), L.Conv2D(16, 1)(j))
    got = largest_activation(keras.Model(j, full))
    assert (got.layer, got.shape) == ("full", (8, 16384, 16384)), got  # (the default: every axis but the features)
