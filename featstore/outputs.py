"""One way to write every file featstore makes besides the store: safe to open, written whole or not at all.

Every output (CSV, Parquet, npz, PNG, JSON, a run's files) goes through :func:`write_atomic`:

- the name is checked before any work (:func:`check_output`): a FIFO, device or socket there is refused (writing
  to it could block forever or reach hardware), so is a symbolic link (never written through, never silently
  replaced), a folder, a missing or non-folder parent, and a path through another user's link on its folders
  (:func:`featstore.linkrule.refuse_foreign`; held again on the folder opened for the write);
- the content is written to a temporary file in a folder made for it beside the name, which only this user can
  write (:mod:`featstore.renames`), and renamed onto the name through descriptors, so a reader never sees half a file,
  a crash or a full disk leaves the old file (or nothing) in place, and nothing another user renames reaches it;
- an ``OSError`` (missing folder, read-only, disk full, ...) becomes one :class:`~featstore.errors.OutputError`
  line naming the path and the fix.

Text that others open is neutralised: :func:`csv_cell` keeps spreadsheets from evaluating a cell (OWASP's rule for
CSV injection), and :func:`terminal_safe` keeps file names from sending escape sequences to a terminal.

>>> csv_cell("=1+1"), csv_cell("cat"), terminal_safe("a\\x1b]0;title\\x07b")
("'=1+1", 'cat', 'a\\\\x1b]0;title\\\\x07b')
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from featstore import sticky
from featstore.carry import Own, give, not_carried
from featstore.errors import ConfigError, NotWritten, OutputError
from featstore.leftovers import sweep, temp_stem
from featstore.linkrule import full_path, refuse_foreign
from featstore.modes import unusable
from featstore.output_images import (  # noqa: F401
    CHART_METADATA,
    refuse_foreign_image,
    refuse_image,
    refuse_unstamped,
    regular_file,
)
from featstore.renames import PrivateFolder
from featstore.safetext import terminal_safe

logger = logging.getLogger(__name__)

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP: a cell starting with one of these may be read as a formula


def check_output(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, a name that cannot take a whole new file; returns it as a Path.

    Refused: a FIFO, device or socket (``/dev/full``, a named pipe), a symbolic link (even a dangling one), a
    folder, an existing HDF5 file (a store: ``leaks --out features.h5`` would have replaced it), a path through a link
    another user made on its folders (attack 31 #2: a colleague's ``team/exports -> ~you/work``; checked by name here,
    on the folder opened in :func:`write_atomic` and :func:`probe_output`), a parent that is missing or is not a
    folder. Example::

        out = check_output("predictions.csv", "--out")
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        why = name_problem(exc, path) or f"{exc.strerror or exc}; choose another path"
        raise OutputError(f"cannot write {what} {terminal_safe(str(path))}: {why}") from None
    shown = terminal_safe(str(path))  # a name with an escape sequence never reaches the terminal raw
    if st is not None:
        if (theirs := sticky.ahead(path)) is not None:  # a colleague's, in a sticky folder: not hers to remove (45 #6)
            fix = f"write to another path of yours, or ask {theirs.owner} to remove it"
            raise OutputError(f"cannot write {what} {shown}: " + theirs.line(fix))
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(
                f"{what} {shown} is a symbolic link; featstore never writes through a link. "
                f"Remove it or choose another name"
            )
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{what} {shown} is a folder; give a file name inside it, e.g. {shown}{os.sep}out")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"{what} {shown} is not a regular file (a pipe, device or socket); "
                f"featstore writes only regular files. Choose another path"
            )
        if is_hdf5_file(path):
            raise OutputError(
                f"{what} {shown} is an HDF5 file (a feature store?); featstore never replaces one with an output. "
                f"Choose another name, or remove it first if it is not needed"
            )
    refuse_foreign(path, what, OutputError, what if what.startswith("-") else None)
    parent, up = path.parent, terminal_safe(str(path.parent))
    if not parent.exists():
        raise OutputError(f"cannot write {what} {shown}: folder {up} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {shown}: {up} is not a folder; choose another path")
    return path


def check_own_output(
    path: str | os.PathLike, what: str, kind: str, suffixes: tuple[str, ...], ours: Callable[[Path], bool]
) -> Path:
    """:func:`check_output`, then refuse, before any work, a name that is not ``kind``'s (its suffix, in lower case,
    not one of ``suffixes``; ``""`` among them takes a name without one) or an existing file that ``ours(path)`` does not recognise as ``kind`` featstore wrote (its header,
    marker, keys): ``similar --html train.py`` replaced a script, ``leaks --out my_cnn.keras`` a saved model. Nothing
    there, or featstore's own file, passes. Example::

        check_own_output("leaks.csv", "--out", "a leaks CSV", (".csv",), lambda p: starts_with(p, b"query_split,"))
    """
    path = check_output(path, what)
    if path.suffix.lower() not in suffixes:  # "" among them: a name without a suffix is taken as it is
        named = [s for s in suffixes if s]
        raise OutputError(
            f"{what} {terminal_safe(str(path))}: featstore writes {kind} there; give a name ending in "
            f"{' or '.join(named)}, e.g. {terminal_safe(path.stem or 'out')}{named[0]}"
        )
    if os.path.lexists(path) and not ours(path):
        raise OutputError(
            f"{what} {terminal_safe(str(path))} exists and is not {kind} featstore wrote; featstore never replaces "
            f"another file with its output. Choose another name, or remove that file first if it is not needed"
        )
    return path


def is_chart(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG featstore drew (:data:`CHART_METADATA`'s stamp): the ``ours`` of a chart's
    :func:`check_own_output`. Example::

        check_own_output("leaks.png", "--png", "a chart (PNG)", (".png", ""), is_chart)
    """
    try:
        refuse_unstamped(path)
    except OutputError:
        return False
    return os.path.isfile(path)


def starts_with(path: str | os.PathLike, *heads: bytes, within: int = 0) -> bool:
    """Whether the regular file ``path`` starts with one of ``heads`` (``within``: or holds one in its first ``within``
    bytes); False for anything that cannot be read. Example::

        starts_with("leaks.csv", b"query_split,query_path,")
    """
    try:  # one opening: never waited on (a FIFO), never through a link (one swapped in after check_output's: a device)
        with regular_file(path) as fh:
            if fh is None:
                return False
            first = fh.read(max(within, *map(len, heads)))
    except OSError:
        return False
    return any(first.startswith(h) or (within and h in first) for h in heads)


def what_is_at(path: str | os.PathLike) -> str | None:
    """What an input path holds when it is not a regular file (links followed): ``"nothing"``, ``"a folder"``, ``"a
    FIFO (named pipe)"``, ``"a device"`` or ``"a socket"``; None for a regular file. A FIFO given as ``--weights`` was
    called missing ("does not exist"). Example::

        what_is_at("/dev/null")   # 'a device'
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "nothing"
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            return (
                "a symbolic link loop" if exc.errno == errno.ELOOP else f"a name too long ({name_problem(exc, path)})"
            )
        return None  # there, but not ours to look at (permissions): the reader's own error says so
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    return "a socket" if stat.S_ISSOCK(mode) else "a device"


def resolved(path: str | os.PathLike, what: str, error: type[Exception] = ConfigError) -> Path:
    """``Path(path).expanduser().resolve()``, a symbolic-link loop refused in one line (``error``) naming the path and
    the fix: Python 3.11's resolve raises "RuntimeError: Symlink loop", later ones OSError ELOOP. Example::

        model = resolved("my_cnn.keras", "--model")
    """
    try:
        path = Path(path).expanduser()
    except RuntimeError:  # "~name/..." of a user this machine does not know
        raise error(
            f"{what} {terminal_safe(str(path))} starts with ~ but names no user of this machine; give the path in full"
        ) from None
    try:
        os.lstat(path)
    except (
        OSError
    ) as exc:  # "File name too long" tracebacks (info, check, export, report), "does not exist" under a file
        if name_problem(exc, path):
            raise error(f"{what} {terminal_safe(str(path))}: {name_problem(exc, path)}") from None
    full_path(path, error, what)  # a relative name from a removed working folder: one line (attack 31 #7)
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ELOOP:
            raise
        raise error(
            f"{what} {terminal_safe(str(path))} is a symbolic link loop (a link that leads back to itself); "
            f"remove the link or give the real path"
        ) from None


def name_problem(exc: OSError, path: str | os.PathLike) -> str | None:
    """What ``exc``, met at ``path``, says no file can ever be there, and the fix (None for other errors): a part of the
    name over the file system's 255 bytes (ENAMETOOLONG), or a part that is a file, not a folder (ENOTDIR). Example::

        name_problem(NotADirectoryError(errno.ENOTDIR, "Not a directory"), "notes.txt/runs")
    """
    path = Path(path)
    if exc.errno == errno.ENAMETOOLONG:
        long = next((p for p in path.parts if len(os.fsencode(p)) > 255), None)
        if long is None:
            return f"the path is {len(os.fsencode(path))} bytes, longer than the system takes; use a shorter path"
        size = len(os.fsencode(long))
        return (
            f"its part {terminal_safe(long[:24])}... is {size} bytes, over the 255 a name may have; use a shorter name"
        )
    if exc.errno == errno.ENOTDIR:
        file = next((p for p in reversed(path.parents) if os.path.exists(p) and not os.path.isdir(p)), path.parent)
        return f"{terminal_safe(str(file))} is a file, not a folder; give a path inside a folder"
    return None


def hdf5_signed(fd: int) -> bool:
    """Whether the file open at ``fd`` is a regular file starting with HDF5's signature (at 0, or after a user block of
    512 ... 8192 bytes); False for anything else (an error reading it: its OSError)."""
    return stat.S_ISREG(os.fstat(fd).st_mode) and any(
        os.pread(fd, 8, at) == b"\x89HDF\r\n\x1a\n" for at in (0, 512, 1024, 2048, 4096, 8192)
    )


def is_hdf5_file(path: Path, follow: bool = False) -> bool:
    """Whether ``path`` is an HDF5 file (:func:`hdf5_signed`), read through one opening that is never waited on (a FIFO
    swapped in after the caller's lstat blocked `export --out`, attack 28), never of a device, and, unless ``follow``,
    not through a link (:func:`featstore.output_images.regular_file`)."""
    try:
        with regular_file(path, follow) as fh:
            return fh is not None and hdf5_signed(fh.fileno())
    except OSError:
        return False


def refuse_run_files(path: str | os.PathLike, what: str = "--out", folder: bool = False) -> None:
    """Refuse an output named inside a run folder (one holding ``run.json``: ``predict --out f.runs/<id>/run.json``
    would have replaced the run's record) and, for an output that is a folder (``folder=True``), one directly inside
    a runs folder (named ``*.runs`` or holding run folders), which ``featstore runs`` would list as a broken run.
    Example::

        refuse_run_files("predictions.csv", "--out")
    """
    path = Path(path)
    parent = path.parent
    if os.path.lexists(parent / "run.json"):
        raise OutputError(
            f"{what} {path} is inside the run folder {parent}; featstore never writes an output among a run's files. "
            f"Choose a path outside it"
        )
    if folder and (parent.suffix == ".runs" or _holds_runs(parent)):
        raise OutputError(
            f"{what} {path} would be a folder inside the runs folder {parent}, where `featstore runs` would take it "
            f"for a broken run; choose a path outside it"
        )


def _holds_runs(folder: Path, at_most: int = 10_000) -> bool:
    """Whether one of the first ``at_most`` entries of ``folder`` is a run folder (holds ``run.json``)."""
    try:
        with os.scandir(folder) as entries:
            for i, entry in enumerate(entries):
                if i >= at_most:
                    return False
                if entry.is_dir(follow_symlinks=False) and os.path.lexists(os.path.join(entry.path, "run.json")):
                    return True
    except OSError:
        return False
    return False


def cache_dir(store: str | os.PathLike) -> Path:
    """``features.h5`` -> ``features.h5.cache/``: what featstore caches beside a store (thumbnails, map layouts, leak
    pairs, exported ONNX models), each kind in a subfolder, made and written by :mod:`featstore.caches`."""
    return Path(f"{os.fspath(store)}.cache")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], what: str = "output") -> Path:
    """``write(tmp)`` into a temporary file in a private folder beside ``path``, then rename it onto ``path``; returns
    ``path``.

    Nothing is written at ``path`` unless ``write`` finished; the temporary file and its folder are removed on any
    failure. The folder is this write's only (:class:`featstore.renames.PrivateFolder`): in a folder others can write,
    nothing they rename there reaches the output. An OSError becomes one OutputError naming ``path`` and the fix.
    Example::

        write_atomic("runs.csv", lambda tmp: tmp.write_text("id,acc\\n"), "--out")
    """
    path = check_output(path, what)
    say_swept(sweep(path.parent), path.parent)  # what killed writes left there
    fd = -1
    try:
        with PrivateFolder(path, lambda removed: _swapped(path, what, removed)) as private:
            _held(private, path, what)
            # mode through the descriptor (a chmod by name followed a link renamed onto it: attack 23); mkstemp's 0600
            before = Own.of(path)  # the file replaced: its mode, group, ACL and user.* go to the new one (attack 28 #5)
            fd, tmp = private.new_file(_mode_for(before))  # would hide the file from the group
            write(tmp)
            check_output(path, what)  # nothing appeared at the name while writing (a link planted meanwhile)
            if before is not None:
                shown = terminal_safe(str(path))
                give(fd, before, f"{what} {shown}", shown, not_carried(f"{what} {shown}", OutputError))
            private.put(fd)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise _output_error(exc, path, what) from None
    finally:
        if fd >= 0:
            os.close(fd)
    return path


def _held(private: PrivateFolder, path: Path, what: str) -> None:
    """The link rule on the folder actually written in (its descriptor, opened by name): the one ``path``'s folders
    reach through no other user's link (:func:`featstore.linkrule.refuse_foreign`)."""
    if private.parent_fd >= 0:
        refuse_foreign(path.parent, what, OutputError, what if what.startswith("-") else None, private.parent_fd, path)


def _swapped(path: Path, what: str, removed: bool) -> OutputError:
    """The line for a temporary file that is not the one featstore made any more when its write ended."""
    tmp = f".{temp_stem(path.name)}.tmp"
    if removed:
        return NotWritten(  # was "no file can be made in <folder>", of a folder that exists and takes files
            f"cannot write {what} {terminal_safe(str(path))}: its temporary file {terminal_safe(tmp)} was removed while "
            f"it was written (another process cleaned the folder?); write again"
        )
    folder = terminal_safe(str(path.parent))
    return NotWritten(
        f"cannot write {what} {terminal_safe(str(path))}: its temporary file {terminal_safe(tmp)} was replaced by "
        f"another file while it was written, or its folder could not be made safely: someone else can write {folder}",
        "; write into a folder only you can write, then re-run the same command",
    )


def _mode_for(before: Own | None) -> int | None:
    """The permissions of the file replacing another (``before``): the old file's while it is written (a CSV kept
    private with chmod 600 stayed private only until the next run replaced it with 0644), else None: what a plain
    ``open`` in its folder gives (the umask's, or the folder's default ACL's: :func:`featstore.modes.fresh_mode`)."""
    return stat.S_IMODE(before.st_mode) & 0o777 if before is not None else None


def write_text(path: str | os.PathLike, text: str, what: str = "output", encoding: str = "utf-8") -> Path:
    """:func:`write_atomic` for a text (``errors="surrogateescape"``: file names that are not UTF-8 keep their bytes)."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding=encoding, errors="surrogateescape", newline="") as fh:
            fh.write(text)

    return write_atomic(path, _write, what)


def probe_output(path: str | os.PathLike, what: str = "output", folder: bool = False) -> Path:
    """:func:`check_output` and :func:`refuse_run_files` (``folder``: ``path`` names a folder to make), then make and
    remove an empty temporary file in a private folder beside ``path`` (as :func:`write_atomic` writes): a folder where
    no file can be made (read-only, not yours, ``/proc``) is refused before any work too. Example::

        out = probe_output("predictions.csv", "--out")
    """
    path = check_output(path, what)
    refuse_run_files(path, what, folder)
    say_swept(sweep(path.parent), path.parent)
    try:
        with PrivateFolder(path, lambda removed: _swapped(path, what, removed)) as private:
            _held(private, path, what)
            os.close(private.new_file(0o600)[0])
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise _output_error(exc, path, what) from None
    return path


def say_swept(removed: list[tuple[str, int]], folder: Path) -> None:
    """One warning line for the temporary files of killed writes that :func:`featstore.leftovers.sweep` removed."""
    if removed:
        names = ", ".join(terminal_safe(n) for n, _ in removed[:3]) + (", ..." if len(removed) > 3 else "")
        logger.warning(
            "removed %d temporary file(s) that killed featstore writes left in %s (%s; %.1f MB)",
            len(removed),
            terminal_safe(str(folder)),
            names,
            sum(size for _, size in removed) / 1e6,
        )


def output_fix(exc: OSError, path: Path) -> str:
    """What to do about an OSError met while writing ``path`` (the second half of an OutputError's line)."""
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return "the disk is full; free some space or write to another folder"
    if code in (errno.EROFS,):
        return f"the file system of {path.parent} is read-only; write to another folder"
    if code in (errno.EACCES, errno.EPERM):  # a colleague's file in a 1777 folder: the sticky bit (attack 34 #4b)
        theirs = sticky.refused(exc, path)
        if theirs is not None:
            return theirs.line(f"write to another path of yours, or ask {theirs.owner} to remove it")
        return (  # append-only, or a default ACL that shuts featstore's own folder there to its owner: attack 40 #4
            unusable(path.parent, path.parent)
            or sticky.unlisted(path.parent)
            or f"folder {path.parent} is not writable by you; write to another folder"
        )
    if code == errno.ENOENT and path.parent.is_dir():
        return f"no file can be made in {path.parent} ({exc.strerror}); write to another folder"
    if code == errno.ENOENT:
        return f"folder {path.parent} does not exist (any more); create it or choose another path"
    if code == errno.ENOTDIR:
        return f"{path.parent} is not a folder; choose another path"
    if code == errno.EISDIR:
        return f"{path} is a folder; give a file name"
    return f"{exc.strerror or exc}; choose another path"


def _output_error(exc: OSError, path: Path, what: str) -> OutputError:
    """One line for an OSError met while writing ``path``: what happened and what to do."""
    return NotWritten(f"cannot write {what} {path}: {output_fix(exc, path)}")


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell that a spreadsheet shows as text: quoted when needed, a formula start neutralised.

    A cell starting with ``= + - @``, a tab or a carriage return gets a leading ``'`` (OWASP, "CSV Injection"), so
    ``=cmd|' -C calc'!A0`` is displayed, never evaluated. Numbers that featstore writes itself (labels, features)
    do not go through here.

    >>> csv_cell('say "hi", then'), csv_cell("-2"), csv_cell("@SUM(1+1)")
    ('"say ""hi"", then"', "'-2", "'@SUM(1+1)")
    """
    if text.startswith(_FORMULA_START):
        text = "'" + text
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text
