"""Export one split of the store to ``.npz``, Parquet or CSV, streamed in blocks.

Features are read with :meth:`FeatureStore.iter_batches` (whole chunks, in row order) and each block is
reduced and written before the next is read, so the features never need to fit in memory; labels and
paths (a few dozen bytes per row) are held in memory. Every format is written to a hidden temporary
file beside ``out`` and renamed onto it when complete, so a killed export leaves no half-written file
under the name asked for (a SIGKILL may leave a ``.<name>.XXXX.tmp`` file to delete).

What each file holds, with ``d`` the number of values per row (see ``features=``):

- ``.npz`` (uncompressed, like ``numpy.savez``): ``features`` (N, d), ``labels`` (N,) int64,
  ``paths`` (N,) str, ``class_names`` (K,) str. Streamed too: ``features.npy`` and ``paths.npy`` are written block by
  block straight into the zip member (a ``.npy`` header, then the rows), never built in memory. ``paths`` is a
  fixed-width array (every path as wide as the widest, 4 bytes a character): refused, before anything is written, when
  that would take over 256 MiB and over 4 times the paths' own characters (one long path among many short ones).
  ``np.load(out)["features"]`` of course loads all of it; ``mmap_mode`` does not apply inside a zip.
- Parquet (needs ``pyarrow``: ``pip install 'featstore[parquet]'``): columns ``path``, ``label``,
  ``class``, ``features``, ``path_bytes`` (fixed-size list of d floats), one row group per block; the schema metadata
  holds ``class_names``, ``feature_shape``, ``features`` (the reduction) and the extractor's fingerprint.
- CSV: ``path,label,class,f0,...,f{d-1}``; floats with 9 significant digits (exact for float32).

File names that are not valid UTF-8 (a byte such as ``0xff`` in a Linux file name, held in Python as a
lone surrogate ``\udcff``): CSV and ``.npz`` keep the name's own bytes (CSV: the raw byte; ``.npz``: the
surrogate, which ``os.fsencode`` turns back into the byte). Parquet strings must be valid UTF-8, so there
such a path or class name is written escaped, each undecodable byte as the four characters ``\xff``
(Python's ``backslashreplace``); valid UTF-8 names are written unchanged. That escape alone would make a file
named with the byte 0xff and one named with the four characters ``\xff`` look alike, so Parquet also has the
column ``path_bytes`` (binary): each path's exact file-system bytes (``os.fsdecode`` turns them back into the
name), and the schema metadata's ``class_names`` keep the names exactly (JSON, undecodable bytes as ``\\udcXX``).

CSV cells that a spreadsheet would evaluate are neutralised (:func:`featstore.outputs.csv_cell`, OWASP's rule): a
path or class name starting with ``= + - @``, a tab or a carriage return is written with a leading ``'``; numbers
are written as they are.

Every file is written by :func:`featstore.outputs.write_atomic`: ``out`` checked before any work (a FIFO, device, link,
link loop, folder or missing folder refused), written beside it and renamed onto it when whole; a full disk or a
read-only folder is one :class:`~featstore.errors.OutputError` line, leaving the old file (or nothing) there.
Values are float32 (float16 stores are widened: CSV and Parquet have no portable half type).

>>> export("features.h5", "train", "train.npz", features="avg")  # doctest: +SKIP
ExportResult(path=PosixPath('train.npz'), format='npz', rows=300, n_features=512, features='avg')
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, OutputError, check_paths, choices_error
from featstore.maplayout import refuse_unknown_layout
from featstore.outputs import check_own_output, csv_cell, probe_output, refuse_image, write_atomic
from featstore.provenance import AUGMENTED
from featstore.store.export_files import MARK, SUFFIXES, is_export
from featstore.store.layout import same_split
from featstore.store.reader import FeatureStore
from featstore.store.shard_names import check_rows_per_file, shard_name, shard_width
from featstore.store.shards import refuse_shard_folder, write_shards

logger = logging.getLogger(__name__)

FORMATS = ("npz", "parquet", "csv")
REDUCTIONS = ("flat", "avg", "max")  # flat: every value in C order of (h, w, c); avg/max: global pooling over h and w
_SUFFIXES = {".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
DEFAULT_MAX_BYTES = 64 << 20  # features read per block


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote."""

    path: Path  # the file written
    format: str  # npz, parquet or csv
    rows: int  # images exported
    n_features: int  # values per row
    features: str  # flat, avg or max


def export(
    store: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    *,
    extractor: str | None = None,
    format: str | None = None,
    features: str = "flat",
    max_bytes: int = DEFAULT_MAX_BYTES,
    augmented: bool = False,
    rows_per_file: int | None = None,
) -> ExportResult:
    """Write one split's features, labels, class names and paths to ``out``, block by block.

    ``format`` is npz, parquet or csv (default: from the suffix of ``out``, which must be its: an existing ``out`` is
    replaced only when it is an earlier export, :mod:`featstore.store.export_files`). ``features`` is ``flat``
    (every value) or ``avg``/``max`` (global pooling over space of (N, h, w, c) features; features
    already pooled at extraction are written as they are). ``max_bytes`` bounds the features read per
    block (raised to one chunk if smaller). ``augmented=True`` writes the split's augmented copies instead, with
    their copy index (1..K) as one more array or column ``copy``. ``rows_per_file`` (Parquet only) makes ``out`` a
    folder of shards ``part-00000.parquet``, ... of at most that many rows each (numbered with more digits past 100,000
    shards: name order is row order), which pyarrow datasets, Ray Data, Spark and DuckDB read as one table. Example::

        export("features.h5", "train", "train.parquet", features="avg")
        export("features.h5", "train", "train_shards", format="parquet", rows_per_file=100_000)
        X = np.load(export("features.h5", "test", "test.npz").path)["features"]
    """
    check_paths(required=True, out=out)  # '' would be Path('.'): the current folder
    out = Path(out)
    fmt = _format(out, format if format is not None or rows_per_file is None else "parquet")
    if features not in REDUCTIONS:
        raise choices_error("--features", features, REDUCTIONS)
    check_rows_per_file(rows_per_file, fmt)
    writer = _WRITERS[fmt]
    if fmt == "parquet":
        _pyarrow()  # fail before reading anything
    fs = FeatureStore(store)
    name = fs.resolve(extractor)
    from featstore.outputs import resolved  # here: the module is at its line limit

    if resolved(out, "--out") == fs.path.resolve():
        raise ConfigError(f"--out {out} is the store itself; choose another file name")
    if rows_per_file is not None:
        refuse_shard_folder(out)
    elif out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name inside it, e.g. {out / f'{split}.{fmt}'}")
    if rows_per_file is None and os.path.lexists(out) and not (out.exists() and stat.S_ISREG(out.stat().st_mode)):
        raise ConfigError(
            f"--out {out} exists and is not a regular file (a folder, FIFO, device or dangling link); choose another file name"
        )
    if rows_per_file is None:
        probe_output(out, "--out")  # a link, a missing or non-folder parent, a folder no file can be made in: first
        refuse_image(out, "--out")  # an image of the dataset, say
        check_own_output(out, "--out", f"an export ({fmt})", SUFFIXES[fmt], lambda p: is_export(p, fmt))  # model.keras
    info = fs.split_info(split, name, augmented=augmented)  # StoreError naming the splits there (or the missing copies)
    version = _version(fs, name, split, augmented)  # before labels, names, paths or features are read
    n, shape = int(info["committed_rows"]), tuple(info["shape"][1:])
    if features != "flat" and len(shape) < 2:
        logger.info(
            "features of %s/%s are already vectors %s; --features %s leaves them as they are (recorded as flat)",
            name,
            split,
            shape,
            features,
        )
        features = "flat"  # what is written: the export's metadata and result say so, not "max" (attack 66 #6)
    if features != "flat":  # a (C, H, W) map of an older featstore: avg/max would mix its channels (attack 61 #3)
        refuse_unknown_layout(fs.metadata(name), shape, f"extractor {name!r}'s {split} features", "--features flat")
    d = int(np.prod(shape)) if features == "flat" or len(shape) < 2 else int(shape[-1])  # (tokens, dims): over tokens
    from featstore.store.storage import chunk_bytes  # the chunk's own bytes (rows x the chunk's row), not rows x row

    block = max(max_bytes, chunk_bytes(info))
    meta = {
        "extractor": name,
        "split": split,
        "features": features,
        "feature_shape": list(shape),
        "class_names": fs.class_names(name),
        "fingerprint": fs.metadata(name).get("fingerprint", ""),
    }
    labels = fs.labels(split, name, augmented=augmented)
    paths = _StoredPaths(fs, split, name, augmented, n)  # read a block at a time: 10⁶ paths are ~200 MB as one list
    copy = fs.copies(split, name) if augmented else None
    if augmented:
        meta["augmented"] = {k: info[k] for k in ("augment_copies", "augment_spec", "augment_seed")}

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]]:
        start = 0
        for X, y in fs.iter_batches(split, name, max_bytes=block, augmented=augmented):
            yield (
                _reduce(X, features),
                y,
                paths[start : start + len(y)],
                None if copy is None else copy[start : start + len(y)],
            )
            start += len(y)

    def same(written: None) -> None:  # read across openings: a split replaced meanwhile gave new rows, old labels
        _version(fs, name, split, augmented, version)

    if rows_per_file is not None:
        width, copies = shard_width(n, rows_per_file), copy is not None  # one width: name order is row order (58 #4)
        write_shards(out, lambda tmp: same(_write_shards(tmp, blocks(), rows_per_file, d, meta, copies, width)))
    else:
        write_atomic(out, lambda tmp: same(writer(tmp, blocks(), n, d, meta, labels, paths, copy)), "--out")
    logger.debug("exported %d rows x %d values of %s/%s to %s (%s)", n, d, name, split, out, fmt)
    return ExportResult(out, fmt, n, d, features)


def _version(fs: FeatureStore, name: str, split: str, augmented: bool, seen: tuple | None = None) -> tuple:
    """The split's version (``layout.same_split``), refused when it is not ``seen``: what an export read first."""
    key = f"{name}/{split}/{AUGMENTED}" if augmented else f"{name}/{split}"
    with fs.file.open("r") as f:
        return same_split(f, key, seen, f"{fs.path}:/{key}")


class _StoredPaths:
    """A split's paths as a sequence that reads them from the store when sliced or iterated, a block at a time: what
    the writers take (``.npz`` goes over them twice: the widest first, then the column). ``step`` rows of paths
    (at most 4 KiB each) are read at once when iterated."""

    def __init__(self, fs: FeatureStore, split: str, name: str, augmented: bool, n: int, step: int = 4096):
        self.fs, self.split, self.name, self.augmented, self.n, self.step = fs, split, name, augmented, n, step

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> list[str]:
        start, stop, _ = rows.indices(self.n)
        return self.fs.paths(self.split, self.name, augmented=self.augmented, start=start, stop=stop)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, self.n, self.step):
            yield from self[start : start + self.step]


def _format(out: Path, format: str | None) -> str:
    """The format asked for, or the one the suffix of ``out`` names."""
    if format is not None:
        if format not in FORMATS:
            raise choices_error("--format", format, FORMATS)
        return format
    if out.suffix.lower() not in _SUFFIXES:
        raise ConfigError(
            f"cannot tell the format of {out} from its suffix; end it in .npz, .parquet or .csv, "
            f"or give --format ({', '.join(FORMATS)})"
        )
    return _SUFFIXES[out.suffix.lower()]


def _reduce(X: np.ndarray, how: str) -> np.ndarray:
    """(N, ...) block -> (N, d) float32: flattened, or averaged/maxed over every axis but the last (h and w of (N, h,
    w, c), the tokens of (N, tokens, dims): flattened while the file said avg, as fit's reduce was: attack 58 #3)."""
    X = X.astype(np.float32, copy=False)
    if X.ndim >= 3 and how != "flat":
        axes = tuple(range(1, X.ndim - 1))
        X = X.mean(axis=axes) if how == "avg" else X.max(axis=axes)
    return X.reshape(len(X), -1)


def _pyarrow():
    """pyarrow and pyarrow.parquet, or an error naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ConfigError(
            "Parquet export needs pyarrow: pip install 'featstore[parquet]' (or pip install pyarrow); "
            "or export to .npz or .csv, which need nothing more"
        ) from None
    return pyarrow, pyarrow.parquet


def _write_npz(tmp: Path, blocks, n: int, d: int, meta: dict, labels: np.ndarray, paths, copy=None) -> None:
    """features.npy streamed into the zip member, then labels, paths (block by block) and the small arrays (np.load
    reads it like np.savez's). Refused first, before anything is read or written, when the paths column would be mostly
    padding (:func:`_npz_paths_width`)."""
    width = _npz_paths_width(paths, meta)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("features.npy", "w", force_zip64=True) as fh:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                "fortran_order": False,
                "shape": (n, d),
            }
            np.lib.format.write_array_header_1_0(fh, header)
            for X, *_ in blocks:
                fh.write(memoryview(np.ascontiguousarray(X)).cast("B"))  # the block itself: no bytes copy of it
        small = {
            "labels": labels.astype(np.int64),
            "paths": None,  # written block by block (_write_npz_paths)
            "class_names": np.array(meta["class_names"], dtype=str),
            **({} if copy is None else {"copy": copy.astype(np.int64)}),
            "featstore": np.array(MARK),  # only featstore writes it: an export replaces an npz holding it only
        }
        for key, arr in small.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                if arr is None:
                    _write_npz_paths(fh, paths, width)
                else:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)


def _write_npz_paths(fh, paths, width: int) -> None:
    """paths.npy: (N,) ``<U{width}``, as ``np.array(paths, dtype=str)`` gives, made and written 16 MB at a time."""
    kind = np.dtype(f"<U{width}")
    header = {"descr": np.lib.format.dtype_to_descr(kind), "fortran_order": False, "shape": (len(paths),)}
    np.lib.format.write_array_header_1_0(fh, header)
    step = max(1, _NPZ_PATHS_BLOCK // kind.itemsize)
    for i in range(0, len(paths), step):
        fh.write(np.array(paths[i : i + step], dtype=kind).view(np.uint8))  # no bytes copy of the block


_NPZ_PATHS_BLOCK = 16 << 20  # bytes of paths.npy made at a time
_NPZ_PATHS_MAX = 256 << 20  # a paths column over this, and over _NPZ_PADDING x the paths' own size, is refused
_NPZ_PADDING = 4


def _npz_paths_width(paths, meta: dict) -> int:
    """The width (characters) of the ``.npz`` ``paths`` column; ConfigError when it would take over 256 MiB and over 4
    times what the paths hold: ``.npz`` stores every path as wide as the widest, 4 bytes a character (one 4,000-character
    path among 40,000 short ones made a 641 MB file, at 10^6 rows 16 GB)."""
    lengths = np.fromiter(map(len, paths), np.int64, len(paths))
    if not len(lengths):
        return 1
    row, width = int(lengths.argmax()), max(1, int(lengths.max()))
    column = len(paths) * width * 4
    if column > _NPZ_PATHS_MAX and len(paths) * width > _NPZ_PADDING * int(lengths.sum()):
        raise ConfigError(
            f".npz export of {meta['extractor']}/{meta['split']} refused: its paths column would take "
            f"{column / 1e6:,.0f} MB, since .npz stores each of the {len(paths):,} paths as wide as the widest "
            f"(row {row}, {width:,} characters; the average is {lengths.mean():,.0f}). Export to .parquet or .csv, "
            f"which store each path at its own length"
        )
    return width


def _write_parquet(tmp: Path, blocks, n: int, d: int, meta: dict, labels, paths, copy=None) -> None:
    """One row group per block; features as a fixed-size list column (copies: a ``copy`` column after ``class``), then
    ``path_bytes``: the exact file-system bytes of each path (``path`` escapes what is not UTF-8)."""
    pa, pq = _pyarrow()
    schema = _parquet_schema(d, meta, copy is not None)
    names = [_utf8(c) for c in meta["class_names"]]
    with _arrow_errors(), pq.ParquetWriter(tmp, schema) as writer:
        for block in blocks:
            writer.write_table(_parquet_table(schema, names, *block))
            pa.default_memory_pool().release_unused()  # mimalloc kept each block's buffers (peak 719 -> 638 MB, 800,000 rows)


def _parquet_schema(d: int, meta: dict, copies: bool):
    """The Parquet schema of an export: every file and every shard has this one (class names etc. in its metadata)."""
    pa, _ = _pyarrow()
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.int64()),
            ("class", pa.string()),
            *([("copy", pa.int64())] if copies else []),
            ("features", pa.list_(pa.float32(), d)),
            ("path_bytes", pa.binary()),
        ],
        metadata={"featstore": json.dumps(meta)},
    )


def _parquet_table(schema, names: list[str], X: np.ndarray, y: np.ndarray, p: list[str], c: np.ndarray | None):
    """One block of rows as an Arrow table of ``schema``."""
    pa, _ = _pyarrow()
    d = schema.field("features").type.list_size
    return pa.table(
        [
            pa.array([_utf8(x) for x in p], pa.string()),
            pa.array(y, pa.int64()),
            pa.array([names[i] for i in y], pa.string()),
            *([] if c is None else [pa.array(c, pa.int64())]),
            pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1), pa.float32()), d),
            pa.array([os.fsencode(x) for x in p], pa.binary()),
        ],
        schema=schema,
    )


def _write_shards(folder: Path, blocks, rows_per_file: int, d: int, meta: dict, copies: bool, width: int) -> None:
    """``part-00000.parquet``, ... (numbers of ``width`` digits) into ``folder``: each at most ``rows_per_file`` rows,
    row groups of at most one block."""
    pa, pq = _pyarrow()
    schema = _parquet_schema(d, meta, copies)
    names = [_utf8(c) for c in meta["class_names"]]
    part, room, writer = 0, 0, None
    with _arrow_errors():
        try:
            for X, y, p, c in blocks:
                start = 0
                while start < len(y):
                    if room == 0:
                        if writer is not None:
                            writer.close()
                        writer = pq.ParquetWriter(folder / shard_name(part, width), schema)
                        part, room = part + 1, rows_per_file
                    take = min(room, len(y) - start)
                    end = start + take
                    block = (X[start:end], y[start:end], p[start:end], None if c is None else c[start:end])
                    writer.write_table(_parquet_table(schema, names, *block))
                    pa.default_memory_pool().release_unused()
                    start, room = end, room - take
        finally:
            if writer is not None:
                writer.close()
    if part == 0:  # an empty split: one empty shard, so that readers still find the schema
        pq.ParquetWriter(folder / shard_name(0, width), schema).close()


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8: a non-UTF-8 byte of a file name (a lone surrogate) becomes the characters ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def _write_csv(tmp: Path, blocks, n: int, d: int, meta: dict, labels, paths, copy=None) -> None:
    """Header, then one line per image: path, label, class name (each through ``csv_cell``), (copy index,) d floats."""
    names = [csv_cell(c) for c in meta["class_names"]]
    with open(
        tmp, "w", newline="", encoding="utf-8", errors="surrogateescape"
    ) as fh:  # non-UTF-8 names: their own bytes
        fh.write(
            ",".join(["path", "label", "class", *(["copy"] if copy is not None else []), *(f"f{i}" for i in range(d))])
            + "\n"
        )
        for X, y, p, c in blocks:
            # ~12 characters a value, held twice (the text and its lines): 6 times the float32 block; a few thousand rows
            step = max(1, _CSV_TEXT_BYTES // (X.shape[1] * 12 * 2 or 1))
            for a in range(0, len(y), step):
                values = io.StringIO()
                np.savetxt(values, X[a : a + step], fmt="%.9g", delimiter=",")
                cols = [f"{k}," for k in c[a : a + step]] if c is not None else [""] * len(y[a : a + step])
                fh.writelines(
                    f"{csv_cell(path)},{label},{names[label]},{k}{row}\n"
                    for path, label, k, row in zip(
                        p[a : a + step], y[a : a + step], cols, values.getvalue().splitlines()
                    )
                )


_CSV_TEXT_BYTES = 16 << 20  # CSV text made at once (a 64 MB float16 block of 512-d rows was 400 MB of text, twice)


class _arrow_errors:
    """pyarrow's OSError for a full disk carries no errno (only its message): give it one, so the line says so."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError) and not isinstance(exc, OutputError) and exc.errno is None:
            code = errno.ENOSPC if "No space left" in str(exc) or "errno 28" in str(exc).lower() else errno.EIO
            raise OSError(code, os.strerror(code)) from exc
        return False


_WRITERS: dict[str, Callable] = {"npz": _write_npz, "parquet": _write_parquet, "csv": _write_csv}
