"""KerasHub presets as backbones: ``--model hub:<preset>`` (a built-in name, ``kaggle://`` or ``hf://`` handle) or
``--model PATH/`` (a local preset folder: what ``save_to_preset`` writes, or a downloaded preset unpacked).

A named preset goes through KerasHub's own download and cache (kagglehub: ``$KAGGLEHUB_CACHE``, default
``~/.cache/kagglehub``; Hugging Face: ``$HF_HOME``); offline and not cached, it fails with one error naming the two ways
out. Either way the preset becomes a local folder, read the same way: ``config.json`` (the backbone class and its
numbers), ``model.weights.h5`` (sha256 recorded), ``image_converter.json`` (the preprocessing: per-channel ``scale`` and
``offset``, recorded as numbers and fingerprinted) and ``metadata.json``. Supported backbone classes:
:data:`featstore.models.tokens.FAMILIES` (DINOv2, ViT, CLIP, SigLIP). ``keras-hub`` is imported only when a preset is
built (``pip install 'featstore[hub]'``).

>>> is_hub_model("hub:dinov2_small"), is_hub_model("vgg16")
(True, False)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, WeightsError, choices_error
from featstore.linkrule import refuse_foreign
from featstore.models.activations import check_tokens
from featstore.models.build_guard import TooLarge, bounded_build
from featstore.models.held_input import held_input
from featstore.models.hub_fetch import HUB_SCHEMES, NotDownloaded, _requires_keras_hub, fetch_preset  # noqa: F401
from featstore.models.preset_json import (
    MAX_ATTENTION_BYTES,
    MAX_DIM,
    MAX_LAYERS,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_FILE,
    attention_bytes,
    channels,
    check_sizes,
    held_parameters,
    read_json,
    saved_unzipped,
    square_side,
    vision_ffn_width,
    whole_number,
    with_dtype,
)
from featstore.models.scratch import scratch_folder
from featstore.models.tokens import (
    EMBEDDING,
    FAMILIES,
    TOKEN_POOLINGS,
    TOKENS,
    off_policy,
    token_model,
    token_pool_layer,
)
from featstore.models.weights import LoadedWeights
from featstore.outputs import what_is_at
from featstore.provenance import MAX_IMAGE_SIZE, sha256_file

logger = logging.getLogger(__name__)

HUB_PREFIX = "hub:"
HUB_PREPROCESS = "keras-hub-converter"  # preprocess id; the numbers are preprocess_scale / preprocess_offset
# config keys that do not decide the architecture; every dtype is featstore's (--mixed-precision: compute_dtype) and
# replaced in what KerasHub builds (preset_json.with_dtype), so a preset's own never decides what is computed
_UNSTABLE_KEYS = ("image_shape", "name", "dtype", "trainable")


def is_hub_model(model: str) -> bool:
    """Whether ``--model`` names a KerasHub preset: ``hub:<preset>`` or a folder (a preset folder has config.json)."""
    # "" is not the current folder: an unset shell variable (--model "$MODEL") must not pick up a preset there
    return str(model).startswith(HUB_PREFIX) or (str(model).strip() != "" and Path(str(model)).expanduser().is_dir())


def normalise(model: str) -> str:
    """``hub:<name or handle>`` as given, or a local folder as an absolute path (also when written ``hub:PATH``)."""
    rest = str(model).removeprefix(HUB_PREFIX)
    if not rest.strip():
        raise ConfigError(f"{model!r} names no preset: hub:<name>, hub:kaggle://..., hub:hf://... or a preset folder")
    if Path(rest).expanduser().is_dir():  # held to the link rule as given (attack 33 #1), then resolved
        refuse_foreign(Path(rest).expanduser(), "preset folder", ConfigError, "--model")
        return str(Path(rest).expanduser().resolve())
    found = what_is_at(Path(rest).expanduser())
    if found != "nothing" and not rest.startswith(tuple(f"{s}://" for s in HUB_SCHEMES)) and "/" in rest:
        raise ConfigError(  # hub:/tmp/fifo listed every built-in preset
            f"{rest} is {found or 'a file'}, not a KerasHub preset folder; pass the folder holding the preset's "
            f"config.json and {WEIGHTS_FILE} (what save_to_preset writes), or hub:<preset name>"
        )
    if not str(model).startswith(HUB_PREFIX):
        raise ConfigError(f"{model} is not a folder; a KerasHub preset is hub:<preset> or a preset folder")
    return str(model)


def store_name(model: str) -> str:
    """The extractor group name a preset gets without --name: the preset's or folder's last name (no version)."""
    parts = [p for p in re.split(r"[/:]+", str(model).removeprefix(HUB_PREFIX)) if p and not p.isdigit()]
    name = re.sub(r"[^A-Za-z0-9_@+=,.-]", "_", parts[-1] if parts else "hub").lstrip(".")
    return name or "hub"


def _stable(config):
    """The config without the keys that do not decide the architecture (input side, names, dtype)."""
    if isinstance(config, dict):
        return {k: _stable(v) for k, v in sorted(config.items()) if k not in _UNSTABLE_KEYS}
    return [_stable(v) for v in config] if isinstance(config, list) else config


@dataclass(frozen=True)
class HubSpec:
    """A KerasHub preset seen as a backbone: what the extractor needs to build, cut, preprocess and record it."""

    preset: str  # as given, normalised: hub:<name or handle>, or the folder's absolute path
    folder: Path  # the local preset folder (a cache folder for a named preset)
    handle: str  # the download handle with its version (kaggle://.../1), or the folder
    class_name: str  # KerasHub backbone class, e.g. DINOV2Backbone
    config_sha256: str  # sha256 of the architecture's config (input side, names and dtype left out)
    weights_sha256: str  # sha256 of model.weights.h5
    default_size: int  # the preset's input side
    patch_size: int
    hidden_dim: int  # channels of the tokens
    num_layers: int  # transformer blocks
    embedding_dim: int  # channels of the projected embedding (0: none)
    scale: tuple[float, float, float]  # the image converter's per-channel scale (applied to 0..255 pixels)
    offset: tuple[float, float, float]  # and offset, after the scale
    converter: str  # the converter's class and resize settings, for humans (featstore's own resize replaces them)
    channels_in: int = 3
    num_heads: int = 1  # attention heads of the vision tower (what attention allocates: heads x tokens^2 per image)
    config_text: str = field(default="{}", repr=False, compare=False)  # config.json as read and checked: what is built
    ffn_width: int = 0  # widest per-token activation of a block (its MLP's): tokens x it x 4 B per image, bounded

    @classmethod
    def from_model(cls, model: str, download: bool = True) -> HubSpec:
        """Resolve ``hub:<preset>`` (download or cache; only the cache with ``download=False``) or a preset folder, and
        read its files; no model is built."""
        preset = normalise(model)
        if preset.startswith(HUB_PREFIX):
            folder, handle = fetch_preset(preset.removeprefix(HUB_PREFIX), download)
        else:
            folder, handle = Path(preset), preset
        config = read_json(folder / "config.json")
        name = config.get("class_name")
        if not isinstance(name, str) or name not in FAMILIES:
            if saved_unzipped(config):
                raise ConfigError(
                    f"{preset} is a Keras model saved unzipped (model.save(..., zipped=False)), not a KerasHub preset: "
                    f"featstore reads a Keras model as one .keras file. Zip the folder's files into one, here: "
                    f"(cd {shlex.quote(str(preset))} && zip -qr - .) > my_cnn.keras, or save the model with "
                    f"model.save('my_cnn.keras'); then give --model my_cnn.keras"
                )
            raise choices_error(f"KerasHub backbone class of {preset}", str(name)[:100], list(FAMILIES))
        registered = str(config.get("registered_name"))
        if registered.rpartition(">")[2] != name:  # KerasHub builds what registered_name says, not class_name
            raise ConfigError(
                f"{folder / 'config.json'}: class_name {name} but registered_name {registered[:100]}; KerasHub would "
                f"build the latter. The preset's config is damaged or crafted"
            )
        found = what_is_at(folder / WEIGHTS_FILE)
        if found is not None:
            raise ConfigError(
                f"{folder} has no {WEIGHTS_FILE} (sharded presets are not supported yet)"
                if found == "nothing"
                else f"{folder / WEIGHTS_FILE} is {found}, not a regular file; put the preset's weights file there "
                f"(what save_to_preset writes)"
            )
        weights = folder / WEIGHTS_FILE
        # a colleague's link there (the folder's own is held to the rule by normalise); then one file checked and hashed
        refuse_foreign(weights, "preset weights file", ConfigError)
        with held_input(weights.resolve(), "preset weights file", named=weights) as held:
            if held.stat().st_size > MAX_WEIGHTS_BYTES:  # hashed, then loaded: a sparse 1 TB file hung
                raise ConfigError(
                    f"{weights} is larger than {MAX_WEIGHTS_BYTES >> 30} GiB; the largest supported presets are a few GiB"
                )
            return cls._read(preset, folder, handle, config, held)

    @classmethod
    def _read(cls, preset: str, folder: Path, handle: str, config: dict, weights: Path) -> HubSpec:
        """The spec of the preset in ``folder`` whose ``config.json`` is ``config``, and whose weights file is read
        through ``weights`` (held: :func:`~featstore.models.held_input.held_input`)."""
        name = config["class_name"]
        family = FAMILIES[name]
        where = folder / "config.json"
        try:
            vision = family.vision(config["config"])
            family.block_names(vision)
            numbers = {k: vision[k] for k in ("patch_size", "image_shape", "hidden_dim", "num_layers")}
            projection = config["config"].get("projection_dim", numbers["hidden_dim"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ConfigError(
                f"{where}: {type(exc).__name__} {str(exc)[:100]} reading the {name} config; it is damaged or not one "
                f"KerasHub writes"
            ) from None
        try:  # (a count outside its range, null or text: attack 59 #3, #4)
            family.prefix_tokens(vision)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}; the preset's config is damaged or not one KerasHub writes") from None
        encoders = sorted({c for f in FAMILIES.values() for _, c in f.encoders})
        for key, expected in family.encoders:  # KerasHub builds whatever class a nested config names
            nested = config["config"].get(key)
            named = str(nested.get("registered_name")) if isinstance(nested, dict) else repr(nested)
            if named.removeprefix("keras_hub>") not in encoders or nested.get("class_name") != named.partition(">")[2]:
                # a Functional model there is built layer by layer from its own numbers (Dense(10**12) allocates)
                raise ConfigError(
                    f"{where}: its {key} is {named[:100]}, not a KerasHub encoder ({', '.join(encoders)}; a {name} "
                    f"holds a {expected}); the preset's config is damaged or crafted"
                )
        converter = read_json(folder / "image_converter.json")
        conv = converter.get("config", {})
        if not isinstance(conv, dict):
            raise ConfigError(f"{folder / 'image_converter.json'}: its config is not an object; the file is damaged")
        spec = cls(
            preset,
            folder,
            handle,
            name,
            hashlib.sha256(json.dumps(_stable(config), sort_keys=True).encode()).hexdigest(),
            sha256_file(weights),
            square_side(numbers["image_shape"], "image_shape", where, MAX_IMAGE_SIZE, 3),
            square_side(numbers["patch_size"], "patch_size", where, MAX_IMAGE_SIZE, 2),
            whole_number(numbers["hidden_dim"], "hidden_dim", where, MAX_DIM),
            whole_number(numbers["num_layers"], "num_layers", where, MAX_LAYERS),
            whole_number(projection, "projection_dim", where, MAX_DIM) if family.has_embedding else 0,
            channels(conv.get("scale"), 1.0, "scale", folder / "image_converter.json"),
            channels(conv.get("offset"), 0.0, "offset", folder / "image_converter.json"),
            f"{str(converter.get('class_name'))[:100]} (its resize: "
            f"{str(conv.get('interpolation', 'bilinear'))[:40]}, crop_to_aspect_ratio={conv.get('crop_to_aspect_ratio')!s:.10})",
            num_heads=whole_number(vision.get("num_heads", 1), "num_heads", where, MAX_DIM),
            config_text=json.dumps(config),
            ffn_width=vision_ffn_width(vision, where),
        )
        # before anything is built: sizes within bounds, and no more parameters than the weights file holds
        check_sizes(config["config"], where, weights, MAX_IMAGE_SIZE, spec.shown)
        return spec

    @property
    def family(self):
        """The :class:`~featstore.models.tokens.Family` of this preset."""
        return FAMILIES[self.class_name]

    @property
    def name(self) -> str:
        """The model id recorded and fingerprinted: the class and its architecture, not where it was read from."""
        return f"keras-hub:{self.class_name}:{self.config_sha256}"

    @property
    def shown(self) -> str:
        """The preset as messages name it."""
        return self.preset if self.preset.startswith(HUB_PREFIX) else Path(self.preset).name + "/"

    @property
    def min_size(self) -> int:
        return self.patch_size if self.family.resizable else self.default_size

    @property
    def preprocess_mode(self) -> str:
        return HUB_PREPROCESS

    @property
    def preprocess_name(self) -> str:
        s, o = (", ".join(f"{v:.6g}" for v in t) for t in (self.scale, self.offset))
        return f"{HUB_PREPROCESS}: pixels (0..255) x scale ({s}) + offset ({o}) per channel, from {self.converter}"

    @property
    def default_layer(self) -> str:
        return TOKENS

    @property
    def poolings(self) -> tuple[str, ...]:
        """The --pooling values this preset takes (SigLIP, and a ViT saved with use_class_token=False, have no class
        token: token 0 is a patch)."""
        cls = self.family.has_cls and self.prefix_tokens() > 0
        return TOKEN_POOLINGS if cls else tuple(p for p in TOKEN_POOLINGS if "cls" not in p)

    def layer_names(self) -> list[str]:
        """The outputs --layer can name, in order."""
        return (
            [f"block{i}" for i in range(1, self.num_layers + 1)]
            + [TOKENS]
            + ([EMBEDDING] if self.family.has_embedding else [])
        )

    def prefix_tokens(self) -> int:
        """Tokens before the patches (the class token and any register tokens)."""
        return self.family.prefix_tokens(self.family.vision(json.loads(self.config_text)["config"]))

    def output_shape(self, size: int, layer: str, pooling: str) -> tuple[int, ...]:
        """One image's features at ``layer`` with ``pooling``."""
        if layer == EMBEDDING:
            return (self.embedding_dim,)
        if pooling == "none":
            return (size // self.patch_size, size // self.patch_size, self.hidden_dim)
        return (2 * self.hidden_dim,) if pooling == "cls+mean" else (self.hidden_dim,)

    def _check_attention(self, size: int) -> None:
        """Refuse an input side whose tokens' attention would take more than MAX_ATTENTION_BYTES per image and block
        (at ``--image-size 4096`` a patch-14 preset has 85,000 tokens: 30 heads over them ask for 800 GiB)."""
        tokens = (size // self.patch_size) ** 2 + self.prefix_tokens()
        if attention_bytes(self.num_heads, tokens) <= MAX_ATTENTION_BYTES:
            return
        fits = [s for s in range(self.patch_size, size, self.patch_size) if s >= self.min_size]
        fits = [
            s
            for s in fits
            if attention_bytes(self.num_heads, (s // self.patch_size) ** 2 + self.prefix_tokens())
            <= MAX_ATTENTION_BYTES
        ]
        raise ConfigError(
            f"--image-size {size} makes {tokens:,} tokens per image for {self.shown}: its {self.num_heads} attention "
            f"heads over them take {attention_bytes(self.num_heads, tokens) / 2**30:,.1f} GiB per image and block, over "
            f"{MAX_ATTENTION_BYTES >> 30} GiB; "
            + (f"give --image-size {fits[-1]} or less" if fits else "this preset cannot be run within that bound")
        )

    def validate(self, size: int, layers: tuple[str, ...], pooling: str, preprocess: str | None = None) -> None:
        """Refuse an input side, layer, pooling or --preprocess this preset cannot take, before it is built."""
        if preprocess not in (None, HUB_PREPROCESS):
            raise ConfigError(
                f"{self.shown} uses its preset's image converter ({self.preprocess_name}); --preprocess is for saved "
                f"models: leave it out"
            )
        if pooling not in self.poolings:
            raise choices_error(f"pooling for {self.shown} (a transformer)", pooling, self.poolings)
        if size % self.patch_size or not self.min_size <= size <= MAX_IMAGE_SIZE:
            fixed = "" if self.family.resizable else f"; {self.class_name} takes only its preset's {self.default_size}"
            raise ConfigError(
                f"--image-size {size} does not fit {self.shown}: it needs a multiple of its patch size "
                f"{self.patch_size} (default {self.default_size}{fixed})"
            )
        if size != self.default_size and not self.family.resizable:
            raise ConfigError(
                f"--image-size {size} does not fit {self.shown}: {self.class_name} takes only its preset's "
                f"{self.default_size}x{self.default_size} (leave --image-size out)"
            )
        self._check_attention(size)
        check_tokens(self, size)  # and its MLP's activations (attack 37 #1)
        for layer in layers:
            if layer not in self.layer_names():
                raise choices_error(f"layer of {self.shown}", layer, self.layer_names())
            if layer == EMBEDDING and pooling != "none":
                raise ConfigError(
                    f"--layer embedding is already one vector per image; extract it with --pooling none (in its own "
                    f"pass when other layers need --pooling {pooling})"
                )

    def preprocess(self, batch):
        """The preset's converter on a 0..255 batch already at the input side: ``x * scale + offset`` per channel."""
        return batch * np.asarray(self.scale, np.float32) + np.asarray(self.offset, np.float32)

    def build(self, size: int, weights: str | None = None, seed: int = 0):
        """The token model (:func:`~featstore.models.tokens.token_model`) and where its weights came from."""
        keras_hub = _requires_keras_hub()
        import keras

        policy = keras.mixed_precision.global_policy().name  # the extractor's: float32, or mixed_float16
        kwargs = {"dtype": policy}
        if size != self.default_size:
            kwargs["image_shape"] = (size, size, 3)
        # KerasHub reads the preset folder again: it is given a private snapshot holding the config.json featstore read
        # and checked, and the weights file as it is now (see _snapshot), so a config.json or weights file swapped in
        # meanwhile is never read; the weights KerasHub loaded are hashed again after loading
        # (in a scratch folder of this user: one left by a SIGKILL is removed at the next build, see models.scratch)
        weights = self.folder / WEIGHTS_FILE
        refuse_foreign(weights, "preset weights file", WeightsError)  # again: the folder's entries may have changed
        with (
            scratch_folder("preset") as tmp,
            held_input(weights.resolve(), "preset weights file", WeightsError, named=weights) as held,
        ):
            snapshot = self._snapshot(tmp, held, policy)
            try:
                with bounded_build(held_parameters(snapshot / WEIGHTS_FILE, self.shown), str(self.folder)):
                    backbone = keras_hub.models.Backbone.from_preset(str(snapshot), **kwargs)
            except TooLarge:
                raise
            except Exception as exc:  # noqa: BLE001 - KerasHub and Keras raise ValueError, TypeError, OSError, h5py's...
                raise ConfigError(
                    f"KerasHub could not build {self.shown} from {self.folder}: {type(exc).__name__}: "
                    f"{str(exc)[:300].replace(str(snapshot), str(self.folder))} (a preset folder is what "
                    f"backbone.save_to_preset writes; Lambda layers and unregistered classes are refused)"
                ) from None
            if sha256_file(snapshot / WEIGHTS_FILE) != self.weights_sha256:
                raise WeightsError(f"{self.folder / WEIGHTS_FILE} changed while it was being loaded; run again")
        off = off_policy(backbone, policy)  # what the store records as compute_dtype must be what every layer computes
        if off is not None:
            raise ConfigError(f"{self.shown}: KerasHub built layer {off[:200]}, not {policy} as asked; not recorded")
        what = (
            f"KerasHub preset {self.handle}" if self.preset.startswith(HUB_PREFIX) else f"preset folder {self.preset}"
        )
        try:
            model = token_model(backbone, self.class_name, size)
        except (AttributeError, TypeError, ValueError) as exc:  # e.g. a CLIPBackbone saved around a SigLIP vision tower
            raise ConfigError(
                f"{self.shown} is a {type(backbone).__name__} whose parts are not those of the {self.class_name} "
                f"featstore unrolls ({type(exc).__name__}: {str(exc)[:200]}); it cannot be cut into blocks"
            ) from None
        return model, LoadedWeights(
            "model", "keras-hub-preset", what, str(self.folder / WEIGHTS_FILE), self.weights_sha256
        )

    def _snapshot(self, tmp: Path, held: Path, policy: str) -> Path:
        """``tmp`` made a preset folder of the checked ``config.json`` and the weights file held since it was reached
        (``held``: :func:`~featstore.models.held_input.held_input`'s private name), whatever is renamed onto its name
        later (its dtypes set to ``policy``: :func:`~featstore.models.preset_json.with_dtype`): a hard link of that very
        file where one can be made (HDF5 then opens a name no one else can change), else a link to the held name, else
        (no ``/proc``) a copy. Reopened by name, a colleague's link to a device swapped in after the check was opened
        (attack 35 #2); a symbolic link to the weights' name let a file swapped in for the load, and back before the
        hash, pass. Returns ``tmp``."""
        nested = tuple(key for key, _ in self.family.encoders)
        (tmp / "config.json").write_text(with_dtype(self.config_text, policy, nested), encoding="utf-8")
        try:
            os.link(held, tmp / WEIGHTS_FILE, follow_symlinks=True)  # the inode behind /proc/self/fd/N
            return tmp
        except OSError:  # another file system, another user's file (protected_hardlinks), no hard links
            pass
        if held.is_symlink():
            os.symlink(held, tmp / WEIGHTS_FILE)
        else:
            shutil.copyfile(held, tmp / WEIGHTS_FILE)
        return tmp

    def cut_outputs(self, base, layers: list[str | None], pooling: str, model_name: str) -> list[tuple[str, object]]:
        """``(layer, features)`` for each requested output of the token model, pooled as ``pooling`` says."""
        prefix = self.prefix_tokens()
        side = int(base.inputs[0].shape[1]) // self.patch_size
        out = []
        for layer in layers:
            layer = layer or TOKENS
            t = base.output[layer]
            if layer != EMBEDDING:
                t = token_pool_layer(pooling, prefix, side, f"featstore_{pooling.replace('+', '_')}_{layer}")(t)
            out.append((layer, t))
        return out

    def attrs(self) -> dict:
        """What a store records about the preset besides the common provenance (not fingerprinted but the numbers)."""
        return {
            "hub_preset": self.preset,
            "hub_handle": self.handle,
            "hub_class": self.class_name,
            "preprocess_scale": list(self.scale),
            "preprocess_offset": list(self.offset),
        }
