"""The rows rule's memory (:mod:`featstore.runs.fittedrows`): how much it reads at a time and holds at most to compare a
split with a training split (attack 76 #4: the digests took ~38 bytes a row, outside ``--memory-budget``), and the
reason given when a comparison would not fit in a budget."""

from __future__ import annotations

from featstore.units import format_bytes

_BLOCK_BYTES = 16 << 20  # features digested at a time (a few copies of it are the temporaries)
_BLOCK_ROWS = 1 << 18  # and rows (each row's label and digests take 32 bytes of temporaries, however narrow the row)
_FENCE = 64  # one lane-0 digest kept contiguous per this many training rows: where each key's search starts
ROW_BYTES = 16  # the training split's digests held per row (two uint64 lanes, sorted in place)


def _block(fs, name: str, split: str, max_bytes: int) -> tuple[int, int]:
    """``(bytes, rows)`` of features read at a time: at most ``max_bytes``, :data:`_BLOCK_BYTES` and
    :data:`_BLOCK_ROWS` rows, never less than one chunk."""
    from featstore.store.storage import chunk_bytes, row_bytes

    info = fs.split_info(split, name)
    size = max(min(max_bytes, _BLOCK_BYTES, _BLOCK_ROWS * row_bytes(info)), chunk_bytes(info))
    return size, max(1, size // max(1, row_bytes(info)))


def _held(fs, name: str, split: str, max_bytes: int) -> tuple[int, int]:
    """:func:`_block`'s ``(bytes, rows)`` as held: never more than the split (a split of 4,000 rows in a chunk of
    131,072 was counted a whole chunk's temporaries, 16 MiB, and refused under a 2 MB budget)."""
    from featstore.store.storage import row_bytes

    size, rows = _block(fs, name, split, max_bytes)
    info = fs.split_info(split, name)
    n = int(info["committed_rows"])
    return min(size, n * row_bytes(info)), min(rows, n)


def peak_bytes(fs, name: str, train: str, split: str, max_bytes: int = 64 << 20) -> int:
    """The most the rows rule holds to compare ``split`` with ``train`` (attack 76 #4): :data:`ROW_BYTES` a training
    row, its fence, and one block's temporaries (the block read, its digests and each key's search: at most 4 copies of
    the block's features and 96 bytes a row; measured 64 MiB for a 16 MiB block of wide rows, 25 MiB for 2^18 rows of
    2 float32)."""
    n = int(fs.split_info(train, name)["committed_rows"])
    temps = max(4 * b + 96 * r for b, r in (_held(fs, name, s, max_bytes) for s in (train, split)))
    return ROW_BYTES * n + 8 * (n // _FENCE + 1) + temps


def over_budget(fs, name: str, train: str, split: str, max_bytes: int, memory_budget: int) -> str | None:
    """Why ``split`` is not compared within ``memory_budget`` bytes (:func:`peak_bytes` over it), or None."""
    need = peak_bytes(fs, name, train, split, max_bytes)
    if need <= memory_budget:
        return None
    return (
        f"comparing them takes {format_bytes(need)} ({ROW_BYTES} bytes a row of {train!r} and a block's "
        f"temporaries), over the memory budget of {format_bytes(memory_budget)}"  # not "0 MiB over 0 MiB" (77 #6)
    )
