"""Ctrl-C before a command's own handling (during its imports, or a command without a line of its own): Typer ended
it with exit 130 and no line, and a Ctrl-C inside an extension module's start-up was a traceback ending in
"ImportError: initialization failed". Both are one line and exit 130; any other ImportError stays a traceback (a bug)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.report import tables
from featstore.store.writer import write_arrays


def _broken_import(by_ctrl_c: bool):
    def store_tree(*args, **kwargs):
        try:
            raise KeyboardInterrupt if by_ctrl_c else OSError("libfoo.so: cannot open shared object file")
        except BaseException as exc:
            raise ImportError("initialization failed") from exc

    return store_tree


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("fake", [_interrupted, _broken_import(True)], ids=["ctrl-c", "import-broken-by-ctrl-c"])
def test_ctrl_c_before_a_commands_own_line_is_one_line_and_exit_130(tmp_path, monkeypatch, fake):
    store = tmp_path / "s.h5"
    write_arrays(store, "e", "train", np.zeros((4, 2), np.float32), np.arange(4) % 2, ["a", "b"])
    monkeypatch.setattr(tables, "store_tree", fake)
    result = CliRunner().invoke(app, ["info", str(store)])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == ["interrupted (Ctrl-C); re-run the same command to do it"]


def test_an_import_error_not_made_by_ctrl_c_stays_a_traceback(tmp_path, monkeypatch):
    store = tmp_path / "s.h5"
    write_arrays(store, "e", "train", np.zeros((4, 2), np.float32), np.arange(4) % 2, ["a", "b"])
    monkeypatch.setattr(tables, "store_tree", _broken_import(False))
    result = CliRunner().invoke(app, ["info", str(store)])
    assert isinstance(result.exception, ImportError) and "interrupted" not in result.output
