"""Commands that show the data: report (the static site), similar (images like this one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from featstore.cli.main import ExtractorOpt, RunsOpt, StoreOpt, _errors, app, refuse_runs_file, safe

logger = logging.getLogger(__name__)


@app.command()
@_errors
def report(
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of the site (default: <store>.report beside the store). A report into a folder another report is writing is refused; pages an interrupted report wrote are removed by the next."
        ),
    ] = None,
    map_rows: Annotated[int, typer.Option(help="Rows sampled (seeded) for each extractor's embedding map.")] = 5000,
    map_method: Annotated[
        str, typer.Option(help="Map layout: auto (umap where umap-learn is installed, else tsne), umap, tsne, pca.")
    ] = "auto",
    gallery: Annotated[int, typer.Option(help="Images shown per confusion-matrix cell.")] = 60,
    leaks: Annotated[bool, typer.Option(help="Show the pairs of the last `featstore leaks`.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the map's sample and layout.")] = 0,
    jobs: Annotated[int, typer.Option(help="Threads for the map's layout.")] = 1,
) -> None:
    """Write a static site of the store and its runs (opens from disk, no server, no network); prints its index.

    Index (store, splits, failures, leaks, every run sortable, the compare chart), a page per run (metrics, per-class
    figures, the confusion matrix whose cells open galleries of their images, curves, members), an embedding map per
    extractor, and the leak pairs side by side. Thumbnails and map layouts are cached beside the store.
    """
    from featstore.report.site.build import build_report

    refuse_runs_file(store, runs, missing=True)  # a file, FIFO or mistyped --runs gave a site without runs, silently

    result = build_report(
        store,
        runs,
        out,
        map_rows=map_rows,
        map_method=map_method,
        gallery=gallery,
        leaks=leaks,
        seed=seed,
        jobs=jobs,
    )
    for line in result.maps:
        logger.info("map %s", line)
    for note in result.notes:
        logger.warning("%s", note)
    logger.info(
        "%d pages, thumbnails: %d made, %d reused from the cache, %.1f s",
        result.pages,
        result.thumbs_made,
        result.thumbs_reused,
        result.seconds,
    )
    typer.echo(safe(result.index))  # the store or --out name may hold escape sequences (a store someone sent)


@app.command()
@_errors
def similar(
    query: Annotated[
        str, typer.Argument(help="A stored image (its path as stored, or the file itself) or any image file.")
    ],
    store: StoreOpt = Path("features.h5"),
    split: Annotated[str, typer.Option(help="Split to search.")] = "train",
    k: Annotated[int, typer.Option("--k", "-k", help="How many neighbours.")] = 12,
    extractor: ExtractorOpt = None,
    html: Annotated[
        Optional[Path],
        typer.Option(
            help="Also write the neighbours as a gallery (one HTML file): a name ending in .html; an existing file is "
            "replaced only when it is an earlier similar page."
        ),
    ] = None,
    index: Annotated[
        Optional[bool],
        typer.Option(
            "--index/--exact",
            help="Use the split's index (refused when stale), or search exactly. Default: the index when built.",
        ),
    ] = None,
    build_index: Annotated[
        bool, typer.Option(help="Build (or rebuild) the split's index first, then search with it.")
    ] = False,
    weights: Annotated[
        Optional[str], typer.Option(help="The weights file, when it moved since extraction (new images).")
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Allow the store's extractor to load a legacy .h5 model file (new images), which can run code stored "
            "in it; only for a model file you made yourself.",
        ),
    ] = False,
    memory_budget: Annotated[
        str,
        typer.Option(
            help="e.g. 512MB or 1GiB: memory for the exact search's blocks and the index build (its PCA sample takes half of it)."
        ),
    ] = "256MiB",
) -> None:
    """The k stored images most similar to QUERY (centred cosine of the features, as `leaks` measures it).

    A stored image uses its row's features (and is left out of its own results); any other image file is extracted
    through the store's exact extractor, as `predict` does.
    """
    from featstore.errors import ConfigError
    from featstore.experiments.similar import similar as find_similar
    from featstore.outputs import check_output, refuse_image, refuse_run_files, terminal_safe
    from featstore.units import parse_bytes

    budget = parse_bytes(memory_budget)
    if budget <= 0:
        raise ConfigError(f"--memory-budget must be more than 0 bytes, got {memory_budget!r}; write e.g. 512MB")

    if html is not None:
        from featstore.report.site.similar_page import check_similar_out

        check_output(html, "--html")  # a link, FIFO, folder, store
        refuse_image(html, "--html")  # one of the dataset's images, say
        refuse_run_files(html, "--html")  # a run's record
        check_similar_out(html)  # a name not .html, a file that is not an earlier page
    if build_index:
        from featstore.caches import CacheNotMade
        from featstore.errors import OutputError
        from featstore.experiments.similar_index import build_similarity_index as build

        try:
            meta = build(store, extractor, split, max_bytes=budget, option="--memory-budget")
        except CacheNotMade as exc:  # a colleague's index folder: said with the search that needs none (attack 36 #7)
            raise OutputError(f"{exc}; or search without an index: --exact") from None
        logger.info(
            "index of %s/%s: %d rows x %d dims in %.1f s",
            terminal_safe(meta["extractor"]),
            split,
            meta["rows"],
            meta["dims"],
            meta["seconds"],
        )
        index = True
    result = find_similar(
        query,
        store,
        split=split,
        k=k,
        extractor=extractor,
        use_index=index,
        weights=weights,
        trust_model=trust_model,
        max_bytes=budget,
        option="--memory-budget",
    )
    typer.echo(result.describe())
    typer.echo(result.table())
    if html is not None:
        from featstore.report.site.similar_page import similar_html

        typer.echo(f"wrote {terminal_safe(str(similar_html(result, html, store)))}")
