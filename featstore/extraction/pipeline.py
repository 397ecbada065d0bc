"""The extraction pipeline: image folders -> frozen conv base -> HDF5 store, batch by batch.

``extract`` opens its store once (:class:`~featstore.store.locking.StoreFile`, holding the writer's lock for the whole
command) and makes at most two passes of the one loop (:func:`featstore.extraction.loop.run_pass`): the split's
images, then (``augment=K``) their K augmented copies. Each pass is the same steps: one opening that surveys what the
store holds (complete, partial, nothing; :mod:`featstore.store.survey`), a compaction when a killed run left a partial
split, the disk-space check, one opening that prepares every extractor group, one opening per committed batch, one
that marks the split complete. Images are decoded by a bounded pool of threads ahead of the model (order kept) or on
Ray actors; the model runs as one traced function (no ``predict``-in-a-loop leak); an interrupted run resumes where
it stopped.

>>> from featstore import ExtractorConfig, extract
>>> result = extract("data/fashion_mnist", "train", "features.h5",
...                  ExtractorConfig(model="vgg16", weights="hed-bsds500"))   # doctest: +SKIP
>>> result.rows, result.failed                                               # doctest: +SKIP
(300, 0)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from featstore import provenance
from featstore.errors import MAX_BATCH, ConfigError, check_names, check_paths, choices_error, renamed_argument
from featstore.extraction import copies as augcopies
from featstore.extraction.local import LocalEngine
from featstore.extraction.loop import Engine, ListingRows, PassResult, Rows, run_pass
from featstore.extraction.same_numerics import RESUME_AGAIN, same_numerics
from featstore.images.decode import check_threads, iter_decoded  # noqa: F401 (iter_decoded re-exported: predict, finetune)
from featstore.images.listing import discover
from featstore.models.extractor import Extractor, ExtractorConfig, default_store_name  # noqa: F401 (re-exported: the public API names them here)
from featstore.models.forward import machine, numerics, on_gpu, require_jit_backend
from featstore.models.onnx_runtime import CACHE_FOLDER, check_runtime
from featstore.models.room import computed_elsewhere
from featstore.outputs import cache_dir
from featstore.provenance import AUGMENTED
from featstore.store.layout import check_root, group_names
from featstore.store.locking import StoreFile
from featstore.store.resume import discarded_note, resume_refusal
from featstore.store.space import check_writable, ensure_space
from featstore.store.survey import Survey, committed_rows, copies_done, split_done, survey
from featstore.store.writer import CHUNK_BYTES, COMPRESSIONS, SplitWriter, refuse_huge_rows

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")  # where decoding and the forward pass run; the listing, extractor and writer are the same


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
    left_out: list = field(default_factory=list)  # (path, reason): links not followed, entries whose stat() failed
    images_per_second: float = 0.0  # throughput of the decode-model-write loop (model building excluded)
    rate_seconds: float = 0.0  # the seconds images_per_second was measured over
    setup_seconds: float = 0.0  # the seconds before them: listing, checks, model built (Ray: connect, actors built)
    extractors: list = field(default_factory=list)  # every extractor group written (one per layer with several layers)
    jit_max_abs_diff: float | None = (
        None  # --jit: max abs difference of the compiled to the uncompiled model at start-up
    )
    engine: str = "local"  # local | ray
    startup_seconds: float = (
        0.0  # Ray: connecting, checks, and the wait for the first features (actors built); local: 0
    )
    augmented: object = None  # augcopies.CopiesResult when copies were asked for (--augment K), else None
    runtime: str = "keras"  # what ran the forward pass (config.runtime)
    runtime_max_abs_diff: float | None = None  # --runtime onnx: max abs difference to Keras at start-up
    discarded: int = 0  # overwrite=True on an interrupted split: the images it had done, extracted again (68 #7)
    discarded_note: str = ""  # what was said of them (store.resume.discarded_note)


def extract(
    data: str | os.PathLike,
    split: str,
    store: str | os.PathLike = "features.h5",
    config: ExtractorConfig | None = None,
    *,
    name: str | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = False,
    decode_threads: int | None = None,
    locking: bool | None = None,
    compression: str = "none",
    jit: bool = False,
    engine: str | Engine = "local",
    ray_options=None,
    augment: int | None = None,
    augment_spec: str | None = None,
    augment_seed: int = 0,
    workers: int | None = None,
    store_path: str | os.PathLike | None = None,
    purpose: str = "",
) -> ExtractResult:
    """Extract features of ``data/split/<class>/*`` into the HDF5 file ``store`` under ``/<name>/<split>``.

    With ``config.layers`` (several cut layers) one decode and one forward pass fill one extractor group per
    layer, named ``<name>@<layer>``, each with its own fingerprint. Re-running a complete split is a no-op
    (``overwrite=True`` replaces it, its augmented copies included); an interrupted run resumes from its last committed
    batch. ``decode_threads`` decode images ahead of the model on the local engine (default 2 per core, at most 8; 0:
    between model calls). ``augment=K`` also caches K augmented copies of the split (``augment_spec``, default
    ``flip,rotate=0.1,zoom=0.2``, seeded by ``augment_seed``; see :mod:`featstore.extraction.copies`), on the local
    engine. ``jit=True`` compiles the forward pass with XLA, after checking it against the uncompiled model (refused
    beyond ``forward.JIT_TOLERANCE``). ``engine="ray"`` runs decoding and the forward pass on a Ray Data actor pool
    (``ray_options``, a :class:`featstore.extraction.ray.RayOptions`; or pass an engine object, e.g.
    ``RayEngine(options)``, which the caller closes); rows, order, failure records and commits are the local engine's.
    ``locking`` overrides the process's HDF5 locking for this store. ``purpose`` is recorded as the ``purpose``
    attribute of an extractor group this call creates, in the same step (``finetune`` marks its frozen-layer caches
    ``finetune-cache``, which commands that pick the store's only extractor pass over). ``workers=`` and
    ``store_path=`` are the old names of ``decode_threads=`` and ``store=``. Example::

        extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"))
        extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"), augment=5)
        extract("data/fashion_mnist", "train", "features.h5",
                ExtractorConfig(weights="hed-bsds500", layers=("block3_pool", "block4_pool", "block5_pool")))
    """
    started = time.monotonic()
    check_paths(required=True, data=data)  # "" read ./<split>/ of the current folder
    check_paths(store=store, store_path=store_path)
    check_names("split", required=True, split=split)
    check_names("extractor", name=name)  # "" took the default name
    # ExtractorConfig refuses layer=""/layers=[""]/weights="" by those names; this is ExtractorConfig(cut_layers=("",))
    check_names("layer", cut_layers=config.cut_layers if config else ())
    decode_threads = renamed_argument("extract", "workers", "decode_threads", workers, decode_threads)
    store = renamed_argument("extract", "store_path", "store", store_path, store, default="features.h5")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size > MAX_BATCH:  # a 20-digit one reached h5py as an object attribute (a traceback)
        raise ConfigError(f"--batch-size must be at most {MAX_BATCH}, got {batch_size}")
    if decode_threads is not None:
        check_threads(decode_threads)  # before the split is made: a refusal later left an INCOMPLETE split
    if compression not in COMPRESSIONS:
        raise choices_error("compression", compression, COMPRESSIONS)
    provenance.validate_name("split", split)
    copies = None if augment is None else augcopies.check_request(split, augment, augment_spec, augment_seed)
    if copies is not None and getattr(engine, "name", engine) != "local":
        raise ConfigError(
            "--augment K runs on the local engine; extract the split with --engine ray first, then run the same "
            "command with --augment K and without --engine ray (the split is then skipped, only the copies are made)"
        )
    runner, owned = _engine(engine, ray_options, decode_threads)  # Ray missing or bad options: refused before any work
    try:
        if jit:
            require_jit_backend()
        config = config or ExtractorConfig()
        check_runtime(config.runtime, config.mixed_precision, jit)  # Ray: the driver exports, each actor loads its file
        spec = config.backbone()
        config = config.validated(spec)
        base = name or default_store_name(config, spec)
        names = [f"{base}@{lyr}" for lyr in config.layers] if config.layers else [base]
        known = group_names(StoreFile(store, locking)) if any("," in n for n in names) else ()  # kept name (73 #1)
        for n in names:
            provenance.validate_name("extractor", n, known)
        listing = discover(data, split)
        _refuse_store_inside(store, Path(listing.root) / split)
        file = StoreFile(check_writable(store), locking)
        result = ExtractResult(
            str(file.path),
            names[0],
            split,
            ignored=listing.n_ignored,
            left_out=list(listing.skipped_links),  # each logged as a warning by the listing
            extractors=names,
            engine=runner.name,
            runtime=config.runtime,
        )
        how = PassOptions(batch_size, overwrite, progress, compression, jit, purpose)
        job = _Extraction(file, listing, config, spec, names, runner, how)
        with file.lock(split, names, copies is not None):  # one writer per store, the whole command (recorded: check)
            job.write_split(result, started)
            if copies is not None:
                result.augmented = job.write_copies(copies)
    finally:
        if owned:
            runner.close()
    result.seconds = time.monotonic() - started
    return result


def _refuse_store_inside(store, split_dir: Path) -> None:
    """Refuse a store inside the image folder it reads: its runs folder (with the charts `runs show` draws), report and
    caches beside it would be listed by the next extract of the split as a class of images."""
    folder = split_dir.resolve()
    if folder in Path(store).resolve().parents:
        raise ConfigError(
            f"--store {store} is inside the image folder {split_dir} it reads: its runs folder, charts and report would "
            f"become images of the dataset at the next extract. Put the store outside the dataset, e.g. "
            f"{split_dir.parent.parent / Path(store).name}"
        )


def _engine(engine, ray_options, decode_threads: int | None) -> tuple[Engine, bool]:
    """The engine to run on, and whether extract made it (and closes it); ConfigError for an unknown name or Ray options
    without Ray."""
    if not isinstance(engine, str):
        if ray_options is not None:
            raise ConfigError("ray_options are for engine='ray'; an engine object carries its own options")
        return engine, False
    if engine not in ENGINES:
        raise choices_error("engine", engine, ENGINES)
    if engine == "local":
        if ray_options is not None:
            raise ConfigError(
                "--address, --workers, --gpus-per-worker and --cpus-per-worker are options of --engine ray; add --engine ray, "
                "or leave them out"
            )
        return LocalEngine(decode_threads), True
    from featstore.extraction.ray import RayEngine

    return RayEngine(ray_options), True


@dataclass(frozen=True)
class PassOptions:
    """How every pass of one extract call writes."""

    batch_size: int = 32  # images per model call and per committed batch
    overwrite: bool = False  # replace the split (and its copies) instead of resuming or skipping it
    progress: bool = False  # a tqdm bar
    compression: str = "none"  # none | lzf | gzip
    jit: bool = False  # XLA-compiled forward pass
    purpose: str = ""  # the `purpose` attribute of a group this call creates ("" = none)


class _Extraction:
    """One extract() call after its checks: the store (locked by the caller), the images, the configuration, the engine."""

    def __init__(self, file: StoreFile, listing, config: ExtractorConfig, spec, names: list[str], engine, how):
        self.file, self.listing, self.config, self.spec, self.names = file, listing, config, spec, names
        self.engine, self.how = engine, how
        self.configs = dict(zip(names, config.per_layer()))  # each group's own (one-layer) configuration
        self.built: dict[tuple, Extractor] = {}

    def extractor(self, names: list[str], jit: bool) -> Extractor:
        """One extractor whose outputs are the groups ``names`` (the layers still to write), from one model; built once."""
        if tuple(names) not in self.built:
            c = self.config
            if c.layers:
                c = replace(c, cut_layers=tuple(self.configs[n].layer for n in names))
            cache = cache_dir(self.file.path) / CACHE_FOLDER
            built = Extractor(c, self.spec, jit=jit, jit_batch=self.how.batch_size, runtime_cache=cache)
            with computed_elsewhere() if self.engine.name != "local" else contextlib.nullcontext():  # Ray's: theirs
                built.check_traced()  # before the store is written: a refused model left its group there (attack 44 #3)
            self.built[tuple(names)] = built
        return self.built[tuple(names)]

    def write_split(self, result: ExtractResult, started: float) -> None:
        """The split's pass: skipped when complete (same configuration, same images), resumed when partial."""
        path, split, listing, how = self.file.path, result.split, self.listing, self.how

        def done(f, name: str) -> bool:
            return split_done(f, path, name, split, self.configs[name].matches, listing)

        with self.file.read_if_exists() as f:  # one opening: every check before any work
            if f is not None:
                check_root(f, path)  # links out of it, or not a featstore store: refused before anything is read
            found = survey(f, path, self.names, split, done, how.overwrite)
        result.discarded = found.discarded  # said below before they are gone: a resume would have kept them (68 #7)
        if not found.todo:
            result.skipped = True
            logger.debug(
                "%s in %s already complete; nothing to do", ", ".join(f"{n}/{split}" for n in self.names), path
            )
            summary = found.summary
        else:
            local = self.engine.name == "local"
            if not local:  # connect and check the cluster before the model is built here
                result.startup_seconds = self.engine.start(
                    listing.root, str(listing.root / listing.items[0][0]) if listing.items else None
                )
            # Ray: the actors compile (--jit), the driver only describes
            extractor = self.extractor(found.todo, jit=how.jit and local)
            result.fingerprint, result.jit_max_abs_diff = extractor.attrs["fingerprint"], extractor.jit_max_abs_diff
            result.runtime_max_abs_diff = extractor.runtime_max_abs_diff
            split_attrs = {
                "class_names": listing.class_names,
                "source_root": str(listing.root.resolve()),
                "n_images": len(listing.items),
                "n_ignored": listing.n_ignored,
                "listing_sha256": listing.digest(),
                "batch_size": how.batch_size,
                "compression": how.compression,
                "jit": bool(how.jit),
                "runtime": self.config.runtime,  # checked against Keras at start-up: recorded, not fingerprinted
                **numerics(self.config.runtime),  # oneDNN on or off: recorded, a resume under the other refused
                **machine(),  # said where a resume computes otherwise (same_numerics)
                "engine": self.engine.name,
            }  # how the run that started it computed
            if found.discarded:  # a resume is promised only where this command without --overwrite would run it (70 #5)
                refused = resume_refusal(found.stored, split_attrs, found.fixed)
                result.discarded_note = discarded_note(found.discarded, split, refused)
                logger.warning("%s: %s", path, result.discarded_note)
            writer = SplitWriter(self.file, found.todo, split)
            wrote = self._pass(writer, found, extractor, split_attrs, ListingRows(listing), how.overwrite, listing)
            if wrote is not None:
                result.resumed_from, result.written, result.failures = writer.start, wrote.written, wrote.failures
                result.images_per_second, result.rate_seconds = wrote.images_per_second, wrote.rate_seconds
                result.startup_seconds += wrote.first_wait
                result.setup_seconds = max(0.0, time.monotonic() - started - wrote.rate_seconds)
            summary = writer.finish(time.monotonic() - started, report=self.names[0])
        result.rows, result.failed = int(summary["committed_rows"]), int(summary["n_failed"])
        result.feature_shape = tuple(summary["shape"][1:])
        result.fingerprint = result.fingerprint or summary["extractor_fingerprint"]

    def write_copies(self, req: augcopies.CopiesRequest) -> augcopies.CopiesResult:
        """The pass of the split's augmented copies, after the split itself (skipped when complete, resumed when partial)."""
        started, out = time.monotonic(), augcopies.CopiesResult()
        path, split = self.file.path, self.listing.split
        key = f"{split}/{AUGMENTED}"
        with self.file.open("r") as f:  # one opening: every group's split rows and every check before any work
            plains = {n: committed_rows(f, path, n, split) for n in self.names}  # each its own (attack 52 #4)
            wants = {n: self._copies_want(req, split, plains[n][2], len(plains[n][0])) for n in self.names}
            found = survey(f, path, self.names, key, lambda f, n: copies_done(f, path, n, split, wants[n]))
        if not found.todo:
            out.skipped, out.rows = True, req.copies * len(plains[self.names[0]][0])
            return out
        for n in found.todo:  # every group's split as it records it, not only the first's
            augcopies.refuse_made_otherwise(plains[n][2], {**wants[n], "engine": "local"}, split, n, path)
        layers = {n: self.configs[n].layer for n in found.todo}
        augcopies.refuse_other_rows({n: plains[n][:2] for n in found.todo}, layers, split, path)
        rel, labels, _ = plains[found.todo[0]]
        want = wants[found.todo[0]]
        extractor = self.extractor(found.todo, jit=self.how.jit)
        rows = augcopies.CopyRows(req, Path(want["source_root"]), rel, labels, extractor.config.image_size)
        writer = SplitWriter(self.file, found.todo, key, extra=("copy",))
        wrote = self._pass(writer, found, extractor, want, rows, overwrite=False, plain=split)
        out.resumed_from = writer.start
        if wrote is not None:
            out.written = wrote.written
        summary = writer.finish(time.monotonic() - started)
        out.rows, out.failed = int(summary["committed_rows"]), int(summary["n_failed"])
        return out

    def _copies_want(self, req: augcopies.CopiesRequest, split: str, plain_attrs: dict, rows: int) -> dict:
        """The attributes of the copies of a split whose attributes are ``plain_attrs`` (``rows`` committed rows)."""
        how = self.how
        want = augcopies.copies_attrs(req, split, plain_attrs, rows, how.batch_size, how.compression, how.jit)
        want["runtime"] = self.config.runtime  # a resume with another runtime or oneDNN is refused
        return {**want, **numerics(self.config.runtime), **machine()}

    def _pass(
        self,
        writer: SplitWriter,
        found: Survey,
        extractor,
        split_attrs: dict,
        rows: Rows,
        overwrite: bool,
        listing=None,
        plain: str | None = None,
    ) -> PassResult | None:
        """The steps every pass shares: compact after a kill, check the space, prepare every group (one opening), check
        that this run computes the rows there as they were (a resume's; ``plain``: the split copies augment), then the
        loop from the first image some group lacks (None: nothing was left to write)."""
        row_bytes = (
            sum(int(np.prod(a["feature_shape"])) for _, a in extractor.outputs)
            * np.dtype(extractor.config.dtype).itemsize
        )
        for name, (_, a) in zip(writer.names, extractor.outputs):
            refuse_huge_rows(a["feature_shape"], a["dtype"], name)  # before anything is written
        refuse_huge_batches(row_bytes, self.how.batch_size, writer.names)
        if found.interrupted:
            writer.compact(overwrite)  # resume from a clean copy: a killed writer's file state is never written on
        need = (rows.total - found.done) * row_bytes + CHUNK_BYTES
        ensure_space(self.file.path, need, found.done)  # before anything is replaced
        can_check = functools.cache(self._can_check)  # (asked once: its GPU line said once)
        if plain and can_check():  # copies of the split's kind only, checked before any group is made
            self.engine.bind(extractor, jit=self.how.jit, batch_size=self.how.batch_size)
            self._same_numerics(writer.names, plain, split_attrs, None, copies=True)  # (attack 49 #3)
        marks = {"purpose": self.how.purpose} if self.how.purpose else {}  # written with a group, in its creation
        writer.prepare([{**a, **marks} for _, a in extractor.outputs], split_attrs, overwrite, listing)
        if writer.start >= rows.total:
            return None
        self.engine.bind(extractor, jit=self.how.jit, batch_size=self.how.batch_size)
        names = writer.names
        if any(writer.starts) and can_check():  # a resume computes as its rows were (attack 49 #1)
            self._same_numerics(names, writer.key, split_attrs, rows.transform(0))
        desc = f"{names[0]}/{writer.key}" if len(names) == 1 else f"{len(names)} layers/{writer.key}"
        return run_pass(
            writer, rows, self.engine, batch_size=self.how.batch_size, progress=self.how.progress, desc=desc
        )

    def _can_check(self) -> bool:
        """Whether a resume's rows can be checked bit for bit here: on the local engine (Ray's actors group images by
        paths), not on a GPU (cuDNN picks its algorithms per process: said, not refused; review #2)."""
        if self.engine.name != "local":
            return False
        if on_gpu():
            logger.info("computing on a GPU: the rows already there are not checked against this run's bits")
            return False
        return True

    def _same_numerics(self, names: list[str], key: str, split_attrs: dict, transform, copies: bool = False) -> None:
        """:func:`~featstore.extraction.same_numerics.same_numerics` of ``key`` by the bound engine."""
        root = Path(split_attrs["source_root"])
        again = (  # a fine-tuning's cache has no --overwrite of its own (review #7): its group goes
            f"delete the group so that the fine-tuning caches it again here (del h5py.File({str(self.file.path)!r}, "
            f"'a')[{names[0]!r}])"
            if self.how.purpose
            else RESUME_AGAIN
        )
        args = (self.engine, self.how.batch_size, transform, copies, again)
        same_numerics(self.file, names, key, root, *args, max_batch_bytes=MAX_BATCH_BYTES)


MAX_BATCH_BYTES = 4 << 30  # the features of one batch: the forward pass holds them (and more) at once


class HugeBatch(ConfigError):
    """A batch whose features pass :data:`MAX_BATCH_BYTES`; ``fits``: the largest batch that does not."""

    def __init__(self, fits: int, line: str):
        super().__init__(line)
        self.fits = fits


def refuse_huge_batches(row_bytes: int, batch_size: int, names: list[str]) -> None:
    """Refuse, before any image is read, a batch whose features alone pass :data:`MAX_BATCH_BYTES`: a 16 KB model
    upsampling 32 px images 200 times (164 MB a row) asked TensorFlow for 5.2 GB a batch of 32 and ended in a 71-line
    ResourceExhaustedError (attack 24)."""
    if row_bytes * batch_size > MAX_BATCH_BYTES:
        fits = max(1, MAX_BATCH_BYTES // max(row_bytes, 1))
        raise HugeBatch(
            fits,
            f"one row of {', '.join(names)} features is {row_bytes / 2**20:,.1f} MiB, so a batch of {batch_size} "
            f"images holds {row_bytes * batch_size / 2**30:,.1f} GiB of features, over {MAX_BATCH_BYTES >> 30} GiB: "
            f"give --batch-size {fits} or less, cut at another --layer, add --pooling avg or use a smaller --image-size",
        )
