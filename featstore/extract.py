"""The extraction pipeline: image folders -> frozen conv base -> HDF5 store, batch by batch.

Images are decoded by a bounded pool of threads ahead of the model (order kept), the model runs
with ``predict_on_batch`` (no ``predict``-in-a-loop leak), and each batch is committed to the
store before the next, so an interrupted run resumes where it stopped.

>>> from featstore import ExtractorConfig, extract
>>> result = extract("data/fashion_mnist", "train", "features.h5",
...                  ExtractorConfig(model="vgg16", weights="hed-bsds500"))   # doctest: +SKIP
>>> result.rows, result.failed                                               # doctest: +SKIP
(300, 0)
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import __version__, provenance, store, writer
from .backbones import cut_model, get_backbone, validate_pooling, validate_size
from .decode import DaemonPool
from .errors import ConfigError
from .images import ImageError, ImageListing, discover, load_image, printable
from .weights import LoadedWeights, describe_weights_argument, load_base, weights_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything that decides the features; its hash (with the weights' digest) is the fingerprint."""

    model: str = "vgg16"  # backbone registry name (featstore models)
    image_size: int | None = None  # input side in pixels; None = the backbone's default
    layer: str | None = None  # cut at this named layer; None = the conv base's last layer
    pooling: str = "none"  # none | avg | max (global pooling after the cut)
    dtype: str = "float32"  # float32 | float16 stored features
    weights: str = "imagenet"  # imagenet | none | hed-bsds500 | path to a Keras weights file
    seed: int = 0  # initialisation seed, used only with weights="none"
    mixed_precision: bool = False  # compute in float16 (GPU tensor cores); changes features slightly, so fingerprinted

    @classmethod
    def from_attrs(cls, attrs: dict, weights: str | None = None) -> ExtractorConfig:
        """The configuration a store's extractor attributes record (``weights`` overrides the recorded source)."""
        return cls(model=attrs["model"], image_size=int(attrs["input_size"]), layer=attrs["layer"], pooling=attrs["pooling"],
                   dtype=attrs["dtype"], weights=weights or attrs["weights"], seed=int(attrs.get("seed", 0)),
                   mixed_precision=attrs.get("compute_dtype") == "mixed_float16")

    def validated(self) -> ExtractorConfig:
        """Check every field before any work; fill the default image size."""
        spec = get_backbone(self.model)
        size = self.image_size or spec.default_size
        validate_size(spec, size)
        validate_pooling(self.pooling)
        store.validate_dtype(self.dtype)
        return ExtractorConfig(self.model, size, self.layer, self.pooling, self.dtype, describe_weights_argument(self.weights), self.seed,
                               self.mixed_precision)


@dataclass
class ExtractResult:
    """What one ``extract`` call did."""

    store: str  # store path
    extractor: str  # extractor group name
    split: str  # split name
    rows: int = 0  # rows in the split after this run
    written: int = 0  # rows written by this run
    failed: int = 0  # images recorded as failed (whole split)
    skipped: bool = False  # the split was already complete: nothing done
    resumed_from: int = 0  # images already done when this run started
    seconds: float = 0.0  # wall time of this run
    feature_shape: tuple = ()  # shape of one row
    fingerprint: str = ""  # extractor fingerprint
    failures: list = field(default_factory=list)  # (path, reason) recorded by this run
    ignored: int = 0  # files without an image extension in the class folders
    images_per_second: float = 0.0  # throughput of the decode-model-write loop (model building excluded)


class Extractor:
    """A loaded backbone turned into a feature function, with its provenance.

    >>> ex = Extractor(ExtractorConfig(model="vgg16", weights="none", image_size=32))  # doctest: +SKIP
    >>> ex(np.zeros((2, 32, 32, 3), np.uint8)).shape                                  # doctest: +SKIP
    (2, 1, 1, 512)
    """

    def __init__(self, config: ExtractorConfig):
        self.config = config.validated()
        self.spec = get_backbone(self.config.model)
        import keras

        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("mixed_float16" if self.config.mixed_precision else "float32")
        try:
            base, self.weights = load_base(self.spec, self.config.image_size, self.config.weights, self.config.seed)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        self.model = cut_model(base, self.config.layer, self.config.pooling, self.spec.name)
        self.feature_shape = tuple(int(d) for d in self.model.output_shape[1:])
        self.attrs = self._attrs(self.weights)
        self._forward = _forward_fn(self.model, self.config.image_size)
        self._forward(np.zeros((1, self.config.image_size, self.config.image_size, 3), np.float32))  # trace once, at start-up

    def _attrs(self, w: LoadedWeights) -> dict:
        import keras
        import PIL
        import tensorflow as tf

        c = self.config
        attrs = {
            "model": c.model,
            "layer": c.layer or self.model.layers[-1 if c.pooling == "none" else -2].name,
            "layer_requested": c.layer or "",  # "" = the default cut (not fingerprinted: "layer" holds the name)
            "input_size": c.image_size,
            "pooling": c.pooling,
            "preprocess": self.spec.preprocess_mode,  # a stable id; the prose is in preprocess_description
            "preprocess_description": self.spec.preprocess_name,
            "resize": provenance.RESIZE_ID,
            "resize_description": provenance.RESIZE_DESCRIPTION,
            "dtype": c.dtype,
            "feature_shape": list(self.feature_shape),
            "weights": w.argument,
            "weights_source": w.source,
            "weights_description": w.description,
            "weights_file": w.path,
            "weights_sha256": w.file_sha256,
            "weights_digest": weights_digest(self.model),
            "seed": c.seed,
            "compute_dtype": "mixed_float16" if c.mixed_precision else "float32",
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
            "pillow_version": PIL.__version__,
            "featstore_version": __version__,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        attrs["fingerprint"] = provenance.fingerprint(attrs)
        return attrs

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of a uint8 RGB batch ``(B, size, size, 3)``, in the configured dtype."""
        x = self.spec.preprocess(images.astype(np.float32))
        return np.asarray(self._forward(x)).astype(self.config.dtype, copy=False)


def _forward_fn(model, size: int):
    """The model as one traced function for any batch size (no `predict`-in-a-loop leak, no retracing per shape)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return model.predict_on_batch
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    return lambda x: fn(tf.convert_to_tensor(x, tf.float32)).numpy()


def iter_decoded(paths: list[str], size: int, workers: int, ahead: int) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """Decode images in a thread pool, at most ``ahead`` in flight; yields (path, array or None, reason) in order.

    ``workers=0`` decodes in the calling thread, between model calls (best when the model already uses every core).
    The threads are daemons: on Ctrl-C, an error or an early ``close()`` the generator returns at once, queued
    decodes are cancelled and one still running is abandoned, never waited for. Example::

        for path, img, reason in iter_decoded(["a.jpg", "b.png"], 224, workers=4, ahead=64): ...
    """
    if workers == 0:
        for p in paths:
            try:
                yield p, load_image(p, size), ""
            except ImageError as exc:
                yield p, None, str(exc)
        return
    pool = DaemonPool(workers)
    pending: collections.deque = collections.deque()
    it = iter(paths)
    try:
        pending.extend((p, pool.submit(load_image, p, size)) for p in itertools.islice(it, ahead))
        while pending:
            p, fut = pending.popleft()
            pending.extend((q, pool.submit(load_image, q, size)) for q in itertools.islice(it, 1))
            try:
                img, reason = fut.result(), ""
            except ImageError as exc:
                img, reason = None, str(exc)
            yield p, img, reason
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def extract(data: str | os.PathLike, split: str, store_path: str | os.PathLike = "features.h5",
            config: ExtractorConfig | None = None, *, name: str | None = None, batch_size: int = 32,
            overwrite: bool = False, progress: bool = False, workers: int | None = None, locking=None,
            compression: str = "none") -> ExtractResult:
    """Extract features of ``data/split/<class>/*`` into ``store_path`` under ``/<name>/<split>``.

    Re-running a complete split is a no-op (``overwrite=True`` replaces it); an interrupted run
    resumes from its last committed batch. Example::

        extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"))
    """
    started = time.monotonic()
    config = (config or ExtractorConfig()).validated()
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if compression not in writer.COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}; choose one of: {', '.join(writer.COMPRESSIONS)}")
    provenance.validate_name("split", split)
    name = provenance.validate_name("extractor", name or config.model)
    listing = discover(data, split)
    store_path = writer.check_writable(store_path)
    result = ExtractResult(str(store_path), name, split, ignored=listing.n_ignored)
    with writer.writer_lock(store_path, locking):
        if not overwrite and _already_complete(store_path, name, split, config, listing, locking):
            result.skipped = True
            logger.debug("%s/%s in %s is already complete; nothing to do", name, split, store_path)
        else:
            extractor = Extractor(config)
            result.feature_shape, result.fingerprint = extractor.feature_shape, extractor.attrs["fingerprint"]
            split_attrs = {"class_names": listing.class_names, "source_root": str(listing.root.resolve()), "n_images": len(listing.items),
                           "n_ignored": listing.n_ignored, "listing_sha256": listing.digest(), "batch_size": batch_size,
                           "compression": compression}
            row_bytes = int(np.prod(extractor.feature_shape)) * np.dtype(config.dtype).itemsize
            done = _images_done(store_path, name, split, locking) if not overwrite else 0
            writer.ensure_space(store_path, (len(listing.items) - done) * row_bytes + writer.CHUNK_BYTES, done)  # before anything is replaced
            start = writer.prepare_split(store_path, name, split, extractor.attrs, split_attrs, overwrite, locking, listing)
            if start is None:  # complete, found only after the full fingerprint check (e.g. other weights spelling)
                result.skipped = True
            else:
                result.resumed_from = start
                _run(extractor, listing, store_path, name, split, start, batch_size, progress, workers, locking, result)
                writer.finish(store_path, name, split, time.monotonic() - started, locking)
        info = store.FeatureStore(store_path, locking=locking).split_info(split, name)
        result.rows, result.failed = int(info["committed_rows"]), int(info["n_failed"])
        result.feature_shape = tuple(info["shape"][1:])
    result.seconds = time.monotonic() - started
    return result


def _images_done(path: Path, name: str, split: str, locking) -> int:
    """Images a partial split already holds (0 when there is none)."""
    if not path.exists():
        return 0
    with store.open_h5(path, "r", locking=locking) as f:
        return provenance.read_commit(f[name][split], f"{path}:/{name}/{split}").images_done if name in f and split in f[name] else 0


def _already_complete(path: Path, name: str, split: str, config: ExtractorConfig, listing: ImageListing, locking) -> bool:
    """True when the split is complete, made with this exact configuration and these images (no model needed to tell).

    A complete split whose images changed since is refused with a summary of the change.
    """
    if not path.exists():
        return False
    with store.open_h5(path, "r", locking=locking) as f:
        if name not in f or split not in f[name] or not f[name][split].attrs.get("complete"):
            return False
        attrs = provenance.attrs_of(f[name])
        if not _same_config(attrs, config):
            return False
        sg = f[name][split]
        commit = provenance.validate_split(sg, f"{path}:/{name}/{split}", attrs)  # a damaged split is named, not skipped
        provenance.validate_labels(sg["labels"][:commit.rows], len(provenance.plain(sg.attrs["class_names"])), f"{path}:/{name}/{split}")
        writer.refuse_changed_listing(sg, listing, split, name, path)
    return True


def _same_config(attrs: dict, config: ExtractorConfig) -> bool:
    """Whether a store's recorded extractor is this configuration (weights compared by how they were named)."""
    try:
        recorded = ExtractorConfig.from_attrs(attrs)
    except (KeyError, TypeError, ValueError):
        return False  # damaged provenance: the full check in prepare_split says what is wrong
    if config.layer is None and not attrs.get("layer_requested"):
        recorded = replace(recorded, layer=None)  # the default cut, recorded by its name
    if config.weights != "none":
        recorded = replace(recorded, seed=config.seed)  # the seed only matters for random weights
    return recorded == config


def _run(extractor: Extractor, listing: ImageListing, path: Path, name: str, split: str, start: int,
         batch_size: int, progress: bool, workers: int | None, locking, result: ExtractResult) -> None:
    from tqdm.auto import tqdm

    items = listing.items[start:]
    abs_paths = [str(listing.root / p) for p, _ in items]
    workers = min(8, (os.cpu_count() or 2) * 2) if workers is None else workers
    done = start
    bar = tqdm(total=len(listing.items), initial=start, unit="img", desc=f"{name}/{split}", disable=not progress, dynamic_ncols=True)
    batch_imgs, batch_labels, batch_paths, batch_failed = [], [], [], []

    def commit() -> None:
        feats = extractor(np.stack(batch_imgs)) if batch_imgs else None
        writer.append(path, name, split, feats, np.array(batch_labels, dtype=np.int32), batch_paths, batch_failed, done, locking)
        result.written += len(batch_labels)
        result.failures.extend(batch_failed)
        bar.update(len(batch_labels) + len(batch_failed))
        batch_imgs.clear(), batch_labels.clear(), batch_paths.clear(), batch_failed.clear()

    loop_start = time.perf_counter()
    try:
        for (rel, label), (_, img, reason) in zip(items, iter_decoded(abs_paths, extractor.config.image_size, workers, 4 * batch_size)):
            done += 1
            if img is None:
                logger.warning("skipped %s: %s", printable(rel), reason)
                batch_failed.append((rel, reason))
            else:
                batch_imgs.append(img)
                batch_labels.append(label)
                batch_paths.append(rel)
            # Every commit but the last writes exactly batch_size rows, so compressed stores (one chunk per batch) write
            # each chunk once; a long run of bad files is committed on its own once batch_size of them are pending.
            if len(batch_imgs) >= batch_size or (not batch_imgs and len(batch_failed) >= batch_size):
                commit()
        if batch_imgs or batch_failed:
            commit()
    finally:
        bar.close()
    result.images_per_second = (done - start) / max(time.perf_counter() - loop_start, 1e-9)
