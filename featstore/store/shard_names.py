"""The names of ``export --rows-per-file``'s Parquet shards: ``part-<number>.parquet``, every shard of one export
zero-padded to one width, so that name order is row order (pyarrow datasets, Ray Data, Spark and DuckDB read a
folder's files in name order).

The width is the digits of the last shard's number, at least ``MIN_WIDTH``: ``part-00000.parquet`` up to 100,000
shards, as featstore always wrote them, then 6 digits and more. A fixed 5 made the 100,001st shard
``part-100000.parquet``, read between ``part-10000`` and ``part-10001`` (attack 58 #4). A shard is recognised
whatever its width (``MIN_WIDTH`` digits or more), so an earlier export of any size is replaced, not refused.

>>> shard_width(rows=1_000_001, rows_per_file=10), shard_name(7, 6), is_shard_name("part-100000.parquet")
(6, 'part-000007.parquet', True)
"""

from __future__ import annotations

import re

from featstore.errors import ConfigError

MIN_WIDTH = 5  # digits of every shard's number when there are at most 10**MIN_WIDTH shards


def shard_width(rows: int, rows_per_file: int) -> int:
    """Digits of every shard's number for ``rows`` rows in shards of ``rows_per_file``: the last one's, at least
    ``MIN_WIDTH`` (an empty split still writes one shard)."""
    shards = max(1, -(-rows // rows_per_file))
    return max(MIN_WIDTH, len(str(shards - 1)))


def shard_name(part: int, width: int) -> str:
    """The file name of shard ``part`` (from 0), its number zero-padded to ``width`` digits."""
    return f"part-{part:0{width}d}.parquet"


def is_shard_name(name: str) -> bool:
    """Whether ``name`` is a shard's name, of any width featstore writes (``part-00000.parquet``,
    ``part-100000.parquet``...)."""
    return re.fullmatch(rf"part-\d{{{MIN_WIDTH},}}\.parquet", name) is not None


def check_rows_per_file(rows_per_file: int | None, fmt: str) -> None:
    """``rows_per_file`` is a positive whole number, and shards are Parquet files."""
    if rows_per_file is None:
        return
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise ConfigError(f"--rows-per-file must be a whole number of at least 1, not {rows_per_file!r}")
    if fmt != "parquet":
        raise ConfigError(f"--rows-per-file writes Parquet shards; --format {fmt} writes one file: drop one of them")
