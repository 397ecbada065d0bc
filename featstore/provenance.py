"""Provenance: what a store records about its features, their fingerprint, and the checks that refuse mismatches.

One module owns the mapping config <-> store attributes <-> fingerprint, and every "refuse with both sides
shown" comparison: extract, the writer, check, fit, evaluate and predict all call it.

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
import re
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, StoreError

FORMAT_VERSION = 2
# Fields that decide the numbers in `features`; their hash is the extractor's fingerprint.
MAX_IMAGE_SIZE = 4096  # largest input side featstore decodes to (a 4096x4096 RGB image is 48 MiB; beyond, memory runs out); 0 = no images (synthetic stores)
FINGERPRINT_FIELDS = ("model", "layer", "input_size", "pooling", "preprocess", "resize", "dtype", "compute_dtype", "feature_shape",
                      "weights_digest")
# Resize/decode identifier (bump the suffix whenever decoding or resizing changes the pixels).
RESIZE_ID = "pil-bilinear-square-jpegdraft/1"
RESIZE_DESCRIPTION = "PIL bilinear to a square, aspect ratio not kept; JPEG draft (DCT-scaled) decoding"
# Split attributes that must be the same to resume a partial split (the rest describe the run).
DTYPES = ("float32", "float16")  # stored feature types
RESUME_KEYS = {"listing_sha256": "set of images", "batch_size": "--batch-size", "compression": "--compression"}
# Augmented copies of a split live in its subgroup AUGMENTED (never a split: no split lists it, no split name can reach it).
AUGMENTED = "augmented"
# Split attributes of the copies that decide their numbers: a resume or re-run with other values is refused, both sides shown.
AUGMENT_KEYS = {"augment_copies": "--augment (copies)", "augment_spec": "--augment-spec", "augment_seed": "--augment-seed",
                "source_rows": "rows of the split", "listing_sha256": "set of images"}
# Split names that hold evaluation data: augmented copies of them are refused (augmentation is for training data only).
EVALUATION_SPLITS = ("validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation", "holdout")
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
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def describe_diff(a: dict, b: dict, keys=FINGERPRINT_FIELDS, sides: tuple[str, str] = ("store has", "this run has")) -> str:
    """'key: store has X, this run has Y; ...' for the keys whose values differ."""
    return "; ".join(f"{k}: {sides[0]} {_short(a.get(k))}, {sides[1]} {_short(b.get(k))}" for k in keys if plain(a.get(k)) != plain(b.get(k)))


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
            f"Use --name to store it under another name, or another --store."
        )


def refuse_other_features(have: dict, recorded: dict, what: str, fix: str) -> None:
    """Refuse applying something fitted on features of fingerprint ``recorded`` to features ``have``, showing both sides."""
    if have.get("fingerprint") != recorded.get("fingerprint"):
        raise StoreError(
            f"features here have fingerprint {str(have.get('fingerprint'))[:12]}, {what} was made on "
            f"{str(recorded.get('fingerprint'))[:12]} ({describe_diff(have, recorded, sides=('here', what))}); "
            f"refusing to mix them. {fix}"
        )


def refuse_resume(stored: dict, new: dict, split: str, name: str, path) -> None:
    """Refuse resuming a partial split that was started with other images or write options."""
    changed = [f"{what} ({stored.get('n_images')} images then, {new['n_images']} now)" if key == "listing_sha256"
               else f"{what} ({plain(stored.get(key))} then, {new[key]} now)"
               for key, what in RESUME_KEYS.items() if plain(stored.get(key)) != new[key]]
    if changed:
        raise StoreError(
            f"split {split!r} of {name!r} in {path} was started with another {', '.join(changed)}; resuming would "
            f"mix two different runs. Re-run with the same options, or pass --overwrite to start it again"
        )


def refuse_other_augmentation(stored: dict, new: dict, split: str, name: str, path) -> None:
    """Refuse adding to (or re-using) augmented copies made with another count, spec, seed or plain split, showing both sides."""
    changed = describe_diff(stored, new, keys=tuple(AUGMENT_KEYS), sides=("the store's copies have", "this run asks for"))
    if changed:
        raise StoreError(
            f"split {split!r} of {name!r} in {path} already holds augmented copies made otherwise ({changed}); refusing to mix "
            f"two kinds of copies. Re-run with the same --augment, --augment-spec and --augment-seed, or pass --overwrite to "
            f"extract the split and its copies again"
        )


def refuse_evaluation_split(split: str) -> None:
    """Refuse augmented copies of a split whose name says it holds validation or test data."""
    if split.lower() in EVALUATION_SPLITS:
        raise ConfigError(f"--augment is for training data only: split {split!r} looks like validation or test data, and "
                          f"augmented copies of it could leak into a model's choice or its score. Augment the training split "
                          f"(e.g. --split train); `featstore fit --augmented` trains on its copies and never evaluates on them.")


def validate_name(kind: str, name: str) -> str:
    """Refuse split/extractor names that are not one plain HDF5 group name (no '/', no leading dot, no '.' or '..')."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 200:
        raise ConfigError(f"{kind} name {name!r} is not allowed: use letters, digits and _ - @ + = , . (not first), "
                          f"without '/', e.g. {'train' if kind == 'split' else 'vgg16_block4'}")
    return name


def check_format_version(value, path) -> None:
    """Refuse a store whose root ``format_version`` this featstore cannot read, saying what to do."""
    try:
        version = int(plain(value))
        if isinstance(plain(value), float) and plain(value) != version:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise StoreError(f"store {path} has format_version {plain(value)!r}, not an integer: it is damaged or not a featstore "
                         f"store. Extract into a new --store.") from None
    if version > FORMAT_VERSION:
        raise StoreError(f"store {path} has format_version {version}; this featstore reads {FORMAT_VERSION}. Upgrade featstore.")
    if version < FORMAT_VERSION:
        raise StoreError(f"store {path} has format_version {version}, written by an older featstore whose fingerprints and "
                         f"layout differ; this one reads {FORMAT_VERSION}. Extract again into a new --store (the images "
                         f"are needed), or use the featstore version that wrote it.")


@dataclass(frozen=True)
class Commit:
    """A split's committed state: its one ``commit`` attribute, validated against the datasets."""

    rows: int  # rows of features/labels/paths that are valid
    failed: int  # failure records that are valid
    images_done: int  # images handled so far (rows + failed)


def read_commit(sg, where: str) -> Commit:
    """The split's validated ``commit`` attribute; StoreError naming the problem for a damaged or crafted one.

    A split whose creation was interrupted has no ``commit`` yet: that reads as nothing committed.
    """
    if "commit" not in sg.attrs:
        return Commit(0, 0, 0)
    raw = np.asarray(sg.attrs["commit"])
    if raw.shape != (3,) or raw.dtype.kind not in "iu":
        raise StoreError(f"{where}: attribute commit is {plain(raw)!r}, expected three integers [rows, failed, images_done]: "
                         f"the store is damaged. Re-extract this split with --overwrite.")
    rows, failed, done = (int(v) for v in raw)
    if min(rows, failed, done) < 0 or done != rows + failed:
        raise StoreError(f"{where}: commit [{rows}, {failed}, {done}] is inconsistent (negative, or images_done != rows + failed): "
                         f"the store is damaged. Re-extract this split with --overwrite.")
    import h5py

    for key in ROW_DATASETS:  # hard-linked datasets only: a link is never followed here (validate_split names it)
        if isinstance(sg.get(key, getlink=True), h5py.HardLink) and isinstance(sg[key], h5py.Dataset) and rows > sg[key].shape[0]:
            raise StoreError(f"{where}: commit says {rows} rows but {key} holds {sg[key].shape[0]}: rows were lost. "
                             f"Re-extract this split with --overwrite.")
    if "failed" in sg and "paths" in sg["failed"] and failed > sg["failed"]["paths"].shape[0]:
        raise StoreError(f"{where}: commit says {failed} failure records but failed/paths holds {sg['failed']['paths'].shape[0]}. "
                         f"Re-extract this split with --overwrite.")
    n_images = sg.attrs.get("n_images")
    if n_images is not None and done > int(plain(n_images)):
        raise StoreError(f"{where}: commit says {done} images done of n_images {plain(n_images)}: the store is damaged. "
                         f"Re-extract this split with --overwrite.")
    return Commit(rows, failed, done)


SPLIT_DATASETS = ("features", "labels", "paths", "failed/paths", "failed/reasons")
ROW_DATASETS = ("features", "labels", "paths", "copy")  # one entry per committed row ("copy": augmented copies only)
SPLIT_ATTRS = ("class_names", "commit", "n_images", "complete", "source_root")


def validate_split(sg, where: str, extractor: dict | None = None) -> Commit:
    """Validate a split's layout, attribute types and dataset kinds cheaply (no feature reads); returns its commit.

    Raises StoreError with what is wrong and the fix. ``extractor`` (the extractor's attributes) adds the
    shape/dtype check against its recorded feature_shape and dtype.
    """
    import h5py

    redo = "Re-extract this split with --overwrite (or into a new --store)."
    for key in SPLIT_DATASETS:
        obj = sg
        for part in key.split("/"):  # every component a hard link: an external link is never opened on the way
            link = obj.get(part, getlink=True) if isinstance(obj, h5py.Group) else None
            if link is None:
                raise StoreError(f"{where}: dataset {key} is missing. {redo}")
            if not isinstance(link, h5py.HardLink):
                raise StoreError(f"{where}/{key} is not stored in this file ({type(link).__name__}). {redo}")
            obj = obj[part]
        if not isinstance(obj, h5py.Dataset) or obj.is_virtual or obj.external:
            raise StoreError(f"{where}/{key} is not a dataset stored in this file (a group, virtual or external dataset). {redo}")
    missing = [k for k in SPLIT_ATTRS if k not in sg.attrs and not (k == "commit")]
    if missing:
        raise StoreError(f"{where}: attributes missing: {', '.join(missing)}. {redo}")
    feats, labels = sg["features"], sg["labels"]
    if feats.dtype.kind != "f":
        raise StoreError(f"{where}/features has dtype {feats.dtype}, not floating point. {redo}")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise StoreError(f"{where}/labels has dtype {labels.dtype} and {labels.ndim} dimensions, expected 1-D integers. {redo}")
    for key in ("paths", "failed/paths", "failed/reasons"):
        if sg[key].dtype.kind not in "OS" or sg[key].ndim != 1:
            raise StoreError(f"{where}/{key} has dtype {sg[key].dtype}, expected 1-D strings. {redo}")
    if extractor is not None:
        shape = plain(extractor.get("feature_shape", []))
        if not isinstance(shape, list) or not all(isinstance(v, int) for v in shape):
            raise StoreError(f"{where}: the extractor's feature_shape is {shape!r}, expected a list of positive integers. {redo}")
        want = shape
        if list(feats.shape[1:]) != want or str(feats.dtype) != extractor.get("dtype"):
            raise StoreError(f"{where}/features are {tuple(feats.shape[1:])} {feats.dtype}, the extractor records "
                             f"{tuple(want)} {extractor.get('dtype')}. {redo}")
    classes = plain(sg.attrs["class_names"])
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise StoreError(f"{where}: class_names is {classes!r}, expected a list of names. {redo}")
    try:
        n_images = int(plain(sg.attrs["n_images"]))
    except (TypeError, ValueError, OverflowError):
        n_images = -1
    complete = sg.attrs["complete"]
    if not (isinstance(complete, (bool, np.bool_)) or (isinstance(complete, (int, np.integer)) and int(complete) in (0, 1))):
        raise StoreError(f"{where}: attribute complete is {plain(complete)!r}, expected true or false. {redo}")
    if n_images < 0:
        raise StoreError(f"{where}: n_images is {plain(sg.attrs['n_images'])!r}, expected a count. {redo}")
    _validate_listing(sg, where, redo)
    return read_commit(sg, where)


MAX_AUGMENT_COPIES = 100  # --augment K at most (more is almost surely a typo)
AUGMENT_ATTRS = ("augment_copies", "augment_spec", "augment_seed", "source_rows", "source_split")


def validate_augmented(ag, where: str, extractor: dict | None, source: Commit) -> Commit:
    """Validate a split's augmented copies (layout as a split, plus ``copy`` and their attributes) against the plain split's commit."""
    import h5py

    commit = validate_split(ag, where, extractor)
    redo = "Make them again: re-run the extract with --augment and --overwrite."
    missing = [k for k in AUGMENT_ATTRS if k not in ag.attrs]
    if missing:
        raise StoreError(f"{where}: attributes missing: {', '.join(missing)}. {redo}")
    a = {k: plain(ag.attrs[k]) for k in AUGMENT_ATTRS}
    ints = [a[k] for k in ("augment_copies", "augment_seed", "source_rows")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or a["augment_copies"] < 1 or a["source_rows"] < 0 \
            or not isinstance(a["augment_spec"], str) or not isinstance(a["source_split"], str):
        raise StoreError(f"{where}: augment_copies {a['augment_copies']!r}, augment_seed {a['augment_seed']!r}, source_rows "
                         f"{a['source_rows']!r} or augment_spec {a['augment_spec']!r} is not what featstore writes. {redo}")
    link = ag.get("copy", getlink=True)
    ds = ag["copy"] if isinstance(link, h5py.HardLink) else None
    if not isinstance(ds, h5py.Dataset) or ds.is_virtual or ds.external or ds.dtype.kind not in "iu" or ds.ndim != 1:
        raise StoreError(f"{where}/copy is missing or not a 1-D integer dataset stored in this file. {redo}")
    if a["source_rows"] != source.rows or int(plain(ag.attrs["n_images"])) != a["augment_copies"] * a["source_rows"]:
        raise StoreError(f"{where}: the copies were made from {a['source_rows']} rows of the split ({plain(ag.attrs['n_images'])} "
                         f"images for {a['augment_copies']} copies), the split holds {source.rows} rows now. {redo}")
    # the attributes must describe copies featstore could have made of this very split (a crafted or stale group lies here)
    parent = ag.parent
    lies = []
    if a["augment_copies"] > MAX_AUGMENT_COPIES:
        lies.append(f"augment_copies {a['augment_copies']} is over {MAX_AUGMENT_COPIES}")
    if not 0 <= a["augment_seed"] < 2**31:
        lies.append(f"augment_seed {a['augment_seed']} is not in 0..{2**31 - 1}")
    try:
        from .augment import parse_augment

        if not parse_augment(a["augment_spec"]):
            lies.append("augment_spec is empty")
    except ConfigError as exc:
        lies.append(f"augment_spec {a['augment_spec']!r} is not a spec featstore reads ({exc})")
    if a["source_split"] != parent.name.rsplit("/", 1)[-1]:
        lies.append(f"source_split {a['source_split']!r} is not the split {parent.name.rsplit('/', 1)[-1]!r} that holds them")
    for key in ("class_names", "listing_sha256"):
        if plain(ag.attrs.get(key)) != plain(parent.attrs.get(key)):
            lies.append(f"{key} {str(plain(ag.attrs.get(key)))[:60]!r} differs from the split's {str(plain(parent.attrs.get(key)))[:60]!r}")
    if bool(plain(ag.attrs["complete"])) and commit.images_done != a["augment_copies"] * a["source_rows"]:
        lies.append(f"marked complete with {commit.images_done} of {a['augment_copies'] * a['source_rows']} rows done")
    if lies:
        raise StoreError(f"{where}: these copies do not match the split they belong to: {'; '.join(lies)}. {redo}")
    return commit


LISTING = ("paths", "labels", "sizes", "mtimes_ns")  # /<split>/listing: every image of the split as discovered


def _validate_listing(sg, where: str, redo: str) -> None:
    """The split's recorded listing, if any, is a group of four hard-linked 1-D datasets of one length and the right kinds."""
    import h5py

    link = sg.get("listing", getlink=True)
    if link is None:
        return
    lg = sg["listing"] if isinstance(link, h5py.HardLink) else None
    if not isinstance(lg, h5py.Group) or any(not isinstance(lg.get(k, getlink=True), h5py.HardLink) for k in LISTING):
        raise StoreError(f"{where}/listing is damaged (missing or linked datasets). {redo}")
    n = lg["paths"].shape
    kinds = [lg["paths"].dtype.kind in "OS"] + [lg[k].dtype.kind in "iu" for k in LISTING[1:]]
    if not all(kinds) or len(n) != 1 or any(lg[k].shape != n for k in LISTING):
        raise StoreError(f"{where}/listing is damaged (datasets of the wrong kind or length). {redo}")


def validate_labels(y: np.ndarray, n_classes: int, where: str) -> None:
    """Refuse labels outside 0..n_classes-1 (a damaged or crafted store)."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise StoreError(f"{where}/labels hold values outside 0..{n_classes - 1} (found {int(y.min())}..{int(y.max())}): "
                         f"the store is damaged. Re-extract this split with --overwrite.")


EXTRACTOR_REQUIRED = (*FINGERPRINT_FIELDS, "fingerprint", "weights")


def validate_extractor(attrs: dict, where: str) -> None:
    """Refuse an extractor group whose provenance attributes are missing or do not hash to its fingerprint."""
    missing = [k for k in EXTRACTOR_REQUIRED if k not in attrs]
    if missing:
        raise StoreError(f"{where}: provenance attributes missing: {', '.join(missing)}; the store is damaged or not written by "
                         f"this featstore. Extract again into a new --store.")
    shape = attrs["feature_shape"]
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise StoreError(f"{where}: feature_shape is {shape!r}, expected a list of positive integers; the store is damaged. "
                         f"Extract again into a new --store.")
    if not isinstance(attrs["input_size"], int) or not 0 <= attrs["input_size"] <= MAX_IMAGE_SIZE or attrs["dtype"] not in DTYPES:
        raise StoreError(f"{where}: input_size {attrs['input_size']!r} or dtype {attrs['dtype']!r} is not one featstore writes; "
                         f"the store is damaged. Extract again into a new --store.")
    if fingerprint(attrs) != attrs["fingerprint"]:
        raise StoreError(f"{where}: the fingerprint attribute does not match the provenance attributes (edited after writing?). "
                         f"Extract again into a new --store.")
