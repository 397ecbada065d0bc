"""How a split's datasets are stored, checked from HDF5's own bookkeeping (chunk shape, chunk index, filters): no row read.

featstore writes features chunked along rows (each chunk whole rows), string columns in chunks of 1,024 and 256 rows,
and writes every chunk of the committed rows before the commit that counts them. A store that breaks one of these was
made or repacked by something else, or lost part of its chunk index (a power loss: the commit attribute reached the
disk, the chunk index did not; ``flush()`` is not fsync), and is refused before a row is read:

- features chunked across their values (``(N, 1)``: every chunk holds one value of every row): any block of rows reads
  every chunk, so reading block by block unpacks the whole split once per block, and reading it at once holds it all;
- rows of a row dataset whose chunks were never allocated: they read back as HDF5's fill value (zeros, empty paths)
  without a word, and a fit scored them as images.

A chunk packed by an HDF5 filter that this h5py cannot apply (a plugin such as Blosc) is named as such when its read
fails (:func:`unreadable`), not taken for disk damage. Also here: a split's sizes in memory from its summary
(:func:`row_bytes`, :func:`chunk_rows`, :func:`chunk_bytes`), which the readers' budgets use.
"""

from __future__ import annotations

import h5py
import numpy as np

from featstore.errors import StoreError
from featstore.store.attr_dense import FileBytes, Unparsed, driver_of
from featstore.store.btree1 import chunk_count
from featstore.units import format_bytes

REDO = "Re-extract this split with --overwrite (or into a new --store)."
_PLUGINS = {
    307: "bzip2",
    32001: "blosc",
    32004: "lz4",
    32008: "bitshuffle",
    32013: "zfp",
    32015: "zstd",
    32026: "blosc2",
}


def refuse_split_columns(ds: h5py.Dataset, where: str) -> None:
    """Refuse features whose chunks do not span whole rows (see the module), naming the chunk's true size and a repack
    that fixes it."""
    if ds.chunks is None or ds.ndim < 2 or all(c >= s for c, s in zip(ds.chunks[1:], ds.shape[1:])):
        return
    chunk = int(np.prod(ds.chunks, dtype=np.int64)) * ds.dtype.itemsize
    per_row = int(np.prod([-(-s // c) for c, s in zip(ds.chunks[1:], ds.shape[1:])], dtype=np.int64))
    row = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    rows = max(1, (1 << 20) // max(row, 1))
    spec = "x".join(str(v) for v in (rows, *ds.shape[1:]))
    raise StoreError(
        f"{where}/features is chunked {tuple(ds.chunks)} ({format_bytes(chunk)} a chunk), across its values: each row "
        f"is spread over {per_row:,} chunks, so any block of rows unpacks every chunk of the split (featstore writes "
        f"whole rows per chunk). {REDO} Or repack it: h5repack -l {ds.name}:CHUNK={spec} {ds.file.filename} new.h5"
    )


def counted_chunks(ds: h5py.Dataset, where: str) -> int:
    """The chunks in ``ds``'s chunk index (``ds`` chunked), counted from the file's bytes before HDF5 walks the index
    (``btree1.chunk_count``: each node once, at most the chunks its extent allows): refused in one line naming
    ``where`` otherwise. An index whose nodes all repeated one child made HDF5 count 64^(d+1) chunks for a dataset of
    one (10^9 from 10 KB added: ``info`` 33 s, ``export`` 89 s, attack 29)."""
    if driver_of(ds) != "sec2":  # HDF5_DRIVER set: the file's bytes are not read directly
        raise StoreError(
            f"{where}: its chunks cannot be counted before HDF5 walks them with HDF5's {driver_of(ds)!r} driver; "
            f"refused unread: open the store with HDF5's default driver (unset HDF5_DRIVER)"
        )
    if ds.file.id.get_intent() & h5py.h5f.ACC_RDWR:
        ds.file.flush()  # what this process changed is in HDF5's cache until written
    most = int(np.prod([-(-s // c) for c, s in zip(ds.chunks, ds.shape)], dtype=np.int64))
    top = int(np.prod([-(-(s if m is None else m) // c) for c, s, m in zip(ds.chunks, ds.shape, ds.maxshape)]))
    try:
        loc = (ds.file.id, ds.name.encode("utf-8", "surrogateescape")) if ds.name else (ds.id,)  # (by name, as
        count = chunk_count(FileBytes(ds), h5py.h5g.get_objinfo(*loc).objno[0], most, top)  # strings' is)
    except Unparsed as exc:
        raise StoreError(
            f"{where}: its chunk index cannot be counted before HDF5 walks it ({exc}); featstore never writes such an "
            f"index, so the store is crafted or damaged. {REDO}"
        ) from None
    return ds.id.get_num_chunks() if count is None else count  # None: HDF5's count, bounded by the index's header


def missing_chunks(ds: h5py.Dataset, rows: int, where: str | None = None) -> tuple[int, int]:
    """(chunks never allocated, chunks in all) over the first ``rows`` rows of ``ds``: such rows read as the fill value.
    Cheap: the chunk index counted from the file's bytes (:func:`counted_chunks`, ``where`` naming ``ds`` in its
    refusal; 1 ms at 10^4 chunks), then, only when some chunk of the extent is absent, one walk of the chunk index by
    HDF5; no row is read."""
    if rows <= 0:
        return 0, 0
    if ds.chunks is None:  # contiguous storage never written reads as fill values too; compact is always there
        return int(ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS and ds.id.get_offset() is None), 1
    c = ds.chunks[0]
    need = -(-min(rows, ds.shape[0]) // c)
    per_row = int(np.prod([-(-s // k) for k, s in zip(ds.chunks[1:], ds.shape[1:])], dtype=np.int64))
    if counted_chunks(ds, where or f"{ds.file.filename}:{ds.name}") >= -(-ds.shape[0] // c) * per_row:
        return 0, need  # every chunk of the extent is allocated
    if hasattr(ds.id, "chunk_iter"):  # HDF5 1.14's one walk of the index: 0.25 s at 10^5 chunks
        starts: set[int] = set()
        ds.id.chunk_iter(lambda info: starts.add(info.chunk_offset[0]) if info.chunk_offset[0] < need * c else None)
        return need - len(starts), need
    zeros = (0,) * (ds.ndim - 1)  # a look-up per chunk (its cost grows with the chunk's place in the index)
    return sum(ds.id.get_chunk_info_by_coord((i * c, *zeros)).byte_offset is None for i in range(need)), need


def refuse_missing_chunks(ds: h5py.Dataset, rows: int, where: str) -> None:
    """Refuse ``ds`` (named ``where``) when chunks of its first ``rows`` (committed) rows were never written (see the
    module)."""
    gone, need = missing_chunks(ds, rows, where)
    if gone:
        fill = "empty strings" if ds.dtype.kind in "OS" else "zeros"
        raise StoreError(
            f"{where}: {gone} of the {need} chunks holding its {rows:,} committed rows were never written to the file "
            f"(they would read back as {fill}): a write cut short before it reached the disk (a power loss?), or a "
            f"crafted store. {REDO}"
        )


def unavailable_filters(ds: h5py.Dataset) -> list[str]:
    """The HDF5 filters of ``ds``'s pipeline that this h5py cannot apply, each as ``<id> (<name>)``."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            label = name.decode("utf-8", "replace").strip("\0 ") if isinstance(name, bytes) else str(name or "")
            out.append(f"{code} ({label or _PLUGINS.get(code, 'unregistered')})")
    return out


DAMAGED = (
    "the file is damaged (disk or copy error). `featstore check` lists every damaged block; re-extract this split with "
    "--overwrite."
)


def unreadable(ds: h5py.Dataset, what: str, exc: OSError, damaged: str = DAMAGED) -> str:
    """Why ``what`` (rows of ``ds``) could not be read (HDF5's ``exc``): a filter this h5py lacks, named with its fix,
    else ``damaged`` (the caller's words for a damaged file)."""
    try:
        missing = unavailable_filters(ds)
    except (OSError, ValueError):  # the dataset's header itself cannot be read: that is damage
        missing = []
    if not missing:
        return f"{what} cannot be read ({exc}): {damaged}"
    return (
        f"{what} cannot be read: they are compressed with HDF5 filter {', '.join(missing)}, which this h5py cannot read "
        f"(the data may well be intact). Install hdf5plugin (pip install hdf5plugin) and point HDF5 at it: "
        f'HDF5_PLUGIN_PATH=$(python -c "import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)"), or re-extract this '
        f"split with --overwrite"
    )


def row_bytes(info: dict) -> int:
    """Bytes one stored row of a split takes in memory, from its :meth:`featstore.store.reader.FeatureStore.split_info`."""
    return int(np.prod(info["shape"][1:])) * np.dtype(info["dtype"]).itemsize


def chunk_rows(info: dict) -> int:
    """Rows per HDF5 chunk of a split (1 where the split is not chunked), from its :meth:`featstore.store.reader.FeatureStore.split_info`."""
    return int(info["chunks"][0]) if info.get("chunks") else 1


def chunk_bytes(info: dict) -> int:
    """Bytes one HDF5 chunk of a split's features holds: its rows times the bytes of the chunk's row (its own shape, not
    the dataset's row; a chunk never spans less than whole rows in a split a reader opens: ``check_chunks``)."""
    if not info.get("chunks"):
        return row_bytes(info)
    return int(np.prod(info["chunks"], dtype=np.int64)) * np.dtype(info["dtype"]).itemsize
