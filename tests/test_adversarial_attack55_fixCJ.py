"""Attack 55 #1, #2, #6: the report site's journal (thumbnails named in it, a full disk while it is appended) and the
line when the first file of a report cannot be written."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

import featstore
from featstore.errors import OutputError
from featstore.report.site import build, sitefolder
from featstore.report.site.journal import JOURNAL

from .report_stores import make_report_store

MANIFEST = ".featstore-report.json"


@pytest.fixture(scope="module")
def _store_src(tmp_path_factory):
    return make_report_store(tmp_path_factory.mktemp("attack55"))


@pytest.fixture
def store(_store_src, tmp_path):
    """A copy of the report store (its images, runs and caches) that a test may change."""
    return shutil.copytree(_store_src.parent, tmp_path / "s", symlinks=True) / _store_src.name


def _listed(out):
    return set(json.loads((out / MANIFEST).read_text())["files"])


# 1: thumbnails a killed report wrote ---------------------------------------------------------------------------------
def test_killed_report_thumbnails_removed_by_next(store, monkeypatch):
    """Thumbnails were linked into thumbs/ without being named in the journal: a report killed after them left every
    one (a deleted run's gallery images) in the site for ever. Now the next report removes those it does not show,
    and a user's own file there stays."""
    out = store.parent / "site"
    real = build.page

    def killed(template, **kw):
        raise KeyboardInterrupt  # killed at its first page: after every thumbnail was exported

    monkeypatch.setattr(build, "page", killed)
    with pytest.raises(KeyboardInterrupt):
        featstore.build_report(store, out=out, map_rows=2, leaks=False)
    monkeypatch.setattr(build, "page", real)
    left = {f"thumbs/{p.name}" for p in (out / "thumbs").iterdir()}
    assert left, "the killed report exported no thumbnail: nothing tested"
    assert left <= set((out / JOURNAL).read_text().splitlines())  # named before they were written
    (out / "thumbs" / "mine.png").write_bytes(b"the user's")  # no report wrote it
    shutil.rmtree(store.parent / "features.runs")  # every run deleted: only the map's thumbnails are shown now
    featstore.build_report(store, out=out, map_rows=2, leaks=False)
    now = {f"thumbs/{p.name}" for p in (out / "thumbs").iterdir()}
    shown = {f for f in _listed(out) if f.startswith("thumbs/")}
    assert now == shown | {"thumbs/mine.png"} and len(shown) < len(left), (now, shown)
    assert (out / "thumbs" / "mine.png").read_bytes() == b"the user's"
    assert not (out / JOURNAL).exists()


# 2: a full disk while the journal is appended -----------------------------------------------------------------------
def _journal_fills_up(monkeypatch, whole: int):
    """os.write of the journal: ``whole`` names go in, then half of one (a short write), then ENOSPC."""
    real, count = os.write, [0]

    def write(fd, data):
        try:
            journal = os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL)
        except OSError:
            journal = False
        if not journal:
            return real(fd, data)
        count[0] += 1
        if count[0] <= whole:
            return real(fd, data)
        if count[0] == whole + 1:
            return real(fd, data[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the journal's descriptor is told by /proc/self/fd")
@pytest.mark.parametrize("whole", [0, 3])
def test_full_disk_in_journal_one_line_nothing_lost(store, monkeypatch, whole):
    """A full disk while a name was appended to the journal was a bare OSError traceback. Now it is the report's
    one line; the earlier report's files are all there, the journal holds whole names only, and the next report
    finishes and cleans."""
    out = store.parent / "site"
    featstore.build_report(store, out=out, map_rows=2, leaks=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _journal_fills_up(monkeypatch, whole)
    with pytest.raises(OutputError) as err:
        featstore.build_report(store, out=out, map_rows=2, leaks=False)
    line = str(err.value)
    assert "\n" not in line and f"cannot write report journal {out / JOURNAL}" in line, line
    assert "the disk is full" in line and "The report stopped there" in line, line
    monkeypatch.undo()
    for path, data in before.items():  # nothing of the earlier report lost (its manifest: marked unfinished)
        assert path.exists(), path
        if path.name != MANIFEST:
            assert path.read_bytes() == data, path
    names = (out / JOURNAL).read_bytes()
    assert names == b"" or names.endswith(b"\n"), names  # never half a name
    assert len(names.splitlines()) == whole
    featstore.build_report(store, out=out, map_rows=2, leaks=False)
    assert not (out / JOURNAL).exists()
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == _listed(out) | {MANIFEST}


# 6: the first file of the report cannot be written --------------------------------------------------------------------
def _manifest_fails(monkeypatch):
    real = sitefolder.write_atomic

    def write_atomic(path, write, what="output"):
        if os.path.basename(path) != MANIFEST:
            return real(path, write, what)

        def full(tmp):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, full, what)

    monkeypatch.setattr(sitefolder, "write_atomic", write_atomic)


def test_manifest_not_written_new_folder_said_truly(store, monkeypatch):
    """The manifest (the first file) of a new --out could not be written, and the line said the folder "holds the files
    written before it (.featstore-report.json marks the report unfinished)": it was empty, with no manifest."""
    out = store.parent / "site"
    _manifest_fails(monkeypatch)
    with pytest.raises(OutputError) as err:
        featstore.build_report(store, out=out, map_rows=2, leaks=False)
    line = str(err.value)
    assert "the disk is full" in line and "holds the files written before it" not in line, line
    assert "the folder it had made was removed" in line, line
    assert not out.exists()


def test_manifest_not_written_earlier_report_said_as_it_was(store, monkeypatch):
    out = store.parent / "site"
    featstore.build_report(store, out=out, map_rows=2, leaks=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _manifest_fails(monkeypatch)
    with pytest.raises(OutputError) as err:
        featstore.build_report(store, out=out, map_rows=2, leaks=False)
    line = str(err.value)
    assert "holds the files written before it" not in line and f"{out} is as it was before" in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
