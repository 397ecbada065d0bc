"""The cached cut of a fine-tuning: the frozen layers' output, extracted once into the store and reused.

Without augmentation the layers below ``--unfreeze-from`` give the same output every epoch, so ``featstore finetune``
extracts it into the store as the group ``<model>@<layer below>`` (a normal extractor group: resumable, checked,
reused by later fine-tunings) and trains only the layers above on it. The group is marked ``purpose=finetune-cache``
in the same step that creates it, so a fine-tuning killed at any later moment leaves a marked group, which commands
that pick the store's only extractor (``fit``, ``export``, ``sweep``) pass over. A group an older featstore's
interrupted fine-tuning left unmarked is marked when a fine-tuning resumes it.

>>> extract_command(ExtractorConfig("vgg16", 150, "block5_conv2", weights="imagenet"), "data", "train",
...                 "features.h5", "vgg16@block5_conv2")                                   # doctest: +SKIP
'featstore extract --data data --split train --store features.h5 --name vgg16@block5_conv2 --model vgg16 ...'
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.experiments.streaming import BLOCK_FRACTION, check_budget_holds_chunks
from featstore.images.listing import printable
from featstore.store.metadata import delete_group_command
from featstore.units import format_bytes

logger = logging.getLogger(__name__)


@dataclass
class Cached:
    """The frozen layers' output, computed once: the store group, and its train/validation arrays where they fit."""

    group: str
    arrays: dict  # split -> (X, y), for the splits loaded whole; the others are streamed from the store
    made: bool = False  # this fine-tuning created or completed the group (the store grew)
    fs: object = None  # the FeatureStore the streamed splits are read from
    budget: int | None = None  # --memory-budget in bytes: a split larger than this is streamed
    users: bool = False  # the group is the user's own extraction of that cut (unmarked, complete), read, not a cache

    def batches(self, split: str, batch_size: int, order: np.ndarray | None = None, seed: int = 0):
        """Mini-batches ``(X float32, y)`` of a cached split, every one ``batch_size`` rows but the last. Loaded: rows
        in ``order`` (the image path's seeded permutation; None: stored order). Streamed: blocks of whole chunks within
        a quarter of the budget, in a seeded random order with their rows shuffled when ``order`` is given (reading
        single rows at random from HDF5 is very slow), so that order is not the image path's."""
        if split in self.arrays:
            X, y = self.arrays[split]
            rows = np.arange(len(y)) if order is None else order
            for i in range(0, len(y), batch_size):
                idx = rows[i : i + batch_size]
                yield X[idx].astype(np.float32), y[idx]
            return
        blocks = self.fs.iter_batches(
            split, self.group, max_bytes=self.budget // BLOCK_FRACTION, shuffle=order is not None, seed=seed
        )
        for X, y in rebatch(blocks, batch_size):
            yield X.astype(np.float32, copy=False), y


def cache_group(fs, name: str, layer: str) -> str:
    """The group the frozen layers below ``layer`` of extractor ``name`` are cached in: ``<base>@<layer>``; of a group
    named with a comma before commas were refused, a name extract takes (``cnn,v2@block4_pool`` was refused, a name the
    user never gave: attack 73 #5), unless the store holds that cache already.

    >>> class Fs:
    ...     def extractors(self): return ["cnn,v2", "old,one", "old,one@block4_pool"]
    >>> cache_group(Fs(), "vgg16", "block4_pool"), cache_group(Fs(), "cnn,v2", "block4_pool")
    ('vgg16@block4_pool', 'cnn_v2@block4_pool')
    >>> cache_group(Fs(), "old,one", "block4_pool")
    'old,one@block4_pool'
    """
    group = f"{name.split('@')[0]}@{layer}"
    return group.replace(",", "_") if "," in group and group not in fs.extractors() else group


def rebatch(blocks, batch_size: int):
    """``(X, y)`` blocks of any lengths cut into batches of ``batch_size`` rows (the last may be shorter), so that an
    epoch has as many steps streamed as loaded.

    >>> [len(y) for _, y in rebatch(((np.zeros(n), np.zeros(n)) for n in (3, 2, 4)), 4)]
    [4, 4, 1]
    """
    pending, have = [], 0
    for X, y in blocks:
        i = 0
        if have:
            take = min(batch_size - have, len(y))
            pending.append((X[:take], y[:take]))
            have, i = have + take, take
            if have == batch_size:
                yield np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending])
                pending, have = [], 0
        while i + batch_size <= len(y):
            yield X[i : i + batch_size], y[i : i + batch_size]
            i += batch_size
        if i < len(y):
            pending.append((X[i:], y[i:]))
            have += len(y) - i
    if have:
        yield np.concatenate([p[0] for p in pending]), np.concatenate([p[1] for p in pending])


def cached_cut(
    fs,
    name: str,
    layer: str,
    attrs: dict,
    weights,
    trust_model: bool,
    sets: dict,
    budget: int | None = None,
    top=None,
) -> Cached:
    """Extract (or reuse) the group cut at ``layer`` for train and validation; its rows must be the run's rows. A split
    over ``budget`` bytes is checked in blocks and left in the store, to be streamed (:meth:`Cached.batches`). ``top``
    (the layers phase B trains): a group whose rows are not what it takes is refused before training
    (:func:`refuse_other_layout`); one already there of another shape or layout is refused by ``extract`` before a row
    is written (``feature_shape`` and ``map_layout`` are fingerprinted)."""
    from featstore.extraction.pipeline import HugeBatch, extract
    from featstore.models.extractor import ExtractorConfig
    from featstore.store.reader import CACHE_PURPOSE

    group = cache_group(fs, name, layer)
    cfg = replace(
        ExtractorConfig.from_attrs(
            attrs, None if attrs.get("model_file") else weights, model_file=weights if attrs.get("model_file") else None
        ),
        layer=layer,
        layers=(),
        pooling="none",
        dtype="float32",
        trust_model=trust_model,
    )
    logger.info(
        "the layers below %s are frozen: their output is cached in the store as %r (computed once, reused by later "
        "fine-tunings), and phase B trains only the layers above on it",
        layer,
        group,
    )
    arrays, made, resumed, wrote = {}, group not in fs.extractors(), False, False
    # an unmarked group of that name with no split left incomplete: the user's `extract --layers` of the same cut (its
    # features are the cache's), read as it is, never marked a cache nor called one to delete (attack 79 #3)
    users = group in fs.extractors(caches=False) and not any(_partial(fs, group, s) for s in sets)
    for split, images in sets.items():
        _refuse_stale(fs, name, group, split, cfg, images.root)
        resumed = resumed or _partial(fs, group, split)
        try:
            try:
                r = extract(images.root, split, fs.path, cfg, name=group, purpose=CACHE_PURPOSE)
            except HugeBatch as huge:  # refused before a row is written: extract's --batch-size is not finetune's
                logger.info(
                    "caching %s/%s %d images a batch (a batch of 32 would hold over 4 GiB)", group, split, huge.fits
                )
                r = extract(images.root, split, fs.path, cfg, name=group, purpose=CACHE_PURPOSE, batch_size=huge.fits)
        except StoreError as exc:  # e.g. a group of that name with another configuration: its fix is not --name here
            raise type(exc)(
                f"{exc}\n(while caching the frozen layers of the fine-tuning as the group {group!r} of {fs.path}; "
                + ("" if users else _START_AGAIN.format(command=delete_group_command(fs.path, group)))  # 79 #3
                + "pass --no-cache (cache=False in Python) to train from the images instead, or fine-tune on a copy of "
                "the store without that group)"
            ) from None
        wrote = wrote or r.written > 0
        refuse_other_layout(fs, group, top)
        cut_paths = fs.paths(split, group)
        if cut_paths != images.paths:
            lacking = sorted(set(images.paths) - set(cut_paths))
            why = (
                f"it lacks {len(lacking)} of them (e.g. {printable(lacking[0])}), which cannot be read now: restore them, or "
                f"re-run `featstore extract` so the store and the folder agree"
                if lacking
                else "the folder changed between the two extractions?"
            )
            raise StoreError(
                f"the cached group {group!r} holds other images of {split!r} than {name!r} ({why}); re-extract both, "
                f"or pass --no-cache (cache=False in Python)"
            )
        _refuse_other_labels(fs, name, group, split, images.labels, cfg, images.root)
        nbytes = fs.nbytes(split, group)
        if budget is not None and nbytes > budget:
            check_budget_holds_chunks(fs, group, [split], budget, format_bytes(budget))
            logger.info(
                "the cached %s split takes %s, over --memory-budget %s: streamed from the store in shuffled blocks "
                "(its training order is then not the image path's)",
                split,
                format_bytes(nbytes),
                format_bytes(budget),
            )
        else:
            arrays[split] = fs.load(split, group)
        try:  # before training: a NaN row made every epoch train, then "diverged: lower --lr"
            streamed = {"max_bytes": budget // BLOCK_FRACTION} if budget is not None else {}  # within the budget (and
            # the far rule's pass over train, when the split checked is in memory)
            fs.refuse_nonfinite(split, group, arrays[split][0] if split in arrays else None, **streamed)
        except StoreError as exc:
            raise StoreError(
                f"{exc}\n(the cached frozen layers of the fine-tuning: re-extract them with\n  "
                f"{extract_command(cfg, images.root, split, fs.path, group, cache_batch(fs, group))}\nor pass --no-cache to train from the images)"
            ) from None
    if (made or resumed) and not users and group in fs.extractors(caches=False):
        # made: marked when created; resumed and still unmarked: an older featstore's killed fine-tuning left it
        from featstore.store.reader import open_h5
        from featstore.store.writer import writer_lock

        with writer_lock(fs.path), open_h5(fs.path, "a") as f:
            f[group].attrs["purpose"] = CACHE_PURPOSE
    return Cached(group, arrays, made or wrote, fs=fs, budget=budget, users=users)


def refuse_other_layout(fs, group: str, top) -> None:
    """Refuse a cached group whose rows are not what ``top`` (the layers above the cut) takes: another shape, or a
    channels_first map stored as it is where the top permutes it back from channels last, or the reverse (attack 62 #1:
    trained silently on transposed maps)."""
    from featstore.models.finetuned import cut_moved
    from featstore.provenance import MOVED_CHANNELS_LAST

    if top is None or group not in fs.extractors():
        return
    meta = fs.metadata(group)
    have = (tuple(meta.get("feature_shape") or ()), meta.get("map_layout") == MOVED_CHANNELS_LAST)
    want = (tuple(top.input_shape[1:]), cut_moved(top))
    if have != want:
        raise StoreError(
            f"the cached frozen layers {group!r} in {fs.path} hold rows of {have[0]}"
            f"{' moved channels last' if have[1] else ''}, and the layers above the cut take {want[0]}"
            f"{' moved channels last' if want[1] else ''}: training on them would not train the fine-tuned model. Pass "
            f"--no-cache (cache=False in Python) to train from the images, or delete the group and fine-tune again"
        )


# a refusal of extract met while caching, whatever its fix: what starts the cache again here (attack 52 #5: extract's
# fix "--overwrite" is not finetune's); said for every refusal, not only where extract's wording names --overwrite
# (matching another module's text missed or misread its rewordings, e.g. "without --overwrite")
_START_AGAIN = (
    "where that names --overwrite: featstore finetune has none; to start the cache again, delete it ({command}) and "
    "fine-tune again, which caches it anew; or "
)


def _refuse_other_labels(fs, name: str, group: str, split: str, labels: np.ndarray, cfg, root: Path) -> None:
    """Refuse a cached group whose labels (or classes) of ``split`` are not the run's group's, row for row: training on
    it would teach other labels than the run's (the cache's labels were trusted when it was reused)."""
    mine, theirs = fs.split_info(split, group).get("class_names"), fs.split_info(split, name).get("class_names")
    cached = fs.labels(split, group)
    if mine == theirs and cached.shape == labels.shape and np.array_equal(cached, labels):
        return
    differ = np.flatnonzero(cached != labels) if cached.shape == labels.shape else np.arange(len(labels))
    what = (
        f"its classes are {mine}, {name!r}'s {theirs}"
        if mine != theirs
        else f"{len(differ)} of its {len(labels)} labels differ from {name!r}'s (first at "
        f"{printable(fs.paths(split, group)[differ[0]])})"
        if len(differ)
        else f"it has {len(cached)} labels, {name!r} {len(labels)}"
    )
    raise StoreError(
        f"the cached frozen layers {group!r} in {fs.path} do not have the labels of {split!r} that {name!r} has ({what}): "
        f"the cache was altered or damaged, and a fine-tuning never trains on other labels than its run's. Re-extract "
        f"it with\n  {extract_command(cfg, root, split, fs.path, group, cache_batch(fs, group))}\nor pass --no-cache (cache=False in Python) to "
        f"train from the images"
    )


def _partial(fs, group: str, split: str) -> bool:
    """Whether ``group`` holds ``split`` unfinished (a killed extraction's leftover)."""
    if group not in fs.extractors() or split not in fs.splits(group):
        return False
    try:
        return not fs.split_info(split, group).get("complete")
    except StoreError:  # killed while creating the split: the extraction starts it again
        return True


def _refuse_stale(fs, name: str, group: str, split: str, cfg, root: Path) -> None:
    """Refuse a cache split made from other images than the run's group holds now, naming the command that re-makes it."""
    if group not in fs.extractors() or split not in fs.splits(group):
        return
    try:
        mine = fs.split_info(split, group).get("listing_sha256")
    except StoreError:  # damaged or killed while being created: the extraction says what to do
        return
    if mine == fs.split_info(split, name).get("listing_sha256"):
        return
    raise StoreError(
        f"the cached frozen layers {group!r} in {fs.path} were extracted from other images of {split!r} than "
        f"{name!r} holds now (the folder changed, and {name!r} was extracted again since). A fine-tuning never "
        f"replaces its cache by itself: re-extract it with\n  {extract_command(cfg, root, split, fs.path, group, cache_batch(fs, group))}\n"
        f"(and the same with --split validation if that split changed too), then fine-tune again; or pass --no-cache "
        f"(cache=False in Python) to train from the images"
    )


def extract_command(cfg, root, split: str, store, group: str, batch: int | None = None) -> str:
    """The ``featstore extract`` command line that (re-)makes ``group``'s ``split`` with configuration ``cfg``;
    ``batch``: its ``--batch-size`` where extract's 32 would be refused (:func:`cache_batch`: attack 47 #4)."""
    q = shlex.quote
    saved = cfg.weights == "model"
    parts = [
        f"featstore extract --data {q(str(root))} --split {q(split)} --store {q(str(store))} --name {q(group)}",
        f"--model {q(str(cfg.model))} --layer {q(str(cfg.layer))} --image-size {cfg.image_size}",
    ]
    if not saved:
        parts.append(f"--weights {q(str(cfg.weights))}" + (f" --seed {cfg.seed}" if cfg.weights == "none" else ""))
    elif cfg.preprocess not in (None, "none"):
        parts.append(f"--preprocess {q(cfg.preprocess)}")
    parts += ["--mixed-precision"] * bool(cfg.mixed_precision) + ["--trust-model"] * bool(cfg.trust_model)
    parts += [f"--batch-size {batch}"] * bool(batch)
    return " ".join([*parts, "--overwrite"])


def cache_batch(fs, group: str) -> int | None:
    """The ``--batch-size`` that re-extracting ``group`` of ``fs`` needs, where a batch of 32 of its rows would hold
    more features than extract takes (``pipeline.MAX_BATCH_BYTES``); None where 32 fits."""
    from featstore.extraction.pipeline import MAX_BATCH_BYTES

    meta = fs.metadata(group)
    row = int(np.prod(meta["feature_shape"])) * np.dtype(meta["dtype"]).itemsize
    return max(1, MAX_BATCH_BYTES // row) if row * 32 > MAX_BATCH_BYTES else None


def cache_note(fs, cached: Cached, unfreeze_from: str, grew: tuple[int, int]) -> str:
    """The run's note about its cache: where it is, what it takes, how the store grew, how to remove it."""
    size = sum(fs.nbytes(s, cached.group) for s in fs.splits(cached.group))
    before, after = grew
    growth = (
        f"; {fs.path.name} grew from {format_bytes(before)} to {format_bytes(after)} in this run"
        if after > before
        else ""
    )
    store, group = shlex.quote(str(fs.path)), cached.group
    if cached.users:  # the user's own extraction: kept as it is (attack 79 #3: its delete command was advised)
        return (
            f"the frozen layers below {unfreeze_from} were read from the store's group {group!r} ({format_bytes(size)} "
            f"of features{growth}), the same cut extracted earlier (not a fine-tuning cache): it is kept as it is, "
            f"and fit, export and sweep use it as before"
        )
    return (
        f"the frozen layers below {unfreeze_from} are cached in the store as the group {group!r} "
        f"({format_bytes(size)} of features{growth}): later fine-tunings from that layer reuse it, and fit, export "
        f"and sweep pass over it. To remove it: {delete_group_command(fs.path, group)}, then h5repack {store} "
        f"smaller.h5 (HDF5 does not give freed space back); or fine-tune with --no-cache"
    )
