"""Commands on recorded runs: runs (list, show, compare, evaluate), ensemble, finetune, predict."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from featstore.cli.main import ExtractorOpt, RunsOpt, StoreOpt, _errors, _Group, app, comma_list, echo, refuse_runs_file  # noqa: F401
from featstore.cli.repeated import both_sides
from featstore.errors import ConfigError, OutputError, StoreError

logger = logging.getLogger(__name__)


SubStoreOpt = Annotated[
    Optional[Path], typer.Option(help="HDF5 store file (default: the one given to `runs`, else features.h5).")
]


_GROUP = {"store": "--store", "runs": "--runs", "json_out": "--json"}  # the options `runs` passes to its sub-commands


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether ``name`` was typed on this command's own words (not its default). By the source's name: typer carries
    its own copy of click, whose enum is not ``click.core.ParameterSource``."""
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


def _place(store, runs, named, scored=None):
    """The :class:`featstore.runs.fittedrows.RowsPlace` of the store and runs folder a command was given (attack 74
    #1, #3), passed to what marks its figures: the training rows from ``named`` (the store typed, None for the
    default: attack 76 #3, an unrelated ./features.h5 was taken for the run's) where its training split is the run's,
    else from the run's recorded store; ``scored``: the store whose split the command scored (`runs evaluate`)."""
    from featstore.runs.fittedrows import RowsPlace
    from featstore.runs.folder import runs_root

    return RowsPlace(named, runs_root(store, runs), scored)


def _named(ctx: typer.Context, store: Path | None) -> Path | None:
    """The store a `runs` sub-command was given (on its own words or the group's), None when none was."""
    return store or (ctx.obj or {}).get("store")


def _group_defaults(
    ctx: typer.Context, store: Path | None, runs: Path | None, json_out: bool = False
) -> tuple[Path, Path | None, bool]:
    """Options of a `runs` sub-command, falling back to those given to `runs` itself (``featstore runs --json --store
    X show ID`` is ``featstore runs show ID --json --store X``: the group's --json was dropped, attack 68 #2). One
    rule with the repeated-option rule: a value option given on both sides is refused, naming both values, as
    ``show --store a --store b`` is; the --json flag on both sides is one wish."""
    obj = ctx.obj or {}
    mine = {"store": store, "runs": runs, "json_out": json_out}
    for name, opt in _GROUP.items():
        if name in obj and _given(ctx, name) and name != "json_out":
            raise ConfigError(
                both_sides(opt, "featstore runs", obj[name], f"featstore runs {ctx.info_name}", mine[name])
            )
    store, runs = store or obj.get("store") or Path("features.h5"), runs or obj.get("runs")
    refuse_runs_file(store, runs)
    return store, runs, json_out or bool(obj.get("json_out"))


runs_app = typer.Typer(cls=_Group, help="List, show, compare and evaluate recorded runs.", no_args_is_help=False)
app.add_typer(runs_app, name="runs")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _echo_json(obj) -> None:
    """One JSON document on stdout."""
    import json

    typer.echo(json.dumps(obj, indent=1))


@runs_app.callback(invoke_without_command=True)
@_errors
def runs_list(
    ctx: typer.Context,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of text (this table, or the sub-command's output).")
    ] = False,
) -> None:
    """Table of every run: classifier, parameters, validation/test accuracy with 95 % intervals, seconds, fingerprint; broken run folders with the reason."""
    # `featstore runs --store X --json show ID` works too: what was typed here reaches the sub-command
    ctx.obj = {
        name: value for name, value in (("store", store), ("runs", runs), ("json_out", json_out)) if _given(ctx, name)
    }
    if ctx.invoked_subcommand is not None:
        return
    refuse_runs_file(store, runs, missing=True)  # a mistyped --runs is not "no runs yet"
    from featstore.report.tables import runs_json, runs_table
    from featstore.runs.folder import runs_dir, scan_runs_of

    if runs is None and not os.path.lexists(runs_dir(store)) and not store.is_file():  # a mistyped --store too
        what = "is not a regular file (a folder, FIFO or device)" if os.path.lexists(store) else "does not exist"
        what = f"is a link to nothing ({os.readlink(store)})" if store.is_symlink() and not store.exists() else what
        raise StoreError(
            f"store {store} {what}, and no runs folder {runs_dir(store)} is beside it: pass --store with the store "
            f"your runs were fitted on, or --runs with their folder (`featstore extract` makes a store, `featstore "
            f"fit` its runs)"
        )

    listing = scan_runs_of(store, runs)
    place = _place(store, runs, store if _given(ctx, "store") else None)  # as show's (attack 77 #2: none was used)
    if json_out:
        _echo_json(runs_json(listing.records, listing.broken, listing.unreadable, place=place))
        return
    echo(runs_table(listing.records, listing.broken, listing.unreadable, place=place))


@runs_app.command("show")
@_errors
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    store: SubStoreOpt = None,
    runs: RunsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every figure of a run with its 95 % interval, its calibration, the per-class report; writes PNGs (confusion matrix and reliability diagram per split, training curves) into its folder."""
    from featstore.experiments.evaluate import show_run
    from featstore.report.runs import split_marks
    from featstore.report.tables import run_report

    named = _named(ctx, store)
    store, runs, json_out = _group_defaults(ctx, store, runs, json_out)
    unsaved: list[str] = []  # a read-only runs folder or a full disk: the figures are shown, then one line
    rec, pngs = show_run(run_id, store, runs, unsaved=unsaved)
    selected = _selected(rec, store, runs)  # the sweeps and members of its folder (67 #9)
    place = _place(store, runs, named)  # the run's training rows, an ensemble's members from its folder (74, 76 #3)
    if json_out:  # the text's marks too (attack 71 #8: the bare record said neither)
        _echo_json({**rec.to_json(), "pngs": [str(p) for p in pngs], "marks": split_marks(rec, selected, place=place)})
    else:
        echo(run_report(rec, pngs, selected=selected, place=place))
    if unsaved:
        more = f" ({len(unsaved)} PNGs not written, this is the first)" if len(unsaved) > 1 else ""
        rest = "its other PNGs were written" if pngs else "its PNGs were not written"
        first = _theirs_png_line(run_id, store, runs) or f"{unsaved[0]}{more}"
        raise OutputError(f"{first}. The figures above are the run's; {rest}.")


def _theirs_png_line(run_id: str, store, runs) -> str | None:
    """Where a run's PNGs were refused because its folder is a colleague's (no option writes them elsewhere: not
    "write to another folder", attack 40 #16): whose, and what he can do; None otherwise."""
    from featstore import sticky
    from featstore.outputs import terminal_safe
    from featstore.runs.folder import get_run
    from featstore.runs.refusals import closed_run

    folder = get_run(run_id, store, runs)[1]
    theirs = closed_run(folder)
    if theirs is None:
        return None
    owner = sticky.owner_name(theirs.st_uid)
    return (
        f"the run's PNGs go into its folder {terminal_safe(str(folder))}, which is {sticky.whose(theirs)} and you may "
        f"not write in: ask {owner} to run `featstore runs show "
        f"{run_id}`, or to make it group-writable ({sticky.share_fix(theirs, folder, 'w')})"
    )


@runs_app.command("compare")
@_errors
def runs_compare(
    run_ids: Annotated[Optional[list[str]], typer.Argument(help="Runs to compare (default: all).")] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="PNG chart to write (default: <runs>/compare.png); a name ending in .png.")
    ] = None,
    store: SubStoreOpt = None,
    runs: RunsOpt = None,
    json_out: JsonOpt = False,
    *,
    ctx: typer.Context,
) -> None:
    """Two runs: a paired test on the same rows of each split (exact McNemar, Tango's paired score interval) that says whether the difference is larger than chance. Any number of runs: their validation and test accuracy with 95 % intervals, and a bar chart."""
    from featstore.experiments.compare import check_chart_name, compare_pair, compare_runs
    from featstore.report.runs import stores_note
    from featstore.report.tables import accuracy_json, accuracy_lines, pair_report
    from featstore.runs.folder import get_run, list_runs

    named = _named(ctx, store)
    store, runs, json_out = _group_defaults(ctx, store, runs, json_out)
    if out is not None:
        check_chart_name(out, store=store)  # before any work: a missing folder, a link, a FIFO, a name that is not .png
    place = _place(store, runs, named)  # the run's training rows; an ensemble's members (attack 74 #1, 76 #3)
    pair = compare_pair(*run_ids, store, runs) if run_ids and len(run_ids) == 2 else None
    recs = [get_run(r, store, runs)[0] for r in run_ids] if run_ids else list_runs(store, runs)
    try:
        path, unsaved = compare_runs(run_ids, out, store, runs, place=place), None
    except OutputError as exc:  # a read-only runs folder or a full disk: the comparison is printed, then one line
        path, unsaved = None, exc
    if json_out:
        note = {"note": stores_note(recs)} if not pair and stores_note(recs) else {}  # attack 63 #4
        marks = accuracy_json(recs, place=place)
        _echo_json({**(pair.to_dict() if pair else {}), "runs": marks, "png": path and str(path), **note})
    else:
        echo(pair_report(pair) if pair else accuracy_lines(recs, place=place))
    if unsaved is not None:  # at the default name (a colleague's link in a shared runs folder): its line names --out
        raise OutputError(f"{str(unsaved).rstrip('.')}. The comparison above was computed; its chart was not saved.")
    if not json_out:
        from featstore.outputs import terminal_safe

        typer.echo(f"wrote {terminal_safe(str(path))}")


def _selected(rec, store, runs) -> dict[str, str]:
    """Split -> what ``rec`` chose there, read with its runs folder's sweeps and members
    (``featstore.runs.selected.selected_on``)."""
    from featstore.runs.folder import find_run, runs_root
    from featstore.runs.selected import selected_on, sweep_choices

    root = runs_root(store, runs)
    find = lambda r: find_run(r, root, exact=True, verify=False)[0]  # noqa: E731
    return selected_on(rec, find, sweep_choices(root))


@runs_app.command("evaluate")
@_errors
def runs_evaluate(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    split: Annotated[str, typer.Option(help="Split of the store to evaluate on.")] = "test",
    store: SubStoreOpt = None,
    runs: RunsOpt = None,
    json_out: JsonOpt = False,
    *,
    ctx: typer.Context,
) -> None:
    """Apply a run to a split of the store (refused if the store's features are not the run's, or a new split is not of the run's own store) and record the figures in the run when it has none for that split (it says so, or why not: then the exit status is 1)."""
    from featstore.experiments.evaluate import evaluate_and_record
    from featstore.report.runs import split_marks
    from featstore.report.tables import evaluated_lines

    named = _named(ctx, store)
    store, runs, json_out = _group_defaults(ctx, store, runs, json_out)
    rec, m, said = evaluate_and_record(run_id, split, store, runs)
    place = _place(store, runs, named, scored=store)  # the split scored here, against the run's training rows (76 #3)
    marks = split_marks(rec, _selected(rec, store, runs), [split], place=place)[split]
    if json_out:  # the text's mark and the run's choice there (attack 71 #8)
        _echo_json({"run": rec.id, "split": split, "metrics": m, "recorded": said, **marks})
    else:
        echo(evaluated_lines(rec.id, split, m, said, marks["fitted_on_these_rows"], marks["rows_not_compared"]))
    if said.startswith("not recorded"):  # the figures are shown, yet a script must see that the run did not change
        raise typer.Exit(1)


@app.command()
@_errors
def ensemble(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    weight: Annotated[
        Optional[list[float]], typer.Option(help="One weight per run, in order (default: equal).")
    ] = None,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
) -> None:
    """Average the runs' predicted probabilities (optionally weighted); evaluated and recorded like a run."""
    from featstore.experiments.ensemble import ensemble as run_ensemble
    from featstore.report.tables import run_report

    refuse_runs_file(store, runs)
    place = _place(store, runs, store)  # the ensemble is made on it: its members' rows where they are theirs
    echo(run_report(run_ensemble(run_ids, weight or None, store, runs, place=place), [], per_class=False, place=place))


@app.command()
@_errors
def finetune(
    run: Annotated[
        str, typer.Option(help="The dense run (phase A) whose head starts phase B (`featstore fit --clf dense`).")
    ],
    unfreeze_from: Annotated[
        str,
        typer.Option(
            help="First layer to train; every layer before it stays frozen (e.g. block4_conv1; `featstore models vgg16 --layers`)."
        ),
    ],
    lr: Annotated[
        float, typer.Option(help="Learning rate: low, so the pretrained layers are adjusted, not destroyed.")
    ] = 1e-5,
    optimizer: Annotated[str, typer.Option(help="rmsprop, adam or sgd (momentum 0.9).")] = "rmsprop",
    epochs: Annotated[
        int, typer.Option(help="At most this many epochs; early stopping on validation loss restores the best.")
    ] = 15,
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 20,
    patience: Annotated[int, typer.Option(help="Epochs without a better validation loss before stopping.")] = 3,
    augment: Annotated[
        str,
        typer.Option(
            help="Training-split augmentation, e.g. flip,rotate=0.1,zoom=0.2 (also translate, contrast); seeded, off at inference."
        ),
    ] = "",
    data: Annotated[
        Optional[Path],
        typer.Option(help="Data root with train/ and validation/ (default: the folder the store was extracted from)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of shuffling, augmentation, dropout and a new head's weights.")] = 0,
    from_scratch_head: Annotated[
        bool,
        typer.Option(
            "--from-scratch-head",
            help="Train a new Dense(256) head end to end instead of starting from the run's (any fitted run then names the features).",
        ),
    ] = False,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Without augmentation, compute the frozen layers once into the store and train the layers above on them.",
        ),
    ] = True,
    weights: Annotated[
        Optional[str],
        typer.Option(help="Weights file to use if the recorded one is not on this machine (its digest is checked)."),
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Allow a legacy .h5 model file, which can run code stored in it; only for a file you made yourself.",
        ),
    ] = False,
    memory_budget: Annotated[
        Optional[str],
        typer.Option(
            help="e.g. 512MB: a cached split larger than this is streamed from the store in shuffled blocks instead of loaded (the training order is then not the image path's)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Image decoding threads.")] = 2,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
) -> None:
    """Fine-tune (phase B): the dense run's head on the backbone, layers from --unfreeze-from trained end to end at a low learning rate."""
    from featstore.experiments.finetune import FinetuneConfig
    from featstore.experiments.finetune import finetune as run_finetune
    from featstore.report.tables import run_report

    config = FinetuneConfig(
        unfreeze_from=unfreeze_from,
        lr=lr,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        augment=",".join(comma_list(augment, "--augment")) if augment.strip() else augment,  # '' (the default): none
        seed=seed,
        from_scratch_head=from_scratch_head,
        cache=cache,
        memory_budget=memory_budget,
    )
    refuse_runs_file(store, runs)
    rec = run_finetune(
        run, config, data=data, store=store, runs=runs, weights=weights, trust_model=trust_model, workers=workers
    )
    echo(run_report(rec, [], per_class=False))


@app.command()
@_errors
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    run: Annotated[str, typer.Option(help="Run id (fit, finetune or ensemble) to predict with.")],
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Write a CSV (path,label,probability,error) instead of a table: a name ending in .csv, new or a CSV predict wrote (any other file there is refused, never replaced)."
        ),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option(help="Weights file to use if the recorded one is not on this machine (its digest is checked)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 32,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Allow the run's extractor to load a legacy .h5 model file, which can run code stored in it. Never taken from the run's record: give it only for a model file you made yourself.",
        ),
    ] = False,
    runtime: Annotated[
        Optional[str],
        typer.Option(
            help="What runs the run's frozen extractor: keras, or onnx (ONNX Runtime on the CPU; needs the onnx extra). onnx loads the cut that extract --runtime onnx left in <store>.cache/onnx/ (or exports it there) after the weights are checked with Keras, and checks it against Keras. Not for fine-tuned runs. Default: the runtime the store recorded for the run's features (onnx when a split of them was extracted with --runtime onnx), else keras.",
            show_default=False,
        ),
    ] = None,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
) -> None:
    """Class and probability for new images, with the run's exact extractor and classifier."""
    from featstore.cli.main import name, safe
    from featstore.experiments.predict import predict as run_predict

    refuse_runs_file(store, runs)
    rows = run_predict(
        run,
        inputs,
        store=store,
        runs=runs,
        out=out,
        weights=weights,
        batch_size=batch_size,
        trust_model=trust_model,
        runtime=runtime,
    )
    if out is not None:
        typer.echo(safe(f"wrote {len(rows)} predictions to {out}"))
        return
    for r in rows:  # names escaped, line breaks and tabs too: one image is one line of three cells
        typer.echo(
            f"{name(r['path'])}\t{name(r['label'])}\t{r['probability']:.4f}"
            if not r["error"]
            else f"{name(r['path'])}\tFAILED\t{name(r['error'])}"
        )
