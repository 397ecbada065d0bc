"""The writer the kill tests SIGKILL: extract's store steps and its one loop, on synthetic features, without TensorFlow.

``python tests/kill_writer.py DATA STORE COMPRESSION COPIES`` writes the split ``train`` of the images under DATA into
STORE (then, COPIES > 0, its augmented copies) the way :func:`featstore.extract` does
(``featstore.extraction.pipeline._Extraction``: the writer's lock for the whole run, one opening that surveys the
store, a compaction when a killed run left a partial split, the disk-space check, ``SplitWriter.prepare``, the real
:func:`~featstore.extraction.loop.run_pass` on the real :class:`~featstore.extraction.local.LocalEngine` (decode threads
ahead, one commit per batch), ``SplitWriter.finish``). Only the model is replaced: a stand-in extractor whose two
outputs (two extractor groups, as with two cut layers) are the decoded pixels, scaled and summed per block, and the
copies' augmentation is a numpy flip and shift seeded like the real one (by the batch's first row). So features
depend on each row's image and, for copies, its row index: a resumed store equals a clean one bit for bit only if
resume and commit order are right. Run as a script it prints ``start`` after its imports and ``batch``
before each batch's commit (the kill tests time their kills by them). Nothing here imports TensorFlow or Keras, which the script asserts when it ends.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from featstore.extraction.copies import CopyRows, batch_seed, check_request, copies_attrs
from featstore.extraction.local import LocalEngine
from featstore.extraction.loop import ListingRows, run_pass
from featstore.images.listing import discover
from featstore.provenance import AUGMENTED
from featstore.store.layout import check_root
from featstore.store.locking import StoreFile
from featstore.store.space import ensure_space
from featstore.store.survey import committed_rows, copies_done, split_done, survey
from featstore.store.writer import CHUNK_BYTES, SplitWriter, synthetic_attrs

SPLIT, SIZE, BATCH = "train", 16, 2
NAMES = ["synthetic@pixels", "synthetic@blocks"]  # two groups, as extract writes for two cut layers
SHAPES = [(SIZE, SIZE, 3), (SIZE // 4, SIZE // 4, 3)]
ATTRS = [synthetic_attrs(s, model=n) for n, s in zip(NAMES, SHAPES)]
ANNOUNCE = __name__ == "__main__"  # as the kill tests' subprocess: print "start", then "batch" before each commit


def features(images: np.ndarray) -> list[np.ndarray]:
    """The stand-in model: pixels in [0, 1], and their sums over 4x4 blocks; float32, deterministic."""
    if ANNOUNCE:
        print("batch", flush=True)  # the kill tests time their kills by these lines
    x = images.astype(np.float32) / 255
    return [x, x.reshape(len(x), SIZE // 4, 4, SIZE // 4, 4, 3).sum(axis=(2, 4))]


class CopyRowsNumpy(CopyRows):
    """The copies' rows as extract has them, but augmented by numpy (the real augmentation is Keras layers)."""

    def transform(self, first: int):
        rng = np.random.default_rng(batch_seed(self.req.seed, first))
        flip, shift = bool(rng.integers(2)), int(rng.integers(1, SIZE))
        return lambda images: np.roll(images[:, :, ::-1] if flip else images, shift, axis=1)


def one_pass(file: StoreFile, key: str, done, rows, engine, split_attrs: dict, extra=(), listing=None) -> None:
    """One pass of extract (pipeline._Extraction.write_split/_pass): survey, compact if killed, space, prepare, loop,
    finish."""
    started = time.monotonic()
    with file.read_if_exists() as f:
        if f is not None:
            check_root(f, file.path)
        found = survey(f, file.path, NAMES, key, done)
    if not found.todo:
        return
    writer = SplitWriter(file, found.todo, key, extra=extra)
    if found.interrupted:
        writer.compact()
    row_bytes = sum(int(np.prod(s)) for s in SHAPES) * 4
    ensure_space(file.path, (rows.total - found.done) * row_bytes + CHUNK_BYTES, found.done)
    writer.prepare([ATTRS[NAMES.index(n)] for n in found.todo], split_attrs, False, listing)
    if writer.start < rows.total:
        run_pass(writer, rows, engine, batch_size=BATCH, progress=False, desc=key)
    writer.finish(time.monotonic() - started)


def main(data: str, store: str, compression: str, copies: int) -> None:
    if ANNOUNCE:
        print("start", flush=True)
    listing = discover(data, SPLIT)
    file = StoreFile(store)
    engine = LocalEngine(decode_threads=2)
    engine.bind(
        SimpleNamespace(config=SimpleNamespace(image_size=SIZE), features=features, warm_up=lambda: None),
        batch_size=BATCH,
    )
    split_attrs = {
        "class_names": listing.class_names,
        "source_root": str(listing.root.resolve()),
        "n_images": len(listing.items),
        "n_ignored": listing.n_ignored,
        "listing_sha256": listing.digest(),
        "batch_size": BATCH,
        "compression": compression,
        "jit": False,
        "engine": "local",
    }
    attrs = dict(zip(NAMES, ATTRS))

    def plain_done(f, name: str) -> bool:
        return split_done(f, file.path, name, SPLIT, lambda a: a["fingerprint"] == attrs[name]["fingerprint"], listing)

    with file.lock():
        one_pass(file, SPLIT, plain_done, ListingRows(listing), engine, split_attrs, listing=listing)
        if copies:
            req = check_request(SPLIT, copies, "flip", 3)
            with file.open("r") as f:
                rel, labels, plain_attrs = committed_rows(f, file.path, NAMES[0], SPLIT)
            want = copies_attrs(req, SPLIT, plain_attrs, len(rel), BATCH, compression)
            rows = CopyRowsNumpy(req, Path(want["source_root"]), rel, labels, SIZE)

            def copies_finished(f, name: str) -> bool:
                return copies_done(f, file.path, name, SPLIT, want)

            one_pass(file, f"{SPLIT}/{AUGMENTED}", copies_finished, rows, engine, want, extra=("copy",))
    if ANNOUNCE:  # as its own process; called inside a test worker, other tests may have imported Keras before
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, f"the synthetic writer imported {loaded[:5]}"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
