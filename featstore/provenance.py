"""Provenance: what a store records about its features, their fingerprint, and the checks that refuse mismatches.

One module owns the mapping config <-> store attributes <-> fingerprint (:func:`extractor_attrs`,
:func:`config_fields`, :func:`same_extractor`), and every "does this match" with both sides shown (``refuse_*``):
extract, the writer, check, fit, evaluate and predict all call it. It sits below every stage, so it works on plain
values (dicts of attributes, a listing's digest), never on models or open files.

The fingerprint is a sha256 over stable identifiers and numbers only (a preprocessing mode id, a resize
id, shapes, the weights' tensor digest), never over prose, so a wording fix cannot change it.

>>> a = {"model": "vgg16", "layer": "block5_pool", "input_size": 150, "pooling": "none", "preprocess": "imagenet-caffe",
...      "resize": RESIZE_ID, "dtype": "float32", "compute_dtype": "float32", "feature_shape": [4, 4, 512],
...      "weights_digest": "0" * 64}
>>> fingerprint(a) == fingerprint(dict(a, weights_description="reworded"))
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, StoreError, WeightsError, choices_error
from featstore.version import __version__

FORMAT_VERSION = 2
# Fields that decide the numbers in `features`; their hash is the extractor's fingerprint.
MAX_IMAGE_SIZE = 4096  # largest input side featstore decodes to (a 4096x4096 RGB image is 48 MiB; beyond, memory runs out); 0 = no images (synthetic stores)
FINGERPRINT_FIELDS = ("model", "layer", "input_size", "pooling", "preprocess", "resize", "dtype", "compute_dtype")
FINGERPRINT_FIELDS += ("feature_shape", "weights_digest")
# Fingerprinted only where a store records them (older stores, and backbones without them, keep their fingerprints):
# a KerasHub preset's preprocessing is its converter's numbers, under the one id "keras-hub-converter".
OPTIONAL_FINGERPRINT_FIELDS = ("preprocess_scale", "preprocess_offset")
# a channels_first cut's map is stored (H, W, C) (attack 60 #1): fingerprinted where present, so rows stored before as
# (C, H, W) are never mixed with new ones, even where both shapes read the same (C = H = W)
LAYOUT_FIELDS = ("map_layout",)
MOVED_CHANNELS_LAST = "channels_last_from_channels_first"
# Not fingerprinted: a featstore that knows channels_first cuts wrote or checked the group (else: maplayout.layout_unknown).
LAYOUT_CHECKED, UNKNOWN = "layout_checked", "unknown"  # "unknown": checked, and no layer says where the channels are
# What a store records about a model file or KerasHub preset besides the common attributes (extractor_attrs keeps them).
MODEL_SOURCE_KEYS = ("model_file", "model_sha256", "trust_model", "hub_preset", "hub_handle", "hub_class")
MODEL_SOURCE_KEYS += OPTIONAL_FINGERPRINT_FIELDS
# Resize/decode identifier (bump the suffix whenever decoding or resizing changes the pixels) and its description, the
# one place both live: featstore.images.decode does what they say, every extractor group records them.
RESIZE_ID = "pil-bilinear-square-jpegdraft/1"
RESIZE_DESCRIPTION = "PIL bilinear to a square, aspect ratio not kept; JPEG draft (DCT-scaled) decoding"
DTYPES = ("float32", "float16")  # stored feature types
MAX_AUGMENT_COPIES = 100  # --augment K at most (more is almost surely a typo)
# Augmented copies of a split live in its subgroup AUGMENTED (never a split: no split lists it, no split name can reach it).
AUGMENTED = "augmented"
# Split attributes of the copies that decide their numbers: a resume or re-run with other values is refused, both sides shown.
AUGMENT_KEYS = {
    "augment_copies": "--augment (copies)",
    "augment_spec": "--augment-spec",
    "augment_seed": "--augment-seed",
    "source_rows": "rows of the split",
    "listing_sha256": "set of images",
}
# Split names that hold evaluation data: augmented copies of them are refused (augmentation is for training data only).
EVALUATION_SPLITS = ("validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation", "holdout")
MAX_NAME = 200  # characters of a split/extractor name (an HDF5 group name, within a file name's 255 bytes)
OOF = ".oof"  # a run without a validation split records train's out-of-fold figures as split "<train>.oof"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_@+=,-]*(\.[A-Za-z0-9_@+=,-]+)*")


def plain(value):
    """HDF5 attribute value -> plain Python (lists, str, int, float, bool)."""
    if isinstance(value, np.ndarray):
        items = value.tolist()
        return [plain(v) for v in items] if isinstance(items, list) else plain(items)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)  # an object reference or another type featstore never writes: shown, never used as data


def attrs_of(obj) -> dict:
    """An HDF5 object's attributes as plain Python values."""
    return {k: plain(v) for k, v in obj.attrs.items()}


def fingerprint(attrs: dict) -> str:
    """sha256 over the FINGERPRINT_FIELDS of an extractor's attributes (stable ids and numbers only)."""
    ident = {k: plain(attrs.get(k)) for k in FINGERPRINT_FIELDS}
    ident.update({k: plain(attrs[k]) for k in (*OPTIONAL_FINGERPRINT_FIELDS, *LAYOUT_FIELDS) if k in attrs})
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def describe_diff(
    a: dict,
    b: dict,
    keys=(*FINGERPRINT_FIELDS, *OPTIONAL_FINGERPRINT_FIELDS, *LAYOUT_FIELDS),
    sides: tuple[str, str] = ("store has", "this run has"),
) -> str:
    """'key: store has X, this run has Y; ...' for the keys whose values differ."""
    return "; ".join(
        f"{k}: {sides[0]} {_short(a.get(k))}, {sides[1]} {_short(b.get(k))}"
        for k in keys
        if plain(a.get(k)) != plain(b.get(k))
    )


def _short(value) -> str:
    """A value for a message; digests are cut to 12 characters."""
    value = plain(value)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return repr(value[:12])
    return repr(value)


def refuse_other_extractor(old: dict, new: dict, path, name: str) -> None:
    """Refuse writing features of another configuration under an existing extractor name, showing both sides."""
    if old.get("fingerprint") != new["fingerprint"]:
        raise StoreError(
            f"store {path} already holds an extractor named {name!r} with fingerprint {str(old.get('fingerprint'))[:12]}, "
            f"this run's is {new['fingerprint'][:12]} ({describe_diff(old, new)}). "
            f"Use --name (name= in Python) to store it under another name, or another --store."
        )


def same_features(a: dict, b: dict) -> bool:
    """Whether two provenance records (a store's attributes, a run's ``extractor_attrs``, a rebuilt extractor's)
    describe the same features: their fields hash to the same fingerprint, and each one's recorded ``fingerprint`` is
    that hash. Fields are compared as plain values (an HDF5 attribute and its JSON copy are equal), never the
    fingerprint strings alone, so a record whose fields were edited under a copied fingerprint does not pass.

    >>> a = {k: 1 for k in FINGERPRINT_FIELDS}
    >>> same_features(dict(a, fingerprint=fingerprint(a)), dict(a, fingerprint=fingerprint(a), dtype=2))
    False
    """
    fa, fb = fingerprint(a), fingerprint(b)
    return fa == fb and plain(a.get("fingerprint")) == fa and plain(b.get("fingerprint")) == fb


def refuse_other_features(have: dict, recorded: dict, what: str, fix: str) -> None:
    """Refuse applying something fitted on features of fingerprint ``recorded`` to features ``have``, showing both sides
    (:func:`same_features`: a side whose fields do not hash to its fingerprint is named)."""
    if same_features(have, recorded):
        return
    for side, attrs in (("here", have), (what, recorded)):
        if fingerprint(attrs) != plain(attrs.get("fingerprint")):
            raise StoreError(
                f"the provenance of the features {'here' if side == 'here' else 'that ' + what + ' was made on'} does "
                f"not hash to its fingerprint {str(attrs.get('fingerprint'))[:12]} (edited after it was written?); "
                f"refusing to mix them. {fix}"
            )
    raise StoreError(
        f"features here have fingerprint {str(have.get('fingerprint'))[:12]}, {what} was made on "
        f"{str(recorded.get('fingerprint'))[:12]} ({describe_diff(have, recorded, sides=('here', what))}); "
        f"refusing to mix them. {fix}"
    )


def refuse_other_augmentation(stored: dict, new: dict, split: str, name: str, path) -> None:
    """Refuse adding to (or re-using) augmented copies made with another count, spec, seed or plain split, showing both sides."""
    changed = describe_diff(
        stored, new, keys=tuple(AUGMENT_KEYS), sides=("the store's copies have", "this run asks for")
    )
    if changed:
        raise StoreError(
            f"split {split!r} of {name!r} in {path} already holds augmented copies made otherwise ({changed}); refusing to mix "
            f"two kinds of copies. Re-run with the same --augment, --augment-spec and --augment-seed, or pass --overwrite to "
            f"extract the split and its copies again"
        )


def refuse_evaluation_split(split: str) -> None:
    """Refuse augmented copies of a split whose name says it holds validation or test data."""
    if split.lower() in EVALUATION_SPLITS:
        raise ConfigError(
            f"--augment is for training data only: split {split!r} looks like validation or test data, and "
            f"augmented copies of it could leak into a model's choice or its score. Augment the training split "
            f"(e.g. --split train); `featstore fit --augmented` trains on its copies and never evaluates on them."
        )


def validate_dtype(dtype: str) -> None:
    """Refuse a feature dtype the store does not support."""
    if dtype not in DTYPES:
        raise choices_error("dtype", dtype, DTYPES)


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is a split/extractor name a store accepts (what :func:`validate_name` lets through)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and len(name) <= MAX_NAME


class NameRefused(ConfigError):
    """A split/extractor name a store refuses; ``said``: the line without its fix (the CLI names --name for a default)."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        if isinstance(name, str) and _NAME.fullmatch(name) and not (kind == "extractor" and "," in name):
            self.said = f"{kind} name {name[:20]!r}... is too long: {len(name)} characters, at most {MAX_NAME}"
            return super().__init__(f"{self.said}; choose a shorter one")
        self.said = (
            f"{kind} name {name!r} is not allowed: use letters, digits and _ - @ + = {'' if kind == 'extractor' else ', '}"
            f". (not first), without '/'{' or a comma' if kind == 'extractor' else ''}, e.g. "
            f"{'train' if kind == 'split' else 'vgg16_block4'}"
        )
        super().__init__(self.said)


def validate_name(kind: str, name: str, known=()) -> str:
    """Refuse split/extractor names that are not one plain HDF5 group name (no '/', no leading dot, no '.' or '..'),
    new extractor names with a comma (sweep's and probe's --extractor take comma lists: ``cnn,v2`` could not be
    chosen, attack 72 #3; ``known``, the store's groups: one made before keeps its name for its resumes and new splits,
    73 #1), and split names ending with :data:`OOF` (no run could record such a split: ``runs evaluate`` refuses them)."""
    if not is_plain_name(name) or (kind == "extractor" and "," in name and name not in known):
        raise NameRefused(kind, name)
    if kind == "split":
        refuse_reserved_split(name)
    return name


def refuse_reserved_split(name: str) -> None:
    """ConfigError for a split name ending with :data:`OOF` (extract, write_arrays): no run could record the split."""
    if name.endswith(OOF):
        raise ConfigError(
            f"split name {name!r} is not allowed: names ending with {OOF!r} are kept for a run's out-of-fold figures "
            f"on train (e.g. 'train{OOF}'), so no run could record it. Name the split otherwise"
        )


def check_format_version(value, path) -> None:
    """Refuse a store whose root ``format_version`` this featstore cannot read, saying what to do."""
    try:
        version = int(plain(value))
        if isinstance(plain(value), float) and plain(value) != version:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise StoreError(
            f"store {path} has format_version {plain(value)!r}, not an integer: it is damaged or not a featstore "
            f"store. Extract into a new --store."
        ) from None
    if version > FORMAT_VERSION:
        raise StoreError(
            f"store {path} has format_version {version}; this featstore reads {FORMAT_VERSION}. Upgrade featstore."
        )
    if version < FORMAT_VERSION:
        raise StoreError(
            f"store {path} has format_version {version}, written by an older featstore whose fingerprints and "
            f"layout differ; this one reads {FORMAT_VERSION}. Extract again into a new --store (the images "
            f"are needed), or use the featstore version that wrote it."
        )


EXTRACTOR_REQUIRED = (*FINGERPRINT_FIELDS, "fingerprint", "weights")


def validate_extractor(attrs: dict, where: str) -> None:
    """Refuse an extractor group whose provenance attributes are missing or do not hash to its fingerprint."""
    needed = EXTRACTOR_REQUIRED + (OPTIONAL_FINGERPRINT_FIELDS if attrs.get("hub_preset") else ())
    missing = [k for k in needed if k not in attrs]
    if missing:
        raise StoreError(
            f"{where}: provenance attributes missing: {', '.join(missing)}; the store is damaged or not written by "
            f"this featstore. Extract again into a new --store."
        )
    shape = attrs["feature_shape"]
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise StoreError(
            f"{where}: feature_shape is {shape!r}, expected a list of positive integers; the store is damaged. "
            f"Extract again into a new --store."
        )
    if (
        not isinstance(attrs["input_size"], int)
        or not 0 <= attrs["input_size"] <= MAX_IMAGE_SIZE
        or attrs["dtype"] not in DTYPES
    ):
        raise StoreError(
            f"{where}: input_size {attrs['input_size']!r} or dtype {attrs['dtype']!r} is not one featstore writes; "
            f"the store is damaged. Extract again into a new --store."
        )
    if fingerprint(attrs) != attrs["fingerprint"]:
        raise StoreError(
            f"{where}: the fingerprint attribute does not match the provenance attributes (edited after writing?). "
            f"Extract again into a new --store."
        )


# ------------------------------------------------------------------ config <-> attributes, and the checks that use them
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extractor_attrs(backbone: dict, config: dict, output: dict, weights: dict, versions: dict) -> dict:
    """The attributes of one extractor group (one cut layer), fingerprint included: what the store records.

    ``backbone``: model (registry name, or keras-file:<sha256>), input_channels, preprocess (a stable id),
    preprocess_description, and for a saved model model_file, model_sha256, trust_model (for a KerasHub preset
    hub_preset, hub_handle, hub_class, preprocess_scale, preprocess_offset: :data:`MODEL_SOURCE_KEYS`). ``config``: the
    configuration's arguments (:meth:`~featstore.models.extractor.ExtractorConfig.arguments`). ``output``: layer (the
    cut's name), feature_shape, weights_digest. ``weights``: argument, source, description, path, file_sha256.
    ``versions``: keras, tensorflow, pillow.
    """
    saved = {k: backbone[k] for k in MODEL_SOURCE_KEYS if k in backbone}
    attrs = {
        "model": backbone["model"],
        "layer": output["layer"],
        "layer_requested": config["layer"] or "",  # "" = the default cut (not fingerprinted: "layer" holds the name)
        "input_size": config["image_size"],
        "input_channels": backbone["input_channels"],
        "pooling": config["pooling"],
        "preprocess": backbone["preprocess"],  # a stable id; the prose is in preprocess_description
        "preprocess_description": backbone["preprocess_description"],
        "resize": RESIZE_ID,
        "resize_description": RESIZE_DESCRIPTION,
        "dtype": config["dtype"],
        "feature_shape": [int(d) for d in output["feature_shape"]],
        "weights": weights["argument"],
        "weights_source": weights["source"],
        "weights_description": weights["description"],
        "weights_file": weights["path"],
        "weights_sha256": weights["file_sha256"],
        "weights_digest": output["weights_digest"],
        "seed": config["seed"],
        "compute_dtype": "mixed_float16" if config["mixed_precision"] else "float32",
        "keras_version": versions["keras"],
        "tensorflow_version": versions["tensorflow"],
        "pillow_version": versions["pillow"],
        "featstore_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **saved,
    }
    attrs.update({k: output[k] for k in LAYOUT_FIELDS if k in output})
    attrs[LAYOUT_CHECKED] = output.get(LAYOUT_CHECKED, True)
    attrs["fingerprint"] = fingerprint(attrs)
    return attrs


def config_fields(attrs: dict, weights: str | None = None, model_file: str | None = None) -> dict:
    """The configuration (ExtractorConfig's arguments) a store's extractor attributes record.

    ``weights`` replaces a recorded weights source, ``model_file`` a saved model's recorded file or a KerasHub preset
    (moved or copied: a local preset folder for a named preset).
    """
    saved = bool(attrs.get("model_file") or attrs.get("hub_preset"))
    return {
        "model": model_file or attrs.get("model_file") or attrs["hub_preset"] if saved else attrs["model"],
        "image_size": int(attrs["input_size"]),
        "layer": attrs["layer"],
        "pooling": attrs["pooling"],
        "dtype": attrs["dtype"],
        "weights": "model" if saved else weights or attrs["weights"],
        "seed": int(attrs.get("seed", 0)),
        "mixed_precision": attrs.get("compute_dtype") == "mixed_float16",
        "preprocess": attrs["preprocess"] if attrs.get("model_file") else None,
        "trust_model": bool(attrs.get("trust_model", False)),
    }


def same_extractor(attrs: dict, wanted: dict) -> bool:
    """Whether a store's recorded extractor is the configuration ``wanted`` (a validated one-layer configuration's
    arguments; weights compared by how they were named, a saved model by its file's sha256). Cheap: no model is built.
    """
    try:
        recorded = config_fields(attrs)
    except (KeyError, TypeError, ValueError):
        return False  # damaged provenance: the writer's full check says what is wrong
    if attrs.get("model_sha256") and (
        not Path(wanted["model"]).is_file() or sha256_file(wanted["model"]) != attrs["model_sha256"]
    ):
        return False  # the model file changed: the full check says how
    folder = Path(str(wanted["model"]))
    if attrs.get("hub_preset") and folder.is_dir():
        weights = folder / "model.weights.h5"
        if not weights.is_file() or sha256_file(weights) != attrs.get("weights_sha256"):
            return False  # the preset folder's weights changed: the full check says how
    if wanted["layer"] is None and not attrs.get("layer_requested"):
        recorded["layer"] = None  # the default cut, recorded by its name
    if wanted["weights"] != "none":
        recorded["seed"] = wanted["seed"]  # the seed only matters for random weights
    return recorded == wanted


def refuse_changed_listing(recorded_digest, listing, stored: Callable[[], object], split: str, name: str, path) -> None:
    """Refuse to treat a split as done (or resume it) when its images changed since it was started: say what changed.

    ``listing`` is today's :class:`~featstore.images.listing.ImageListing`; ``stored()`` gives the entries recorded
    when the split was started (``featstore.store.layout.listing_columns``: read in blocks, only when the digests
    differ).
    """
    if plain(recorded_digest) == listing.digest():
        return
    change = listing.diff(stored())
    summary = change.summary()
    if not (change or change.reordered):
        summary += " (the recorded digest does not match the recorded list of files: the store's record is damaged)"
    raise StoreError(
        f"the images of split {split!r} changed since {name!r}/{split} in {path} was extracted: {summary}. "
        f"Re-extract it with --overwrite (overwrite=True in Python)."
    )


def refuse_other_weights(
    here: dict, recorded: dict, what: str = "the run", action: str = "predict", made: str = "was fitted on"
) -> None:
    """Refuse weights whose tensor digest differs from the recorded one, both sides shown by description and file sha256."""
    if here.get("weights_digest") != recorded.get("weights_digest"):
        raise WeightsError(
            f"the weights available here ({here.get('weights_description')}, file sha256 "
            f"{str(here.get('weights_sha256') or '')[:12] or '-'}) are not the ones {what} {made} "
            f"({recorded.get('weights_description')}, file sha256 {str(recorded.get('weights_sha256') or '')[:12] or '-'}); "
            f"refusing to {action}. Pass --weights PATH (weights= in Python) with the original file."
        )
