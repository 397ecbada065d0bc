"""Attack 41 (on the fixes of 2026-12-06 after 14:13), the lead's fixes.

- #1: a model wrapped in ``TimeDistributed`` (or layers in a ``keras.layers.Pipeline``) was one layer to the activation
  bound: only the wrapper's output was measured (64 KiB) while the wrapped model made 16 GiB per frame; extract died
  of SIGSEGV. The held layers are measured at the shapes they take (one frame; in turn).
- #2: a layer whose call gives several tensors (a nested model with two outputs, an attention layer returning its
  scores) made ``models --layers`` and ``extract --layer`` end in tracebacks; now "N outputs: not a cut" and one line.
- #4: the default cut of a model without a Dense layer was said as "the layer before its last Dense layer".
- #3: a TMPDIR in which others may rename entries (a team's 2775 scratch folder): featstore's temporary folders go to
  the user's own cache folder instead (said once), or the command says there is none.
"""

from __future__ import annotations

import os

import pytest

from featstore.errors import ConfigError


def _wide():
    """UpSampling2D(64) then a 4,096-filter 1x1 Conv2D on a 16x16 frame: 1024 x 1024 x 4096 float32 = 16 GiB."""
    import keras

    return [keras.layers.UpSampling2D(64), keras.layers.Conv2D(4096, 1, name="wide_conv")]


@pytest.mark.parametrize("holder", ["TimeDistributed(model)", "TimeDistributed(layer)", "Pipeline"])
def test_layers_held_by_a_layer_are_measured_where_they_run(holder):
    import keras

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((32, 32, 3))
    if holder == "Pipeline":
        pooled = keras.layers.GlobalAveragePooling2D()
        x = keras.layers.Pipeline([*_wide(), pooled], name="pipe")(keras.layers.Resizing(16, 16)(i))
        expected = (1024, 1024, 4096)
    else:
        frames = keras.layers.Reshape((4, 16, 16, 3), name="frames")(i)
        if holder == "TimeDistributed(model)":
            fi = keras.Input((16, 16, 3))
            u, conv = _wide()
            inner = keras.Model(fi, keras.layers.GlobalAveragePooling2D()(conv(u(fi))), name="inner")
            x = keras.layers.Flatten()(keras.layers.TimeDistributed(inner, name="td")(frames))
        else:
            x = keras.layers.TimeDistributed(keras.layers.UpSampling2D(64), name="td")(frames)
            x = keras.layers.TimeDistributed(keras.layers.Conv2D(4096, 1, name="wide_conv"))(x)
            x = keras.layers.GlobalAveragePooling3D()(x)
        expected = (1024, 1024, 4096) if holder == "TimeDistributed(model)" else (4, 1024, 1024, 4096)
    model = keras.Model(i, keras.layers.Dense(2)(x))
    got = largest_activation(model)
    assert got.shape == expected, got  # was the wrapper's output: (4, 4096) / (4096,)
    with pytest.raises(ConfigError, match="over featstore's bound of 4 GiB per image"):
        check_activations(model, "m.keras", resizable=False)


def test_a_layer_giving_several_tensors_is_no_cut(tmp_path):
    import keras
    from keras import layers as L

    from featstore.models.backbones import cut_model
    from featstore.report.tables import layers_table

    t = keras.Input((16, 16, 3))
    two = keras.Model(t, [L.Conv2D(4, 3, name="ca")(t), L.Conv2D(6, 3, name="cb")(t)], name="two")
    i = keras.Input((16, 16, 3))
    p, q = two(i)
    model = keras.Model(i, L.Dense(2, name="head")(L.Flatten()(L.Concatenate(name="concatenate")([p, q]))))
    for pooling in ("none", "avg"):
        with pytest.raises(
            ConfigError, match="'two' gives 2 tensors, .* cut at a layer after it .*--layer concatenate"
        ):
            cut_model(model, "two", pooling, "twoout")
    model.save(tmp_path / "twoout.keras")
    listed = layers_table(str(tmp_path / "twoout.keras"))
    assert "2 outputs: not a cut" in listed and "concatenate" in listed, listed
    y = L.Reshape((64, 12))(i)
    o, _ = L.MultiHeadAttention(2, 8, name="mha")(y, y, return_attention_scores=True)
    scored = keras.Model(i, L.Dense(2)(L.Flatten()(o)))
    with pytest.raises(ConfigError, match="'mha' gives 2 tensors"):
        cut_model(scored, "mha", "none", "mhascores")


@pytest.fixture
def fresh_tmp(monkeypatch, tmp_path):
    """featstore's choice of temporary folder made anew, with TMPDIR in a folder anyone may rename entries in."""
    import tempfile

    from featstore.models import scratch

    monkeypatch.setattr(scratch, "_SAID", set())
    shared = tmp_path / "team"
    (shared / "scratch").mkdir(parents=True)
    shared.chmod(0o777)  # no sticky bit: anyone may rename the entries of others
    monkeypatch.setattr(tempfile, "tempdir", str(shared / "scratch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return shared


def test_temporary_files_leave_a_tmpdir_others_may_rename_in(fresh_tmp, tmp_path, caplog):
    """#3: scratch folders were made by name in such a TMPDIR, where a colleague swapped them for his while Keras
    opened the user's model there; now in the user's own cache folder, said once."""
    from featstore.models.scratch import new_scratch, private_tempdir

    with caplog.at_level("WARNING", logger="featstore"):
        chosen = private_tempdir()
    assert chosen == str(tmp_path / "cache" / "featstore" / "tmp"), chosen
    assert (os.stat(chosen).st_mode & 0o777) == 0o700
    said = [r.getMessage() for r in caplog.records if "in which other users may rename entries" in r.getMessage()]
    assert len(said) == 1 and f"is in {fresh_tmp}, in which" in said[0], said
    private_tempdir()  # said once a process
    assert len([r for r in caplog.records if "in which other users may rename" in r.getMessage()]) == 1
    assert str(new_scratch("preset")).startswith(chosen)
    fresh_tmp.chmod(0o1777)  # the sticky bit: each user's entries are his
    assert private_tempdir() == str(fresh_tmp / "scratch")


def test_no_private_temporary_folder_is_one_line(fresh_tmp, tmp_path):
    from featstore.models.scratch import private_tempdir

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o777)  # the fallback's own folder is open to renames too
    with pytest.raises(ConfigError, match="set TMPDIR to a folder of yours"):
        private_tempdir()


def test_the_default_cut_of_a_model_without_dense_says_so(tmp_path, caplog):
    """#4: an embedding model (Conv2D -> GlobalAveragePooling2D) was cut at its last layer, "the layer before its last
    Dense layer"."""
    import keras

    from featstore import ExtractorConfig, extract
    from tests.conftest import write_data_root

    i = keras.Input((16, 16, 3))
    keras.Model(i, keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(4, 3)(i))).save(
        tmp_path / "embed.keras"
    )
    with caplog.at_level("INFO", logger="featstore"):
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "embed.keras")),
        )
    said = [r.getMessage() for r in caplog.records if "cutting at" in r.getMessage()]
    assert said == [
        "embed.keras: cutting at 'gap', its last layer (it does not end in a classifier) (--layer to choose another)"
    ], said


def test_attention_held_in_a_pipeline_counts_its_scores():
    """Attack 42 #3: an Attention run by a Pipeline (a held layer) had only its output measured: 16 GiB of scores
    counted as a 2 MiB output."""
    import keras
    from keras import layers as L

    from featstore.models.activations import largest_activation

    t = keras.Input((64, 64, 3))
    tokens = L.Reshape((4096, 3))(t)
    two = keras.Model(t, [L.Dense(8, name="q")(tokens), L.Dense(8, name="v")(tokens)], name="two")
    i = keras.Input((64, 64, 3))
    out = keras.layers.Pipeline([two, L.Attention(name="att"), L.GlobalAveragePooling1D()], name="pipe")(i)
    got = largest_activation(keras.Model(i, out))
    assert got.layer == "att" and got.shape == (1, 4096, 4096) and got.scores == "attention scores", got


def test_a_colleagues_link_further_on_a_tmpdir_link_chain_is_seen(tmp_path):
    """Attack 42 #1: the user's link -> a colleague's link -> a folder: realpath skipped his link."""
    from featstore.modes import renamable_by_others
    from tests.test_adversarial_attack36_lead import COLLEAGUE

    if os.geteuid() != 0:
        pytest.skip("a link owned by another user needs root to make (lchown)")
    (tmp_path / "real").mkdir()
    (tmp_path / "his").symlink_to(tmp_path / "real")
    os.lchown(tmp_path / "his", COLLEAGUE, COLLEAGUE)
    (tmp_path / "mine").symlink_to(tmp_path / "his")
    assert renamable_by_others(tmp_path / "real") is None
    assert renamable_by_others(tmp_path / "mine") == str(tmp_path / "his")


def test_the_fallback_is_checked_before_it_is_made_and_no_home_is_one_line(fresh_tmp, tmp_path, monkeypatch):
    """Attack 42 #7: ~/.cache/featstore/tmp was made through a colleague's folder, then refused; #4: no HOME and no
    passwd entry ended every command in RuntimeError."""
    from pathlib import Path

    from featstore.models.scratch import private_tempdir

    theirs = tmp_path / "open"
    theirs.mkdir()
    theirs.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(theirs / "cache"))
    with pytest.raises(ConfigError, match=f"others may rename entries in {theirs}"):
        private_tempdir()
    assert not (theirs / "cache").exists()  # nothing made there
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(ConfigError, match="there is no home folder for featstore's own: set TMPDIR"):
        private_tempdir()


def test_ray_auto_reads_where_ray_writes(monkeypatch):
    """Attack 42 #2: --address auto looked under featstore's private temporary folder, not Ray's own (TMPDIR)."""
    import tempfile

    from featstore.extraction.ray_address import _ray_tmp

    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", "/srv/team/tmp")
    monkeypatch.setattr(tempfile, "tempdir", "/home/u/.cache/featstore/tmp")
    assert _ray_tmp() == "/srv/team/tmp"
    monkeypatch.setenv("RAY_TMPDIR", "/data/ray")
    assert _ray_tmp() == "/data/ray"


def test_a_colleagues_link_in_a_keras_home_chain_is_seen(tmp_path):
    """Attack 42 #1, the Keras cache: KERAS_HOME is the user's link to a colleague's link to a folder."""
    from pathlib import Path

    from featstore.models.weights import _others_write
    from tests.test_adversarial_attack36_lead import COLLEAGUE

    if os.geteuid() != 0:
        pytest.skip("a link owned by another user needs root to make (lchown)")
    (tmp_path / "real" / "models").mkdir(parents=True)
    (tmp_path / "his").symlink_to(tmp_path / "real")
    os.lchown(tmp_path / "his", COLLEAGUE, COLLEAGUE)
    (tmp_path / "mine").symlink_to(tmp_path / "his")
    assert _others_write(tmp_path / "real" / "models", tmp_path / "real") is None
    assert _others_write(tmp_path / "mine" / "models", tmp_path / "mine") == Path(tmp_path / "his")


def test_a_default_cut_that_is_no_cut_says_to_choose_one(tmp_path):
    """Attack 42 #6: the layer before the last Dense gave two tensors; the user chose no layer, and was told to cut
    "at a layer after it that takes them", where there is none."""
    import keras
    from keras import layers as L

    from featstore import ExtractorConfig, extract
    from tests.conftest import write_data_root

    t = keras.Input((16, 16, 3))
    two = keras.Model(t, [L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(t)), L.GlobalAveragePooling2D()(t)], name="two")
    i = keras.Input((16, 16, 3))
    first, _ = two(i)
    keras.Model(i, L.Dense(2, name="head")(first)).save(tmp_path / "aux.keras")
    with pytest.raises(ConfigError, match=r"has no default cut: layer 'two' gives 2 tensors.*Pass --layer NAME"):
        extract(
            write_data_root(tmp_path / "data"),
            "train",
            tmp_path / "s.h5",
            ExtractorConfig(model=str(tmp_path / "aux.keras")),
        )
