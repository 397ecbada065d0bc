"""The classic transfer-learning head (Flatten, Dense, Dropout, softmax) as a scikit-learn classifier.

``Dense(units, relu) -> Dropout -> Dense(n_classes, softmax)`` (or ``Dense(1, sigmoid)`` for two
classes), RMSprop, early stopping on the validation split with the best weights restored. Saved as a
``.keras`` file and loaded with ``safe_mode=True``.

>>> head = DenseHead(epochs=2).fit(np.random.rand(20, 8), np.arange(20) % 2)   # doctest: +SKIP
>>> head.predict_proba(np.random.rand(3, 8)).shape                            # doctest: +SKIP
(3, 2)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

HEAD_LAYERS = ("head_dense", "head_dropout", "head_out")  # the head's layers, in order, by name


def head_layers(units: int, dropout: float, n_out: int, dropout_seed: int | None = None) -> list:
    """The Dense head's layers (named HEAD_LAYERS): ``Dense(units, relu) -> Dropout -> Dense(n_out, softmax)``, sigmoid
    when ``n_out`` is 1. :class:`DenseHead` stacks them on feature vectors; a fine-tuned model on the backbone's cut
    (``featstore.models.finetuned.build_model``), so the two are the same head and its weights move by layer name.

    >>> [lyr.name for lyr in head_layers(8, 0.5, 1)]   # doctest: +SKIP
    ['head_dense', 'head_dropout', 'head_out']
    """
    import keras

    from featstore.kerasconfig import check_loaded

    check_loaded()  # a float16 Keras (or another epsilon) trains another head, unrecorded
    dense, drop, out = HEAD_LAYERS
    return [
        keras.layers.Dense(units, activation="relu", name=dense),
        keras.layers.Dropout(dropout, seed=dropout_seed, name=drop),
        keras.layers.Dense(n_out, activation="sigmoid" if n_out == 1 else "softmax", name=out),
    ]


class DenseHead(ClassifierMixin, BaseEstimator):
    """Keras MLP head with the scikit-learn estimator contract (``fit`` returns self, fitted attributes end in ``_``)."""

    # How featstore's fit drives this head (read there instead of the classifier's name):
    fit_uses_validation = True  # fit(X, y, validation_data=...) stops early on the validation split
    parallel_fits = False  # Keras trains one model at a time: a search fits its settings one after the other

    def __init__(
        self,
        units: int = 256,
        dropout: float = 0.5,
        lr: float = 2e-5,
        epochs: int = 30,
        batch_size: int = 20,
        patience: int = 5,
        seed: int = 0,
    ):
        self.units = units
        self.dropout = dropout
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.seed = seed

    def _build(self, n_features: int, n_out: int):
        import keras

        keras.utils.set_random_seed(self.seed)
        model = keras.Sequential([keras.Input((n_features,)), *head_layers(self.units, self.dropout, n_out)])
        loss = "binary_crossentropy" if n_out == 1 else "sparse_categorical_crossentropy"
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=self.lr), loss=loss, metrics=["accuracy"])
        return model

    def fit(self, X, y, validation_data=None, verbose: int = 0):
        """Train on ``X, y``; ``validation_data=(Xv, yv)`` drives early stopping and the validation curves."""
        import keras

        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"DenseHead needs samples of at least 2 classes; the data contains only one class: {self.classes_[0]!r}"
            )
        n_out = 1 if len(self.classes_) == 2 else len(self.classes_)
        self.model_ = self._build(X.shape[1], n_out)
        fit_kw = {}
        monitor = "loss"
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = check_array(Xv, dtype=np.float32)
            known = np.isin(yv, self.classes_)
            fit_kw["validation_data"] = (Xv[known], np.searchsorted(self.classes_, np.asarray(yv)[known]))
            monitor = "val_loss"
        stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=self.patience, restore_best_weights=True)
        hist = self.model_.fit(
            X, y_enc, epochs=self.epochs, batch_size=self.batch_size, callbacks=[stop], verbose=verbose, **fit_kw
        )
        self.history_ = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        self.n_epochs_ = len(next(iter(self.history_.values()), []))
        return self

    def fit_stream(
        self,
        make_train,
        train_blocks: list[int],
        n_features: int,
        n_classes: int,
        make_val=None,
        val_blocks: list[int] | None = None,
        verbose: int = 0,
    ):
        """Train from blocks without holding the data: ``make_train(seed)`` and ``make_val()`` yield ``(X, y)`` blocks.

        ``*_blocks`` are the blocks' row counts (they give the steps per epoch). Labels are the store's
        0..n_classes-1; each epoch reads the blocks in a new shuffled order.
        """
        import keras
        import tensorflow as tf

        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = n_features
        self.model_ = self._build(n_features, 1 if n_classes == 2 else n_classes)
        epochs = iter(range(10**9))

        def minibatches(blocks):
            for X, y in blocks:
                for i in range(0, len(y), self.batch_size):
                    yield (
                        X[i : i + self.batch_size].astype(np.float32),
                        y[i : i + self.batch_size].astype(np.float32 if n_classes == 2 else np.int64),
                    )

        sig = (
            tf.TensorSpec((None, n_features), tf.float32),
            tf.TensorSpec((None,), tf.float32 if n_classes == 2 else tf.int64),
        )

        def steps(blocks):
            return sum(-(-b // self.batch_size) for b in blocks)

        train = tf.data.Dataset.from_generator(
            lambda: minibatches(make_train(self.seed + next(epochs))), output_signature=sig
        ).repeat()
        fit_kw, monitor = {"steps_per_epoch": steps(train_blocks)}, "loss"
        if make_val is not None:
            fit_kw["validation_data"] = tf.data.Dataset.from_generator(
                lambda: minibatches(make_val()), output_signature=sig
            ).repeat()
            fit_kw["validation_steps"] = steps(val_blocks)
            monitor = "val_loss"
        stop = keras.callbacks.EarlyStopping(monitor=monitor, patience=self.patience, restore_best_weights=True)
        hist = self.model_.fit(
            train.prefetch(2), epochs=self.epochs, callbacks=[stop], verbose=verbose, shuffle=False, **fit_kw
        )  # blocks are shuffled already
        self.history_ = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        self.n_epochs_ = len(next(iter(self.history_.values()), []))
        return self

    def predict_proba(self, X):
        """Class probabilities, columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = np.concatenate(
            # the model called eagerly: predict_on_batch traces a tf.function per new batch shape and model, and
            # TensorFlow then warns about "retracing" when a script fits and scores several heads
            [np.asarray(self.model_(X[i : i + 1024], training=False)) for i in range(0, len(X), 1024)]
            or [np.zeros((0, self.model_.output_shape[-1]), np.float32)]
        )
        if out.shape[1] == 1:
            out = np.hstack([1.0 - out, out])
        return out

    def predict(self, X):
        """Most probable class."""
        proba = self.predict_proba(X)  # checks fitted state first
        return self.classes_[np.argmax(proba, axis=1)]

    def layer_weights(self) -> dict[str, list[np.ndarray]]:
        """The trained kernels and biases of the head's two Dense layers, by their names in HEAD_LAYERS.

        Heads saved before the layers were named hold them as the first and the second Dense layer.
        """
        import keras

        check_is_fitted(self, "model_")
        dense = [lyr for lyr in self.model_.layers if isinstance(lyr, keras.layers.Dense)]
        named = {lyr.name: lyr for lyr in dense}
        first, _, last = HEAD_LAYERS
        if not {first, last} <= set(named):
            named = dict(zip((first, last), dense))
        return {name: [np.asarray(w) for w in named[name].get_weights()] for name in (first, last)}

    def save(self, path) -> None:
        """Write the Keras model to ``path`` (``.keras``)."""
        check_is_fitted(self, "model_")
        self.model_.save(path)

    def load_model(self, path, classes, history: dict | None = None) -> DenseHead:
        """Fill the fitted state from a ``.keras`` file written by :meth:`save` (``safe_mode=True``)."""
        import keras

        from featstore.models.build_guard import bounded_build
        from featstore.models.keras_sizes import held_parameters

        with bounded_build(held_parameters(Path(path)), str(path)):  # Keras builds from config.json first
            self.model_ = keras.saving.load_model(path, safe_mode=True, compile=False)
        self.classes_ = np.asarray(classes)
        self.n_features_in_ = int(self.model_.input_shape[-1])
        self.history_ = history or {}
        return self
