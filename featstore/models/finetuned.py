"""The fine-tuned model: backbone cut + phase-A head as one Keras model, built, frozen, saved and applied.

``build_model`` puts the phase-A head (the ``dense`` run's Keras layers, with their trained weights) on
the extractor's cut, so the model starts exactly where phase A ended: on the same images its first
predictions equal the head's on the cached features. Every layer before ``unfreeze_from`` is frozen, and
BatchNormalization layers stay in inference mode (frozen: their statistics never move), as the Keras
fine-tuning guide advises. The input is the preprocessed image (the extractor's own decode, resize and
preprocessing run outside the model, exactly as for extraction). ``FinetunedModel`` applies a saved model
to uint8 images for ``predict``, ``runs evaluate`` and ensembles.

>>> fm = FinetunedModel.load(folder / "model.keras", rec["extractor_attrs"])   # doctest: +SKIP
>>> fm.proba(images).shape                                                    # doctest: +SKIP
(8, 2)
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError
from featstore.kerasconfig import check_loaded
from featstore.models import activations
from featstore.models.build_guard import bounded_build
from featstore.models.head import HEAD_LAYERS, head_layers
from featstore.models.keras_sizes import held_parameters

logger = logging.getLogger(__name__)


@dataclass
class Built:
    """A model ready to fine-tune and what was decided while building it."""

    model: object  # keras.Model: preprocessed image -> class probabilities
    trainable: list[str]  # layers whose weights train (head included)
    frozen: list[str]  # layers with weights that stay fixed
    cut_input: (
        str | None
    )  # the layer whose output feeds ``unfreeze_from`` (what the cached cut stores), None if not a single tensor
    top: (
        object | None
    )  # keras.Model from that tensor to the probabilities (the layers phase B trains), None when it cannot be cut
    rows_per_call: object = None  # the extractor's: how many images of a batch its activation bound lets run at once


def trunk_layers(extractor) -> list:
    """The extractor model's layers with an input, in graph order (the InputLayer left out)."""
    import keras

    return [lyr for lyr in extractor.model.layers if not isinstance(lyr, keras.layers.InputLayer)]


def check_unfreeze_from(extractor, name: str, all_layers: list[str]) -> int:
    """Index in ``trunk_layers`` of ``name``; a ConfigError that says which layers can be unfrozen otherwise."""
    layers = trunk_layers(extractor)
    names = [lyr.name for lyr in layers]
    weighted = [lyr.name for lyr in layers if lyr.weights]
    cut = extractor.attrs["layer"]
    span = f"{weighted[0]} ... {weighted[-1]}" if len(weighted) > 2 else ", ".join(weighted)
    valid = f"layers that can be unfrozen (they have weights, at or before the store's cut {cut!r}): {span}"
    if name not in names:
        import keras

        inputs = [lyr.name for lyr in extractor.model.layers if isinstance(lyr, keras.layers.InputLayer)]
        below = name in all_layers and cut in all_layers and all_layers.index(name) < all_layers.index(cut)
        numbered = re.sub(r"_\d+$", "", name) in {re.sub(r"_\d+$", "", n) for n in inputs}  # Keras numbers inputs
        if name in inputs or numbered or below:
            raise ConfigError(
                f"--unfreeze-from {name} is below the store's cut {cut!r}, but it "
                + (
                    "is the model's input layer, which has no weights"
                    if not below or name in inputs
                    else "cannot train"
                )
                + f"; choose one of the {valid}"
            )
        if name in all_layers:
            raise ConfigError(
                f"--unfreeze-from {name} is above the store's cut layer {cut!r}: the head sits on {cut}'s output, so "
                f"only layers up to {cut} are in the model. Choose one of the {valid}; or extract features cut "
                f"higher (featstore extract --layer) and fit a dense head on them first"
            )
        near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        raise ConfigError(
            f"--unfreeze-from {name!r} is not a layer of {extractor.attrs['model']}"
            + (f" (did you mean {', '.join(near)}?)" if near else "")
            + f"; {valid}. `featstore models "
            f"{extractor.attrs.get('model_file') or extractor.attrs.get('hub_preset') or extractor.attrs['model']} --layers` "
            f"lists every layer"
        )
    i = names.index(name)
    if not any(lyr.weights for lyr in layers[i:]):
        raise ConfigError(
            f"--unfreeze-from {name}: no layer from {name} to the cut {cut!r} has weights, so nothing of the "
            f"backbone would train; choose one of the {valid}"
        )
    return i


def _reduce_layer(reduce: str, ndim: int):
    """The Keras layer equal to ``FeatureReshape(reduce)`` on features of ``ndim`` axes (None for vectors): avg/max
    over every axis but the last, the tokens of ``(tokens, dims)`` as the h and w of ``(h, w, c)`` (attack 58 #3:
    a 2-D pooling of tokens was a Keras traceback, while the dense run had flattened them)."""
    import keras

    if ndim == 1:
        return None
    if reduce == "flatten":
        return keras.layers.Flatten(name="head_reduce")
    pools = {
        "avg": (
            keras.layers.GlobalAveragePooling1D,
            keras.layers.GlobalAveragePooling2D,
            keras.layers.GlobalAveragePooling3D,
        ),
        "max": (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D),
    }[reduce]
    if ndim > len(pools) + 1:
        raise ConfigError(
            f"reduce={reduce} on features of {ndim} axes: fine-tuning pools at most 3; use reduce=flatten"
        )
    return pools[ndim - 2](name="head_reduce")


def build_model(
    extractor, head: dict, n_classes: int, unfreeze_from: str, all_layers: list[str], seed: int = 0
) -> Built:
    """Backbone cut + head as one model, layers before ``unfreeze_from`` and BatchNormalization frozen.

    ``head`` holds ``reduce``, ``units``, ``dropout`` and, for a warm start, ``weights``: the phase-A head's kernels
    and biases by layer name (``DenseHead.layer_weights()``); without them the head starts from a seeded
    initialisation (``--from-scratch-head``). The head's layers are ``featstore.models.head.head_layers``, the ones
    the dense run trained.
    """
    import keras

    start = check_unfreeze_from(extractor, unfreeze_from, all_layers)
    keras.utils.set_random_seed(seed)  # a fresh head's initial weights; the dropout layer has its own seed
    n_out = 1 if n_classes == 2 else n_classes
    x = extractor.model.output
    reduce = _reduce_layer(head["reduce"], len(extractor.feature_shape))
    if reduce is not None:
        x = reduce(x)
    layers = head_layers(head["units"], head["dropout"], n_out, dropout_seed=seed)
    for lyr in layers:
        x = lyr(x)
    model = keras.Model(extractor.model.input, x, name=f"{extractor.model.name}_finetuned")
    if head.get("weights") is not None:
        dense, _, out = HEAD_LAYERS
        have = {name: tuple(np.shape(ws[0])) for name, ws in head["weights"].items()}
        want = {lyr.name: tuple(lyr.kernel.shape) for lyr in (layers[0], layers[2])}
        if have != want:
            raise ConfigError(
                f"the phase-A head has weights of shape {have.get(dense)}, {have.get(out)}, but the cut gives "
                f"{want[dense]}, {want[out]}; it was fitted on other features"
            )
        for lyr in (layers[0], layers[2]):
            lyr.set_weights(head["weights"][lyr.name])
    trunk = trunk_layers(extractor)
    for i, lyr in enumerate(trunk):
        lyr.trainable = i >= start and not isinstance(lyr, keras.layers.BatchNormalization)
    trainable = [lyr.name for lyr in model.layers if lyr.trainable and lyr.weights]
    frozen = [lyr.name for lyr in model.layers if not lyr.trainable and lyr.weights]
    # a KerasHub token model's cuts are pooled tokens, not what its blocks take: nothing below the cut is cached
    cut_input, top = (None, None) if extractor.attrs.get("hub_preset") else _top_model(model, trunk[start])
    return Built(model, trainable, frozen, cut_input, top, extractor.rows_per_call)


def _top_model(model, first) -> tuple[str | None, object | None]:
    """(the layer feeding ``first``, the sub-model from its output to the probabilities), or (None, None) if it cannot be cut there.

    The tensors are those of ``model``'s own graph (the node of each layer that ``model`` calls), not ``layer.input`` /
    ``layer.output``, which are a layer's first call's: a backbone saved as a keras.Sequential has called each layer
    several times (its own build, its inner graph, loading), so those never matched and its fine-tuning trained from the
    images every epoch (attack 47 #5). The top shares the layers (and weights) of ``model``."""
    import keras

    from featstore.models.backbones import outer_calls

    def one(layer, end: str):  # the one tensor ``layer`` takes (``end="input_tensors"``) or gives in ``model``, or None
        calls = outer_calls(model, layer)
        tensors = getattr(calls[0], end) if len(calls) == 1 else ()
        return tensors[0] if len(tensors) == 1 else None

    cut = one(first, "input_tensors")
    feeders = [
        lyr for lyr in model.layers if lyr is not first and cut is not None and one(lyr, "output_tensors") is cut
    ]
    if len(feeders) != 1 or isinstance(feeders[0], keras.layers.InputLayer):
        return None, None
    try:
        top = keras.Model(cut, model.output, name="finetune_top")
    except ValueError as exc:  # a skip connection crosses the cut: the layers above need more than that one tensor
        logger.debug("cannot cut the model before %s: %s", first.name, exc)
        return None, None
    return feeders[0].name, _from_stored(top, cut, feeders[0].name)


TO_CHANNELS_FIRST = "featstore_channels_first_"  # the Permute that gives a top the channels_first map it was built for


def _from_stored(top, cut, name: str):
    """``top`` taking ``cut``'s map as the cached cut stores it: a channels_first map is stored channels last
    (:func:`~featstore.models.backbones.channels_last_axes`, as every map is), and the layers above take it (C, H, W),
    so a ``Permute`` back feeds them (attack 62 #1: trained on transposed maps where C = H = W, a TensorFlow traceback
    after the cache was written otherwise). The layers (and weights) are ``top``'s: the saved model, which predict
    applies to images, is the one trained."""
    import keras

    from featstore.models.backbones import channels_last_axes

    axes = channels_last_axes(top, cut)
    if axes is None:
        return top
    back = tuple(1 + axes.index(i) for i in range(1, len(axes) + 1))  # Permute(axes) then Permute(back): the same
    stored = keras.Input(tuple(cut.shape[1:][a - 1] for a in axes), name=f"cached_{name}")
    return keras.Model(
        stored, top(keras.layers.Permute(back, name=f"{TO_CHANNELS_FIRST}{name}")(stored)), name=top.name
    )


def cut_moved(top) -> bool:
    """Whether the fine-tuning ``top`` takes its cut's map channels last and permutes it back (the cache holds it so)."""
    return any(lyr.name.startswith(TO_CHANNELS_FIRST) for lyr in getattr(top, "layers", ()))


def preprocess_images(images: np.ndarray, attrs: dict) -> np.ndarray:
    """uint8 (or 0..255 float) RGB ``(B, s, s, 3)`` -> the model's input, as the extractor prepares it."""
    from featstore.models.backbones import preprocess
    from featstore.models.extractor import to_gray

    x = images.astype(np.float32) if int(attrs.get("input_channels", 3)) == 3 else to_gray(images)
    if attrs.get("hub_preset"):  # a KerasHub preset's converter: its recorded numbers
        scale, offset = (np.asarray(attrs[k], np.float32) for k in ("preprocess_scale", "preprocess_offset"))
        return np.asarray(x * scale + offset, dtype=np.float32)
    return np.asarray(preprocess(x, attrs["preprocess"]), dtype=np.float32)


def to_proba(out: np.ndarray) -> np.ndarray:
    """One column per class (a sigmoid's single column becomes two)."""
    out = np.asarray(out, dtype=np.float64)
    return np.hstack([1.0 - out, out]) if out.shape[1] == 1 else out


class FinetunedModel:
    """A saved fine-tuned model applied to images: ``proba(uint8 batch)`` -> ``(B, n_classes)``."""

    def __init__(self, model, attrs: dict, shown: str = "the fine-tuned model"):
        check_loaded(training=False)  # a float16 Keras predicts otherwise; and the API's temporary folder
        self.model = model
        self.attrs = attrs
        self.image_size = int(attrs["input_size"])
        self.largest = activations.check_activations(model, shown, resizable=False)  # as an extractor's; sizes calls

    @classmethod
    def load(cls, path: Path, attrs: dict) -> FinetunedModel:
        """Load with ``safe_mode=True`` (no Lambda layers, no code); a KerasHub backbone's layers are registered first."""
        import keras

        objects = {}
        if attrs.get("hub_preset"):
            from featstore.models.hub import _requires_keras_hub
            from featstore.models.tokens import custom_objects, register

            _requires_keras_hub()
            register()
            objects = custom_objects()

        with bounded_build(held_parameters(Path(path)), str(path)):  # Keras builds from config.json first
            model = keras.saving.load_model(path, safe_mode=True, compile=False, custom_objects=objects)
        return cls(model, attrs, str(path))

    def proba(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities of a uint8 batch at ``image_size`` (inference: augmentation and dropout off), as many
        images a call as keep one image's largest tensor times the images within the activation bound (as
        :meth:`featstore.models.extractor.Extractor.features` does)."""
        batch_size = activations.rows_at_once(batch_size, self.largest)[0]
        outs = [
            to_proba(self.model(preprocess_images(images[i : i + batch_size], self.attrs), training=False))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(outs) if outs else np.zeros((0, 0))
