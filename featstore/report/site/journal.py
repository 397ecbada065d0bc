"""The report folder's writer lock and journal: a report killed half-way, or two at once, leave no page for ever.

A report's manifest (``.featstore-report.json``) is written at its start listing the *earlier* report's files, and
at its end listing its own; the next report removes what the manifest lists that it did not write again. A report
killed in between had listed none of its own files, so the pages it wrote (a deleted run's among them) were in no
manifest and stayed in the site for ever; two reports at once into one folder left the same (attack 54 #4). Now:

- every file is named in the journal (``.featstore-report.journal``, one name a line, appended *before* the file is
  written) until the complete manifest is written, then the journal is removed; a later report adds what a journal
  left behind names to the files it cleans, so it removes every page it did not write itself. Only names the report
  wrote are ever listed, and cleaned only when its layout can hold them (``build._site_file``): a user's file there
  stays;
- the folder held open is locked (``flock`` on its descriptor, released when it is closed): a second report into
  it while one runs is refused in one line, before it writes anything.
"""

from __future__ import annotations

import contextlib
import errno
import os

from featstore.errors import NotWritten, OutputError
from featstore.outputs import output_fix, terminal_safe
from featstore.report.site.sitefolder import FD_SAFE, SiteFolder

JOURNAL = ".featstore-report.journal"
JOURNAL_MAX_BYTES = 64 << 20
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def lock(site: SiteFolder) -> None:
    """Refuse, in one line, a folder another report is writing now; else hold it until the site is closed."""
    if not FD_SAFE or site.fd < 0:
        return
    import fcntl

    try:
        fcntl.flock(site.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(
            f"another featstore report is writing {terminal_safe(str(site.out))} now; wait for it to finish, or give "
            f"another --out; nothing was written"
        ) from None
    except OSError:  # a file system without locks: as before
        return


def left_behind(site: SiteFolder) -> set[str]:
    """The files a report killed before its end named in its journal (nothing when it finished)."""
    raw = site.read_small(JOURNAL, JOURNAL_MAX_BYTES)
    if raw is None:
        return set()
    return {n for n in raw.decode("utf-8", "surrogateescape").splitlines() if n}


class Journal:
    """This report's journal, started afresh once the unfinished manifest names what a killed one left; each name is
    appended before its file is written (``site.before_write``); :meth:`finish` removes it."""

    def __init__(self, site: SiteFolder):
        self.site = site
        try:
            os.unlink(JOURNAL, dir_fd=site.fd) if FD_SAFE else os.unlink(site.out / JOURNAL)
        except FileNotFoundError:
            pass
        except OSError as exc:  # a folder at its name (IsADirectoryError was a traceback: attack 56 #3)
            path = site.out / JOURNAL
            raise OutputError(
                f"cannot start the report's journal {terminal_safe(str(path))}: {exc.strerror}; it is the report's own "
                f"file: remove what is at that name, or give another --out"
            ) from None
        try:
            self.fd = (
                os.open(JOURNAL, _APPEND, 0o600, dir_fd=site.fd)
                if FD_SAFE
                else os.open(site.out / JOURNAL, _APPEND, 0o600)
            )
        except OSError as exc:
            raise OutputError(f"cannot write {terminal_safe(str(site.out / JOURNAL))}: {exc.strerror}") from None
        site.before_write = self.add

    def add(self, rel: str) -> None:
        """Append ``rel``, whole or not at all: a full disk (any OSError, a short write) is the report's one line,
        the journal cut back to its last whole name (a bare ``os.write`` was a traceback, attack 55 #2)."""
        if rel == JOURNAL:
            return
        data = f"{rel}\n".encode("utf-8", "surrogateescape")
        size = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):
                wrote = os.write(self.fd, data[done:])
                if wrote <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += wrote
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, size)  # never half a name: read back, it could name another file
            path = self.site.out / JOURNAL
            raise NotWritten(
                f"cannot write report journal {terminal_safe(str(path))} (naming {terminal_safe(rel)} before it is "
                f"written): {output_fix(exc, path)}"
            ) from None

    def finish(self) -> None:
        """Close and remove the journal: the complete manifest names every file now."""
        self.site.before_write = None
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(JOURNAL, dir_fd=self.site.fd) if FD_SAFE else os.unlink(self.site.out / JOURNAL)
