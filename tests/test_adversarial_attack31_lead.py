"""Known residuals of attack 30 closed by the lead (2026-12-06): each a FIFO renamed onto a name between featstore's
check by name and a reading of that name, which waited for a writer forever."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("pyarrow")


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
