"""Commands that fit and search on stored features: fit, sweep, leaks, classifiers, export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from featstore.cli.main import ExtractorOpt, RunsOpt, StoreOpt, _errors, app, comma_list, echo, refuse_runs_file  # noqa: F401
from featstore.errors import FeatstoreError

logger = logging.getLogger(__name__)


def _interruptible(runs_folder: Path, command: str, work, reuse: bool = True):
    """``work()``, and on Ctrl-C one line saying what this command recorded before the interrupt (the runs it wrote
    itself, :func:`featstore.runs.write.recording`: never another process's run that appeared in a shared runs folder
    meanwhile, attack 57 #9) and what a re-run does; exit 130. A parallel sweep's workers are stopped before the line
    (none records a run after it); those still inside a fit in C code then are not waited for: the process ends at
    once, without finalising the interpreter under them (it hung on h5py's lock or aborted: attack 54 #1). ``reuse``:
    whether a re-run of the sweep reuses the cells recorded (not with --no-reuse)."""
    import os
    import sys

    from featstore.runs.write import recording

    with recording() as ours:
        try:
            return work()
        except KeyboardInterrupt as exc:
            made = sorted({folder.name for folder in ours if folder.is_dir()})  # (not renamed yet: not recorded)
            typer.secho(f"interrupted: {_after_interrupt(made, runs_folder, command, reuse)}", err=True)
            if getattr(exc, "running", 0):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            raise typer.Exit(130) from None


def _after_interrupt(made: list[str], runs_folder: Path, command: str, reuse: bool = True) -> str:
    """What was recorded before Ctrl-C and what re-running does (a sweep reuses the cells recorded: attack 54 #8)."""
    if not made:
        return f"nothing was recorded (no run folder was written); re-run the same `featstore {command}` to do it again"
    done = f"run{'s' if len(made) > 1 else ''} {', '.join(made)} recorded in {runs_folder} before it"
    if command != "sweep":
        return f"{done}; re-run the same `featstore {command}` to do it again"
    if not reuse:
        return (
            f"{done}. Re-running the same `featstore sweep --no-reuse` fits every cell again and records new runs beside "
            f"these; without --no-reuse it reuses these cells and fits only the others"
        )
    return (
        f"{done}. Re-running the same `featstore sweep` reuses these cells and fits only the others (--no-reuse fits "
        f"every cell again)"
        + ("; its ensemble is selected and recorded again" if any(m.startswith("ensemble-") for m in made) else "")
    )


@app.command()
@_errors
def fit(
    clf: Annotated[
        str, typer.Option(help="Classifier: logreg, svm, dense, knn, random_forest, sgd (`featstore classifiers`).")
    ] = "logreg",
    param: Annotated[
        Optional[list[str]],
        typer.Option(help="NAME=VALUE; repeat a name to search over values, e.g. --param C=0.1 --param C=1."),
    ] = None,
    search: Annotated[bool, typer.Option(help="Also search the classifier's default grid.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --param epochs=N (dense).")] = None,
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    jobs: Annotated[
        int,
        typer.Option(help="Parallel fits during a search (joblib); threads inside one sgd or forest fit (same model)."),
    ] = 1,
    train: Annotated[str, typer.Option(help="Split to fit on.")] = "train",
    validation: Annotated[
        str,
        typer.Option(
            help="Split to choose parameters on and calibrate probabilities on; `none`, or no split named validation in the store: cross-validation on train. A named split the store lacks is an error."
        ),
    ] = "validation",
    test: Annotated[
        str, typer.Option(help="Split evaluated once, for the chosen setting (`none`: no test split).")
    ] = "test",
    runs: RunsOpt = None,
    memory_budget: Annotated[
        Optional[str],
        typer.Option(
            help="e.g. 512MB or 512MiB: splits larger than this are streamed from the store (sgd, dense) instead of loaded; other classifiers refuse. The evaluation always scores and stores each split's probabilities in blocks within it (512MB when not given)."
        ),
    ] = None,
    augmented: Annotated[
        bool,
        typer.Option(
            "--augmented",
            help="Train on the train split plus its cached augmented copies (`featstore extract --augment K`); validation and test stay the plain splits.",
        ),
    ] = False,
) -> None:
    """Fit a classifier on stored features, choose parameters on validation, test once, record a run."""
    from featstore.experiments.classifiers import get_classifier, parse_params
    from featstore.experiments.fit import fit as run_fit
    from featstore.report.tables import run_report
    from featstore.runs.folder import runs_root

    refuse_runs_file(store, runs)
    items = list(param or []) + ([f"epochs={epochs}"] if epochs is not None else [])
    rec = _interruptible(
        runs_root(store, runs),
        "fit",
        lambda: run_fit(
            store,
            clf,
            parse_params(get_classifier(clf), items),
            extractor=extractor,
            search=search,
            jobs=jobs,
            train=train,
            validation=validation,
            test=test,
            runs=runs,
            memory_budget=memory_budget,
            augmented=augmented,
        ),
    )
    echo(run_report(rec, [], per_class=False))


@app.command()
@_errors
def sweep(
    clf: Annotated[
        str, typer.Option(help="Classifiers to fit on every extractor, comma-separated, e.g. logreg,svm,dense.")
    ] = "logreg",
    extractor: Annotated[
        Optional[str],
        typer.Option(help="Extractors to sweep, comma-separated (default: every one with train and validation)."),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            help="CLASSIFIER:NAME=VALUE; repeat a name to search over values (chosen on validation), e.g. --param svm:kernel=rbf --param svm:pca=256."
        ),
    ] = None,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble",
            help="Also build the best probability-averaging ensemble of the runs (greedy selection on validation).",
        ),
    ] = False,
    search: Annotated[
        bool,
        typer.Option(
            "--search", help="Search each classifier's default grid (chosen on validation) instead of its defaults."
        ),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            help="Fits run in parallel (threads). Ctrl-C stops them all and lists the runs recorded; a re-run reuses them."
        ),
    ] = 1,
    show_test: Annotated[
        bool,
        typer.Option(
            "--show-test",
            help="Evaluate test for every run, not only the chosen one (the choice is still made on validation).",
        ),
    ] = False,
    png: Annotated[Optional[Path], typer.Option(help="Heat map to write (default: <runs>/sweep-<id>.png).")] = None,
    store: StoreOpt = Path("features.h5"),
    train: Annotated[str, typer.Option(help="Split to fit on.")] = "train",
    validation: Annotated[
        str,
        typer.Option(
            help="Split every choice is made on; `none`, or no extractor with a split of this name: cross-validation on train."
        ),
    ] = "validation",
    test: Annotated[str, typer.Option(help="Split evaluated once, after the choice (`none`: no test split).")] = "test",
    runs: RunsOpt = None,
    augmented: Annotated[
        bool,
        typer.Option(
            "--augmented",
            help="Fit every run on train plus its cached augmented copies (`featstore extract --augment K`).",
        ),
    ] = False,
    reuse: Annotated[
        bool,
        typer.Option(
            "--reuse/--no-reuse",
            help="Reuse a cell's run recorded already as the very fit it would make (same classifier, parameters "
            "with their defaults, --search, --augmented, extractor fingerprint, train and validation images and "
            "versions, featstore version): a re-run after "
            "Ctrl-C fits only the cells not recorded. --no-reuse fits every cell.",
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of the table.")] = False,
) -> None:
    """Fit every classifier on every extractor, choose the best on validation (or by cross-validation on train), then evaluate test once for it; every accuracy with its 95 % interval, and the ensemble against the best single run in words."""
    from featstore.experiments.classifiers import parse_clf_params
    from featstore.experiments.sweep import sweep as run_sweep
    from featstore.report.tables import sweep_table
    from featstore.runs.folder import runs_root

    refuse_runs_file(store, runs)
    clfs = comma_list(clf, "--clf")
    extractors = comma_list(extractor, "--extractor") if extractor else None
    summary = _interruptible(
        runs_root(store, runs),
        "sweep",
        lambda: run_sweep(
            store,
            clfs,
            extractors=extractors,
            params=parse_clf_params(clfs, list(param or [])),
            search=search,
            jobs=jobs,
            ensemble=ensemble,
            show_test=show_test,
            train=train,
            validation=validation,
            test=test,
            runs=runs,
            png=png,
            augmented=augmented,
            reuse=reuse,
        ),
        reuse=reuse,
    )
    if json_out:
        import json

        typer.echo(json.dumps(summary, indent=1))
        return
    echo(sweep_table(summary))


@app.command()
@_errors
def leaks(
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    split: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Split to check against train; repeat for several (default: test and validation, those in the store)."
        ),
    ] = None,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Flag pairs with a similarity (centred cosine of the features) at or above this, in (0, 1]. Default: calibrated on this extractor from --quantile."
        ),
    ] = None,
    quantile: Annotated[
        float,
        typer.Option(
            help="Without --threshold: flag rows closer to a train image than this fraction of train images are to their nearest other train image."
        ),
    ] = 0.99,
    top: Annotated[int, typer.Option(help="Pairs to print and to draw in the PNG.")] = 10,
    png: Annotated[
        Optional[Path],
        typer.Option(
            help="PNG of the top pairs side by side, written at exactly this name (.png or none), replacing only a chart featstore drew (default: <store>.leaks.png)."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Write every pair found to this CSV (query_split, query_path, train_path, similarity, same_label, same_bytes): a name ending in .csv; an existing file is replaced only when it is an earlier leaks CSV."
        ),
    ] = None,
) -> None:
    """Near-duplicate images across splits: files with the same bytes, and rows whose features are as close as copies.

    The similarity threshold is calibrated per extractor on train's own nearest neighbours unless --threshold is given. Prints the counts and pairs, draws the top pairs side by side, and records the counts beside the store (<store>.leaks.json) so `featstore info` shows them. Exit 1 if an output you named could not be written (the results are printed first).
    """
    import os

    from featstore.errors import OutputError
    from featstore.experiments.compare import check_chart_name
    from featstore.experiments.leaks import find_leaks, leaks_csv, leaks_png, record_path, write_record
    from featstore.experiments.leaks.draw import is_leaks_csv
    from featstore.experiments.leaks.within import copies_lines
    from featstore.outputs import (
        check_output,
        check_own_output,
        refuse_image,
        refuse_run_files,
        terminal_safe,
    )
    from featstore.sticky import ahead

    def safe(p: object) -> str:
        return terminal_safe(str(p))

    def check_png(path: Path, what: str, chosen: bool = False) -> Path:
        return check_chart_name(path, what, store, chosen)

    if top < 1:
        raise FeatstoreError(f"--top must be at least 1, not {top}")
    for path, what in ((out, "--out"), (png, "--png")):
        if path is not None:  # before the search: a FIFO, link, folder, missing or read-only folder is one line now
            if what == "--out":  # a .csv name; never over a file that is not an earlier leaks CSV (a saved model)
                check_output(path, what)
                refuse_run_files(path, what)  # nor a run's record
                refuse_image(path, what)  # a CSV never replaces one of the dataset's images
                check_own_output(path, what, "a leaks CSV", (".csv",), is_leaks_csv)
            else:
                check_png(path, what)
            if not os.access(path.parent, os.W_OK):
                raise FeatstoreError(
                    f"cannot write {what} {safe(path)}: folder {safe(path.parent)} is not writable (read-only or not "
                    f"yours); choose another path"
                )
    r = find_leaks(store, extractor, split, threshold=threshold, quantile=quantile, record=False)
    typer.echo(f"{safe(r.extractor)}: {r.calibration.describe()}")
    if r.calibration.caveat():
        typer.echo(f"note: {r.calibration.caveat()}", err=True)
    for name, n in r.counts.items():
        copies = f"{r.same_bytes[name]} with the same file bytes, " if r.same_bytes.get(name) else ""
        inside = f"; {r.near_within[name]} have one inside {safe(name)}" if r.near_within.get(name) else ""
        typer.echo(
            f"{safe(name)}: {n} of {r.rows[name]} rows have a near-duplicate in {safe(r.reference)} ({copies}similarity >= "
            f"{r.threshold:.4g}; median nearest {r.median[name]:.3f}){inside}"
        )
    for line in copies_lines(r):  # byte-identical files inside one split: rows that are copies of one image
        typer.echo(line)
    for p in r.pairs[:top]:
        typer.echo(
            f"  {'same bytes' if p.same_bytes else f'{p.similarity:.4f}'}  {safe(p.query_path)}  ~  {safe(p.train_path)}"
            + ("" if p.same_label else "  (labels differ)")
        )
    if len(r.pairs) > top:
        typer.echo(
            f"  ... {len(r.pairs) - top} more" + (f", all in {safe(out)}" if out else " (--out CSV lists them all)")
        )
    if not r.pairs and r.near_misses:
        p = r.near_misses[0]
        typer.echo(
            f"no pair at or above {r.threshold:.4g}; the closest is {p.similarity:.4f}: {safe(p.query_path)} ~ {safe(p.train_path)}"
        )
    for name, files in r.unhashed.items():
        shown = "; ".join(safe(f) for f in files[:3]) + (f"; and {len(files) - 3} more" if len(files) > 3 else "")
        typer.echo(f"not compared by content ({safe(name)}, {len(files)}): {shown}", err=True)
    failed = False
    if out is not None:
        try:
            typer.echo(f"wrote {len(r.pairs)} pairs to {safe(leaks_csv(r, out))}")
        except OutputError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            failed = True
    try:
        chart = png or check_png(Path(f"{store}.leaks.png"), "PNG", chosen=True)  # --png was checked before the search
        path, missing = leaks_png(r, chart, top=top, what="--png" if png else "PNG")
        typer.echo(
            f"wrote {safe(path)}" + (f"; {len(missing)} image(s) not found, drawn as placeholders:" if missing else "")
        )
        for m in missing:
            typer.echo(f"  missing: {safe(m)}")
    except OutputError as exc:
        if png is not None:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            failed = True
        else:
            typer.echo(f"note: {exc} Give --png PATH in a writable folder to get the picture.", err=True)
    try:
        write_record(r)
    except OutputError as exc:  # a colleague's record in a sticky folder: its folder is writable (attack 34 #5)
        where = safe(record_path(store).parent)
        why = f": the record lives beside the store, so {where} must be writable to keep it"
        why = "" if ahead(record_path(store)) or os.access(record_path(store).parent, os.W_OK | os.X_OK) else why
        said = str(exc).rstrip(".")  # one sentence each: the reason, then what it costs (attack 40 #6: run together)
        typer.echo(f"note: {said}. `featstore info` will not show these counts (printed above){why}.", err=True)
    if failed:
        raise typer.Exit(1)


@app.command()
@_errors
def classifiers() -> None:
    """List the classifiers with their parameters (defaults) and default search grids."""
    from featstore.report.tables import classifiers_table

    typer.echo(classifiers_table())


@app.command("export")
@_errors
def export_split(
    split: Annotated[str, typer.Option(help="Split to export (train, validation, test, ...).")],
    out: Annotated[Path, typer.Option(help="File to write: .npz, .parquet or .csv.")],
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    fmt: Annotated[
        Optional[str],
        typer.Option("--format", help="npz, parquet (needs pyarrow) or csv. Default: from the suffix of --out."),
    ] = None,
    features: Annotated[
        str, typer.Option(help="flat (every value), or avg or max (global pooling over space).")
    ] = "flat",
    augmented: Annotated[
        bool,
        typer.Option(
            "--augmented",
            help="Export the split's augmented copies (`extract --augment K`) instead, with their copy index (1..K) as a `copy` array/column.",
        ),
    ] = False,
    rows_per_file: Annotated[
        Optional[int],
        typer.Option(
            "--rows-per-file",
            help="Parquet shards: --out becomes a folder of part-00000.parquet, ... of at most this many rows each "
            "(numbered at one width, more digits past a hundred thousand shards, so name order is row order; what Ray Data, "
            "Spark, DuckDB and pyarrow datasets read in parallel).",
        ),
    ] = None,
) -> None:
    """Write a split's features, labels, class names and image paths to .npz, Parquet or CSV, in blocks.

    Features are read and written block by block, so stores larger than memory export too; the file appears under its name only when complete.
    """
    from featstore.store.export import export as run_export

    r = run_export(
        store,
        split,
        out,
        extractor=extractor,
        format=fmt,
        features=features,
        augmented=augmented,
        rows_per_file=rows_per_file,
    )
    from featstore.outputs import terminal_safe

    typer.echo(
        f"wrote {r.rows} rows of {r.n_features} values ({r.features}) to {terminal_safe(str(r.path))} ({r.format})"
    )
