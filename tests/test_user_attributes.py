"""Attack 32 #5: one attribute a user adds with h5py to annotate a store (a structured record, a complex number, a
reference) refused the whole store as "crafted or damaged", fix "extract into a new --store" (hours, for a note).
It is still not read (such types can hold strings their stored size does not count, attack 22), but the line names it
and a fix that keeps the store: deleting that attribute with h5py. Stores are synthetic (``writer.write_arrays``)."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from featstore.store.check import check_store
from tests.test_adversarial_attack4 import cli, no_traceback
from tests.test_adversarial_attack18_store import _store


def _fix_of(text, path):
    """The h5py statement the line gives, run on ``path``."""
    (code,) = re.findall(r"`(del h5py\.File\(STORE, 'a'\)[^`]*)`", text)
    exec(code.replace("STORE", repr(str(path))), {"h5py": h5py})


@pytest.mark.parametrize(
    ("obj", "value"),
    [
        ("/", np.array([(1, 0.5)], dtype=[("run", "i4"), ("scale", "f8")])),
        ("/syn", np.complex128(1 + 2j)),
        ("/syn/test", "ref"),
    ],
    ids=["compound-on-root", "complex-on-extractor", "reference-on-split"],
)
def test_a_users_attribute_of_another_type_is_named_with_a_fix_that_keeps_the_store(tmp_path, obj, value):
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        f[obj].attrs["calibration"] = f["syn/test/labels"].ref if isinstance(value, str) else value
    result = cli("info", path) if obj == "/" else None
    problems = check_store(path)
    text = no_traceback(result) if result is not None else problems[0]
    assert "'calibration' cannot be read: it is of HDF5 type" in text and "crafted" not in text, text
    assert "new --store" not in text and len(problems) == 1 and "\n" not in problems[0], problems
    _fix_of(text, path)
    assert check_store(path) == []
    assert cli("info", path).exit_code == 0
