"""Attack 71, finding 2: a live extract of another model's split of the same name hid a killed, incomplete one.

``check`` took the writer lock's holder for the writer of every unfinished split of the name it records (``train``),
in every extractor group: a killed ``vgg16/train`` was "no problem found so far", exit 75, while an extract of
``resnet50/train`` ran. The writer now records the groups it writes the split in, and only those are its work.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from featstore import extract
from featstore.cli import app
from featstore.errors import ConfigError
from featstore.store.check import check_store
from featstore.store.lockholder import holder
from featstore.store.resume import resume_advice
from featstore.store.writer import writer_lock

from .conftest import interrupt_after_one_batch

PROBLEM = f"/vgg16/train: split train is not complete (4 of 12 images); {resume_advice('train')}"


def _interrupted(tmp_path, data_root, tiny_config, monkeypatch):
    path = tmp_path / "features.h5"
    extract(data_root, "test", path, tiny_config, batch_size=4)
    interrupt_after_one_batch(monkeypatch, data_root, "train", path, tiny_config, batch_size=4)
    return path


def test_a_live_writer_of_another_models_split_hides_no_killed_one(tmp_path, data_root, tiny_config, monkeypatch):
    """Held by a writer of `resnet50/train`: the killed `vgg16/train` is a problem (exit 1); held by one of
    `vgg16/train`, a note (exit 75). Sabotage: Writing.says ignoring the recorded groups fails it."""
    path = _interrupted(tmp_path, data_root, tiny_config, monkeypatch)
    notes: list[str] = []
    with writer_lock(path, writing="train", names=["resnet50"]):
        assert holder(path).names == ("resnet50",)
        assert check_store(path, notes=notes) == [PROBLEM] and notes == []
        res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 1, res.output
    with writer_lock(path, writing="train", names=["vgg16", "vgg16@block4_pool"]):
        assert check_store(path, notes=notes) == [] and len(notes) == 1
        res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 75, res.output


def test_extract_records_the_groups_it_writes(tmp_path, data_root, tiny_config, monkeypatch):
    """What extract writes into the pid file while it holds the lock: its pid, the split, and its groups."""
    from featstore.store import locking

    seen: list[str] = []
    real = locking._write_pid

    def spy(pid_path, writing=None, names=None, copies=False):
        real(pid_path, writing, names, copies)
        with open(pid_path) as fh:
            seen.append(fh.read())

    monkeypatch.setattr(locking, "_write_pid", spy)
    extract(data_root, "test", tmp_path / "s.h5", tiny_config, batch_size=4)
    lines = seen[-1].splitlines()
    assert int(lines[0]) == os.getpid() and json.loads(lines[1]) == "test" and json.loads(lines[2]) == ["vgg16"]
    assert json.loads(lines[3]) is False  # no --augment: it writes no copies (attack 73 #3)


def test_an_older_record_without_groups_covers_the_split_in_every_group(tmp_path, data_root, tiny_config, monkeypatch):
    """A pid file of an older featstore (pid and split only), or a damaged groups line: the writer's split in any
    group is its work, as before (nothing it might be writing is called killed)."""
    path = _interrupted(tmp_path, data_root, tiny_config, monkeypatch)
    for groups in (None, "[1, 2]", "{not json"):
        with writer_lock(path, writing="train"):
            pid_file = f"{path}.lock.pid"
            text = f'{os.getpid()}\n"train"' + (f"\n{groups}" if groups else "")
            with open(pid_file, "w") as fh:
                fh.write(text)
            notes: list[str] = []
            assert check_store(path, notes=notes) == [] and len(notes) == 1, groups


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::sklearn.exceptions.ConvergenceWarning")  # as printed
def test_a_sweeps_divergence_names_the_param_as_sweep_takes_it(tmp_path):
    """Attack 72 #6: sweep --param logreg:scale=false on rows of about 1e12 diverged and said "drop --param
    scale=false", a form sweep refuses; the line now names the sweep's form too, and that form is the one given."""
    import numpy as np

    from featstore.store.writer import write_arrays

    rng = np.random.default_rng(0)
    store = tmp_path / "big.h5"
    for s in ("train", "validation", "test"):  # under every limit, too large unstandardised
        y = np.arange(60) % 3
        X = ((rng.normal(size=(60, 8)) + y[:, None] * 2) * 1e12).astype(np.float32)
        write_arrays(store, "synthetic", s, X, y, ["a", "b", "c"])
    args = ["sweep", "--store", str(store), "--clf", "logreg", "--runs", str(tmp_path / "r")]
    res = CliRunner().invoke(app, [*args, "--param", "logreg:scale=false"])
    assert res.exit_code == 1 and "in a sweep: --param logreg:scale=false)" in res.output, res.output


@pytest.mark.parametrize("name", ["cnn,v2", "a/b"])
def test_an_extractor_name_sweep_could_not_choose_is_refused(tmp_path, data_root, name):
    """Attack 72 #3: `extract --name cnn,v2` was accepted, and sweep's and probe's --extractor (comma lists) could
    never name it ("has no extractor 'cnn'; it has: cnn,v2"); write_arrays took even 'a/b' (a group /a that check
    called damaged). Both refuse them now, before the store is made."""
    import numpy as np

    from featstore.store.writer import write_arrays

    res = CliRunner().invoke(
        app,
        ["extract", "--data", str(data_root), "--split", "train", "--store", str(tmp_path / "s.h5"), "--name", name],
    )
    assert res.exit_code == 1 and "is not allowed" in res.output and "Traceback" not in res.output, res.output
    with pytest.raises(ConfigError, match="is not allowed"):
        write_arrays(tmp_path / "w.h5", name, "train", np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]), ["x", "y"])
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "w.h5").exists()


# ---------------------------------------------------------------- attack 73 #3, #4: what the lock's record may hide
def _copies_past_commit(tmp_path, data_root, tiny_config):
    """A store whose train split is complete and whose augmented copies hold 2 rows past their commit (a killed
    extract --augment between a batch's data and its commit)."""
    import h5py

    path = tmp_path / "features.h5"
    extract(data_root, "train", path, tiny_config, batch_size=4, augment=1)
    with h5py.File(path, "a") as f:
        ag = f["vgg16/train/augmented"]
        for key in ("features", "labels", "paths", "copy"):
            ag[key].resize(ag[key].shape[0] + 2, axis=0)
    return path


def test_a_live_writer_without_copies_hides_no_killed_copies(tmp_path, data_root, tiny_config):
    """Attack 73 #3: a live extract of vgg16/train without --augment (another --layer, say) made the killed copies'
    tail a note, exit 75. Its record now says it writes no copies: they stay a problem; one writing copies: a note."""
    path = _copies_past_commit(tmp_path, data_root, tiny_config)
    notes: list[str] = []
    with writer_lock(path, writing="train", names=["vgg16"]):
        assert holder(path).copies is False
        problems = check_store(path, notes=notes)
    assert len(problems) == 1 and "uncommitted rows" in problems[0] and notes == [], problems
    with writer_lock(path, writing="train", names=["vgg16"], copies=True):
        assert check_store(path, notes=notes) == [] and len(notes) == 1, notes


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to made-up users needs root")


@needs_root
@pytest.mark.parametrize("planted", ["both", "pid file only"])
def test_a_colleagues_lock_record_hides_no_killed_split(tmp_path, data_root, tiny_config, monkeypatch, planted):
    """Attack 73 #4: in a shared folder, a colleague's lock file and pid file ("1", "train"), the lock held, hid the
    owner's killed split (exit 75) for as long as he liked; so did his pid file alone while her own writer held the lock
    (it could not replace his file). A record that is not one user's who may write the store is not read: the killed
    split is a problem, and a note names whose record it is. Sabotage: holder() trusting any record fails it."""
    path = _interrupted(tmp_path, data_root, tiny_config, monkeypatch)
    colleague = 54321
    with writer_lock(path, writing="test", names=["vgg16"]):
        pid_file = f"{path}.lock.pid"
        with open(pid_file, "w") as fh:
            fh.write('1\n"train"')
        os.chown(pid_file, colleague, colleague)
        if planted == "both":
            os.chown(f"{path}.lock", colleague, colleague)
        notes: list[str] = []
        assert check_store(path, notes=notes) == [PROBLEM]
        assert holder(path).stranger is not None and len(notes) == 1, notes
        res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 1, res.output


@needs_root
def test_a_team_stores_writer_of_another_user_is_still_read(tmp_path, data_root, tiny_config, monkeypatch):
    """A store its group may write (a team's): a colleague's writer, lock file and pid file both his, is a writer of
    it, and the split he records writing is his work in progress (a note, exit 75)."""
    path = _interrupted(tmp_path, data_root, tiny_config, monkeypatch)
    os.chmod(path, 0o664)
    colleague = 54321
    with writer_lock(path, writing="train", names=["vgg16"]):
        for f in (f"{path}.lock.pid", f"{path}.lock"):
            os.chown(f, colleague, colleague)
        notes: list[str] = []
        assert check_store(path, notes=notes) == [] and len(notes) == 1


def test_a_group_named_with_a_comma_before_keeps_its_name_for_its_resume(tmp_path, data_root, tiny_config, monkeypatch):
    """Attack 73 #1: a store's group named `cnn,v2` (accepted before commas were refused) with a killed split: every
    line said to resume it with extract, and extract refused the name. A name the store holds is taken for its own
    group (resume, new splits); a new one with a comma is still refused (its finetune cache's name: the doctest of
    finetune_cache.cache_group, 73 #5)."""
    import h5py

    from featstore.store.reader import FeatureStore

    path = tmp_path / "features.h5"
    extract(data_root, "test", path, tiny_config, batch_size=4, name="cnnv2")
    interrupt_after_one_batch(monkeypatch, data_root, "train", path, tiny_config, batch_size=4, name="cnnv2")
    with h5py.File(path, "a") as f:
        f.move("cnnv2", "cnn,v2")  # byte for byte what an extract before the refusal wrote with --name cnn,v2
    assert check_store(path)  # the killed split: a problem, advising the resume
    extract(data_root, "train", path, tiny_config, batch_size=4, name="cnn,v2")  # the resume runs
    extract(data_root, "validation", path, tiny_config, batch_size=4, name="cnn,v2")  # and a new split
    assert check_store(path) == [] and FeatureStore(path).splits("cnn,v2") == ["test", "train", "validation"]
    with pytest.raises(ConfigError, match="is not allowed"):
        extract(data_root, "test", path, tiny_config, batch_size=4, name="new,one")


def test_a_layer_name_tensorflow_cannot_run_is_refused_naming_it(tmp_path, data_root):
    """Attack 73 #6: `--layer 'conv 1,gap'` (Keras saves the space) was refused with "choose one with --name NAME",
    and with --name x in turn; `--layer 'conv 1' --name conv1` then ended in a 40-line ValueError traceback at the
    first batch (TensorFlow: "'conv 1' is not a valid root scope name"), and so did the model without --layer. The
    model is refused as it is loaded, in one line naming the layer and the fix, whatever the options."""

    args = _extract_args(tmp_path, data_root, "conv 1")
    for extra in ([], ["--layer", "conv 1,gap"], ["--layer", "conv 1", "--name", "conv1"]):
        res = CliRunner().invoke(app, [*args, *extra])
        assert res.exit_code == 1 and "layer 'conv 1' has a name TensorFlow cannot run" in res.output, res.output
        assert "'conv_1'" in res.output and "Traceback" not in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "m.h5").exists()


def test_a_layer_name_tensorflow_runs_is_not_refused(tmp_path, data_root):
    """Attack 74 #8: a layer named `_c1` was refused at load (the root-scope rule); a layer runs inside its model's
    scope, where TensorFlow takes a leading underscore, and the model extracts."""

    args = _extract_args(tmp_path, data_root, "_c1")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def test_a_layer_name_no_group_can_carry_names_the_layer(tmp_path, data_root):
    """A layer TensorFlow runs whose name no group can carry (`conv>1`): with several --layer, the line names the layer
    and the way that works (it on its own, --name), not --name alone, which cannot fix it (attack 73 #6)."""
    import shlex

    args = _extract_args(tmp_path, data_root, "conv>1")
    for extra in ([], ["--name", "x"]):
        res = CliRunner().invoke(app, [*args, "--layer", "conv>1,gap", *extra])
        assert res.exit_code == 1 and "layer 'conv>1' cannot be part of a group's name" in res.output, res.output
    advised = shlex.split(res.output.split("named by you: ")[1].strip())
    assert advised == ["--layer", "conv>1", "--name", "NAME"], advised
    res = CliRunner().invoke(app, [*args, "--layer", "conv>1", "--name", "conv1"])
    assert res.exit_code == 0, res.output


def test_incomplete_copies_with_their_rows_committed_are_a_problem(tmp_path, data_root, tiny_config):
    """Attack 73 #2: an extract --augment killed between batches of its copies (their rows committed, not complete):
    check said OK, exit 0, on a store `fit --augmented` refuses. Now a problem with the resume advice; a note while the
    lock's holder records writing those copies."""
    import h5py

    path = tmp_path / "features.h5"
    extract(data_root, "train", path, tiny_config, batch_size=4, augment=2)
    with h5py.File(path, "a") as f:
        f["vgg16/train/augmented"].attrs["complete"] = False  # killed after a commit, before the copies' end
    problems = check_store(path)
    assert len(problems) == 1 and "the augmented copies are not complete" in problems[0], problems
    assert resume_advice("train", augment=2) in problems[0]
    res = CliRunner().invoke(app, ["check", str(path)])
    assert res.exit_code == 1, res.output
    notes: list[str] = []
    with writer_lock(path, writing="train", names=["vgg16"], copies=True):
        assert check_store(path, notes=notes) == [] and len(notes) == 1, notes


def test_info_marks_being_written_only_what_the_writer_records(tmp_path, data_root, tiny_config, monkeypatch):
    """`info` said "BEING WRITTEN by pid N" of every unfinished split while any writer held the lock (a killed train
    beside a live extract of test): only the split (and copies) the lock's holder records writing is so marked."""
    from featstore.report.tables import store_tree

    path = _interrupted(tmp_path, data_root, tiny_config, monkeypatch)
    with writer_lock(path, writing="test", names=["vgg16"]):
        tree = store_tree(str(path))
    assert "/train   INCOMPLETE (4/12 images done;" in tree and "BEING WRITTEN" not in tree, tree
    with writer_lock(path, writing="train", names=["vgg16"]):
        tree = store_tree(str(path))
    assert f"/train   BEING WRITTEN by pid {os.getpid()} (4/12 images done)" in tree, tree


def test_the_sites_runs_table_marks_rows_a_run_was_fitted_on(tmp_path):
    """The site's runs table marked a figure "selected here" but not "fitted on these rows" (a final refit on
    trainval showed validation's 1.000 unmarked there; the run's own page marked it)."""
    import numpy as np

    import featstore
    from featstore.store.writer import write_arrays

    rng, store = np.random.default_rng(0), tmp_path / "s.h5"
    rows = {}
    for split, n in (("train", 30), ("validation", 12), ("test", 12)):
        y = (np.arange(n) % 3).astype(np.int32)
        rows[split] = ((rng.normal(size=(n, 5)) + y[:, None]).astype(np.float32), y)
        write_arrays(store, "syn", split, *rows[split], list("abc"))
    X = np.concatenate([rows["train"][0], rows["validation"][0]])
    write_arrays(store, "syn", "trainval", X, np.concatenate([rows["train"][1], rows["validation"][1]]), list("abc"))
    featstore.fit(store, "knn", {"n_neighbors": [1]}, runs=tmp_path / "runs", train="trainval")
    featstore.build_report(store, runs=tmp_path / "runs", out=tmp_path / "site", leaks=False)
    index = (tmp_path / "site" / "index.html").read_text()
    assert index.count("fitted on these rows: resubstitution") == 1, index


def test_runs_compare_gives_no_rebuild_steps_on_its_members_training_rows(tmp_path):
    """fixDJ's rule (attack 71 #1) in runs compare too: where to judge an ensemble whose members were fitted on
    test's rows is not "evaluate its members on test, then make the ensemble again" (a dead end)."""
    import numpy as np

    import featstore
    from featstore.experiments.compare import compare_pair

    rng, store, runs = np.random.default_rng(0), tmp_path / "s.h5", tmp_path / "runs"
    rows = {}
    for split, n in (("train", 30), ("validation", 12), ("test", 12)):
        y = (np.arange(n) % 3).astype(np.int32)
        rows[split] = ((rng.normal(size=(n, 5)) + y[:, None]).astype(np.float32), y)
        write = featstore.store.writer.write_arrays
        write(store, "syn", split, *rows[split], list("abc"))
    X, y = (np.concatenate([rows[s][i] for s in rows]) for i in (0, 1))
    featstore.store.writer.write_arrays(store, "syn", "all", X, y, list("abc"))
    a = featstore.fit(store, "knn", {"n_neighbors": [1]}, runs=runs, train="all", test="none")
    b = featstore.fit(store, "knn", {"n_neighbors": [3]}, runs=runs, train="all", test="none")
    ens = featstore.ensemble([a.id, b.id], None, store, runs, "validation")
    said = compare_pair(ens.id, a.id, store, runs).splits["validation"].elsewhere
    assert "resubstitution" in said and "featstore ensemble" not in said, said


def test_float16_overflow_is_named_with_its_fix(caplog):
    """Attack 75 #5: features over float16's 65504 stored as inf under --dtype float16 were blamed on the images and
    the model's weights; the warning names --dtype float32. Other NaN/inf rows keep the images-and-weights advice."""
    import logging

    import numpy as np

    from featstore.extraction.loop import warn_nonfinite

    with caplog.at_level(logging.WARNING, logger="featstore"):
        warn_nonfinite([np.array([[1.0, np.inf]], np.float16)], ["g"], "train", ["a.png"], 1, (0, 0))
        warn_nonfinite([np.array([[1.0, np.nan]], np.float32)], ["g"], "train", ["a.png"], 2, (1, 1))
    first, second = (r.getMessage() for r in caplog.records)
    assert "extract with --dtype float32" in first and "weights" not in first, first
    assert "model's weights" in second and "float16" not in second, second


def _extract_args(tmp_path, data_root, layer: str) -> list[str]:
    """`featstore extract` of a saved model m.keras (32 px) whose first layer is named ``layer``."""
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name=layer)(inp)
    keras.Model(inp, keras.layers.GlobalAveragePooling2D(name="gap")(x)).save(tmp_path / "m.keras")
    args = ["extract", "--data", str(data_root), "--split", "train", "--store", str(tmp_path / "m.h5")]
    return [*args, "--model", str(tmp_path / "m.keras"), "--image-size", "32"]
