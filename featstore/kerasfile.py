"""Keras's settings file (``keras.json``): where Keras finds it, read without waiting, and the Python API's import hook
that refuses one Keras would wait on for ever before featstore's own first import of Keras (attack 48 M5).

The light part of :mod:`featstore.kerasconfig` (``os``, ``stat``, ``sys``): :func:`install` runs at the first use of a
public name of ``featstore`` and at kerasconfig's import, so ``import featstore`` alone still changes nothing.
"""

from __future__ import annotations

import os
import stat
import sys

from featstore.errors import ConfigError
from featstore.safetext import terminal_safe

MOST = 1 << 20  # a settings file is ~120 bytes
FIX = "set KERAS_HOME to a folder of yours (Keras writes its own settings file there)"


def settings_path() -> str:
    """The file Keras reads its settings from, found as Keras finds it (``keras/src/backend/config.py``)."""
    if "KERAS_HOME" in os.environ:
        folder = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        folder = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return os.path.expanduser(os.path.join(folder, "keras.json"))


def read_settings(path: str, waits_only: bool = False) -> tuple[bytes, os.stat_result] | str | None:
    """The settings file's bytes and stat, read without waiting (not a FIFO or device, under :data:`MOST`), or the line
    that refuses it (None: a link to nothing, which Keras skips; ``waits_only``: any file that cannot be opened)."""
    shown = terminal_safe(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if waits_only or os.path.islink(path):
            return None
        return f"Keras's settings file {shown} cannot be read ({exc.strerror}); {FIX}"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return (
                f"Keras's settings file {shown} is not a regular file (Keras would wait on it, or fail, when it is "
                f"imported): remove it (Keras writes a fresh one), or {FIX}"
            )
        try:
            data = f.read(MOST)
        except OSError as exc:  # opened, then the read failed (a failing disk, a stale NFS handle: 50 #M2's EIO)
            return None if waits_only else f"Keras's settings file {shown} cannot be read ({exc.strerror}); {FIX}"
    if len(data) >= MOST:
        return f"Keras's settings file {shown} is 1 MiB or more (one is ~120 bytes): remove it, or {FIX}"
    return data, st


def waits() -> str | None:
    """Of :func:`problem`, only a settings file Keras would wait on for ever or read without bound (a FIFO, a device,
    1 MiB or more): the check of the Python API's import hook (:class:`SettingsCheck`; attack 48 M5: a FIFO there hung
    ``featstore.extract``, which imported Keras itself, for ever; the command checks all of
    :func:`featstore.kerasconfig.problem`). A
    value Keras reads as it is (float16, channels first) is not refused there: :func:`check_loaded` says it when
    featstore builds a model, and the caller's own Keras stays theirs to set up."""
    path = settings_path()
    read = read_settings(path, waits_only=True) if os.path.lexists(path) else None
    return read if isinstance(read, str) else None


class SettingsCheck:
    """``sys.meta_path`` hook: :func:`waits` at the first import of TensorFlow or Keras (the Python API's; the
    command's hook, ``featstore.cli.main._BeforeKeras``, checks all of :func:`featstore.kerasconfig.problem`).
    ``featstore.extract`` in a script that had not imported Keras hung for ever on a FIFO at ``keras.json``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ("tensorflow", "keras") and (line := waits()) is not None:
            raise ConfigError(line)
        return None


def install() -> None:
    """Install :class:`SettingsCheck` once (by name: a reloaded module makes a new class), first in line; not beside
    the command's hook, which checks all of it (and first the temporary folder)."""
    if not any(type(f).__name__ in ("SettingsCheck", "_BeforeKeras") for f in sys.meta_path):
        sys.meta_path.insert(0, SettingsCheck())
