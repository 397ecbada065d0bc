"""The heap IDs of a variable-length string attribute, read from the file's own bytes before HDF5 expands them.

HDF5 reads an attribute whole and expands each heap ID into its string as it reads: K IDs naming one 2 MiB string ask
for K x 2 MiB (attack 23: 3,000 IDs in a 3.6 MB store, 5.7 GB). It has no call that gives the IDs of an attribute, so
:func:`heap_ids` finds the attribute's message the way HDF5 does and reads its IDs (each: 4 bytes of length, the
heap collection's address, a 4-byte index) with ``os.pread``, as ``strings.vlen_lengths`` reads a dataset's:

- compact storage: the message is in the object header (version 1, or 2 with ``OHDR``/``OCHK`` chunks), found by
  walking its chunks and continuation messages;
- dense storage (an Attribute Info message with a fractal heap, libver v108 for more than 64 KiB of attributes): the
  names' v2 B-tree lists heap IDs; each names a managed object of the fractal heap (found through its doubling table of
  direct and indirect blocks) or a huge one (its own v2 B-tree gives the address); the one message with the name is
  read.

What the parse finds is checked against what HDF5 itself opened (name, element count, shape, element size): any
disagreement, a structure featstore never writes (shared attribute messages, a filtered heap, a tiny heap object),
an address past the end of the file, or the same name twice is :class:`Unparsed` with its reason, never a guess.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import h5py
import numpy as np

from featstore.store.attr_dense import (
    WALK_MOST,
    Cursor,
    FileBytes,
    Unparsed,
    dense_count,
    dense_messages,
    dense_place,
    message_name,
    opened,
)
from featstore.store.attr_shared import ATTR, DSPACE, DTYPE, shared_body, shared_place

_HEADER_BYTES_MOST = 64 << 20  # object header bytes read for one attribute


def heap_ids(obj, key: str, shape: tuple | None, stored: int) -> np.ndarray:
    """The heap IDs of variable-length string attribute ``key`` of ``obj`` (HDF5 opened it with ``shape``, storing
    ``stored`` bytes), one row of bytes each, read from the file without reading a string; :func:`lengths` gives their
    strings' sizes. Unparsed with the reason when the file's bytes do not show exactly that attribute. Example::

        ids = heap_ids(f["s/train"], "class_names", (1500,), 24_000)   # 1,500 rows of 16 bytes
    """
    fh = flushed_bytes(obj)
    name, elem = key.encode("utf-8", "surrogateescape"), 4 + fh.addr + 4
    try:
        found, dims, size, data = _attribute(_find(fh, h5py.h5g.get_objinfo(obj.id).objno[0], name), fh)
    except (IndexError, OverflowError, ZeroDivisionError, MemoryError) as exc:  # bytes no parse above foresaw
        raise Unparsed(f"its bytes do not parse ({type(exc).__name__}: {exc})") from None
    if found != name:
        raise Unparsed(f"the message found is named {found[:60]!r}")
    count = 0 if dims is None else math.prod(dims)
    if (dims, stored, size) != ((None if shape is None else tuple(shape)), count * elem, elem):
        raise Unparsed(
            f"its message holds {dims} {size}-byte heap IDs where HDF5 opened {shape} of {stored:,} bytes in all"
        )
    if len(data) < count * elem:
        raise Unparsed(f"its message holds {len(data):,} bytes of data, short of {count:,} heap IDs")
    return np.frombuffer(data, np.uint8, count * elem).reshape(count, elem)


def attr_count(obj, most: int) -> int:
    """How many attributes ``obj`` holds, from the file's bytes before HDF5 lists them: its header's attribute
    messages, plus its dense name index's records (its header's total when over ``most``, else every node walked once
    and the records found, which must be that total). HDF5's listing walks that whole index and reads each message:
    an index reaching one leaf 2,426 times was listed for minutes (attack 26). Unparsed as :func:`heap_ids` is."""
    fh = flushed_bytes(obj)
    try:
        names, info = _header(fh, h5py.h5g.get_objinfo(obj.id).objno[0])
        place = dense_place(info, fh) if info is not None else None
        compact = sum(len(found) for found in names.values())
        return compact + (dense_count(fh, place[1], most) if place is not None else 0)
    except (IndexError, OverflowError, ZeroDivisionError, MemoryError) as exc:
        raise Unparsed(f"its bytes do not parse ({type(exc).__name__}: {exc})") from None


def flushed_bytes(obj) -> FileBytes:
    """:class:`FileBytes` of the file holding ``obj``, what this process wrote in it flushed first (it is in HDF5's
    cache until written)."""
    if opened(obj).writable:
        obj.file.flush()
    return FileBytes(obj)


@contextmanager
def walks_kept():
    """Within it, this thread keeps each object header it walks also in a file open for writing (a read-only file's
    are kept anyway, :func:`_header`): for reads between two of featstore's writes (``bounded_attrs``), whose walk per
    attribute made an extractor of N string attributes cost N walks of N messages (3,000: 30 s, attack 26)."""
    outer = getattr(_KEPT_HERE, "headers", None)
    _KEPT_HERE.headers = {} if outer is None else outer
    try:
        yield
    finally:
        _KEPT_HERE.headers = outer


def lengths(ids: np.ndarray) -> np.ndarray:
    """The byte length each heap ID of :func:`heap_ids` gives its string (its first 4 bytes, little-endian)."""
    return ids[:, :4].copy().view("<u4").reshape(len(ids))


def peek(obj, heap_id: np.ndarray, n: int = 200) -> bytes:
    """The first ``n`` bytes of the string ``heap_id`` (a row of :func:`heap_ids`) names, from its global heap
    collection (a message shows the start of a string too long to read); b"" when it cannot be found so."""
    try:
        fh = FileBytes(obj)
        c = Cursor(heap_id.tobytes(), fh, 4)
        collection, wanted = c.addr(), c.uint(4)
        head = Cursor(fh.read(collection, 8 + fh.length), fh)
        if head.take(4) != b"GCOL":
            return b""
        head.take(4)
        end, at = collection + head.uint(fh.length), collection + 8 + fh.length
        for _ in range(WALK_MOST):  # each object: index (2), references (2), reserved (4), size, bytes padded to 8
            item = Cursor(fh.read(at, 8 + fh.length), fh)
            number = item.uint(2)
            item.take(6)
            size = item.uint(fh.length)
            if number == wanted:
                return fh.read(at + 8 + fh.length, min(n, size))
            if number == 0 or at + 8 + fh.length > end:  # object 0: the free space that ends a collection
                return b""
            at += 8 + fh.length + (size + 7) // 8 * 8
    except Unparsed:
        pass
    return b""


def _find(fh: FileBytes, address: int, key: bytes) -> bytes:
    """The attribute message named ``key`` of the object whose header is at ``address``: compact, else dense."""
    names, info = _header(fh, address)
    found = list(names.get(key, ()))
    heap = dense_place(info, fh) if info is not None else None
    if heap is not None:
        found += dense_messages(fh, heap, key, lambda heap_id: shared_place(fh, heap_id, ATTR, _messages))
    if len(found) != 1:
        raise Unparsed(f"{len(found)} attribute messages of that name were found in the file")
    return found[0]


def _header(fh: FileBytes, address: int) -> tuple[dict[bytes, list[bytes]], bytes | None]:
    """The attribute messages of the object header at ``address`` by name, and its Attribute Info message (or None).
    Kept for the last :data:`_HEADERS_KEPT` headers of a file opened read-only (or writable, within :func:`walks_kept`),
    under the open file's HDF5 ID and the
    file's identity and state: ``bounded_attrs`` looks up each of an object's attributes, and a header walked for each
    made a header of N attributes cost N walks (HDF5 holds it in its cache)."""
    key, scoped = (fh.key, address), getattr(_KEPT_HERE, "headers", None)
    kept_in = scoped if fh.writable else _HEADERS  # a writable file's: only within walks_kept
    if kept_in is not None and (kept := kept_in.get(key)) is not None:
        return kept
    names: dict[bytes, list[bytes]] = {}
    info = None
    for kind, body in _messages(fh, address):
        if kind == 0x0C:
            names.setdefault(message_name(body), []).append(body)
        elif kind == 0x15:
            if info is not None:
                raise Unparsed("its object header holds two Attribute Info messages")
            info = body
    if kept_in is not None:
        kept_in[key] = names, info
        while len(kept_in) > _HEADERS_KEPT:
            kept_in.pop(next(iter(kept_in)))
    return names, info


_HEADERS: dict = {}  # (file, header address) -> _header's result; see _header
_HEADERS_KEPT = 2
_KEPT_HERE = threading.local()  # .headers: this thread's walks of writable files, within walks_kept


def _messages(fh: FileBytes, address: int):
    """(type, body) of each message of the object header at ``address`` (version 1 or 2), continuations followed."""
    first = fh.read(address, 34, most=True)
    v2 = first[:4] == b"OHDR"
    if v2:
        c = Cursor(first, fh, 5)
        flags = c.uint(1)
        if flags & 0x20:
            c.take(16)
        if flags & 0x10:
            c.take(4)
        size = c.uint(1 << (flags & 3))
        chunks = [(address + c.at, size)]
        order = 2 if flags & 0x04 else 0
    else:
        if len(first) < 16 or first[0] != 1:
            raise Unparsed(f"its object header at {address:,} is neither of version 1 nor 2")
        chunks = [(address + 16, int.from_bytes(first[8:12], "little"))]
    seen, total, count = set(), 0, 0
    while chunks:
        at, size = chunks.pop(0)
        if at in seen or len(seen) > WALK_MOST:
            raise Unparsed("its object header's continuations repeat or do not end")
        seen.add(at)
        total += size
        if total > _HEADER_BYTES_MOST:
            raise Unparsed(f"its object header is over {_HEADER_BYTES_MOST:,} bytes")
        data = fh.read(at, size)
        if v2 and len(seen) > 1:
            if data[:4] != b"OCHK":
                raise Unparsed("a continuation chunk of its object header has no OCHK signature")
            c, end = Cursor(data, fh, 4), size - 4
        else:
            c, end = Cursor(data, fh), size
        head = (4 + order) if v2 else 8
        while c.at + head <= end:
            if v2:
                kind, length, flags = c.uint(1), c.uint(2), c.uint(1)
                c.take(order)
            else:
                kind, length, flags = c.uint(2), c.uint(2), c.uint(1)
                c.take(3)
            body = c.take(length)
            if c.at > end:
                raise Unparsed("a message runs past its object header chunk")
            count += 1
            if count > WALK_MOST:
                raise Unparsed(f"its object header holds over {WALK_MOST:,} messages")
            if flags & 0x02 and kind == 0x15:
                raise Unparsed("its Attribute Info message is shared, which HDF5 never writes")
            if flags & 0x02 and kind == ATTR:  # kept once in the file's shared message table (HDF5 1.14, SOHM)
                yield kind, shared_body(fh, body, ATTR, _messages)
            elif kind == 0x10:
                b = Cursor(body, fh)
                chunks.append((b.addr(), b.uint(fh.length)))
            else:
                yield kind, body


def _attribute(body: bytes, fh: FileBytes) -> tuple[bytes, tuple | None, int, bytes]:
    """(name, dims (None: a null dataspace), element size, data) of attribute message ``body`` of a variable-length
    string."""
    c = Cursor(body, fh)
    version, flags = c.uint(1), c.uint(1)
    name_size, type_size, space_size = c.uint(2), c.uint(2), c.uint(2)
    if version not in (1, 2, 3):
        raise Unparsed(f"its attribute message is of version {version}")
    if version == 3:
        c.take(1)
    pad = (lambda n: (n + 7) // 8 * 8) if version == 1 else (lambda n: n)
    name = c.take(pad(name_size))[:name_size].rstrip(b"\0")
    dtype = c.take(pad(type_size))[:type_size]
    space = c.take(pad(space_size))[:space_size]
    if version > 1 and flags & 0x01:  # shared: kept once in the file's shared message table (h5repack -s 8)
        dtype = shared_body(fh, dtype, DTYPE, _messages)
    if version > 1 and flags & 0x02:
        space = shared_body(fh, space, DSPACE, _messages)
    if len(dtype) < 8 or dtype[0] & 0x0F != 9 or dtype[1] & 0x0F != 1:
        raise Unparsed("its message's type is not a variable-length string")
    return name, _dims(space, fh), int.from_bytes(dtype[4:8], "little"), body[c.at :]


def _dims(space: bytes, fh: FileBytes) -> tuple | None:
    """The dimensions of dataspace message ``space`` (() for a scalar, None for a null dataspace)."""
    c = Cursor(space, fh)
    version, rank = c.uint(1), c.uint(1)
    c.take(1)  # flags: maximum dimensions follow (not needed)
    if version == 1:
        c.take(5)
        null = False
    elif version == 2:
        null = c.uint(1) == 2
    else:
        raise Unparsed(f"its dataspace message is of version {version}")
    dims = tuple(c.uint(fh.length) for _ in range(rank))
    return None if null else dims
