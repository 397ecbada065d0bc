"""The kinds of run, in one registry: a fitted classifier, an ensemble, a fine-tuned model.

A kind says what it adds to the run record (its keys, checked by ``RunRecord.from_json``), which files
it names (checked to be regular files when runs are listed, verified by sha256 and content when the run
is used), how it is loaded, how it gives probabilities for a split of the store (``runs evaluate``) and
for images (``predict``), and how reports show it. Everything that depends on the kind of a run is here:
the rest of featstore asks the run's kind (:func:`kind_of`), never compares kind or classifier names.

>>> list_kinds()
['fit', 'ensemble', 'finetune']
>>> kind_of({"kind": "ensemble"}).member_of_ensembles
False
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, DataError, StoreError
from featstore.images.listing import printable
from featstore.provenance import MAX_IMAGE_SIZE
from featstore.runs import artifacts
from featstore.runs.apply import LARGE_FEATURE, ApplyOptions, ImageBatch, image_batches, split_images
from featstore.runs.evalrows import FarRows, RowsRefused
from featstore.runs.files import RECORD, BrokenRunError, read_record_json
from featstore.runs.kind_base import APPLY_ATTRS, ImagesModel, RunKind, calibrated  # noqa: F401 - re-exported
from featstore.runs.predictions_file import EVAL_BUDGET, eval_rows
from featstore.runs.rebuild import rebuild_advice  # noqa: F401 - re-exported (its home before attack 71 #1)
from featstore.runs.record import RunRecord, Types, check_fields, check_weights, raise_bad_names
from featstore.runs.schema import scaled_weights
from featstore.runs.selected import selection_lines
from featstore.store.reader import FeatureStore
from featstore.store.storage import row_bytes
from featstore.units import format_bytes

IMAGE_BATCH = 64  # images decoded and predicted at a time when a fine-tuned run is evaluated on a split

FINETUNE_PARAMS: dict[str, Types] = {  # a finetune run's params, as listings and reports show them
    "lr": (int, float),
    "optimizer": str,
    "epochs": int,
    "batch_size": int,
    "patience": int,
    "augment": str,
    "seed": int,
    "from_scratch_head": bool,
}


def _check_features_record(obj: dict, where: str, folder: Path) -> None:
    """What fit and finetune records share: an artifact record, provenance of the record's fingerprint, a sane input size."""
    artifacts.check_artifact_record(folder, obj["artifact"])
    check_fields(obj["extractor_attrs"], APPLY_ATTRS, f"{where}: extractor_attrs (the features' provenance)", folder)
    if obj["extractor_attrs"].get("fingerprint") != obj["fingerprint"]:
        raise BrokenRunError(f"{where}: the fingerprint does not match extractor_attrs", f"remove the folder {folder}")
    size = obj["extractor_attrs"].get("input_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_IMAGE_SIZE):
        raise BrokenRunError(
            f"{where}: extractor_attrs.input_size {size!r} is not an image side featstore uses (0 to "
            f"{MAX_IMAGE_SIZE}); predicting with it would decode images of any size",
            f"remove the folder {folder}",
        )
    if provenance.fingerprint(obj["extractor_attrs"]) != obj["fingerprint"]:
        # a fine-tuned model is fed by the recorded preprocess, a fit's extractor is rebuilt from the record, ensembles
        # and reports group runs by fingerprint: a field edited under a copied fingerprint was used silently
        raise BrokenRunError(
            f"{where}: extractor_attrs do not hash to the fingerprint (edited after the run was made? the run would be "
            f"applied to features it does not describe)",
            f"restore that {RECORD}, or remove the folder {folder}",
        )


class _FeaturesRun(RunKind):
    """A run with a model file made on one store group (fit, finetune)."""

    fits_train = True
    fields = {"artifact": dict, "extractor_attrs": dict}

    def check_record(self, obj: dict, where: str, folder: Path) -> None:
        _check_features_record(obj, where, folder)

    def check_files(self, rec: RunRecord, folder: Path) -> None:
        artifacts.artifact_files(folder, rec["artifact"])

    def verify(self, rec: RunRecord, folder: Path) -> None:
        artifacts.check_artifact(folder, rec["artifact"])

    def split_predictions(
        self, rec: RunRecord, folder: Path, store: str | os.PathLike, split: str, options: ApplyOptions
    ):
        return self._on_split(rec, folder, self._checked_store(rec, store), split, options)

    def _checked_store(self, rec: RunRecord, store: str | os.PathLike) -> FeatureStore:
        """The store, refused unless it holds the run's extractor with its features and classes."""
        fs = FeatureStore(store)
        if rec.extractor not in fs.extractors():
            raise StoreError(f"store {fs.path} has no extractor {rec.extractor!r} that run {rec.id} was fitted on")
        have = fs.metadata(rec.extractor)
        provenance.refuse_other_features(have, rec["extractor_attrs"], f"run {rec.id}", "Re-fit on this store.")
        if fs.class_names(rec.extractor) != list(rec.class_names):
            raise StoreError(
                f"store classes {fs.class_names(rec.extractor)} are not the run's {list(rec.class_names)}; refusing to evaluate"
            )
        return fs

    def _on_split(self, rec: RunRecord, folder: Path, fs: FeatureStore, split: str, options: ApplyOptions):
        raise NotImplementedError


class FitKind(_FeaturesRun):
    """A classifier fitted on stored features (``featstore fit``): a scikit-learn pipeline (skops) or a Keras head."""

    name = "fit"
    sweep_cell = True  # what `featstore sweep` fits: a re-run reuses it when it is the very fit a cell would make
    registered_clf = True

    def load(self, rec: RunRecord, folder: Path, options: ApplyOptions):
        return artifacts.load_estimator(folder, rec["artifact"], verified=True)

    def for_images(self, rec: RunRecord, folder: Path, options: ApplyOptions) -> ImagesModel:
        est, k, size = self.load(rec, folder, options), len(rec.class_names), int(rec.extractor_attrs["input_size"])
        extractor = options.extractor(rec["extractor_attrs"])

        def proba(batch: ImageBatch) -> np.ndarray:  # rows of features it cannot use: failed (named), not the fit
            fitted = lambda X: calibrated(rec, artifacts.checked_proba(est, X, k, rec.id))  # noqa: E731
            return batch.classified(extractor(batch.at(size)), rec.extractor, fitted, k)

        return ImagesModel(size, proba)

    def _on_split(self, rec: RunRecord, folder: Path, fs: FeatureStore, split: str, options: ApplyOptions):
        blocks = list(self._blocks(rec, folder, fs, split, options))
        return tuple(np.concatenate(column) for column in zip(*blocks))

    def split_blocks(self, rec: RunRecord, folder: Path, store, split: str, options: ApplyOptions):
        return self._blocks(rec, folder, self._checked_store(rec, store), split, options)

    def _blocks(self, rec: RunRecord, folder: Path, fs: FeatureStore, split: str, options: ApplyOptions):
        """The split a block of whole chunks at a time, as many rows as the run's memory budget holds with their
        probabilities (``predictions_file.eval_rows``; the fit's ``--memory-budget``, else ``EVAL_BUDGET``)."""
        est, k = self.load(rec, folder, options), len(rec.class_names)
        info = fs.split_info(split, rec.extractor)
        rows = eval_rows(info, rec.get("memory_budget") or EVAL_BUDGET, k)
        check, at = fs.nonfinite_rows(split, rec.extractor, large=False), 0  # large rows: far, else _checked_rows
        far = FarRows(fs, rec, split, rows * row_bytes(info))  # fit's far rule in this one pass (attack 75 #6)
        try:
            for X, y in fs.iter_batches(split, rec.extractor, max_bytes=rows * row_bytes(info)):
                if not check.block(X):
                    check.refuse()  # not the model: the predict check would call it altered
                if far.block(X):  # a far row: nothing more is scored, the rest only read to name them
                    yield (y, *_checked_rows(est, X, k, rec, fs, split, at))
                at += len(X)
            far.refuse()
        except StoreError as exc:  # the split's rows: said once, never read again to say it (RowsRefused)
            if type(exc) is not StoreError:
                raise
            raise RowsRefused(str(exc)) from None

    @staticmethod
    def _keras_head(rec: RunRecord) -> bool:
        """Whether the run's model is a Keras head (the dense classifier): the only one with layers to start from."""
        return rec.artifact["format"] == "keras"

    def check_warm_start(self, rec: RunRecord, fresh: bool) -> None:
        if not self._keras_head(rec) and not fresh:
            raise ConfigError(
                f"{rec.id} is a {rec.clf} run: only a dense head can be warm-started (its Keras layers are phase A's "
                f"head). Fit one with `featstore fit --clf dense`, or pass --from-scratch-head to train a new "
                "Dense(256) head end to end on the same features"
            )

    def phase_a_head(self, rec: RunRecord, folder: Path, fresh: bool) -> dict:
        self.check_warm_start(rec, fresh)
        if not self._keras_head(rec):
            return {"reduce": rec.params.get("reduce", "flatten"), "units": 256, "dropout": 0.5, "weights": None}
        pipe = artifacts.load_estimator(folder, rec["artifact"])
        head, n_classes = pipe.steps[-1][1], len(rec.class_names)
        if list(np.asarray(head.classes_)) != list(range(n_classes)):
            raise ConfigError(
                f"{rec.id} was fitted on classes {list(head.classes_)} of {n_classes}: a head that never saw a class "
                f"cannot be fine-tuned; fit the dense head on a train split with every class"
            )
        weights = None if fresh else head.layer_weights()
        return {"reduce": pipe.steps[0][1].reduce, "units": head.units, "dropout": head.dropout, "weights": weights}

    def describe(self, rec: RunRecord, selected: Mapping[str, str] | None = None) -> list[str]:
        sel, chosen = rec.get("selection", {}), selection_lines(rec, selected)
        method = str(sel.get("method"))
        method = method.replace("(nothing to select)", "(no setting to select)") if chosen else method
        lines = [f"  clf {rec.clf} params {rec['params']}", f"  selection: {method}", *chosen]
        lines += [f"    {c['params']}: {c['score']:.4f}" for c in sel.get("candidates", [])]
        streamed = f", streamed within {format_bytes(rec['memory_budget'])}" if rec.get("streamed") else ""
        lines.append(
            f"  fit {rec.get('fit_seconds', 0):.3f} s, predict {1000 * rec.get('predict_seconds_per_image', 0):.3f} ms/image{streamed}"
        )
        return lines


def _checked_rows(
    est, X: np.ndarray, k: int, rec: RunRecord, fs: FeatureStore, split: str, at: int
) -> tuple[np.ndarray, np.ndarray]:
    """``checked_predict`` of a block of store rows (``at``: its first row's index). Finite features too large for the
    model's arithmetic (3e38 overflows a scaler) are the store's fault, not the fit's, when the model works on the
    block's other rows (or, alone, on a zero row): StoreError naming those rows and the extractor, as predict does."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, not printed as a warning
            return artifacts.checked_predict(est, X, k, rec.id)
    except BrokenRunError:
        big = np.abs(X.reshape(len(X), -1)).max(axis=1, initial=0) > LARGE_FEATURE
        rest = X[~big] if (~big).any() else np.zeros_like(X[:1])
        try:
            if big.any():
                with np.errstate(over="ignore", invalid="ignore"):
                    artifacts.checked_predict(est, rest, k, rec.id)
        except BrokenRunError:
            pass
        else:
            if big.any():
                rows = np.flatnonzero(big) + at
                path = printable(fs.paths(split, rec.extractor)[rows[0]])
                raise StoreError(
                    f"{fs.path}:/{rec.extractor}/{split}: {len(rows)} row(s) (e.g. row {rows[0]}, {path}) hold finite "
                    f"features too large for run "
                    f"{rec.id}'s model (largest |feature| {float(np.abs(X[big]).max()):.3g}: an overflow in the "
                    f"extractor {rec.extractor!r} that wrote them; the fitted classifier works on the other rows). "
                    f"Check those images and the extractor's weights, then re-extract the split with --overwrite"
                ) from None
        raise


class EnsembleKind(RunKind):
    """The weighted average of other runs' probabilities (``featstore ensemble``); it has no model file of its own."""

    name = "ensemble"
    article = "an"
    fields = {"members": list, "weights": list}
    member_of_ensembles = one_group = False

    def check_record(self, obj: dict, where: str, folder: Path) -> None:
        from featstore.runs.files import valid_name

        bad = [n for n in obj["members"] if not valid_name(n)]
        if bad:
            raise_bad_names(bad, where, folder)
        twice = sorted(m for m, c in Counter(obj["members"]).items() if c > 1)  # each use read each mention
        if len(obj["members"]) < 2 or twice:
            raise BrokenRunError(
                f"{where}: an ensemble has at least two members, this one {len(obj['members'])}"
                f"{'; ' + ', '.join(twice[:3]) + ' named more than once' if twice else ''}",
                f"remove the folder {folder}",
            )
        if not check_weights(obj["weights"], len(obj["members"])):
            raise BrokenRunError(
                f"{where}: weights must be one finite non-negative number per member, not all zero",
                f"remove the folder {folder}",
            )

    def members(self, rec: RunRecord, options: ApplyOptions) -> list[tuple[RunRecord, Path]]:
        """The member runs (each verified), refused when one is itself an ensemble."""
        found = [options.find(m) for m in rec.members]
        if not all(kind_of(m).member_of_ensembles for m, _ in found):
            raise DataError(f"run {rec.id} has an ensemble as a member; predict with its fitted members instead")
        return found

    def verify(self, rec: RunRecord, folder: Path) -> None:
        """BrokenRunError unless its extractor and fingerprint are its members' as ``ensemble`` records them (each
        member's record hashed to its own); a member that cannot be read is left to the command that uses it."""
        try:
            members = [parse_record(read_record_json(folder.parent / m), folder.parent / m) for m in rec.members]
        except StoreError:
            return
        extractors = list(dict.fromkeys((m.extractor, m.fingerprint) for m in members))
        if ("+".join(n for n, _ in extractors), "+".join(f for _, f in extractors)) != (rec.extractor, rec.fingerprint):
            raise BrokenRunError(
                f"{folder / RECORD}: its extractor and fingerprint are not its members' (edited after it was made?)",
                f"restore that {RECORD}, or build the ensemble again (featstore ensemble)",
            )

    def load(self, rec: RunRecord, folder: Path, options: ApplyOptions):
        return [(m, kind_of(m).load(m, f, options)) for m, f in self.members(rec, options)]

    def check_runtime(self, rec: RunRecord, options: ApplyOptions) -> None:
        self._check_members_runtime(self.members(rec, options), options)

    @staticmethod
    def _check_members_runtime(members: list[tuple[RunRecord, Path]], options: ApplyOptions) -> None:
        for m, _ in members:
            kind_of(m).check_runtime(m, options)

    def for_images(self, rec: RunRecord, folder: Path, options: ApplyOptions) -> ImagesModel:
        members = self.members(rec, options)  # found and verified once
        self._check_members_runtime(members, options)  # every member, before any is built (or any ONNX cut exported)
        models = [kind_of(m).for_images(m, f, options) for m, f in members]

        weights = scaled_weights(rec.weights)  # as their ratios: no underflow, no overflowing sum

        def proba(batch: ImageBatch) -> np.ndarray:  # the members' calibrated probabilities, averaged
            return calibrated(rec, sum(w * m.proba(batch) for m, w in zip(models, weights)) / sum(weights))

        return ImagesModel(max(m.size for m in models), proba)

    def split_predictions(
        self, rec: RunRecord, folder: Path, store: str | os.PathLike, split: str, options: ApplyOptions
    ):
        raise ConfigError(f"{rec.id} is an ensemble; {rebuild_advice(rec, split)}")  # (evaluate: with its members')

    def params_text(self, rec: RunRecord) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(rec["params"].items()))

    def describe(self, rec: RunRecord, selected: Mapping[str, str] | None = None) -> list[str]:
        return [f"  members {', '.join(rec.members)} with weights {list(rec.weights)}", *selection_lines(rec, selected)]


def image_blocks(images, size: int, proba_of, workers: int):
    """``(labels, predictions, probabilities)`` of a split's images (``apply.split_images``) at ``size``, in store row
    order, ``IMAGE_BATCH`` images at a time: ``proba_of(uint8 batch)`` gives each batch's probabilities (a fine-tuned
    model's, checked by the caller's rule). ``runs evaluate`` and ``finetune``'s own evaluation both predict with it, so
    neither holds a split's ``(N, K)`` probabilities."""
    at = 0
    for x, _ in image_batches(images, size, IMAGE_BATCH, None, workers):
        proba = proba_of(x)
        yield images.labels[at : at + len(proba)], proba.argmax(axis=1), proba
        at += len(proba)


class FinetuneKind(_FeaturesRun):
    """A backbone fine-tuned under a dense run's head (``featstore finetune``): a whole Keras model from images."""

    name = "finetune"
    fields = {"artifact": dict, "extractor_attrs": dict, "from_run": str, "unfreeze_from": str}

    def check_record(self, obj: dict, where: str, folder: Path) -> None:
        check_fields(obj["params"], FINETUNE_PARAMS, f"{where}: params of the fine-tuning", folder)
        super().check_record(obj, where, folder)

    def load(self, rec: RunRecord, folder: Path, options: ApplyOptions):
        return artifacts.load_finetuned(folder, rec, verified=True)

    def check_runtime(self, rec: RunRecord, options: ApplyOptions) -> None:
        if options.runtime not in (None, "keras"):  # None: as recorded, and a fine-tuned run is Keras's
            raise ConfigError(
                f"--runtime {options.runtime} runs a frozen extractor; {rec.id} is a fine-tuned model, which runs with "
                f"Keras: leave out --runtime (or give --runtime keras)"
            )

    def for_images(self, rec: RunRecord, folder: Path, options: ApplyOptions) -> ImagesModel:
        self.check_runtime(rec, options)
        model, k = self.load(rec, folder, options), len(rec.class_names)
        size = model.image_size
        return ImagesModel(
            size, lambda batch: calibrated(rec, artifacts.checked_finetuned(model, batch.at(size), k, rec.id))
        )

    def _on_split(self, rec: RunRecord, folder: Path, fs: FeatureStore, split: str, options: ApplyOptions):
        return tuple(np.concatenate(column) for column in zip(*self._blocks(rec, folder, fs, split, options)))

    def split_blocks(self, rec: RunRecord, folder: Path, store, split: str, options: ApplyOptions):
        return self._blocks(rec, folder, self._checked_store(rec, store), split, options)

    def _blocks(self, rec: RunRecord, folder: Path, fs: FeatureStore, split: str, options: ApplyOptions):
        """Its backbone changed: the store's rows name the images, the model sees the images (store row order), a
        batch of ``IMAGE_BATCH`` images at a time: ``(labels, predictions, probabilities)`` of each batch."""
        model, k = self.load(rec, folder, options), len(rec.class_names)
        info = fs.split_info(split, rec.extractor)
        if not info.get("complete"):
            raise StoreError(
                f"split {split!r} of {rec.extractor!r} is not complete; finish it with `featstore extract --split {split}`"
            )
        images = split_images(fs, rec.extractor, split, Path(info["source_root"]), list(rec.class_names))
        # a crafted or damaged model.keras may give another number of classes, NaN or non-probabilities: refused, as predict does
        checked = lambda x: artifacts.checked_finetuned(model, x, k, rec.id)  # noqa: E731
        yield from image_blocks(images, model.image_size, checked, options.workers)

    def params_text(self, rec: RunRecord) -> str:
        p = rec.params
        return f"from={rec['from_run']},unfreeze={rec['unfreeze_from']},lr={p['lr']:g}" + (
            f",augment={p['augment']}" if p["augment"] else ""
        )

    def describe(self, rec: RunRecord, selected: Mapping[str, str] | None = None) -> list[str]:
        p = rec.params
        return [
            f"  phase B from {rec['from_run']} (phase A head{', not used: new head' if p['from_scratch_head'] else ''}): "
            f"layers {rec['unfreeze_from']} and above train ({len(rec.get('trainable_layers', []))} with weights)",
            f"  {p['optimizer']} lr {p['lr']:g}, batch {p['batch_size']}, {len(rec.history.get('loss', ()))} of at most "
            f"{p['epochs']} epochs (early stopping on validation loss, patience {p['patience']}), augment {p['augment'] or 'none'}, seed {p['seed']}",
            f"  {'frozen layers cached in the store as ' + rec['cached_cut'] if rec.get('cached_cut') else 'trained from the images'}"
            f"{' (streamed within ' + format_bytes(rec['memory_budget']) + ')' if rec.get('streamed') else ''}; "
            f"{rec.get('fit_seconds', 0):.1f} s ({rec.get('seconds_per_epoch', 0):.1f} s per epoch); new weights digest {rec.get('weights_digest', '-')[:12]}",
        ]

    def curves(self, rec: RunRecord) -> tuple[dict, str, dict | None] | None:
        if not rec.get("phase_a_history"):  # a fresh head: phase B's curves alone
            return super().curves(rec)
        title = f"{rec['from_run']} (phase A) -> {rec.id} (phase B, from {rec['unfreeze_from']})"
        return rec["phase_a_history"], title, rec.get("history", {})

    def kept_epoch(self, rec: RunRecord) -> int | None:
        """Phase B's restored epoch after phase A's epochs; 0 (no epoch beat phase A) marks phase A's last epoch."""
        restored = rec.get("restored_epoch")
        if not isinstance(restored, int) or restored < 0:
            return None  # a run recorded before restored_epoch existed
        before = len(rec.get("phase_a_history", {}).get("loss", ())) if rec.get("phase_a_history") else 0
        return before + restored if before + restored > 0 else None


_KINDS: dict[str, RunKind] = {k.name: k for k in (FitKind(), EnsembleKind(), FinetuneKind())}


def list_kinds() -> list[str]:
    """Names of the kinds of run."""
    return list(_KINDS)


def kind_of(rec: Mapping) -> RunKind:
    """The kind of a record (a RunRecord, or a run.json object already checked by :func:`parse_record`)."""
    return _KINDS[rec["kind"]]


def parse_record(obj: object, folder: Path) -> RunRecord:
    """The validated record of ``folder`` from its parsed run.json (``RunRecord.from_json`` with the record's kind)."""
    where = folder / RECORD
    if not isinstance(obj, dict):
        raise BrokenRunError(f"{where} is not a JSON object", f"remove the folder {folder}")
    name = obj.get("kind")
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        names = list_kinds()
        raise BrokenRunError(
            f"{where}: kind {name!r} is not {', '.join(names[:-1])} or {names[-1]}", f"remove the folder {folder}"
        )
    return RunRecord.from_json(obj, folder, kind)
