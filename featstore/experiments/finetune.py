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
from featstore.errors import ConfigError, FeatstoreError, StoreError, choices_error
from featstore.experiments.evaluate import metrics
from featstore.images.augment import parse_augment
from featstore.images.listing import printable
from featstore.models.finetuned import Built, FinetunedModel, build_model, preprocess_images
from featstore.runs.apply import image_batches, rebuild_extractor, split_images, split_proba
from featstore.runs.folder import ensure_writable, get_run, runs_root
from featstore.runs.kinds import kind_of
from featstore.runs.record import RunRecord, digest_paths, draft
from featstore.runs.write import write_run
from featstore.store.reader import FeatureStore

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

    def validated(self) -> FinetuneConfig:
        """Check every field before any work; canonical augmentation spec."""
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
        return replace(self, augment=parse_augment(self.augment).spec)


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
    config = config.validated()
    rec, folder = get_run(run_id, store, runs)
    kind_of(rec).check_warm_start(rec, config.from_scratch_head)  # a fitted dense head, or a fitted run and a new head
    root = runs_root(store, runs)
    ensure_writable(root)
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
    built = warm_start_model(rec, folder, config, weights, trust_model)
    logger.info(
        "fine-tuning %s: %d layers train (%s ... %s), %d stay frozen; BatchNormalization in inference mode",
        rec["id"],
        len(built.trainable),
        built.trainable[0],
        built.trainable[-1],
        len(built.frozen),
    )
    cached, t_cache = None, time.perf_counter()
    if config.cache and not config.augment and built.top is not None:
        cached = _cached_cut(fs, name, built.cut_input, rec["extractor_attrs"], weights, trust_model, sets)
    elif config.augment:
        logger.info(
            "augmentation on (%s): training from the images, the frozen layers are computed every epoch", config.augment
        )
    elif config.cache:
        logger.info(
            "the model cannot be cut below %s (a skip connection crosses it): training from the images",
            config.unfreeze_from,
        )
    cache_seconds = time.perf_counter() - t_cache if cached else 0.0
    started = time.perf_counter()
    history, epoch_seconds = _train(built, cached, sets, rec["extractor_attrs"], config, workers, verbose)
    fit_seconds = time.perf_counter() - started
    model = FinetunedModel(built.model, rec["extractor_attrs"])
    evaluated, probas = {}, {}
    for split in [s for s in ("validation", "test") if s in fs.splits(name) and fs.split_info(s, name).get("complete")]:
        images = sets.get(split) or split_images(fs, name, split, root_of(split), class_names)
        proba = split_proba(images, model.image_size, workers, model.proba)
        if not np.isfinite(proba).all():  # the weights became NaN/inf: a run recorded now would be listed as broken
            raise ConfigError(
                f"fine-tuning diverged: the model gives NaN or inf on {split} (training loss per epoch "
                f"{[round(v, 4) for v in history.get('loss', [])]}); nothing was recorded. Lower --lr (fine-tuning "
                f"uses about 1e-5; it was {config.lr:g}) and retry"
            )
        evaluated[split] = metrics(images.labels, proba.argmax(axis=1), class_names)
        probas[split] = (proba, images.labels, digest_paths(images.paths))
    from featstore.models.weights import weights_digest

    record = draft(
        "finetune",
        "finetune",
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
        cache_seconds=round(cache_seconds, 3),
        weights_digest=weights_digest(built.model),
        splits={"train": len(sets["train"].labels), **{s: m["n"] for s, m in evaluated.items()}},
        metrics=evaluated,
        history=history,
        phase_a_history={} if config.from_scratch_head else rec.get("history", {}),
        fit_seconds=round(fit_seconds, 3),
        epoch_seconds=epoch_seconds,
        seconds_per_epoch=float(np.median(epoch_seconds[1:] or epoch_seconds)),  # the first epoch also traces the graph
        notes=[
            "train accuracy is the training curve's (augmented, dropout on); validation and test "
            "were evaluated on the images after training"
        ],
    )
    return write_run(root, record, model, probas)


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


@dataclass
class Cached:
    """The frozen layers' output, computed once: the store group and its train/validation arrays."""

    group: str
    arrays: dict  # split -> (X, y)


def _cached_cut(fs, name, layer, attrs, weights, trust_model, sets) -> Cached:
    """Extract (or reuse) the group cut at ``layer`` for train and validation; its rows must be the run's rows."""
    from featstore.extraction.pipeline import extract
    from featstore.models.extractor import ExtractorConfig

    group = f"{name.split('@')[0]}@{layer}"
    cfg = replace(
        ExtractorConfig.from_attrs(
            attrs, None if attrs.get("model_file") else weights, model_file=weights if attrs.get("model_file") else None
        ),
        layer=layer,
        layers=(),
        pooling="none",
        dtype="float32",
        trust_model=trust_model,
    )
    logger.info(
        "the layers below %s are frozen: their output is cached in the store as %r (computed once, reused by later "
        "fine-tunings), and phase B trains only the layers above on it",
        layer,
        group,
    )
    arrays, made = {}, group not in fs.extractors()
    for split, images in sets.items():
        try:
            extract(images.root, split, fs.path, cfg, name=group)
        except StoreError as exc:  # e.g. a group of that name with another configuration: its fix is not --name here
            raise type(exc)(
                f"{exc}\n(while caching the frozen layers of the fine-tuning as the group {group!r} of {fs.path}; pass "
                f"--no-cache to train from the images instead, or fine-tune on a copy of the store without that group)"
            ) from None
        cut_paths = fs.paths(split, group)
        if cut_paths != images.paths:
            lacking = sorted(set(images.paths) - set(cut_paths))
            why = (
                f"it lacks {len(lacking)} of them (e.g. {printable(lacking[0])}), which cannot be read now: restore them, or "
                f"re-run `featstore extract` so the store and the folder agree"
                if lacking
                else "the folder changed between the two extractions?"
            )
            raise StoreError(
                f"the cached group {group!r} holds other images of {split!r} than {name!r} ({why}); re-extract both, "
                f"or pass --no-cache"
            )
        arrays[split] = fs.load(split, group)
    if (
        made
    ):  # a group of our own making: marked, so commands that pick the store's only extractor still find the user's
        from featstore.store.reader import CACHE_PURPOSE, open_h5
        from featstore.store.writer import writer_lock

        with writer_lock(fs.path), open_h5(fs.path, "a") as f:
            f[group].attrs["purpose"] = CACHE_PURPOSE
    return Cached(group, arrays)


def _train(
    built, cached: Cached | None, sets: dict, attrs: dict, config: FinetuneConfig, workers: int, verbose: int
) -> tuple[dict, list]:
    """Compile and fit (on the cached cut or from images); returns the per-epoch history and seconds."""
    import keras
    import tensorflow as tf

    from featstore.images.augment import augment_batch

    keras.utils.set_random_seed(config.seed)
    size = int(attrs["input_size"])
    n_classes = built.model.output_shape[-1]
    binary = n_classes == 1
    opt = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
    }[config.optimizer](learning_rate=config.lr)
    model = built.model if cached is None else built.top
    model.compile(
        optimizer=opt, loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    aug = parse_augment(config.augment)
    aug_model = aug.model(config.seed, int(attrs["input_size"]), int(attrs.get("input_channels", 3))) if aug else None
    n = len(sets["train"].labels)
    epoch = iter(range(10**9))
    ytype = np.float32 if binary else np.int64

    failed: list[
        Exception
    ] = []  # an error inside a generator reaches fit() as a tf UnknownError: kept to re-raise as itself

    def keep(gen):
        try:
            yield from gen
        except FeatstoreError as exc:
            failed.append(exc)
            raise

    def train_batches():
        order = np.random.default_rng(config.seed + next(epoch)).permutation(
            n
        )  # a new seeded order each epoch, same for both paths
        if cached is not None:
            X, y = cached.arrays["train"]
            for i in range(0, n, config.batch_size):
                idx = order[i : i + config.batch_size]
                yield X[idx].astype(np.float32), y[idx].astype(ytype)
            return
        for x, y in image_batches(sets["train"], size, config.batch_size, order, workers):
            x = augment_batch(aug_model, x) if aug_model is not None else x  # augmented, then preprocessed
            yield preprocess_images(x, attrs), y.astype(ytype)

    def val_batches():
        if cached is not None:
            X, y = cached.arrays["validation"]
            for i in range(0, len(y), config.batch_size):
                yield X[i : i + config.batch_size].astype(np.float32), y[i : i + config.batch_size].astype(ytype)
            return
        for x, y in image_batches(sets["validation"], size, config.batch_size, None, workers):
            yield preprocess_images(x, attrs), y.astype(ytype)

    shape = tuple(model.input_shape[1:])
    sig = (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.float32 if binary else tf.int64))
    steps = -(-n // config.batch_size)
    val_steps = -(-len(sets["validation"].labels) // config.batch_size)
    train = tf.data.Dataset.from_generator(lambda: keep(train_batches()), output_signature=sig).repeat()
    val = tf.data.Dataset.from_generator(lambda: keep(val_batches()), output_signature=sig).repeat()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    log = _epoch_log()(config.epochs)
    try:
        hist = model.fit(
            train,
            epochs=config.epochs,
            steps_per_epoch=steps,
            validation_data=val,
            validation_steps=val_steps,
            callbacks=[stop, log],
            verbose=verbose,
            shuffle=False,
        )
    except Exception:
        if failed:  # e.g. an image that cannot be read now: its own message, not TensorFlow's wrapper
            raise failed[0] from None
        raise
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}, log.seconds


def _epoch_log():
    """A Keras callback class that logs one line per epoch (the CLI's progress)."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __init__(self, epochs: int):
            super().__init__()
            self.epochs, self.t, self.seconds = epochs, time.perf_counter(), []

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(round(time.perf_counter() - self.t, 3))
            shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items())
            logger.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, shown, self.seconds[-1])

    return EpochLog
