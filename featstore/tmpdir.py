"""The folder for featstore's temporary files: one in which no one else may rename entries (nor in a folder above it).

A TMPDIR others may rename in (a team's ``2775`` scratch folder, a colleague's link) let one of them swap the user's
scratch folder for his while Keras opened a model by name there (attack 41 #3). This module is the light home of that
choice (``os``, ``stat``, :mod:`featstore.modes`): the command picks it on every start, before it knows whether it
will need it (:mod:`featstore.models.scratch` and what it imports cost about 45 ms more).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from featstore.errors import ConfigError
from featstore.modes import others_may_write, renamable_by_others
from featstore.sticky import owner_name

logger = logging.getLogger("featstore.models.scratch")  # the name its lines always had

_SAID: set[str] = set()  # the shared temporary folders warned about in this process: one line each


def private_tempdir(api: bool = False) -> str:
    """A folder for featstore's temporary files and folders in which no one else may rename entries (nor in any
    folder above it): ``tempfile.gettempdir()`` (``TMPDIR``, else ``/tmp``, whose sticky bit keeps each user's entries
    his) where it is so; else ``~/.cache/featstore/tmp`` (made ``0700``), with one warning a process. ConfigError
    where neither is private. ``api``: the line says the whole process's temporary files move (:func:`choose`)."""
    folder, line = choose(api=api)
    if line is not None and line not in _SAID:
        _SAID.add(line)
        logger.warning("%s", line)
    return folder


def choose(avoid: str | None = None, api: bool = False) -> tuple[str, str | None]:
    """:func:`private_tempdir`'s folder and the warning it says when that is not ``tempfile.gettempdir()`` (None where
    it is), saying nothing itself: a Ray worker picks its own without a line each (the driver said it once). ``api``:
    the Python API's words, where the folder becomes the caller's process's ``tempfile.tempdir`` (its own code's
    temporary files move too: attack 48 L5)."""
    default = tempfile.gettempdir()
    shared = renamable_by_others(default) if hasattr(os, "geteuid") else None
    if shared is None and avoid is None:
        return default, None
    where = "" if shared in (default, None) else f" is in {shared}"
    head = f"temporary folder {default}{where}, in which " + (
        avoid or "other users may rename entries (or a link of theirs)"
    )
    try:
        cache = _xdg("XDG_CACHE_HOME", ".cache") / "featstore" / "tmp"
    except RuntimeError:  # no HOME and no passwd entry (a container's --user, env -i): attack 42 #4
        raise ConfigError(
            f"{head}, and there is no home folder for featstore's own: set TMPDIR to a folder of yours"
        ) from None
    st, why, fix = None, None, "set TMPDIR to a folder of yours"
    existing = next(p for p in (cache, *cache.parents) if os.path.lexists(p))
    if not os.path.isdir(existing):  # (XDG_CACHE_HOME=/dev/null: no folder, not one "others may rename entries in")
        why = f"{existing} is not a folder"
    elif (shut := renamable_by_others(existing)) is not None:  # checked before anything is made there (42 #7)
        why = f"others may rename entries in {shut}"
    else:
        try:
            cache.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.stat(cache)  # a link of the user's own there followed (its chain was checked): 43 #14 (c)
        except OSError as exc:
            why = exc.strerror
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
        why = renamable_by_others(cache)
        if why is None:
            kept = (
                f"this process's temporary files (tempfile's folder: featstore's, TensorFlow's and your own code's) go "
                f"to {cache} from now on"
                if api
                else f"featstore keeps its temporary files in {cache} instead"
            )
            return str(cache), f"{head}: {kept}; set TMPDIR to a folder of yours to choose another"
        why = f"others may rename entries in {why}"
    elif st is not None and not stat.S_ISDIR(st.st_mode):
        why = "it is not a folder"
    elif st is not None and st.st_uid != os.geteuid():
        why = f"it is {owner_name(st.st_uid)}'s, not yours"
    elif st is not None:  # the user's own, open to others: the one command that makes it private (43 #14 (a))
        why, fix = (
            f"it is open to others, mode {stat.S_IMODE(st.st_mode):04o}",
            f"chmod 700 {cache} (it is yours), or {fix}",
        )
    raise ConfigError(f"{head}, and {cache} cannot take featstore's temporary files either ({why}): {fix}")


def own_tempdir(quiet: bool = False, api: bool = False) -> str:
    """The folder for this process's temporary files (``tempfile.tempdir`` of the command and of a Ray worker): the
    private folder (:func:`private_tempdir`; ``quiet``: :func:`choose`, without its line) where it is the user's own
    and closed to others (:func:`closed`), else ``featstore-<uid>`` in it (:func:`own_folder`). In a shared one
    (``/tmp``: sticky, so no one may rename the user's entries) a fixed name such as ``__pycache__`` is anyone's to
    make first: Python looked for the bytecode of TensorFlow's generated modules (autograph's, imported again by name)
    in a colleague's ``/tmp/__pycache__``, and ran his (attack 46 #4). ConfigError naming the fix where neither is.
    ``api``: :func:`choose`'s words for the Python API."""
    folder = choose()[0] if quiet else private_tempdir(api)
    if closed(folder):
        return folder
    base, st, err = own_folder(folder)
    if st is not None and is_own(st):
        return str(base)
    why = (
        err.strerror
        if err is not None
        else f"{owner_name(st.st_uid)} made it, not you: only they or an admin can remove it"
        if st.st_uid != os.geteuid()
        else "it is a link; featstore uses only a folder there"  # (her own link: "not a folder" read as a mistake, 48 L4)
        if stat.S_ISLNK(st.st_mode)
        else "it is not a folder"
        if not stat.S_ISDIR(st.st_mode)
        else f"it is open to others, mode {stat.S_IMODE(st.st_mode):04o}"
    )
    avoid = f"others may make entries, and the folder featstore keeps for you there, {base}, cannot be used ({why})"
    home, line = choose(avoid, api)  # the home cache folder, as for a folder others may rename in (attack 47 #3)
    if line is not None and not quiet and line not in _SAID:
        _SAID.add(line)
        logger.warning("%s", line)
    return home


def own_folder(tmp: str | os.PathLike) -> tuple[Path, os.stat_result | None, OSError | None]:
    """``<tmp>/featstore-<uid>``, made ``0700`` where missing: the path, its ``lstat`` (None where it could not be
    made) and the error that stopped it (None). :func:`is_own` says whether it may be used."""
    base = Path(tmp) / f"featstore-{os.geteuid()}"
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return base, None, exc
    return base, os.lstat(base), None


def is_own(st: os.stat_result) -> bool:
    """Whether ``st`` (an ``lstat``) is a folder of this user's that no one else may enter (not a link)."""
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def closed(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (links of the user's own followed) is the user's own, no one else may enter it (mode
    ``0700``, no ACL entry for others) and no one else may rename it or a folder above it."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return is_own(st) and not others_may_write(st, folder) and renamable_by_others(folder) is None


def use_own_tempdir() -> None:
    """The process's temporary folder made one only the user may enter (:func:`own_tempdir`, quietly) where it is not
    one already: the Python API's, called where featstore builds a Keras model (its traces and fits write TensorFlow's
    generated modules there, imported again by name). ``featstore.extract`` in a notebook left it at a sticky ``/tmp``
    whose ``__pycache__`` a colleague had made: his code ran in her process (attack 47 #1). Where that is the home
    cache folder instead (a colleague's ``<tmp>/featstore-<uid>``), one warning a process says so: the caller's own
    temporary files had moved to the home quota without a word (attack 48 L5)."""
    if hasattr(os, "geteuid") and not closed(tempfile.gettempdir()):
        tempfile.tempdir = own_tempdir(api=True)


def quiet_matplotlib(tmp: str) -> None:
    """Give matplotlib a configuration folder in ``tmp`` (the command's own temporary folder) where its own (in
    ``MPLCONFIGDIR``, ``XDG_CONFIG_HOME`` or ``~/.config``) cannot be made or written: a home folder that cannot be
    written added two long warnings of matplotlib's to every extract (attack 51 L6). A set ``MPLCONFIGDIR`` stays."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    try:
        folder = _xdg("XDG_CONFIG_HOME", ".config") / "matplotlib"
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return
    except (OSError, RuntimeError):  # (RuntimeError: no home at all)
        pass
    mine = Path(tmp) / "matplotlib"
    try:
        mine.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return  # matplotlib makes its own temporary one, and says so
    os.environ["MPLCONFIGDIR"] = str(mine)


def _xdg(var: str, fallback: str) -> Path:
    """The XDG folder ``$var`` where it is absolute (a relative one is ignored, as the XDG spec says: it was taken from
    the current folder, attack 48 L4), else ``~/<fallback>``; RuntimeError where there is no home folder."""
    given = os.environ.get(var, "")
    return Path(given) if os.path.isabs(given) else Path.home() / fallback
