"""A store's attributes read as plain values, each measured before HDF5 reads it whole (HDF5 has no partial reads).

Every reading of a store's attribute goes through here (``tests/test_adversarial_attack22_attrs.py`` holds the rule):
:func:`read_attr` for one, :func:`bounded_attrs` for all of an object's (counted first, :func:`refuse_many_attrs`),
:func:`read_names` for class names, :func:`raw_attr` for what a copy writes back. What an attribute stores is
measured from HDF5's count (:func:`measured_attr`); a variable-length string's heap IDs, which HDF5 expands as it
reads, from the file's own bytes (``attr_ids``, ``attr_dense``) and its heap collections as HDF5 would walk them
(``gheap``): 3,000 IDs naming one 2 MiB string made ``info`` ask for 6 GiB (attack 23). Names are bounded before any is
compared, copied or printed (``validate_split``'s repeat check compared 1 MiB names K^2 times, and ``fit`` printed one
whole in a 1 MB error line). A string column's rows are :mod:`featstore.store.strings`'.
"""

from __future__ import annotations

import math

import h5py
import numpy as np

from featstore.errors import StoreError
from featstore.provenance import plain
from featstore.store.attr_dense import FileBytes, driver_of, opened
from featstore.store.attr_ids import Unparsed, attr_count, heap_ids, lengths, peek, walks_kept
from featstore.store.gheap import Damaged, check, damaged_error
from featstore.store.strings import fix_for, refuse_sizes, shown

MAX_NAME_BYTES = 4096  # a class name (a folder name: 255 bytes on most file systems)
MAX_NAMES = 1 << 20  # class names of a split (ImageNet-21k has 21,841)
MAX_ATTR_BYTES = 64 << 10  # any other string attribute (a description, a spec)
MAX_ATTRS = 256  # attributes of one object: featstore writes at most 14 (a split's), users may add a few
MAX_ATTR_STORAGE = MAX_NAMES * 16  # bytes an attribute stores: MAX_NAMES heap IDs of 16 bytes (16 MiB)


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
    aid, shape, dtype, stored = _measured(obj, key, where)  # HDF5's shape and type, each asked once
    count = 0 if shape is None else math.prod(shape)  # a null dataspace holds nothing
    if most is not None and count > most:
        raise StoreError(
            f"{where}: {shown(key, 60)} holds {count:,} values where featstore writes at most {most}; refused unread: "
            f"{fix_for(obj)}"
        )
    info = h5py.check_string_dtype(dtype)
    if info is None or shape is None:
        return plain(_read(obj, key, where))
    if count > MAX_NAMES:
        raise StoreError(
            f"{where}: {key} holds {count:,} strings, over the {MAX_NAMES:,} featstore accepts: {fix_for(obj)}"
        )
    if info.length is not None:  # fixed width (never written by featstore): each string's width is in the type
        if dtype.itemsize > limit:
            raise StoreError(
                f"{where}: {key} holds fixed-width strings of {dtype.itemsize:,} bytes, over the {limit:,}-byte "
                f"limit; refused unread: {fix_for(obj)}"
            )
        return plain(_read(obj, key, where))
    if count:  # K heap IDs may name one string K times; any, a heap collection HDF5 loops in (gheap)
        _refuse_expanding(obj, key, shape, stored, where, limit)
    value = _read(obj, key, where)
    if bad := _first_long(value, limit):
        del value  # a kept error (StoreMetadata keeps one per split) keeps this frame: not the K strings with it
        raise StoreError(
            f"{where}: {key}[{bad[0]}] is a string of {bad[1]:,} bytes, over the {limit:,}-byte limit ({bad[2]}): {fix_for(obj)}"
        )
    return plain(value)


def _refuse_expanding(obj, key: str, shape: tuple, stored: int, where: str, limit: int) -> None:
    """Refuse variable-length string attribute ``key`` before HDF5 expands its heap IDs when one names a string over
    ``limit`` bytes or all add up to more than the file holds (IDs sharing a string), or when its IDs cannot be read
    from the file's bytes (:func:`attr_ids.heap_ids`): what HDF5 reads is then at most the file's size; or when one
    names a heap collection HDF5 would loop in or misread (:func:`gheap.refuse_damaged`). ``shape`` and ``stored``:
    the attribute's as HDF5 opened it (:func:`measured_attr`)."""
    o, fix = opened(obj), fix_for(obj)
    if o.driver != "sec2":  # HDF5_DRIVER set: the file's bytes are not read directly
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be measured before it is read with HDF5's {o.driver!r} driver; "
            f"refused unread: open the store with HDF5's default driver (unset HDF5_DRIVER)"
        )
    try:
        ids = heap_ids(obj, key, shape, stored)
    except (Unparsed, *_H5_ERRORS) as exc:
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be measured before it is read ({shown(str(exc), 160)}); refused unread: "
            f"{fix}"
        ) from None

    def start_of(i: int, over) -> str:  # the long string's first bytes (a name cut to 40 characters), when readable
        start = peek(obj, ids[i]).decode("utf-8", "ignore")
        return shown(start) if start else "refused unread"

    refuse_sizes(
        lengths(ids), limit, o.filename, fix,
        one=lambda i: f"{where}: {key}[{i}] is", every=f"{where}: {key} adds", note=start_of,
    )  # fmt: skip
    try:
        check(FileBytes(obj), ids)  # gheap.refuse_damaged, its key shown only when refused
    except Damaged as exc:
        raise damaged_error(exc, len(ids), where, fix, key=shown(key, 60)) from None


# what h5py raises for an attribute HDF5 cannot open, measure or read (a damaged header, a type it cannot convert)
_H5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError)


def _read(obj, key: str, where: str) -> object:
    """``obj.attrs[key]``, measured by the caller; any h5py error is the one-line StoreError naming ``where``."""
    try:
        return obj.attrs[key]
    except _H5_ERRORS as exc:
        raise StoreError(f"{where}: {shown(key, 60)} cannot be read ({shown(str(exc), 160)}): {fix_for(obj)}") from None


def raw_attr(obj, key: str, where: str) -> object:
    """Attribute ``key`` of ``obj`` as h5py gives it (an array, a scalar, ``h5py.Empty``: types as stored), measured
    first (strings as :func:`read_attr` measures them, at most :data:`MAX_ATTR_BYTES` each): what a copy of a store
    writes back; never shown whole."""
    _, shape, dtype, stored = _measured(obj, key, where)
    info = h5py.check_string_dtype(dtype)
    if info is not None and info.length is None and shape is not None and math.prod(shape):
        _refuse_expanding(obj, key, shape, stored, where, MAX_ATTR_BYTES)
    return _read(obj, key, where)


def measured_attr(obj, key: str, where: str) -> h5py.h5a.AttrID:
    """Attribute ``key`` of ``obj`` opened, not read, after its stored size was measured: StoreError naming ``where``
    and the key over :data:`MAX_ATTR_STORAGE` bytes, or when HDF5 cannot open or measure it. What every reading of a
    store's attribute starts with."""
    return _measured(obj, key, where)[0]


def _measured(obj, key: str, where: str) -> tuple[h5py.h5a.AttrID, tuple | None, np.dtype, int]:
    """:func:`measured_attr`'s attribute, with its shape (None: a null dataspace), type and stored bytes as HDF5 gave
    them once (each asked again cost more than the read: an opening measures hundreds)."""
    if isinstance(key, bytes):  # h5py lists a name that is not UTF-8 as bytes; featstore names are all ASCII
        raise StoreError(
            f"{where}: {shown(key, 60)} is an attribute name that is not UTF-8, which featstore never writes: {fix_for(obj)}"
        )
    try:
        aid = h5py.h5a.open(obj.id, key.encode("utf-8", "surrogateescape"))
        shape = aid.shape
        stored, dtype = _stored_size(aid, shape), aid.dtype  # a type numpy has no dtype for (128-bit) is refused here
    except _H5_ERRORS as exc:
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be opened ({shown(str(exc), 160)}): {fix_for(obj)}"
        ) from None
    if kind := _unwritten_type(dtype):  # a user's annotation, most likely: its fix keeps the store (attack 32 #5)
        raise StoreError(
            f"{where}: {shown(key, 60)} cannot be read: it is of HDF5 type {kind}, which featstore never writes in an "
            f"attribute (it reads numbers, booleans and strings, measured before they are read); refused unread: "
            f"remove it with h5py, which keeps the rest of the store: "
            f"`del h5py.File(STORE, 'a')[{shown(obj.name or '/', 200)}].attrs[{shown(key, 60)}]` (or store it as "
            f"numbers or a string)"
        )
    if stored > MAX_ATTR_STORAGE:
        raise StoreError(
            f"{where}: {key} stores {stored:,} bytes, over the {MAX_ATTR_STORAGE:,} featstore accepts in an attribute "
            f"(it writes a few KiB; class names at most 16 bytes each); refused unread: {fix_for(obj)}"
        )
    return aid, shape, dtype, stored


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


def _stored_size(aid: h5py.h5a.AttrID, shape: tuple | None) -> int:
    """Bytes attribute ``aid`` stores (what a read allocates, before strings): HDF5's count, else its dataspace's points
    times its type's size. h5py takes HDF5's 0 for an error, so an empty array or a null dataspace raised (attack 22)."""
    try:
        return int(aid.get_storage_size())
    except RuntimeError:
        points = 0 if shape is None else math.prod(shape)
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
        fix = fix_for(obj) if driver_of(obj) == "sec2" else "open it with HDF5's default driver (unset HDF5_DRIVER)"
        raise StoreError(
            f"{where}: its attributes cannot be counted before they are listed ({shown(str(exc), 160)}); refused "
            f"unread: {fix}"
        ) from None
    if count > MAX_ATTRS:
        raise StoreError(
            f"{where}: holds {count:,} attributes where featstore writes at most {MAX_ATTRS}; refused "
            f"unread: {fix_for(obj)}"
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
