"""Attack 23 #4 (issue #19): one flipped bit in a store's HDF5 metadata made `info` and `check` end in a 20-line
traceback (h5py's RuntimeError/KeyError: "incorrect metadata checksum"), where featstore's own checks did not look
first; a split of over 1,000 classes is written with checksummed formats, so every flip there did. Such an error out of
h5py is now one line naming the store. Synthetic store; the flipped bit is one attack 23's fuzzing found."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.store.writer import synthetic_attrs, write_arrays


@pytest.mark.parametrize("command", ["info", "check"])
def test_a_flipped_bit_in_the_metadata_is_one_line(tmp_path, command):
    """Sabotage: ``_raised_in_h5py`` returning False fails it (the traceback comes back)."""
    k = 1_500
    y = np.arange(2 * k, dtype=np.int32) % k
    path = tmp_path / "s.h5"
    X = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)
    write_arrays(path, "s", "train", X, y, [f"c{i}" for i in range(k)], attrs=synthetic_attrs((4,)))
    data = bytearray(path.read_bytes())
    data[[m.start() for m in re.finditer(b"FHDB", data)][0] + 193] ^= 16  # the split's attribute heap
    path.write_bytes(bytes(data))
    r = CliRunner().invoke(app, [command, str(path)])
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = r.output.strip().splitlines()
    if command == "check":  # check lists it as the split's finding and goes on (tests/test_check_findings.py)
        assert lines[0].startswith("problem: /s/train: HDF5 cannot read it") and "incorrect metadata" in lines[0], lines
        return
    assert len(lines) == 1 and "HDF5 could not read the store" in lines[0] and "incorrect metadata" in lines[0], lines


@pytest.mark.parametrize("command", ["info", "check"])
def test_a_group_name_that_is_not_utf8_is_one_line_without_h5py_internals(tmp_path, command):
    """Attack 23 #6: `check` ended in a UnicodeDecodeError traceback, the other commands quoted h5py's SystemError
    ("<cyfunction FastRLock.__exit__ at 0x7f...> returned a result with an exception set"). Sabotage: the message
    back to the exception's own text fails `info`'s row."""
    import h5py

    path = tmp_path / "s.h5"
    write_arrays(path, "s", "train", np.ones((4, 2), np.float32), [0, 1, 0, 1], ["a", "b"])
    with h5py.File(path, "a") as f:
        f.id.links.move(b"s", f.id, b"s\xff")
    r = CliRunner().invoke(app, [command, str(path)])
    lines = r.output.strip().splitlines()
    if command == "check":  # a finding, then the count: check goes on with the other objects
        lines = lines[:-1] if lines[-1].endswith("1 problem(s)") else lines
    assert r.exit_code == 1 and len(lines) == 1 and "utf-8" in lines[0].lower() and "cyfunction" not in lines[0], lines


def test_a_full_disk_inside_h5py_is_one_line(monkeypatch, capsys):
    """Attack 23 #16: a disk filling while HDF5 wrote (compaction's copy) was an h5py traceback; through the CLI's catch
    of h5py's own errors it is one line saying the disk filled, not "damaged metadata". Simulated: a command raising
    what HDF5 raises on ENOSPC from h5py's frames. Sabotage: the ENOSPC branch removed fails it."""
    import typer

    from featstore.cli import main as cli_main

    def command(store):
        raise OSError(28, "Can't write data (file write failed: errno = 28, error message = 'No space left on device')")

    monkeypatch.setattr(cli_main, "_raised_in_h5py", lambda exc: True)  # as if raised in h5py's own frames
    with pytest.raises(typer.Exit):
        cli_main._errors(command)(store="s.h5")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the disk filled while HDF5 wrote" in lines[0], lines
