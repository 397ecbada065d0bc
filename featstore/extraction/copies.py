"""Augmented copies of a training split, cached in the store once: ``featstore extract --split train --augment K``.

The K copies of ``/<extractor>/<split>`` live in its subgroup ``augmented`` (a split's child, so no command
that lists splits ever sees it and no ``--validation``/``--test`` name can reach it). They are made from the
plain split's rows (same paths, labels and order; an image the plain split could not read is recorded there,
once, and never tried again), copy-major: rows ``0..N-1`` are copy 1, ``N..2N-1`` copy 2, and so on, with the
copy index (1..K) in the row dataset ``copy``. The K·N rows are batched like one split of K·N images (every commit
but the last holds exactly ``batch_size`` rows, so a compressed store writes each chunk once). Each batch is decoded
with featstore's own decode and resize, augmented by :mod:`featstore.images.augment` (seeded per batch from the seed and
the batch's first row, so a resumed run draws what an uninterrupted one draws), rounded back to 8-bit pixels, run
through the same extractor, and committed by :mod:`featstore.store.writer` like any split's batch.

>>> batch_seed(0, 0) == batch_seed(0, 0) != batch_seed(0, 32)
True
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError
from featstore.images.augment import Augmentation, augment_batch, parse_augment
from featstore.provenance import (
    AUGMENTED,
    MAX_AUGMENT_COPIES,
    attrs_of,
    plain,
    refuse_evaluation_split,
    refuse_other_augmentation,
)
from featstore.store import writer
from featstore.store.layout import read_commit, validate_augmented, validate_split
from featstore.store.reader import hard_groups, open_h5, read_paths

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
    req: CopiesRequest, split: str, plain_attrs: dict, source_rows: int, batch_size: int, compression: str
) -> dict:
    """The copies' split attributes: the plain split's classes, root and images, this run's write options, the augmentation."""
    return {
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


def _complete(path: Path, name: str, split: str, want: dict, locking) -> bool:
    """True when the copies are there and complete; other copies (count, spec, seed, plain split) are refused, both sides shown."""
    with open_h5(path, "r", locking=locking) as f:
        sg = f[name][split]
        if AUGMENTED not in hard_groups(sg) or "commit" not in sg[AUGMENTED].attrs:
            return False  # none yet, or a run killed while creating them: started again
        ag = sg[AUGMENTED]
        refuse_other_augmentation(attrs_of(ag), want, split, name, path)
        where = f"{path}:/{name}/{split}/{AUGMENTED}"
        commit = validate_augmented(ag, where, attrs_of(f[name]), read_commit(sg, f"{path}:/{name}/{split}"))
        return bool(plain(ag.attrs["complete"])) and commit.images_done == want["n_images"]


def write_copies(
    path: Path,
    names: list[str],
    split: str,
    req: CopiesRequest,
    make_extractor: Callable[[list[str]], object],
    *,
    batch_size: int,
    compression: str,
    progress: bool,
    workers: int | None,
    locking,
) -> CopiesResult:
    """Write (or resume, or skip when complete) the augmented copies of a complete split for every extractor group in ``names``.

    ``make_extractor(todo)`` returns an :class:`~featstore.models.extractor.Extractor` whose outputs are the groups ``todo``.
    """
    from featstore.extraction.pipeline import iter_decoded

    started = time.monotonic()
    result = CopiesResult()
    with open_h5(path, "r", locking=locking) as f:
        sg = f[names[0]][split]
        source = validate_split(sg, f"{path}:/{names[0]}/{split}")
        n = source.rows
        rel = read_paths(sg["paths"], n)
        labels = sg["labels"][:n].astype(np.int32)
        want = copies_attrs(req, split, attrs_of(sg), n, batch_size, compression)
    key = f"{split}/{AUGMENTED}"
    todo = [name for name in names if not _complete(path, name, split, want, locking)]
    total = req.copies * n
    if not todo:
        result.skipped, result.rows = True, total
        return result
    if writer.interrupted(path, todo, key, locking):
        writer.compact(path, locking)  # resume from a clean copy, as for a plain split
    extractor = make_extractor(todo)
    starts = [
        writer.prepare_split(path, name, key, attrs, want, False, locking, None, ("copy",))
        for name, (_, attrs) in zip(todo, extractor.outputs)
    ]
    starts = [total if s is None else s for s in starts]
    start = result.resumed_from = min(starts)
    row_bytes = (
        sum(int(np.prod(a["feature_shape"])) for _, a in extractor.outputs) * np.dtype(extractor.config.dtype).itemsize
    )
    writer.ensure_space(path, (total - start) * row_bytes + writer.CHUNK_BYTES, start)
    if start < total:
        _run(
            path,
            todo,
            key,
            starts,
            req,
            extractor,
            Path(plain(want["source_root"])),
            rel,
            labels,
            batch_size,
            progress,
            workers,
            locking,
            result,
            iter_decoded,
        )
    for name in todo:
        writer.finish(path, name, key, time.monotonic() - started, locking)
    with open_h5(path, "r", locking=locking) as f:
        c = read_commit(f[todo[0]][key], f"{path}:/{todo[0]}/{key}")
        result.rows, result.failed = c.rows, c.failed
    return result


def _run(
    path: Path,
    names: list[str],
    key: str,
    starts: list[int],
    req: CopiesRequest,
    extractor,
    root: Path,
    rel: list[str],
    labels: np.ndarray,
    batch_size: int,
    progress: bool,
    workers: int | None,
    locking,
    result: CopiesResult,
    iter_decoded,
) -> None:
    """Decode, augment, extract and commit the copies' rows batch by batch; group i gets a batch only past its own start.

    Row j of the copies is copy ``j // N + 1`` of split row ``j % N``; batches run over j as over a split's images.
    """
    from tqdm.auto import tqdm

    n, size = len(rel), extractor.config.image_size
    workers = min(8, (os.cpu_count() or 2) * 2) if workers is None else workers
    done = min(starts)
    bar = tqdm(
        total=req.copies * n,
        initial=done,
        unit="img",
        desc=f"{names[0]}/{key}",
        disable=not progress,
        dynamic_ncols=True,
    )
    imgs, rows, failed = [], [], []  # rows: the copies' row index j of each image in the batch

    def commit() -> None:
        feats = [None] * len(names)
        if imgs:
            model = req.augmentation.model(batch_seed(req.seed, rows[0]), size, 3)
            augmented = np.rint(augment_batch(model, np.stack(imgs))).astype(
                np.uint8
            )  # back to 8-bit pixels, as decoded images are
            feats = extractor.features(augmented)
        src = [j % n for j in rows]
        for name, feat, s in zip(names, feats, starts):
            if done > s:
                writer.append(
                    path,
                    name,
                    key,
                    feat,
                    labels[src],
                    [rel[i] for i in src],
                    failed,
                    done,
                    locking,
                    extra={"copy": np.array([j // n + 1 for j in rows], dtype=np.int32)},
                )
        result.written += len(rows)
        bar.update(len(rows) + len(failed))
        imgs.clear(), rows.clear(), failed.clear()

    todo = list(range(done, req.copies * n))
    try:
        for j, (_, img, reason) in zip(
            todo, iter_decoded([str(root / rel[j % n]) for j in todo], size, workers, 4 * batch_size)
        ):
            done += 1
            if img is None:
                logger.warning("copy %d: skipped %s: %s", j // n + 1, rel[j % n], reason)
                failed.append((rel[j % n], f"copy {j // n + 1}: {reason}"))
            else:
                imgs.append(img)
                rows.append(j)
            if len(imgs) >= batch_size or (not imgs and len(failed) >= batch_size):
                commit()
        if imgs or failed:
            commit()
    finally:
        bar.close()
