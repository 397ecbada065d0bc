"""The one extraction loop: source rows -> decode -> (augment) -> forward on an engine -> the split writer.

A pass writes the rows of one split key: a listing's images (:class:`ListingRows`) or their augmented copies
(:class:`featstore.extraction.copies.CopyRows`). The engine decides where decoding and the forward pass run (this
process, or Ray actors); the rows decide what each row is (its file, label, stored path, failure text, extra row
data, and the transform of a batch before the model); :class:`~featstore.store.writer.SplitWriter` commits. The
commit rule is the loop's alone: every commit but the last holds exactly ``batch_size`` rows (so a compressed store,
one chunk per batch, writes each chunk once), and a long run of bad files is committed on its own once
``batch_size`` of them are pending. Batch boundaries depend only on the rows, the decode outcomes and batch_size,
so a resumed pass commits exactly what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from featstore.images.listing import ImageListing, printable
from featstore.store.writer import SplitWriter

logger = logging.getLogger(__name__)


class Rows(Protocol):
    """The rows one pass writes, by index ``0..total-1``."""

    total: int  # rows in the split key when complete

    def file(self, j: int) -> str: ...  # the image file of row j
    def labels(self, index: list[int]) -> np.ndarray: ...  # int32 labels of these rows
    def paths(self, index: list[int]) -> list[str]: ...  # their stored paths (relative to the data root)
    def failure(self, j: int, reason: str) -> tuple[str, str]: ...  # the (path, reason) recorded when row j fails
    def extra(self, index: list[int]) -> dict | None: ...  # more row datasets (None: none)
    def transform(self, first: int) -> Callable[[np.ndarray], np.ndarray] | None: ...  # a batch's augmentation


class Engine(Protocol):
    """Where decoding and the forward pass run; the same listing, extractor and writer either way."""

    name: str  # "local" | "ray"
    steady_state: bool  # images/s counted after the first image arrived (the wait for it is start-up)

    def start(self, root, first_image: str | None) -> float: ...  # connect and check; seconds it took
    def bind(self, extractor, *, jit: bool, batch_size: int) -> None: ...  # the extractor of the next pass
    def outcomes(
        self, files: list[str]
    ) -> Iterator[tuple[object | None, str]]: ...  # (payload or None, reason), in order; start-up (local: the
    # warm-up, beside the first decodes) is done before it returns, outside the measured loop
    def forward(self, payloads: list, transform) -> list[np.ndarray]: ...  # features per output of one batch
    def close(self) -> None: ...


@dataclass
class ListingRows:
    """The rows of a plain split: the listing's images, in its order."""

    listing: ImageListing

    def __post_init__(self) -> None:
        self.total = len(self.listing.items)

    def file(self, j: int) -> str:
        return str(self.listing.root / self.listing.items[j][0])

    def labels(self, index: list[int]) -> np.ndarray:
        return np.array([self.listing.items[j][1] for j in index], dtype=np.int32)

    def paths(self, index: list[int]) -> list[str]:
        return [self.listing.items[j][0] for j in index]

    def failure(self, j: int, reason: str) -> tuple[str, str]:
        rel = self.listing.items[j][0]
        logger.warning("skipped %s: %s", printable(rel), reason)
        return rel, reason

    def extra(self, index: list[int]) -> None:
        return None

    def transform(self, first: int) -> None:
        return None


@dataclass
class PassResult:
    """What one pass wrote."""

    written: int = 0  # rows written
    failures: list = field(default_factory=list)  # (path, reason) recorded by this pass
    images_per_second: float = 0.0  # throughput of the decode-model-write loop
    first_wait: float = 0.0  # steady-state engines: seconds until the first image arrived (start-up, not throughput)
    rate_seconds: float = 0.0  # the seconds images_per_second was measured over (the rest of a run is start-up)


def run_pass(
    writer: SplitWriter, rows: Rows, engine: Engine, *, batch_size: int, progress: bool, desc: str
) -> PassResult:
    """Decode, run the model and commit batch by batch, from ``writer.start`` to ``rows.total``.

    Group i of the writer gets a batch only past its own start, so a group that committed one batch more than another
    before a kill is not written twice.
    """
    from tqdm.auto import tqdm

    out = PassResult()
    start = done = writer.start
    todo = range(start, rows.total)
    bar = tqdm(total=rows.total, initial=start, unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    payloads: list = []
    index: list[int] = []
    failed: list[tuple[str, str]] = []

    batches = iter(range(1, 1 << 62))

    def commit() -> None:
        feats = engine.forward(payloads, rows.transform(index[0])) if payloads else None
        if feats is not None:
            warn_nonfinite(feats, writer.names, writer.key, rows.paths(index), next(batches), (index[0], index[-1]))
        writer.commit(feats, rows.labels(index), rows.paths(index), failed, done, rows.extra(index))
        out.written += len(index)
        out.failures.extend(failed)
        bar.update(len(index) + len(failed))
        payloads.clear(), index.clear(), failed.clear()

    outcomes = engine.outcomes([rows.file(j) for j in todo])
    loop_start, first_done, first_at = time.perf_counter(), None, 0.0
    try:
        for j, (payload, reason) in zip(todo, outcomes):
            done += 1
            if first_done is None:
                first_done, first_at = done, time.perf_counter()
            if payload is None:
                failed.append(rows.failure(j, reason))
            else:
                payloads.append(payload)
                index.append(j)
            if len(payloads) >= batch_size or (not payloads and len(failed) >= batch_size):
                commit()
        if payloads or failed:
            commit()
    finally:
        bar.close()
        if hasattr(outcomes, "close"):
            outcomes.close()  # decode threads shut down, Ray's stream stopped, now (not when collected)
    if not engine.steady_state or first_done is None or done <= first_done:
        out.rate_seconds = max(time.perf_counter() - loop_start, 1e-9)
        out.images_per_second = (done - start) / out.rate_seconds
    else:  # steady state, after the first image arrived (actors built); the wait for it is start-up
        out.first_wait = first_at - loop_start
        out.rate_seconds = max(time.perf_counter() - first_at, 1e-9)
        out.images_per_second = (done - first_done) / out.rate_seconds
    return out


def warn_nonfinite(
    feats: list[np.ndarray], names: list[str], key: str, paths: list[str], batch: int, span: tuple[int, int]
) -> None:
    """Log a warning for each output of one batch that holds rows with NaN or inf (they are stored as they are)."""
    for name, f in zip(names, feats):
        bad = ~np.isfinite(f.reshape(len(f), -1)).all(axis=1)
        half = f.dtype == np.float16 and bool(np.isinf(f).any())  # float16 holds at most 65504 (attack 75 #5)
        if bad.any():
            logger.warning(
                "batch %d (images %d-%d) of %s (%s) holds %d rows with NaN or inf features (e.g. %s); they are stored, "
                "but fit and leaks will refuse them. "
                + (
                    "--dtype float16 holds at most 65504 and larger features are stored as inf: extract with --dtype "
                    "float32 (the default)."
                    if half
                    else "Check the images and the model's weights (an own model may overflow on a white image)."
                ),
                batch,
                span[0] + 1,
                span[1] + 1,
                key,
                name,
                int(bad.sum()),
                printable(paths[int(np.argmax(bad))]),
            )
