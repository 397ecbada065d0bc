"""A split's path columns (``paths``, ``failed/paths``, ``listing/paths``) read as str, a block at a time.

Their layout (HDF5 strings, a fixed-length width of at most ``layout.MAX_PATH_BYTES``) is checked before any read by
:func:`featstore.store.layout.string_problem`; here the rows are read so that a fixed-length column is never held
whole as bytes, and an empty path (it names no image) is refused as damage.
"""

from __future__ import annotations

from featstore.errors import StoreError
from featstore.store.strings import refuse_long, unreadable_strings

PATH_ERRORS = (
    "surrogateescape"  # stored paths are the file system's bytes; names that are not UTF-8 round-trip losslessly
)
PATH_BLOCK_BYTES = 8 << 20  # fixed-length path bytes read at a time (2,048 rows at the widest)
PATH_BLOCK_ROWS = 1 << 16  # rows of variable-length paths read at a time


def path_block_rows(ds) -> int:
    """Rows of the path column ``ds`` read at a time: :data:`PATH_BLOCK_BYTES` of fixed-length strings, or
    :data:`PATH_BLOCK_ROWS` variable-length ones (their bytes are the file's own)."""
    return max(1, PATH_BLOCK_BYTES // ds.dtype.itemsize) if ds.dtype.kind == "S" else PATH_BLOCK_ROWS


def read_paths(ds, stop: int, start: int = 0, *, empty_ok: bool = False) -> list[str]:
    """Stored paths ``start:stop`` as str (names that are not UTF-8 come back as written, via surrogateescape), read a
    block at a time: a fixed-length column is never held whole as bytes (20,000 rows of 4 KiB: 80 MB at once).

    An empty path in a ``paths`` dataset (a split's, its failures' or its listing's) names no image: StoreError naming
    the split and ``featstore check`` (``empty_ok``: the caller counts them itself, as check does)."""
    if stop <= start:
        return []
    refuse_long(ds, start, stop)  # variable-length: every length from the heap IDs first (rows sharing one string)
    text, step = ds.asstr(errors=PATH_ERRORS), path_block_rows(ds)
    check = not empty_ok and ds.name.rsplit("/", 1)[-1] == "paths"
    out: list[str] = []
    split = ds.parent.name.removesuffix("/listing").removesuffix("/failed").lstrip("/")
    for a in range(start, stop, step):
        try:
            block = list(text[a : min(a + step, stop)])
        except OSError as exc:  # HDF5 refused the strings: "Expected global heap object size does not match", ...
            raise unreadable_strings(ds, a, min(a + step, stop), exc) from None
        if check and "" in block:
            raise StoreError(
                f"{ds.file.filename}:/{split}: row {a + block.index('')} of {ds.name.lstrip('/')} is an empty path, "
                f"which names no image: the store is damaged. Run `featstore check {ds.file.filename}`, then "
                f"re-extract this split with --overwrite"
            )
        out += block
    return out
