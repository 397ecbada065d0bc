"""A resumed split is computed as it was started, checked on its own rows: before a resume writes anything, the split's
first batch (its first ``--batch-size`` stored rows, which went through the model in one call) is computed again by
this process and must give the same bits, else the resume is refused.

The same features under the same fingerprint differ in their last digits with the machine and its settings: the
intra-op thread count (1 against 2 threads: every row, up to 1.2e-5), the CPU's instruction set oneDNN uses
(``ONEDNN_MAX_CPU_ISA``, another node's CPU: up to 5.3e-5), oneDNN on or off, and whatever else picks other kernels.
A split resumed under any of them held rows of two kinds without a word (attack 49 #1: 320 of 600 rows). Recording
each cause would miss the next one; computing one stored batch again sees them all, and costs one batch, at resume
only. Augmented copies check their split's first batch too before any copy is written, so copies are never of another
kind than the rows they augment (49 #3).

>>> same_numerics(store_file, ["vgg16"], "train", root, engine, 32, max_batch_bytes=4 << 30)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.extraction.local import OutOfMemory
from featstore.models.forward import machine
from featstore.models.room import memory_room
from featstore.provenance import plain
from featstore.safetext import terminal_safe
from featstore.store.attr_values import bounded_attrs
from featstore.store.layout import validate_split
from featstore.store.pathcols import read_paths
from featstore.units import format_bytes

COPIES_AGAIN = "extract the split again here with --overwrite (overwrite=True)"  # copies' way to start again
RESUME_AGAIN = "start it again here with --overwrite (overwrite=True)"  # a resumed split's


def stored_first_batch(
    store_file, names: list[str], key: str, batch_size: int, hold=None
) -> tuple[list, list[str], dict]:
    """Each group's first call of committed rows (its recorded ``batch_size``, else ``batch_size``, at most its rows;
    None for a group with none yet), their stored paths, and the split's attributes. ``hold(k, row_bytes, recorded,
    where)``, before any row is read: refuses a first call of ``k`` rows (``row_bytes``: every group's features of one
    row; ``recorded``: the ``batch_size`` attribute of the split ``where`` that asks for it) this run cannot check."""
    feats, paths, attrs, found = [], [], {}, []
    with store_file.open("r") as f:
        for name in names:
            sg = f[name][key] if name in f and key in f[name] else None
            n = validate_split(sg, f"{store_file.path}:/{name}/{key}").rows if sg is not None else 0
            said = bounded_attrs(sg, f"{store_file.path}:{sg.name}") if n else {}
            recorded = plain(said.get("batch_size", batch_size))  # its own first call (51 #4: copies' batches)
            k = min(n, recorded if isinstance(recorded, int) and recorded > 0 else batch_size)
            found.append((sg, k, said, recorded))
        if hold is not None and any(k for _, k, _, _ in found):
            row = sum(
                int(np.prod(sg["features"].shape[1:])) * sg["features"].dtype.itemsize for sg, k, _, _ in found if k
            )
            sg, k, _, recorded = max(found, key=lambda x: x[1])
            hold(k, row, recorded, f"{store_file.path}:{sg.name}")  # (attack 52 #3: 2**31-1 read the whole split)
        for sg, k, said, _ in found:
            feats.append(sg["features"][:k] if k else None)
            if k > len(paths):
                paths, attrs = read_paths(sg["paths"], k), said
    return feats, paths, attrs


def held_first_call(batch_size: int, image_bytes: int, max_batch_bytes: int, redo: str):
    """The ``hold`` of :func:`stored_first_batch`: a first call of more rows than this run's ``batch_size`` (a split
    made with a larger one, or a crafted attribute) is computed again only where it passes the bound extract holds a
    batch to (``max_batch_bytes`` of features: more was never written, so the attribute is damaged) and fits in this
    process's memory (its decoded ``image_bytes`` images and features, held at once). A lower --batch-size never helps:
    the check keeps the split's own first call. ``redo``: the way to start again."""

    def hold(k: int, row_bytes: int, recorded, where: str) -> None:
        if k <= batch_size:  # this run's own batches are as large: their bounds were checked (refuse_huge_batches)
            return
        if k * row_bytes > max_batch_bytes:
            raise StoreError(
                f"{where} records batch_size={terminal_safe(str(recorded))}, and a first call of {k} of its rows would "
                f"hold {format_bytes(k * row_bytes)} of features, over the {format_bytes(max_batch_bytes)} extract lets "
                f"one batch hold: no extract wrote that attribute, so the split is damaged; {redo}"
            )
        need, room = k * (3 * image_bytes + 2 * row_bytes), memory_room()  # (decoded, stacked, augmented; read, made)
        if room is not None and need > room.nbytes:
            raise StoreError(
                f"{where} was made in calls of {k} images (its batch_size attribute), and checking that this run "
                f"computes its rows as it did computes its first call again at once: about {format_bytes(need)}, and "
                f"this process can take {format_bytes(room.nbytes)} more, held by {room.limit}. Run it where there is "
                f"more memory, or {redo}"
            )

    return hold


def _where(attrs: dict) -> str:
    """Where the split was started and where this run is, as far as the split recorded it (stores before: nothing)."""
    then = {k: plain(attrs[k]) for k in ("threads", "cpu") if k in attrs}
    now = machine()
    if not then or all(then[k] == now[k] for k in then):
        return ""
    said = [
        f"{k} {terminal_safe(str(then[k]))} then, {terminal_safe(str(now[k]))} now" for k in then if then[k] != now[k]
    ]
    return f" (it recorded {'; '.join(said)})"


def same_numerics(
    store_file,
    names: list[str],
    key: str,
    root: Path,
    engine,
    batch_size: int,
    transform=None,
    copies: bool = False,
    again: str = RESUME_AGAIN,
    *,
    max_batch_bytes: int,
) -> None:
    """Refuse (StoreError, one line) unless ``engine`` (bound to this run's extractor) computes the first batch of
    ``key`` (rows under ``root``; ``transform``: an augmented batch's) to the bits stored in every group of ``names``.
    ``again``: how a resume starts the split again (a fine-tuning's cache: its group deleted); ``max_batch_bytes``: the
    features one batch may hold, extract's own bound (``pipeline.MAX_BATCH_BYTES``; :func:`held_first_call`)."""
    redo = COPIES_AGAIN if copies else again
    size = getattr(getattr(getattr(engine, "extractor", None), "config", None), "image_size", 0)
    hold = held_first_call(batch_size, 3 * size * size, max_batch_bytes, redo)
    stored, paths, attrs = stored_first_batch(store_file, names, key, batch_size, hold)
    if not paths:
        return
    outcomes = engine.outcomes([str(root / p) for p in paths])
    try:
        got = list(outcomes)
    finally:
        if hasattr(outcomes, "close"):
            outcomes.close()
    lost = [(p, reason) for p, (payload, reason) in zip(paths, got) if payload is None]
    if lost:
        raise StoreError(
            f"cannot check that this run computes {key!r} as the run that {'made' if copies else 'started'} it: its "
            f"stored image {terminal_safe(str(root / lost[0][0]))} cannot be read now ({lost[0][1]}). Restore it, or "
            f"{redo}"
        )
    payloads, computed = [payload for payload, _ in got], {}
    for k in sorted({len(then) for then in stored if then is not None}):  # each group's own first call: a batch
        try:  # size can change the last bits, so a group started in calls of 16 is not checked in a call of 32
            computed[k] = engine.forward(payloads[:k], transform)
        except OutOfMemory:  # its line's smaller --batch-size: the check keeps the split's own first call
            raise StoreError(
                f"checking that this run computes {key!r} as the run that {'made' if copies else 'started'} it ran out "
                f"of memory computing its first call of {k} images again (the split's batch_size attribute): run it "
                f"where there is more memory, or {redo}"
            ) from None
    for i, (name, then) in enumerate(zip(names, stored)):
        if then is None:
            continue
        now = np.asarray(computed[len(then)][i][: len(then)]).astype(then.dtype, copy=False)
        if then.tobytes() != now.tobytes():
            differ = int(np.count_nonzero(then != now))
            most = float(np.max(np.abs(then.astype(np.float64) - now.astype(np.float64))))
            made = "was made" if copies else "was started"
            raise StoreError(
                f"{name}/{key} in {store_file.path} {made} by a run that computed its features otherwise: its first "
                f"{len(then)} rows, computed again here, differ in {differ} of {then.size} values (at most "
                f"{most:.3g}){_where(attrs)}. Another machine, CPU or thread count (TF_NUM_INTRAOP_THREADS, a job's "
                f"cores), or TensorFlow's oneDNN setting, gives features that differ in the last digits, and "
                + (
                    "copies made here would be of another kind than the rows they augment. Make them where and as the "
                    f"split was made, or {redo}"
                    if copies
                    else f"the split would hold rows of both kinds. Resume it where and as it was started, or {redo}"
                )
            )
