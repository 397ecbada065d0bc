"""Phase B's training loop: compile, measure phase A on validation, fit with early stopping, never end worse than phase A.

Before the first step, the model (phase A's head on the backbone, or on the cached cut) is evaluated on the validation
images exactly as each epoch will be: that loss is phase A's, the baseline. Early stopping watches validation loss
with that baseline (``keras.callbacks.EarlyStopping(baseline=...)``: epochs that do not beat phase A count towards
the patience) and restores the best epoch's weights; if no epoch's validation loss is below phase A's, phase A's
weights are put back and the run says so (``restored_epoch`` 0). Validation chose the epoch (and between phase A and
B), so its score is optimistic; the run's note says so, as a dense head's does.

>>> result = train(built, None, sets, attrs, FinetuneConfig("block5_conv1"), workers=2, verbose=0)   # doctest: +SKIP
>>> result.restored_epoch, result.baseline["val_loss"]                                           # doctest: +SKIP
(3, 0.41)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from featstore.errors import FeatstoreError
from featstore.images.augment import augment_batch, parse_augment
from featstore.models.finetuned import preprocess_images
from featstore.runs.apply import image_batches

logger = logging.getLogger(__name__)


@dataclass
class Trained:
    """What phase B's training did."""

    history: dict  # per-epoch loss, accuracy, val_loss, val_accuracy
    epoch_seconds: list  # seconds per epoch
    baseline: dict  # phase A's val_loss and val_accuracy, on the same validation images, before training
    restored_epoch: int  # the epoch (1-based) whose weights the model ends with; 0: phase A's (no epoch beat it)


def train(built, cached, sets: dict, attrs: dict, config, workers: int, verbose: int) -> Trained:
    """Compile, measure phase A on validation, fit (on the cached cut or from images); never ends worse than phase A."""
    import keras
    import tensorflow as tf

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
        epoch_no = next(epoch)
        order = np.random.default_rng(config.seed + epoch_no).permutation(
            n
        )  # a new seeded order each epoch, same for both paths
        if cached is not None:
            for X, y in cached.batches("train", config.batch_size, order, seed=config.seed + epoch_no):
                yield X, y.astype(ytype)
            return
        for x, y in image_batches(sets["train"], size, config.batch_size, order, workers):
            x = augment_batch(aug_model, x) if aug_model is not None else x  # augmented, then preprocessed
            yield preprocess_images(x, attrs), y.astype(ytype)

    def val_batches():
        if cached is not None:
            for X, y in cached.batches("validation", config.batch_size):
                yield X, y.astype(ytype)
            return
        for x, y in image_batches(sets["validation"], size, config.batch_size, None, workers):
            yield preprocess_images(x, attrs), y.astype(ytype)

    shape = tuple(model.input_shape[1:])
    sig = (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.float32 if binary else tf.int64))
    steps = -(-n // config.batch_size)
    val_steps = -(-len(sets["validation"].labels) // config.batch_size)
    train_set = tf.data.Dataset.from_generator(lambda: keep(train_batches()), output_signature=sig).repeat()
    val = tf.data.Dataset.from_generator(lambda: keep(val_batches()), output_signature=sig).repeat()
    log = _epoch_log()(config.epochs)
    try:
        phase_a = model.get_weights()
        loss, acc = model.evaluate(val, steps=val_steps, verbose=0)  # phase A, as every epoch will be measured
        baseline = {"val_loss": float(loss), "val_accuracy": float(acc)}
        logger.info("phase A on validation: loss %.4f, accuracy %.4f (the loss phase B must beat)", loss, acc)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True, baseline=baseline["val_loss"]
        )
        hist = model.fit(
            train_set,
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
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    val_loss = np.array(history.get("val_loss", []), dtype=np.float64)
    if not (np.isfinite(val_loss).all() and np.isfinite(history.get("loss", [])).all()):
        return Trained(history, log.seconds, baseline, stop.best_epoch + 1)  # diverged: finetune refuses to record it
    best = int(np.argmin(val_loss)) if len(val_loss) else -1
    if best < 0 or not val_loss[best] < baseline["val_loss"]:
        model.set_weights(phase_a)
        logger.warning(
            "no epoch of phase B beat phase A's validation loss %.4f (best %s): phase A's weights are kept, so the "
            "fine-tuned model predicts as the dense run does. Try another --lr, more --epochs or a higher "
            "--unfreeze-from",
            baseline["val_loss"],
            f"{val_loss[best]:.4f} in epoch {best + 1}" if best >= 0 else "none",
        )
        return Trained(history, log.seconds, baseline, 0)
    return Trained(history, log.seconds, baseline, best + 1)


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
