"""Augmented copies of a training split, cached in the store once: ``featstore extract --split train --augment K``.

The K copies of ``/<extractor>/<split>`` live in its subgroup ``augmented`` (a split's child, so no command
that lists splits ever sees it and no ``--validation``/``--test`` name can reach it). They are made from the
plain split's rows (same paths, labels and order; an image the plain split could not read is recorded there,
once, and never tried again), copy-major: rows ``0..N-1`` are copy 1, ``N..2N-1`` copy 2, and so on, with the
copy index (1..K) in the row dataset ``copy``. The K·N rows (:class:`CopyRows`) go through the one extraction loop
(:func:`featstore.extraction.loop.run_pass`) like a split of K·N images: every commit but the last holds exactly
``batch_size`` rows (so a compressed store writes each chunk once), and a killed run resumes bit-identically. Each
batch is decoded with featstore's own decode and resize, augmented by :mod:`featstore.images.augment` (seeded per
batch from the seed and the batch's first row, so a resumed run draws what an uninterrupted one draws), rounded back
to 8-bit pixels, run through the same extractor, and committed by :mod:`featstore.store.writer` like any split's batch.

>>> batch_seed(0, 0) == batch_seed(0, 0) != batch_seed(0, 32)
True
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, StoreError
from featstore.images.augment import Augmentation, augment_batch, parse_augment
from featstore.images.listing import printable
from featstore.provenance import MAX_AUGMENT_COPIES, refuse_evaluation_split
from featstore.store.resume import numerics_differ

logger = logging.getLogger(__name__)

DEFAULT_SPEC = "flip,rotate=0.1,zoom=0.2"  # --augment-spec when not given
MAX_COPIES = MAX_AUGMENT_COPIES  # more copies than this is almost surely a typo (each one is another pass of the model and the split's size on disk)


@dataclass(frozen=True)
class CopiesRequest:
    """What ``--augment K --augment-spec S --augment-seed N`` asks for, checked."""

    copies: int  # K augmented copies of every row
    augmentation: Augmentation  # the parsed spec (its canonical text is recorded)
    seed: int  # base seed; each copy and batch derives its own from it


@dataclass
class CopiesResult:
    """What one pass over the copies did."""

    rows: int = 0  # rows of copies in the store after this run
    written: int = 0  # rows written by this run
    failed: int = 0  # images that failed while making copies (they were readable for the plain split)
    skipped: bool = False  # the copies were already complete: nothing done
    resumed_from: int = 0  # copy rows already done when this run started


def check_request(split: str, copies, spec: str | None = DEFAULT_SPEC, seed=0) -> CopiesRequest:
    """Refuse a bad count, an evaluation split, an empty or unknown spec, a bad seed, before any work. Example::

    check_request("train", 5, "flip,rotate=0.1")
    """
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or not 1 <= int(copies) <= MAX_COPIES:
        raise ConfigError(
            f"--augment {copies!r}: give the number of augmented copies to cache, from 1 to {MAX_COPIES} (each copy "
            f"is one more pass of the model over the split and takes as much disk as the split)"
        )
    refuse_evaluation_split(split)
    aug = parse_augment(DEFAULT_SPEC if spec is None else spec)
    if not aug:
        raise ConfigError(f"--augment-spec is empty: name at least one augmentation, e.g. {DEFAULT_SPEC}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**31:
        raise ConfigError(f"--augment-seed {seed!r}: give an integer from 0 to {2**31 - 1}")
    return CopiesRequest(int(copies), aug, int(seed))


def batch_seed(seed: int, first: int) -> int:
    """The seed of the batch whose first row is row ``first`` of the copies (0..K·N-1): the same on every run."""
    digest = hashlib.sha256(f"featstore-augment:{seed}:{first}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 2  # room for the per-layer offsets Augmentation.layers adds


def copies_attrs(
    req: CopiesRequest,
    split: str,
    plain_attrs: dict,
    source_rows: int,
    batch_size: int,
    compression: str,
    jit: bool = False,
) -> dict:
    """The copies' split attributes: the plain split's classes, root and images, this run's write options, the augmentation."""
    return {
        "jit": bool(jit),  # a resume with the other setting is refused (store.resume.refuse_resume)
        "class_names": plain_attrs["class_names"],
        "source_root": plain_attrs["source_root"],
        "n_images": req.copies * source_rows,
        "n_ignored": 0,
        "listing_sha256": plain_attrs["listing_sha256"],
        "batch_size": batch_size,
        "compression": compression,
        "augment_copies": req.copies,
        "augment_spec": req.augmentation.spec,
        "augment_seed": req.seed,
        "source_rows": source_rows,
        "source_split": split,
        "augment_order": "copy-major: row r is copy r // source_rows + 1 of plain row r % source_rows",
    }


@dataclass
class CopyRows:
    """The rows of the copies: row ``j`` is copy ``j // N + 1`` of plain row ``j % N`` (N = len(rel)), augmented per batch."""

    req: CopiesRequest
    root: Path  # the data root the plain split was extracted from
    rel: list[str]  # the plain split's stored paths, in row order
    source_labels: np.ndarray  # and its labels (int32)
    size: int  # the extractor's input side

    def __post_init__(self) -> None:
        self.n = len(self.rel)
        self.total = self.req.copies * self.n

    def file(self, j: int) -> str:
        return str(self.root / self.rel[j % self.n])

    def labels(self, index: list[int]) -> np.ndarray:
        return self.source_labels[[j % self.n for j in index]]

    def paths(self, index: list[int]) -> list[str]:
        return [self.rel[j % self.n] for j in index]

    def failure(self, j: int, reason: str) -> tuple[str, str]:
        copy, rel = j // self.n + 1, self.rel[j % self.n]
        logger.warning("copy %d: skipped %s: %s", copy, printable(rel), reason)
        return rel, f"copy {copy}: {reason}"

    def extra(self, index: list[int]) -> dict:
        return {"copy": np.array([j // self.n + 1 for j in index], dtype=np.int32)}

    def transform(self, first: int) -> Callable[[np.ndarray], np.ndarray]:
        """The augmentation of the batch whose first row is ``first``, back to 8-bit pixels as decoded images are."""
        model = self.req.augmentation.model(batch_seed(self.req.seed, first), self.size, 3)
        return lambda images: np.rint(augment_batch(model, images)).astype(np.uint8)


def refuse_made_otherwise(plain_attrs: dict, want: dict, split: str, name: str, path) -> None:
    """Refuse copies computed otherwise than the split they augment, as the split records it (``--jit``, ``--runtime``,
    oneDNN, the engine: copies run on the local engine), naming the difference and the way out: the rows would be of
    two kinds, and the first-batch check blamed the machine (review of 49 #3's fix)."""
    if differ := numerics_differ(plain_attrs, want):
        key, then, now, why = differ
        raise StoreError(
            f"split {split!r} of {name!r} in {path} was made {then}, and its copies would be made {now} (augmented "
            f"copies run on the local engine): {why}, so the copies would be of another kind than the rows they "
            f"augment. Extract the split again {now} with --overwrite (overwrite=True), then add its copies"
            + ("" if key == "engine" else f", or make them {then}")
        )


def refuse_other_rows(plains: dict, layers: dict, split: str, path) -> None:
    """Refuse copies of several groups whose splits hold other rows (``plains``: each group's ``(paths, labels)``;
    ``layers``: each group's ``--layer``): one pass makes every group's copies from one list of rows, so a second
    group's copies were mapped onto the first group's rows, its ``source_rows`` and row order not its split's (attack
    52 #4: one image unreadable when one group's split was made, readable when the other's was)."""
    (first, (rel, labels)), *others = plains.items()
    for name, (theirs, their_labels) in others:
        if theirs == rel and np.array_equal(labels, their_labels):
            continue
        at = next((i for i, (a, b) in enumerate(zip(rel, theirs)) if a != b), min(len(rel), len(theirs)))
        if theirs == rel:  # the same images, other labels
            at = int(np.flatnonzero(labels != their_labels)[0])
        row = " and ".join(printable(p[at]) if at < len(p) else "none" for p in (rel, theirs))
        one = "; ".join(f"--layer {shlex.quote(str(layers[n]))} --name {shlex.quote(n)}" for n in (first, name))
        raise StoreError(
            f"the copies of {first!r} and {name!r} cannot be made in one run: their splits {split!r} in {path} hold "
            f"other rows ({len(rel)} and {len(theirs)} rows; first differing at row {at}: {row}), and one run "
            f"makes every group's copies from the same rows. Make each group's copies in a run of its own, with the "
            f"same --augment ({one}), or extract the split of both again with --overwrite (overwrite=True)"
        )
