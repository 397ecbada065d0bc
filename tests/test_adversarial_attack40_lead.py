"""Attack 40, the lead's fixes (the fix helpers' are in ``test_adversarial_attack40_<helper>.py``).

- check_output's refusals printed the output's name raw: an escape sequence in a file or folder name (OSC 0, which sets
  the terminal's title) reached the terminal through "is a symbolic link", "is a folder", "does not exist" (issue 19's
  ``leaks`` finding, for every output name).
"""

from __future__ import annotations

import os

import pytest

from featstore.errors import OutputError
from featstore.outputs import check_output

ESC = "\x1b]0;owned\x07"


@pytest.mark.parametrize("case", ["link", "folder", "fifo", "missing folder", "not a folder"])
def test_output_refusals_never_print_a_name_raw(tmp_path, case):
    name = tmp_path / f"x{ESC}.csv"
    if case == "link":
        name.symlink_to("elsewhere")
    elif case == "folder":
        name.mkdir()
    elif case == "fifo":
        os.mkfifo(name)
    elif case == "missing folder":
        name = tmp_path / f"d{ESC}" / "x.csv"
    else:
        (tmp_path / f"f{ESC}").write_text("")
        name = tmp_path / f"f{ESC}" / "x.csv"
    with pytest.raises(OutputError) as err:
        check_output(name, "--out")
    assert "\x1b" not in str(err.value) and "\x07" not in str(err.value), repr(str(err.value))
    assert str(tmp_path) in str(err.value)  # the name is still said, escaped
