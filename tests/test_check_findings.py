"""`featstore check` lists what `info` refuses and what HDF5 cannot read, and its advice can be followed (issue #19;
attack 23 #3, #12's advice, #14). Tiny synthetic stores; each advised fix is followed and shown to work.

- #14: check read only `format_version` at the root, so a root attribute `info` refuses (a 70,000-character
  `featstore_version`) was `OK`; and every attribute's fix was "Re-extract this split with --overwrite", which keeps
  the root's attributes and, for an extractor's, is refused by the writer with the same message (an advice loop).
- #3: one flipped bit in a checksummed (over 1,000 classes) store's metadata made check print one line and stop; it is
  now a finding naming the object, and the other extractors are still checked.
- #12: a lock refused with EACCES advised `--no-locking` ("a filesystem without working locks"); that advice is now
  for the errnos that mean locks do not work, and a folder the user cannot write is said to be one.
"""

from __future__ import annotations

import errno
import re
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from featstore.cli import app
from featstore.errors import StoreError
from featstore.store.check import DAMAGED_FIX, check_store
from featstore.store.locking import writer_lock
from featstore.store.reader import FeatureStore
from featstore.store.writer import synthetic_attrs, write_arrays

X = np.zeros((6, 4), np.float32)
Y = np.array([0, 0, 0, 1, 1, 1], np.int32)
LONG = "9" * 70_000  # over the 65,536-byte limit of a string attribute


def _store(path, name="s"):
    write_arrays(path, name, "train", X, Y, ["x", "y"], attrs=synthetic_attrs((4,)))
    return path


def _set(path, obj, key, value=LONG):
    with h5py.File(path, "a") as f:
        f[obj].attrs[key] = value


def _info_fails(path) -> str:
    r = CliRunner().invoke(app, ["info", str(path)])
    assert r.exit_code == 1, r.output
    return r.output


def test_a_root_attribute_info_refuses_is_a_check_finding_and_a_new_store_fixes_it(tmp_path):
    """Sabotage: check_store reading only format_version at the root (``_attrs(f, ...)`` given a dict of that one
    key) fails it (check says OK); ``_fix``'s root branch giving the split's text fails the wording."""
    path = _store(tmp_path / "s.h5")
    _set(path, "/", "featstore_version")
    problems = check_store(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:/ attribute: featstore_version[0] is a string of 70,000"), problems
    assert "new --store" in problems[0] and "Re-extract this split" not in problems[0], problems
    assert "new --store" in _info_fails(path)
    write_arrays(path, "s", "train", X, Y, ["x", "y"], attrs=synthetic_attrs((4,)))  # re-extracting the split ...
    assert check_store(path) == problems  # ... keeps the root's attribute: why that is not the advice
    fresh = _store(tmp_path / "new.h5")  # the advice: extract into a new --store
    assert check_store(fresh) == [] and FeatureStore(fresh).extractors() == ["s"]


def test_an_extractor_attribute_is_fixed_in_a_new_store_or_under_another_name(tmp_path):
    """Sabotage: ``_fix``'s extractor branch giving the split's text ("Re-extract this split with --overwrite") fails
    it; following that text is refused by the writer with the same message (shown below)."""
    path = _store(tmp_path / "s.h5")
    _set(path, "s", "notes")
    problems = check_store(path)
    assert len(problems) == 1 and problems[0].startswith("/s attribute: notes[0]"), problems
    assert "new --store" in problems[0] and "another --name" in problems[0], problems
    assert "Re-extract this split" not in problems[0], problems
    with pytest.raises(StoreError, match="notes"):  # re-extracting the split: refused, the extractor's attribute kept
        write_arrays(path, "s", "train", X, Y, ["x", "y"], attrs=synthetic_attrs((4,)))
    _store(path, "s2")  # the advice: under another --name in this store ...
    assert check_store(path) == problems  # ... the new extractor is sound (the old one is still named)
    assert FeatureStore(path).meta.split("s2", "train")["committed_rows"] == 6
    assert check_store(_store(tmp_path / "new.h5")) == []  # ... or into a new --store


def test_a_split_attribute_is_fixed_by_re_extracting_the_split(tmp_path):
    """Sabotage: ``_fix``'s split branch (depth >= 2) giving the root's text fails it."""
    path = _store(tmp_path / "s.h5")
    _set(path, "s/train", "notes")
    problems = check_store(path)
    assert len(problems) == 1 and problems[0].startswith("/s/train attribute: notes[0]"), problems
    assert "Re-extract this split with --overwrite" in problems[0], problems
    write_arrays(path, "s", "train", X, Y, ["x", "y"], attrs=synthetic_attrs((4,)))  # the advice: it works
    assert check_store(path) == []


def test_every_bad_attribute_is_listed_and_check_goes_on(tmp_path):
    """One finding per bad attribute (root and extractor), and the other extractor is still checked (its NaN row).
    Sabotage: ``_attrs`` returning at its first bad key fails it (one root finding)."""
    path = _store(tmp_path / "s.h5")
    nan = X.copy()
    nan[1, 2] = np.nan
    write_arrays(path, "t", "train", nan, Y, ["x", "y"], attrs=synthetic_attrs((4,)))
    _set(path, "/", "featstore_version")
    _set(path, "/", "notes")
    _set(path, "s", "notes")
    problems = check_store(path)
    assert [p.split(": ")[0] for p in problems] == [
        f"{path}:/ attribute",
        f"{path}:/ attribute",
        "/s attribute",
        "/t/train",
    ], problems
    assert "NaN" in problems[3]


K = 1_500  # over DENSE_ATTRS_NAMES: the split is written with HDF5 1.8's checksummed formats

# bits attack 23's fuzzing found (checksum_flip_traceback.py): (signature, which one, offset, bit, the object named)
FLIPS = {
    "split's attribute heap": (b"FHDB", 0, 193, 16, "/s/train: HDF5 cannot read it (RuntimeError"),
    "extractor's attribute heap": (b"FHDB", 1, 221, 32, "/s (its attributes): HDF5 cannot read it (RuntimeError"),
    "split's object header": (b"OHDR", 3, 213, 16, "/s/train: HDF5 cannot read it (KeyError"),
    "extractor's object header": (b"OHDR", 1, 98, 32, "/s: HDF5 cannot read it (KeyError"),
}


@pytest.fixture(scope="module")
def two_extractors(tmp_path_factory):
    """A store of a 1,500-class extractor ``s`` and a 2-class ``t`` with one NaN row and a soft link (its findings)."""
    path = tmp_path_factory.mktemp("flip") / "two.h5"
    y = np.arange(2 * K, dtype=np.int32) % K
    rng = np.random.default_rng(0)
    write_arrays(path, "s", "train", rng.normal(size=(len(y), 4)).astype(np.float32), y, [f"c{i}" for i in range(K)])
    nan = X.copy()
    nan[2, 1] = np.nan
    write_arrays(path, "t", "train", nan, Y, ["x", "y"])
    with h5py.File(path, "a") as f:
        f["t"]["elsewhere"] = h5py.SoftLink("/t/train")  # a link: still found where the walk of `s` fails
    return path


@pytest.mark.parametrize("where", list(FLIPS))
def test_damaged_metadata_is_a_finding_and_check_goes_on(two_extractors, tmp_path, where):
    """Sabotage: the ``except DAMAGED`` around ``_check_split`` removed fails the split rows (the finding names /s, not
    /s/train); ``_foreign``'s walk by extractor returning only its findings fails the object-header rows (the link in
    ``t`` unseen)."""
    sig, i, offset, bit, named = FLIPS[where]
    data = bytearray(two_extractors.read_bytes())
    data[[m.start() for m in re.finditer(sig, data)][i] + offset] ^= bit
    path = tmp_path / "flipped.h5"
    path.write_bytes(bytes(data))
    problems = check_store(path)
    damaged = [p for p in problems if p.startswith(named)]
    assert damaged and all(p.endswith(DAMAGED_FIX) and "incorrect metadata checksum" in p for p in damaged), problems
    assert any(p.startswith("/t/train: 1 rows contain NaN") for p in problems), problems  # went on to `t`
    assert any(p.startswith("/t/elsewhere (SoftLink) points outside") for p in problems), problems
    r = CliRunner().invoke(app, ["check", str(path)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and lines[-1].endswith(f"{len(problems)} problem(s)"), r.output
    assert all(line.startswith("problem: ") for line in lines[:-1]), r.output
    r = CliRunner().invoke(app, ["info", str(path)])  # the other readers: one line
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output


def _refuse(err: int, where=None):
    """A FileLock.acquire that fails with ``err`` (for lock files under ``where`` only, when given)."""

    def acquire(self, *args, **kwargs):
        if where is None or str(self.lock_file).startswith(str(where)):
            raise OSError(err, errno.errorcode[err], str(self.lock_file))
        return original(self, *args, **kwargs)

    from filelock import FileLock

    original = FileLock.acquire
    return FileLock, acquire


def test_a_folder_you_cannot_write_is_not_told_to_use_no_locking(tmp_path, monkeypatch):
    """Root cannot be refused by chmod: the lock call is made to fail with EACCES for the store's folder. Sabotage:
    EACCES added to ``NO_LOCKS_ERRNOS`` fails it (--no-locking comes back)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    path = _store(shared / "s.h5")
    cls, acquire = _refuse(errno.EACCES, shared)
    monkeypatch.setattr(cls, "acquire", acquire)
    with pytest.raises(StoreError) as exc, writer_lock(path):
        pass
    text = str(exc.value)
    assert "--no-locking" not in text and "you cannot write in the folder" in text and "copy the store" in text, text
    mine = tmp_path / "mine"  # the advice: copy the store to a folder you can write and pass that --store
    mine.mkdir()
    shutil.copy(path, mine / "s.h5")
    write_arrays(mine / "s.h5", "s", "val", X, Y, ["x", "y"], attrs=synthetic_attrs((4,)))  # (it takes the lock)
    assert check_store(mine / "s.h5") == []


@pytest.mark.parametrize(
    "err, said",
    [
        (errno.EPERM, "you cannot write in the folder"),
        (errno.EROFS, "read-only filesystem"),
        (errno.ENOLCK, "--no-locking"),
        (errno.ENOSYS, "--no-locking"),
        (errno.EOPNOTSUPP, "--no-locking"),
    ],
)
def test_the_lock_advice_follows_the_errno(tmp_path, monkeypatch, err, said):
    """--no-locking only where locks do not work. Sabotage: ``_lock_fix`` answering every errno with --no-locking
    fails the EPERM and EROFS rows; ``NO_LOCKS_ERRNOS`` emptied fails the others."""
    path = _store(tmp_path / "s.h5")
    cls, acquire = _refuse(err)
    monkeypatch.setattr(cls, "acquire", acquire)
    with pytest.raises(StoreError) as exc, writer_lock(path):
        pass
    assert said in str(exc.value) and (("--no-locking" in str(exc.value)) == (said == "--no-locking")), exc.value
    if said == "--no-locking":  # the advice: without locks the writer goes on
        with writer_lock(path, locking=False):
            pass


def test_enolck_from_flock_itself_advises_no_locking(tmp_path, monkeypatch):
    """The lock call filelock makes (fcntl.flock) failing with ENOLCK, as an NFS mount without lockd does. Sabotage:
    ENOLCK removed from ``NO_LOCKS_ERRNOS`` fails it."""
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    path = _store(tmp_path / "s.h5")
    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(StoreError, match="this filesystem's locks do not work.*--no-locking"), writer_lock(path):
        pass


@pytest.mark.parametrize("hook", ["validate_extractor", "refuse_long"])
def test_hdf5_failing_elsewhere_in_an_extractor_or_its_rows_is_a_finding(tmp_path, monkeypatch, hook):
    """The safety nets around an extractor's checks and a split's content scan: HDF5 failing there (simulated: the
    step raises h5py's RuntimeError for extractor ``s`` only) is a finding on that object, and ``t`` is still
    checked. Sabotage: the ``except DAMAGED`` around ``_check_extractor`` (first row) or ``_scan_split`` (second)
    removed fails it."""
    import featstore.store.check as check

    path = _store(tmp_path / "s.h5")
    nan = X.copy()
    nan[0, 0] = np.inf
    write_arrays(path, "t", "train", nan, Y, ["x", "y"], attrs=synthetic_attrs((4,)))
    real = getattr(check, hook)

    def failing(obj, where, *args):
        if str(where).startswith("/s") or "/s/" in str(getattr(obj, "name", "")):
            raise RuntimeError("Unable to synchronously iterate (incorrect metadata checksum after all read attempts)")
        return real(obj, where, *args)

    monkeypatch.setattr(check, hook, failing)
    problems = check_store(path)
    named = "/s: HDF5 cannot read it" if hook == "validate_extractor" else "/s/train: HDF5 cannot read it"
    assert len(problems) == 2 and problems[0].startswith(named) and problems[1].startswith("/t/train: 1 rows"), problems
