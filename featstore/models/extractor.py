"""Every model is a backbone: a registered Keras application or a saved ``.keras`` file reaches the features
through the same path (build -> cut at one or several layers -> preprocess -> fingerprint per output).

>>> ex = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))            # doctest: +SKIP
>>> ex(np.zeros((2, 32, 32, 3), np.uint8)).shape                                            # doctest: +SKIP
(2, 1, 1, 512)
>>> ex = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32,
...                                layers=("block3_pool", "block5_pool")))                  # doctest: +SKIP
>>> [f.shape for f in ex.features(np.zeros((2, 32, 32, 3), np.uint8))]                       # doctest: +SKIP
[(2, 4, 4, 256), (2, 1, 1, 512)]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from featstore import provenance
from featstore.apiargs import checked
from featstore.errors import ConfigError, check_names, check_paths, check_seed
from featstore.kerasconfig import check_loaded
from featstore.models import activations, forward, onnx_runtime, traced_bound
from featstore.models.backbones import (
    BackboneSpec,
    NoOneOutput,
    cut_outputs,
    get_backbone,
    layout_of,
    validate_pooling,
    validate_preprocess,
    validate_size,
)
from featstore.models.hub import HubSpec, is_hub_model, store_name
from featstore.models.saved import SavedModelSpec, is_model_path, refuse_no_default_cut, refuse_other_policy
from featstore.models.weights import describe_weights_argument, load_base, weights_digest
from featstore.provenance import validate_dtype

logger = logging.getLogger(__name__)


class _NotGiven:
    """The default of ``layer``/``layers``: tells "not given" from an explicit None (``dataclasses.replace`` passes the cut)."""

    def __repr__(self) -> str:
        return "<not given>"


_NOT_GIVEN: Any = _NotGiven()


@dataclass(frozen=True, init=False)
class ExtractorConfig:
    """Everything that decides the features; its hash (with the weights' digest) is the fingerprint.

    The cut is one field, ``cut_layers``: ``()`` is the backbone's default cut, one name a cut at that layer, several
    names one pass that fills one extractor group per layer. The constructor takes it as ``layer="block4_pool"`` or
    ``layers=("block3_pool", "block4_pool")`` (not both); ``config.layer`` is the one named layer (None for the default
    cut or several), ``config.layers`` the several (``()`` otherwise). Example::

        ExtractorConfig(layer="block4_pool") == ExtractorConfig(layers=("block4_pool",))   # True
    """

    model: str = "vgg16"  # backbone registry name (featstore models), a saved .keras model's path, hub:<preset> or a preset folder
    image_size: int | None = None  # input side in pixels; None = the backbone's default (a saved model's own)
    cut_layers: tuple[
        str, ...
    ] = ()  # named layers to cut at, in order; () = the conv base's last layer (saved: before a last Dense head)
    pooling: str = (
        "none"  # none | avg | max (global pooling after a CNN's cut); transformers: cls | mean | cls+mean | none
    )
    dtype: str = "float32"  # float32 | float16 stored features
    weights: str = (
        "imagenet"  # imagenet | none | hed-bsds500 | path to a Keras weights file (a saved model carries its own)
    )
    seed: int = 0  # initialisation seed, used only with weights="none"
    mixed_precision: bool = False  # compute in float16 (GPU tensor cores); changes features slightly, so fingerprinted
    preprocess: str | None = None  # saved models: none | scale01 | imagenet-caffe | imagenet-torch | tf (default none)
    trust_model: bool = False  # allow a legacy .h5 full model (no safe_mode protection)
    runtime: str = "keras"  # keras | onnx: what runs the forward pass; checked against Keras, so not fingerprinted
    # whether a named KerasHub preset (hub:<name>) may be downloaded: False when the configuration comes from a store's
    # or run's record (from_attrs), so that a record never makes featstore fetch what the command line did not name
    download: bool = field(default=True, compare=False)  # a permission, not a property of the features

    @functools.partial(
        checked, name="ExtractorConfig", types_only=True
    )  # layer=5, image_size=32.5: tracebacks from deep inside
    def __init__(  # (mixed_precision="no" was fingerprinted as True, layers="conv1" as five layers: one line each)
        self,
        model: str | os.PathLike = "vgg16",
        image_size: int | None = None,
        layer: str | None = _NOT_GIVEN,
        pooling: str = "none",
        dtype: str = "float32",
        weights: str | os.PathLike | None = "imagenet",
        seed: int = 0,
        mixed_precision: bool = False,
        layers: tuple[str, ...] | None = _NOT_GIVEN,
        preprocess: str | None = None,
        trust_model: bool = False,
        *,
        cut_layers: tuple[str, ...] = (),
        runtime: str = "keras",
        download: bool = True,
    ):
        given_layer = layer is not _NOT_GIVEN and layer is not None
        given_layers = layers is not _NOT_GIVEN and bool(layers)
        if given_layer and given_layers:
            raise ConfigError("give either layer or layers, not both")
        # named as the caller gave them: extract() said "cut_layers=('',)", and weights="" was the current folder
        check_names("layer", layer=layer if given_layer else None, layers=layers if given_layers else None)
        check_names("weights", give="imagenet, none, hed-bsds500 or a weights file's path", weights=weights)
        check_names("model", give="a backbone (`featstore models`), a saved model's path or hub:<preset>", model=model)
        if (
            layer is not _NOT_GIVEN or layers is not _NOT_GIVEN
        ):  # the caller names the cut (replace() passes only cut_layers)
            cut_layers = (layer,) if given_layer else tuple(layers) if given_layers else ()
        values = dict(
            model=model,
            image_size=image_size,
            cut_layers=tuple(cut_layers),
            pooling=pooling,
            dtype=dtype,
            weights=weights,
            seed=seed,
            mixed_precision=mixed_precision,
            preprocess=preprocess,
            trust_model=trust_model,
            runtime=runtime,
            download=download,
        )
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def layer(self) -> str | None:
        """The one layer cut at (None: the default cut, or several layers)."""
        return self.cut_layers[0] if len(self.cut_layers) == 1 else None

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers of a multi-layer pass (``()`` for one cut)."""
        return self.cut_layers if len(self.cut_layers) > 1 else ()

    def per_layer(self) -> list[ExtractorConfig]:
        """One configuration per cut layer (this one when it cuts once): each output's own."""
        return [replace(self, cut_layers=(lyr,)) for lyr in self.cut_layers] if self.layers else [self]

    def arguments(self) -> dict:
        """The constructor arguments of a one-cut configuration, as :func:`featstore.provenance.config_fields` gives them."""
        return {
            "model": self.model,
            "image_size": self.image_size,
            "layer": self.layer,
            "pooling": self.pooling,
            "dtype": self.dtype,
            "weights": self.weights,
            "seed": self.seed,
            "mixed_precision": self.mixed_precision,
            "preprocess": self.preprocess,
            "trust_model": self.trust_model,
        }

    def matches(self, attrs: dict) -> bool:
        """Whether a store's extractor attributes record this (validated, one-cut) configuration; no model is built."""
        return provenance.same_extractor(attrs, self.arguments())

    @classmethod
    def from_attrs(cls, attrs: dict, weights: str | None = None, model_file: str | None = None) -> ExtractorConfig:
        """The configuration a store's extractor attributes record (``weights``/``model_file`` override recorded files).

        A named KerasHub preset is then taken only from KerasHub's local caches (``download=False``): a record, which
        anyone can edit, never makes featstore download anything. ``model_file`` (the caller's ``--weights``, e.g.
        ``hub:dinov2_small``) may be downloaded."""
        fields = provenance.config_fields(attrs, weights, model_file)
        layer = fields.pop("layer")  # the record's cut, never named to the caller as their layer= argument
        return cls(**fields, cut_layers=() if layer is None else (layer,), download=model_file is not None)

    def backbone(self) -> BackboneSpec | SavedModelSpec | HubSpec:
        """The backbone this configuration names: a registry spec, a saved model file inspected, or a KerasHub preset."""
        if is_hub_model(self.model):
            return HubSpec.from_model(self.model, download=self.download)
        if is_model_path(self.model):
            return SavedModelSpec.from_path(self.model, self.preprocess, self.trust_model)
        return get_backbone(self.model)

    def validated(self, spec: BackboneSpec | SavedModelSpec | HubSpec | None = None) -> ExtractorConfig:
        """Check every field before any work; fill the default image size; normalise paths."""
        if len(set(self.cut_layers)) != len(self.cut_layers):
            raise ConfigError(f"--layer lists a layer twice: {', '.join(self.cut_layers)}")
        check_seed(self.seed)  # -1 reached numpy's seeding as a traceback
        spec = spec or self.backbone()
        size = spec.default_size if self.image_size is None else self.image_size  # 0 is refused, not the default
        validate_dtype(self.dtype)
        onnx_runtime.check_runtime(self.runtime, self.mixed_precision)
        if isinstance(spec, (SavedModelSpec, HubSpec)) and self.weights not in ("imagenet", "model"):
            raise ConfigError(
                f"--weights {self.weights} does not apply to a "
                f"{'KerasHub preset' if isinstance(spec, HubSpec) else 'saved model'}: {_shown(spec)} carries its own "
                f"weights. Leave --weights out."
            )
        if isinstance(spec, HubSpec):
            spec.validate(size, self.cut_layers, self.pooling, self.preprocess)
            return replace(self, model=spec.preset, image_size=size, weights="model", preprocess=None)
        validate_pooling(self.pooling)
        if isinstance(spec, SavedModelSpec):
            return replace(
                self, model=str(spec.path), image_size=size, weights="model", preprocess=spec.preprocess_mode
            )
        validate_size(spec, size)
        if self.preprocess not in (None, spec.preprocess_mode):
            validate_preprocess(self.preprocess)
            raise ConfigError(
                f"{spec.name} uses its own preprocessing ({spec.preprocess_mode}); --preprocess is for saved models"
            )
        return replace(self, image_size=size, weights=describe_weights_argument(self.weights), preprocess=None)


class Extractor:
    """A loaded backbone turned into a feature function with one or several outputs, each with its provenance.

    ``outputs`` holds one ``(layer, attrs)`` per cut layer; ``attrs`` is the first one's (the only one's).
    """

    def __init__(
        self,
        config: ExtractorConfig,
        spec: BackboneSpec | SavedModelSpec | HubSpec | None = None,
        *,
        jit: bool = False,
        jit_batch: int = forward.JIT_PROBE_ROWS,
        runtime_cache: Path | None = None,
    ):
        """``jit=True`` compiles the forward pass with XLA for batches of ``jit_batch`` rows and checks it (see :func:`featstore.models.forward.check_jit`).
        ``config.runtime="onnx"`` runs it with ONNX Runtime, exported once into the folder ``runtime_cache`` and checked
        (:mod:`featstore.models.onnx_runtime`)."""
        check_paths(runtime_cache=runtime_cache)  # '' would be the current folder
        if jit:
            forward.require_jit_backend()
        onnx_runtime.check_runtime(config.runtime, config.mixed_precision, jit)
        spec = spec or config.backbone()  # a caller that already resolved it passes it: a saved model is not read again
        self.config = config.validated(spec)
        self.spec = spec
        import keras

        check_loaded(training=False)  # a float16 or channels-first Keras (its policy: set below)
        c = self.config
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_float16" if c.mixed_precision else "float32")
        try:
            base, self.weights = (
                spec.build(c.image_size)
                if isinstance(spec, (SavedModelSpec, HubSpec))
                else load_base(spec, c.image_size, c.weights, c.seed)
            )
        finally:
            keras.mixed_precision.set_global_policy(previous)
        default = spec.default_layer if isinstance(spec, (SavedModelSpec, HubSpec)) else None
        requested = c.cut_layers or (None,)  # None: the default cut
        if isinstance(spec, SavedModelSpec) and not any(requested):
            found = refuse_no_default_cut(base, spec.shown)  # nested, several, scores with no head (51 #3, 52 #1)
            why = "its last layer (it does not end in a classifier)"  # no head, no class scores at its end
            if found:  # the one head default_cut cut before (any other: refused above)
                why = f"the layer feeding its classifier {found[0].name!r}"
            logger.info("%s: cutting at %r, %s (--layer to choose another)", spec.shown.name, default, why)
        self.base_layer_names = [lyr.name for lyr in base.layers]  # the whole backbone's, also those above the cut
        cut = spec.cut_outputs if isinstance(spec, HubSpec) else cut_outputs
        try:
            cuts = cut(base, [lyr or default for lyr in requested], c.pooling, self._shown_name())
        except NoOneOutput as exc:  # the default is no cut (several tensors, called twice): not the user's choice
            if any(requested) or default is None:
                raise
            raise ConfigError(
                f"{self._shown_name()} has no default cut: {exc}. Pass --layer NAME (`featstore models "
                f"{getattr(spec, 'shown', c.model)} --layers` lists them)"
            ) from None
        inp = base.inputs[0]  # one image input (a Sequential model has no `input` until called; `inputs` always exists)
        try:
            self.model = keras.Model(
                inp, [t for _, t in cuts] if len(cuts) > 1 else cuts[0][1], name=f"{base.name}_featstore"
            )
        except ValueError as exc:  # a model nested in the saved one (an application inside a classifier): its output
            if "not connected" not in str(exc):  # is its own graph's, not the outer call's: a Keras traceback (39 #8)
                raise
            nested = ", ".join(repr(n) for n, _ in cuts)  # (cut_outputs takes a nested model's outer call: 40 #7)
            raise ConfigError(
                f"{self._shown_name()}: the cut at {nested} is not connected to its input (a model nested inside it?); "
                f"save that model on its own (model.get_layer({cuts[0][0]!r}).save('base.keras')) and pass it as "
                f"--model, or cut at another --layer"
            ) from None
        # one image's largest activation up to the cut, from the shapes Keras inferred: refused before any image runs
        self._bound_shown = str(spec.shown) if isinstance(spec, SavedModelSpec) else self._shown_name()
        if isinstance(spec, SavedModelSpec):  # its layers keep their saved dtype: the record must be what computes
            refuse_other_policy(self.model, c.mixed_precision, spec.shown)
        self.largest_activation = activations.check_activations(
            self.model, self._bound_shown, activations.resizable(self)
        )
        self.outputs = [
            (name, self._attrs(name, asked, keras.Model(inp, t))) for (name, t), asked in zip(cuts, requested)
        ]
        self.attrs = self.outputs[0][1]
        self.feature_shape = tuple(self.attrs["feature_shape"])
        # traced on its first use or by warm_up(): an extractor built only for its fingerprint (a run's check) never
        # pays for the trace (extract's, a Ray driver's too, pays check_traced's trace before writing the store)
        self._forward = forward.Lazy(
            lambda: self.check_traced() or forward.trace(self.model, c.image_size, spec.channels_in)
        )
        self.jit, self.jit_max_abs_diff = jit, None  # the XLA check's result (None without --jit)
        if jit:
            compiled = self.check_traced() or forward.trace(self.model, c.image_size, spec.channels_in, jit=True)
            self.jit_max_abs_diff = forward.check_jit(  # compiled for the calls features() makes (attack 45 #7)
                self._prepare, self._forward, compiled, c, self.rows_per_call(jit_batch), self._shown_name()
            )
            self._forward = compiled
        self._keras_forward = self._forward
        self.runtime_max_abs_diff = None  # --runtime onnx: the start-up check's result
        if self.config.runtime == "onnx":
            self.use_runtime("onnx", runtime_cache)

    def check_traced(self) -> None:
        """Every tensor of one image's traced forward pass held to the activation bound, once, before the pass is traced
        for the images or exported (:func:`featstore.models.traced_bound.check_traced`)."""
        if not getattr(self, "_traced_checked", False):
            self._traced = traced_bound.check_traced(
                self.model,
                self.config.image_size,
                self.spec.channels_in,
                self._bound_shown,
                activations.resizable(self),
            )
            self._traced_checked = True

    @property
    def runtime_file(self) -> tuple[str, str] | None:
        """``(path, sha256)`` of the cached ONNX file the forward pass runs (None: Keras, or a temporary export)."""
        return getattr(self._forward, "file", None)

    def warm_up(self) -> None:
        """Trace the forward pass and run it once now (start-up), so the first batch of a loop is not the one that pays
        for TensorFlow's tracing and first-call graph optimisation."""
        if isinstance(self._forward, forward.Lazy):
            self._forward.build()

    def use_runtime(self, runtime: str, cache: Path | None = None, *, exported=None, threads=None) -> None:
        """Run the forward pass with ``runtime`` from now on: ``onnx`` exports the cut into the folder ``cache`` (or
        loads it from there) and checks it against this Keras pass, as ``config.runtime="onnx"`` does at build; a run's
        extractor is rebuilt with Keras first, so its weights and fingerprint are checked before anything is exported.
        ``exported=(path, sha256)``: another process's checked file (a Ray actor's driver's), verified, never exported."""
        onnx_runtime.check_runtime(runtime, self.config.mixed_precision, self.jit)
        if runtime == "onnx":
            self.check_traced()
        if runtime == "onnx" and exported is not None:
            self._forward, self.runtime_max_abs_diff = onnx_runtime.load_exported(self, *exported, threads)
        elif runtime == "onnx":
            self._forward, self.runtime_max_abs_diff = onnx_runtime.start(self, cache)
        else:
            self._forward, self.runtime_max_abs_diff = self._keras_forward, None
        self.config = dataclasses.replace(self.config, runtime=runtime)

    def _shown_name(self) -> str:
        """The model as messages name it."""
        return _shown(self.spec)

    def _attrs(self, layer: str, requested: str | None, cut) -> dict:
        """The provenance of one output (cut at ``layer``), with its fingerprint (:func:`featstore.provenance.extractor_attrs`)."""
        import keras
        import PIL
        import tensorflow as tf

        backbone = {
            "model": self.spec.name,  # registry name, or keras-file:<sha256> for a saved model
            "input_channels": self.spec.channels_in,
            "preprocess": self.spec.preprocess_mode,
            "preprocess_description": self.spec.preprocess_name,
        }
        if isinstance(self.spec, SavedModelSpec):
            backbone.update(
                model_file=str(self.spec.path), model_sha256=self.spec.sha256, trust_model=self.spec.trust_model
            )
        if isinstance(self.spec, HubSpec):
            backbone.update(self.spec.attrs())
        out = {"layer": layer, "feature_shape": cut.output_shape[1:], "weights_digest": weights_digest(cut)}
        return provenance.extractor_attrs(
            backbone,
            {**self.config.arguments(), "layer": requested},
            out | (layout_of(cut) if isinstance(self.spec, SavedModelSpec) else {}),  # registry, preset: channels last
            dataclasses.asdict(self.weights),
            {"keras": keras.__version__, "tensorflow": tf.__version__, "pillow": PIL.__version__},
        )

    def features(self, images: np.ndarray) -> list[np.ndarray]:
        """Features of a uint8 RGB batch ``(B, size, size, 3)`` for every output, in the configured dtype."""
        step = self.rows_per_call(len(images), say=True)  # each part prepared alone: its float32 is 4x the uint8
        out = forward.in_parts(lambda part: self._forward(self._prepare(part)), images, step)  # (attack 48 #4)
        return [np.asarray(o).astype(self.config.dtype, copy=False) for o in out]

    def rows_per_call(self, rows: int, say: bool = False) -> int:
        """How many of ``rows`` images one call of the model takes (:func:`activations.rows_at_once`), for the images'
        batches (``say``: once, where fewer) and the start-up checks' (--jit's compiled 17 GiB at once: attack 45 #7)."""
        self.check_traced()  # once: its largest tensor sizes the calls (an extractor used only for its fingerprint: never)
        largest = getattr(self, "largest_activation", None), getattr(self, "_traced", None)
        step, peak = activations.rows_at_once(rows, *largest)
        if say and step < rows and not getattr(self, "_said_at_once", False):
            self._said_at_once = True
            logger.info(
                "one image makes up to %.1f MiB inside %s, so batches go through it %d image(s) at a time (at most "
                "%d GiB at once)", peak / 2**20, self._bound_shown, step, activations.MAX_ACTIVATION_BYTES >> 30
            )  # fmt: skip
        return step

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB batch -> the model's float32 input (channels, preprocessing)."""
        x = images.astype(np.float32) if self.spec.channels_in == 3 else to_gray(images)
        return self.spec.preprocess(x)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of a uint8 RGB batch for the (first) output."""
        return self.features(images)[0]


def _shown(spec: BackboneSpec | SavedModelSpec | HubSpec) -> str:
    """A backbone as messages name it: the registry name, the saved model's file name, or the preset."""
    if isinstance(spec, SavedModelSpec):
        return spec.shown.name
    return spec.shown if isinstance(spec, HubSpec) else spec.name


def to_gray(images: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 (B, H, W, 1) with Pillow's integer luma formula (exact for images that were gray)."""
    rgb = images.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma[..., None].astype(np.float32)


def default_store_name(config: ExtractorConfig, spec: BackboneSpec | SavedModelSpec | HubSpec | None = None) -> str:
    """The extractor group name when --name is not given: the model's name, the saved model file's stem, the preset's.
    A saved model's ``spec`` (:class:`SavedModelSpec`) names the file as the user gave it: through their link
    (``snapshots/rev1/model.keras -> ../../blobs/<sha256>``) the validated ``config.model`` is the blob (attack 39 #12)."""
    if is_hub_model(config.model):
        return store_name(config.model)
    if isinstance(spec, SavedModelSpec):
        return spec.shown.stem
    return Path(config.model).stem if is_model_path(config.model) else config.model
