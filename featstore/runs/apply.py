"""What applying a run to images needs: the run's extractor rebuilt from its provenance, decoded batches, a split's images.

The extractor is rebuilt from the recorded model, layer, input size, pooling, dtype and weights; the weights
found on this machine must have the recorded digest (and the whole extractor the recorded fingerprint),
otherwise the run is refused. Permission to load a legacy ``.h5`` model file (which can run code) comes only
from the caller (``trust_model=True``), never from the run's record: ``run.json`` can be edited to name any file.
A fine-tuned run takes the images themselves: :func:`split_images` gives a store split's images in store row
order, checked against the folder (same classes, same files as extracted).

>>> ApplyOptions().trust_model
False
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError, DataError, StoreError, WeightsError
from featstore.images.listing import discover, load_image, printable
from featstore.runs.files import BrokenRunError
from featstore.store.nonfinite import LARGE_FEATURE
from featstore.store.reader import FeatureStore

logger = logging.getLogger(__name__)


def rebuild_extractor(
    attrs: dict,
    weights: str | None = None,
    trust_model: bool = False,
    runtime: str = "keras",
    runtime_cache: Path | None = None,
    *,
    of: str | None = None,
):
    """The Extractor a store's provenance describes; refuses weights whose digest differs from the record.

    ``trust_model`` (the caller's, never the record's ``trust_model``) allows a legacy ``.h5`` model file. ``of``:
    whose features the messages speak of, the run's when None (``similar`` rebuilds a store's extractor: no run).
    ``runtime="onnx"``: once the rebuilt Keras extractor passed those checks, its cut runs with ONNX Runtime (exported
    into, or loaded from, the folder ``runtime_cache`` and checked against Keras). Example::

        ex = rebuild_extractor(rec["extractor_attrs"], weights="my.weights.h5")
    """
    from featstore.models.extractor import Extractor, ExtractorConfig
    from featstore.models.hub_fetch import NotDownloaded
    from featstore.models.saved import UntrustedModel

    run, of = of is None, of or "the run"
    if not attrs.get("model_file") and int(attrs.get("input_size") or 0) <= 0:  # write_arrays: no backbone to rebuild
        raise ConfigError(
            f"the features of {of} were not made from images by a model featstore can rebuild (model "
            f"{printable(str(attrs.get('model')))!r}, input size {attrs.get('input_size')}); apply it to stored features "
            f"(`featstore runs evaluate`) instead"
        )
    # a saved model or KerasHub preset: --weights PATH names the model file (or a local preset folder) when it moved
    saved = bool(attrs.get("model_file") or attrs.get("hub_preset"))
    if (
        attrs.get("hub_preset")
        and weights
        and not (str(weights).startswith("hub:") or Path(weights).expanduser().is_dir())
    ):
        # a file here was read as a saved model: a preset's model.weights.h5 was refused as a legacy .h5 "model" with
        # advice to pass --trust-model (which would load a legacy .h5 model, code and all)
        raise ConfigError(
            f"--weights {weights}: the features of {of} were made with the KerasHub preset {attrs['hub_preset']}; "
            f"--weights names a local copy of that preset folder (config.json, model.weights.h5, "
            f"image_converter.json), not a file"
        )
    try:
        config = ExtractorConfig.from_attrs(attrs, None if saved else weights, model_file=weights if saved else None)
        # the caller's trust_model, never the record's: a crafted run.json may say trust_model=true
        ex = Extractor(dataclasses.replace(config, trust_model=trust_model))
    except (NotDownloaded, UntrustedModel):
        raise  # already name --weights hub:<preset> and --weights PATH/, or --trust-model and re-saving as .keras
    except (WeightsError, ConfigError) as exc:
        what = (
            f"the model file {attrs['model_file']}"
            if attrs.get("model_file")
            else f"the KerasHub preset {attrs['hub_preset']}"
            if saved
            else f"weights {attrs.get('weights')}"
        )
        give = "a local copy of that preset folder" if attrs.get("hub_preset") else "that file"
        raise type(exc)(
            f"{str(exc).rstrip('.')}. The features of {of} were made with {what} (file sha256 "
            f"{str(attrs.get('weights_sha256') or '-')[:12]}); pass --weights PATH to give {give}."
        ) from exc
    provenance.refuse_other_weights(
        ex.attrs, attrs, of, "predict" if run else "extract the image", "was fitted on" if run else "was made with"
    )
    provenance.refuse_other_features(
        ex.attrs,
        attrs,
        of,
        f"{'Predict' if run else 'Extract it'} with the featstore, libraries and weights {of} was made with.",
    )
    if runtime != "keras":
        if ex.config.mixed_precision:  # use_runtime's message would name --mixed-precision, which predict has not
            raise ConfigError(
                f"--runtime {runtime} computes in float32, and the run's features were computed in mixed float16 "
                f"(extract --mixed-precision): leave out --runtime (or give --runtime keras)"
            )
        ex.use_runtime(runtime, runtime_cache)
    return ex


@dataclass
class ApplyOptions:
    """The caller's options for applying runs (one per command); runs of one extractor share it rebuilt once."""

    find: Callable | None = None  # run id -> (record, folder), verified: an ensemble's members
    weights: str | None = None  # --weights: replaces a recorded weights *file* (moved or copied)
    trust_model: bool = False  # the caller's permission for a legacy .h5 model file, never the record's
    workers: int = 2  # image decoding threads
    # --runtime: what runs a rebuilt extractor's forward pass (onnx: ONNX Runtime, checked); None: the one the store
    # recorded for those features (recorded_runtime)
    runtime: str | None = "keras"
    runtime_cache: Path | None = None  # where --runtime onnx keeps its exported cuts (<store>.cache/onnx)
    store: Path | None = None  # the store file whose recorded runtimes runtime=None follows
    _extractors: dict = field(default_factory=dict, repr=False)  # fingerprint -> Extractor

    def extractor(self, attrs: dict):
        """The extractor of ``attrs`` (rebuilt once per fingerprint); --weights replaces only a recorded weights file."""
        fp = attrs["fingerprint"]
        if fp not in self._extractors:
            override = (
                self.weights if attrs.get("weights_source") in ("file", "model-file", "keras-hub-preset") else None
            )
            runtime = self.runtime or recorded_runtime(self.store, fp)
            try:
                self._extractors[fp] = rebuild_extractor(attrs, override, self.trust_model, runtime, self.runtime_cache)
            except ConfigError as exc:
                # the caller's own --runtime, or Keras: nothing was chosen for them to be told about
                if self.runtime is not None or runtime == "keras":
                    raise
                raise ConfigError(
                    f"{exc}\n(The run's features were extracted with --runtime {runtime}, so predict runs them that "
                    f"way; give --runtime keras to run them with Keras.)"
                ) from exc
        return self._extractors[fp]


def recorded_runtime(store: Path | None, fingerprint: str) -> str:
    """The runtime a run's extractor runs with when the caller names none: ``onnx`` when a split of the store holding
    features of ``fingerprint`` was extracted with ``--runtime onnx`` (recorded per split), else ``keras`` (also where
    there is no store to read). Example::

        recorded_runtime(Path("features.h5"), rec.fingerprint)       # "onnx" after extract --runtime onnx
    """
    if store is None or not Path(store).is_file():
        return "keras"
    try:
        fs = FeatureStore(store)
        found = {
            str(fs.split_info(split, name).get("runtime", "keras"))
            for name in fs.extractors(caches=False)
            if fs.metadata(name).get("fingerprint") == fingerprint
            for split in fs.splits(name)
        }
    except (StoreError, OSError):
        return "keras"  # the run's own checks name a damaged store when they read it
    runtime = "onnx" if "onnx" in found else "keras"
    logger.info("the run's features were extracted with --runtime %s: predicting with it", runtime)
    return runtime


class ImageBatch:
    """Decoded images of one batch at the largest side any model needs; another side is decoded again from the file."""

    def __init__(self, items: list[tuple[str, np.ndarray]]):
        self.items = items  # (path, image) pairs
        self.failed: dict[int, str] = {}  # row -> why it has no prediction (its features are not finite)
        self._at: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def at(self, size: int) -> np.ndarray:
        """The batch as ``(B, size, size, 3)`` uint8."""
        if size not in self._at:
            self._at[size] = np.stack([img if img.shape[0] == size else load_image(p, size) for p, img in self.items])
        return self._at[size]

    def finite(self, features: np.ndarray, extractor: str) -> np.ndarray:
        """Which rows of ``features`` are all finite; the others are marked failed, the extractor named as the cause
        (a model that overflows on an image, or damaged weights), not the fitted classifier."""
        ok = np.isfinite(np.asarray(features).reshape(len(features), -1)).all(axis=1)
        for i in np.flatnonzero(~ok):
            self.failed.setdefault(
                int(i),
                f"the extractor {printable(extractor)} gave NaN or infinite features for this image (a problem of the "
                f"model or its weights, e.g. an overflow on this image; not of the fitted classifier): check the image "
                f"and the model's weights",
            )
        return ok

    def classified(self, features: np.ndarray, extractor: str, proba: Callable, k: int) -> np.ndarray:
        """``proba`` (a fitted model's, refusing with BrokenRunError) of the rows of ``features`` that :meth:`finite`
        keeps; a failed row gets ``1/k`` per class. Finite features can still be too large for the model's arithmetic
        (``3e38`` overflows a scaler to inf), and the batch's refusal blamed the fit for every image: when the model
        works on the other rows (or, alone, on a zero row) the rows it refuses whose features are over
        :data:`LARGE_FEATURE` are marked failed, the extractor named; any other refusal is the fit's (BrokenRunError).
        """
        out, rows = np.full((len(features), k), 1.0 / k), np.flatnonzero(self.finite(features, extractor))
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, not printed as a warning
                out[rows] = proba(features[rows]) if len(rows) else out[rows]
            return out
        except BrokenRunError:
            alone = {int(i): _or_none(proba, features[i : i + 1]) for i in rows}
            huge = {i for i, p in alone.items() if p is None and np.abs(features[i]).max() > LARGE_FEATURE}
            refused = sum(p is None for p in alone.values())
            if refused > len(huge) or (refused == len(alone) and _or_none(proba, np.zeros_like(features[:1])) is None):
                raise  # features of a usual size refused, or the model refuses even zeros: the fit's message stands
        for i, p in alone.items():
            if p is not None:
                out[i] = p[0]
                continue
            self.failed.setdefault(
                i,
                f"the extractor {printable(extractor)} gave features this run's model cannot use for this image "
                f"(largest |feature| {float(np.abs(features[i]).max()):.3g}: an overflow in the model or its weights; "
                f"the fitted classifier works on other features): check the image and the model's weights",
            )
        return out


def _or_none(proba: Callable, X: np.ndarray) -> np.ndarray | None:
    """``proba(X)``, or None when the model refuses those features (BrokenRunError)."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return proba(X)
    except BrokenRunError:
        return None


@dataclass
class SplitImages:
    """The images of one store split, in store row order: what a fine-tuned run trains or is evaluated on."""

    root: Path
    paths: list[str]  # relative to root, as the store lists them
    labels: np.ndarray


def split_images(fs: FeatureStore, name: str, split: str, root: Path, class_names: list[str]) -> SplitImages:
    """The store's rows of ``split``, checked against the folder: same classes, same files (size and mtime) as extracted."""
    listing = discover(root, split)
    if listing.class_names != class_names:
        raise DataError(
            f"the class folders of {printable(str(root / split))} are {listing.class_names}, but the run was fitted on "
            f"{class_names}; fine-tune with the data the store was extracted from (--data ROOT)"
        )
    # the recorded digest first (one hash of today's listing): the stored listing, 10⁶ tuples at a million images, is
    # read only when the two differ, to say what changed (as extract's resume check does)
    same = provenance.plain(fs.split_info(split, name).get("listing_sha256")) == listing.digest()
    change = None if same else listing.diff(fs.listing(split, name))
    if change:
        raise DataError(
            f"the images of {printable(str(root / split))} changed since the store was extracted ({change.summary()}); "
            f"re-run `featstore extract --split {split}` (and fit the dense head again) so phase B sees phase A's images"
        )
    return SplitImages(root, fs.paths(split, name), fs.labels(split, name))


def image_batches(
    images: SplitImages, size: int, batch_size: int, order: np.ndarray | None, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(uint8 images, labels)`` batches of ``size`` in ``order`` (row order when None); an unreadable image is a DataError."""
    from featstore.images.decode import iter_decoded

    order = np.arange(len(images.paths)) if order is None else order
    full = [str(images.root / images.paths[i]) for i in order]
    batch: list[np.ndarray] = []
    for k, (path, img, reason) in enumerate(iter_decoded(full, size, workers, 4 * batch_size)):
        if img is None and reason == "out of memory while decoding":  # the process's memory, not the image (46 #2)
            raise DataError(
                f"this process ran out of memory while decoding {printable(path)} (with {batch_size} images a batch); "
                f"the image may be fine: run with more memory, or a smaller --batch-size where the command takes one"
            )
        if img is None:
            raise DataError(
                f"{printable(path)} was extracted into the store but cannot be read now ({reason}); restore it, or "
                f"re-run `featstore extract` so the store and the folder agree"
            )
        batch.append(img)
        if len(batch) == batch_size or k == len(full) - 1:
            x, idx = np.stack(batch), order[k + 1 - len(batch) : k + 1]
            batch = []
            yield x, images.labels[idx]


def split_proba(images: SplitImages, size: int, workers: int, proba_of) -> np.ndarray:
    """``proba_of(uint8 batch)`` over a split's images, in store row order, as one array."""
    return np.concatenate([proba_of(x) for x, _ in image_batches(images, size, 64, None, workers)])
