"""A model or weights file the user names (``--model FILE``, ``--weights PATH``, a preset folder's weights), held from
its first check to its last read.

Such a file is read several times: its zip bounds, the parameters its weights hold, Keras's own loading, its sha256.
By name, each reading could meet another file: a FIFO renamed onto the name after the first look made ``extract`` wait
for a writer forever, and a file swapped in after the bounds were checked was loaded unchecked (attack 33 #4). The
file is reached once with ``O_PATH`` (a link or anything but a regular file at its real name, swapped in since it was
resolved, is refused), held to the link rule on the file reached, and opened read-only and non-blocking; every later
reader is given a private name for that very file: a link in a private scratch folder to ``/proc/self/fd/<fd>``
(Keras and h5py open names), named as Keras must see it (:func:`~featstore.models.file_format.keras_name`: Keras picks
the format by the name's ending; the user's own link to a suffix-less blob was refused, named after the blob). Errors raised while it is held name
the user's path, never the private one; one raised after the file was renamed away says so (HDF5 resolves the
link's target by name: it cannot open a held file whose name is gone).

>>> with held_input(Path("my_cnn.keras"), "model file", ConfigError, "--model") as name:   # doctest: +SKIP
...     model = keras.saving.load_model(name)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from featstore.errors import ConfigError
from featstore.linkrule import refuse_foreign
from featstore.models.file_format import keras_name
from featstore.models.scratch import scratch_folder
from featstore.output_images import BY_PATH, regular_fd
from featstore.outputs import what_is_at
from featstore.safetext import terminal_safe


@contextlib.contextmanager
def held_input(
    path: Path, what: str, error: type[Exception] = ConfigError, option: str | None = None, named: Path | None = None
) -> Iterator[Path]:
    """A private name of the regular file at ``path`` (its real path: resolved, links followed), reading that very file
    whatever is renamed onto ``path`` later; ``error`` (naming ``what`` and ``path``) when what is there now is not
    that regular file, or its path leads through another user's link (``option``: the flag that gives it). Without
    ``O_PATH`` and ``/proc`` (macOS) the path itself, read by name as before. ``named``: the path as the user gave it
    (links unresolved), said in messages instead of ``path``, and whose name Keras sees where ``path``'s has no
    ending Keras knows."""
    if not BY_PATH:
        yield path
        return
    shown = terminal_safe(str(named or path))
    try:
        fd = open_input(path, what, error, option, follow=False)
    except OSError as exc:
        raise error(f"{what} {shown} cannot be opened: {exc.strerror}") from None
    if fd is None:
        now = "a symbolic link" if os.path.islink(path) else what_is_at(path) or "another file"
        raise error(
            f"{what} {shown} is now {now}, not the regular file featstore looked at a moment ago (someone can rename "
            f"entries in its folder); nothing was loaded. Run again, or keep the file in a folder only you can write"
        )
    try:
        with scratch_folder("input") as tmp:
            private = tmp / keras_name(path, named, fd)  # Keras picks the format by the name's ending
            os.symlink(f"/proc/self/fd/{fd}", private)
            try:
                yield private
            except Exception as exc:
                if not _still_at(path, fd):  # HDF5 cannot open a file whose name is gone: it resolves the link's path
                    raise error(
                        f"{what} {shown} was replaced while featstore read it (someone can rename entries in its "
                        f"folder); nothing was loaded. Run again, or keep the file in a folder only you can write"
                    ) from None
                _say_as(exc, private, named or path)
                raise
    finally:
        os.close(fd)


def open_input(
    path: Path, what: str, error: type[Exception] = ConfigError, option: str | None = None, follow: bool = True
) -> int | None:
    """A read-only, non-blocking descriptor of the regular file at ``path`` (through links when ``follow``; else a
    link at the name is none), or None where there is none (a folder, FIFO, device, socket: never opened, it is only
    reached with ``O_PATH``, which calls no driver). ``error`` naming ``what`` when the path leads through another
    user's link, by name first (the line names the link) and then on the file reached. OSError (FileNotFoundError:
    nothing there) for the caller to word (:func:`featstore.output_images.regular_fd`)."""
    refuse_foreign(path, what, error, option)
    fd = regular_fd(path, follow)
    if fd is None:
        return None
    try:
        refuse_foreign(path, what, error, option, opened=fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _still_at(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file held open at ``fd``."""
    try:
        now, held = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _say_as(exc: BaseException, private: Path, path: Path) -> None:
    """Name ``path`` where ``exc``'s message names the private link (or its folder) it was read through."""
    swaps = ((str(private), str(path)), (str(private.parent), str(path.parent)))

    def said(text: str) -> str:
        for old, new in swaps:
            text = text.replace(old, new)
        return text

    exc.args = tuple(said(a) if isinstance(a, str) else a for a in exc.args)
    if isinstance(exc, OSError) and isinstance(exc.filename, str):
        exc.filename = said(exc.filename)
