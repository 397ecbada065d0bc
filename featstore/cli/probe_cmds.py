"""Commands of the evaluation protocols on stored features: probe (linear and kNN probes), fewshot (accuracy vs k)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from featstore.cli.main import ExtractorOpt, RunsOpt, StoreOpt, _errors, app, comma_list
from featstore.errors import ConfigError, OutputError

logger = logging.getLogger(__name__)


def _print_summary(summary: dict, as_json: bool, table) -> None:
    """The protocol's table (or its JSON), then the files written; one error line (exit 1) when the summary or chart
    could not be written, after the figures."""
    typer.echo(json.dumps(summary, indent=1) if as_json else table(summary))
    if summary.get("not_saved"):
        raise OutputError(f"{summary['not_saved']} The figures above were computed but not saved.")
    if not as_json:
        from featstore.outputs import terminal_safe

        typer.echo(f"wrote {terminal_safe(summary['png'])} and {terminal_safe(summary['json'])}")


def _ints(text: str, what: str) -> list[int]:
    """``"1,2,5"`` -> ``[1, 2, 5]``, with an error naming the option (an empty item too: :func:`comma_list`)."""
    items = comma_list(text, what)
    try:
        return [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"{what} takes whole numbers separated by commas, e.g. 1,2,5; got {text!r}") from None


@app.command()
@_errors
def probe(
    store: StoreOpt = Path("features.h5"),
    extractor: Annotated[
        Optional[list[str]],
        typer.Option(help="Extractor to probe; repeat or comma-separate for several (default: every one)."),
    ] = None,
    refit: Annotated[
        bool, typer.Option("--refit", help="Refit the chosen C and k on train + validation before test (recorded).")
    ] = False,
    knn: Annotated[
        bool, typer.Option("--knn/--no-knn", help="Also run the kNN probe (cosine, 1/distance votes).")
    ] = True,
    k: Annotated[
        str, typer.Option(help="Neighbours of the kNN probe, comma-separated (capped at train's rows).")
    ] = "10,20,100,200",
    reduce: Annotated[
        str, typer.Option(help="flatten, or avg or max over space (tokens: over the tokens), before standardising.")
    ] = "flatten",
    train: Annotated[str, typer.Option(help="Split the probes are fitted on.")] = "train",
    validation: Annotated[str, typer.Option(help="Split C and k are chosen on.")] = "validation",
    test: Annotated[str, typer.Option(help="Split read once per extractor, after the choices.")] = "test",
    png: Annotated[Optional[Path], typer.Option(help="Chart to write (default: <runs>/probe-<id>.png).")] = None,
    runs: RunsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of the table.")] = False,
) -> None:
    """Linear probe (logistic regression, C over a log grid 1e-6..1e5, coarse then fine) and kNN probe (k 10, 20, 100,
    200) on every extractor: features standardised, C and k chosen on validation, test read once, 95 % intervals.

    Writes the summary probe-<id>.json and the chart probe-<id>.png into the runs folder.
    """
    from featstore.experiments.probe import ProbeStopped
    from featstore.experiments.probe import probe as run_probe
    from featstore.report.protocols import probe_table

    names = [n for e in extractor or [] for n in comma_list(e, "--extractor")] or None
    try:
        summary = run_probe(
            store,
            names,
            refit=refit,
            knn=knn,
            ks=tuple(_ints(k, "--k")),
            reduce=reduce,
            train=train,
            validation=validation,
            test=test,
            runs=runs,
            png=png,
        )
    except ProbeStopped as exc:  # the finished extractors' figures first, then the one line naming the one that failed
        typer.echo(json.dumps(exc.summary, indent=1) if as_json else probe_table(exc.summary))
        raise
    _print_summary(summary, as_json, probe_table)


@app.command()
@_errors
def fewshot(
    shots: Annotated[str, typer.Option(help="Training images per class, comma-separated.")] = "1,2,5,10,20",
    trials: Annotated[int, typer.Option(help="Seeded draws per number of shots.")] = 5,
    clf: Annotated[str, typer.Option(help="Classifier (`featstore classifiers`).")] = "logreg",
    param: Annotated[
        Optional[list[str]], typer.Option(help="NAME=VALUE, one value per name (nothing is chosen here).")
    ] = None,
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws (trial t draws with (seed, t)).")] = 0,
    train: Annotated[str, typer.Option(help="Split the images are drawn from.")] = "train",
    validation: Annotated[
        str,
        typer.Option(
            help="Split a classifier that early-stops (dense) stops on, all its rows; none: it stops on its training "
            "loss. Other classifiers read no validation split."
        ),
    ] = "validation",
    test: Annotated[str, typer.Option(help="Split every fit is scored on.")] = "test",
    png: Annotated[Optional[Path], typer.Option(help="Chart to write (default: <runs>/fewshot-<id>.png).")] = None,
    runs: RunsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of the table.")] = False,
) -> None:
    """Few-shot curve: k images per class drawn from train (stratified, seeded), the classifier fitted with its
    defaults (or --param), scored on test; mean ± sd over the distinct draws and the mean's 95 % interval for each k
    (a k whose trials all drew the same images, e.g. every training image, is one fit: no sd, no interval).
    """
    from featstore.experiments.classifiers import get_classifier, parse_params
    from featstore.experiments.fewshot import fewshot as run_fewshot
    from featstore.report.protocols import fewshot_table

    summary = run_fewshot(
        store,
        clf,
        parse_params(get_classifier(clf), list(param or [])),
        shots=_ints(shots, "--shots"),
        trials=trials,
        extractor=extractor,
        seed=seed,
        train=train,
        validation=validation,
        test=test,
        runs=runs,
        png=png,
    )
    _print_summary(summary, as_json, fewshot_table)
