"""Options of one value given more than once, refused before the command runs (click keeps the last: attack 65 #2).

``fewshot --shots 1 --shots 5`` ran 5 alone, ``fit --clf svm --clf logreg`` fitted logreg, ``sweep --no-reuse --reuse``
reused every run (attack 67 #14), ``featstore --no-locking --locking`` locked (69 #6): each is one line naming the
option and the values given, escaped for the terminal (69 #5). List options (``multiple``) take repeats.
"""

from __future__ import annotations

import copy
import shlex

import typer


def refuse_repeated(command, got, name: str, args: list[str]) -> None:
    """Exit 1 naming an option that takes one value given more than once (click keeps the last: `fewshot --shots 1
    --shots 5` ran 5 alone, `fit --clf svm --clf logreg` fitted logreg, `sweep --clf logreg --clf knn` fitted knn;
    attack 65 #2), with the values given: a comma-list option's line is the one command that works (``--clf given 3
    times; list the values once, comma-separated: --clf logreg,knn,sgd``). List options (``multiple``) take repeats."""
    for param in command.params:
        if param.param_type_name != "option" or param.multiple or got[3].count(param) < 2:
            continue
        from featstore.outputs import terminal_safe  # (lazily, as cli/main.safe: start-up)

        opt = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        given = values_given(command, got[2].parent, name, args, param)
        if param.is_flag:  # `--search --search` is one wish; `--no-reuse --reuse` reused every run (attack 67 #14)
            if len(set(given)) > 1:
                pair = " and ".join([*param.opts[:1], *param.secondary_opts[:1]])
                typer.secho(f"error: {pair} both given; give one of them", fg=typer.colors.RED, err=True)
                raise typer.Exit(1)
            continue
        items = list(dict.fromkeys(i.strip() for v in given for i in v.split(",") if i.strip()))  # each once (72 #4)
        keys = [i.partition("=")[0] for i in items]  # flip and flip=vertical: two values of one item (73 #7)
        if "comma" in (param.help or "") and len(set(keys)) == len(keys):  # comma_list's options: one value, a list
            how = f"list the values once, comma-separated: {opt} {terminal_safe(shlex.quote(','.join(items)))}"
        else:
            how = f"give it once (given: {', '.join(terminal_safe(v) for v in given)})"
        typer.secho(f"error: {opt} given {len(given)} times; {how}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


def values_given(command, ctx, name: str, args: list[str], param) -> list[str]:
    """Every value ``args`` give ``param`` (an option that keeps one), in order: the words parsed again by a copy of
    ``command`` whose copy of ``param`` appends, so each is read exactly as click reads it (``--o v``, ``--o=v``, a
    short name)."""
    clone = copy.copy(param)
    clone.multiple = True
    twin = copy.copy(command)
    twin.params = [clone if p is param else p for p in command.params]
    parsed = twin.make_parser(twin.context_class(twin, parent=ctx, info_name=name)).parse_args(args=list(args))[0]
    return [str(v) for v in parsed.get(param.name) or []]


def both_sides(opt: str, group: str, group_value, command: str, value) -> str:
    """The line refusing option ``opt`` given both to a group (``featstore runs --store a show ID --store b``) and to
    its sub-command: the repeated-option rule across the two (the sub-command's value won, silently: attack 68 #2),
    with both values shell-quoted and escaped for the terminal as :func:`refuse_repeated` prints them."""
    from featstore.outputs import terminal_safe

    def shown(v) -> str:
        return terminal_safe(shlex.quote(str(v)))

    return f"{opt} given both to `{group}` ({shown(group_value)}) and to `{command}` ({shown(value)}); give it once"
