"""Issue #19 (inputs bounded): a few flipped bits in an HDF5 global heap collection made ``featstore info`` spin forever
inside HDF5's own read of a string attribute (a 1.6 MB store: an object's size 3 made 515 swallowed the next objects,
so zeros read as "free space of 0 bytes" and HDF5's walk of the collection never moved on). Every heap collection a
string's heap IDs name is now walked as HDF5 will walk it, before HDF5 reads the string (``store.gheap``), for string
attributes (one string or many) and string columns alike, and refused in one line.

Synthetic stores (write_arrays), crafted here by flipping the bits the reported stores had flipped. What reads a
crafted store runs in a child process with a timeout (a hang fails the test, saying so); the rest is bounded by
faulthandler (a hang ends the run in 60 s instead of never).
"""

from __future__ import annotations

import faulthandler
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore import FeatureStore
from featstore.errors import StoreError
from featstore.report.tables import store_tree
from featstore.store import gheap
from featstore.store.attr_values import read_names
from featstore.store.check import check_store
from featstore.store.digests import RowsDigest
from featstore.store.locking import StoreFile
from featstore.store.writer import SplitWriter, synthetic_attrs, write_arrays

DAMAGED = "names a string in a damaged HDF5 global heap"
HUNG_AFTER = 30  # seconds: each read below takes about one (a Python start-up)


def _child(*args: str) -> tuple[int, str]:
    """``python ARGS`` (featstore's CLI, or code reading the store) in a child process: (exit code, its output); a
    failed test, saying it hung, when it runs over :data:`HUNG_AFTER` seconds (HDF5 looping in a heap collection)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    try:
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=HUNG_AFTER)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[-2:]} hung: still running after {HUNG_AFTER} s")
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(autouse=True)
def _bounded():
    """A hang inside HDF5 (C code, GIL held) ends the process with every thread's traceback, not the CI job's clock."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _store(path, names=("a", "bé", "c")):
    """The reported stores' shape: 3 rows, 3 classes, an extractor's two-string ``notes``."""
    write_arrays(path, "s", "train", np.zeros((len(names), 2), np.float32), np.arange(len(names)), list(names))
    with h5py.File(path, "a") as f:
        f["s"].attrs["notes"] = np.array(["x", "y"], dtype=h5py.string_dtype())
    return path


def _objects(data: bytes, at: int) -> list[tuple[int, int, int]]:
    """(index, header offset in the file, size) of each object of the genuine collection at ``at``, to its free space."""
    size, p, out = struct.unpack_from("<Q", data, at + 8)[0], at + 16, []
    while p + 16 <= at + size:
        index, length = struct.unpack_from("<H6xQ", data, p)
        out.append((index, p, length))
        if index == 0:
            break
        p += 16 + (length + 7) // 8 * 8
    return out


def _loops(data: bytes, at: int) -> bool:
    """Whether HDF5's walk of the collection at ``at`` (H5HG__cache_heap_deserialize) would never end: an object whose
    step is 0 bytes. Independent of gheap: what makes the crafted stores below the reported ones."""
    size, p = struct.unpack_from("<Q", data, at + 8)[0], at + 16
    while p + 16 <= at + size:
        index, length = struct.unpack_from("<H6xQ", data, p)
        need = 16 + (length + 7) // 8 * 8 if index else length
        if need == 0:
            return True
        p += need
    return False


def _collection(data: bytes, holding: bytes) -> int:
    """The address of the collection whose bytes hold ``holding``."""
    at = data.rfind(b"GCOL", 0, data.index(holding))
    assert at >= 0
    return at


def _flip(path, index: int, bit: int) -> None:
    """Flip ``bit`` of the second byte of object ``index``'s size in the first collection (the root's, extractor's and
    split's strings), as the reported stores had (hang.h5: object 9's 4 bytes made 1,028; hang2.h5: object 13's 3
    made 515), and check that HDF5's walk of it now never ends."""
    data = bytearray(path.read_bytes())
    at = _collection(data, b"0.1.0")
    (header,) = [p for i, p, _ in _objects(data, at) if i == index]
    data[header + 9] ^= bit
    assert _loops(data, at)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("index, bit", [(9, 0x04), (13, 0x02)], ids=["hang.h5", "hang2.h5"])
def test_the_reported_stores_are_one_line_not_a_hang(tmp_path, index, bit):
    """The two reported stores (bits flipped in the collection holding the root's, extractor's and split's strings):
    info and check spun in HDF5 forever; now one line each, in well under a second, the attribute and the collection
    named, before HDF5 reads it."""
    path = _store(tmp_path / "s.h5")
    _flip(path, index, bit)
    for command in ("info", "check"):
        began = time.perf_counter()
        code, out = _child("-m", "featstore.cli", command, str(path))
        assert code == 1 and time.perf_counter() - began < 30 and "Traceback" not in out, (command, out)
        line = out.strip().splitlines()[0]
        assert "attribute: 'featstore_version' " + DAMAGED in line, line
        assert f"the collection at {_collection(path.read_bytes(), b'0.1.0'):,} holds object 0" in line, line
        assert "less than its own header" in line and "crafted or damaged" in line and "new --store" in line, line


def _zero_free_space(path, holding: bytes) -> int:
    """Set the free-space object's size of the collection holding ``holding`` to 0 (HDF5 loops there); its address."""
    data = bytearray(path.read_bytes())
    at = _collection(data, holding)
    (header,) = [p for i, p, _ in _objects(data, at) if i == 0]
    data[header + 8 : header + 16] = bytes(8)
    assert _loops(data, at)
    path.write_bytes(bytes(data))
    return at


def test_a_zero_size_free_space_reached_through_a_path_is_one_line(tmp_path):
    """The paths' collection: FeatureStore.paths, load's reader and check refuse it, naming the column and row."""
    path = _store(tmp_path / "s.h5")
    at = _zero_free_space(path, b"train/0")
    code, said = _child("-c", _READ.format(path=str(path), read="FeatureStore(p).paths('train')"))
    assert code == 0 and said.startswith("StoreError: "), said
    assert f"s.h5:/s/train/paths: row 0 {DAMAGED} (the collection at {at:,} holds object 0" in said, said
    assert "Re-extract this split with --overwrite" in said and said.count("\n") == 1 and len(said) < 500
    code, out = _child("-m", "featstore.cli", "check", str(path))
    assert code == 1 and f"problem: {path}:/s/train/paths: row 0 {DAMAGED}" in out and "Traceback" not in out, out


_READ = """from featstore import FeatureStore
from featstore.errors import StoreError
from featstore.store.attr_values import read_attr, read_names
import h5py
p = {path!r}
try:
    {read}
except StoreError as exc:
    print("StoreError:", exc)
"""


def test_a_zero_size_free_space_reached_through_a_split_attribute_is_one_line(tmp_path):
    """The split's class names (three strings) and its one-string source_root: refused before HDF5 reads them, with
    the split's fix."""
    path = _store(tmp_path / "s.h5")
    _zero_free_space(path, b"0.1.0")
    for read, said in [
        ("read_names(h5py.File(p)['s/train'], 'class_names', 'w/s/train')", f"w/s/train: 'class_names'[0] {DAMAGED}"),
        ("read_attr(h5py.File(p)['s/train'], 'source_root', 'w')", f"w attribute: 'source_root' {DAMAGED}"),
    ]:
        code, out = _child("-c", _READ.format(path=str(path), read=read))
        assert code == 0 and out.startswith(f"StoreError: {said} (the collection at 2,048 holds object 0"), out
        assert "Re-extract this split with --overwrite" in out and out.count("\n") == 1, out


def _edit_paths_heap(path, how: str) -> None:
    """One damage of the paths' collection or of a path's heap ID, as named by ``how``."""
    data = bytearray(path.read_bytes())
    at = _collection(data, b"train/0")
    objects = {i: (p, n) for i, p, n in _objects(data, at)}
    if how == "object past the end":
        struct.pack_into("<Q", data, objects[1][0] + 8, 4096)
    elif how == "collection past the file":
        struct.pack_into("<Q", data, at + 8, len(data))
    elif how == "collection too large":
        data += bytes((64 << 20) + 4096 - (len(data) - at))  # the file holds it: only the bound refuses it
        struct.pack_into("<Q", data, at + 8, (64 << 20) + 8)
    elif how == "not a collection":
        data[at : at + 4] = b"GCOX"
    elif how in ("index absent", "length not the object's"):
        i = data.index(struct.pack("<IQI", 7, at, 3))  # row 0's heap ID: "train/0", object 3
        struct.pack_into("<IQI", data, i, *((7, at, 42) if how == "index absent" else (9, at, 3)))
    elif how == "collection inside another":  # row 1's heap ID names a "collection" starting inside row 0's
        first = data.index(struct.pack("<IQ", 7, at))
        second = data.index(struct.pack("<IQ", 7, at), first + 16)
        struct.pack_into("<Q", data, second + 4, at + 16)
    elif how == "free space odd":
        struct.pack_into("<Q", data, objects[0][0] + 8, objects[0][1] - 8)  # 8 bytes left: too few for a header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how, said",
    [
        ("object past the end", "holds object 1 at byte 16 of 4,096 bytes, past its end (4,096 bytes)"),
        ("collection past the file", "bytes, outside 4,096..67,108,864 or past the file's end"),
        ("collection too large", "is 67,108,872 bytes, outside"),
        ("not a collection", "is not a version 1 GCOL collection"),
        ("index absent", "object 42 of the collection at"),
        ("length not the object's", "object 3 of the collection at"),
        ("free space odd", "ends in 8 bytes of free space after its free-space object"),
        ("collection inside another", "starts inside the collection before it"),  # attack 27 #1
    ],
)
def test_each_damage_hdf5_would_misread_is_refused_in_one_line(tmp_path, how, said):
    """What HDF5 would loop in, run past, read from a null pointer (an index the collection lacks) or copy past the
    buffer it sized by the heap ID (an object longer than the ID says): one line before HDF5 reads a path."""
    path = _store(tmp_path / "s.h5")
    _edit_paths_heap(path, how)
    with pytest.raises(StoreError) as err:
        FeatureStore(path).paths("train")
    assert DAMAGED in str(err.value) and said in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "how",
    [
        "object past the end", "collection past the file", "not a collection", "index absent",
        "length not the object's", "free space odd", "collection inside another", "genuine",
    ],
)  # fmt: skip
def test_a_few_heap_ids_are_checked_as_many_are(tmp_path, monkeypatch, how):
    """gheap.check walks an attribute's few heap IDs in Python (numpy's fixed cost was most of an opening's attribute
    reads): the same collections, the same first refusal, word for word, as the numpy walk of a column's."""
    path = _store(tmp_path / "s.h5")
    if how != "genuine":
        _edit_paths_heap(path, how)
    said, few = [], []
    real = gheap._check_few
    monkeypatch.setattr(gheap, "_check_few", lambda *a: few.append(1) or real(*a))
    for most in (gheap._FEW, 0):  # 0: every check walks with numpy
        monkeypatch.setattr(gheap, "_FEW", most)
        try:
            said.append(FeatureStore(path).paths("train"))
        except StoreError as exc:
            said.append(str(exc))
        assert bool(few) == bool(most), "a few IDs walked with numpy, or none with it"
        few.clear()
    assert said[0] == said[1], said
    assert (DAMAGED in str(said[0])) == (how != "genuine"), said[0]


def _write(path, paths: list[str], names: list[str]) -> None:
    """A complete split of ``paths`` (one row each), written as an extraction writes it (write_arrays names its own)."""
    X, y = np.zeros((len(paths), 2), np.float32), np.arange(len(paths)) % len(names)
    attrs = synthetic_attrs(X.shape[1:], "float32")
    split_attrs = {"class_names": names, "source_root": "", "n_images": len(y), "n_ignored": 0}
    split_attrs |= {"listing_sha256": "arrays", "batch_size": 8192, "compression": "none"}
    w, digest = SplitWriter(StoreFile(path), ["s"], "train"), RowsDigest(X.shape[1:], "float32")
    w.prepare([attrs], split_attrs, overwrite=True)
    for i in range(0, len(y), 8192):
        digest.update(X[i : i + 8192], y[i : i + 8192])
        w.commit([X[i : i + 8192]], y[i : i + 8192], paths[i : i + 8192], [], min(i + 8192, len(y)))
    w.finish(0.0, attrs={"rows_sha256": digest.hexdigest()})


@pytest.mark.parametrize(
    "n_rows, n_classes",
    [(1, 1), (40, 1500), (100_000, 3)],
    ids=["1 class", "1,500 classes (dense attributes)", "100k unicode paths"],
)
def test_genuine_stores_read_exactly_as_before(tmp_path, monkeypatch, n_rows, n_classes):
    """Genuine stores read as written (unicode paths and class names), check finds nothing, and every collection the
    strings name was walked once (kept for the command: 100k paths read in blocks and openings walk each once)."""
    paths = [f"imgs/é{i % 7}/日本 {i}.png" for i in range(n_rows)]
    names = [f"clé {i} 日本" for i in range(n_classes)]
    _write(tmp_path / "s.h5", paths, names)
    walks, real = [], gheap._walk
    monkeypatch.setattr(gheap, "_walk", lambda data, length: walks.append(len(data)) or real(data, length))
    fs = FeatureStore(tmp_path / "s.h5")
    got = [p for a in range(0, n_rows, 30_000) for p in fs.paths("train", start=a, stop=a + 30_000)]
    assert got == paths
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert read_names(f["s/train"], "class_names", "w") == names
    assert check_store(tmp_path / "s.h5") == [] and "classes (" in store_tree(str(tmp_path / "s.h5"))
    data = (tmp_path / "s.h5").read_bytes()
    assert len(walks) == data.count(b"GCOL") and sum(walks) < len(data), (len(walks), data.count(b"GCOL"))


FUZZ_CASES = 15  # about 3 s; benchmarks/heap_fuzz.py runs more (--cases 300: 75 s)


def fuzz_case(path, readers) -> str:
    """Run each reader on the store at ``path`` (a damaged one): "ok", or the first line featstore refused it with;
    anything else (another exception) propagates."""
    for read in readers:
        try:
            read(path)
        except StoreError as exc:
            assert "\n" not in str(exc) and "Traceback" not in str(exc)
            return str(exc)
    return "ok"


READERS = (
    lambda p: store_tree(str(p)),
    check_store,
    lambda p: FeatureStore(p).paths("train"),
    lambda p: FeatureStore(p).load("train"),
)


def flips(data: bytes, rng: random.Random, n: int):
    """``n`` copies of ``data``, each with 1 to 4 random bits flipped in its heap collections' bytes in use (headers and
    strings, to the free-space object's header: flips in the free bytes after it change nothing HDF5 reads)."""
    spans = [(a, _objects(data, a)[-1][1] + 16) for a in _starts(data)]
    for _ in range(n):
        d = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            a, b = rng.choice(spans)
            d[rng.randrange(a, b)] ^= 1 << rng.randrange(8)
        yield bytes(d)


def _starts(data: bytes) -> list[int]:
    out, i = [], 0
    while (i := data.find(b"GCOL", i)) >= 0:
        out.append(i)
        i += 4
    return out


def test_random_bit_flips_in_the_heap_never_hang_and_are_one_line_or_fine():
    """Random flips in the global heap's bytes of a small store (benchmarks/heap_fuzz.py, in a child process: a hang
    there ends it with its traceback): info, check, paths and load each end, in a bounded time, either fine or with
    featstore's one-line error (any other exception fails the run), and some flips are refused as a damaged heap."""
    script = str(Path(__file__).parents[1] / "benchmarks" / "heap_fuzz.py")
    code, out = _child(script, "--cases", str(FUZZ_CASES), "--limit", "20")
    assert code == 0 and f"{FUZZ_CASES} cases (seed 19)" in out, out[-3000:]
    assert int(out.split("damaged heap")[1].split()[0]) > 0, out


def _compact_paths(path, rows: list[str]) -> None:
    """A file holding ``paths``, a compact dataset of strings (featstore never writes one; HDF5 keeps its heap IDs in
    its object header)."""
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        tid = h5py.h5t.py_create(h5py.string_dtype(), logical=True)
        ds = h5py.Dataset(h5py.h5d.create(f.id, b"paths", tid, h5py.h5s.create_simple((len(rows),)), dcpl=dcpl))
        ds[...] = np.array(rows, dtype=object)


def test_a_compact_column_is_measured_and_checked_from_its_header_and_another_driver_refused(tmp_path):
    """A compact string column was read row by row through HDF5 (which would loop in a damaged heap): its heap IDs
    are now read from its object header, measured and checked like a chunked column's; another HDF5 driver, whose
    bytes cannot be read directly, is refused naming it, as for attributes."""
    from featstore.store.strings import refuse_long, vlen_lengths

    rows = [f"img/é{i}.png" for i in range(50)]
    _compact_paths(tmp_path / "c.h5", rows)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["paths"].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
        assert vlen_lengths(f["paths"], 3, 50).tolist() == [len(r.encode()) for r in rows[3:]]
    with h5py.File(tmp_path / "c.h5", "r", driver="core") as f, pytest.raises(StoreError, match="'core' driver"):
        refuse_long(f["paths"], 0, 50)
    _zero_free_space(tmp_path / "c.h5", b"img/\xc3\xa90.png")
    with h5py.File(tmp_path / "c.h5", "r") as f, pytest.raises(StoreError, match=f"c.h5:/paths: row 3 {DAMAGED}"):
        refuse_long(f["paths"], 3, 50)
