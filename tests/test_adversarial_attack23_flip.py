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
    assert len(lines) == 1 and "HDF5 could not read the store" in lines[0] and "incorrect metadata" in lines[0], lines
