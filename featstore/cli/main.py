"""The ``featstore`` command's application object, global options and error handling; the commands are in sibling modules.

Start-up: only ``extract``, ``predict``, ``models --layers`` and Keras-head fits import TensorFlow (the
package imports lazily); its C++ start-up noise is hidden by :mod:`featstore.quiet` unless ``--verbose``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from featstore.errors import FeatstoreError

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Extract frozen-CNN features once into HDF5, then experiment on them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug details, TensorFlow's start-up lines included.")
    ] = False,
    locking: Annotated[
        Optional[bool],
        typer.Option(
            "--locking/--no-locking",
            help="HDF5 file locking; --no-locking for filesystems without working locks (NFS, Lustre). Default: HDF5's (honours HDF5_USE_FILE_LOCKING).",
        ),
    ] = None,
) -> None:
    """featstore: transfer learning on cached CNN features."""
    from featstore.store.reader import set_locking

    set_locking(locking)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("tensorflow", "absl", "h5py", "PIL", "matplotlib", "ray"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from featstore.quiet import set_quiet

    if verbose:
        os.environ["FEATSTORE_VERBOSE"] = "1"  # worker processes (Ray actors) show TensorFlow's lines too
    set_quiet(not verbose)


StoreOpt = Annotated[Path, typer.Option(help="HDF5 store file.")]
ExtractorOpt = Annotated[
    Optional[str], typer.Option(help="Extractor group in the store (needed when it holds several).")
]
RunsOpt = Annotated[Optional[Path], typer.Option(help="Runs folder (default: <store>.runs beside the store).")]
