"""Attack 28 #2: ``featstore report`` checked ``--out`` for a link once, then wrote (and cleaned) every page by the
folder's name for the whole report. A colleague who, in a team folder, renamed the report folder away once the report
had started and put her link ``s.report -> ~victim/thesis.report`` there made the victim's report of the team store
overwrite and clean the victim's private report (``attack28/report_folder_swap.py``, 8 files rewritten, rc 0).

Now ``--out`` and each subfolder are opened once (``O_NOFOLLOW | O_DIRECTORY``, level by level) and every write and
removal goes through those descriptors (``featstore.report.site.sitefolder``). Each test places the swap
deterministically, by wrapping a function the build calls mid-report; the victim's private folder is a folder of the
same user here (what a link lets a colleague reach), compared byte for byte before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from featstore.errors import OutputError
from featstore.report.site import build
from featstore.report.site.build import MANIFEST, build_report
from featstore.store.writer import write_arrays


def _store(path: Path, classes: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", 24), ("test", 12)):
        write_arrays(path, "syn", split, rng.normal(size=(n, 8)).astype(np.float32), np.arange(n) % 2, classes)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def team(tmp_path) -> tuple[Path, Path, Path, dict[str, bytes]]:
    """The victim's private report (``home/thesis.report``, with pages the team report also names, and two it names
    no more), the team store and its earlier report (``team/s.report``); the private report's bytes."""
    home, team = tmp_path / "home", tmp_path / "team"
    home.mkdir()
    team.mkdir()
    build_report(_store(home / "thesis.h5", ["alpha", "beta"], 1), map_method="pca", leaks=False)
    private = home / "thesis.report"
    for rel in ("maps/gone.html", "runs/old.html"):  # pages an earlier team report wrote, this one does not
        (private / rel).parent.mkdir(exist_ok=True)
        (private / rel).write_text(f"<p>the victim's own {rel}</p>")
    store = _store(team / "s.h5", ["cat", "dog"], 2)
    build_report(store, map_method="pca", leaks=False)
    out = team / "s.report"
    (out / "runs").mkdir()
    for rel in ("maps/gone.html", "runs/old.html"):
        (out / rel).write_text("<p>a page of the earlier team report</p>")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({"files": [*manifest["files"], "maps/gone.html", "runs/old.html"]}))
    return store, out, private, _snapshot(private)


def _swap_during(monkeypatch, name: str, swap) -> None:
    """Run ``swap()`` the first time the build calls its function ``name`` (mid-report), then the function."""
    real, done = getattr(build, name), []

    def wrapped(*args, **kwargs):
        if not done:
            done.append(swap())
        return real(*args, **kwargs)

    monkeypatch.setattr(build, name, wrapped)


def test_a_link_swapped_in_at_out_mid_report_is_never_written_through_nor_cleaned_through(team, monkeypatch):
    """The colleague's ``mv s.report s.report.old && ln -s ~victim/thesis.report s.report`` once the report started
    (here: when its thumbnails are made, after the folder was checked and its manifest written). Before: the private
    report's index, leaks page, map, assets and manifest were the team's, and its ``maps/gone.html`` and
    ``runs/old.html`` deleted. Now the report goes on into the folder it opened (``s.report.old``), cleans there, and
    says the name was replaced. Sabotage: ``SiteFolder.at`` returning ``self.out.joinpath(*parts)`` (writes by name)
    fails it; so does ``_clean`` unlinking ``site.out / rel`` (by name) instead of ``site.remove``."""
    store, out, private, before = team

    def swap():
        out.rename(out.with_name("s.report.old"))
        out.symlink_to(private)

    _swap_during(monkeypatch, "_thumbnails", swap)
    result = build_report(store, map_method="pca", leaks=False)
    assert _snapshot(private) == before, "the victim's private report was written or cleaned through the link"
    moved = out.with_name("s.report.old")
    assert ">cat<" in (moved / "index.html").read_text() and json.loads((moved / MANIFEST).read_text())["complete"]
    assert not (moved / "maps" / "gone.html").exists() and not (moved / "runs" / "old.html").exists()
    assert any("was renamed away or replaced while the report was written" in n for n in result.notes), result.notes


def test_a_link_swapped_in_at_a_subfolder_after_it_was_opened_is_never_written_through(team, monkeypatch):
    """``maps/`` swapped for a link to the private report's ``maps/`` once the report opened it (its map's sample is
    written; then its page): the page goes into the folder opened, now ``maps.old``, and the clean-up of
    ``maps/gone.html`` removes the earlier team page there, not the victim's. Sabotage: ``SiteFolder.at`` by name
    fails it (the page lands in the private report), and so does ``_clean`` unlinking ``site.out / rel``."""
    store, out, private, before = team

    def swap():
        (out / "maps").rename(out / "maps.old")
        (out / "maps").symlink_to(private / "maps")

    real = build.page

    def page(template, **context):
        if template == "map.html.j2":
            swap()
        return real(template, **context)

    monkeypatch.setattr(build, "page", page)
    build_report(store, map_method="pca", leaks=False)
    assert _snapshot(private) == before, "the victim's private report was written through a link at maps/"
    page_now = (out / "maps.old" / "syn.html").read_text()
    assert '"cat"' in page_now and '"alpha"' not in page_now


def test_clean_never_removes_through_a_link_put_at_a_subfolder(team, monkeypatch):
    """``runs/`` (which this report writes nothing into) swapped for a link to the private report's ``runs/`` before
    the clean-up: the earlier team report's ``runs/old.html`` is not removed through it (it was, by name: the link was
    resolved afresh). Sabotage: O_NOFOLLOW dropped from ``_LEVEL`` in sitefolder.py fails it, and so does ``_clean``
    unlinking ``site.out / rel``."""
    store, out, private, before = team

    def swap():
        (out / "runs").rename(out / "runs.old")
        (out / "runs").symlink_to(private / "runs")

    _swap_during(monkeypatch, "_clean", swap)
    build_report(store, map_method="pca", leaks=False)
    assert _snapshot(private) == before, "the clean-up removed the victim's file through a link at runs/"
    assert (out / "runs.old" / "old.html").exists()  # not the report's to reach any more: left, not guessed at


def test_a_link_at_out_or_a_subfolder_before_it_is_opened_is_refused_in_one_line(team):
    """A link already at ``thumbs/`` when the report opens it: one line naming it, nothing written into the link's
    target (nor anywhere through it); the same for a link at ``--out`` itself. Sabotage: O_NOFOLLOW dropped from
    ``_LEVEL`` fails it."""
    store, out, private, before = team
    (out / "thumbs").rmdir()
    (out / "thumbs").symlink_to(private / "thumbs")
    with pytest.raises(OutputError, match=r"thumbs is a link or a file, not a folder; featstore report writes only"):
        build_report(store, map_method="pca", leaks=False)
    assert _snapshot(private) == before
    os.unlink(out / "thumbs")
    os.rename(out, out.with_name("gone"))
    out.symlink_to(private)
    with pytest.raises(OutputError, match=r"s\.report is a symbolic link; featstore never writes through a link"):
        build_report(store, map_method="pca", leaks=False)
    assert _snapshot(private) == before
