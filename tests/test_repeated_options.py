"""Attack 65 #2, everywhere: an option that takes one value, given twice, kept the last one silently (`fewshot --shots
1 --shots 5` ran 5 alone, `fit --clf svm --clf logreg` fitted logreg). Refused in one line before the command runs;
list options (extract's --split, --param) still take repeats."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from featstore.cli import app


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["fewshot", "--shots", "1", "--shots", "5"],
            "--shots given 2 times; list the values once, comma-separated: --shots 1,5",
        ),
        (
            ["fewshot", "--shots=1", "--shots", "5"],
            "--shots given 2 times; list the values once, comma-separated: --shots 1,5",
        ),
        (  # attack 72 #4: the advice listed '5' twice, which comma_list refuses
            ["fewshot", "--shots", "5", "--shots", "5"],
            "--shots given 2 times; list the values once, comma-separated: --shots 5\n",
        ),
        (
            ["sweep", "--clf", "logreg,knn", "--clf", "knn"],
            "--clf given 2 times; list the values once, comma-separated: --clf logreg,knn\n",
        ),
        (  # attack 73 #7: two values of one augmentation are no list (flip,flip=vertical was refused in turn)
            ["extract", "--augment-spec", "flip", "--augment-spec", "flip=vertical"],
            "--augment-spec given 2 times; give it once (given: flip, flip=vertical)",
        ),
        (["fit", "--clf", "svm", "--clf", "logreg"], "--clf given 2 times; give it once (given: svm, logreg)"),
        (["probe", "--k", "10", "--k", "20", "--k", "30"], "--k given 3 times"),
        (["similar", "q.png", "-k", "3", "--k=5"], "--k given 2 times; give it once (given: 3, 5)"),
        (["sweep", "--no-reuse", "--reuse"], "--reuse and --no-reuse both given; give one of them"),
        (["runs", "--store", "a.h5", "--store", "b.h5"], "--store given 2 times; give it once (given: a.h5, b.h5)"),
    ],
)
def test_an_option_of_one_value_given_twice_is_refused(tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 1 and said in got.output, got.output
    assert not list(tmp_path.iterdir())  # nothing ran


def test_list_options_still_take_repeats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, ["extract", "--data", "nodata", "--split", "train", "--split", "test"])
    assert "given 2 times" not in got.output and got.exit_code == 1, got.output  # refused for its missing --data


def test_a_flag_given_twice_the_same_way_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, ["sweep", "--search", "--search", "--no-reuse", "--no-reuse"])
    assert "given" not in got.output and "both" not in got.output and got.exit_code == 1, got.output  # no store here


def test_the_group_options_given_with_their_opposite_are_refused(tmp_path, monkeypatch):
    """Attack 69 #6: `featstore --no-locking --locking info` ran, the last flag winning."""
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, ["--no-locking", "--locking", "info"])
    assert got.exit_code == 1 and "--locking and --no-locking both given" in got.output, got.output


def test_repeated_values_are_escaped_and_quoted(tmp_path, monkeypatch):
    """Attack 69 #5: the values went to the terminal raw (an escape sequence retitled it) and the comma form unquoted
    (`b;rm -r x` came out as a command)."""
    monkeypatch.chdir(tmp_path)
    got = CliRunner().invoke(app, ["sweep", "--clf", "a", "--clf", "b;rm -r x"])
    assert got.exit_code == 1 and "--clf 'a,b;rm -r x'" in got.output, got.output
    got = CliRunner().invoke(app, ["fit", "--clf", "\x1b]0;pwned\x07", "--clf", "x"])
    assert got.exit_code == 1 and "\x1b" not in got.output and "given 2 times" in got.output, got.output
