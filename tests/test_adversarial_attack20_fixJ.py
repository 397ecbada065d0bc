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
    ],
)
def test_a_word_that_is_a_value_is_not_taken_for_an_empty_option(tmp_path, monkeypatch, args):
    """A flag's spelling as the value of another option, or after ``--``, is a value: no "is empty" refusal."""
    store = synthetic_store(tmp_path / "s.h5")
    monkeypatch.chdir(tmp_path)
    out = no_traceback(cli(*[store if a == "STORE" else a for a in args]))
    assert "empty" not in out, out
