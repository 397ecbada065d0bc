"""Attack 31 (branch attack31, reproducers with two users there): a colleague's link on the *folders* of an output's path
(#2: ``team/exports -> ~you/work`` made ``export --out team/exports/train.csv`` replace the user's private export and
``report --out team/exports/thesis.report`` rewrite the user's private report) and at the runs folder (#4:
``team/s.runs -> ~you/thesis.runs`` made ``fit`` write into, and ``report`` publish, the user's private runs). Both are
now held to the link rule (:func:`featstore.linkrule.refuse_foreign`). The colleague's link is simulated as the store
tests do (a link given to another uid with ``os.lchown``): skipped where that is not allowed (not root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featstore.errors import OutputError, StoreError
from featstore.outputs import check_output, write_text
from featstore.report.site.sitefolder import SiteFolder
from featstore.runs.folder import runs_root, scan_runs_of
from featstore.store.shards import write_shards

OTHER = 54321  # a uid that is neither this process's nor the folder's
FOREIGN = r"leads through .*, a symbolic link made by uid 54321, not by you"


def _give(link: Path, uid: int = OTHER) -> Path:
    """``link`` made the colleague's (``uid``); the test skipped where a link cannot be given away."""
    os.lchown(link, uid, -1)
    if os.lstat(link).st_uid != uid:
        pytest.skip("cannot give a link to another user here (not root)")
    return link


def _scene(tmp_path: Path) -> tuple[Path, Path]:
    """The user's private folder home/work with their own export train.csv in it, and the team folder; the colleague's
    link team/exports -> home/work is made by the test (at once, or swapped in later)."""
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "train.csv").write_text("private\n")
    (tmp_path / "team").mkdir()
    return work, tmp_path / "team"


def _not_written(work: Path) -> None:
    assert (work / "train.csv").read_text() == "private\n"
    assert sorted(os.listdir(work)) == ["train.csv"]  # no report, no shards, no temporary left there


def test_f2_an_output_through_a_colleagues_link_on_its_folders_is_refused(tmp_path):
    """#2: every output's folders are held to the link rule, by name before any work (``check_output``: CSV, Parquet,
    npz, PNG, JSON, export's probe) and the report's ``--out`` on the folder it opens (``SiteFolder``): one line naming
    the link, its owner, the real path to give on purpose and the ``rm``; nothing written in the user's folder.
    Sabotage: the ``refuse_foreign`` line of ``check_output`` removed fails the first ``raises`` (the name passes);
    the one in ``SiteFolder.__init__`` removed fails the second (the report folder made in home/work)."""
    work, team = _scene(tmp_path)
    link = _give(_link(team / "exports", work))
    out = team / "exports" / "train.csv"
    with pytest.raises(OutputError, match=FOREIGN) as caught:
        check_output(out, "--out")
    line = str(caught.value)
    assert "\n" not in line and f"--out {work / 'train.csv'}" in line and f"rm {link}" in line
    with pytest.raises(OutputError, match=FOREIGN):
        SiteFolder(team / "exports" / "thesis.report", lambda exc, where: OutputError(str(exc)))
    _not_written(work)


def test_f2_a_link_swapped_onto_an_outputs_folder_between_its_checks_is_refused_on_the_folder_opened(
    tmp_path, monkeypatch
):
    """#2, the race: team/exports is a real folder whenever an output's name is checked, and the colleague's link only
    while the write opens its folder (a CSV: ``PrivateFolder``) or makes the shards' folder in it (``export
    --rows-per-file``), and again as the shards are published: the check on the folder actually opened (its
    descriptor against the walk) refuses both before any write, nothing lands or is left in home/work. Sabotage:
    ``_held`` in ``write_atomic`` removed fails the first (train.csv replaced through the folder's descriptor);
    ``_held`` in ``write_shards`` removed fails the second (the team's shards published in home/work)."""
    work, team = _scene(tmp_path)
    exports, aside = team / "exports", team / "exports.old"
    exports.mkdir()
    link = _give(_link(team / ".m", work))
    moved = r"the folder opened for it is not the one its path leads to now"

    def swap_in() -> None:  # the colleague's `mv exports exports.old && mv .m exports`
        if not exports.is_symlink():
            os.replace(exports, aside)
            os.replace(link, exports)

    def swap_back() -> None:
        if exports.is_symlink():
            os.replace(exports, link)
            os.replace(aside, exports)

    real_open, real_mkdir, real_fchmod = os.open, os.mkdir, os.fchmod

    def hooked_open(path, flags, *a, **k):  # PrivateFolder opens the output's folder by name
        if os.fspath(path) != str(exports) or not flags & getattr(os, "O_DIRECTORY", 0):
            return real_open(path, flags, *a, **k)
        swap_in()
        try:
            return real_open(path, flags, *a, **k)
        finally:
            swap_back()

    monkeypatch.setattr(os, "open", hooked_open)
    with pytest.raises(OutputError, match=moved):
        write_text(exports / "train.csv", "team\n", "--out")
    _not_written(work)
    monkeypatch.setattr(os, "open", real_open)

    def hooked_mkdir(path, *a, **k):  # tempfile.mkdtemp(dir=team/exports) makes the shards' folder: the link in
        if os.path.dirname(os.fspath(path)) == str(exports):
            swap_in()
        return real_mkdir(path, *a, **k)

    def hooked_open_made(path, flags, *a, **k):  # OwnFolder opens it by name: the link away once it is open
        try:
            return real_open(path, flags, *a, **k)
        finally:
            if os.path.dirname(os.fspath(path)) == str(exports):
                swap_back()

    def hooked_fchmod(fd, mode):  # OwnFolder.publish's first step: the link back for the rename by name
        swap_in()
        return real_fchmod(fd, mode)

    monkeypatch.setattr(os, "mkdir", hooked_mkdir)
    monkeypatch.setattr(os, "open", hooked_open_made)
    monkeypatch.setattr(os, "fchmod", hooked_fchmod)
    with pytest.raises(OutputError, match=moved):
        write_shards(exports / "shards", lambda folder: (folder / "part-00000.parquet").write_bytes(b"team"))
    monkeypatch.undo()
    _not_written(work)


def test_f4_a_runs_folder_through_a_colleagues_link_is_refused(tmp_path):
    """#4: the runs folder (the store's default ``<store>.runs`` and ``--runs``) is held to the link rule where every
    command resolves it (``runs_root``: fit, runs, evaluate, compare, report, predict, ensemble, sweep...): the
    colleague's team/s.runs -> home/thesis.runs is refused in one line with the ``--runs`` to give on purpose, so is a
    ``--runs`` below her link on a folder. Sabotage: the ``refuse_foreign`` line of ``runs_root`` removed fails it (the
    user's private runs listed for the team store)."""
    private = tmp_path / "home" / "thesis.runs"
    private.mkdir(parents=True)
    (tmp_path / "team").mkdir()
    link = _give(_link(tmp_path / "team" / "s.runs", private))
    store = tmp_path / "team" / "s.h5"
    with pytest.raises(StoreError, match=FOREIGN) as caught:
        scan_runs_of(store)
    line = str(caught.value)
    assert "\n" not in line and f"--runs {private}" in line and f"rm {link}" in line
    with pytest.raises(StoreError, match=FOREIGN):
        runs_root(store, None)
    _give(_link(tmp_path / "team" / "shared", tmp_path / "home"))
    with pytest.raises(StoreError, match=FOREIGN):
        runs_root(store, tmp_path / "team" / "shared" / "thesis.runs")
    assert os.listdir(private) == []


def test_the_users_own_links_on_an_outputs_path_and_at_the_runs_folder_are_followed(tmp_path):
    """No false refusal: the same links made by the user (and given to root, the system's) are followed: the output
    written through the folder link, the report folder made there, the runs folder found."""
    work, team = _scene(tmp_path)
    _link(team / "exports", work)  # the user's own
    write_text(team / "exports" / "train.csv", "mine\n", "--out")
    assert (work / "train.csv").read_text() == "mine\n"
    with SiteFolder(team / "exports" / "thesis.report", lambda exc, where: OutputError(str(exc))):
        pass
    assert (work / "thesis.report").is_dir()
    runs = tmp_path / "home" / "thesis.runs"
    runs.mkdir()
    own = _link(team / "s.runs", runs)
    assert runs_root(team / "s.h5", None) == own
    assert scan_runs_of(team / "s.h5").records == []
    if os.geteuid() == 0:  # root's link: trusted as the system's (/tmp -> /private/tmp)
        os.lchown(own, 0, -1)
        assert runs_root(team / "s.h5", None) == own


def _link(at: Path, to: Path) -> Path:
    at.symlink_to(to)
    return at
