"""Room for a fine-tuning, checked before it trains, and its trained run kept when the runs folder refuses it after.

A fine-tuning writes, after its training, a run folder (``model.keras``: the whole model, backbone and head, with the
optimizer's slots when it was compiled whole; ``predictions.npz``: float64 probabilities of every scored image;
``run.json`` with both phases' curves), and before it, without augmentation, the frozen layers' output into the store
(the cached cut). All of it is known before the first epoch: :func:`ensure_room` refuses then, naming the folder, the
bytes needed and free (attack 40 #11: the whole training ran, then "the disk is full ... Nothing was recorded").
A disk that fills meanwhile is met by :func:`keep_run`: the run is written whole into a private folder of the system's
temporary folder (``TMPDIR``) and the line says how long it trained, where it is and how to record it.

>>> SLOTS["adam"], SLOTS["rmsprop"]
(2, 1)
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, OutputError
from featstore.models.scratch import private_tempdir
from featstore.store.space import SPACE_MARGIN
from featstore.units import format_bytes

logger = logging.getLogger(__name__)

SLOTS = {"rmsprop": 1, "adam": 2, "sgd": 1}  # optimizer variables per trained weight (saved with a compiled model)
RECORD_BYTES = 256 << 10  # run.json (curves, per-class figures) and the .keras file's config: generous


def _nbytes(variables) -> int:
    """Bytes of Keras variables as saved (their own dtype)."""
    return sum(int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize for v in variables)


def run_bytes(model, optimizer: str, rows: int, n_classes: int) -> int:
    """About the bytes of a fine-tuned run folder: ``model``'s weights and its optimizer's slots for the trained ones,
    float64 probabilities and int64 labels of ``rows`` scored images, and the record."""
    weights = _nbytes(model.weights) + SLOTS.get(optimizer, 2) * _nbytes(model.trainable_weights)
    return weights + rows * (n_classes + 1) * 8 + RECORD_BYTES


def cut_bytes(fs, group: str, shape, rows: dict[str, int]) -> int:
    """Bytes the cached cut ``group`` (float32 rows of ``shape``) still needs in store ``fs``: splits not complete."""
    present = group in fs.extractors()
    done = {s for s in rows if present and s in fs.splits(group) and fs.split_info(s, group).get("complete")}
    per_row = int(np.prod([int(d) for d in shape])) * 4
    return sum(n for s, n in rows.items() if s not in done) * per_row


def _disk(path: Path) -> Path:
    """``path`` or its nearest existing folder (the disk it will be written on)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def ensure_room(root: Path, run: int, store: Path, cut: int, phase_a: Path) -> None:
    """Refuse, before any epoch, a fine-tuning whose run (``run`` bytes into the runs folder ``root``) and cached cut
    (``cut`` bytes into ``store``) do not fit on their disks, together when they share one; one line naming the
    folder, the bytes needed and free, and a fix that works (``--runs`` is also where the phase-A run ``phase_a`` is
    read: it is copied there first)."""
    disks: dict[int, list] = {}
    for where, n, what in ((root, run, "the run folder"), (store.parent, cut, "the cached frozen layers in the store")):
        if n <= 0:
            continue
        at = _disk(where)
        entry = disks.setdefault(os.stat(at).st_dev, [at, 0, []])
        entry[1] += n
        entry[2].append(f"{what} (about {format_bytes(n)})")
    for at, need, parts in disks.values():
        free = shutil.disk_usage(at).free
        if free < need + SPACE_MARGIN:
            fixes = [
                f"Free some space on the disk of {at}",
                f"or record into a runs folder on another disk: copy the phase-A run there first (cp -r {phase_a} "
                f"DIR/) and pass --runs DIR",
            ]
            if any("cached" in p for p in parts):
                fixes.append("or pass --no-cache to train from the images")
            raise OutputError(
                f"not enough disk space to fine-tune: {' and '.join(parts)} need{'s' * (len(parts) == 1)} about {format_bytes(need + SPACE_MARGIN)}"
                f" on the disk of {at}, {format_bytes(free)} are free; nothing was trained. {', '.join(fixes)}"
            )


def keep_run(exc: OutputError, record_into: Callable[[Path], object], root: Path, seconds: float, epochs: int):
    """After the runs folder ``root`` refused the trained run (``exc``, from :func:`featstore.runs.refusals.not_written`),
    write it whole (``record_into(folder)``: evaluated again) into a private new folder of the system's temporary
    folder and raise one line: how long it trained, why ``root`` refused it, where the run is kept and how to record it.
    When that fails too, the line says so and what the run needs."""
    cause = exc.cause
    why = "the disk is full" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else (cause.strerror or str(cause))
    fix = _fix(cause, root)
    trained = f"fine-tuned for {seconds:.1f} s ({epochs} epoch{'s' * (epochs != 1)})"
    try:
        kept = Path(tempfile.mkdtemp(prefix="featstore-finetune-", dir=private_tempdir()))  # 0700: the user's alone
    except (OSError, ConfigError) as again:  # (ConfigError: no private temporary folder, attack 41 #3)
        raise _lost(trained, root, why, fix, tempfile.gettempdir(), again) from None
    logger.warning("could not write the fine-tuned run into %s (%s): writing it into %s instead", root, why, kept)
    try:
        rec = record_into(kept)
    except OutputError as again:
        shutil.rmtree(kept, ignore_errors=True)
        raise _lost(trained, root, why, fix, kept, getattr(again, "cause", again)) from None
    run = kept / rec.id
    return OutputError(
        f"{trained}, but could not write run {rec.id} into {root}: {why}. The run is kept whole in {run}: {fix}, "
        f"then record it with `mv {run} {root}/`, or record it in another runs folder with `mv {run} DIR/` (until "
        f"then it is read with --runs {kept})"
    )


def _fix(cause: OSError, root: Path) -> str:
    """What makes the runs folder ``root`` take a run again after ``cause`` (the fix follows the reason: freeing space
    on a read-only file system does nothing, attack 43 #4)."""
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space on the disk of {root}"
    if cause.errno == errno.EROFS:
        return f"once the file system of {root} is writable again (it is mounted read-only)"
    if cause.errno in (errno.EACCES, errno.EPERM):
        return f"once you may write {root} (its owner or an admin can make it so)"
    return "once that is fixed"


def _lost(trained: str, root: Path, why: str, fix: str, tmp, again: BaseException) -> OutputError:
    """The line when the trained run could be kept nowhere."""
    reason = getattr(again, "strerror", None) or str(again)
    return OutputError(
        f"{trained}, but could not write its run into {root} ({why}) nor keep it in {tmp} ({reason}); nothing was "
        f"recorded: {fix}, run again (or pass --runs DIR with a writable folder), or set TMPDIR to a folder of yours "
        f"with room"
    )
