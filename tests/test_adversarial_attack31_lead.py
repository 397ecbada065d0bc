"""Known residuals of attack 30 closed by the lead (2026-12-06): each a FIFO renamed onto a name between featstore's
check by name and a reading of that name, which waited for a writer forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import test_adversarial_attack14 as a14

store_src, store, run = a14.store_src, a14.store, a14.run  # the fourteenth attack's fixtures: a store and a run


def _run(code: str, timeout: float = 60) -> str:
    """``code`` in a child Python: its output (a wait past ``timeout`` fails the test)."""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("featstore waited on a FIFO renamed onto a name it had checked")
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def test_a_fifo_renamed_onto_a_shard_after_its_check_is_not_waited_on(tmp_path):
    """``refuse_shard_folder`` read each earlier shard's schema by name after checking it was a regular file: a FIFO
    renamed onto ``part-00000.parquet`` in between blocked the export. The schema is read through the descriptor
    opened (non-blocking, not followed) and checked. Sabotage: ``_is_shard`` calling ``read_schema(entry.path)`` fails
    it (the child waits on the FIFO until the timeout)."""
    pytest.importorskip("pyarrow")
    import pyarrow
    import pyarrow.parquet

    out = tmp_path / "shards"
    out.mkdir()
    table = pyarrow.table({"x": [1, 2]}).replace_schema_metadata({b"featstore": b"{}"})
    pyarrow.parquet.write_table(table, out / "part-00000.parquet")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = (
        "import os, pyarrow.parquet as pq\n"
        "from featstore.store.shards import refuse_shard_folder\n"
        "real = pq.read_schema\n"
        "def swapped_first(where, *a, **k):\n"
        f"    if os.path.exists({str(fifo)!r}): os.replace({str(fifo)!r}, {str(out / 'part-00000.parquet')!r})\n"
        "    return real(where, *a, **k)\n"
        "pq.read_schema = swapped_first\n"
        f"refuse_shard_folder(__import__('pathlib').Path({str(out)!r}))\n"
        "print('checked')\n"
    )
    assert _run(code) == "checked"  # the schema read is the file checked: an earlier export, accepted
    assert (out / "part-00000.parquet").is_fifo()  # the swap did happen, after the check


def test_a_folder_exchanged_with_the_new_version_is_not_put_under_the_runs_name(run, monkeypatch):
    """fixAI's residual: finishing a swap that a killed ``runs evaluate`` left checked the new version's marker and
    record by name, then renamed it onto the run's name by name and removed the old version: a folder of the user's
    exchanged with the new version in between became the run, and the old version was deleted. The new version is held
    open from its check to its rename (only while its name is that folder); else the old version is put back (the
    held one), and nothing is removed. Sabotage: ``_finish`` renaming ``os.replace(new, run)`` by name fails it."""
    import featstore.runs.swap as swap
    from tests.test_adversarial_attack17_runs import _killed_in_swap

    store, runs, rid = run
    old, new = _killed_in_swap(store, runs, rid)
    notes = runs.parent / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("mine")
    real = swap.parse_record

    def exchanged_first(*a, **k):  # a colleague's exchange, once the new version's record is read
        monkeypatch.setattr(swap, "parse_record", real)
        os.rename(new, runs.parent / "held")
        os.rename(notes, new)
        os.rename(runs.parent / "held", notes)
        return real(*a, **k)

    monkeypatch.setattr(swap, "parse_record", exchanged_first)
    assert swap.reveal(runs) == {}
    assert "test" not in json.loads((runs / rid / "run.json").read_text())["metrics"]  # the old version is back
    assert (new / "mine.txt").read_text() == "mine" and not (runs / rid / "mine.txt").exists()  # the user's, untouched
    assert "test" in json.loads((notes / "run.json").read_text())["metrics"]  # the new version, kept where it was put


_LOOKS = """
import os, sys, zipfile
import numpy as np
fifo, folder = sys.argv[1:]
from featstore.output_images import refuse_foreign_image, refuse_image, refuse_unstamped
from featstore.experiments.predict import _is_predictions
from featstore.store.export_files import is_export

for look in (refuse_image, refuse_foreign_image, refuse_unstamped, _is_predictions):
    print(look.__name__, look(fifo))  # a FIFO at the name: opened by name, each waited for a writer


def swapped_in(name, real):  # the name checked (a regular export), then a FIFO renamed onto it before it is read
    def hooked(where, *a, **k):
        if os.path.exists(fifo):
            os.replace(fifo, name)
        return real(where, *a, **k)
    return hooked


npz = os.path.join(folder, "x.npz")
np.savez(npz, features=np.zeros(2), labels=np.zeros(2), featstore=np.array(["featstore", "1"]))
real = zipfile.ZipFile
zipfile.ZipFile = swapped_in(npz, real)
print("npz", is_export(npz, "npz"), os.path.exists(fifo))
zipfile.ZipFile = real
"""


def test_a_fifo_at_an_outputs_name_is_never_waited_on(tmp_path):
    """Attack 31 #5: the looks at what an output's name holds (an image? a chart featstore drew? predictions? an
    export?) opened the name by name with a blocking ``open``: a FIFO renamed onto it after ``check_output``'s lstat
    blocked ``export``, ``predict``, ``leaks`` and ``similar`` forever. Each now opens once, non-blocking, not
    followed, and reads through that descriptor. Sabotage: any one of them opening ``path`` by name again (e.g.
    ``refuse_image``'s ``open(path, "rb")``, or ``is_export``'s ``zipfile.ZipFile(path)``) fails it (the timeout)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    said = _run(_LOOKS.replace("fifo, folder = sys.argv[1:]", f"fifo, folder = {str(fifo)!r}, {str(tmp_path)!r}"))
    assert said.splitlines()[:4] == [
        "refuse_image None",
        "refuse_foreign_image None",
        "refuse_unstamped None",
        "_is_predictions False",
    ], said
    assert said.splitlines()[4] == "npz True False", said  # the export checked is the file read; the FIFO came after


def _gone_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def _mark_old(folder, rid: str, successor: str | None) -> None:
    """An old version's marker of a writer that is gone (what a SIGKILLed ``runs evaluate`` leaves)."""
    from featstore.leftovers import host_tag
    from featstore.runs.versions import write_marker

    found = {"run": rid, "role": "old", "pid": _gone_pid(), "host": host_tag()}
    write_marker(folder, json.dumps(found if successor is None else {**found, "successor": successor}))


def _age(folder, seconds: float) -> None:
    for p in [folder, *folder.iterdir()]:
        os.utime(p, (os.stat(p).st_atime - seconds, os.stat(p).st_mtime - seconds), follow_symlinks=False)


def test_a_run_left_marked_old_is_not_deleted_once_renamed_to_an_orphans_name(run):
    """Attack 31 #6: a ``runs evaluate`` killed after marking the live run as the old version (before moving it aside)
    left the mark in the run; a colleague renamed the run to an orphan's name and put an empty folder of hers at its
    name, and 10 minutes later the user's next ``fit`` deleted the run (model, predictions, record). An old version is
    removed only once its successor (named in its mark) is the run: a folder of the user's whose record is that one.
    Sabotage: ``_remove_orphan`` without its ``superseded`` check fails it (the run is deleted)."""
    import time

    from featstore.runs.swap import ORPHAN_AGE_S
    from featstore.runs.write import clean_orphans

    store, runs, rid = run
    successor = "0" * 64  # the new version that never got its name
    _mark_old(runs / rid, rid, successor)
    orphan = runs / f".{rid}.zzzzzzzz.tmp"
    os.rename(runs / rid, orphan)
    (runs / rid).mkdir()
    os.chown(runs / rid, 54321, -1)  # hers
    _age(orphan, ORPHAN_AGE_S + 120)
    clean_orphans(runs, now=time.time())
    assert (orphan / "run.json").is_file() and (orphan / "model.skops").is_file()  # the user's run, kept


def test_an_old_version_whose_successor_is_the_run_is_removed(run):
    """The cleaner's job is kept: an old version left by a ``runs evaluate`` killed after its new version took the
    name (between that rename and the old version's removal) is removed once old."""
    import time

    from featstore.runs.swap import ORPHAN_AGE_S
    from featstore.runs.write import clean_orphans

    store, runs, rid = run
    record = json.loads((runs / rid / "run.json").read_text())
    old = runs / f".{rid}.abcdefgh.old.tmp"
    import shutil

    shutil.copytree(runs / rid, old)
    _mark_old(old, rid, record["predictions_sha256"])
    _age(old, ORPHAN_AGE_S + 120)
    clean_orphans(runs, now=time.time())
    assert not old.exists() and (runs / rid / "run.json").is_file()


def test_a_relative_out_from_a_removed_working_folder_is_one_line(tmp_path, monkeypatch):
    """Attack 31 #7: from a working folder that was removed, a relative ``--out`` of ``export`` (a file or shards) and
    ``report`` ended in a 46-line FileNotFoundError traceback (``outputs.resolved``: ``Path.resolve`` needs the current
    folder); attack 30 #7 had fixed it for ``--store`` only. Sabotage: ``resolved`` without its ``full_path`` line
    fails it (FileNotFoundError)."""
    from featstore.errors import ConfigError
    from featstore.outputs import resolved

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(ConfigError) as err:
        resolved("x.csv", "--out")
    assert str(err.value) == (
        "the current folder no longer exists (removed since this shell entered it), so x.csv names nothing: cd to an "
        "existing folder, or give --out by its absolute path"
    )
    assert resolved(tmp_path / "x.csv", "--out") == tmp_path / "x.csv"  # an absolute name still works


def test_an_evaluated_runs_old_version_names_the_published_record(run, monkeypatch):
    """End to end: the successor an old version's mark names is the digest the published run.json records, so the
    cleaner does remove the old version a kill after the publish leaves (and only it)."""
    from featstore.experiments.evaluate import evaluate_and_record
    from featstore.runs import write

    store, runs, rid = run
    monkeypatch.setattr(write, "remove_held", lambda *a, **k: None)  # a kill after the publish: the old version stays
    evaluate_and_record(rid, "test", store, runs)
    (old,) = runs.glob(f".{rid}.*.old.tmp")
    mark = json.loads((old / ".featstore-tmp").read_text())
    assert mark["successor"] == json.loads((runs / rid / "run.json").read_text())["predictions_sha256"]
