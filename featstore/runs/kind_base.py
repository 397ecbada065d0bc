"""What every kind of run answers (:class:`RunKind`), and the calibrated probabilities a run gives (:func:`calibrated`).

The kinds themselves (a fitted classifier, an ensemble, a fine-tuned model) and their registry are in
:mod:`featstore.runs.kinds`; this module is their shared interface, so that a kind's own code stays beside its
registry entry while the interface stays small.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError
from featstore.runs.apply import ApplyOptions
from featstore.runs.files import RECORD, BrokenRunError
from featstore.runs.record import RunRecord, Types, thaw
from featstore.stats.calibration import apply_calibration

APPLY_ATTRS: dict[str, Types] = {  # extractor_attrs keys that rebuilding the extractor (predict) and evaluating read
    "model": str,
    "layer": str,
    "input_size": int,
    "pooling": str,
    "dtype": str,
    "weights": str,
    "feature_shape": list,
    "fingerprint": str,
}


class RunKind:
    """One kind of run (subclassed per kind, one instance each in the registry)."""

    name = ""  # the record's "kind"
    fields: Mapping[str, Types] = {}  # run.json keys this kind requires, with their types
    article = "a"  # for messages: "a fit run", "an ensemble run"
    member_of_ensembles = True  # an ensemble may average this kind's probabilities
    one_group = True  # its extractor is one group of a store (an ensemble's "a+b" is none: evaluate its members)
    sweep_cell = False  # a sweep's cell may reuse a run of this kind (featstore.experiments.sweep_reuse)
    fits_train = False  # its model was fitted on the training split (its figures there are resubstitution figures)
    registered_clf = False  # its clf is a classifier of the registry, maybe one a script registered (runs compare)

    def check_record(self, obj: dict, where: str, folder: Path) -> None:
        """BrokenRunError unless the kind's own keys mean something it can use (called by ``RunRecord.from_json``)."""

    def check_files(self, rec: RunRecord, folder: Path) -> None:
        """BrokenRunError unless the files the record names are regular files (nothing is read: listings call it)."""

    def verify(self, rec: RunRecord, folder: Path) -> None:
        """BrokenRunError unless the run's model file has its recorded sha256 and content featstore writes."""

    def load(self, rec: RunRecord, folder: Path, options: ApplyOptions):
        """The run's model, loaded from its verified folder."""
        raise NotImplementedError

    def for_images(self, rec: RunRecord, folder: Path, options: ApplyOptions) -> ImagesModel:
        """The run ready to give probabilities for decoded images (its extractor rebuilt when it needs one)."""
        raise NotImplementedError

    def check_runtime(self, rec: RunRecord, options: ApplyOptions) -> None:
        """ConfigError, before anything is built, when ``options.runtime`` cannot run this run on images."""

    def split_predictions(
        self, rec: RunRecord, folder: Path, store: str | os.PathLike, split: str, options: ApplyOptions
    ):
        """``(labels, predictions, probabilities)`` of the run on a split of a store (refused on other features); the
        probabilities are the model's own, as predictions.npz keeps them: :func:`calibrated` gives the run's."""
        raise NotImplementedError

    def split_blocks(
        self, rec: RunRecord, folder: Path, store: str | os.PathLike, split: str, options: ApplyOptions
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`split_predictions` as ``(labels, predictions, probabilities)`` blocks of rows in store order: a kind
        that can stream (a fit on stored features) gives a block at a time within the run's memory budget."""
        yield self.split_predictions(rec, folder, store, split, options)

    def check_warm_start(self, rec: RunRecord, fresh: bool) -> None:
        """ConfigError unless a fine-tuning can start from this run (with a ``fresh`` head, or from its own)."""
        raise ConfigError(
            f"{rec.id} is {self.article} {self.name} run; fine-tune from a fitted dense head (featstore fit --clf dense), "
            f"or pass --from-scratch-head with a fitted run"
        )

    def phase_a_head(self, rec: RunRecord, folder: Path, fresh: bool) -> dict:
        """The head a fine-tuning starts from (``featstore.models.finetuned.build_model``'s ``head``)."""
        self.check_warm_start(rec, fresh)
        raise NotImplementedError

    def params_text(self, rec: RunRecord) -> str:
        """The run's parameters as the runs table shows them (those given or searched, not every default)."""
        chosen = set(rec.get("given", {})) | {
            k for c in rec.get("selection", {}).get("candidates", []) for k in c["params"]
        }
        return ",".join(f"{k}={v}" for k, v in sorted(rec["params"].items()) if k in chosen)

    def describe(self, rec: RunRecord, selected: Mapping[str, str] | None = None) -> list[str]:
        """Lines of ``featstore runs show`` between the header and the notes; ``selected``: the splits the run was
        chosen on, as ``featstore.runs.selected.selected_on`` reads them with its runs folder (None: its own record's
        marks only)."""
        return []

    def curves(self, rec: RunRecord) -> tuple[dict, str, dict | None] | None:
        """``(history, title, then)`` for curves.png, or None when the run has no training curves."""
        return (rec["history"], rec.id, None) if rec.history else None

    def kept_epoch(self, rec: RunRecord) -> int | None:
        """The epoch (1-based, on the curves' axis) whose weights the model ends with, when the run records it."""
        return None


def calibrated(rec: RunRecord, proba: np.ndarray) -> np.ndarray:
    """The run's probabilities as it gives them (its recorded calibration applied to its model's raw ones; see
    ``featstore.stats.calibration``): what evaluate, predict and ensembles use. It never changes the predicted class."""
    cal = rec.calibration
    if cal["method"] == "none" and cal.get("input", "probabilities") == "probabilities":
        return proba
    out = apply_calibration(thaw(cal), proba)
    if not np.isfinite(out).all():  # logits so large that logits / T overflow: never a NaN probability downstream
        raise BrokenRunError(
            f"run {rec.id}: its calibration (T = {cal.get('T')!r} in its {RECORD}) gives NaN or infinite "
            f"probabilities; remove the run folder or restore its {RECORD}"
        )
    return out


class ImagesModel:
    """A run applied to images: ``size`` is the largest image side it needs, ``proba(batch)`` its checked probabilities."""

    def __init__(self, size: int, proba):
        self.size = size
        self.proba = proba  # ImageBatch -> (B, n_classes)
