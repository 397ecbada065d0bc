"""Shared object header messages (``h5repack -s``): an attribute's type or dataspace kept once in the file's table.

A file made with shared messages on (HDF5's SOHM: ``h5repack -s 8``) keeps alike datatypes and dataspaces once, in
a fractal heap, and an attribute message holds a shared message in their place (version 3, type 1: an 8-byte heap ID
into the heap of the table's index for that message type). Attack 32 #3: such a store was refused as "crafted or
damaged" by every command. :func:`shared_body` finds the message as HDF5 does (``H5SM_get_fheap_addr``): the
superblock (version 2 or 3) names its extension, whose Shared Message Table message names the table (``SMTB``), whose
index for the message's type names the heap; the heap ID is a tiny object (its bytes in the ID) or a managed or huge
one (found by :class:`attr_dense.Heap`). HDF5 1.14 (not h5repack 1.10) shares whole attribute messages too, in the
object header or a dense index's records; they are found the same way. Every read is bounded and within the file;
what is found is checked by the caller against what HDF5 opened. A committed (named) datatype, which featstore never
writes, is :class:`Unparsed`.
"""

from __future__ import annotations

from featstore.store.attr_dense import MESSAGE_MOST, Cursor, FileBytes, Heap, Unparsed

DTYPE, DSPACE, ATTR = 0x03, 0x01, 0x0C  # message types; an index holds the types of its flags (1 << type)
_INDEXES_MOST = 8  # H5O_SHMESG_MAX_NINDEXES
_BODY_MOST = {DTYPE: 1 << 16, DSPACE: 1 << 16, ATTR: MESSAGE_MOST}  # a string type's is ~20 bytes, rank 32: ~530


def shared_body(fh: FileBytes, raw: bytes, kind: int, messages) -> bytes:
    """The body of the message of type ``kind`` that the shared message ``raw`` (an attribute message's type or
    dataspace field, or an attribute message) stands for, read from the file's shared message heap (``messages``:
    ``attr_ids._messages``, which reads the superblock extension's); Unparsed with the reason otherwise."""
    c = Cursor(raw, fh)
    version, share = c.uint(1), c.uint(1)
    if version != 3 or share != 1:  # 2 (or versions 1-2): a committed datatype's object header
        raise Unparsed(
            f"its {_NAMES[kind]} is a committed (named) one, which featstore never writes (shared message version "
            f"{version}, type {share})"
        )
    heap_id = c.take(8)  # H5O_FHEAP_ID_LEN
    if (heap_id[0] >> 4) & 0x03 == 2 and not heap_id[0] >> 6:  # tiny: in the ID, its length - 1 in the low 4 bits
        size = (heap_id[0] & 0x0F) + 1
        if size > 7:
            raise Unparsed(f"the tiny object of its shared {_NAMES[kind]} is {size} bytes, more than its ID holds")
        return heap_id[1 : 1 + size]
    at, size = shared_place(fh, heap_id, kind, messages)
    return fh.read(at, size)


def shared_place(fh: FileBytes, heap_id: bytes, kind: int, messages) -> tuple[int, int]:
    """(address, length) of the managed or huge object ``heap_id`` of the shared message heap for type ``kind`` (also
    what a dense attribute index's record flagged shared names), within :data:`_BODY_MOST`."""
    heap = Heap(fh, _heap_of(fh, kind, messages))
    if heap.id_len != 8:
        raise Unparsed(f"its shared message heap's IDs are {heap.id_len} bytes, not 8")
    at, size = heap.locate(heap_id)
    if size > _BODY_MOST[kind]:
        raise Unparsed(f"its shared {_NAMES[kind]} is {size:,} bytes, over {_BODY_MOST[kind]:,}")
    return at, size


def _heap_of(fh: FileBytes, kind: int, messages) -> int:
    """The address of the heap of the shared message table's index that holds messages of type ``kind``."""
    sb = Cursor(fh.read(0, 12 + 4 * fh.addr), fh)
    if sb.take(8) != b"\x89HDF\r\n\x1a\n" or (version := sb.uint(1)) < 2:
        raise Unparsed("its superblock is not of version 2 or 3, which a file with shared messages has")
    sb.take(3)  # sizes of offsets and lengths, flags
    sb.addr()  # base address
    extension = sb.addr()
    tables = [body for k, body in messages(fh, extension) if k == 0x0F] if extension >= 0 else []
    if len(tables) != 1:
        raise Unparsed(f"its superblock (version {version}) names {len(tables)} shared message tables, not 1")
    t = Cursor(tables[0], fh)
    if t.uint(1) != 0:
        raise Unparsed("its Shared Message Table message is not of version 0")
    table, count = t.addr(), t.uint(1)
    if not 0 < count <= _INDEXES_MOST:
        raise Unparsed(f"its shared message table holds {count} indexes")
    entry = 2 + 2 + 4 + 2 + 2 + 2 + 2 * fh.addr
    c = Cursor(fh.read(table, 4 + count * entry), fh)
    if c.take(4) != b"SMTB":
        raise Unparsed(f"its shared message table at {table:,} has no SMTB signature")
    found = []
    for _ in range(count):
        if c.uint(1) != 0:  # H5SM_LIST_VERSION
            raise Unparsed("an index of its shared message table is not of version 0")
        c.take(1)  # list or B-tree: the heap is found the same way
        flags = c.uint(2)
        c.take(4 + 2 + 2 + 2)  # minimum size, list and B-tree cutoffs, messages
        c.addr()  # the index itself
        heap = c.addr()
        if flags & (1 << kind):
            found.append(heap)
    if len(found) != 1:
        raise Unparsed(f"{len(found)} indexes of its shared message table hold {_NAMES[kind]}s, not 1")
    return found[0]


_NAMES = {DTYPE: "datatype", DSPACE: "dataspace", ATTR: "attribute message"}
