"""Fine-tuning (phase B), warm-started from a ``dense`` run fitted on the store (phase A).

Phase A is the ``dense`` head fitted on cached features in seconds. Phase B puts that head, with its
trained weights, on the backbone, unfreezes every layer from ``unfreeze_from`` to the cut, and trains
end to end at a low learning rate (RMSprop 1e-5 by default) from the image folders, decoded, resized
and preprocessed exactly as for extraction. Early stopping on validation loss restores the best
weights. Augmentation (``--augment``) applies to the training split only.

Without augmentation the frozen layers below ``unfreeze_from`` give the same output every epoch, so
they are computed once: extracted into the store as the group ``<model>@<layer below>`` (a normal
extractor group, resumable, reused by later fine-tunings) and phase B trains only the layers above on
it. The run records the phase-A run, the layers trained, the new weights' digest and both phases' curves.

>>> run = finetune("dense-1a2b3c", FinetuneConfig(unfreeze_from="block5_conv1"))   # doctest: +SKIP
>>> run["metrics"]["validation"]["accuracy"]                                       # doctest: +SKIP
0.93
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, OutputError, StoreError, check_names, check_paths, choices_error
from featstore.experiments.calibration import calibrate_on_validation_blocks
from featstore.experiments.evaluate import run_metrics_blocks
from featstore.experiments.finetune_cache import cache_note, cached_cut
from featstore.experiments.finetune_rows import rows_of_test
from featstore.experiments.finetune_space import cut_bytes, ensure_room, keep_run, run_bytes
from featstore.experiments.finetune_train import train
from featstore.images.augment import parse_augment
from featstore.images.decode import check_threads
from featstore.kerasconfig import refuse_caps
from featstore.models import activations
from featstore.models.finetuned import Built, FinetunedModel, build_model
from featstore.runs.apply import rebuild_extractor, split_images
from featstore.runs.folder import ensure_writable, get_run, runs_root
from featstore.runs.kinds import image_blocks, kind_of
from featstore.runs.predictions_file import BLOCK_FRACTION, EVAL_BUDGET, PROBA_COPIES, PredictionsWriter
from featstore.runs.record import RunRecord, digest_paths, draft
from featstore.runs.write import RunDraft
from featstore.store.reader import FeatureStore
from featstore.units import parse_bytes

logger = logging.getLogger(__name__)

OPTIMIZERS = ("rmsprop", "adam", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides phase B (recorded in the run)."""

    unfreeze_from: str  # first layer that trains; every layer before it stays frozen
    lr: float = 1e-5  # learning rate: low, so the pretrained features are adjusted, not destroyed
    optimizer: str = "rmsprop"  # rmsprop | adam | sgd (momentum 0.9)
    epochs: int = 15  # at most; early stopping on validation loss usually ends sooner
    batch_size: int = 20  # images per step
    patience: int = 3  # epochs without a better validation loss before stopping (best weights restored)
    augment: str = ""  # e.g. "flip,rotate=0.1,zoom=0.2" (featstore.images.augment); training split only
    seed: int = 0  # shuffling, augmentation, dropout and (--from-scratch-head) the head's initial weights
    from_scratch_head: bool = False  # train a new head end to end instead of starting from the phase-A head
    cache: bool = True  # without augmentation, compute the frozen layers once into the store
    # bytes (or "512MB"): a cached split larger than this is streamed from the store in shuffled blocks instead of
    # loaded (its training order is then not the image path's); None: loaded whole
    memory_budget: int | str | None = None

    def validated(self) -> FinetuneConfig:
        """Check every field before any work; canonical augmentation spec."""
        refuse_caps()  # Keras would cut the fine-tuning's fit, unrecorded (attack 47 #8): before any work
        if not isinstance(self.unfreeze_from, str) or not self.unfreeze_from:
            raise ConfigError(f"--unfreeze-from must name a layer (e.g. block5_conv1); got {self.unfreeze_from!r}")
        if (
            not isinstance(self.lr, (int, float))
            or isinstance(self.lr, bool)
            or not math.isfinite(self.lr)
            or self.lr <= 0
        ):
            raise ConfigError(f"--lr must be a positive number (fine-tuning uses a low one, e.g. 1e-5); got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise choices_error("optimizer", self.optimizer, OPTIMIZERS)
        for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 0), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer of at least {low}; got {value!r}")
        if self.seed > 2**31 - 1:  # Keras seeds take 32 bits; the augmentation layers use seed + i
            raise ConfigError(f"--seed must be at most {2**31 - 1}; got {self.seed}")
        budget = self.memory_budget
        if budget is not None:
            budget = None if isinstance(budget, bool) else parse_bytes(budget)
            if budget is None or budget < 1:
                raise ConfigError(f"--memory-budget must be a size such as 512MB; got {self.memory_budget!r}")
        return replace(self, augment=parse_augment(self.augment).spec, memory_budget=budget)


def finetune(
    run_id: str,
    config: FinetuneConfig,
    *,
    data: str | os.PathLike | None = None,
    store: str | os.PathLike = "features.h5",
    runs: str | os.PathLike | None = None,
    weights: str | None = None,
    trust_model: bool = False,
    workers: int = 2,
    verbose: int = 0,
) -> RunRecord:
    """Fine-tune the backbone under a ``dense`` run's head from the image folders; record and return the new run.

    ``data`` is the data root holding ``train/`` and ``validation/`` (default: the one the store was
    extracted from). ``weights``/``trust_model`` as for :func:`featstore.experiments.predict`. Example::

        finetune("dense-1a2b3c", FinetuneConfig("block4_conv1", augment="flip,rotate=0.1,zoom=0.2"))
    """
    check_names("weights", weights=weights)
    check_paths(data=data, store=store, runs=runs)  # data="" read the current folder
    config = config.validated()
    check_threads(workers)  # here, not when validation is decoded after every epoch was trained
    rec, folder = get_run(run_id, store, runs)
    kind_of(rec).check_warm_start(rec, config.from_scratch_head)  # a fitted dense head, or a fitted run and a new head
    root = runs_root(store, runs)
    ensure_writable(root, store, elsewhere=False)  # its phase-A run is read from --runs: not "pass --runs DIR"
    fs = FeatureStore(store)
    name = rec["extractor"]
    if name not in fs.extractors():
        raise StoreError(f"store {store} has no extractor {name!r} that run {rec['id']} was fitted on")
    provenance.refuse_other_features(
        fs.metadata(name), rec["extractor_attrs"], f"run {rec.id}", "Fine-tune from a run fitted on this store."
    )
    class_names = list(rec.class_names)
    for split in ("train", "validation"):
        if split not in fs.splits(name) or not fs.split_info(split, name).get("complete"):
            raise StoreError(
                f"fine-tuning needs complete train and validation splits of {name!r} in {store} (early stopping "
                f"watches validation loss); extract them first: featstore extract --split {split}"
            )

    def root_of(split: str) -> Path:  # --data, else the folder each split was extracted from
        return Path(data) if data is not None else Path(fs.split_info(split, name)["source_root"])

    sets = {s: split_images(fs, name, s, root_of(s), class_names) for s in ("train", "validation")}
    scored = [s for s in ("validation", "test") if s in fs.splits(name) and fs.split_info(s, name).get("complete")]
    # checked before training, not after every epoch: a changed test folder is refused while nothing is lost
    scored_images = {s: sets.get(s) or split_images(fs, name, s, root_of(s), class_names) for s in scored}
    # test against the rows it is fitted on and chosen on, before any training (attack 79 #2): refused where most are
    rows_notes = rows_of_test(fs, name, rec, scored, config.from_scratch_head)
    built = warm_start_model(rec, folder, config, weights, trust_model)
    logger.info(
        "fine-tuning %s: %d layers train (%s ... %s), %d stay frozen; BatchNormalization in inference mode",
        rec["id"],
        len(built.trainable),
        built.trainable[0],
        built.trainable[-1],
        len(built.frozen),
    )
    will_cache = config.cache and not config.augment and built.top is not None
    _refuse_big_steps(built, config, will_cache)
    _ensure_room(fs, name, root, built, config, will_cache, sets, scored_images, class_names, folder)
    cached, t_cache, size_before = None, time.perf_counter(), _size(fs.path)
    if will_cache:
        cached = cached_cut(
            fs,
            name,
            built.cut_input,
            rec["extractor_attrs"],
            weights,
            trust_model,
            sets,
            config.memory_budget,
            built.top,
        )
    elif config.augment:
        logger.info(
            "augmentation on (%s): training from the images, the frozen layers are computed every epoch", config.augment
        )
    elif config.cache:
        logger.info(
            "the model cannot be cut below %s (no one tensor feeds it: a skip connection crosses it, or nothing below it "
            "is frozen): training from the images",
            config.unfreeze_from,
        )
    if config.memory_budget is not None and cached is None:  # recorded but meaningless: say so before training
        raise ConfigError(
            "--memory-budget bounds the cached cut of the frozen layers, and this fine-tuning trains from the images "
            f"({'--augment' if config.augment else '--no-cache' if not config.cache else 'the model cannot be cut'}), "
            "which are read batch by batch and never held whole: leave --memory-budget out"
        )
    cache_seconds = time.perf_counter() - t_cache if cached else 0.0
    started = time.perf_counter()
    trained = train(built, cached, sets, rec["extractor_attrs"], config, workers, verbose)
    history, epoch_seconds = trained.history, trained.epoch_seconds
    fit_seconds = time.perf_counter() - started
    model = FinetunedModel(built.model, rec["extractor_attrs"])
    grew = (size_before, _size(fs.path))
    from featstore.models.weights import weights_digest

    listings = {s: str(fs.split_info(s, name).get("listing_sha256", "")) for s in scored}  # split_images checked them
    diverged = _divergence(history, config.lr)

    # the run's folder is drafted first: its predictions.npz is written a batch of images at a time as they are predicted
    # (never an (N, K) array), the temperature fitted on validation as fit does (ensembles average calibrated
    # probabilities), the figures those `runs evaluate` gives; NaN or inf removes the draft (nothing is recorded)
    def record_into(runs_folder: Path) -> RunRecord:
        return _record(
            runs_folder,
            len(sets["train"].labels),
            scored_images,
            listings,
            model,
            class_names,
            workers,
            config,
            diverged,
            fields,
        )

    fields = dict(
        store=str(fs.path.resolve()),
        extractor=name,
        fingerprint=rec.fingerprint,
        extractor_attrs=rec["extractor_attrs"],
        class_names=class_names,
        params=asdict(config),
        from_run=rec.id,
        unfreeze_from=config.unfreeze_from,
        trainable_layers=built.trainable,
        data_root=str(sets["train"].root.resolve()),
        cached_cut=cached.group if cached else "",
        streamed=bool(cached and len(cached.arrays) < len(sets)),  # a cached split over --memory-budget: streamed
        memory_budget=config.memory_budget,
        cache_seconds=round(cache_seconds, 3),
        weights_digest=weights_digest(built.model),
        history=history,
        phase_a_history={} if config.from_scratch_head else rec.get("history", {}),
        fit_seconds=round(fit_seconds, 3),
        epoch_seconds=epoch_seconds,
        seconds_per_epoch=float(np.median(epoch_seconds[1:] or epoch_seconds)),  # the first epoch also traces the graph
        phase_a_val_loss=trained.baseline["val_loss"],
        phase_a_val_accuracy=trained.baseline["val_accuracy"],
        restored_epoch=trained.restored_epoch,
        notes=_notes(built, config, trained, cached and cache_note(fs, cached, config.unfreeze_from, grew), rows_notes),
    )
    try:
        return record_into(root)
    except OutputError as exc:  # the disk filled while it trained: the run is kept whole elsewhere, not thrown away
        if not isinstance(getattr(exc, "cause", None), OSError):
            raise
        raise keep_run(exc, record_into, root, fit_seconds, len(history.get("loss", []))) from None


def _ensure_room(fs, name, root, built, config, will_cache, sets, scored_images, class_names, folder) -> None:
    """Refuse before any epoch when the run folder and the cached cut do not fit (:func:`finetune_space.ensure_room`)."""
    cut = 0
    if will_cache:
        group = f"{name.split('@')[0]}@{built.cut_input}"  # as cached_cut names it
        shape = built.top.inputs[0].shape[1:]  # the cut's tensor in the model's graph (a Sequential's too)
        cut = cut_bytes(fs, group, shape, {s: len(sets[s].labels) for s in sets})
    rows = sum(len(images.labels) for images in scored_images.values())
    ensure_room(root, run_bytes(built.model, config.optimizer, rows, len(class_names)), fs.path, cut, folder)


def _record(root, n_train, scored_images, listings, model, class_names, workers, config, diverged, fields) -> RunRecord:
    """Evaluate the fine-tuned ``model`` into a new run folder of ``root`` and record it with ``fields``."""
    with RunDraft(root, "finetune") as run_draft:
        evaluated, calibration = evaluate_splits(
            run_draft.predictions,
            scored_images,
            listings,
            model,
            class_names,
            workers,
            config.memory_budget or EVAL_BUDGET,
            diverged,
        )
        splits = {"train": n_train, **{s: m["n"] for s, m in evaluated.items()}}
        record = draft("finetune", "finetune", **fields, splits=splits, metrics=evaluated, calibration=calibration)
        return run_draft.finish(record, model)


def _divergence(history: dict, lr: float):
    """The check of each batch of probabilities finetune records: NaN or inf means the weights became NaN/inf, and a
    run recorded now would be listed as broken, so nothing is (the draft run folder is removed)."""

    def check(split: str, proba: np.ndarray) -> None:
        if not np.isfinite(proba).all():
            raise ConfigError(
                f"fine-tuning diverged: the model gives NaN or inf on {split} (training loss per epoch "
                f"{[round(v, 4) for v in history.get('loss', [])]}); nothing was recorded. Lower --lr (fine-tuning "
                f"uses about 1e-5; it was {lr:g}) and retry"
            )

    return check


def evaluate_splits(
    preds: PredictionsWriter,
    images: dict,
    listings: dict[str, str],
    model: FinetunedModel,
    class_names: list[str],
    workers: int,
    budget: int,
    check,
) -> tuple[dict, dict]:
    """``(figures per split, calibration)`` of a fine-tuned model on its ``images`` (validation, then test), as
    ``runs evaluate`` of a fine-tuned run predicts them (``featstore.runs.kinds.image_blocks``: ``IMAGE_BATCH`` images
    at a time), never holding a split's ``(N, K)`` probabilities: each batch's are written to ``preds`` (the draft
    run's predictions.npz) as they come; the temperature is fitted on validation's read back from it in blocks (a
    quarter of ``budget``: its logits kept in memory when they fit there, as a streamed fit does); every figure comes
    from O(1) numbers a row (``run_metrics_blocks``). ``check(split, proba)`` refuses a batch (NaN: diverged)."""
    k, evaluated = len(class_names), {}
    rows = max(1, (budget // BLOCK_FRACTION) // (PROBA_COPIES * 8 * k))  # read-back block: its copies fit a quarter

    def written(split: str, member):
        def proba_of(x):
            proba = model.proba(x)
            check(split, proba)
            return proba

        for block in image_blocks(images[split], model.image_size, proba_of, workers):
            member.write(block[2])
            yield block

    def ended(split: str) -> None:
        preds.labels(split, images[split].labels, digest_paths(images[split].paths), listings[split])

    val = images["validation"]  # fine-tuning needs a complete validation split (checked before training)
    with preds.probabilities("validation", len(val.labels), k) as member:
        val_pred = np.concatenate([pred for _, pred, _ in written("validation", member)])
    ended("validation")
    val_blocks = lambda: preds.blocks("validation", rows)  # noqa: E731
    calibration = calibrate_on_validation_blocks(val_blocks, val.labels, k, budget // BLOCK_FRACTION)

    def stored():
        at = 0
        for block in val_blocks():
            yield val.labels[at : at + len(block)], val_pred[at : at + len(block)], block
            at += len(block)

    evaluated["validation"] = run_metrics_blocks(stored(), class_names, calibration)[2]
    for split in (s for s in images if s != "validation"):
        with preds.probabilities(split, len(images[split].labels), k) as member:
            evaluated[split] = run_metrics_blocks(written(split, member), class_names, calibration)[2]
        ended(split)
    return {s: evaluated[s] for s in images}, calibration


def _notes(built, config: FinetuneConfig, trained, cache: str | None, rows: list[str] | None = None) -> list[str]:
    """What a reader of the run must know: how its scores were measured, which weights it kept, what test's rows are
    (``rows``: :func:`~featstore.experiments.finetune_rows.rows_of_test`'s notes; None: test not scored), its cache."""
    import keras

    dropout = any(isinstance(lyr, keras.layers.Dropout) and lyr.rate > 0 for lyr in built.model.layers)
    how = [f"augmented: {config.augment}"] * bool(config.augment) + ["dropout on"] * dropout
    kept = (
        f"no epoch beat phase A's validation loss {trained.baseline['val_loss']:.4f}: the model keeps phase A's "
        f"weights (restored_epoch 0)"
        if trained.restored_epoch == 0
        else f"early stopping kept epoch {trained.restored_epoch}'s weights (the best validation loss, below phase "
        f"A's {trained.baseline['val_loss']:.4f})"
    )
    judge = (  # "judge by test" only where test was compared and shares none of those rows (attack 79 #2)
        "no test split was scored"
        if rows is None
        else "judge by test"
        if not rows
        else f"test's figures are held-out ones only as far as the note{'s' if len(rows) > 1 else ''} on its rows "
        f"below say{'' if len(rows) > 1 else 's'}"
    )
    return [
        f"train accuracy is the training curve's{' (' + ', '.join(how) + ')' if how else ''}; "
        f"{'validation was' if rows is None else 'validation and test were'} evaluated on the images after training",
        f"{kept}; the validation split chose it (and the probabilities' temperature), so its score is optimistic; "
        f"{judge}",
        *(rows or []),
        *([cache] if cache else []),
    ]


def _refuse_big_steps(built: Built, config: FinetuneConfig, cached: bool) -> None:
    """A training step holds a whole batch's activations at once, and cannot be split as the images' batches are:
    refused before any epoch, with the --batch-size that fits, where one of its tensors would pass the 4 GiB bound:
    from the images, the whole model's largest (attack 45's note); from the cache, the trained layers' above the cut
    (an upsampling top died of SIGSEGV with the default --cache: attack 47 #6)."""
    if cached:
        largest = activations.check_activations(built.top, "the layers above the fine-tuning's cut", resizable=False)
        fits = activations.rows_at_once(config.batch_size, largest)[0]
    else:
        fits = built.rows_per_call(config.batch_size)
    if fits < config.batch_size:
        what = "cached rows through the layers above the cut" if cached else "images through the whole model"
        raise ConfigError(
            f"fine-tuning runs --batch-size {config.batch_size} {what} at once, and one row's largest tensor there "
            f"times {config.batch_size} is over featstore's bound of 4 GiB for one tensor: give --batch-size {fits} or "
            f"less"
        )


def _size(path: Path) -> int:
    """A file's size in bytes (0 if missing)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def warm_start_model(
    rec: RunRecord, folder: Path, config: FinetuneConfig, weights: str | None = None, trust_model: bool = False
) -> Built:
    """The run's extractor rebuilt (its weights' digest checked) with the phase-A head on it, frozen below ``unfreeze_from``.

    Before any training, the model gives on an image what the run's head gives on that image's stored features. Example::

        rec, folder = get_run("dense-1a2b3c")
        built = warm_start_model(rec, folder, FinetuneConfig("block5_conv1"))
    """
    head = kind_of(rec).phase_a_head(rec, folder, config.from_scratch_head)
    # refuses weights other than the store's
    extractor = rebuild_extractor(rec["extractor_attrs"], weights, trust_model)
    n_classes = len(rec.class_names)
    return build_model(extractor, head, n_classes, config.unfreeze_from, extractor.base_layer_names, config.seed)
