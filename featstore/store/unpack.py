"""A filtered variable-length string column's chunks unpacked in Python, so its heap IDs are measured before HDF5 reads.

``h5repack -f GZIP=4`` (what docs/reliability.md names to give space back) and h5py's ``compression="gzip"``,
``shuffle=True`` write a path column's chunks packed by HDF5's deflate and shuffle filters (attack 32 #1: such a store
was refused as crafted). Both are undone here exactly as HDF5 undoes them, and bounded: a chunk's rows x its element
size (what HDF5 unpacks it to) over :data:`CHUNK_MOST`, a stored chunk longer than deflate could make of its rows,
and a chunk that inflates to more or fewer bytes than its rows are refused in one line before HDF5 reads it; inflating
never makes more than the chunk's rows' bytes (``decompressobj`` with ``max_length``). The filters run in the
pipeline's reverse order, skipping those the chunk's filter mask says were not applied (an optional filter that failed
when it was written: HDF5 skips shuffle on every chunk of a string column h5py makes, storing no element size for it,
so a chunk marked shuffled is unshuffled by the element size the pipeline gives, as HDF5 does). Another filter (h5py's lzf, szip, a plugin) is refused naming it, with a fix that works (not "crafted").
"""

from __future__ import annotations

import os
import threading
import zlib

import h5py
import numpy as np

from featstore.errors import StoreError

DEFLATE, SHUFFLE = h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE  # 1, 2: what HDF5's own tools write
CHUNK_MOST = 64 << 20  # bytes of heap IDs one filtered chunk may unpack to (4 Mi rows of 16 bytes)
_KEEP_OVER = 1 << 20  # a chunk unpacked to more is kept (the last one) for the next block of rows asked of it
_BUILT_IN = {3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset"}  # HDF5's own, undone by h5repack itself


def filters(ds: h5py.Dataset, where: str) -> list[tuple[int, tuple]]:
    """The (ID, client values) of ``ds``'s filters in pipeline order; StoreError naming the first that :func:`unpacked` cannot undo
    and how to write the column without it (verified: h5repack undoes szip; h5py's lzf it cannot read, and drops)."""
    plist = ds.id.get_create_plist()
    found = [plist.get_filter(i) for i in range(plist.get_nfilters())]  # (id, flags, cd_values, name)
    redo = (
        "re-extract this split with --overwrite (or into a new --store): featstore writes its string columns unpacked"
    )
    for fid, _flags, _values, name in found:
        if fid in (DEFLATE, SHUFFLE):
            continue
        shown = name.decode("ascii", "replace")[:40] or "unnamed"
        if fid == h5py.h5z.FILTER_LZF:
            how = f"HDF5's tools cannot undo h5py's lzf (h5repack drops the column): {redo}"
        else:
            plugin = "" if fid in _BUILT_IN else " (with the filter's plugin on HDF5_PLUGIN_PATH)"
            how = f"write it unpacked with `h5repack -f {ds.name}:NONE STORE NEW.h5`{plugin}, or {redo}"
        raise StoreError(
            f"{where} is a string column packed with the {shown!r} filter (HDF5 filter {fid}), which featstore cannot "
            f"undo to measure its strings before HDF5 reads them (it undoes deflate and shuffle); refused unread: "
            f"{how}"
        )
    return [(f[0], tuple(f[2])) for f in found]


def unpacked(fd: int, pipeline: list[tuple[int, tuple]], chunk: tuple[int, int, int, int], rows: int, elem: int, where: str,
             fix: str) -> np.ndarray:  # fmt: skip
    """The heap IDs (``rows`` rows of ``elem`` bytes) of the chunk ``(first row, offset, stored size, filter mask)``
    of a column filtered by ``pipeline`` (:func:`filters`), read from descriptor ``fd`` and unpacked as HDF5 unpacks
    it; StoreError ``"<where>: chunk <first row> ..."`` when it cannot be, or not to exactly its rows' bytes."""
    c, offset, size, mask = chunk
    want = rows * elem
    st = os.fstat(fd)  # the file's identity and state, as strings._chunk_places keys its walk
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, offset, size, mask, rows, elem, pipeline)
    with _LOCK:
        if _LAST and _LAST[0] == key:
            return _LAST[1]
    if want > CHUNK_MOST:
        raise StoreError(
            f"{where}: chunk {c} unpacks to {want:,} bytes of heap IDs ({rows:,} rows), over the {CHUNK_MOST:,}-byte "
            f"limit for a filtered string column; refused unread: {fix}"
        )
    if not 0 <= size <= want + (want >> 10) + 64:  # deflate's worst case (zlib's compressBound) is under this
        raise StoreError(
            f"{where}: chunk {c} is stored in {size:,} bytes, more than its {rows:,} rows could be packed into: "
            f"refused unread: {fix}"
        )
    data = os.pread(fd, size, offset)
    if len(data) < size:
        raise StoreError(f"{where}: chunk {c} is past the end of the file: the store is damaged")
    for i in reversed(range(len(pipeline))):
        if mask >> i & 1:  # not applied to this chunk
            continue
        fid, values = pipeline[i]
        if fid == DEFLATE:
            data = _inflate(data, want, f"{where}: chunk {c}", fix)
        elif len(values) != 1 or not values[0]:  # H5Z__filter_shuffle's own refusal: HDF5 could not read it either
            raise StoreError(
                f"{where}: chunk {c} is marked shuffled, but its shuffle filter holds no element size ({values}), so "
                f"HDF5 cannot unshuffle it: refused unread: {fix}"
            )
        elif values[0] > 1:  # its element size: the pipeline's, which HDF5 uses (not the type's)
            data = _unshuffle(data, values[0])
    if len(data) != want:
        raise StoreError(
            f"{where}: chunk {c} unpacks to {len(data):,} bytes, not its {rows:,} rows' {want:,}: refused unread: {fix}"
        )
    ids = np.frombuffer(data, np.uint8).reshape(rows, elem)
    with _LOCK:
        _LAST[:] = [key, ids] if want > _KEEP_OVER else []
    return ids


def _inflate(data: bytes, want: int, what: str, fix: str) -> bytes:
    """H5Z__filter_deflate's decompression of ``data`` (a zlib stream), never more than ``want`` + 1 bytes out."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, want + 1)
    except zlib.error as exc:
        raise StoreError(f"{what} does not inflate ({exc}): refused unread: {fix}") from None
    if len(out) > want:
        raise StoreError(f"{what} inflates past its rows' {want:,} bytes: refused unread: {fix}")
    if not d.eof:
        raise StoreError(f"{what} is a deflate stream cut short ({len(out):,} bytes out): refused unread: {fix}")
    return out


def _unshuffle(data: bytes, size: int) -> bytes:
    """H5Z__filter_shuffle's reverse: byte plane j of each whole ``size``-byte element back into place; the bytes past
    the last whole element are kept as they are."""
    n = len(data) // size
    planes = np.frombuffer(data, np.uint8, n * size).reshape(size, n)
    return planes.T.tobytes() + data[n * size :]


_LAST: list = []  # [key, IDs] of the last chunk over _KEEP_OVER unpacked: readers ask a column a block of rows at a
# time, each block in its own opening of the file, and h5repack makes chunks of up to 64 MiB (4 Mi rows): one
# inflated per block made check of such a column inflate 64 MiB per 512 rows. Kept under the file's identity and state
# (device, inode, size, modification and change times in ns) and the chunk's place; not guaranteed where timestamps
# are coarse, as for strings._chunk_places.
_LOCK = threading.Lock()
