"""Attack 23 (issue #19): in a folder others can write, ``write_atomic`` (every output: CSV, npz, Parquet, PNG, JSON)
chmodded its temporary by name and renamed whatever was at the temporary's name onto the output: a link renamed onto
it turned ``export --out train.csv`` into a link to the victim's ``.bashrc`` (rc 0, the rows lost). The mode is now set
through mkstemp's descriptor and a temporary replaced while it was written is refused before the rename."""

from __future__ import annotations

import os

import pytest

from featstore.errors import OutputError
from featstore.outputs import write_atomic


def test_a_temporary_replaced_while_written_is_never_renamed_onto_the_output(tmp_path):
    """Sabotage: the identity check before ``os.replace`` removed fails it (the output becomes the link)."""
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=...\n")
    os.chmod(victim, 0o600)
    out = tmp_path / "train.csv"

    def write(tmp):
        tmp.write_text("path,label\n")
        os.unlink(tmp)
        os.symlink(victim, tmp)  # what the colleague renames onto the temporary

    with pytest.raises(OutputError, match="was replaced by another file while it was written"):
        write_atomic(out, write, "--out")
    assert not os.path.lexists(out) and victim.read_text() == "export PATH=...\n"
    assert os.stat(victim).st_mode & 0o777 == 0o600


def test_the_mode_is_set_on_the_file_made_not_through_a_name(tmp_path, monkeypatch):
    """Sabotage: ``os.chmod(tmp, ...)`` by name back in place of the fchmod fails it (the chmod follows the link)."""
    victim = tmp_path / "id_ed25519"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    real = os.chmod
    monkeypatch.setattr(
        os, "chmod", lambda p, *a, **k: pytest.fail(f"chmod by name: {p}") if ".tmp" in str(p) else real(p, *a, **k)
    )
    out = tmp_path / "runs.csv"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    write_atomic(out, lambda tmp: tmp.write_text("id,acc\n"), "--out")
    assert out.read_text() == "id,acc\n" and os.stat(out).st_mode & 0o777 == 0o640
    assert os.stat(victim).st_mode & 0o777 == 0o600
