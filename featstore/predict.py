"""Predict new images with a run: rebuild the exact extractor from the run's provenance, then classify.

The extractor is rebuilt from the recorded model, layer, input size, pooling, dtype and weights; the
weights found on this machine must have the recorded digest (and the whole extractor the recorded
fingerprint), otherwise prediction is refused.

>>> rows = predict("logreg-1a2b3c", ["some/images/"])   # doctest: +SKIP
>>> rows[0]["label"], rows[0]["probability"]            # doctest: +SKIP
('dog', 0.97)
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from .errors import DataError, WeightsError
from .images import IMAGE_EXTENSIONS, find_images, load_image, printable  # load_image: again at another size for mixed ensembles
from .runs import full_proba, get_run

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
        raise DataError(f"no images in {printable(', '.join(map(str, inputs)))} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return found


def rebuild_extractor(attrs: dict, weights: str | None = None):
    """The Extractor a store's provenance describes; refuses weights whose digest differs from the record."""
    from .extract import Extractor, ExtractorConfig

    try:
        ex = Extractor(ExtractorConfig.from_attrs(attrs, weights))
    except WeightsError as exc:
        raise WeightsError(f"{exc}\nThe run's features were made with weights {attrs['weights']} "
                           f"(file sha256 {attrs['weights_sha256'][:12] or '-'}); pass --weights PATH to give that file.") from exc
    if ex.attrs["weights_digest"] != attrs["weights_digest"]:
        raise WeightsError(
            f"the weights available here ({ex.weights.description}, file sha256 {ex.attrs['weights_sha256'][:12] or '-'}) are not "
            f"the ones the run was fitted on ({attrs['weights_description']}, file sha256 {attrs['weights_sha256'][:12] or '-'}); "
            f"refusing to predict. Pass --weights PATH with the original file."
        )
    if ex.attrs["fingerprint"] != attrs["fingerprint"]:
        raise WeightsError(f"rebuilt extractor has fingerprint {ex.attrs['fingerprint'][:12]}, the run's is {attrs['fingerprint'][:12]}; refusing to predict")
    return ex


def predict(run_id: str, inputs: list[str | os.PathLike], *, store: str | os.PathLike = "features.h5", runs: str | os.PathLike | None = None,
            out: str | os.PathLike | None = None, weights: str | None = None, batch_size: int = 32, workers: int | None = None) -> list[dict]:
    """Class and probability per image for a fit or ensemble run; unreadable images get a row with their reason.

    Writes a CSV (path, label, probability, error) when ``out`` is given. Example::

        predict("logreg-1a2b3c", ["new_images/"], out="predictions.csv")
    """
    from .artifacts import load_estimator
    from .extract import iter_decoded

    rec, folder = get_run(run_id, store, runs)
    members = [get_run(m, store, runs) for m in rec["members"]] if rec["kind"] == "ensemble" else [(rec, folder)]
    member_weights = rec.get("weights") or [1.0]
    extractors: dict[str, object] = {}
    for mrec, _ in members:
        if mrec["kind"] != "fit":
            raise DataError(f"run {rec['id']} has an ensemble as a member; predict with its fitted members instead")
        if mrec["fingerprint"] not in extractors:
            # --weights replaces a recorded weights *file* (moved or copied); named sources are always resolved as recorded
            override = weights if mrec["extractor_attrs"].get("weights_source") == "file" else None
            extractors[mrec["fingerprint"]] = rebuild_extractor(mrec["extractor_attrs"], override)
    models = [load_estimator(f, m["artifact"]) for m, f in members]
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
            ex = extractors[mrec["fingerprint"]]
            imgs = np.stack([img if img.shape[0] == ex.config.image_size else load_image(p, ex.config.image_size) for p, img in batch])
            proba = proba + w * full_proba(model, ex(imgs), len(class_names))
        proba = proba / sum(member_weights)
        for (p, _), row in zip(batch, proba):
            k = int(np.argmax(row))
            rows.append({"path": p, "label": class_names[k], "probability": float(row[k]), "error": ""})
        batch.clear()

    for p, img, reason in iter_decoded([str(p) for p in paths], max(sizes), 4 if workers is None else workers, 4 * batch_size):
        if img is None:
            logger.warning("skipped %s: %s", p, reason)
            rows.append({"path": p, "label": "", "probability": float("nan"), "error": reason})
            continue
        batch.append((p, img))
        if len(batch) == batch_size:
            flush()
    flush()
    order = {str(p): i for i, p in enumerate(paths)}
    rows.sort(key=lambda r: order[r["path"]])  # failures were listed as met, images as their batch finished
    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "probability", "error"])
            writer.writeheader()
            writer.writerows(rows)
    return rows
