"""Predict new images with a run: rebuild the exact extractor from the run's provenance, then classify.

The extractor is rebuilt from the recorded model, layer, input size, pooling, dtype and weights; the
weights found on this machine must have the recorded digest (and the whole extractor the recorded
fingerprint), otherwise prediction is refused. Permission to load a legacy ``.h5`` model file (which can
run code) comes only from the caller (``trust_model=True``, ``predict --trust-model``), never from the
run's record: ``run.json`` can be edited to name any file.

>>> rows = predict("logreg-1a2b3c", ["some/images/"])   # doctest: +SKIP
>>> rows[0]["label"], rows[0]["probability"]            # doctest: +SKIP
('dog', 0.97)
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import stat
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, DataError, StoreError, WeightsError
from featstore.images.listing import (
    IMAGE_EXTENSIONS,
    find_images,
    load_image,
    printable,
)  # load_image: again at another size for mixed ensembles
from featstore.runs.artifacts import checked_finetuned, checked_proba, load_estimator, load_finetuned

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
    return found


def rebuild_extractor(attrs: dict, weights: str | None = None, trust_model: bool = False):
    """The Extractor a store's provenance describes; refuses weights whose digest differs from the record.

    ``trust_model`` (the caller's, never the record's ``trust_model``) allows a legacy ``.h5`` model file.
    """
    from featstore.extraction.pipeline import Extractor, ExtractorConfig

    saved = bool(attrs.get("model_file"))  # a saved model: --weights PATH names the model file when it moved
    try:
        config = ExtractorConfig.from_attrs(attrs, None if saved else weights, model_file=weights if saved else None)
        ex = Extractor(
            dataclasses.replace(config, trust_model=trust_model)
        )  # a crafted run.json may say trust_model=true
    except (WeightsError, ConfigError) as exc:
        what = f"the model file {attrs['model_file']}" if saved else f"weights {attrs['weights']}"
        raise type(exc)(
            f"{exc}\nThe run's features were made with {what} (file sha256 {attrs['weights_sha256'][:12] or '-'}); "
            f"pass --weights PATH to give that file."
        ) from exc
    provenance.refuse_other_weights(ex.attrs, attrs)
    provenance.refuse_other_features(
        ex.attrs, attrs, "the run", "Predict with the featstore, libraries and weights the run was made with."
    )
    return ex


def _check_out(out: Path) -> None:
    """Refuse an --out CSV that could not be written, or that is not a regular file (a FIFO, a device), before any work."""
    folder = out.parent
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a CSV file name, e.g. {out / 'predictions.csv'}")
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
) -> list[dict]:
    """Class and probability per image for a fit, finetune or ensemble run; unreadable images get a row with their reason.

    Writes a CSV (path, label, probability, error) when ``out`` is given (a new file renamed onto ``out``).
    ``trust_model`` allows a run whose features came from a legacy ``.h5`` model file, which can run code when
    loaded: give it only for a model file you made yourself. Example::

        predict("logreg-1a2b3c", ["new_images/"], out="predictions.csv")
    """
    from featstore.extraction.pipeline import iter_decoded
    from featstore.runs.folder import find_run, runs_root, scan_runs
    from featstore.runs.write import replace_file

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size!r}")
    if out is not None:
        _check_out(Path(out))
    root = runs_root(store, runs)
    listing = scan_runs(root)  # read and checked once: the run and, for an ensemble, its members
    rec, folder = find_run(run_id, root, listing=listing)
    members = (
        [find_run(m, root, exact=True, listing=listing) for m in rec["members"]]
        if rec["kind"] == "ensemble"
        else [(rec, folder)]
    )
    member_weights = rec.get("weights") or [1.0]
    for mrec, _ in members:
        if mrec["kind"] == "ensemble":
            raise DataError(f"run {rec['id']} has an ensemble as a member; predict with its fitted members instead")
    # refused before any model is built or image read; a finetune run's model takes the images itself
    models = [load_finetuned(f, m) if m["kind"] == "finetune" else load_estimator(f, m["artifact"]) for m, f in members]
    extractors: dict[str, object] = {}
    for mrec, _ in members:
        if mrec["kind"] == "fit" and mrec["fingerprint"] not in extractors:
            # --weights replaces a recorded weights *file* (moved or copied); named sources are always resolved as recorded
            override = weights if mrec["extractor_attrs"].get("weights_source") in ("file", "model-file") else None
            extractors[mrec["fingerprint"]] = rebuild_extractor(mrec["extractor_attrs"], override, trust_model)
    paths = collect_images(inputs)
    class_names = rec["class_names"]
    rows: list[dict] = []
    batch: list[tuple[str, np.ndarray]] = []
    sizes = {int(m["extractor_attrs"]["input_size"]) for m, _ in members}

    def flush():
        if not batch:
            return
        proba = 0.0
        for (mrec, _), model, w in zip(members, models, member_weights):
            size = int(mrec["extractor_attrs"]["input_size"])
            imgs = np.stack([img if img.shape[0] == size else load_image(p, size) for p, img in batch])
            if mrec["kind"] == "finetune":
                proba = proba + w * checked_finetuned(model, imgs, len(class_names), mrec["id"])
            else:
                proba = proba + w * checked_proba(
                    model, extractors[mrec["fingerprint"]](imgs), len(class_names), mrec["id"]
                )
        proba = proba / sum(member_weights)
        for (p, _), row in zip(batch, proba):
            k = int(np.argmax(row))
            rows.append({"path": p, "label": class_names[k], "probability": float(row[k]), "error": ""})
        batch.clear()

    for p, img, reason in iter_decoded(
        [str(p) for p in paths], max(sizes), 4 if workers is None else workers, 4 * batch_size
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
            replace_file(Path(out), lambda tmp: _write_csv(tmp, rows))
        except OSError as exc:
            raise StoreError(
                f"could not write --out {out} ({exc.strerror or exc}); the predictions were made but not saved: "
                f"free space or choose another path"
            ) from None
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    """The predictions CSV; non-UTF-8 names are written as their own bytes."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "probability", "error"])
        writer.writeheader()
        writer.writerows(rows)
