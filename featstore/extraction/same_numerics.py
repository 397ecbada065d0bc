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

>>> same_numerics(store_file, ["vgg16"], "train", root, engine, 32)   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.models.forward import machine
from featstore.provenance import plain
from featstore.safetext import terminal_safe
from featstore.store.attr_values import bounded_attrs
from featstore.store.layout import validate_split
from featstore.store.pathcols import read_paths


def stored_first_batch(store_file, names: list[str], key: str, batch_size: int) -> tuple[list, list[str], dict]:
    """Each group's first call of committed rows (its recorded ``batch_size``, else ``batch_size``; None for a group
    with none yet), their stored paths, and the split's attributes."""
    feats, paths, attrs = [], [], {}
    with store_file.open("r") as f:
        for name in names:
            sg = f[name][key] if name in f and key in f[name] else None
            n = validate_split(sg, f"{store_file.path}:/{name}/{key}").rows if sg is not None else 0
            said = bounded_attrs(sg, f"{store_file.path}:{sg.name}") if n else {}
            recorded = plain(said.get("batch_size", batch_size))  # its own first call (51 #4: copies' batches)
            k = min(n, recorded if isinstance(recorded, int) and recorded > 0 else batch_size)
            feats.append(sg["features"][:k] if k else None)
            if k > len(paths):
                paths, attrs = read_paths(sg["paths"], k), said
    return feats, paths, attrs


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
    again: str = "start it again here with --overwrite (overwrite=True)",
) -> None:
    """Refuse (StoreError, one line) unless ``engine`` (bound to this run's extractor) computes the first batch of
    ``key`` (rows under ``root``; ``transform``: an augmented batch's) to the bits stored in every group of ``names``."""
    stored, paths, attrs = stored_first_batch(store_file, names, key, batch_size)
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
            f"cannot check that this run computes {key!r} as the run that started it: its stored image "
            f"{terminal_safe(str(root / lost[0][0]))} cannot be read now ({lost[0][1]}). Restore it, or start the "
            f"split again with --overwrite (overwrite=True)"
        )
    feats = engine.forward([payload for payload, _ in got], transform)
    for name, then, now in zip(names, stored, feats):
        if then is None:
            continue
        now = np.asarray(now[: len(then)]).astype(then.dtype, copy=False)
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
                    "split was made, or extract the split again here with --overwrite (overwrite=True)"
                    if copies
                    else f"the split would hold rows of both kinds. Resume it where and as it was started, or {again}"
                )
            )
