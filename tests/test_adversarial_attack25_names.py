"""Attack 25, findings 8 and 9: extractor and split names (HDF5 group names, from h5py's listing of a crafted store)
reached ``info``'s tree and the errors of export, leaks and fit whole: a 1 MB name was a 1,000,032-character line, and
a split named with a line break forged a line of ``info`` ("rows 1000000 ... complete" for a 4-row split); ``check``
said OK. Now such a store is refused in one bounded line and ``check`` lists each name as a finding. Stores are written
from arrays (no TensorFlow); each crafted name is an h5py copy of a genuine group. Each test failed with its part of the
fix undone."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from featstore import FeatureStore
from featstore.errors import StoreError
from featstore.store.check import check_store
from featstore.store.names import odd_name, unshowable
from featstore.store.writer import write_arrays
from tests.test_adversarial_attack2 import cli, no_traceback

FORGED = "rows 1000000, failed 0, non-image files ignored 0, source verified"
CRAFTED = {
    "1 MB extractor name": ("syn", "e" * 1_000_000),
    "1 MB split name": ("syn/train", "syn/" + "s" * 1_000_000),
    "split name with a line break": ("syn/train", "syn/tmp\n    \u2502     " + FORGED),
    "split name with a carriage return": ("syn/test", "syn/zz\r" + FORGED),
    "extractor name with ESC and a bidi override": ("syn", "x\x1b[2J\u202egnp.exe"),
    "split name with a line separator": ("syn/test", "syn/u\u2028" + FORGED),
    "dataset name deep in a split": ("syn/train/failed/paths", "syn/train/failed/p\n" + FORGED),
    "soft link with a line break": (None, "syn/train/l\n" + FORGED),  # also named as a link out of the store
}
ESCAPED = {"extractor name with ESC and a bidi override"}  # shown escaped by every command; a finding of check
COMMANDS = {
    "info": lambda s, tmp: ("info", s),
    "check": lambda s, tmp: ("check", s),
    "export": lambda s, tmp: ("export", "--store", s, "--split", "train", "--out", tmp / "o.csv"),
    "leaks": lambda s, tmp: ("leaks", "--store", s),
    "fit": lambda s, tmp: ("fit", "--store", s, "--runs", tmp / "runs"),
}
MOST = 400  # characters a line may have: a name is cut well before (a list of 8 names: MOST_LISTED x 255)


def genuine(path, extractor="syn"):
    """A 2-class store of 8-value rows: splits train and test of ``extractor``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        write_arrays(path, extractor, split, rng.normal(size=(n, 8)).astype(np.float32), np.arange(n) % 2, ["a", "b"])
    return path


def crafted(tmp_path, case):
    store = genuine(tmp_path / "s.h5")
    source, name = CRAFTED[case]
    with h5py.File(store, "a") as f:
        if source is None:
            f[name] = h5py.SoftLink("/syn/test")
        else:
            f.copy(source, name)
    return store


def bounded(out: str) -> list[str]:
    """The output's lines, each checked: bounded, no raw control character, no forged line of its own."""
    lines = out.splitlines()
    assert lines, "no output"
    for line in lines:
        assert len(line) <= (2000 if "several extractors" in line else MOST), (
            f"a line of {len(line):,} characters: {line[:200]!r}..."
        )
        assert not any(c in line for c in "\x1b\u202e\r\u2028"), repr(line)
        if FORGED in line:  # only inside an error or a finding, the name escaped
            assert line.startswith(("error:", "problem:")), repr(line)
    return lines


@pytest.mark.parametrize("case", CRAFTED)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_crafted_group_name_is_never_printed_whole_nor_forges_a_line(tmp_path, case, command):
    """info printed a 1 MB tree line or the forged counts line, export and leaks the name whole in their errors, check
    said OK: now check lists the finding and exits 1, and every other command refuses a store holding a name no line
    can show (over 255 bytes, a line break) in one line naming the object, why and the fix; a name with an escape
    sequence or a bidi override is shown escaped (attack 3), never raw."""
    store = crafted(tmp_path, case)
    result = cli(*COMMANDS[command](store, tmp_path))
    lines = bounded(no_traceback(result))
    text = "\n".join(lines)
    if command == "check":
        assert result.exit_code == 1 and lines[-1].endswith("problem(s)"), text
        assert "holds an object named" in text and "never writes such a name" in text, text
        assert "extract into a new --store" in text, text
    elif case in ESCAPED:
        assert "is refused" not in text and r"x\x1b[2J\u202egnp.exe" in text, text
    else:
        assert result.exit_code == 1 and len(lines) == 1 and "is refused" in lines[0], text
        assert "holds an object named" in text and "never writes such a name" in text, text
        assert "extract into a new --store (`featstore check` lists every such name)" in text, text
        assert not (tmp_path / "runs").exists() and not (tmp_path / "o.csv").exists()


def test_check_lists_the_finding_and_goes_on_with_the_rest(tmp_path):
    """The crafted group is one finding (named once, though the walk and the group listing both meet it) and is not
    walked (its own NaN row would be named under its 1 MB name), and the genuine extractor beside it is still checked:
    a NaN row of its train split is still found."""
    store = genuine(tmp_path / "s.h5")
    with h5py.File(store, "a") as f:
        f["syn/train/features"][3, 0] = np.nan
        f.copy("syn", "e" * 1_000_000)
    problems = check_store(store)
    assert len(problems) == 2 and max(map(len, problems)) < MOST, [p[:200] for p in problems]
    assert problems[0].startswith("/ holds an object named 'eeee") and "(1,000,000 bytes, over the 255" in problems[0]
    assert "/syn/train: 1 rows contain NaN or inf" in problems[1], problems


def test_the_python_api_refuses_such_a_store_in_one_bounded_line(tmp_path):
    """FeatureStore(...) is where every reading command opens a store: the refusal names the group, cut and escaped."""
    store = crafted(tmp_path, "split name with a line break")
    with pytest.raises(StoreError) as caught:
        FeatureStore(store)
    message = str(caught.value)
    assert "\n" not in message and len(message) < MOST, message
    assert "/syn holds an object named 'tmp\\n" in message and "(a line break)" in message, message


def test_compact_and_the_writer_refuse_such_a_store_too(tmp_path):
    """compact lists the groups it copies (``layout.hard_groups``) without the opening's walk: it refused nothing and
    copied the crafted group; the writer (extract, write_arrays) is refused where it opens the store."""
    from featstore.store.compact import compact

    store = crafted(tmp_path, "split name with a carriage return")
    before = store.read_bytes()
    for act in (lambda: compact(store), lambda: genuine(store, "other")):
        with pytest.raises(StoreError) as caught:
            act()
        message = str(caught.value)
        assert "/syn holds an object named 'zz\\rrows 1000000" in message and "(a line break)" in message, message
        assert "\r" not in message and len(message) < MOST, message
    assert store.read_bytes() == before


def test_a_list_of_many_names_in_a_message_is_cut(tmp_path):
    """The message "holds several extractors (a, b, ...)" listed every extractor: 30 of 200 characters made a 6,000-character
    line. Now the first 8, then how many more."""
    store = genuine(tmp_path / "s.h5")
    with h5py.File(store, "a") as f:
        for i in range(30):
            f.copy("syn", f"{i:03d}" + "n" * 197)
    (line,) = bounded(no_traceback(cli("export", "--store", store, "--split", "train", "--out", tmp_path / "o.csv")))
    assert "holds several extractors (000nnn" in line and ", ... (23 more)); choose one with --extractor" in line, line
    assert len(line) < 2000, len(line)


GENUINE = ["été 猫 x", "a" * 255, "é" * 127, "with space"]


def test_genuine_names_are_shown_unchanged_and_pass_check(tmp_path):
    """Names featstore never writes itself but that forge nothing (unicode, spaces, 255 bytes) are still read and
    shown whole: only over 255 bytes, control characters, line breaks and bidi overrides are refused."""
    store = genuine(tmp_path / "s.h5")
    with h5py.File(store, "a") as f:
        for i, name in enumerate(GENUINE):
            f.copy("syn/test", f"syn/{name}")
            f[f"syn/{name}"].attrs["split_id"] = f"{i:016x}"  # a split of its own (a copy shares test's)
    out = no_traceback(cli("info", store))
    for name in GENUINE:
        assert f"├── /{name}   complete" in out, out
    assert not [p for p in check_store(store) if "holds an object named" in p]
    assert FeatureStore(store).splits() == sorted(["test", "train", *GENUINE])


@pytest.mark.parametrize(
    "name, why",
    [
        ("a" * 255, None),
        ("a" * 256, "256 bytes, over the 255 a name may have"),
        ("é" * 128, "256 bytes, over the 255 a name may have"),
        ("été 猫", None),
        ("a\tb", "a control character (\\x09)"),
        ("a\x85b", "a line break"),
        ("a\x9bb", "a control character (\\x9b)"),
        ("a\u2066b", "a bidirectional override (U+2066)"),
        ("a\x7fb", "a control character (\\x7f)"),
    ],
)
def test_odd_name_draws_the_line_at_what_featstore_never_writes(name, why):
    assert odd_name(name) == why


@pytest.mark.parametrize(
    "name, why",
    [
        ("x\x1b[2J", None),
        ("a\u202eb", None),
        ("a" * 255, None),
        ("a\rb", "a line break"),
        ("a\u2029b", "a line break"),
        ("é" * 128, "256 bytes, over the 255 a name may have"),
    ],
)
def test_only_names_no_line_can_show_refuse_a_store(name, why):
    """An escape sequence or a bidi override is escaped wherever the command line prints (attack 3): a finding of
    check, not a reason to refuse the store; a line break or a name over 255 bytes is."""
    assert unshowable(name) == why
