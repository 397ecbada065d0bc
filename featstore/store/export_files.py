"""Whether a file is one ``featstore export`` wrote, so that an export may replace it
(:func:`featstore.outputs.check_own_output`): a CSV starting with export's header, an ``.npz`` holding export's
members only, a Parquet file whose schema carries export's ``featstore`` metadata. Anything else at ``--out`` (a
script, a saved model, notes) is refused, never replaced.

>>> SUFFIXES["parquet"]
('.parquet', '.pq')
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from featstore.output_images import regular_file
from featstore.outputs import starts_with
from featstore.safezip import read_npy
from featstore.version import __version__

SUFFIXES = {"npz": (".npz",), "parquet": (".parquet", ".pq"), "csv": (".csv",)}  # the names each format is written to
_NPZ_MEMBERS = {"features.npy", "labels.npy", "paths.npy", "class_names.npy", "copy.npy", "featstore.npy"}
MARK = ["featstore", __version__]  # featstore.npy of an npz export: ("featstore", the version that wrote it)
_MARK_BYTES = 4096  # featstore.npy's size bound (it is a few hundred bytes)


def is_export(path: str | os.PathLike, fmt: str) -> bool:
    """Whether the regular file ``path`` is an export of format ``fmt`` (npz, parquet or csv); False for anything
    else, or a file that cannot be read. Example::

        is_export("train.npz", "npz")
    """
    path = Path(path)
    if fmt == "csv":
        return starts_with(path, b"path,label,class,")
    with regular_file(path) as fh:  # one opening, read through: a FIFO renamed onto the name since is never waited on
        return fh is not None and _is_export_file(fh, fmt)


def _is_export_file(fh, fmt: str) -> bool:
    """:func:`is_export` of the regular file open in ``fh`` (npz or parquet)."""
    if fh.read(4) != (b"PK\x03\x04" if fmt == "npz" else b"PAR1"):
        return False
    fh.seek(0)
    try:
        if fmt == "npz":
            with zipfile.ZipFile(fh) as z:  # its directory, and featstore.npy (bounded, header checked first)
                names = set(z.namelist())
                if not {"features.npy", "labels.npy"} <= names <= _NPZ_MEMBERS:
                    return False
                if "featstore.npy" not in names:
                    return False  # a user's np.savez, or an export before featstore.npy: not replaced
                info = z.getinfo("featstore.npy")
                if max(info.file_size, info.compress_size) > _MARK_BYTES:
                    return False
                mark = read_npy(z, "featstore.npy", "U", (None,))
            return len(mark) == 2 and str(mark[0]) == "featstore"
        import pyarrow.parquet

        return b"featstore" in (pyarrow.parquet.read_schema(fh).metadata or {})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, ImportError):  # pyarrow's: OSError, ValueError
        return False
