"""Attack 40, the lead's fixes (the fix helpers' are in ``test_adversarial_attack40_<helper>.py``).

- check_output's refusals printed the output's name raw: an escape sequence in a file or folder name (OSC 0, which sets
  the terminal's title) reached the terminal through "is a symbolic link", "is a folder", "does not exist" (issue 19's
  ``leaks`` finding, for every output name).
- #8: a MultiHeadAttention called with ``attention_mask=`` had its key tokens read from the mask (the last flattened
  input): 64 x 1024 x 65536 scores (16 GiB per image) counted 64 x 1024 x 1024.
- #9: AdditiveAttention and Attention(score_mode="concat") make query tokens x key tokens x features before summing
  the features: 4096 x 4096 x 256 (16 GiB) counted 4096 x 4096 (64 MiB).
- #15: a store copied into a folder whose default ACL gives new entries' owner rw-: ``<store>.cache`` was made
  (``drw-------``, shut to its maker), then the line blamed it with a fix that could not open it, and it was left.
- #16: fit/sweep/probe in a colleague's runs folder said "make it writable", and ``runs show`` of his run "write to
  another folder" (no option writes its PNGs elsewhere): now whose it is and what he can run.
"""

from __future__ import annotations

import os

import pytest

from featstore.errors import ConfigError, OutputError
from featstore.outputs import check_output

ESC = "\x1b]0;owned\x07"


@pytest.mark.parametrize("case", ["link", "folder", "fifo", "missing folder", "not a folder"])
def test_output_refusals_never_print_a_name_raw(tmp_path, case):
    name = tmp_path / f"x{ESC}.csv"
    if case == "link":
        name.symlink_to("elsewhere")
    elif case == "folder":
        name.mkdir()
    elif case == "fifo":
        os.mkfifo(name)
    elif case == "missing folder":
        name = tmp_path / f"d{ESC}" / "x.csv"
    else:
        (tmp_path / f"f{ESC}").write_text("")
        name = tmp_path / f"f{ESC}" / "x.csv"
    with pytest.raises(OutputError) as err:
        check_output(name, "--out")
    assert "\x1b" not in str(err.value) and "\x07" not in str(err.value), repr(str(err.value))
    assert str(tmp_path) in str(err.value)  # the name is still said, escaped


def test_attention_key_tokens_come_from_the_key_not_the_mask():
    """#8: the query has 1,024 tokens, the value 65,536; the mask (1024 x 65536) came last in the flattened inputs."""
    import keras

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((256, 256, 3))
    values = keras.layers.Dense(8)(keras.layers.Reshape((65536, 3))(i))
    queries = keras.layers.Dense(8)(keras.layers.Reshape((1024, 3))(keras.layers.AveragePooling2D(8)(i)))
    mask = keras.layers.Dense(65536, name="mask")(queries)
    att = keras.layers.MultiHeadAttention(num_heads=64, key_dim=1, name="mha")(queries, values, attention_mask=mask)
    model = keras.Model(i, keras.layers.GlobalAveragePooling1D()(att))
    assert largest_activation(model).shape == (64, 1024, 65536)
    with pytest.raises(ConfigError, match="'mha' makes 64 x 1024 x 65536 float32 attention scores"):
        check_activations(model, "m.keras", resizable=False)
    named = keras.layers.MultiHeadAttention(num_heads=2, key_dim=1)(query=queries, value=values, attention_mask=mask)
    assert largest_activation(keras.Model(i, named)).shape == (2, 1024, 65536)  # called by keywords: the same


@pytest.mark.parametrize("layer", ["additive", "concat", "dot"])
def test_additive_attention_counts_its_features(layer):
    """#9: tanh(q[..., :, None, :] + k[..., None, :, :]) is tokens x tokens x features before its sum."""
    import keras

    from featstore.models.activations import largest_activation

    i = keras.Input((64, 64, 3))
    t = keras.layers.Dense(256, name="tokens")(keras.layers.Reshape((4096, 3))(i))
    if layer == "additive":
        att = keras.layers.AdditiveAttention(name="att")([t, t])
    else:
        att = keras.layers.Attention(score_mode=layer, name="att")([t, t])
    got = largest_activation(keras.Model(i, keras.layers.GlobalAveragePooling1D()(att)))
    assert got.layer == "att" and got.shape == ((4096, 4096, 256) if layer != "dot" else (1, 4096, 4096)), got


def test_a_layer_called_twice_is_no_cut(tmp_path):
    """#14: a backbone applied to the image and to its negative (a shared backbone) was cut silently at its first
    call; the listing showed it once as a plain layer. Now: one line naming both calls and the layer that joins them."""
    import keras

    from featstore.models.backbones import cut_model
    from featstore.report.tables import layers_table

    i = keras.Input((16, 16, 3), name="image")
    bi = keras.Input((16, 16, 3))
    base = keras.Model(bi, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(bi)), name="base")
    flip = keras.layers.Rescaling(-1, offset=255, name="rescaling")(i)
    joined = keras.layers.Concatenate(name="concatenate")([base(i), base(flip)])
    model = keras.Model(i, keras.layers.Dense(2, name="head")(joined), name="twice")
    with pytest.raises(ConfigError, match=r"'base' is called 2 times .*on image; on rescaling.*--layer concatenate"):
        cut_model(model, "base", "none", "twice")
    assert cut_model(model, "concatenate", "none", "twice").output.shape[1:] == (8,)
    model.save(tmp_path / "twice.keras")
    listed = layers_table(str(tmp_path / "twice.keras"))
    assert "called 2 times: not a cut" in listed and "default cut" in listed, listed


def test_attention_projections_and_grouped_query_attention_are_counted():
    """#9b: a MultiHeadAttention's projections (tokens x heads x key_dim: 8 GiB here) are no node's output; its scores
    (1 GiB) passed; and GroupQueryAttention's, whose sizes have other names (num_query_heads, head_dim)."""
    import keras

    from featstore.models.activations import check_activations, largest_activation

    i = keras.Input((32, 32, 3))
    t = keras.layers.Reshape((1024, 3))(i)
    wide = keras.layers.MultiHeadAttention(num_heads=256, key_dim=8192, name="mha")(t, t)
    got = largest_activation(keras.Model(i, wide))
    assert got.shape == (1024, 256, 8192) and got.scores == "query projections", got
    with pytest.raises(ConfigError, match=r"'mha' makes 1024 x 256 x 8192 float32 query projections per image"):
        check_activations(keras.Model(i, wide), "w.keras", resizable=False)
    j = keras.Input((64, 64, 3))
    u = keras.layers.Reshape((4096, 3))(j)
    gqa = keras.layers.GroupQueryAttention(head_dim=1, num_query_heads=256, num_key_value_heads=1, name="gqa")(u, u)
    got = largest_activation(keras.Model(j, gqa))
    assert got.layer == "gqa" and got.shape == (256, 4096, 4096) and got.scores == "attention scores", got


def test_no_cache_level_is_made_where_a_default_acl_would_shut_it(tmp_path, monkeypatch):
    """#15: refused before the cache folder is made, naming the store's folder (whose default ACL it is); nothing left,
    and ``cache_folder`` says it as CacheNotMade, which a report answers with a temporary cache."""
    import shutil
    import subprocess

    from featstore import modes
    from featstore.caches import CacheNotMade, cache_folder
    from featstore.outputs import cache_dir

    if shutil.which("setfacl") is None:
        pytest.skip("setfacl is not installed")
    monkeypatch.setattr(modes, "_checks_permissions", lambda: True)  # root passes every permission check
    folder = tmp_path / "shut"
    folder.mkdir()
    if subprocess.run(["setfacl", "-d", "-m", "u::rw-,g::r--,o::---", str(folder)], capture_output=True).returncode:
        pytest.skip("this file system takes no ACLs")
    store = folder / "s.h5"
    with pytest.raises(CacheNotMade, match=f"folder {folder} has a default ACL that gives new folders' owner rw-"):
        cache_folder(cache_dir(store))
    assert os.listdir(folder) == []  # nothing made, nothing left


def _colleagues(monkeypatch, tmp_path):
    """A store, and a runs folder with one run, both the colleague's (mode 0755) and closed to this (ordinary) user."""
    from featstore import sticky
    from tests.test_adversarial_attack36_lead import COLLEAGUE, TEAM, colleagues_run

    if os.geteuid() != 0:
        pytest.skip("chown to a made-up colleague needs root")
    store, runs, run = colleagues_run(tmp_path, 0o755)
    os.chown(runs, COLLEAGUE, TEAM)
    runs.chmod(0o755)
    monkeypatch.setattr(sticky, "privileged", lambda: False)  # an ordinary user, whom the folders' modes stop
    real, closed = os.access, {str(run), str(runs)}
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: False if os.fspath(p) in closed and m & os.W_OK else real(p, m, **k)
    )
    return store, runs, run, f"uid {COLLEAGUE}"


def test_fit_in_a_colleagues_runs_folder_says_whose_it_is(tmp_path, monkeypatch):
    import tempfile

    from tests.test_adversarial_attack4 import cli, no_traceback

    store, runs, _, who = _colleagues(monkeypatch, tmp_path)
    real = tempfile.mkdtemp

    def mkdtemp(*a, dir=None, **k):  # what the kernel says to the user in a folder of mode 0755 not hers
        if dir is not None and os.fspath(dir) == str(runs):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    for command in (["fit", "--clf", "logreg"], ["probe"]):
        out = no_traceback(cli(*command, "--store", store, "--runs", runs))
        assert f"cannot write runs into {runs}: it is {who}'s (mode 0755)" in out, out
        assert f"ask {who} to make it group-writable (" in out and "make it writable or" not in out, out


def test_runs_show_of_a_colleagues_run_says_whose_folder_takes_its_pngs(tmp_path, monkeypatch):
    from featstore.experiments import evaluate
    from tests.test_adversarial_attack4 import cli

    store, runs, run, who = _colleagues(monkeypatch, tmp_path)
    shown = evaluate.show_run

    def refused(*a, unsaved, **k):  # the PNG writes as the kernel refuses them to the user
        rec, _ = shown(*a, unsaved=[], **k)
        unsaved.append(
            f"cannot write PNG {run}/confusion_test.png: folder {run} is not writable by you; write to another folder"
        )
        return rec, []

    monkeypatch.setattr(evaluate, "show_run", refused)
    out = cli("runs", "--store", store, "--runs", runs, "show", run.name).output
    assert f"the run's PNGs go into its folder {run}, which is {who}'s (mode 0755)" in out, out
    assert f"ask {who} to run `featstore runs show {run.name}`" in out and "write to another folder" not in out, out
