"""Keras's settings file (``keras.json``), checked before Keras reads it, and Keras's settings, checked after.

Keras reads ``$KERAS_HOME/keras.json`` (else ``~/.keras/keras.json``, else ``/tmp/.keras/keras.json`` where the home
folder is not writable) when it is imported, and writes one there when none exists. What it says changes every
model featstore builds, unrecorded: ``"floatx": "float16"`` gave features off by up to 0.085 (of 118) under the same
fingerprint, so a resume would mix two precisions; ``"image_data_format": "channels_first"`` and ``"backend": "jax"``
ended in Keras's tracebacks. In ``/tmp/.keras`` that file may be another user's. featstore's models are built and
tested on TensorFlow, in float32, channels last, with Keras's default epsilon: anything else is one line with the fix
(:func:`problem`, before Keras is imported: the command's import hook; :func:`check_loaded`, after: the Python API).
A settings file that is a FIFO (Keras waits on it for ever), a device, 1 MiB or more, nested past Python's recursion
limit, or reached through another user's link is refused the same way.

>>> problem()   # None where Keras may be imported as it is   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os

from featstore.errors import ConfigError
from featstore.kerasfile import FIX, MOST, install, read_settings, settings_path, waits  # noqa: F401 (MOST, waits)
from featstore.linkrule import foreign_on
from featstore.modes import others_may_write
from featstore.safetext import terminal_safe
from featstore.sticky import owner_name
from featstore.tmpdir import use_own_tempdir

install()  # the API's hook (attack 48 M5): a module that builds Keras models imports this one first

WANTED = {"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"}
CAPS = ("KERAS_MAX_EPOCHS", "KERAS_MAX_STEPS_PER_EPOCH")  # read by Keras as it is imported; a fit checks them


def problem() -> str | None:
    """Why Keras must not be imported as things are (its settings file and ``KERAS_BACKEND``), or None."""
    for cap in (c for c in CAPS if c in os.environ):  # Keras reads them with int() as it is imported
        try:
            int(os.environ[cap])
        except ValueError:
            return f"{cap}={terminal_safe(os.environ[cap])} is not a whole number, and Keras fails on it; unset {cap}"
    backend = os.environ.get("KERAS_BACKEND")
    if backend and backend != "tensorflow":
        return (
            f"KERAS_BACKEND={terminal_safe(backend)}: featstore's models are built and tested on Keras's TensorFlow "
            f"backend; unset KERAS_BACKEND or set it to tensorflow"
        )
    path = settings_path()
    shown = terminal_safe(path)
    try:
        link = foreign_on(path, ConfigError, "Keras's settings file")
    except ConfigError as exc:
        return str(exc)
    if link is not None:
        return (
            f"Keras's settings file {shown} leads through {terminal_safe(link[0])}, a symbolic link made by "
            f"{owner_name(link[1].st_uid)}, not by you: Keras would read (or write) it there; {FIX}"
        )
    if not os.path.lexists(path):
        return _unwritten(path)
    parsed = _parsed(path)
    if not isinstance(parsed, tuple):
        return parsed
    config, st = parsed
    if not isinstance(config, dict):
        return f"Keras's settings file {shown} holds no settings object (Keras fails on it): remove it, or {FIX}"
    said = {k: config.get(k, v) for k, v in WANTED.items() if not (k == "backend" and backend)}
    fix = (  # Keras prefers KERAS_BACKEND to the file: her JAX setup elsewhere stays as it is (attack 46 #5)
        "set KERAS_BACKEND=tensorflow for featstore, or "
        if said.get("backend", "tensorflow") != "tensorflow"
        and all(said[k] == WANTED[k] for k in said if k != "backend")
        else ""
    )
    return _differs(
        said, f"Keras's settings file {shown}" + _whose(st), WANTED, f"{fix}change it in that file, or {FIX}"
    )


def refuse_caps() -> None:
    """ConfigError naming the variable where ``KERAS_MAX_EPOCHS`` or ``KERAS_MAX_STEPS_PER_EPOCH`` is set to a cap (0 is
    none, as Keras reads it): before any work of a command that trains with Keras (a dense classifier, a fine-tuning)."""
    for cap in (c for c in CAPS if c in os.environ):
        value = os.environ[cap]
        try:
            capped = int(value) != 0
        except ValueError:
            capped = True  # Keras fails on it (problem() says so where the command imports Keras)
        if capped:
            raise ConfigError(
                f"{cap}={terminal_safe(value)}: Keras cuts every model.fit to it (a debugging setting), and featstore's "
                f"runs record the epochs they ask for; unset {cap}"
            )


def check_loaded(training: bool = True, where: str = "Keras in this process", fix: str = "") -> None:
    """ConfigError where the Keras this process imported is set otherwise than featstore's models are built for
    (a settings file read before featstore was asked, or ``keras.config.set_floatx`` in a notebook); for
    ``training``, its global dtype policy (a notebook's ``mixed_float16`` trained the dense head in float16,
    unrecorded: attack 45 #3) and caps on epochs and steps (``keras.config.set_max_epochs``: 46 #1) too; the
    extractor sets its own policy, trains nothing, and passes False. ``where`` and ``fix``: a Ray worker's words.
    Then, as every model featstore builds goes through here, the process's temporary folder is made one only the user
    may enter (:func:`featstore.tmpdir.use_own_tempdir`: the Python API's; the command has set it already)."""
    import keras

    if training:
        refuse_caps()  # a cap set in the shell: its variable named (attack 47 #8), not keras.config.set_*
    now = {
        "floatx": keras.config.floatx(),
        "epsilon": keras.config.epsilon(),
        "backend": keras.config.backend(),
        "image_data_format": keras.config.image_data_format(),
    }
    wanted = dict(WANTED)
    if training:
        now["dtype_policy"], wanted["dtype_policy"] = keras.config.dtype_policy().name, "float32"
        wanted["max_epochs"] = wanted["max_steps_per_epoch"] = None
    if training:  # (0: no cap, as Keras reads it; a cap cut a 20-epoch dense fit to one step, recorded as 20: 46 #1)
        now["max_epochs"] = keras.config.max_epochs() or None
        now["max_steps_per_epoch"] = keras.config.max_steps_per_epoch() or None
    line = _differs(now, where, wanted, fix or _loaded_fix(now))
    if line is not None:
        raise ConfigError(line)
    use_own_tempdir()


def _loaded_fix(now: dict) -> str:
    """:func:`check_loaded`'s fix: the settings file named where the values that differ are the ones it says (Keras
    read them from it when imported: attack 48 L1, "keras.config.set_*" alone sent the user looking for a call she
    never made), else keras.config.set_* and the variables."""
    fix = "change it back with keras.config.set_* (or unset the KERAS_ variable that set it)"
    path = settings_path()
    parsed = _parsed(path) if os.path.lexists(path) else None
    if not isinstance(parsed, tuple) or not isinstance(parsed[0], dict):
        return fix
    config, st = parsed
    own = {"backend": "KERAS_BACKEND"}  # a variable Keras prefers to the file
    keys = [
        k
        for k, v in WANTED.items()
        if k in now and now[k] != v and config.get(k, v) == now[k] and not os.environ.get(own.get(k, ""))
    ]
    if not keys:
        return fix
    return (
        f"{', '.join(keys)} came from Keras's settings file {terminal_safe(path)}{_whose(st)}, read when Keras was "
        f"imported: change it in that file and start Python again, or {FIX}; in this process, keras.config.set_* "
        f"sets it back"
    )


def _parsed(path: str) -> tuple[object, os.stat_result] | str | None:
    """The settings file at ``path`` read (bounded: ``read_settings``) and parsed: ``(its JSON value, its stat)``, a line
    saying why Keras cannot use it, or None where Keras ignores it (none there, or not JSON: Keras keeps its defaults)."""
    read = read_settings(path)
    if isinstance(read, str) or read is None:
        return read
    try:
        return json.loads(read[0]), read[1]
    except ValueError:
        return None
    except RecursionError:
        return (
            f"Keras's settings file {terminal_safe(path)} is nested too deeply for Keras to read: remove it, or {FIX}"
        )


def _differs(said: dict, where: str, wanted: dict, fix: str) -> str | None:
    wrong = [f"{k} {terminal_safe(repr(said[k]))}" for k, v in wanted.items() if k in said and said[k] != v]
    if not wrong:
        return None
    right = ", ".join(f"{k} {v!r}" for k, v in wanted.items() if k in said)
    return (
        f"{where} says {', '.join(wrong)}: featstore's models are built for {right} (its stores and fingerprints "
        f"assume them); {fix}"
    )


def _whose(st: os.stat_result) -> str:
    return "" if st.st_uid in (os.geteuid(), 0) else f" (made by {owner_name(st.st_uid)}, not by you)"


def _unwritten(path: str) -> str | None:
    """Keras writes its settings file where none is: refused where the folder is another user's that others may write
    (a colleague's ``/tmp/.keras``: a link he puts at the name meanwhile gets Keras's write)."""
    folder = os.path.dirname(path)
    try:
        st = os.stat(folder)
    except OSError:
        return None  # Keras makes it (the user's own), or cannot and writes nothing
    if st.st_uid in (os.geteuid(), 0) or not others_may_write(st, folder):
        return None
    return (
        f"Keras would write its settings file into {terminal_safe(folder)}, a folder of {owner_name(st.st_uid)}'s that "
        f"others may write; {FIX}"
    )
