"""Attack 21 (issue #19), the command line's check of empty values: an empty positional argument of every command, the
"(or none)" advice given only where the command takes none, and a sub-command's --help after the group's empty
option. No store is read: each refusal comes before any work. Each test failed with its part of the fix undone."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer

from featstore.cli import app
from tests.test_adversarial_attack4 import cli, no_traceback


def _arguments():
    """(command words, argument) for every positional argument of every command, sub-commands of groups included,
    read from the typer app (a command added later is covered without editing this list)."""
    found = []

    def walk(command, words):
        for sub_name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, [*words, sub_name])
        for param in command.params:
            if param.param_type_name == "argument":
                found.append((tuple(words), param))

    walk(typer.main.get_command(app), [])
    return found


def _takes_text(annotation) -> bool:
    """Whether an argument holds text: str or a path, alone, optional or in a list."""
    if annotation in (str, Path):
        return True
    return any(_takes_text(a) for a in typing.get_args(annotation))


ARGUMENTS = [(words, p) for words, p in _arguments() if _takes_text(p.type_descriptor.annotation)]


def test_the_walk_finds_the_arguments_users_type():
    """The walk below is not empty by accident: it holds predict's images, info/check's store, similar's query."""
    names = {(" ".join(words), p.name) for words, p in ARGUMENTS}
    assert {("predict", "inputs"), ("info", "store"), ("check", "store"), ("similar", "query")} <= names, names


@pytest.mark.parametrize("blank", ["", "  "])
@pytest.mark.parametrize("words, param", ARGUMENTS, ids=[" ".join(w) + ":" + p.name for w, p in ARGUMENTS])
def test_an_empty_positional_argument_is_refused_naming_it(tmp_path, monkeypatch, words, param, blank):
    """`predict "$IMAGES" --run R` with IMAGES unset predicted every image under the current folder (rc 0: typer
    turns '' into Path('.')); `info ""` said "store . is not a regular file"; `similar ""` was not checked at all.
    Every text or path argument, empty or all spaces, is now refused in one line naming it, before any work."""
    monkeypatch.chdir(tmp_path)
    result = cli(*words, blank)
    out = no_traceback(result)
    label = (param.metavar or param.name).upper()
    assert result.exit_code == 1, out
    assert out.startswith(f"error: {label} ") and "(an unset shell variable?); give " in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert list(tmp_path.iterdir()) == []  # nothing written where '' would have pointed


@pytest.mark.parametrize(
    "command, option, takes_none",
    [
        ("fit", "--validation", True),
        ("fit", "--test", True),
        ("sweep", "--validation", True),
        ("sweep", "--test", True),
        ("probe", "--validation", False),
        ("probe", "--test", False),
        ("fewshot", "--test", False),
    ],
)
def test_or_none_is_advised_only_where_the_command_takes_none(tmp_path, monkeypatch, command, option, takes_none):
    """`probe --validation ''` advised "give a split name (or none)" and `probe --validation none` was then refused
    ("no complete 'none' split"); the advice came from the option's name whatever the command. It now says
    "(or none)" only where the option's help names `none` (fit and sweep)."""
    monkeypatch.chdir(tmp_path)
    result = cli(command, option, "")
    out = no_traceback(result)
    assert result.exit_code == 1, out
    assert out.startswith(f"error: {option} is empty (an unset shell variable?); give a split name"), out
    assert ("(or none)" in out) == takes_none, out


@pytest.mark.parametrize("sub", ["show", "compare", "evaluate"])
def test_a_sub_command_help_is_shown_after_the_group_s_empty_option(tmp_path, monkeypatch, sub):
    """`runs --store '' show --help` was refused for --store (the group's words come first), while every other --help
    shows the help whatever the other words; it now shows show's help. Without --help the empty --store is still
    refused."""
    monkeypatch.chdir(tmp_path)
    helped = cli("runs", "--store", "", sub, "--help")
    out = no_traceback(helped)
    assert helped.exit_code == 0 and f"runs {sub}" in out and "empty" not in out, out
    refused = cli("runs", "--store", "", sub, "X")
    out = no_traceback(refused)
    assert refused.exit_code == 1 and out.startswith("error: --store is empty (an unset shell variable?)"), out


def test_an_argument_with_no_words_of_its_own_is_refused_too():
    """An argument :data:`featstore.cli.main._NAMED` does not know (a command added later) is refused as well, with
    "give a value": an empty argument is never meant, whatever it names."""
    from typer.testing import CliRunner

    from featstore.cli.main import _Group

    other, seen = typer.Typer(cls=_Group), []

    @other.callback()
    def group() -> None:
        """A group, as featstore's app is."""

    @other.command()
    def tag(word_list: str) -> None:  # a str argument, named nowhere in _NAMED
        seen.append(word_list)

    result = CliRunner().invoke(other, ["tag", " "])
    out = no_traceback(result)
    assert result.exit_code == 1 and seen == [], out
    assert out.startswith("error: WORD_LIST is empty (an unset shell variable?); give a value"), out
