"""featstore.outputs: every output file is refused before work where it cannot be written whole, written whole or not at all."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from featstore.errors import FeatstoreError, OutputError
from featstore.outputs import check_output, csv_cell, terminal_safe, write_atomic, write_text


def test_writes_whole_file_and_replaces_an_old_one(tmp_path):
    out = tmp_path / "a.csv"
    out.write_text("old")
    write_text(out, "new\n")
    assert out.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = threading.Event()

    def go():
        with pytest.raises(OutputError, match="not a regular file"):
            write_text(fifo, "x", "--out")
        done.set()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    assert done.wait(5), "writing to a FIFO blocked"


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_devices_are_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} missing")
    with pytest.raises(OutputError, match="not a regular file"):
        check_output(device)


def test_a_link_is_never_written_through_nor_replaced(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    link = tmp_path / "out.csv"
    link.symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link"):
        write_text(link, "x")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="symbolic link"):
        write_text(dangling, "x")
    assert target.read_text() == "precious" and link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_link_planted_while_writing_is_refused(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("precious")
    out = tmp_path / "out.csv"

    def write(tmp):
        tmp.write_text("x")
        out.symlink_to(target)

    with pytest.raises(OutputError, match="symbolic link"):
        write_atomic(out, write)
    assert target.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "victim.txt"]


@pytest.mark.parametrize("case", ["missing folder", "parent is a file", "a folder"])
def test_bad_places_are_one_line(tmp_path, case):
    (tmp_path / "f").write_text("")
    out = {
        "missing folder": tmp_path / "nodir" / "x.csv",
        "parent is a file": tmp_path / "f" / "x.csv",
        "a folder": tmp_path,
    }[case]
    with pytest.raises(OutputError) as info:
        write_text(out, "x", "--out")
    msg = str(info.value)
    assert "\n" not in msg and str(out) in msg and isinstance(info.value, FeatstoreError)


@pytest.mark.parametrize(
    "code,words", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "not writable")]
)
def test_oserror_while_writing_keeps_the_old_file_and_leaves_no_temporary(tmp_path, code, words):
    out = tmp_path / "a.npz"
    out.write_bytes(b"old")

    def write(tmp):
        tmp.write_bytes(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError, match=words) as info:
        write_atomic(out, write, "--out")
    assert "Nothing was written there" in str(info.value)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_other_exceptions_pass_through_and_clean_up(tmp_path):
    def write(tmp):
        tmp.write_text("half")
        raise KeyError("bug")

    with pytest.raises(KeyError):
        write_atomic(tmp_path / "x", write)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text,cell",
    [
        ("=cmd|' -C calc'!A0", "'=cmd|' -C calc'!A0"),
        ("@SUM(1+1)*cmd|x", "'@SUM(1+1)*cmd|x"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("\tx", "'\tx"),
        ("\rx", '"\'\rx"'),
        ("a,b", '"a,b"'),
        ('q"', '"q"""'),
        ("cat", "cat"),
        ("", ""),
    ],
)
def test_csv_cells_are_never_formulas(text, cell):
    assert csv_cell(text) == cell


def test_terminal_safe_escapes_controls_and_bidi():
    assert terminal_safe("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert terminal_safe("a\u202eb") == "a\\u202eb"
    assert terminal_safe("caf\u00e9 \u732b") == "caf\u00e9 \u732b"
    assert terminal_safe("\x9b31m") == "\\x9b31m"
