"""Dense attributes (libver v108 and later, for more than 64 KiB of them) found in the file's bytes, as HDF5 finds them.

An object's Attribute Info message names a fractal heap and a version 2 B-tree of the attributes' names (records
sorted by the name's lookup3 hash). :func:`dense_messages` descends the tree to the records of one name's hash, and
:class:`Heap` turns each record's heap ID into the address of its attribute message: a managed object through the
heap's doubling table of direct and indirect blocks, a huge one through its own B-tree. Also the primitives that
``attr_ids`` reads an object header with (:class:`FileBytes`, :class:`Cursor`, :class:`Unparsed`): every address is
checked against the file's end and every walk is bounded.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

import h5py

WALK_MOST = 1 << 16  # messages, chunks or B-tree records walked for one attribute (featstore writes a few dozen)
MESSAGE_MOST = 64 << 20  # bytes of one attribute message read (HDF5 opened it storing at most 16 MiB of heap IDs)
UNDEF = -1  # an undefined address (all bits set)


class Unparsed(Exception):
    """The attribute's heap IDs could not be read from the file's bytes as HDF5 reads them; the text says why."""


class FileBytes:
    """The file's bytes through ``os.pread`` on HDF5's own descriptor: addresses relative to its base address.

    ``f``: the open file or any object in it. What HDF5 says of an open file that never changes while it is open (its
    driver, sizes of addresses, user block, descriptor, intent) is asked once per opening (:func:`opened`); its size
    and times, which a writer changes, are asked anew each time (``os.fstat``)."""

    def __init__(self, f):
        o = opened(f)
        if o.driver != "sec2":
            raise Unparsed(f"the file is open with HDF5's {o.driver!r} driver, whose bytes cannot be read directly")
        self.addr, self.length, self.base, self.fd, self.writable = o.addr, o.length, o.base, o.fd, o.writable
        st = os.fstat(self.fd)
        self.size = st.st_size
        # this opening (HDF5's ID) of this file in this state: what attr_ids keeps a walked header under
        self.key = (o.hid, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, self.base)

    def read(self, at: int, n: int, most: bool = False) -> bytes:
        """``n`` bytes from address ``at`` (``most``: up to ``n``, to the file's end); Unparsed when they are not all in
        the file."""
        if most and at >= 0:
            n = max(0, min(n, self.size - self.base - at))
        if at < 0 or n < 0 or self.base + at + n > self.size:
            raise Unparsed(f"{n:,} bytes at address {at:,} are past the end of the file ({self.size:,} bytes)")
        return os.pread(self.fd, n, self.base + at)


class Opened(NamedTuple):
    """What HDF5 says of an open file that never changes while it is open (:func:`opened`)."""

    driver: str  # h5py's name of the driver it is open with ("sec2": HDF5's default)
    addr: int  # bytes of an address
    length: int  # bytes of a length
    base: int  # its user block's size: where HDF5's addresses start
    fd: int  # the descriptor HDF5 reads it through (-1 with another driver than sec2: never read)
    writable: bool  # open for writing
    hid: int  # HDF5's ID of this opening
    filename: str  # the name it was opened by (h5py's File.filename)


def opened(obj) -> Opened:
    """:class:`Opened` of the open file holding h5py object ``obj``: asked of HDF5 once per file ID (which HDF5 never
    hands out twice in a process) and kept for the last :data:`_OPENED_KEPT` (``File.driver`` and the creation property
    list cost 25 us each time they were asked: a store's opening measures hundreds of attributes)."""
    try:
        fid = h5py.h5i.get_file_id(obj.id)
    except TypeError:  # a stand-in for an h5py object (a test's, counting calls): its file as h5py gives it
        fid = obj.file.id
    with _OPENED_LOCK:
        if (got := _OPENED.get(fid.id)) is not None:
            return got
    f = obj.file  # (h5py's File of obj's file ID, as obj.file gives it: not an opening)
    sec2 = fid.get_access_plist().get_driver() == h5py.h5fd.SEC2
    plist = fid.get_create_plist()
    addr, length = plist.get_sizes()
    writable = bool(fid.get_intent() & h5py.h5f.ACC_RDWR)
    got = Opened(
        "sec2" if sec2 else f.driver, addr, length, plist.get_userblock(), fid.get_vfd_handle() if sec2 else -1,
        writable, fid.id, f.filename,
    )  # fmt: skip
    with _OPENED_LOCK:
        _OPENED[fid.id] = got
        while len(_OPENED) > _OPENED_KEPT:
            _OPENED.pop(next(iter(_OPENED)))
    return got


def driver_of(obj) -> str:
    """The name of the HDF5 driver the file holding ``obj`` is open with (h5py's ``File.driver``), asked once per
    opening (:func:`opened`)."""
    return opened(obj).driver


_OPENED: dict = {}  # HDF5 file ID -> opened()'s answer, oldest first
_OPENED_KEPT = 16
_OPENED_LOCK = threading.Lock()


class Cursor:
    """Little-endian fields read in turn from ``data``."""

    def __init__(self, data: bytes, fh: FileBytes, at: int = 0):
        self.data, self.fh, self.at = data, fh, at

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise Unparsed("a structure is cut short")
        self.at += n
        return self.data[self.at - n : self.at]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def addr(self) -> int:
        value = self.uint(self.fh.addr)
        return UNDEF if value == (1 << (8 * self.fh.addr)) - 1 else value


def message_name(body: bytes) -> bytes | None:
    """The name of the attribute message ``body`` (without its NUL), or None when it is cut short."""
    if len(body) < 9:
        return None
    size, start = int.from_bytes(body[2:4], "little"), 9 if body[0] == 3 else 8
    return body[start : start + size].rstrip(b"\0") if size else b""


def dense_place(info: bytes, fh: FileBytes) -> tuple[int, int] | None:
    """(fractal heap, name B-tree) addresses of Attribute Info message ``info``; None when attributes are compact."""
    c = Cursor(info, fh)
    if c.uint(1) != 0:
        raise Unparsed("its Attribute Info message is not of version 0")
    if c.uint(1) & 0x01:
        c.take(2)
    heap, names = c.addr(), c.addr()
    return None if heap == UNDEF else (heap, names)


def dense_messages(fh: FileBytes, place: tuple[int, int], key: bytes, shared=None) -> list[bytes]:
    """The attribute message named ``key`` among the dense attributes whose heap and name index are at ``place`` (a
    list of it, empty when there is none): the index's records are sorted by the names' lookup3 hash
    (H5A__dense_btree2_name_compare), so those of ``key``'s hash are found in O(depth) nodes, as HDF5 finds them. Only
    the first message of the name is read: a second one, or a heap ID two records share, is Unparsed at once (3,841
    records naming one 480 KB message were all read before they were counted: 3.6 GB, attack 26). A record flagged
    shared names its message in the file's shared message heap: ``shared(heap ID)`` gives its (address, length)."""
    heap, wanted, found, ids = Heap(fh, place[0]), _lookup3(key), [], set()
    if heap.id_len != 8:  # H5O_FHEAP_ID_LEN: what the index's records hold
        raise Unparsed(f"its attribute heap's IDs are {heap.id_len} bytes, not 8")

    def order(record: bytes) -> int:  # type 8: heap ID (8), flags (1), creation order (4), hash (4)
        got = int.from_bytes(record[13:17], "little")
        return (got > wanted) - (got < wanted)

    for record in _btree(fh, place[1], 8, 17, order):
        if record[8] & 0x02 and shared is None:
            raise Unparsed("its attribute messages are shared, which featstore never writes")
        if record[:9] in ids:
            raise Unparsed("two records of its attribute index name one heap object, which HDF5 never writes")
        ids.add(record[:9])
        at, size = shared(record[:8]) if record[8] & 0x02 else heap.locate(record[:8])
        if size > MESSAGE_MOST:
            raise Unparsed(f"an attribute message of its heap is {size:,} bytes, over {MESSAGE_MOST:,}")
        if message_name(fh.read(at, min(size, 9 + len(key) + 1))) == key:
            if found:
                raise Unparsed("2 or more attribute messages of that name were found in its dense index")
            found.append(fh.read(at, size))
    return found


def dense_count(fh: FileBytes, names: int, most: int) -> int:
    """The records of the dense attributes' name index at ``names`` (what HDF5's listing of the attributes walks): its
    header's total when over ``most`` (unwalked), else the records of a walk of every node, which must be that total."""
    total = _btree_header(fh, names, 8, 17)[-1]
    if total > most:
        return total
    walked = sum(1 for _ in _btree(fh, names, 8, 17, lambda record: 0))
    if walked != total:
        raise Unparsed(f"its attribute index holds {walked:,} records where its header counts {total:,}")
    return total


def _btree(fh: FileBytes, address: int, kind: int, record_size: int, order):
    """Each record (its bytes) of the version 2 B-tree of type ``kind`` (records of ``record_size`` bytes) whose header
    is at ``address`` for which ``order`` (the record's key against the one sought: -1, 0, 1) is 0, visiting only the
    nodes that can hold one, each once (a node reached twice is Unparsed), and no more records than the header counts."""
    node, record, depth, root, in_root, total = _btree_header(fh, address, kind, record_size)
    leaf_most = (node - 10) // record
    nrec_size = _enc_size(leaf_most)
    cum, cum_size = [leaf_most], [0]
    for d in range(1, depth + 1):  # H5B2__hdr_init: the width of each node's counts
        pointer = fh.addr + nrec_size + (cum_size[d - 1] if d > 1 else 0)
        most = (node - (10 + pointer)) // (record + pointer)
        cum.append((most + 1) * cum[d - 1] + most)
        cum_size.append(_enc_size(cum[d]))
    todo, seen, records_read = [(root, in_root, depth)], set(), 0
    while todo:
        at, n, d = todo.pop()
        if len(seen) >= WALK_MOST or n * record > node:
            raise Unparsed(f"a node of the B-tree at {address:,} holds more records than fit, or too many nodes")
        if at == UNDEF:
            if n:
                raise Unparsed("a B-tree node of records has no address")
            continue
        if at in seen:  # HDF5 writes each node once: a repeat multiplied the walk (2,426 times one leaf, attack 26)
            raise Unparsed(f"the B-tree at {address:,} reaches its node at {at:,} twice, which HDF5 never writes")
        seen.add(at)
        records_read += n
        if records_read > total:
            raise Unparsed(f"the B-tree at {address:,} holds more records than its header's {total:,}")
        c = Cursor(fh.read(at, node), fh)
        if c.take(4) != (b"BTLF" if d == 0 else b"BTIN"):
            raise Unparsed(f"the B-tree node at {at:,} has no {'BTLF' if d == 0 else 'BTIN'} signature")
        c.take(2)
        records = [c.take(record) for _ in range(n)]
        sides = [order(r) for r in records]
        yield from (r for r, side in zip(records, sides) if side == 0)
        for j in range(n + 1 if d else 0):
            child, rows = c.addr(), c.uint(nrec_size)
            c.take(cum_size[d - 1] if d > 1 else 0)
            if (j == 0 or sides[j - 1] <= 0) and (j == n or sides[j] >= 0):
                todo.append((child, rows, d - 1))


def _btree_header(fh: FileBytes, address: int, kind: int, record_size: int) -> tuple[int, int, int, int, int, int]:
    """(node size, record size, depth, root address, root's records, total records) of the version 2 B-tree header at
    ``address``, checked: of type ``kind`` with records of ``record_size`` bytes, no more records than the file holds."""
    c = Cursor(fh.read(address, 22 + fh.addr + fh.length), fh)
    if c.take(4) != b"BTHD" or c.uint(1) != 0 or c.uint(1) != kind:
        raise Unparsed(f"the B-tree at {address:,} is not a version 2 B-tree of type {kind}")
    node, record, depth = c.uint(4), c.uint(2), c.uint(2)
    c.take(2)
    root, in_root, total = c.addr(), c.uint(2), c.uint(fh.length)
    if record != record_size or not 10 + record < node <= 1 << 16 or depth > 16:
        raise Unparsed(f"the B-tree at {address:,} has nodes of {node} bytes, records of {record}, depth {depth}")
    if total * record > fh.size:
        raise Unparsed(f"the B-tree at {address:,} counts {total:,} records, more than the file holds")
    return node, record, depth, root, in_root, total


def _lookup3(key: bytes) -> int:
    """H5_checksum_lookup3(key, len, 0): Bob Jenkins' lookup3 hash, what HDF5 indexes dense attribute names by."""
    m = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & m

    a = b = c = (0xDEADBEEF + len(key)) & m
    i, n = 0, len(key)
    while n - i > 12:
        a = (a + int.from_bytes(key[i : i + 4], "little")) & m
        b = (b + int.from_bytes(key[i + 4 : i + 8], "little")) & m
        c = (c + int.from_bytes(key[i + 8 : i + 12], "little")) & m
        for x, y, z, k in ((0, 2, 1, 4), (1, 0, 2, 6), (2, 1, 0, 8), (0, 2, 1, 16), (1, 0, 2, 19), (2, 1, 0, 4)):
            v = [a, b, c]  # mix: v[x] -= v[y]; v[x] ^= rot(v[y], k); v[y] += v[z]
            v[x] = ((v[x] - v[y]) & m) ^ rot(v[y], k)
            v[y] = (v[y] + v[z]) & m
            a, b, c = v
        i += 12
    if n == i:
        return c
    tail = key[i:] + bytes(12 - (n - i))
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    for x, y, k in ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24)):
        v = [a, b, c]  # final: v[x] ^= v[y]; v[x] -= rot(v[y], k)
        v[x] = ((v[x] ^ v[y]) - rot(v[y], k)) & m
        a, b, c = v
    return c


def _enc_size(n: int) -> int:
    """H5VM_limit_enc_size: the bytes that encode numbers up to ``n``."""
    return (max(n, 1).bit_length() - 1) // 8 + 1


class Heap:
    """A fractal heap's header, as far as finding one object's bytes needs it."""

    def __init__(self, fh: FileBytes, address: int):
        self.fh = fh
        c = Cursor(fh.read(address, 22 + 12 * fh.length + 3 * fh.addr), fh)
        if c.take(4) != b"FRHP" or c.uint(1) != 0:
            raise Unparsed(f"the attribute heap at {address:,} is not a version 0 fractal heap")
        self.id_len, filters = c.uint(2), c.uint(2)
        c.take(1)  # flags
        man_most = c.uint(4)
        if filters:
            raise Unparsed("its attribute heap is filtered, which featstore never writes")
        c.take(fh.length)  # the next huge object's ID
        self.huge = c.addr()
        c.take(fh.length + fh.addr)  # free space in managed blocks, its manager's address
        c.take(8 * fh.length)  # managed space, allocated, iterator, objects; huge size, count; tiny size, count
        self.width, self.start, self.direct_most = c.uint(2), c.uint(fh.length), c.uint(fh.length)
        max_heap = c.uint(2)
        c.take(2)  # rows the root indirect block starts with
        self.root, self.rows = c.addr(), c.uint(2)
        if not self.width or self.start & (self.start - 1) or self.direct_most & (self.direct_most - 1):
            raise Unparsed("its attribute heap's doubling table is not one HDF5 makes")
        if not self.start or self.start > self.direct_most or max_heap > 64:
            raise Unparsed("its attribute heap's doubling table is not one HDF5 makes")
        self.off_size, self.len_size = (max_heap + 7) // 8, _enc_size(min(self.direct_most, man_most))
        self.first_bits = (self.start.bit_length() - 1) + (self.width.bit_length() - 1)
        if self.width & (self.width - 1):
            raise Unparsed("its attribute heap's table width is not a power of two")
        self.direct_rows = (self.direct_most.bit_length() - 1) - (self.start.bit_length() - 1) + 2

    def locate(self, heap_id: bytes) -> tuple[int, int]:
        """(file address, length) of the object ``heap_id`` names (managed or huge)."""
        kind = (heap_id[0] >> 4) & 0x03
        if heap_id[0] >> 6:
            raise Unparsed("a heap ID of its attribute index is not of version 0")
        c = Cursor(heap_id, self.fh, 1)
        if kind == 0:
            offset, length = c.uint(self.off_size), c.uint(self.len_size)
            return self._managed(offset), length
        if kind == 1:
            if self.id_len - 1 >= self.fh.addr + self.fh.length:  # the ID holds its address and length
                return c.addr(), c.uint(self.fh.length)
            wanted = c.uint(min(self.id_len - 1, 8))

            def order(record: bytes) -> int:  # type 1: address, length, ID; sorted by ID
                got = int.from_bytes(record[self.fh.addr + self.fh.length :][: self.fh.length], "little")
                return (got > wanted) - (got < wanted)

            for record in _btree(self.fh, self.huge, 1, self.fh.addr + 2 * self.fh.length, order):
                r = Cursor(record, self.fh)
                return r.addr(), r.uint(self.fh.length)
            raise Unparsed("a huge object of its attribute heap is not in its index")
        raise Unparsed("its attribute heap holds a tiny object, which an attribute message never is")

    def _lookup(self, offset: int) -> tuple[int, int]:
        """H5HF__dtable_lookup: the (row, column) of heap offset ``offset``."""
        if offset < self.start * self.width:
            return 0, offset // self.start
        high = offset.bit_length() - 1
        row = high - self.first_bits + 1
        return row, (offset - (1 << high)) // self._row_size(row)

    def _row_size(self, row: int) -> int:
        return self.start if row == 0 else self.start << (row - 1)

    def _managed(self, offset: int) -> int:
        """The file address of the managed object at heap ``offset`` (H5HF__man_dblock_locate)."""
        fh, block, rows = self.fh, self.root, self.rows
        if rows:
            row, col = self._lookup(offset)
            base = 0
            for _ in range(64):
                entries = self._iblock(block, rows)
                entry = row * self.width + col
                if entry >= len(entries):
                    raise Unparsed("an object of its attribute heap is past its indirect block")
                if row < self.direct_rows:
                    block = entries[entry]
                    break
                rows = (self._row_size(row).bit_length() - 1) - self.first_bits + 1
                base += (self.start * self.width << (row - 1)) + col * self._row_size(row)
                block = entries[entry]
                row, col = self._lookup(offset - base)
            else:
                raise Unparsed("its attribute heap's indirect blocks do not end")
        c = Cursor(fh.read(block, 5 + fh.addr + self.off_size), fh)
        if c.take(4) != b"FHDB" or c.uint(1) != 0:
            raise Unparsed(f"the attribute heap's direct block at {block:,} has no FHDB signature")
        c.addr()
        return block + offset - c.uint(self.off_size)

    def _iblock(self, address: int, rows: int) -> list[int]:
        """The child block addresses of the indirect block at ``address`` of ``rows`` rows."""
        if address == UNDEF or rows > 64 or rows * self.width > 1 << 16:
            raise Unparsed("an indirect block of its attribute heap is missing or too large")
        n = rows * self.width
        c = Cursor(self.fh.read(address, 5 + self.fh.addr + self.off_size + n * self.fh.addr), self.fh)
        if c.take(4) != b"FHIB":
            raise Unparsed(f"the attribute heap's indirect block at {address:,} has no FHIB signature")
        c.take(1 + self.fh.addr + self.off_size)
        return [c.addr() for _ in range(n)]
