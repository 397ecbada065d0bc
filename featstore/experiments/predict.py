"""Predict new images with a run of any kind: its kind loads it (a fitted classifier with its exact extractor rebuilt
from the run's provenance, a fine-tuned model, an ensemble's members), then classifies each batch of images.

The extractor is rebuilt from the recorded model, layer, input size, pooling, dtype and weights
(``featstore.runs.apply.rebuild_extractor``); the weights found on this machine must have the recorded digest
(and the whole extractor the recorded fingerprint), otherwise prediction is refused. Permission to load a legacy
``.h5`` model file (which can run code) comes only from the caller (``trust_model=True``, ``predict
--trust-model``), never from the run's record: ``run.json`` can be edited to name any file.

>>> rows = predict("logreg-1a2b3c", ["some/images/"])   # doctest: +SKIP
>>> rows[0]["label"], rows[0]["probability"]            # doctest: +SKIP
('dog', 0.97)
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np

from featstore.errors import MAX_BATCH, ConfigError, DataError, OutputError, StoreError, check_names, check_paths
from featstore.images.listing import IMAGE_EXTENSIONS, find_images, printable
from featstore.outputs import (
    cache_dir,
    csv_cell,
    output_fix,
    probe_output,
    refuse_image,
    refuse_run_files,
    starts_with,
    write_atomic,
)
from featstore.runs.apply import ApplyOptions, ImageBatch, rebuild_extractor  # noqa: F401 (rebuild_extractor re-exported)
from featstore.runs.folder import find_run, runs_root
from featstore.runs.kinds import kind_of

logger = logging.getLogger(__name__)


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found recursively in folders, in order; a clear error if none.

    Folders are walked as ``images.find_images`` does (links to a parent or to a folder already walked
    are skipped, with a warning). A named file is taken whatever it is: a FIFO or device gets a
    "not a regular file" row from ``load_image`` instead of hanging. Example::

        collect_images(["new_images/", "one.jpg"])
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(find_images(item).files)
        elif os.path.lexists(item):
            found.append(item)
        else:
            raise DataError(f"{printable(str(item))} does not exist; pass image files or folders of images")
    if not found:
        raise DataError(
            f"no images in {printable(', '.join(map(str, inputs)))} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    seen: set[str] = set()  # a file named directly and found in a folder too is predicted once, under its first name
    unique = []
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


CSV_HEADER = "path,label,probability,error"  # the first line of every predictions CSV (how one is known again)


def _check_out(out: Path) -> None:
    """Refuse, before any work, an --out that is not a CSV name, that is a file predict did not write (``--out
    model.keras`` replaced the user's model), or that could not be written (a FIFO, a device, a read-only folder)."""
    folder = out.parent
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a CSV file name, e.g. {_suggest(out)}")
    try:
        if os.path.lexists(out) and not stat.S_ISREG(os.stat(out).st_mode):
            raise ConfigError(
                f"--out {out} exists and is not a regular file (a FIFO, device or socket); give a new or regular file name"
            )
    except FileNotFoundError:
        raise ConfigError(f"--out {out} is a link to nothing; remove it or give another file name") from None
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: folder {folder} does not exist; create it first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(
            f"--out {out} cannot be written (folder {folder} or the file is read-only); choose another path"
        )
    try:
        probe_output(out, "--out")  # a link at the name is never written through; a folder that takes no file
        refuse_image(out, "--out")  # one of the images to predict, say
    except OutputError as exc:
        raise ConfigError(str(exc)) from None
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out}: predict writes a CSV; give a name ending in .csv, e.g. {_suggest(folder)}")
    if not os.path.islink(out) and out.is_file() and not _is_predictions(out):
        raise ConfigError(
            f"--out {out} exists and is not a predictions CSV (its first line is not {CSV_HEADER}); featstore never "
            f"replaces another file with its predictions. Give another name, e.g. {_suggest(folder)}, or remove it first"
        )


def _is_predictions(path: Path) -> bool:
    """Whether the file ``path`` starts with the line predict writes first (an empty file is not one)."""
    header = CSV_HEADER.encode()  # read never waiting on a FIFO renamed onto the name since its check (attack 31 #5)
    return starts_with(path, header + b"\r\n", header + b"\n")


def _suggest(folder: Path) -> Path:
    """A predictions CSV name predict accepts: in ``folder`` or, when that is a run folder or a runs folder (where
    predict never writes), beside it; the first of predictions.csv, predictions-2.csv, ... free or a predictions CSV."""
    while folder.parent != folder:
        try:
            refuse_run_files(folder / "predictions.csv", folder=True)  # a run folder, a runs folder
            break
        except OutputError:
            folder = folder.parent
    for i in range(1, 100):
        name = folder / ("predictions.csv" if i == 1 else f"predictions-{i}.csv")
        if not os.path.lexists(name) or (name.is_file() and not name.is_symlink() and _is_predictions(name)):
            return name
    return folder / "predictions-new.csv"


def predict(
    run_id: str,
    inputs: list[str | os.PathLike],
    *,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    weights: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    trust_model: bool = False,
    runtime: str | None = None,
) -> list[dict]:
    """Class and probability per image for a fit, finetune or ensemble run; unreadable images, and images whose
    features come out NaN or infinite (the extractor's fault, not the fit's), get a row with their reason.

    Writes a CSV (path, label, probability, error) when ``out`` is given (a new file renamed onto ``out``, by
    :func:`featstore.outputs.write_atomic`); text cells that a spreadsheet would evaluate (``= + - @``, tab, CR at the
    start) get a leading ``'`` (:func:`featstore.outputs.csv_cell`).
    ``trust_model`` allows a run whose features came from a legacy ``.h5`` model file, which can run code when
    loaded: give it only for a model file you made yourself. ``runtime="onnx"`` runs the rebuilt extractor (of a fit
    or of an ensemble's members; not a fine-tuned model) with ONNX Runtime, as ``extract --runtime onnx`` does: its
    weights and fingerprint are checked with Keras first, then the cut is loaded from ``<store>.cache/onnx/`` (where
    ``extract --runtime onnx`` left it) or exported there, and checked against Keras. ``runtime=None`` (the default):
    the runtime ``store`` recorded for the run's features (:func:`featstore.runs.apply.recorded_runtime`: onnx when a
    split of them was extracted with ``--runtime onnx``), Keras for a fine-tuned run. Example::

        predict("logreg-1a2b3c", ["new_images/"], out="predictions.csv")
    """
    from featstore.images.decode import iter_decoded
    from featstore.models.onnx_runtime import CACHE_FOLDER, check_runtime

    check_names("run", required=True, run_id=run_id)
    check_paths(required=True, inputs=inputs)  # [""] predicted the images of the current folder
    check_paths(store=store, runs=runs, out=out)
    check_names("weights", weights=weights)
    check_names("runtime", runtime=runtime)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size!r}")
    if batch_size > MAX_BATCH:  # a 20-digit one reached itertools.islice (a traceback)
        raise ConfigError(f"--batch-size must be at most {MAX_BATCH}, got {batch_size}")
    if runtime is not None:
        check_runtime(runtime)  # a runtime that is not one, or onnx without its packages: refused before any work
    if out is not None:
        _check_out(Path(out))
    root = runs_root(store, runs)
    rec, folder = find_run(run_id, root)  # verified; an ensemble's members are found (and verified) as it loads
    options = ApplyOptions(
        lambda m: find_run(m, root, exact=True),
        weights,
        trust_model,
        runtime=runtime,
        # no store file (--runs given): nothing extract left to load; a cut exported beside a store that is not there
        # (--store data/test/x.h5) was a 58 MB file inside the images predicted on. It is exported to a temporary folder
        runtime_cache=cache_dir(store) / CACHE_FOLDER if Path(store).is_file() else None,
        store=Path(store),
    )
    # refused before any image is read: the models loaded, a fitted run's extractor rebuilt (its weights' digest checked)
    model = kind_of(rec).for_images(rec, folder, options)
    paths = collect_images(inputs)
    class_names = list(rec.class_names)
    rows: list[dict] = []
    batch: list[tuple[str, np.ndarray]] = []

    def flush():
        if not batch:
            return
        images = ImageBatch(batch)
        for i, ((p, _), row) in enumerate(zip(batch, model.proba(images))):
            if i in images.failed:  # the extractor gave NaN or inf features: the image is named, with the cause
                logger.warning("no prediction for %s: %s", printable(str(p)), images.failed[i])
                rows.append({"path": p, "label": "", "probability": float("nan"), "error": images.failed[i]})
                continue
            k = int(np.argmax(row))
            rows.append({"path": p, "label": class_names[k], "probability": float(row[k]), "error": ""})
        batch.clear()

    for p, img, reason in iter_decoded(
        [str(p) for p in paths], model.size, 4 if workers is None else workers, 4 * batch_size
    ):
        if img is None:
            logger.warning("skipped %s: %s", printable(str(p)), reason)
            rows.append({"path": p, "label": "", "probability": float("nan"), "error": reason})
            continue
        batch.append((p, img))
        if len(batch) == batch_size:
            flush()
    flush()
    order = {str(p): i for i, p in enumerate(paths)}
    rows.sort(key=lambda r: order[r["path"]])  # failures were listed as met, images as their batch finished
    if out is not None:
        try:
            write_atomic(out, lambda tmp: _write_csv(tmp, rows), "--out")
        except OutputError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, OSError) else exc
            raise StoreError(
                f"could not write --out {out} ({cause.strerror or cause}): {output_fix(cause, Path(out))}. Nothing was "
                f"written there; the predictions were made but not saved: run predict again"
            ) from None
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    """The predictions CSV: path, label and error through ``csv_cell`` (a spreadsheet shows them, never evaluates
    them); non-UTF-8 names are written as their own bytes."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(CSV_HEADER + "\r\n")
        for r in rows:
            cells = (csv_cell(str(r["path"])), csv_cell(r["label"]), repr(r["probability"]), csv_cell(r["error"]))
            fh.write(",".join(cells) + "\r\n")
