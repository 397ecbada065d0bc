"""The folder of ``export --rows-per-file``'s Parquet shards: checked before any work, written whole beside it and swapped
in by two renames, and what a kill between or after those renames left recovered at the next export of that folder.

The shards are written into ``.<out>.fs<pid>-<host>-XXXXXXXX.tmp`` (this process and machine named, as
:mod:`featstore.leftovers` names temporary files; a long ``out`` name is cut as there), the earlier export is moved aside
into ``.<out>.fs<pid>-<host>-XXXXXXXX.old/shards``, the new folder renamed onto ``out``, then the aside copy removed. A
kill between the renames leaves ``out`` missing: the next export puts the earlier one back. A kill after them leaves the
whole earlier export hidden beside the new one, and a kill while writing leaves the half-written folder: the next export
removes either once provably abandoned (this machine's, its process gone, nothing in it modified for ``STALE_AGE_S``, a
real folder of this user), and names any other with how to remove it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import secrets
import shlex
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from featstore.carry import give_folder, not_carried
from featstore.errors import ConfigError, NotWritten, OutputError
from featstore.leftovers import STALE_AGE_S, last_touched, temp_prefix, temp_stem, writer_gone
from featstore.linkrule import refuse_foreign
from featstore.outputs import output_fix, probe_output, terminal_safe
from featstore.renames import PARENT, OwnFolder, same_folder
from featstore.sticky import ahead, owner_name, whose
from featstore.store.held import DIR, move_aside, own_held, put_back, remove_held
from featstore.store.shard_names import is_shard_name

logger = logging.getLogger(__name__)

# after ".<out>": the writer's tag and mkdtemp's random part ([a-z0-9_])
_TAG = r"\.fs(?P<pid>[0-9]{1,10})-(?P<host>[0-9a-f]{16})-[0-9a-z_]{1,32}\."


def refuse_shard_folder(out: Path) -> None:
    """Refuse an ``out`` for shards that is a link, a file, or a folder holding anything but an earlier export's shards,
    or whose path leads through another user's link (:func:`featstore.linkrule.refuse_foreign`, attack 31 #2; by name
    here, on the folder written in by :func:`write_shards`)."""
    refuse_foreign(out, "--out", OutputError, "--out")
    here, there = os.path.realpath(os.getcwd()), os.path.realpath(out)  # as the kernel resolves them ("link/..")
    if os.path.commonpath([here, there]) == there:  # ".": its temporary folder
        raise ConfigError(  # was made inside it (beside the name ""), then called "other files than shards"
            f"--out {out} is the folder you are in (or holds it); the shards are written into a new folder that "
            f"replaces --out when complete, so name a folder to make, e.g. --out {out / 'shards'}"
        )
    if out.is_symlink() or (os.path.lexists(out) and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a folder; with --rows-per-file it names the folder of shards")
    if out.is_dir():
        other = [e.name for e in os.scandir(out) if not _is_shard(e)]
        if other:
            raise ConfigError(
                f"--out {out} is a folder holding other files than shards ({', '.join(sorted(other)[:3])}); with "
                f"--rows-per-file it must be a new folder or an earlier export's; choose another name"
            )
        theirs = ahead(out)  # a colleague's, in a sticky folder: only he may replace it, a listing or not (43 #8)
        if theirs is not None:
            raise OutputError(
                f"cannot write --out {terminal_safe(str(out))}: "
                + theirs.line(f"write to another path of yours, or ask {theirs.owner} to remove it")
            )
        _refuse_not_yours(os.lstat(out), out)
        _refuse_unlisted(out)
    # Only out's folder is probed (it exists, takes new files, is no runs folder): a name featstore never writes, and
    # no one has (a fixed "<out>.shards" was checked too, so a user's folder, FIFO or link there was reported as --out).
    probe = out.parent / f".{temp_stem(out.name)}.{secrets.token_hex(3)}"
    while os.path.lexists(probe):
        probe = out.parent / f".{temp_stem(out.name)}.{secrets.token_hex(3)}"
    try:
        probe_output(probe, "--out", folder=True)
    except OutputError as exc:  # named as given: the probe's name is featstore's, not the user's
        raise OutputError(str(exc).replace(str(probe), str(out))) from None


def _refuse_not_yours(st: os.stat_result, out: Path) -> None:
    """Refuse an ``out`` folder that is another user's (``st``: its stat), even empty: renaming the new shards onto an
    empty folder needs only write on its parent (a team folder, ``2775``), so a colleague's folder was replaced by the
    user's, and he could no longer write in it (attack 48 M3). Root too: a folder of another uid is not replaced."""
    if st.st_uid == os.geteuid():
        return
    owner = owner_name(st.st_uid)
    raise OutputError(
        f"cannot write --out {terminal_safe(str(out))}: it is {whose(st)} folder, not yours, and featstore never "
        f"replaces another user's file or folder; write to another path of yours, or ask {owner} to remove it"
    )


def _refuse_unlisted(out: Path) -> None:
    """Refuse replacing the earlier export ``out`` in a folder this user may write in but not list (a drop folder,
    ``1733``): it is moved aside while the new one is renamed in, and only a listing of that folder finds it again (to
    put it back) should the export be killed in between. A new ``out`` there needs no listing (attack 39 #4)."""
    try:
        os.close(os.open(out.parent, DIR))
    except PermissionError:
        st = os.stat(out.parent)
        mode = f"mode {stat.S_IMODE(st.st_mode):04o}: you may write in it but not read it"
        if st.st_uid == os.geteuid():
            ask = f"chmod u+r {shlex.quote(str(out.parent))} (it is yours)"
        else:
            ask = f"ask its owner, {owner_name(st.st_uid)}, to let you read it"
        raise ConfigError(
            f"--out {terminal_safe(str(out))} exists, in a folder you cannot list ({mode}): featstore replaces it by "
            f"moving it aside until the new export is in place, and only a listing of that folder finds it again if "
            f"the export is killed in between; export to a new name (e.g. --out "
            f"{terminal_safe(str(out.parent / (out.name + '.2')))}), or {ask}"
        ) from None


def _held(folder: OwnFolder, out: Path) -> None:
    """The link rule on the folder the shards' folder was made in (its ``..``, through the descriptor): the one
    ``out``'s folders reach through no other user's link, else the one line (attack 31 #2)."""
    up = os.open("..", PARENT, dir_fd=folder.fd)  # only stat'ed and removed in: a drop folder (1733) is never listed
    try:
        refuse_foreign(out.parent, "--out", OutputError, "--out", up, out)
    except OutputError:  # made elsewhere: removed there, through the folder it is in (its name leads elsewhere now)
        with contextlib.suppress(OSError):
            there, mine = os.stat(folder.name.name, dir_fd=up, follow_symlinks=False), os.fstat(folder.fd)
            if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino) and not os.listdir(folder.fd):
                os.rmdir(folder.name.name, dir_fd=up)
        raise
    finally:
        os.close(up)


_READ = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _is_shard(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is one of featstore's shards: a regular file ``part-NNNNN.parquet`` (5 digits or more:
    :mod:`featstore.store.shard_names`) whose schema carries featstore's metadata (a pyarrow dataset's
    ``part-0.parquet``, a folder or a link so named is someone else's)."""
    if not (is_shard_name(entry.name) and entry.is_file(follow_symlinks=False)):
        return False
    import pyarrow
    import pyarrow.parquet

    try:  # through one descriptor (not followed, not waited on): a FIFO renamed onto the name since is_file blocked
        fd = os.open(entry.path, _READ)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            return b"featstore" in (pyarrow.parquet.read_schema(fh).metadata or {})
        except (OSError, ValueError, pyarrow.ArrowException):  # not Parquet, damaged, unreadable: not ours
            return False


def write_shards(out: Path, write: Callable[[Path], object]) -> None:
    """``write(folder)`` into a hidden folder beside ``out``, renamed onto ``out`` when whole (an earlier export's
    shards are replaced only then); on any failure the hidden folder is removed and ``out`` is left as it was. The
    earlier export is held open from its check to its removal (:mod:`featstore.store.held`): checked by name, moved
    aside and removed by name, a folder a colleague exchanged with it in between was deleted (attack 30 #8)."""
    _recover_shards(out)
    old, fd, shards, done = None, None, [], False
    try:
        # 0700 while written, each shard through the folder's descriptor (OwnFolder): it was made group-writable first
        # and its shards opened by name, so a colleague's links at the next shard's name were written through (attack 25)
        with OwnFolder(out.parent, temp_prefix(out.name), ".tmp") as folder:
            _held(folder, out)
            write(folder.at)
            fd = _open_earlier(out)  # held from here: the folder checked is the one moved aside and emptied
            refuse_shard_folder(out)  # nothing else appeared there while writing (a link, someone's files)
            mode = None  # a new folder: the mode a plain mkdir there gives (featstore.modes.fresh_mode)
            if fd is not None:  # an earlier export's mode, group, ACL, and its shards' (attack 28 #6: one made
                shown = terminal_safe(str(out))  # private by chmod -R go-rwx came back 0755, 0644 shards)
                shards = _held_shards(fd, out)
                _refuse_not_yours(os.fstat(fd), out)  # the folder held: one exchanged in since is not replaced either
                before, owns = own_held(fd, out, f"--out {shown}")
                if before is not None:  # else the user's folder whose mode cannot be read: renamed onto as new
                    mode = give_folder(
                        folder.fd, before, owns, f"--out {shown}", shown, not_carried(f"--out {shown}", OutputError)
                    )
                    old = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".old", dir=out.parent))
                    move_aside(fd, out, old / "shards", f"--out {shown}")
            folder.publish(out, mode)  # through the descriptor, once whole
            done = True
    except BaseException as exc:  # Ctrl-C between the two renames too: it lost both exports (attack 26 #10)
        if old is not None:
            put_back(fd, old / "shards", out)  # the earlier export, only if it is the folder moved
        if not isinstance(exc, OSError) or isinstance(exc, OutputError):
            raise
        raise NotWritten(f"cannot write --out {out}: {output_fix(exc, out)}") from None
    finally:
        if done and old is not None:  # the earlier export's shards it listed, through its descriptor
            with contextlib.suppress(OSError):
                remove_held(fd, old / "shards", shards)
        if old is not None:
            with contextlib.suppress(OSError):
                os.rmdir(old)  # empty unless the earlier export is still in it
        if fd is not None:
            os.close(fd)


def _open_earlier(out: Path) -> int | None:
    """``out`` open (not followed), None when absent: what is checked, moved aside and removed is that folder."""
    try:
        return os.open(out, DIR)
    except FileNotFoundError:
        return None
    except OSError:
        raise ConfigError(
            f"--out {out} exists and is not a folder; with --rows-per-file it names the folder of shards"
        ) from None


def _held_shards(fd: int, out: Path) -> list[str]:
    """The shards of the earlier export open at ``fd``, checked through it: anything else there is refused."""
    shards, other = [], []
    for name in sorted(os.listdir(fd)):
        (shards if _is_held_shard(fd, name) else other).append(name)
    if not same_folder(fd, out):  # refuse_shard_folder read its shards' schemas by name: of this folder
        raise OutputError(
            f"--out {terminal_safe(str(out))} was replaced by another folder during this run; nothing was changed"
        )
    if other:
        raise ConfigError(
            f"--out {out} is a folder holding other files than shards ({', '.join(other[:3])}); with "
            f"--rows-per-file it must be a new folder or an earlier export's; choose another name"
        )
    return shards


def _is_held_shard(fd: int, name: str) -> bool:
    """Whether the entry ``name`` of the folder open at ``fd`` is a regular file ``part-NNNNN.parquet`` (not followed)."""
    try:
        return is_shard_name(name) and stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _recover_shards(out: Path) -> None:
    """After a killed export: an earlier export moved aside (``.<out>.fs….old/shards``) while ``out`` is missing is put
    back; one left beside a newer ``out`` (a kill after the renames), and a half-written ``.<out>.fs….tmp`` folder, are
    removed when provably abandoned and unmodified for ``STALE_AGE_S`` (another PID namespace's export may look gone),
    else named with how to remove them. Only real folders of this user that hold nothing but what ``write_shards`` puts
    there are touched (:func:`_leftovers`): a user's ``.<out>.backup.old``, or a link to a folder elsewhere, is not."""
    aside = [p for p in _leftovers(out, "old") if _writer_gone(p) is not None]  # a live export's: its own business
    if not os.path.lexists(out) and len(aside) == 1:
        held = os.open(aside[0] / "shards", DIR)  # moved back only while its name is the folder checked (attack 30 #8)
        try:
            ours = os.fstat(held).st_uid == os.geteuid() and _only_parts(held) is not None
            if ours:
                move_aside(held, aside[0] / "shards", out, f"the earlier export of --out {terminal_safe(str(out))}")
        finally:
            os.close(held)
        if ours:
            with contextlib.suppress(OSError):
                os.rmdir(aside[0])  # empty now; anything that appeared in it since is left
            logger.warning(
                "%s: the earlier export, moved aside by a killed export, was put back", terminal_safe(str(out))
            )
            aside = []
    what = {"old": "an earlier export of %s that a killed export moved aside", "tmp": "what a killed export of %s left"}
    for kind, left in [("old", p) for p in aside] + [("tmp", p) for p in _leftovers(out, "tmp")]:
        gone = _writer_gone(left)
        if gone is None:
            continue  # a running export's folder
        # a half-written folder's age is its newest shard's (a shard being written keeps it fresh); an aside folder's is
        # its own (made by the rename into it, never written after)
        touched = last_touched(left) if kind == "tmp" else os.lstat(left).st_mtime
        if gone and (kind == "tmp" or os.path.lexists(out)) and time.time() - touched >= STALE_AGE_S:
            with contextlib.suppress(OSError):
                _remove_leftover(left, kind)
            logger.warning(
                "removed %s: " + what[kind] + " (its process gone, hidden, never read)",
                terminal_safe(str(left)),
                terminal_safe(str(out)),
            )
        else:
            logger.warning(
                "%s holds " + what[kind] + " (hidden, never read); remove it with: rm -r %s",
                terminal_safe(str(left)),
                terminal_safe(str(out)),
                shlex.quote(str(left)),
            )


def _remove_leftover(left: Path, kind: str) -> None:
    """Remove ``left`` (an aside copy ``…/shards/part-*``, or a half-written folder of ``part-*``) through descriptors,
    checked again through them (only shards): its shards by name, each folder only while its name is the folder
    emptied (a folder exchanged with it is not touched: removed by name, it was the one deleted, attack 30 #8)."""
    fd = os.open(left, DIR)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return
        if kind == "tmp":
            if (parts := _only_parts(fd)) is not None:
                remove_held(fd, left, parts)
            return
        if os.listdir(fd) != ["shards"]:
            return
        sub = os.open("shards", DIR, dir_fd=fd)
        try:
            if (parts := _only_parts(sub)) is None:
                return
            remove_held(sub, left / "shards", parts)
        finally:
            os.close(sub)
        remove_held(fd, left, [])
    finally:
        os.close(fd)


def _only_parts(fd: int) -> list[str] | None:
    """The entries of the folder open at ``fd`` when all are regular ``part-NNNNN.parquet`` files, else None."""
    names = os.listdir(fd)
    return names if all(_is_held_shard(fd, n) for n in names) else None


def _leftovers(out: Path, kind: str) -> list[Path]:
    """The hidden folders ``write_shards`` of ``out`` made: named ``.<out>.fs<pid>-<host>-XXXXXXXX.<kind>`` (matched
    whole: the glob ``.<out>.*`` also matches ``.<out>.b.fs….old`` of ``<out>.b``), real folders of this user (not
    links), holding only shards: ``shards/part-NNNNN.parquet`` files for an aside copy, ``part-NNNNN.parquet`` files
    for a half-written one."""
    stem = temp_stem(out.name)
    name = re.compile(re.escape(f".{stem}") + _TAG + kind)
    return [
        p
        for p in sorted(out.parent.glob(f".{glob.escape(stem)}.fs*.{kind}"))
        if name.fullmatch(p.name) and _holds_only_shards(p / "shards" if kind == "old" else p, kind == "old")
    ]


def _holds_only_shards(folder: Path, aside: bool) -> bool:
    """Whether ``folder`` (and, for an aside copy, its parent) is a real folder of this user holding only regular
    ``part-NNNNN.parquet`` files."""
    try:
        for level in [folder.parent, folder] if aside else [folder]:
            st = os.lstat(level)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                return False
        if aside and os.listdir(folder.parent) != ["shards"]:
            return False
        with os.scandir(folder) as entries:
            return all(is_shard_name(e.name) and e.is_file(follow_symlinks=False) for e in entries)
    except OSError:
        return False


def _writer_gone(folder: Path) -> bool | None:
    """Of a hidden folder :func:`_leftovers` found: :func:`featstore.leftovers.writer_gone` of the export its name
    names."""
    match = re.search(_TAG + r"(old|tmp)\Z", folder.name)
    return writer_gone(int(match["pid"]), match["host"]) if match else False
