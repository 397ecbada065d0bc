"""A saved Keras model as a backbone: your own trained network, loaded safely, cut at any layer.

A ``.keras`` file (Keras 3 format) is loaded with ``safe_mode=True``, so a file with a ``Lambda`` layer (which
holds Python code) is refused. A legacy ``.h5`` full model has no such protection and is loaded only with
``trust_model=True`` (``--trust-model``). Input size and channels come from the model; preprocessing is
chosen with ``--preprocess`` (default ``none``: the model includes its own).

>>> spec = SavedModelSpec.from_path("my_cnn.keras")          # doctest: +SKIP
>>> spec.default_size, spec.channels_in, spec.default_layer  # doctest: +SKIP
(28, 1, 'dense')
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from featstore.errors import ConfigError, WeightsError
from featstore.linkrule import refuse_foreign
from featstore.models.backbones import PREPROCESS_MODES, PREPROCESS_RANGES, preprocess, validate_preprocess
from featstore.models.build_guard import TooLarge, bounded_build
from featstore.models.file_format import is_legacy
from featstore.models.heads import classifier_heads, dense_layers, ends_in_dense
from featstore.models.held_input import held_input
from featstore.models.keras_sizes import STATES, UNBOUNDED, held_parameters, keras_zip_problem
from featstore.models.weights import LoadedWeights, sha256_file
from featstore.outputs import resolved, what_is_at
from featstore.provenance import MAX_IMAGE_SIZE

logger = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_model_path(model: str) -> bool:
    """True when ``--model`` names a saved model file rather than a registered backbone."""
    return str(model).lower().endswith(MODEL_SUFFIXES) or "/" in str(model) or "\\" in str(model)


def load_model_file(path: Path, trust_model: bool = False):
    """Load a saved Keras model for inference, refusing unsafe files with the reason and the way out."""
    return load_held_model(path, trust_model)[0]


def load_held_model(path: Path, trust_model: bool = False, named: Path | None = None):
    """``(model, sha256 of the file)``: the file at ``path`` (its real path) held from the first check to the hash
    (:func:`~featstore.models.held_input.held_input`), so that the bounds checked, the model loaded and the digest
    recorded are all of one file, and a FIFO renamed onto the name never blocks. ``named``: the path as the user gave
    it (their link), named in messages, and whose name decides the format where the real one has no suffix (a blob
    of the Hugging Face hub cache: :mod:`featstore.models.file_format`)."""
    shown = named or path
    found = what_is_at(path)  # a folder is a KerasHub preset (is_hub_model): never here
    if found is not None:
        there = "does not exist" if found == "nothing" else f"is {found}, not a regular file"
        raise ConfigError(
            f"model file {shown} {there}; pass a model saved with model.save('my_cnn.keras') "
            f"or a registered backbone name (`featstore models`), hub:<preset> or a KerasHub preset folder"
        )
    with held_input(path, "model file", ConfigError, "--model", named) as name:
        model = _load(shown, name, trust_model)
        return model, sha256_file(name)


class UntrustedModel(ConfigError):
    """A legacy ``.h5`` model file loaded without ``trust_model``: the line names ``--trust-model`` and re-saving it as
    ``.keras``, and is passed on whole (a "--weights PATH" added to it was no fix: the file was where it was)."""


def _load(path: Path, name: Path, trust_model: bool):
    """The model in the file at ``path`` (as the user named it), read through ``name`` (the same file, held:
    :func:`load_held_model`), whose name is the one Keras picks the format by: so does the ``--trust-model`` gate."""
    legacy = is_legacy(name)
    if not legacy:
        _check_keras_zip(name)  # before Keras (or its import) takes any memory
    import keras

    if legacy and not trust_model:
        raise UntrustedModel(
            f"{path} is a legacy .h5 model: loading it can run code stored in the file (Keras's safe_mode does "
            f"not cover .h5). Re-save it as .keras (model.save('model.keras')), or pass --trust-model if you "
            f"made the file yourself (a Lambda layer in it is refused even then: featstore loads none from any file; "
            f"replace it with a built-in layer)."
        )
    try:
        with contextlib.nullcontext() if legacy else bounded_build(held_parameters(name), str(path)):
            model = keras.saving.load_model(name, compile=False, **({} if legacy else {"safe_mode": True}))
    except TooLarge:
        raise
    except Exception as exc:  # zip/HDF5 errors differ by format; all but these mean "not a model"
        raise _load_error(path, exc) from exc
    if not isinstance(model, keras.Model):
        raise ConfigError(f"{path} holds a {type(model).__name__}, not a Keras model")
    _refuse_scope_names(model, path)
    return model


# TensorFlow's rule for an inner name scope (a layer runs inside its model's: `_c1` runs, attack 74 #8; a root scope
# may not start with _ / > or -, which no layer's name is)
_SCOPE = re.compile(r"[A-Za-z0-9_.\\/>-]*")


def _refuse_scope_names(model, path: Path) -> None:
    """ConfigError naming the first layer (nested ones too) whose name TensorFlow refuses as a scope: Keras saves
    ``conv 1``, and the extraction's first batch ended in a 40-line ValueError traceback ("'conv 1' is not a valid
    root scope name", attack 73 #6), its --layer and --name advice unable to help."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if not _SCOPE.fullmatch(str(layer.name)):
            raise ConfigError(
                f"{path}: layer {str(layer.name)!r} has a name TensorFlow cannot run (a layer's name is a TensorFlow "
                f"name scope: letters, digits and _ . - / > only); name it so where the model is built (e.g. "
                f"{_SCOPE_FIX.sub('_', str(layer.name)) or 'layer'!r}) and save it again"
            )
        stack += list(getattr(layer, "layers", None) or [])


_SCOPE_FIX = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def _load_error(path: Path, exc: Exception) -> ConfigError:
    """The one-line error of a model file Keras could not load: out of memory, a Lambda layer, or not a model."""
    text = str(exc)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError" or "OOM when allocating" in text:
        first = (text.strip().splitlines() or [""])[0][:200]
        return ConfigError(
            f"{path} asks for more memory than this process can have while Keras builds it ({type(exc).__name__}: "
            f"{first}); load it where there is more memory, or if you made it, save it again with a smaller "
            f"batch_shape (a stateful layer's states grow with its batch)"
        )
    if isinstance(exc, ValueError) and ("lambda" in text.lower() or "safe_mode" in text):
        return ConfigError(
            f"{path} holds a Lambda layer (Python code), and featstore loads no Lambda layer from any model file, "
            f".keras or .h5, with or without --trust-model (Keras runs its code only where unsafe loading is "
            f"enabled, which featstore never does). Replace it with a built-in layer and save the model again"
        )
    if isinstance(exc, ValueError):
        return ConfigError(f"{path} is not a Keras model this Keras can load: {exc}")
    return ConfigError(
        f"{path} is not a Keras model ({type(exc).__name__}: {exc}); pass a file saved with model.save()"
    )


def _check_keras_zip(path: Path) -> None:
    """Refuse a ``.keras`` file (a zip) whose members could unpack to far more than it holds, before Keras opens it
    (Keras reads ``config.json`` whole: a zip bomb would take gigabytes); :func:`featstore.safezip.check_zip`'s rules.
    Then the parameters ``config.json`` builds, bounded by what ``model.weights.h5`` holds (``keras_sizes``)."""
    import zipfile

    from featstore.safezip import check_zip

    try:
        check_zip(path, max_member=None)  # a large model is fine; a member unpacking to 100x its size is not
    except zipfile.BadZipFile:
        raise ConfigError(
            f"{path} is not a Keras model (a .keras file is a zip, and this is not one); pass a file saved with "
            f"model.save('my_cnn.keras')"
        ) from None
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"{path} is refused before loading: {exc}. A model saved by Keras is never like this; save it again "
            f"with model.save('my_cnn.keras')"
        ) from None
    problem = keras_zip_problem(path)  # Keras builds every layer from config.json before it reads a weight
    if problem and (problem.startswith(UNBOUNDED) or STATES in problem):  # can be genuine: the fix is its own
        raise ConfigError(f"{path} is refused before loading: {problem}")
    if problem:
        raise ConfigError(
            f"{path} is refused before loading: {problem}. A model saved by Keras is never like this; save it again "
            f"with model.save('my_cnn.keras')"
        )


@dataclass(frozen=True)
class SavedModelSpec:
    """A saved model file seen as a backbone: what the extractor needs to build, cut and preprocess it."""

    path: Path  # absolute path of the model file
    sha256: str  # of the file: the model's identity in the fingerprint
    default_size: int  # the model's input side
    channels_in: int  # 1 (grayscale) or 3 (RGB)
    default_layer: str  # before the last Dense layer where it ends in one (penultimate features); else its last
    preprocess_mode: str = "none"  # id from PREPROCESS_MODES
    trust_model: bool = False  # legacy .h5 allowed
    given: Path | None = field(default=None, compare=False)  # the path as the user gave it (their link), or None
    input_dtype: str = "float32"  # of the model's input (Keras's name): an integer one holds --preprocess none only

    @property
    def shown(self) -> Path:
        """The model file as messages name it: the path the user gave (a link to a blob: not the blob's name)."""
        return self.given or self.path

    @property
    def name(self) -> str:
        """The model id recorded in stores (and fingerprinted): the file's content, not its name."""
        return f"keras-file:{self.sha256}"

    @property
    def min_size(self) -> int:
        return self.default_size

    @property
    def preprocess_name(self) -> str:
        return f"{self.preprocess_mode}: {PREPROCESS_MODES[self.preprocess_mode]}"

    @classmethod
    def from_path(
        cls, path: str | Path, preprocess_mode: str | None = None, trust_model: bool = False, check_dtype: bool = True
    ) -> SavedModelSpec:
        """Inspect a model file: input size and channels, default cut layer; refuses unusable models, and
        (``check_dtype``) a ``preprocess_mode`` whose values the model's input dtype cannot hold."""
        refuse_foreign(os.path.expanduser(path), "model file", ConfigError, "--model")  # as given, links unresolved
        given = Path(os.path.expanduser(path)).absolute()
        path = resolved(path, "model file")
        model, digest = load_held_model(path, trust_model, given)
        shown = given
        shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
        if shape is None or len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
            raise ConfigError(
                f"{shown} takes input {model.input_shape}; featstore feeds one square image batch (None, H, H, C) "
                f"with a fixed H. Build the model with a fixed square input_shape."
            )
        if not 1 <= shape[1] <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"{shown} takes {shape[1]}x{shape[1]} images, above featstore's largest input side, {MAX_IMAGE_SIZE} pixels"
            )
        if shape[3] not in (1, 3):
            raise ConfigError(
                f"{shown} takes {shape[3]}-channel images; featstore converts images to grayscale (1) or RGB (3) only"
            )
        mode = validate_preprocess(preprocess_mode or "none")
        dtype = input_dtype(model)
        if check_dtype:
            check_input_dtype(shown, dtype, mode)
        return cls(path, digest, int(shape[1]), int(shape[3]), default_cut(model), mode, trust_model, given, dtype)

    def preprocess(self, batch):
        """The chosen preprocessing of a 0..255 batch."""
        return preprocess(batch, self.preprocess_mode)

    def build(self, size: int, weights: str | None = None, seed: int = 0):
        """The loaded model and where its weights came from (the file itself)."""
        if size != self.default_size:
            raise ConfigError(
                f"{self.shown} takes {self.default_size}x{self.default_size} images; --image-size {size} does not fit it"
            )
        model, digest = load_held_model(self.path, self.trust_model, self.given)
        if digest != self.sha256:
            raise WeightsError(f"{self.shown} changed while it was being loaded; run again")
        return model, LoadedWeights(
            "model", "model-file", f"weights inside {self.path.name}", str(self.path), self.sha256
        )


def input_dtype(model) -> str:
    """The dtype of ``model``'s (first) input, as Keras names it (``"float32"``, ``"uint8"``, ...)."""
    import keras

    return keras.backend.standardize_dtype(model.inputs[0].dtype)


def _holds(dtype: str, low: float, high: float, whole: bool) -> bool:
    """Whether an input of ``dtype`` holds every value from ``low`` to ``high`` (``whole``: whole numbers only)."""
    import numpy as np

    if "float" in dtype:
        return True
    try:
        info = np.iinfo(dtype)
    except (TypeError, ValueError):  # bool, complex, string: no preprocessing's values
        return False
    return whole and info.min <= low and high <= info.max


def input_dtype_note(dtype: str) -> str | None:
    """What a saved model's input ``dtype`` allows of ``--preprocess`` (None for a float input: every one)."""
    if "float" in dtype:
        return None
    fits = [m for m, r in PREPROCESS_RANGES.items() if _holds(dtype, *r)]
    said = " or ".join(f"--preprocess {m}" for m in fits) if fits else "no --preprocess"
    return f"input {dtype}: {said} (featstore refuses the others: {dtype} cannot hold their values)"


def check_input_dtype(shown: Path, dtype: str, mode: str) -> None:
    """Refuse ``--preprocess mode`` for a model whose input ``dtype`` cannot hold its values (an integer input, uint8:
    a serving model): Keras casts the floats fed to it silently, and ``--preprocess tf``'s [-1, 1] became 0 or 1, the
    features of a nearly blank image, exit 0 (attack 58 #1). ``none`` gives whole pixels 0..255, which uint8 holds:
    the model computes on the image's own pixels. Decided by :data:`PREPROCESS_RANGES`."""
    low, high, whole = PREPROCESS_RANGES[mode]
    if _holds(dtype, low, high, whole):
        return
    fits = [m for m, r in PREPROCESS_RANGES.items() if _holds(dtype, *r)]
    instead = f"pass --preprocess {' or '.join(fits)} (whose values {dtype} holds), or " if fits else ""
    raise ConfigError(
        f"{shown} takes {dtype} input, and --preprocess {mode} gives {'whole numbers' if whole else 'fractions'} from "
        f"{low:.4g} to {high:.4g}, which {dtype} cannot hold (Keras would cast them silently: the features of a "
        f"nearly blank image); {instead}save the model with a float input (keras.Input(shape, dtype='float32')) and "
        f"its scaling inside"
    )


def default_cut(model) -> str:
    """The layer feeding the model's classifier (:func:`~featstore.models.heads.classifier_head`: its last Dense,
    or past a softmax the layer with weights that makes the classes, a 1x1 convolution's) where it ends in one, its
    penultimate features; else its last layer, the model's own output. A model with Dense layers in its blocks and no
    classifier (a no-top ConvNeXt, pooled) was cut inside its last block's MLP (attack 48 #2); a convolutional head
    behind a softmax, with a Dense-built squeeze-excitation, was cut inside that (50 #1). The last layer is also what
    a model with no default cut gives here (:func:`refuse_no_default_cut` refuses it where it is used)."""
    import keras

    layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
    return _cut_before(model) or layers[-1].name


def _cut_before(model) -> str | None:
    """The layer of ``model`` feeding its one classifier head, where that head is a layer of its own with weights and
    is fed by another of its layers; None otherwise (no classifier, several, a nested one, class scores with no head
    behind them, a head on the input)."""
    import keras

    heads = classifier_heads(model)  # several: refused where the default is used (refuse_no_default_cut)
    own = {x.name for x in model.layers if not isinstance(x, keras.layers.InputLayer)}
    if len(heads) != 1 or heads[0][1] is None or hasattr(heads[0][0], "layers") or heads[0][1] not in own:
        return None
    return heads[0][1]


def nested_head(model) -> tuple[str, str | None] | None:
    """``(nested model, its default cut)`` where ``model`` has no Dense layer of its own but a model nested in it gives a
    classifier's output (:func:`~featstore.models.heads.ends_in_dense`: a nested ConvNeXt's pooled features, with
    Dense layers in its blocks, are none), at any depth (Keras's "preprocessing outside, classifier inside",
    TensorFlow's ``Sequential([model, Softmax()])``): its default cut, the last layer, would store that classifier's output, its class probabilities or
    logits, said as "there is no Dense layer" (attack 43 #11, 44 #5). The cut is None where the nested model has none
    of its own (its classifier nested deeper still). None otherwise."""
    import keras

    layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
    if any(isinstance(lyr, dense_layers()) for lyr in layers):
        return None
    for lyr in reversed(layers):
        if hasattr(lyr, "layers") and ends_in_dense(lyr):
            return lyr.name, _cut_before(lyr)
    return None


def _holds_dense(model, depth: int = 0) -> bool:
    """Whether ``model`` or a model nested in it (at most 64 deep) has a Dense layer."""
    return depth < 64 and any(
        isinstance(x, dense_layers()) or hasattr(x, "layers") and _holds_dense(x, depth + 1) for x in model.layers
    )


def refuse_no_default_cut(model, shown: Path) -> tuple[object, str | None] | None:
    """Refuse the default cut of a saved model that has none, in one line with the ``--layer`` that works: its
    classifier is inside a model nested in it (:func:`nested_head`; its last layer would give that classifier's
    output), or its outputs end in several classifiers (an auxiliary classifier, Inception's: the first output's head
    was cut silently, attack 51 #3). Else its one classifier head (:func:`~featstore.models.heads.classifier_heads`),
    or None: the log line names it."""
    import keras

    heads = classifier_heads(model)
    if len(heads) > 1:
        said = ", ".join(f"{h.name!r} fed by {f!r}" if f else repr(h.name) for h, f in heads)
        raise ConfigError(
            f"{shown.name} has no default cut: its outputs end in {len(heads)} classifiers ({said}). Pass --layer NAME, "
            f"the layer whose features you want (`featstore models {shown} --layers` lists them)"
        )
    head = nested_head(model)
    if head is not None:
        what = "last Dense layer" if _holds_dense(model.get_layer(head[0])) else "classifier"
        raise ConfigError(
            f"{shown.name} has no default cut: its {what} is inside {head[0]!r}, a model nested in "
            f"it, so its last layer, the default, gives that classifier's output (class probabilities or logits), "
            f"not features. Pass --layer NAME (`featstore models {shown} --layers` lists them), or save {head[0]!r} "
            f"on its own (model.get_layer({head[0]!r}).save('base.keras')) and pass it as --model"
            + (f": its default cut is {head[1]!r}" if head[1] else "")
        )
    own = {x.name for x in model.layers if not isinstance(x, keras.layers.InputLayer)}
    if heads and hasattr(heads[0][0], "layers"):  # nested, the outer model has Dense layers of its own (review #1)
        raise ConfigError(
            f"{shown.name} has no default cut: its classifier is {heads[0][0].name!r}, a model nested in it, so its last "
            f"layer, the default, gives that classifier's output (class probabilities or logits), not features. Pass "
            f"--layer NAME (`featstore models {shown} --layers` lists them)"
            + (
                f", e.g. --layer {heads[0][1]}, the layer feeding it"
                if heads[0][1] in own
                else f", or save {heads[0][0].name!r} on its own (model.get_layer({heads[0][0].name!r}).save("
                f"'base.keras')) and pass it as --model with --layer NAME, one of its layers"
            )
        )
    if heads and heads[0][1] not in own:  # scores with no head behind them, or a head on the input (attack 52 #1)
        said = (
            f"its classifier {heads[0][0].name!r} takes the model's input: there are no features before it"
            if heads[0][0].weights
            else f"its output is class scores ({heads[0][0].name!r}) with no layer of weights behind them that "
            f"featstore can cut before, so its last layer, the default, would store class scores, not features"
        )
        raise ConfigError(
            f"{shown.name} has no default cut: {said}. Pass --layer NAME, the layer whose features you want "
            f"(`featstore models {shown} --layers` lists them)"
        )
    return heads[0] if heads else None


def no_default_cut(model) -> bool:
    """Whether :func:`refuse_no_default_cut` refuses ``model``'s default cut (``featstore models --layers`` then marks
    none: it marked the first head's while extract refused)."""
    try:
        refuse_no_default_cut(model, Path("model"))
    except ConfigError:
        return True
    return False


def refuse_other_policy(model, mixed: bool, shown) -> None:
    """ConfigError unless the layers of ``model`` (a saved model cut: its own layers keep the dtype policy they were
    saved with, whatever policy is set when it is loaded) compute as the store will record: all in float32, or, with
    ``mixed`` (--mixed-precision), in mixed_float16 with float32 islands (a float32 softmax or normalisation). A model
    saved under mixed_float16 computed in float16 while the store said float32, and --mixed-precision on one saved in
    float32 changed nothing while the store said mixed_float16 and took another fingerprint."""
    allowed = {"mixed_float16", "float32"} if mixed else {"float32"}
    seen = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer).__name__ in ("InputLayer", "Functional", "Sequential"):  # follow the policy set at load
            continue
        name = getattr(getattr(layer, "dtype_policy", None), "name", None)
        # a quantized layer (model.quantize: "int8_from_float32", "int4/128_from_mixed_float16") computes in the policy
        # it was quantized from (attack 60 #9: int8/int4 models, accepted since attack 21, were refused)
        seen.setdefault(name.rsplit("_from_", 1)[-1] if isinstance(name, str) else name, layer.name)
    other = next((p for p in seen if p not in allowed), None)
    if other is not None:
        fix = "pass --mixed-precision" if other == "mixed_float16" else "save it again in float32 (or mixed_float16)"
        raise ConfigError(
            f"{shown}: layer {seen[other]!r} computes in {other} (saved so; a saved model's layers keep their dtype), "
            f"and this extraction would record {'mixed_float16' if mixed else 'float32'}; {fix}"
        )
    if mixed and "mixed_float16" not in seen:
        raise ConfigError(
            f"{shown}: --mixed-precision changes nothing here: its layers were saved in float32 and keep that dtype "
            f"when loaded. Leave out --mixed-precision, or build and save the model under "
            f"keras.mixed_precision.set_global_policy('mixed_float16')"
        )
