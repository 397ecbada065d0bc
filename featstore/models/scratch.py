"""Private scratch folders that a killed process does not leave behind for ever.

A KerasHub preset is built from a snapshot folder (the checked ``config.json`` and the weights as they were, a hard
link or a copy of a few GiB). ``tempfile.TemporaryDirectory`` removes it on exit, but a SIGKILL (the OOM killer, a
cluster's time limit) left one ``/tmp/featstore-preset-*`` per kill for ever. Scratch folders are now made in one
folder of this user, ``<tmp>/featstore-<uid>/`` (``0700``, checked to be a folder of this user that no one else can
write), named ``<kind>-<pid>-<host>-<random>``; every new one first removes those of this host whose process is gone
and that are older than STALE_AGE_S. A pid means nothing on another host (a TMPDIR shared by a cluster's nodes) or in
another PID namespace (a container sharing /tmp): a live build's snapshot there was deleted by pid alone.

>>> scratch_name("preset", 4242).startswith("preset-4242-")
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from featstore.leftovers import host_tag, last_touched, writer_gone
from featstore.sticky import owner_name
from featstore.tmpdir import is_own, own_folder, private_tempdir

logger = logging.getLogger(__name__)

__all__ = ["new_scratch", "private_tempdir", "remove_stale", "scratch_folder", "scratch_name", "user_scratch"]

STALE_AGE_S = 300  # a scratch folder of a gone process is removed only once this old (another PID namespace's pid)


def scratch_name(kind: str, pid: int) -> str:
    """The name of a new scratch folder of ``kind`` for process ``pid`` on this host (:func:`featstore.leftovers.host_tag`,
    the same tag featstore's temporary files carry)."""
    return f"{kind}-{pid}-{host_tag()}-{secrets.token_hex(4)}"


def user_scratch(tmp: str | os.PathLike | None = None) -> Path | None:
    """``<tmp>/featstore-<uid>/``, made ``0700`` where missing; None (with a warning) when what is there is not a
    folder of this user that only this user can write (a link, another user's folder: not trusted), and on systems
    without user ids (Windows). ``tmp``: :func:`private_tempdir` unless given (a local Ray's short ``/tmp`` or the
    user's ``RAY_TMPDIR``: one the caller checked no one else may rename entries in)."""
    if not hasattr(os, "geteuid"):
        return None
    base, st, err = own_folder(tmp if tmp is not None else private_tempdir())
    if st is None:
        _once(base, f"scratch folder {base} cannot be made ({err.strerror}); using a plain temporary folder")
        return None
    if not is_own(st):
        _once(base, _not_private(base, st))
        return None
    return base


_SAID: set[str] = set()  # the scratch folders warned about in this process: one warning each, not one per model


def _once(base: Path, line: str) -> None:
    """Warn ``line`` about ``base`` once per process (each preset or model build asked again: two lines a command)."""
    if str(base) not in _SAID:
        _SAID.add(str(base))
        logger.warning("%s", line)


def _not_private(base: Path, st: os.stat_result) -> str:
    """Why ``base`` (its ``lstat``: ``st``) is not a private folder of this user's, and a fix the user can do: another
    user's (a colleague who made ``/tmp/featstore-<your uid>`` first) is removed by them or an admin only, in ``/tmp``
    (attack 34 #3b: it said "Remove it")."""
    if st.st_uid != os.geteuid():
        owner = owner_name(st.st_uid)
        what, fix = f"{owner}'s", f"ask {owner} or an admin to remove it, or set TMPDIR to a folder of yours"
    elif stat.S_ISDIR(st.st_mode):
        what, fix = f"open to others (mode {stat.S_IMODE(st.st_mode):04o})", f"remove it, or chmod 700 {base}"
    else:
        what, fix = "a link" if stat.S_ISLNK(st.st_mode) else "not a folder", "remove it"
    return (
        f"{base} is not a private folder of yours (it is {what}); featstore's scratch folders go to plain temporary "
        f"folders, which a killed process leaves behind: {fix}"
    )


def remove_stale(base: Path, kind: str) -> list[str]:
    """Remove ``base``'s scratch folders of ``kind`` made on this host whose process is gone (left by a kill) and that
    are older than STALE_AGE_S (the newest mtime of the folder and its direct entries); their names. Another host's,
    or one without a host (made before hosts were recorded), is never removed: its pid means nothing here."""
    gone, now = [], time.time()
    pattern = re.compile(rf"{re.escape(kind)}-(\d+)-{re.escape(host_tag())}-[0-9a-f]+")
    with os.scandir(base) as entries:
        for entry in entries:
            found = pattern.fullmatch(entry.name)
            if found is None or not entry.is_dir(follow_symlinks=False):
                continue
            if not writer_gone(int(found.group(1)), host_tag()) or now - last_touched(entry.path) < STALE_AGE_S:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            gone.append(entry.name)
    if gone:
        logger.info("removed %d scratch folder(s) left in %s by killed processes", len(gone), base)
    return gone


@contextlib.contextmanager
def scratch_folder(kind: str) -> Iterator[Path]:
    """A new private folder for this process (``<tmp>/featstore-<uid>/<kind>-<pid>-<random>``), removed after the block;
    those left by killed processes are removed first. Example::

        with scratch_folder("preset") as tmp:
            ...
    """
    folder = new_scratch(kind)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_scratch(kind: str) -> Path:
    """A new private folder ``<tmp>/featstore-<uid>/<kind>-<pid>-<host>-<random>`` (``0700``) after removing those of
    ``kind`` left by killed processes; the caller removes it (:func:`scratch_folder` does). Without a private base (see
    :func:`user_scratch`) a plain ``tempfile.mkdtemp`` folder."""
    base = user_scratch()
    if base is None:
        return Path(tempfile.mkdtemp(prefix=f"featstore-{kind}-", dir=private_tempdir()))
    remove_stale(base, kind)
    folder = base / scratch_name(kind, os.getpid())
    os.mkdir(folder, 0o700)
    return folder
