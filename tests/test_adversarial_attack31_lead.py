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
