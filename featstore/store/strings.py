"""A store's variable-length string columns (paths, failure reasons) bounded before a row is materialised.

An HDF5 variable-length string is a heap ID in the dataset (4 bytes of length, then the heap object's address) and its
bytes in a global heap. Nothing stops every row's ID from pointing at one large heap object: a 3.8 MB store whose 600
test paths all named one 1 MiB string made ``export`` write 629 MB and ``fit`` peak at 2.1 GB (20,000 rows: ~60 GB),
because reading a row copies its string out of the heap once per row. So a path column's lengths are read first from
the heap IDs themselves (:func:`vlen_lengths`: the dataset's raw bytes, chunk by chunk, never the heap), and a string
over its limit (:data:`MAX_PATH_BYTES`, PATH_MAX, for paths) or rows whose strings add up to more bytes than the file
holds (each stored string is in the file once) are refused before a row is read.

Class names and every other attribute are read through :mod:`featstore.store.attr_values`, which measures theirs from
their heap IDs too; it shares :func:`refuse_sizes`, :func:`fix_for` and the message helpers (:func:`shown`) from here.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections import OrderedDict

import h5py
import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.store.attr_dense import FileBytes, driver_of, opened
from featstore.store.gheap import compact_lengths, id_lengths, stored_lengths
from featstore.store.storage import counted_chunks
from featstore.store.unpack import filters, unpacked

MAX_PATH_BYTES = 4096  # PATH_MAX: no file name featstore stored is longer
MAX_REASON_BYTES = 64 << 10  # a failure's reason (an exception's message)
_SLACK = 64 << 10  # bytes allowed past the file's size when adding up a column's strings


def limit_of(ds) -> int:
    """The longest string allowed in dataset ``ds``: a failure's reason, else a path."""
    return MAX_REASON_BYTES if ds.name.rsplit("/", 1)[-1] == "reasons" else MAX_PATH_BYTES


def vlen_lengths(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """The byte lengths of the variable-length strings ``start:stop`` of ``ds``, from their heap IDs (the dataset's own
    bytes, read for those rows only, :data:`gheap.ID_BLOCK_BYTES` at a time, whatever the chunk's size; a compact dataset's
    from its header), without reading a string; a column packed by deflate and shuffle (``h5repack -f GZIP=4``) unpacked a chunk at a
    time (:mod:`featstore.store.unpack`). Refused: a column packed by another filter or virtual, another file driver,
    and a heap ID whose heap collection HDF5 would loop in or misread (``gheap``)."""
    plist = ds.id.get_create_plist()
    elem = 8 + opened(ds).addr  # length (4), heap address, object index (4)
    if stop <= start:
        return np.zeros(0, np.uint32)
    if driver_of(ds) != "sec2":  # HDF5_DRIVER set: the file's bytes are not read directly
        raise StoreError(
            f"{ds.file.filename}:{ds.name} cannot be measured before it is read with HDF5's {driver_of(ds)!r} driver; "
            f"refused unread: open the store with HDF5's default driver (unset HDF5_DRIVER)"
        )
    layout, fh = plist.get_layout(), FileBytes(ds)
    if fh.writable:
        ds.file.flush()  # heap collections this process wrote are in HDF5's cache until written
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:  # never written: every row is the fill value, an empty string
            return np.zeros(stop - start, np.uint32)
        return stored_lengths(ds, fh, offset + start * elem, stop - start, start, fix_for(ds))
    if layout == h5py.h5d.COMPACT:
        return compact_lengths(ds, fh, start, stop, fix_for(ds))
    if layout != h5py.h5d.CHUNKED:
        raise StoreError(
            f"{ds.file.filename}:{ds.name} is a virtual string column, which featstore never writes: {fix_for(ds)}"
        )
    where, fix = f"{ds.file.filename}:{ds.name}", fix_for(ds)
    pipeline = filters(ds, where) if plist.get_nfilters() else []  # h5repack -f GZIP=4 (attack 32 #1)
    rows, out = ds.chunks[0], np.zeros(stop - start, np.uint32)
    places = _chunk_places(ds, fh.fd)
    if places is None:  # HDF5 before 1.14: looked up one by one, each O(index)
        looked = ((c, ds.id.get_chunk_info_by_coord((c,))) for c in range(start - start % rows, stop, rows))
        found = ((c, i.byte_offset, i.size, i.filter_mask) for c, i in looked if i and i.byte_offset is not None)
    else:  # chunks not allocated are not there: fill values, empty strings
        first_rows, offsets, sizes, masks = places
        a, b = np.searchsorted(first_rows, [start - start % rows, stop])
        found = zip(*(x[a:b].tolist() for x in (first_rows, offsets, sizes, masks)))
    for c, offset, size, mask in found:
        # only the rows asked, ID_BLOCK_BYTES at a time: a chunk of 2**25 rows (512 MiB of IDs) was read whole for 50
        first, last = max(start, c), min(stop, c + rows)
        if pipeline:  # unpacked whole (at most CHUNK_MOST bytes), then measured as a stored chunk's IDs are
            ids = unpacked(fh.fd, pipeline, (c, offset, size, mask), rows, elem, where, fix)
            out[first - start : last - start] = id_lengths(fh, ids[first - c : last - c], where, fix, first)
            continue
        if (last - c) * elem > size:
            raise StoreError(f"{where}: chunk {c} is shorter than its rows: the store is damaged")
        at = offset + (first - c) * elem
        out[first - start : last - start] = stored_lengths(ds, fh, at, last - first, first, fix)
    return out


def _chunk_places(ds: h5py.Dataset, fd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(first row, byte offset, stored size, filter mask) of each allocated chunk of ``ds``, sorted by row, from one walk of its
    chunk index (HDF5 1.14's ``chunk_iter``); None where the walk is missing (HDF5 before 1.14).

    A look-up costs O(index) (a column chunked one row a chunk: 40,000 paths' lengths in 15 s, attack 20), and so did a
    walk per call: check, export and compact measure a column a block at a time, each block in its own opening of the
    file, so a walk each made them quadratic again (one row a chunk: ``check`` of 40,000 rows in 47 s, attack 21). So
    the walk is kept, for the last :data:`_PLACES_KEPT` columns, under the file's identity and state (``fd``'s device,
    inode, size, modification and change times in ns: a write between two openings changes them) and the column's
    object address, name, shape and chunks. It holds 32 bytes a chunk within the column's shape (repeats and chunks
    past it are dropped): at most 32 bytes a row. Not guaranteed: where timestamps are coarse (kernels before 6.13,
    NFS), a column deleted and made again at its object address, same shape, chunks and file size, within one tick
    between two openings, is read at its old places."""
    if not hasattr(ds.id, "chunk_iter"):
        return None
    if ds.name is None:  # an anonymous dataset: nothing to key it by
        counted_chunks(ds, f"{ds.file.filename}: an anonymous dataset")
        return _walk(ds)
    st, addr = os.fstat(fd), h5py.h5g.get_objinfo(ds.file.id, ds.name.encode()).objno  # h5o.get_info: O(index)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, addr, ds.name, ds.shape, ds.chunks)
    with _PLACES_LOCK:
        if (places := _PLACES.get(key)) is not None:
            _PLACES.move_to_end(key)
            return places
    counted_chunks(ds, f"{ds.file.filename}:{ds.name}")  # before HDF5 walks it: each node once, within the extent
    places = _walk(ds)
    with _PLACES_LOCK:
        _PLACES[key] = places
        while len(_PLACES) > _PLACES_KEPT:
            _PLACES.popitem(last=False)
    return places


def _walk(ds: h5py.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One walk of ``ds``'s chunk index: its allocated chunks within its shape, by first row (a repeat: the last)."""
    rows, n = ds.chunks[0], ds.shape[0]
    first, at, size, mask = array("q"), array("q"), array("q"), array("q")

    def keep(info) -> None:
        c = info.chunk_offset[0]
        if c < n and c % rows == 0 and info.byte_offset is not None:  # HDF5 reads no other: they are not rows of ds
            first.append(c)
            at.append(info.byte_offset)
            size.append(info.size)
            mask.append(info.filter_mask)

    ds.id.chunk_iter(keep)
    order = np.argsort(np.array(first, np.int64), kind="stable")
    c, o, z, m = (np.array(a, np.int64)[order] for a in (first, at, size, mask))
    last = np.ones(len(c), bool)
    last[:-1] = c[1:] != c[:-1]  # of repeated first rows (a crafted index), the last walked
    return c[last], o[last], z[last], m[last]


_PLACES: OrderedDict = OrderedDict()  # (file identity and state, column) -> _walk's places; see _chunk_places
_PLACES_KEPT = 2  # columns whose places are kept (the last walked): a command measures one column at a time
_PLACES_LOCK = threading.Lock()


def unreadable_strings(ds, start: int, stop: int, exc: OSError) -> StoreError:
    """The one line for strings ``start:stop`` of ``ds`` that HDF5 cannot read (a heap ID whose length disagrees with
    its heap object, a damaged heap): the store, split and dataset, and the fix."""
    split = ds.parent.name.removesuffix("/listing").removesuffix("/failed").lstrip("/")
    return StoreError(
        f"{ds.file.filename}:/{split}: {ds.name.lstrip('/')} rows {start}..{stop - 1} cannot be read ({exc}): their "
        f"strings do not match the file's string heap, so the store is damaged or crafted. Re-extract this split with "
        f"--overwrite (or into a new --store)"
    )


def refuse_long(ds: h5py.Dataset, start: int, stop: int, limit: int | None = None) -> None:
    """Refuse rows ``start:stop`` of the string column ``ds`` before they are read when one of its strings is over
    ``limit`` bytes (:func:`limit_of`), or when they add up to more bytes than the file holds (rows pointing at one
    shared string). A fixed-width column's width is bounded by ``layout.string_problem``."""
    if ds.dtype.kind != "O" or stop <= start:
        return
    limit = limit_of(ds) if limit is None else limit
    where = f"{ds.file.filename}:{ds.name}"
    fix = "the store is crafted or damaged; re-extract this split with --overwrite (or into a new --store)"
    refuse_sizes(
        vlen_lengths(ds, start, stop), limit, ds.file.filename, fix,
        one=lambda i: f"{where}: row {start + i} holds",
        every=f"{where}: rows {start}..{stop - 1} add",
        note=lambda i, over: f"{len(over):,} such row(s) in rows {start}..{stop - 1}",
    )  # fmt: skip


def refuse_sizes(sizes: np.ndarray, limit: int, filename, fix: str, one, every: str, note) -> None:
    """Refuse strings of ``sizes`` bytes, measured before any is read, when one is over ``limit`` bytes (named by
    ``one(i)``, ``note(i, over)`` in brackets) or all add up to more than the file ``filename`` holds plus a slack
    (named by ``every``): their heap IDs share strings, which featstore never writes, and reading them would copy
    one string per ID. The column's rows and an attribute's items are both refused here."""
    if len(over := np.flatnonzero(sizes > limit)):
        i = int(over[0])
        raise StoreError(
            f"{one(i)} a string of {int(sizes[i]):,} bytes, over the {limit:,}-byte limit ({note(i, over)}): {fix}"
        )
    total, size = int(sizes.sum(dtype=np.int64)), os.path.getsize(filename)
    if total > size + _SLACK:
        raise StoreError(
            f"{every} up to {total:,} bytes of strings in a file of {size:,} bytes: their heap IDs share strings, "
            f"which featstore never writes; refused unread: {fix}"
        )


def fix_for(obj) -> str:
    """What to do about a crafted or damaged attribute of ``obj``, by what it is (attack 23 #14: one split's fix for
    every object was an advice loop): a split's (or anything inside one) is re-extracted with --overwrite; the root's
    and an extractor's are kept by that re-extraction (the writer refuses an extractor's with the same message), so
    they need a new --store (an extractor's: or another --name in this one)."""
    depth = len([p for p in (getattr(obj, "name", None) or "").split("/") if p])
    if depth >= 2:
        return "the store is crafted or damaged. Re-extract this split with --overwrite (or into a new --store)"
    if depth == 1:
        return (
            "the store is crafted or damaged. Extract into a new --store (or into this one under another --name): "
            "re-extracting a split keeps its extractor's attributes"
        )
    return (
        "the store is crafted or damaged. Extract into a new --store: re-extracting a split keeps the file's own "
        "attributes"
    )


def shown(name: str | bytes, width: int = 40) -> str:
    """A name for a message: escaped for the terminal, cut to ``width`` characters with an ellipsis."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    text = repr(name if len(name) <= width else name[:width]) + ("…" if len(name) > width else "")
    return terminal_safe(text)


def shown_list(values, most: int = 8) -> str:
    """A list for a message: its first ``most`` items, each cut by :func:`shown`, and how many more there are."""
    if not isinstance(values, list):
        return shown(str(values), 60)
    more = f", ... ({len(values) - most:,} more)" if len(values) > most else ""
    return "[" + ", ".join(shown(str(v)) for v in values[:most]) + more + "]"


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted (linear: ``names.count`` for each was quadratic)."""
    seen: set[str] = set()
    twice: set[str] = set()
    for n in names:
        (twice if n in seen else seen).add(n)
    return sorted(twice)
