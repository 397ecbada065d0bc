"""What ``featstore check`` says of an object whose HDF5 metadata HDF5 cannot read: a finding, not a traceback."""

from __future__ import annotations

from featstore.store.strings import shown

# what h5py raises where HDF5 meets metadata it cannot read (a bad checksum, an address past the end, a name that is
# not UTF-8): in `check` it is a finding about that object, and the other objects are still checked (attack 23 #3)
DAMAGED = (RuntimeError, KeyError, OSError, ValueError, SystemError, UnicodeDecodeError)
DAMAGED_FIX = "restore the store from a copy, or extract into a new --store"


def damaged(where: str, exc: BaseException) -> str:
    """The finding for an object HDF5 could not read: the object, HDF5's reason (its first line, cut), the fix (the
    store's metadata, not one split's rows: a re-extraction writes into the same damaged file)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, UnicodeDecodeError) or isinstance(cause, UnicodeDecodeError):
        return f"{where}: a name there is not UTF-8, which featstore never writes (crafted or damaged); {DAMAGED_FIX}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str: quoted
    # h5py's SystemError text names a function and an address, not the object: not shown
    why = "" if isinstance(exc, SystemError) else shown(text.splitlines()[0] if text else "", 160)
    why = f"{type(exc).__name__}{': ' + why if why else ''}"
    return f"{where}: HDF5 cannot read it ({why}): its metadata is damaged (a flipped bit, a truncated copy); {DAMAGED_FIX}"
