"""Leftovers of attacks 19/20 (issue #19): one check of empty option values on the command line, empty names through
the Python API, interval decimals in `runs show`/`runs evaluate`, extract's count of skipped entries, a class folder
whose stat() fails, and an ensemble member's folder error. Synthetic stores and arrays only; each test failed before
its fix."""

from __future__ import annotations

import pytest

from tests.test_adversarial_attack3 import synthetic_store
from tests.test_adversarial_attack4 import cli, no_traceback


# ------------------------------------------------------------------ 1. empty values, every spelling
@pytest.mark.parametrize(
    "args, line",
    [
        (("fit", "--store", "STORE", "--train="), "--train is empty (an unset shell variable?); give a split name, or"),
        (("fit", "--store", "STORE", "--runs="), "--runs is empty (an unset shell variable?); give a path, or leave"),
        (
            ("fit", "--store", "STORE", "--validation", " "),
            "--validation is empty (an unset shell variable?); give a split",
        ),
        (
            ("runs", "--store", "STORE", "show", "X", "--runs", ""),
            "--runs is empty (an unset shell variable?); give a path",
        ),
        (
            ("runs", "--store", "STORE", "show", "X", "--store="),
            "--store is empty (an unset shell variable?); give a path",
        ),
        (
            ("runs", "--store", "STORE", "evaluate", "X", "--split="),
            "--split is empty (an unset shell variable?); give a",
        ),
        (("runs", "show", ""), "RUN_ID is empty (an unset shell variable?); give a run id"),
        (("runs", "compare", "X", " "), "RUN_IDS has an empty value (an unset shell variable?); give run ids"),
        (("runs", "--runs=", "show", "X"), "--runs is empty (an unset shell variable?); give a path, or leave"),
        # '' here is an image (an argument), not the value of --runs: the old word scan blamed --runs
        (
            ("predict", "--store", "STORE", "--run", "--runs", ""),
            "INPUTS has an empty value (an unset shell variable?)",
        ),
        (("predict", "--store", "STORE", "--run", "R", "--", "--out", ""), "INPUTS has an empty value"),
    ],
)
def test_an_empty_value_is_refused_in_every_spelling(tmp_path, monkeypatch, args, line):
    """``--opt=``, ``--opt ''``, options of `runs show` / `runs evaluate` after the group's own options (the old scan
    took the store's path for the sub-command and checked nothing), arguments: one line naming the option or argument
    with what it wants, before any work; the words are split by click's parser, so '' after ``--`` or after an option
    that took ``--runs`` as its value is not blamed on --runs."""
    store = synthetic_store(tmp_path / "s.h5")
    monkeypatch.chdir(tmp_path)
    result = cli(*[store if a == "STORE" else a for a in args])
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert out.startswith(f"error: {line}") and len(out.strip().splitlines()) == 1, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # nothing written


@pytest.mark.parametrize(
    "args",
    [
        ("predict", "--store", "STORE", "--run", "R", "--", "--runs", "x.png"),  # --runs is an image's name here
        ("predict", "--store", "STORE", "--run", "--runs", "x.png"),  # --runs is the value of --run
        ("fit", "--store", "STORE", "--train", "--runs", "--validation", "none", "--test", "none"),
        ("fit", "--runs", "", "--help"),  # --help shows the help, whatever the other words
    ],
)
def test_a_word_that_is_a_value_is_not_taken_for_an_empty_option(tmp_path, monkeypatch, args):
    """A flag's spelling as the value of another option, or after ``--``, is a value: no "is empty" refusal."""
    store = synthetic_store(tmp_path / "s.h5")
    monkeypatch.chdir(tmp_path)
    out = no_traceback(cli(*[store if a == "STORE" else a for a in args]))
    assert "empty" not in out, out


# ------------------------------------------------------------------ 2. empty names through the Python API
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A synthetic store and two runs fitted on it: (store, runs folder, [run ids])."""
    from featstore import fit

    root = tmp_path_factory.mktemp("fixJ")
    store = synthetic_store(root / "s.h5")
    runs = root / "runs"
    return store, runs, [fit(store, clf, runs=runs)["id"] for clf in ("logreg", "knn")]


@pytest.mark.parametrize(
    "call, message",
    [
        ("fit(store, validation='', runs=out)", "validation='' is an empty split name"),
        ("fit(store, test=' ', runs=out)", "test=' ' is an empty split name"),
        ("fit(store, extractor='', runs=out)", "extractor='' is an empty extractor name"),
        ("sweep(store, ['logreg'], extractors=[''], runs=out)", "extractors=[''] holds an empty extractor name"),
        ("probe(store, validation='', runs=out)", "validation='' is an empty split name"),
        ("fewshot(store, train='', runs=out)", "train='' is an empty split name"),
        ("evaluate_run(ids[0], '', store, runs)", "split='' is an empty split name (an unset variable?); give a split"),
        ("predict(ids[0], [], store=store, runs=runs, weights='')", "weights='' is an empty weights name"),
        ("extract(tmp_path, '', out_store)", "split='' is an empty split name"),
        ("extract(tmp_path, 'train', out_store, name='')", "name='' is an empty extractor name"),
    ],
)
def test_the_api_refuses_an_empty_name_naming_the_argument(fitted, tmp_path, call, message):
    """``fit(store, validation='')`` chose by cross-validation and recorded the run (the CLI refuses --validation '');
    each API function taking a split, extractor, run, layer or weights name now refuses an empty one in a
    ConfigError (a ValueError) that names the argument, before anything is written."""
    import featstore
    from featstore.errors import ConfigError

    store, runs, ids = fitted
    names = {
        n: getattr(featstore, n) for n in ("fit", "sweep", "probe", "fewshot", "evaluate_run", "predict", "extract")
    }
    out, out_store = tmp_path / "new-runs", tmp_path / "new.h5"
    with pytest.raises(ConfigError) as caught:
        eval(
            call,
            names
            | {"store": store, "runs": runs, "ids": ids, "out": out, "out_store": out_store, "tmp_path": tmp_path},
        )
    assert str(caught.value).startswith(message), caught.value
    assert isinstance(caught.value, ValueError) and "--" not in str(caught.value)  # the argument, not a CLI flag
    assert not out.exists() and not out_store.exists()


# ------------------------------------------------------------------ 3. interval decimals in runs show / evaluate
@pytest.mark.parametrize(
    "command", [("show", "RUN"), ("evaluate", "RUN", "--split", "test"), ("compare", "RUN", "RUN2")]
)
def test_accuracy_and_its_interval_have_the_same_decimals(fitted, command):
    """`runs show` and `runs evaluate` printed "accuracy 0.9333 [0.702, 0.988]": the interval to 3 decimals beside a
    4-decimal accuracy (the runs table shows both to 4). Every accuracy line now has 4 decimals throughout."""
    import re

    store, runs, ids = fitted
    args = [{"RUN": ids[0], "RUN2": ids[1]}.get(a, a) for a in command]
    result = cli("runs", *args, "--store", store, "--runs", runs)
    out = no_traceback(result)
    assert result.exit_code == 0, out
    shown = re.findall(r"accuracy (\d\.\d+) \[(\d\.\d+), (\d\.\d+)\]", out)
    assert shown and all(len(x) == 6 for triple in shown for x in triple), out


# ------------------------------------------------------------------ 5. a class folder whose stat() fails
def _split(tmp_path):
    """data/train/{a,b}/ with one tiny PNG each."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "data" / "train" / cls / "x.png")
    return tmp_path / "data"


@pytest.mark.parametrize("how", ["stat fails", "broken link", "link loop"])
def test_a_class_folder_that_cannot_be_stat_ed_is_refused_naming_it(tmp_path, monkeypatch, how):
    """A class folder whose stat() fails (EIO, a permission root is not stopped by: os.stat monkeypatched) ended
    discover in an OSError traceback; a class folder that is a broken link, or a loop of links, was left out without
    a word (its images silently missing from the split, a class fewer). Each is a DataError naming the folder."""
    import errno
    import os

    from featstore.errors import DataError
    from featstore.images.listing import discover

    data = _split(tmp_path)
    bad = data / "train" / "c"
    if how == "stat fails":
        bad.mkdir()
        real_stat = os.stat

        def failing(path, *args, **kwargs):
            if os.fspath(path).rstrip(os.sep) == str(bad):
                raise OSError(errno.EIO, "Input/output error", str(bad))
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", failing)
    elif how == "broken link":
        bad.symlink_to(tmp_path / "gone")
    else:
        bad.symlink_to(bad)
    with pytest.raises(DataError) as caught:
        discover(data, "train")
    text = str(caught.value)
    assert "class folder" in text and str(bad) in text and "\n" not in text, text


# ------------------------------------------------------------------ 4. extract's summary counts what it passed over
def test_extract_summary_counts_the_entries_it_left_out(tmp_path, caplog):
    """A broken link and a file whose stat() fails were each one "not following" warning, and the summary line said
    "wrote 4 rows ..., 0 failed" as if every entry had been read: it now counts the entries left out and the
    non-image files ignored, says where each is listed, and so does the line of a re-run that finds the split done."""
    from tests.conftest import write_images

    data = tmp_path / "data"
    write_images(data, "train", {"cat": 2, "dog": 2})
    (data / "train" / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (data / "train" / "dog" / "notes.txt").write_text("not an image")
    args = ("extract", "--data", data, "--split", "train", "--store", tmp_path / "f.h5", "--weights", "none",
            "--image-size", "32")  # fmt: skip
    for run in ("first", "again"):
        result = cli(*args)
        out = no_traceback(result)
        assert result.exit_code == 0, out
        line = next((x for x in out.splitlines() if x.startswith(("wrote ", str(tmp_path)))), out)
        assert "0 failed, 1 entry left out (links not followed, unreadable: the 'not following' warnings" in line, line
        assert "1 non-image file ignored (by suffix in the log above)" in line, (run, line)
        assert "not following train/cat/gone.png: broken link" in caplog.text, caplog.text  # the warning named


# ------------------------------------------------------------------ 6. another run folder's OSError in a draft
def test_a_draft_names_another_run_folder_whose_file_cannot_be_read(tmp_path):
    """RunDraft passed an OSError of another run folder met in its body (an ensemble's member) through unchanged: a
    traceback naming a file deep in the member. It is one line naming the member's folder and the fix now; an OSError
    of a file beside the run folders (a store under --runs .) still passes through as it is."""
    import errno

    from featstore.errors import FeatstoreError
    from featstore.runs.write import RunDraft

    root = tmp_path / "runs"
    member = root / "logreg-1a2b3c"
    member.mkdir(parents=True)
    with pytest.raises(FeatstoreError) as caught:
        with RunDraft(root, "ensemble"):
            raise OSError(errno.EIO, "Input/output error", str(member / "predictions.npz"))
    text = str(caught.value)
    assert f"run folder {member} cannot be read (Input/output error" in text, text
    assert "fix its permissions or restore that file" in text and "\n" not in text, text
    assert sorted(p.name for p in root.iterdir()) == [member.name]  # no draft left
    (root / "f.h5").write_bytes(b"")
    with pytest.raises(OSError) as caught:
        with RunDraft(root, "logreg"):
            raise OSError(errno.EIO, "Input/output error", str(root / "f.h5"))
    assert not isinstance(caught.value, FeatstoreError)


def test_an_ensemble_member_that_cannot_be_read_is_not_called_broken(fitted, tmp_path, monkeypatch):
    """A member's predictions.npz that cannot be opened for permissions or a disk error (EACCES, EIO) was "cannot be
    read or do not match run.json ...; remove the folder and fit again": advice that deletes a sound run. The line
    names the member's folder and says to fix its permissions or disk."""
    import builtins
    import errno
    import shutil

    from featstore import ensemble
    from featstore.errors import FeatstoreError
    from featstore.runs import folder as run_folder

    store, runs_src, ids = fitted
    runs = shutil.copytree(runs_src, tmp_path / "runs")
    real_open = builtins.open

    def failing(path, *args, **kwargs):
        if str(path).endswith("predictions.npz") and ids[1] in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_folder, "open", failing, raising=False)
    with pytest.raises(FeatstoreError) as caught:
        ensemble(ids, store=store, runs=runs)
    text = str(caught.value)
    assert f"run folder {runs / ids[1]}" in text and "Permission denied" in text, text
    assert "fix the permissions or the disk" in text and "remove the folder" not in text, text
    assert sorted(p.name for p in runs.iterdir()) == sorted(p.name for p in runs_src.iterdir())  # nothing recorded
