"""Variable-length strings of a store (paths, failure reasons, class names) bounded before they are materialised.

An HDF5 variable-length string is a heap ID in the dataset (4 bytes of length, then the heap object's address) and its
bytes in a global heap. Nothing stops every row's ID from pointing at one large heap object: a 3.8 MB store whose 600
test paths all named one 1 MiB string made ``export`` write 629 MB and ``fit`` peak at 2.1 GB (20,000 rows: ~60 GB),
because reading a row copies its string out of the heap once per row. So a path column's lengths are read first from
the heap IDs themselves (:func:`vlen_lengths`: the dataset's raw bytes, chunk by chunk, never the heap), and a string
over its limit (:data:`MAX_PATH_BYTES`, PATH_MAX, for paths) or rows whose strings add up to more bytes than the file
holds (each stored string is in the file once) are refused before a row is read.

Class names are an attribute, which HDF5 reads whole, expanding each heap ID as it reads; their count is bounded before
the read, and so are their lengths, from the heap IDs in the file's own bytes (``attr_ids``: 3,000 IDs naming one 2
MiB string made ``info`` ask for 6 GiB, attack 23), before any name is read, compared or printed (:func:`read_names`:
``validate_split``'s repeat check compared 1 MiB names K^2 times, and ``fit`` printed one of them whole in a 1 MB
error line).
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
from featstore.store.attr_dense import FileBytes
from featstore.store.attr_ids import Unparsed, attr_count, heap_ids, lengths, peek, walks_kept
from featstore.store.gheap import ID_BLOCK_BYTES, compact_lengths, refuse_damaged, stored_lengths  # noqa: F401

MAX_PATH_BYTES = 4096  # PATH_MAX: no file name featstore stored is longer
MAX_REASON_BYTES = 64 << 10  # a failure's reason (an exception's message)
MAX_NAME_BYTES = 4096  # a class name (a folder name: 255 bytes on most file systems)
MAX_NAMES = 1 << 20  # class names of a split (ImageNet-21k has 21,841)
MAX_ATTR_BYTES = 64 << 10  # any other string attribute (a description, a spec)
MAX_ATTRS = 256  # attributes of one object: featstore writes at most 14 (a split's), users may add a few
MAX_ATTR_STORAGE = MAX_NAMES * 16  # bytes an attribute stores: MAX_NAMES heap IDs of 16 bytes (16 MiB)
_SLACK = 64 << 10  # bytes allowed past the file's size when adding up a column's strings


def limit_of(ds) -> int:
    """The longest string allowed in dataset ``ds``: a failure's reason, else a path."""
    return MAX_REASON_BYTES if ds.name.rsplit("/", 1)[-1] == "reasons" else MAX_PATH_BYTES


def vlen_lengths(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """The byte lengths of the variable-length strings ``start:stop`` of ``ds``, from their heap IDs (the dataset's own
    bytes, read for those rows only, :data:`ID_BLOCK_BYTES` at a time, whatever the chunk's size; a compact dataset's
    from its header), without reading a string. Refused: a column packed by a filter or virtual, another file driver,
    and a heap ID whose heap collection HDF5 would loop in or misread (``gheap``)."""
    plist = ds.id.get_create_plist()
    elem = 8 + ds.file.id.get_create_plist().get_sizes()[0]  # length (4), heap address, object index (4)
    if stop <= start:
        return np.zeros(0, np.uint32)
    if ds.file.driver != "sec2":  # HDF5_DRIVER set: the file's bytes are not read directly
        raise StoreError(
            f"{ds.file.filename}:{ds.name} cannot be measured before it is read with HDF5's {ds.file.driver!r} driver; "
            f"refused unread: open the store with HDF5's default driver (unset HDF5_DRIVER)"
        )
    layout, fh = plist.get_layout(), FileBytes(ds.file)  # the File once: it is built anew each time asked
    if fh.writable:
        ds.file.flush()  # heap collections this process wrote are in HDF5's cache until written
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:  # never written: every row is the fill value, an empty string
            return np.zeros(stop - start, np.uint32)
        return stored_lengths(ds, fh, offset + start * elem, stop - start, start, _fix(ds))
    if layout == h5py.h5d.COMPACT:
        return compact_lengths(ds, fh, start, stop, _fix(ds))
    if layout != h5py.h5d.CHUNKED:
        raise StoreError(
            f"{ds.file.filename}:{ds.name} is a virtual string column, which featstore never writes: {_fix(ds)}"
        )
    if plist.get_nfilters():  # HDF5 refuses to make one ("not suitable for filters"): crafted, or an old library's
        raise StoreError(
            f"{ds.file.filename}:{ds.name} is a variable-length string column packed with an HDF5 filter, which "
            f"featstore never writes (HDF5 no longer makes one): the store is crafted. Re-extract this split with "
            f"--overwrite"
        )
    rows, out = ds.chunks[0], np.zeros(stop - start, np.uint32)
    places = _chunk_places(ds, fh.fd)
    if places is None:  # HDF5 before 1.14: looked up one by one, each O(index)
        looked = ((c, ds.id.get_chunk_info_by_coord((c,))) for c in range(start - start % rows, stop, rows))
        found = ((c, i.byte_offset, i.size) for c, i in looked if i is not None and i.byte_offset is not None)
    else:  # chunks not allocated are not there: fill values, empty strings
        first_rows, offsets, sizes = places
        a, b = np.searchsorted(first_rows, [start - start % rows, stop])
        found = zip(first_rows[a:b].tolist(), offsets[a:b].tolist(), sizes[a:b].tolist())
    for c, offset, size in found:
        # only the rows asked, ID_BLOCK_BYTES at a time: a chunk of 2**25 rows (512 MiB of IDs) was read whole for 50
        first, last = max(start, c), min(stop, c + rows)
        if (last - c) * elem > size:
            raise StoreError(f"{ds.file.filename}:{ds.name}: chunk {c} is shorter than its rows: the store is damaged")
        at = offset + (first - c) * elem
        out[first - start : last - start] = stored_lengths(ds, fh, at, last - first, first, _fix(ds))
    return out


def _chunk_places(ds: h5py.Dataset, fd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(first row, byte offset, stored size) of each allocated chunk of ``ds``, sorted by row, from one walk of its
    chunk index (HDF5 1.14's ``chunk_iter``); None where the walk is missing (HDF5 before 1.14).

    A look-up costs O(index) (a column chunked one row a chunk: 40,000 paths' lengths in 15 s, attack 20), and so did a
    walk per call: check, export and compact measure a column a block at a time, each block in its own opening of the
    file, so a walk each made them quadratic again (one row a chunk: ``check`` of 40,000 rows in 47 s, attack 21). So
    the walk is kept, for the last :data:`_PLACES_KEPT` columns, under the file's identity and state (``fd``'s device,
    inode, size, modification and change times in ns: a write between two openings changes them) and the column's
    object address, name, shape and chunks. It holds 24 bytes a chunk within the column's shape (repeats and chunks
    past it are dropped): at most 24 bytes a row. Not guaranteed: where timestamps are coarse (kernels before 6.13,
    NFS), a column deleted and made again at its object address, same shape, chunks and file size, within one tick
    between two openings, is read at its old places."""
    if not hasattr(ds.id, "chunk_iter"):
        return None
    if ds.name is None:  # an anonymous dataset: nothing to key it by
        return _walk(ds)
    st, addr = os.fstat(fd), h5py.h5g.get_objinfo(ds.file.id, ds.name.encode()).objno  # h5o.get_info: O(index)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, addr, ds.name, ds.shape, ds.chunks)
    with _PLACES_LOCK:
        if (places := _PLACES.get(key)) is not None:
            _PLACES.move_to_end(key)
            return places
    places = _walk(ds)
    with _PLACES_LOCK:
        _PLACES[key] = places
        while len(_PLACES) > _PLACES_KEPT:
            _PLACES.popitem(last=False)
    return places


def _walk(ds: h5py.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One walk of ``ds``'s chunk index: its allocated chunks within its shape, by first row (a repeat: the last)."""
    rows, n = ds.chunks[0], ds.shape[0]
    first, at, size = array("q"), array("q"), array("q")

    def keep(info) -> None:
        c = info.chunk_offset[0]
        if c < n and c % rows == 0 and info.byte_offset is not None:  # HDF5 reads no other: they are not rows of ds
            first.append(c)
            at.append(info.byte_offset)
            size.append(info.size)

    ds.id.chunk_iter(keep)
    order = np.argsort(np.array(first, np.int64), kind="stable")
    c, o, z = (np.array(a, np.int64)[order] for a in (first, at, size))
    last = np.ones(len(c), bool)
    last[:-1] = c[1:] != c[:-1]  # of repeated first rows (a crafted index), the last walked
    return c[last], o[last], z[last]


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
    lengths = vlen_lengths(ds, start, stop)
    over = np.flatnonzero(lengths > limit)
    if len(over):
        row = start + int(over[0])
        raise StoreError(
            f"{where}: row {row} holds a string of {int(lengths[over[0]]):,} bytes, over the {limit:,}-byte limit "
            f"({len(over):,} such row(s) in rows {start}..{stop - 1}): {fix}"
        )
    total, size = int(lengths.sum(dtype=np.int64)), os.path.getsize(ds.file.filename)
    if total > size + _SLACK:
        raise StoreError(
            f"{where}: rows {start}..{stop - 1} add up to {total:,} bytes of strings in a file of {size:,} bytes: their "
            f"heap IDs share strings, which featstore never writes: {fix}"
        )


def read_names(obj, key: str, where: str, limit: int = MAX_NAME_BYTES, most: int | None = None) -> object:
    """Attribute ``key`` of ``obj`` as plain Python, with a list of variable-length strings (class names) bounded: at
    most :data:`MAX_NAMES` of them (counted before the read) and none longer than ``limit`` bytes (checked before the
    names are compared, copied or printed; a fixed-width string's width, which is in its type, before the read). Other
    values come back as ``provenance.plain`` gives them; with ``most``, a value of more than ``most`` items (of any
    type) is refused unread, from its dataspace's shape.

    HDF5 reads an attribute whole (it has no partial reads), so what it stores is measured first: over
    :data:`MAX_ATTR_STORAGE` bytes (a 120 MiB array of numbers took 721 MiB and 15 s in ``info``) it is refused unread.
    A variable-length string's bytes are not in that size (it stores 16-byte heap IDs), and HDF5 offers no way to read
    those IDs of an attribute, so ``attr_ids.heap_ids`` reads them from the file's bytes (compact or dense storage)
    and, for more than one string, a string over ``limit`` or strings adding up to more than the file's size (IDs
    sharing one string: K times it) are refused before HDF5 reads any (:func:`_refuse_expanding`). One string alone is
    at most its heap collection, within the file. Reading them into fixed-width buffers instead would stop at the
    width, but h5py's conversion to fixed width leaks every string it reads (120 MiB per read of the attack's names)."""
    from featstore.provenance import plain

    aid = measured_attr(obj, key, where)
    count = 0 if aid.shape is None else int(np.prod(aid.shape, dtype=np.int64))  # a null dataspace holds nothing
    if most is not None and count > most:
        raise StoreError(
            f"{where}: {shown(key, 60)} holds {count:,} values where featstore writes at most {most}; refused unread: "
            f"{_fix(obj)}"
        )
    info = h5py.check_string_dtype(aid.dtype)
    if info is None or aid.shape is None:
        return plain(_read(obj, key, where))
    if count > MAX_NAMES:
        raise StoreError(
            f"{where}: {key} holds {count:,} strings, over the {MAX_NAMES:,} featstore accepts: {_fix(obj)}"
        )
    if info.length is not None:  # fixed width (never written by featstore): each string's width is in the type
        if aid.dtype.itemsize > limit:
            raise StoreError(
                f"{where}: {key} holds fixed-width strings of {aid.dtype.itemsize:,} bytes, over the {limit:,}-byte "
                f"limit; refused unread: {_fix(obj)}"
            )
        return plain(_read(obj, key, where))
    if count:  # K heap IDs may name one string K times; any, a heap collection HDF5 loops in (gheap)
        _refuse_expanding(obj, key, aid, where, limit)
    value = _read(obj, key, where)
    if bad := _first_long(value, limit):
        del value  # a kept error (StoreMetadata keeps one per split) keeps this frame: not the K strings with it
        raise StoreError(
            f"{where}: {key}[{bad[0]}] is a string of {bad[1]:,} bytes, over the {limit:,}-byte limit ({bad[2]}): {_fix(obj)}"
        )
    return plain(value)


def _refuse_expanding(obj, key: str, aid: h5py.h5a.AttrID, where: str, limit: int) -> None:
    """Refuse variable-length string attribute ``key`` before HDF5 expands its heap IDs when one names a string over
    ``limit`` bytes or all add up to more than the file holds (IDs sharing a string), or when its IDs cannot be read
    from the file's bytes (:func:`attr_ids.heap_ids`): what HDF5 reads is then at most the file's size; or when one
    names a heap collection HDF5 would loop in or misread (:func:`gheap.refuse_damaged`)."""
    if obj.file.driver != "sec2":  # HDF5_DRIVER set: the file's bytes are not read directly
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be measured before it is read with HDF5's {obj.file.driver!r} driver; "
            f"refused unread: open the store with HDF5's default driver (unset HDF5_DRIVER)"
        )
    try:
        ids = heap_ids(obj, key, aid.shape, _stored_size(aid))
    except (Unparsed, *_H5_ERRORS) as exc:
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be measured before it is read ({shown(str(exc), 160)}); refused unread: "
            f"{_fix(obj)}"
        ) from None
    sizes = lengths(ids)
    if len(over := np.flatnonzero(sizes > limit)):
        start = peek(obj, ids[over[0]]).decode("utf-8", "ignore")
        raise StoreError(
            f"{where}: {key}[{over[0]}] is a string of {int(sizes[over[0]]):,} bytes, over the {limit:,}-byte limit "
            f"({shown(start) if start else 'refused unread'}): {_fix(obj)}"
        )
    total, size = int(sizes.sum(dtype=np.int64)), os.path.getsize(obj.file.filename)
    if total > size + _SLACK:
        raise StoreError(
            f"{where}: {key} adds up to {total:,} bytes of strings in a file of {size:,} bytes: its heap IDs share "
            f"strings, which featstore never writes; refused unread: {_fix(obj)}"
        )
    refuse_damaged(FileBytes(obj.file), ids, where, _fix(obj), key=shown(key, 60))


# what h5py raises for an attribute HDF5 cannot open, measure or read (a damaged header, a type it cannot convert)
_H5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError)


def _read(obj, key: str, where: str) -> object:
    """``obj.attrs[key]``, measured by the caller; any h5py error is the one-line StoreError naming ``where``."""
    try:
        return obj.attrs[key]
    except _H5_ERRORS as exc:
        raise StoreError(f"{where}: {shown(key, 60)} cannot be read ({shown(str(exc), 160)}): {_fix(obj)}") from None


def raw_attr(obj, key: str, where: str) -> object:
    """Attribute ``key`` of ``obj`` as h5py gives it (an array, a scalar, ``h5py.Empty``: types as stored), measured
    first (strings as :func:`read_attr` measures them, at most :data:`MAX_ATTR_BYTES` each): what a copy of a store
    writes back; never shown whole."""
    aid = measured_attr(obj, key, where)
    info = h5py.check_string_dtype(aid.dtype)
    if info is not None and info.length is None and aid.shape is not None and np.prod(aid.shape):
        _refuse_expanding(obj, key, aid, where, MAX_ATTR_BYTES)
    return _read(obj, key, where)


def measured_attr(obj, key: str, where: str) -> h5py.h5a.AttrID:
    """Attribute ``key`` of ``obj`` opened, not read, after its stored size was measured: StoreError naming ``where``
    and the key over :data:`MAX_ATTR_STORAGE` bytes, or when HDF5 cannot open or measure it. What every reading of a
    store's attribute starts with."""
    if isinstance(key, bytes):  # h5py lists a name that is not UTF-8 as bytes; featstore names are all ASCII
        raise StoreError(
            f"{where}: {shown(key, 60)} is an attribute name that is not UTF-8, which featstore never writes: {_fix(obj)}"
        )
    try:
        aid = h5py.h5a.open(obj.id, key.encode("utf-8", "surrogateescape"))
        stored, dtype = (
            _stored_size(aid),
            aid.dtype,
        )  # a type numpy has no dtype for (a 128-bit integer) is refused here
    except _H5_ERRORS as exc:
        raise StoreError(f"{where}: {shown(key, 60)} cannot be opened ({shown(str(exc), 160)}): {_fix(obj)}") from None
    if kind := _unwritten_type(dtype):
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be read: it is of HDF5 type {kind}, which featstore never writes in an "
            f"attribute (it writes numbers, booleans and strings); refused unread: {_fix(obj)}"
        )
    if stored > MAX_ATTR_STORAGE:
        raise StoreError(
            f"{where}: {key} stores {stored:,} bytes, over the {MAX_ATTR_STORAGE:,} featstore accepts in an attribute "
            f"(it writes a few KiB; class names at most 16 bytes each); refused unread: {_fix(obj)}"
        )
    return aid


def _unwritten_type(dtype: np.dtype) -> str | None:
    """What kind of type ``dtype`` is when featstore never writes it in an attribute (its own: integers, floats, booleans
    (an enum), strings), else None. Such a type can hide strings its stored size does not count (a compound holding a
    variable-length string stores 16 bytes: a 10 MB string was read and printed whole, attack 22)."""
    if dtype.subdtype is not None:
        return "array"
    if dtype.fields is not None:
        return "compound"
    if dtype.kind in "biuf" or h5py.check_string_dtype(dtype) is not None:
        return None
    if h5py.check_ref_dtype(dtype) is not None:
        return "reference"
    if h5py.check_vlen_dtype(dtype) is not None:
        return "variable-length sequence"
    return {"c": "complex", "V": "opaque"}.get(dtype.kind, f"{dtype.kind!r}")


def _stored_size(aid: h5py.h5a.AttrID) -> int:
    """Bytes attribute ``aid`` stores (what a read allocates, before strings): HDF5's count, else its dataspace's points
    times its type's size. h5py takes HDF5's 0 for an error, so an empty array or a null dataspace raised (attack 22)."""
    try:
        return int(aid.get_storage_size())
    except RuntimeError:
        points = 0 if aid.shape is None else int(np.prod(aid.shape, dtype=np.int64))
        return points * aid.get_type().get_size()


def _first_long(value, limit: int) -> tuple[int, int, str] | None:
    """(index, bytes, the name cut for a message) of the first string of ``value`` over ``limit`` bytes, or None."""
    for i, item in enumerate(value.reshape(-1).tolist() if isinstance(value, np.ndarray) else [value]):
        size = len(item) if isinstance(item, bytes) or item.isascii() else len(item.encode("utf-8", "surrogateescape"))
        if size > limit:
            return i, size, shown(item)
    return None


_NO = object()  # read_attr's default: a missing attribute is an error


def bounded_attrs(obj, where: str) -> dict:
    """``provenance.attrs_of(obj)`` with each variable-length string attribute bounded as :func:`read_names` bounds
    class names (at most :data:`MAX_ATTR_BYTES` a string), counted first (:func:`refuse_many_attrs`), the header walked
    once for all: what every opening reads of an extractor and the file."""
    with walks_kept():
        refuse_many_attrs(obj, where)
        return {key: read_attr(obj, key, where) for key in obj.attrs}


def refuse_many_attrs(obj, where: str) -> None:
    """Refuse ``obj`` before HDF5 lists its attributes when it holds over :data:`MAX_ATTRS` of them or its dense index
    does not count as it walks (``attr_ids.attr_count``), in one line naming ``where`` and the fix."""
    try:
        count = attr_count(obj, MAX_ATTRS)  # another driver than sec2: Unparsed (its bytes cannot be read directly)
    except (Unparsed, *_H5_ERRORS) as exc:
        fix = _fix(obj) if obj.file.driver == "sec2" else "open it with HDF5's default driver (unset HDF5_DRIVER)"
        raise StoreError(
            f"{where}: its attributes cannot be counted before they are listed ({shown(str(exc), 160)}); refused "
            f"unread: {fix}"
        ) from None
    if count > MAX_ATTRS:
        raise StoreError(
            f"{where}: holds {count:,} attributes where featstore writes at most {MAX_ATTRS}; refused "
            f"unread: {_fix(obj)}"
        )


def read_attr(obj, key: str, where: str, most: int | None = None, default: object = _NO) -> object:
    """Attribute ``key`` of ``obj`` (``where`` names the store and object) bounded as :func:`bounded_attrs` bounds
    each: the one way a store's attribute is read before it is known to be sane. ``most``: at most that many items (a
    count or a flag: 1), refused unread from its shape; ``default``: what a missing ``key`` gives (else StoreError).
    Its value goes into a message through :func:`shown`, never whole. Example::

        version = read_attr(f, "format_version", f"{path}:/")
        n_images = read_attr(sg, "n_images", where, most=1, default=None)
    """
    if default is not _NO and key not in obj.attrs:
        return default
    return read_names(obj, key, f"{where} attribute", MAX_ATTR_BYTES, most)


def _fix(obj) -> str:
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
