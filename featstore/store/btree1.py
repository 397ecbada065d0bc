"""Group listings and chunk indexes counted from the file's bytes before HDF5 walks them (attack 29 #1, #2).

HDF5's earliest format (superblock v0, what featstore writes unless a split has over 1,000 classes) keeps a group's
members in a version 1 B-tree ("TREE" nodes of type 0 over "SNOD" symbol nodes naming their local heap's strings) and
a chunked dataset's chunks in another (type 1), neither checksummed. HDF5 walks every child of every node and never
asks whether it met a node before: internal nodes whose children all repeat one node made it list a group's one member
32^(d+1) times (d = 1: 1,024 copies of an extractor from 544 bytes added, ``check`` 30 s and "OK") and count 64^(d+1)
chunks for a dataset of one (d = 4: 10^9, ``info`` 33 s from 10 KB added, x64 a level).

So :func:`object_links` reads a group's links the way HDF5 lists them: a symbol table (its B-tree, symbol nodes and
local heap), compact link messages, or a dense link index (v2 B-trees over a fractal heap, walked as ``attr_dense``
walks the attributes'); and :func:`chunk_count` counts a chunked dataset's chunks from its v1 B-tree. Each node is read
once (one reached twice is refused), each level is its parent's less one, a group holds at most :data:`MAX_LINKS`
links and no name twice, a dataset at most the chunks its extent allows (``most``). Anything else is
:class:`Unparsed` with its reason, never a guess. Chunk indexes of the newer layout (fixed and extensible arrays, v2
B-trees: libver v110 and later, which featstore never writes: its stores are of libver earliest or v108) are bounded
from their headers, as HDF5 counts them up to what these say.
"""

from __future__ import annotations

import bisect

import numpy as np

from featstore.store.attr_dense import UNDEF, Cursor, FileBytes, Heap, Unparsed, _btree, _btree_header
from featstore.store.attr_ids import _messages

# links of one group: featstore writes a few dozen at most (the root's extractors, an extractor's splits, a split's
# datasets); 12,000 empty groups at the root of a 4 MB store made `info` take 27 s and print 36,000 lines (attack 29 #8)
MAX_LINKS = 1_024
_HEAP_MOST = 16 << 20  # bytes of a symbol table's local heap (its members' names) read
_LINK_MOST = 1 << 16  # bytes of one link message in a dense link heap (a name of at most 64 KiB)
_SINGLE, _IMPLICIT = 1, 2  # chunk index types of a version 4 layout that hold no structure to walk


class HeaderUnread(Unparsed):
    """The object's header itself does not parse here: a group's is refused; another object's is left to HDF5."""


def object_links(fh: FileBytes, address: int, heaps: list | None = None) -> list[tuple[bytes, int]] | None:
    """(name, object header address; UNDEF for a soft or external link) of each link of the object whose header is at
    ``address``, as HDF5 lists them; None when it is not a group. Unparsed over :data:`MAX_LINKS` links, for a name
    listed twice, and for an index HDF5 would walk a node of twice; :class:`HeaderUnread` when its header does not
    parse (of a group or another object: the caller asks HDF5 which). ``heaps``: the local heaps' data met so far in
    one walk of the file (sorted ``(start, end)``), which a symbol table's must not overlap (:func:`_own_heap`)."""
    try:
        messages = list(_messages(fh, address))
    except (Unparsed, IndexError, OverflowError, ZeroDivisionError, MemoryError, ValueError) as exc:
        raise HeaderUnread(f"its object header does not parse ({exc})") from None
    try:
        info = [body for kind, body in messages if kind == 0x02]  # Link Info: new-style group
        stab = [body for kind, body in messages if kind == 0x11]  # Symbol Table: old-style group
        if len(info) + len(stab) > 1:
            raise Unparsed("its object header holds two link indexes")
        if info:
            links = _new_style(fh, info[0], [body for kind, body in messages if kind == 0x06])
        elif stab:
            links = _symbol_table(fh, stab[0], [] if heaps is None else heaps)
        else:
            return None
    except (IndexError, OverflowError, ZeroDivisionError, MemoryError, ValueError) as exc:
        raise Unparsed(f"its bytes do not parse ({type(exc).__name__}: {exc})") from None
    names = [name for name, _ in links]
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise Unparsed(f"its listing names {twice[:60]!r} twice, which HDF5 never writes")
    return links


def chunk_count(fh: FileBytes, address: int, most: int, most_max: int) -> int | None:
    """The chunks in the chunk index of the chunked dataset whose header is at ``address``, counted as HDF5 counts
    them (its v1 B-tree walked once); None where HDF5's own count is bounded but not read here (the newer layout's
    indexes, their header checked). Unparsed for a v1 B-tree over ``most`` chunks (what the extent allows) or reaching
    a node twice; an extensible array whose header sets an index over ``most_max`` (the chunks of the maximum extent,
    the current one along unlimited dimensions: HDF5 looks up each index below it, allocated or not: 1e8 took 7 s from
    8 bytes changed, attack 29 #4); a fixed array over ``most_max`` or the file's bytes / 8; a v2 B-tree counting over
    ``most`` records or reaching a node twice."""
    try:
        layouts = [body for kind, body in _messages(fh, address) if kind == 0x08]
        if len(layouts) != 1:
            raise Unparsed(f"its object header holds {len(layouts)} layout messages")
        c = Cursor(layouts[0], fh)
        version = c.uint(1)
        if version in (1, 2):
            ndims, layout = c.uint(1), c.uint(1)
            c.take(5)
        elif version in (3, 4):
            layout = c.uint(1)
        else:
            raise Unparsed(f"its layout message is of version {version}")
        if layout != 2:
            raise Unparsed("its layout message is not of a chunked dataset")
        if version < 4:
            ndims = ndims if version < 3 else c.uint(1)
            tree = c.addr()
            return 0 if tree == UNDEF else _v1_chunks(fh, tree, ndims, most)  # UNDEF: no chunk written yet
        c.take(1)  # flags
        ndims, width = c.uint(1), c.uint(1)
        c.take(ndims * width)
        index = c.uint(1)
        c.take({1: 0, 2: 0, 3: 1, 4: 5, 5: 6}.get(index, 0))  # single chunk: filtered size follows only when filtered
        if index in (_SINGLE, _IMPLICIT):  # one chunk, or every chunk of the extent: nothing to walk
            return None
        if index == 3:
            _array(fh, c.addr(), b"FAHD", 8, min(most_max, max(most, fh.size // 8)))
        elif index == 4:
            _array(fh, c.addr(), b"EAHD", 12 + 4 * fh.length, most_max)
        elif index == 5:
            _chunk_btree2(fh, c.addr(), most)
        else:
            raise Unparsed(f"its chunk index is of type {index}, which HDF5 never writes")
        return None
    except (IndexError, OverflowError, ZeroDivisionError, MemoryError, ValueError) as exc:
        raise Unparsed(f"its bytes do not parse ({type(exc).__name__}: {exc})") from None


def _v1_chunks(fh: FileBytes, tree: int, ndims: int, most: int) -> int:
    """The chunks of the v1 B-tree chunk index at ``tree`` (keys: size, filter mask, ``ndims`` offsets), each node
    once, at most ``most``, each chunk's place once: a leaf naming one chunk twice made HDF5 count it twice, so that
    a chunk never written passed for present (its rows read back as zeros)."""
    step, places, count = fh.addr + 8 + 8 * ndims, [], 0
    for n, body in _v1_leaves(fh, tree, 1, step - fh.addr, most, children=False, what="chunks (its extent's)"):
        count += n
        places.append(np.frombuffer(body, np.uint8).reshape(n, step)[:, 8 : 8 + 8 * ndims].copy().view(f"V{8 * ndims}"))
    if count and len(np.unique(np.concatenate(places))) != count:
        raise Unparsed("its B-tree names one chunk twice, which HDF5 never writes")
    return count


def _array(fh: FileBytes, address: int, sign: bytes, at: int, most: int) -> None:
    """Refuse the fixed (``FAHD``: its element count) or extensible (``EAHD``: its highest index set, plus one) array
    header at ``address`` when the count at byte ``at``, what HDF5 iterates up to, is over ``most``."""
    c = Cursor(fh.read(address, at + fh.length), fh)
    if c.take(4) != sign or c.uint(1) != 0:
        raise Unparsed(f"its chunk index at {address:,} is not a version 0 {sign.decode()}")
    c.take(at - 5)
    count = c.uint(fh.length)
    if count > most:
        raise Unparsed(f"its chunk index ({sign.decode()}) counts {count:,} chunks where its extent allows {most:,}")


def _chunk_btree2(fh: FileBytes, address: int, most: int) -> None:
    """Refuse the v2 B-tree chunk index at ``address`` (records of type 10, or 11 when filtered) counting over ``most``
    records, or whose walk (each node once) finds other than its header's count."""
    c = Cursor(fh.read(address, 12), fh)
    c.take(5)
    kind = c.uint(1)
    c.take(4)
    record = c.uint(2)
    if kind not in (10, 11):
        raise Unparsed(f"its chunk index at {address:,} is a v2 B-tree of type {kind}, not of chunks")
    total = _btree_header(fh, address, kind, record)[-1]
    if total > most:
        raise Unparsed(f"its chunk index (a v2 B-tree) counts {total:,} chunks where its extent allows {most:,}")
    if sum(1 for _ in _btree(fh, address, kind, record, lambda r: 0)) != total:
        raise Unparsed("its chunk index (a v2 B-tree) holds other records than its header counts")


def _v1_leaves(fh: FileBytes, address: int, kind: int, key: int, most: int, children: bool = True, what="links"):
    """(entries, child addresses when ``children``) of each leaf of the version 1 B-tree of node type ``kind`` (keys of
    ``key`` bytes) rooted at ``address``, left to right, as HDF5 1.14 iterates it (H5B__iterate_helper: every child of
    every node, siblings never followed): each node read once, each level its parent's less one, at most ``most``
    entries in all leaves (``what`` they are, for the refusal)."""
    step, head = fh.addr + key, 8 + 2 * fh.addr
    todo, seen, entries = [(address, -1)], set(), 0
    while todo:
        at, level = todo.pop()
        if at == UNDEF:
            raise Unparsed("a node of its B-tree has no address")
        if at in seen:  # HDF5 writes each node once: a repeat multiplied the walk (32^(d+1) copies, attack 29)
            raise Unparsed(f"its B-tree reaches its node at {at:,} twice, which HDF5 never writes")
        seen.add(at)
        if len(seen) > 2 * most + 256:  # a leaf holds an entry or more; a level byte allows 255 above it
            raise Unparsed(f"its B-tree holds over {2 * most + 256:,} nodes for at most {most:,} entries")
        c = Cursor(fh.read(at, head), fh)
        if c.take(4) != b"TREE" or c.uint(1) != kind:
            raise Unparsed(f"its B-tree node at {at:,} is not a TREE node of type {kind}")
        got, n = c.uint(1), c.uint(2)
        if level >= 0 and got != level:
            raise Unparsed(f"its B-tree node at {at:,} is of level {got} under a node of level {level + 1}")
        if got == 0:
            entries += n
            if entries > most:
                raise Unparsed(f"its B-tree holds over {most:,} {what}")
            if not children:  # its keys and children: what the caller reads the chunks' places from
                yield n, fh.read(at + head, n * step)
                continue
        body = fh.read(at + head, n * step + key)
        kids = [int.from_bytes(body[key + j * step : key + j * step + fh.addr], "little") for j in range(n)]
        if got == 0:
            yield n, kids
            continue
        if len(set(kids)) < n or not seen.isdisjoint(kids):  # said before a leaf below is walked
            again = next(k for j, k in enumerate(kids) if k in seen or k in kids[:j])
            raise Unparsed(f"its B-tree reaches its node at {again:,} twice, which HDF5 never writes")
        todo.extend((kid, got - 1) for kid in reversed(kids))


def _own_heap(heaps: list, start: int, size: int) -> None:
    """Add a local heap's data ``start``, ``size`` bytes, to ``heaps`` (sorted ``(start, end)`` of those met in one
    walk); refused where it overlaps one met before, which HDF5 never writes. HDF5 reads a group's heap whole each time
    it opens the group, so 4,000 empty groups whose heaps each declared 16 MiB of one run of zeros made `info` take 299
    s and `check` 673 s on a 23 MB store (attack 32 #4); heaps of their own add up to at most the file's size."""
    at = bisect.bisect_left(heaps, (start, start + size))
    before = heaps[at - 1] if at else None
    after = heaps[at] if at < len(heaps) else None
    if (before is not None and before[1] > start) or (after is not None and after[0] < start + max(size, 1)):
        raise Unparsed(f"its local heap's {size:,} bytes at {start:,} overlap another group's, which HDF5 never writes")
    heaps.insert(at, (start, start + max(size, 1)))


def _symbol_table(fh: FileBytes, body: bytes, heaps: list) -> list[tuple[bytes, int]]:
    """The links of a symbol table (Symbol Table message ``body``): its B-tree's symbol nodes, each read once; its
    local heap's data one of its own in the walk ``heaps`` (:func:`_own_heap`)."""
    c = Cursor(body, fh)
    tree, heap = c.addr(), c.addr()
    h = Cursor(fh.read(heap, 8 + 2 * fh.length + fh.addr), fh)
    if h.take(4) != b"HEAP" or h.uint(1) != 0:
        raise Unparsed(f"its local heap at {heap:,} is not a version 0 HEAP")
    h.take(3)
    size = h.uint(fh.length)
    h.take(fh.length)  # free list
    if size > _HEAP_MOST:
        raise Unparsed(f"its local heap holds {size:,} bytes, over {_HEAP_MOST:,}")
    start = h.addr()
    _own_heap(heaps, start, size)
    names = fh.read(start, size)
    entry, links, seen = fh.length + fh.addr + 24, [], set()
    for _, nodes in _v1_leaves(fh, tree, 0, fh.length, MAX_LINKS):
        for node in nodes:
            if node in seen:
                raise Unparsed(f"its B-tree reaches its symbol node at {node:,} twice, which HDF5 never writes")
            seen.add(node)
            s = Cursor(fh.read(node, 8), fh)
            if s.take(4) != b"SNOD" or s.uint(1) != 1:
                raise Unparsed(f"its symbol node at {node:,} is not a version 1 SNOD")
            s.take(1)
            count = s.uint(2)
            if len(links) + count > MAX_LINKS:
                raise Unparsed(f"it holds over {MAX_LINKS:,} links, where featstore writes a few dozen")
            e = Cursor(fh.read(node + 8, count * entry), fh)
            for _ in range(count):
                offset, target, cache = e.uint(fh.length), e.addr(), e.uint(4)
                e.take(20)
                end = names.find(b"\0", offset)
                if offset >= size or end < 0:
                    raise Unparsed(f"a name of its symbol node at {node:,} is not in its local heap")
                links.append((names[offset:end], UNDEF if cache == 2 else target))  # cache type 2: a soft link
    return links


def _new_style(fh: FileBytes, info: bytes, compact: list[bytes]) -> list[tuple[bytes, int]]:
    """The links of a group with a Link Info message ``info``: its link messages ``compact``, or its dense index's
    (its name index and, when kept, its creation order index: each at most :data:`MAX_LINKS` records, walked once)."""
    c = Cursor(info, fh)
    if c.uint(1) != 0:
        raise Unparsed("its Link Info message is not of version 0")
    flags = c.uint(1)
    if flags & 0x01:
        c.take(8)
    heap_at, names = c.addr(), c.addr()
    order = c.addr() if flags & 0x02 else UNDEF
    if heap_at == UNDEF:
        if len(compact) > MAX_LINKS:
            raise Unparsed(f"it holds over {MAX_LINKS:,} links, where featstore writes a few dozen")
        return [_link(body, fh) for body in compact]
    if compact:
        raise Unparsed("it holds both link messages and a dense link index")
    heap, links, ids = Heap(fh, heap_at), [], set()
    total = _btree_header(fh, names, 5, 11)[-1]  # records: the name's hash (4), a heap ID (7)
    if total > MAX_LINKS:
        raise Unparsed(f"its link index counts {total:,}, over {MAX_LINKS:,} links, where featstore writes a few dozen")
    for record in _btree(fh, names, 5, 11, lambda r: 0):
        if record[4:] in ids:
            raise Unparsed("two records of its link index name one heap object, which HDF5 never writes")
        ids.add(record[4:])
        at, size = heap.locate(record[4:])
        if size > _LINK_MOST:
            raise Unparsed(f"a link message of its heap is {size:,} bytes, over {_LINK_MOST:,}")
        links.append(_link(fh.read(at, size), fh))
    if len(links) != total:
        raise Unparsed(f"its link index holds {len(links):,} records where its header counts {total:,}")
    if order != UNDEF:  # what a listing by creation order walks: records of creation order (8), a heap ID (7)
        if _btree_header(fh, order, 6, 15)[-1] != total:
            raise Unparsed("its creation order index counts other links than its name index")
        if sum(1 for _ in _btree(fh, order, 6, 15, lambda r: 0)) != total:
            raise Unparsed("its creation order index holds other records than its header counts")
    return links


def _link(body: bytes, fh: FileBytes) -> tuple[bytes, int]:
    """(name, object header address; UNDEF unless a hard link) of link message ``body``."""
    c = Cursor(body, fh)
    if c.uint(1) != 1:
        raise Unparsed("a link message is not of version 1")
    flags = c.uint(1)
    kind = c.uint(1) if flags & 0x08 else 0
    if flags & 0x04:
        c.take(8)  # creation order
    if flags & 0x10:
        c.take(1)  # character set
    name = c.take(c.uint(1 << (flags & 0x03)))
    return name, c.addr() if kind == 0 else UNDEF
