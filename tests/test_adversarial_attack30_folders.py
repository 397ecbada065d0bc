"""Attack 30 #8 and #9: a folder featstore replaces was checked by name, then moved aside and deleted by name, so a
colleague who exchanged it with another of the user's folders (a rename in a group-writable team folder needs no right
on the folders themselves) made featstore delete that folder: a re-export of shards deleted the user's private
``notes/``, a ``runs evaluate`` another run. Each swap is placed here deterministically between featstore's check and
its move (the reproducers on branch attack30 race it for real). Stores are synthetic (no TensorFlow).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featstore import export, fit
from featstore.errors import OutputError
from featstore.store import held as held_module
from featstore.store import shards
from tests.test_adversarial_attack3 import synthetic_store


def _exchange(a: Path, b: Path) -> None:
    """What a colleague's renameat2(a, b, RENAME_EXCHANGE) does (three renames here: any file system)."""
    x = a.with_name(".x")
    os.rename(a, x)
    os.rename(b, a)
    os.rename(x, b)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def team(tmp_path):
    """``(store, earlier export sh/, private notes/)`` in one folder."""
    pytest.importorskip("pyarrow")
    store = synthetic_store(tmp_path / "s.h5")
    export(store, "train", tmp_path / "sh", rows_per_file=10)
    notes = tmp_path / "notes"
    (notes / "ch1").mkdir(parents=True)
    (notes / "thesis.tex").write_text("private draft\n")
    (notes / "ch1" / "results.txt").write_text("r\n")
    return store, tmp_path / "sh", notes


def _notes_intact(tmp_path: Path) -> None:
    """The private notes are at one of the two visible names, whole, and nothing is left hidden."""
    found = [p for p in (tmp_path / "sh", tmp_path / "notes") if (p / "thesis.tex").is_file()]
    assert len(found) == 1 and (found[0] / "ch1" / "results.txt").read_text() == "r\n", os.listdir(tmp_path)
    assert _hidden(tmp_path) == [], _hidden(tmp_path)


def test_shards_exchanged_after_the_check_are_not_moved_aside(team, monkeypatch):
    """Exchanged between the check of --out and its move aside: the export moved and deleted notes/. Sabotage:
    ``move_aside(fd, out, ...)`` in ``write_shards`` back to ``os.replace(out, old / "shards")`` fails it (notes/ is
    left hidden in the aside folder, its name lost)."""
    store, sh, notes = team
    before = sorted(os.listdir(sh))
    real = shards.own_held

    def swapped(fd, path, what):  # read what carry needs, then the colleague's exchange
        found = real(fd, path, what)
        _exchange(sh, notes)
        return found

    monkeypatch.setattr(shards, "own_held", swapped)
    with pytest.raises(OutputError, match="was replaced by another folder during this run; nothing was changed"):
        export(store, "train", sh, rows_per_file=7)
    _notes_intact(sh.parent)
    assert sorted(os.listdir(notes)) == before  # the earlier export, under the other name, untouched


def test_shards_exchanged_during_the_move_are_put_back(team, monkeypatch):
    """Exchanged between ``same_folder`` and the rename itself: what was moved is checked again and put back, never
    removed. Sabotage: ``if same_folder(fd, aside):`` in ``held.move_aside`` made ``if True:`` fails it."""
    store, sh, notes = team
    real = os.replace

    def racing(a, b, *args, **kw):
        if str(b).endswith(".old/shards") and str(a) == str(sh):
            _exchange(sh, notes)
        return real(a, b, *args, **kw)

    monkeypatch.setattr(held_module.os, "replace", racing)
    with pytest.raises(OutputError, match="was replaced by another folder during this run"):
        export(store, "train", sh, rows_per_file=7)
    monkeypatch.setattr(held_module.os, "replace", real)
    _notes_intact(sh.parent)
    assert all(n.startswith("part-") for n in os.listdir(notes))  # the earlier export, intact at the other name


def test_a_killed_exports_leftover_exchanged_before_its_removal_is_not_emptied(team, monkeypatch):
    """A half-written folder of a killed export, provably abandoned, exchanged with notes/ (holding a Parquet file of
    a shard's name besides the thesis) just before its removal: it was rmtree'd by name. Sabotage: ``_only_parts(fd)``
    in ``_remove_leftover`` replaced by ``[n for n in os.listdir(fd) if _PART.fullmatch(n)]`` fails it (the user's
    part-00000.parquet is deleted)."""
    import shutil
    import time

    from featstore.leftovers import STALE_AGE_S, temp_prefix
    from tests.test_adversarial_attack17_store import _gone_pid

    store, sh, notes = team
    shutil.copy(sh / "part-00000.parquet", notes / "part-00000.parquet")
    left = sh.parent / (temp_prefix(sh.name).replace(f"fs{os.getpid()}-", f"fs{_gone_pid()}-") + "abc.tmp")
    left.mkdir()
    shutil.copy(sh / "part-00001.parquet", left / "part-00000.parquet")
    old = time.time() - STALE_AGE_S - 60
    for p in (left / "part-00000.parquet", left):
        os.utime(p, (old, old))
    real = shards._remove_leftover

    def swapped(path, kind):
        _exchange(path, notes)
        return real(path, kind)

    monkeypatch.setattr(shards, "_remove_leftover", swapped)
    export(store, "train", sh, rows_per_file=7)
    assert sorted(os.listdir(left)) == ["ch1", "part-00000.parquet", "thesis.tex"]  # notes/, at the leftover's name
    assert os.listdir(notes) == ["part-00000.parquet"]  # the leftover, where notes/ was: not removed either


@pytest.fixture
def two_runs(tmp_path):
    """``(store, runs folder, run A's id, run B's id)``: B's record is what must survive A's evaluation."""
    store = synthetic_store(tmp_path / "f.h5")
    runs = tmp_path / "runs"
    a = fit(store, "logreg", test=None, runs=runs)["id"]
    b = fit(store, "knn", test=None, runs=runs)["id"]
    return store, runs, a, b


def test_an_evaluated_run_swapped_with_another_does_not_delete_it(two_runs, monkeypatch):
    """Run B swapped to run A's name after A's old version was marked, before its move aside: the evaluation moved B
    aside and deleted it. Sabotage: ``move_aside(held, folder, aside, ...)`` in ``_add_split`` back to
    ``os.replace(folder, aside)`` fails it (B is left hidden, half-emptied, under no name)."""
    from featstore.experiments.evaluate import evaluate_and_record
    from featstore.runs import write

    store, runs, a, b = two_runs
    files = {rid: sorted(os.listdir(runs / rid)) for rid in (a, b)}
    real = write.mark_held

    def swapped(held, folder, run_id, successor):
        real(held, folder, run_id, successor)
        _exchange(runs / a, runs / b)

    monkeypatch.setattr(write, "mark_held", swapped)
    said = evaluate_and_record(a, "test", store, runs)[2]  # (record, figures, what was done)
    assert (
        said
        == f"not recorded: run folder {runs / a} was replaced by another folder during this run; nothing was changed"
    )
    kinds = {rid: (runs / rid / "run.json").read_text() for rid in (a, b)}
    assert '"knn"' in kinds[a] and '"logreg"' in kinds[b]  # both runs whole, each at the other's name
    assert sorted(os.listdir(runs / a)) == files[b] and sorted(os.listdir(runs / b)) == files[a]
    assert [n for n in _hidden(runs) if not n.endswith(".lock")] == []
