"""Bounded reading of the zip files featstore opens: run folders' (``predictions.npz``, ``model.skops``, ``model.keras``)
and a user's own ``--model PATH.keras`` (checked before Keras opens it).

A run folder may be crafted, and a zip can declare members far larger than the file (a "zip bomb": 2 MB on
disk, 2 GB unpacked). :func:`check_zip` reads only the central directory and refuses, before anything is
decompressed:

- a member stored with a method other than stored or deflate (bzip2 and lzma cannot be bounded per read),
  or encrypted;
- compressed sizes that add up to more than the file itself (overlapping members, or sizes that lie);
- a member, or all members together, declaring more than ``MAX_RATIO`` (100) times its compressed size,
  once over ``SMALL`` (64 MiB): featstore writes its zips uncompressed (ratio 1), so only a crafted file
  trips this;
- a member declaring more than ``MAX_MEMBER`` (4 GiB) whatever its ratio: more than any run featstore
  can load in memory on a normal machine.

Declared sizes can lie, and ``ZipFile.read`` decompresses a member's whole compressed stream in one call
before it cuts the output at the declared size. So every deflated member is also decompressed once here,
in 1 MiB steps, and refused as soon as it yields more than it declares (or ends with less); a stored
member must declare exactly its stored size. After this check no reader can unpack more than the declared
sizes. :func:`read_npy` checks a ``.npy`` member's header (dtype, shape, size) before numpy allocates the
array, so a header declaring 10**12 rows allocates nothing; :func:`iter_npy` reads a checked member a block of rows
at a time (a run's stored predictions are verified so, whatever their size).

>>> MAX_MEMBER // 2**30, MAX_RATIO, SMALL // 2**20
(4, 100, 64)
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np

MAX_RATIO = 100  # declared / compressed size allowed for members over SMALL
SMALL = 64 << 20  # members (and zips) declaring up to this many bytes may have any ratio
MAX_MEMBER = 4 << 30  # no member may declare more bytes than this
_STEP = 1 << 20  # bytes decompressed per step when a deflated member is measured


def check_zip(path: str | os.PathLike, max_member: int | None = MAX_MEMBER) -> None:
    """ValueError naming the member and its sizes if the zip at ``path`` could unpack to far more than it holds.

    ``max_member=None`` drops the absolute cap on one member (a user's large model file), keeping every ratio rule.
    ``zipfile.BadZipFile`` if it is not a zip at all.
    """
    # O_NONBLOCK: a FIFO at a cached zip's name (a report's map layout, a similarity index) made every opener wait
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file (a pipe, device or folder); a zip is a file")
        _check_members(fh, st.st_size, max_member)


def _check_members(fh, size: int, max_member: int | None = MAX_MEMBER) -> None:
    """check_zip on an open file of ``size`` bytes."""
    with zipfile.ZipFile(fh) as z:
        infos = z.infolist()
    for i in infos:
        if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or i.flag_bits & 0x1:
            raise ValueError(
                f"member {i.filename!r} is encrypted or compressed with method {i.compress_type} "
                f"(featstore writes stored or deflated members only)"
            )
        if max_member is not None and i.file_size > max_member:
            raise ValueError(
                f"member {i.filename!r} declares {i.file_size} bytes unpacked, over the limit of {max_member} "
                f"(featstore.safezip.MAX_MEMBER)"
            )
        if i.file_size > SMALL and i.file_size > MAX_RATIO * i.compress_size:
            raise ValueError(
                f"member {i.filename!r} declares {i.file_size} bytes unpacked from {i.compress_size} "
                f"(over {MAX_RATIO}x and over {SMALL >> 20} MiB: a zip bomb)"
            )
    packed, unpacked = sum(i.compress_size for i in infos), sum(i.file_size for i in infos)
    if packed > size:
        raise ValueError(
            f"its members declare {packed} compressed bytes, more than the file's {size} (overlapping or lying members)"
        )
    if unpacked > SMALL and unpacked > MAX_RATIO * max(size, 1):
        raise ValueError(
            f"its members declare {unpacked} bytes unpacked from a file of {size} "
            f"(over {MAX_RATIO}x and over {SMALL >> 20} MiB: a zip bomb)"
        )
    for i in infos:
        if i.compress_type == zipfile.ZIP_STORED and i.file_size != i.compress_size:
            raise ValueError(f"stored member {i.filename!r} declares {i.file_size} bytes but stores {i.compress_size}")
        if i.compress_type == zipfile.ZIP_DEFLATED:
            _measure(fh, i)


def _measure(fh, info: zipfile.ZipInfo) -> None:
    """ValueError unless a deflated member decompresses to exactly its declared size (at most _STEP bytes at a time)."""
    fh.seek(info.header_offset)
    head = fh.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise ValueError(f"member {info.filename!r} has no local header where the directory says")
    fh.seek(info.header_offset + 30 + sum(struct.unpack("<HH", head[26:30])))
    d, left, out, data = zlib.decompressobj(-15), info.compress_size, 0, b""
    while not d.eof:
        if not data:
            data = fh.read(min(left, _STEP)) if left > 0 else b""
            left -= len(data)
        try:
            got = d.decompress(data, _STEP)
        except zlib.error as exc:
            raise ValueError(f"member {info.filename!r} is not valid deflate data ({exc})") from None
        data = d.unconsumed_tail
        out += len(got)
        if out > info.file_size:
            raise ValueError(
                f"member {info.filename!r} unpacks to more than the {info.file_size} bytes it declares (a zip bomb)"
            )
        if not got and not data and left <= 0:
            break
    if out != info.file_size:
        raise ValueError(f"member {info.filename!r} unpacks to {out} bytes, not the {info.file_size} it declares")


def read_npy(
    z: zipfile.ZipFile, name: str, kinds: str = "biuf", shape: tuple[int | None, ...] | None = None
) -> np.ndarray:
    """The array in member ``name`` of an open zip, without pickle, after its header was checked.

    ``kinds`` are the allowed numpy dtype kinds (``"f"`` floats, ``"iu"`` integers, ``"V"`` plain structured
    records); ``shape`` the expected shape (``None`` entries match any length). ValueError names the
    mismatch; KeyError if the member is missing. Example::

        with zipfile.ZipFile("predictions.npz") as z:
            proba = read_npy(z, "test__proba.npy", "f", (n, k))
    """
    npy_header(z, name, kinds, shape)
    with z.open(z.getinfo(name)) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def npy_header(
    z: zipfile.ZipFile, name: str, kinds: str = "biuf", shape: tuple[int | None, ...] | None = None
) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header bytes)`` of member ``name`` after checking them as :func:`read_npy` does
    (nothing past the header is read)."""
    info = z.getinfo(name)
    with z.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"{name}: unknown .npy format version {version}")
        got, fortran, dtype = reader(fh)
        header = fh.tell()
    if dtype.hasobject or dtype.kind not in kinds:
        raise ValueError(f"{name} holds {dtype} values, expected {_kinds(kinds)}")
    if shape is not None and (len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape))):
        want = "(" + ", ".join("any" if w is None else str(w) for w in shape) + ")"
        raise ValueError(f"{name} has shape {got}, expected {want}")
    if header + math.prod(got) * dtype.itemsize != info.file_size:
        raise ValueError(
            f"{name} declares shape {got} of {dtype}, which is not the {info.file_size - header} bytes it holds"
        )
    return got, fortran, dtype, header


def iter_npy(
    z: zipfile.ZipFile, name: str, kinds: str, shape: tuple[int | None, ...], rows: int
) -> Iterator[np.ndarray]:
    """The array in member ``name``, checked as :func:`read_npy` checks it, ``rows`` rows (its first axis) at a time:
    never more than one block in memory, whatever the member's size. Example::

        for block in iter_npy(z, "test__proba.npy", "f", (n, k), 4096): ...
    """
    got, fortran, dtype, header = npy_header(z, name, kinds, shape)
    if fortran and len(got) > 1:
        raise ValueError(f"{name} is stored in Fortran order (column by column); its rows cannot be read in blocks")
    row = math.prod(got[1:]) * dtype.itemsize
    with z.open(z.getinfo(name)) as fh:
        fh.read(header)
        for a in range(0, got[0] if got else 0, max(1, rows)):
            take = min(max(1, rows), got[0] - a)
            out = np.empty((take, *got[1:]), dtype)
            if fh.readinto(memoryview(out).cast("B")) != take * row:
                raise ValueError(f"{name} ended after {a} of its {got[0]} rows")
            yield out


def _kinds(kinds: str) -> str:
    """ "iu" -> "integers"."""
    names = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "V": "records", "U": "text"}
    return " or ".join(dict.fromkeys(names[k] for k in kinds))
