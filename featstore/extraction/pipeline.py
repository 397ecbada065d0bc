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
import concurrent.futures
import itertools
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import ConfigError
from featstore.extraction import copies as augcopies
from featstore.images.decode import DaemonPool
from featstore.images.listing import ImageError, ImageListing, discover, load_image, printable
from featstore.models.extractor import Extractor, ExtractorConfig, default_store_name, require_jit_backend  # noqa: F401 (re-exported: the public API names them here)
from featstore.models.weights import sha256_file
from featstore.store import layout, writer
from featstore.store import reader as store

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")  # where decoding and the forward pass run; the listing, extractor and writer are the same
DECODE_TIMEOUT_S = 120.0  # for one image; a decode thread still stuck then is abandoned (it is a daemon)


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
    extractors: list = field(default_factory=list)  # every extractor group written (one per layer with several layers)
    jit_max_abs_diff: float | None = (
        None  # --jit: max abs difference of the compiled to the uncompiled model at start-up
    )
    engine: str = "local"  # local | ray
    startup_seconds: float = (
        0.0  # Ray: connecting, checks, and the wait for the first features (actors built); local: 0
    )
    augmented: object = None  # augcopies.CopiesResult when copies were asked for (--augment K), else None


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
    pools = [DaemonPool(workers)]
    pending: collections.deque = collections.deque()
    it = iter(paths)
    try:
        pending.extend((p, pools[-1].submit(load_image, p, size)) for p in itertools.islice(it, ahead))
        while pending:
            p, fut = pending.popleft()
            pending.extend((q, pools[-1].submit(load_image, q, size)) for q in itertools.islice(it, 1))
            try:
                img, reason = fut.result(timeout=DECODE_TIMEOUT_S), ""
            except ImageError as exc:
                img, reason = None, str(exc)
            except (
                concurrent.futures.TimeoutError
            ):  # a file that blocks when read (/proc, a hung network mount): skipped
                img, reason = (
                    None,
                    f"decoding took over {DECODE_TIMEOUT_S:.0f} s (a file that blocks when read?); skipped",
                )
                pools.append(
                    DaemonPool(workers)
                )  # the stuck thread keeps its worker: what has not started moves to fresh ones
                pending = collections.deque(
                    (q, pools[-1].submit(load_image, q, size) if f.cancel() else f) for q, f in pending
                )
            yield p, img, reason
    finally:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)


def extract(
    data: str | os.PathLike,
    split: str,
    store_path: str | os.PathLike = "features.h5",
    config: ExtractorConfig | None = None,
    *,
    name: str | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
    locking=None,
    compression: str = "none",
    jit: bool = False,
    engine: str = "local",
    ray_options=None,
    augment: int | None = None,
    augment_spec: str | None = None,
    augment_seed: int = 0,
) -> ExtractResult:
    """Extract features of ``data/split/<class>/*`` into ``store_path`` under ``/<name>/<split>``.

    With ``config.layers`` (several cut layers) one decode and one forward pass fill one extractor group per
    layer, named ``<name>@<layer>``, each with its own fingerprint. Re-running a complete split is a no-op
    (``overwrite=True`` replaces it, its augmented copies included); an interrupted run resumes from its last committed
    batch. ``augment=K`` also caches K augmented copies of the split (``augment_spec``, default ``flip,rotate=0.1,zoom=0.2``,
    seeded by ``augment_seed``; see :mod:`featstore.extraction.copies`), on the local engine. ``jit=True`` compiles the
    forward pass with XLA, after checking it against the uncompiled model (refused beyond ``extractor.JIT_TOLERANCE``).
    ``engine="ray"`` runs decoding and the forward pass on a Ray Data actor pool (``ray_options``, a
    :class:`featstore.extraction.ray.RayOptions`); rows, order, failure records and commits are the local engine's. Example::

        extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"))
        extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"), augment=5)
        extract("data/fashion_mnist", "train", "features.h5",
                ExtractorConfig(weights="hed-bsds500", layers=("block3_pool", "block4_pool", "block5_pool")))
    """
    started = time.monotonic()
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if compression not in writer.COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}; choose one of: {', '.join(writer.COMPRESSIONS)}")
    provenance.validate_name("split", split)
    copies = None if augment is None else augcopies.check_request(split, augment, augment_spec, augment_seed)
    if copies is not None and engine != "local":
        raise ConfigError(
            "--augment K runs on the local engine; extract the split with --engine ray first, then run the same "
            "command with --augment K and without --engine ray (the split is then skipped, only the copies are made)"
        )
    ray_engine = _engine(engine, ray_options)  # Ray missing or bad options: refused before any work
    if jit:
        require_jit_backend()
    config = config or ExtractorConfig()
    spec = config.backbone()
    config = config.validated(spec)
    base = name or default_store_name(config)
    names = [f"{base}@{lyr}" for lyr in config.layers] if config.layers else [base]
    for n in names:
        provenance.validate_name("extractor", n)
    configs = [replace(config, layer=lyr, layers=()) for lyr in config.layers] or [config]
    listing = discover(data, split)
    store_path = writer.check_writable(store_path)
    result = ExtractResult(str(store_path), names[0], split, ignored=listing.n_ignored, extractors=names, engine=engine)
    try:
        _extract_locked(
            listing,
            split,
            store_path,
            config,
            spec,
            names,
            configs,
            batch_size,
            overwrite,
            progress,
            workers,
            locking,
            compression,
            jit,
            ray_engine,
            result,
            started,
            copies,
        )
    finally:
        if ray_engine is not None:
            ray_engine.close()
    result.seconds = time.monotonic() - started
    return result


def _engine(engine: str, ray_options):
    """The Ray engine for engine="ray" (None for local); ConfigError for an unknown engine or Ray options without Ray."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "local":
        if ray_options is not None:
            raise ConfigError(
                "--address, --workers, --gpus-per-worker and --cpus-per-worker are options of --engine ray; add --engine ray, "
                "or leave them out"
            )
        return None
    from featstore.extraction.ray import RayEngine

    return RayEngine(ray_options)


def _extract_locked(
    listing,
    split,
    store_path,
    config,
    spec,
    names,
    configs,
    batch_size,
    overwrite,
    progress,
    workers,
    locking,
    compression,
    jit,
    ray_engine,
    result,
    started,
    copies,
) -> None:
    """extract()'s work under the writer lock (arguments as there; ``copies``: the checked --augment request or None)."""
    all_names, all_configs, built = list(names), list(configs), {}
    with writer.writer_lock(store_path, locking):
        if store_path.exists():  # links out of the store are refused before anything in it is read
            with store.open_h5(store_path, "r", locking=locking) as f:
                store.refuse_foreign(f, store_path)
        todo = [
            i
            for i in range(len(names))
            if overwrite or not _already_complete(store_path, names[i], split, configs[i], listing, locking)
        ]
        if not todo:
            result.skipped = True
            logger.debug(
                "%s in %s already complete; nothing to do", ", ".join(f"{n}/{split}" for n in names), store_path
            )
        else:
            names, configs = [names[i] for i in todo], [configs[i] for i in todo]
            if ray_engine is not None:  # connect and check the cluster before the model is built here
                result.startup_seconds = ray_engine.start(
                    listing.root, str(listing.root / listing.items[0][0]) if listing.items else None
                )
            extractor = built[tuple(names)] = _build(
                config, spec, configs, jit=jit and ray_engine is None, jit_batch=batch_size
            )  # Ray: the actors compile, the driver only describes
            result.fingerprint, result.jit_max_abs_diff = extractor.attrs["fingerprint"], extractor.jit_max_abs_diff
            split_attrs = {
                "class_names": listing.class_names,
                "source_root": str(listing.root.resolve()),
                "n_images": len(listing.items),
                "n_ignored": listing.n_ignored,
                "listing_sha256": listing.digest(),
                "batch_size": batch_size,
                "compression": compression,
                "jit": bool(jit),
                "engine": "ray" if ray_engine else "local",
            }  # how the run that started it computed
            row_bytes = (
                sum(int(np.prod(a["feature_shape"])) for _, a in extractor.outputs) * np.dtype(config.dtype).itemsize
            )
            if writer.interrupted(store_path, names, split, locking):
                writer.compact(
                    store_path, locking
                )  # resume from a clean copy: a killed writer's file state is never written on
            done = 0 if overwrite else min(_images_done(store_path, n, split, locking) for n in names)
            writer.ensure_space(
                store_path, (len(listing.items) - done) * row_bytes + writer.CHUNK_BYTES, done
            )  # before anything is replaced
            starts = [
                writer.prepare_split(store_path, n, split, attrs, split_attrs, overwrite, locking, listing)
                for n, (_, attrs) in zip(names, extractor.outputs)
            ]
            starts = [
                len(listing.items) if s is None else s for s in starts
            ]  # complete (found after the full check): nothing to add
            if min(starts) < len(listing.items):
                result.resumed_from = min(starts)
                _run(
                    extractor,
                    listing,
                    store_path,
                    names,
                    split,
                    starts,
                    batch_size,
                    progress,
                    workers,
                    locking,
                    result,
                    ray_engine,
                    jit,
                )
            for n in names:
                writer.finish(store_path, n, split, time.monotonic() - started, locking)
        if copies is not None:

            def make(todo: list[str]):
                return built.get(tuple(todo)) or _build(
                    config, spec, [all_configs[all_names.index(n)] for n in todo], jit=jit, jit_batch=batch_size
                )

            result.augmented = augcopies.write_copies(
                store_path,
                all_names,
                split,
                copies,
                make,
                batch_size=batch_size,
                compression=compression,
                progress=progress,
                workers=workers,
                locking=locking,
            )
        fs = store.FeatureStore(store_path, locking=locking)
        info = fs.split_info(split, result.extractor)
        result.rows, result.failed = int(info["committed_rows"]), int(info["n_failed"])
        result.feature_shape = tuple(info["shape"][1:])
        result.fingerprint = result.fingerprint or fs.metadata(result.extractor)["fingerprint"]


def _build(
    config: ExtractorConfig, spec, configs: list[ExtractorConfig], jit: bool = False, jit_batch: int = 32
) -> Extractor:
    """One extractor whose outputs are ``configs`` (the layers still to write), from one model."""
    return Extractor(
        replace(config, layer=None, layers=tuple(c.layer for c in configs)) if config.layers else config,
        spec,
        jit=jit,
        jit_batch=jit_batch,
    )


def _images_done(path: Path, name: str, split: str, locking) -> int:
    """Images a partial split already holds (0 when there is none)."""
    if not path.exists():
        return 0
    with store.open_h5(path, "r", locking=locking) as f:
        return (
            layout.read_commit(f[name][split], f"{path}:/{name}/{split}").images_done
            if name in f and split in f[name]
            else 0
        )


def _already_complete(
    path: Path, name: str, split: str, config: ExtractorConfig, listing: ImageListing, locking
) -> bool:
    """True when the split is complete, made with this exact configuration and these images (no model needed to tell).

    A complete split whose images changed since is refused with a summary of the change.
    """
    if not path.exists():
        return False
    with store.open_h5(path, "r", locking=locking) as f:
        complete = f[name][split].attrs.get("complete") if name in f and split in f[name] else None
        if not isinstance(complete, (bool, np.bool_)) or not complete:
            return False  # not there, not complete, or damaged: prepare_split's full check says which
        attrs = provenance.attrs_of(f[name])
        if not _same_config(attrs, config):
            return False
        sg = f[name][split]
        commit = layout.validate_split(sg, f"{path}:/{name}/{split}", attrs)  # a damaged split is named, not skipped
        layout.validate_labels(
            sg["labels"][: commit.rows], len(provenance.plain(sg.attrs["class_names"])), f"{path}:/{name}/{split}"
        )
        writer.refuse_changed_listing(sg, listing, split, name, path)
    return True


def _same_config(attrs: dict, config: ExtractorConfig) -> bool:
    """Whether a store's recorded extractor is this configuration (weights compared by how they were named)."""
    try:
        recorded = ExtractorConfig.from_attrs(attrs)
    except (KeyError, TypeError, ValueError):
        return False  # damaged provenance: the full check in prepare_split says what is wrong
    if attrs.get("model_sha256") and (
        not Path(config.model).is_file() or sha256_file(config.model) != attrs["model_sha256"]
    ):
        return False  # the model file changed: the full check says how
    if config.layer is None and not attrs.get("layer_requested"):
        recorded = replace(recorded, layer=None)  # the default cut, recorded by its name
    if config.weights != "none":
        recorded = replace(recorded, seed=config.seed)  # the seed only matters for random weights
    return recorded == config


def _run(
    extractor: Extractor,
    listing: ImageListing,
    path: Path,
    names: list[str],
    split: str,
    starts: list[int],
    batch_size: int,
    progress: bool,
    workers: int | None,
    locking,
    result: ExtractResult,
    engine=None,
    jit: bool = False,
) -> None:
    """Decode, run the model and commit batch by batch; group i gets a batch only past its own ``starts[i]``.

    The engine decides only where decoding and the forward pass run: locally (decode threads ahead of the model), or on
    Ray actors (``engine``, a :class:`featstore.extraction.ray.RayEngine`) whose features come back in order. Either way this
    one loop groups the rows into commits. Batch boundaries depend only on the listing, the decode outcomes and
    batch_size, so a group that committed one batch more than another before a kill is simply not written again.
    """
    from tqdm.auto import tqdm

    start = min(starts)
    items = listing.items[start:]
    abs_paths = [str(listing.root / p) for p, _ in items]
    workers = min(8, (os.cpu_count() or 2) * 2) if workers is None else workers
    done = start
    desc = f"{names[0]}/{split}" if len(names) == 1 else f"{len(names)} layers/{split}"
    bar = tqdm(total=len(listing.items), initial=start, unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    batch_rows, batch_labels, batch_paths, batch_failed = [], [], [], []
    if engine is None:  # local: payloads are decoded images, the model runs at commit time
        outcomes = (
            (i, img, reason)
            for i, (_, img, reason) in enumerate(
                iter_decoded(abs_paths, extractor.config.image_size, workers, 4 * batch_size)
            )
        )
        forward = lambda rows: extractor.features(np.stack(rows))  # noqa: E731
    else:  # Ray: payloads are each image's features, computed on the actors
        fingerprints = [a["fingerprint"] for _, a in extractor.outputs]
        outcomes = engine.outcomes(extractor.config, jit, batch_size, fingerprints, abs_paths, progress=False)
        forward = lambda rows: [np.stack([r[k] for r in rows]) for k in range(len(names))]  # noqa: E731

    def commit() -> None:
        feats = forward(batch_rows) if batch_rows else [None] * len(names)
        for n, f, s in zip(names, feats, starts):
            if done > s:
                writer.append(
                    path, n, split, f, np.array(batch_labels, dtype=np.int32), batch_paths, batch_failed, done, locking
                )
        result.written += len(batch_labels)
        result.failures.extend(batch_failed)
        bar.update(len(batch_labels) + len(batch_failed))
        batch_rows.clear(), batch_labels.clear(), batch_paths.clear(), batch_failed.clear()

    loop_start, first_done = time.perf_counter(), None
    try:
        for (rel, label), (_, payload, reason) in zip(items, outcomes):
            done += 1
            if first_done is None:
                first_done, first_at = done, time.perf_counter()
            if payload is None:
                logger.warning("skipped %s: %s", printable(rel), reason)
                batch_failed.append((rel, reason))
            else:
                batch_rows.append(payload)
                batch_labels.append(label)
                batch_paths.append(rel)
            # Every commit but the last writes exactly batch_size rows, so compressed stores (one chunk per batch) write
            # each chunk once; a long run of bad files is committed on its own once batch_size of them are pending.
            if len(batch_rows) >= batch_size or (not batch_rows and len(batch_failed) >= batch_size):
                commit()
        if batch_rows or batch_failed:
            commit()
    finally:
        bar.close()
        if engine is not None and hasattr(outcomes, "close"):
            outcomes.close()
    if engine is None or first_done is None or done <= first_done:
        result.images_per_second = (done - start) / max(time.perf_counter() - loop_start, 1e-9)
    else:  # Ray: steady state, after the first image arrived (actors built); the wait for it is start-up
        result.startup_seconds += first_at - loop_start
        result.images_per_second = (done - first_done) / max(time.perf_counter() - first_at, 1e-9)
