"""Attack 29 #1, #2, #4: group listings and chunk indexes counted from the file's bytes before HDF5 walks them.

#1: a group's v1 B-tree (superblock v0, no checksums) whose internal nodes all point at one child made HDF5 list the
group's one member 32^(d+1) times: ``info`` minutes to hours, ``check`` "OK". #2: a chunk index (v1 B-tree, node type
1) so made counted 64^(d+1) chunks for one. #4: an extensible array chunk index whose header sets a huge index made
HDF5 look up every index below it. The crafted stores are the reproducers', smaller; each refusal is one line naming
the store, the object and the fix, and ``check`` lists it among its findings and goes on.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store import attr_ids, btree1, names, strings
from featstore.store.attr_dense import FileBytes, _lookup3
from featstore.store.btree1 import chunk_count
from featstore.store.check import check_store
from featstore.store.reader import FeatureStore
from featstore.store.storage import counted_chunks, missing_chunks
from featstore.store.writer import write_arrays

NEW_STORE = "extract into a new --store"
REDO = "Re-extract this split with --overwrite"


def _store(path, names=("syn",), splits=("train", "test"), k: int = 2, rows: int = 12):
    X = np.random.default_rng(0).normal(size=(rows, 8)).astype("float32")
    for n in names:
        for s in splits:
            write_arrays(path, n, s, X, np.arange(rows) % k, [f"c{i}" for i in range(k)])
    return path


def _addr(path, obj: str) -> int:
    with h5py.File(path, "r") as f:
        return h5py.h5g.get_objinfo(f[obj].id).objno[0]


def _message(b: bytes, header: int, kind: int) -> int:
    """Where the body of message ``kind`` of the version 1 object header at ``header`` starts (continuations followed)."""
    assert b[header] == 1
    chunks = [(header + 16, struct.unpack_from("<I", b, header + 8)[0])]
    while chunks:
        at, size = chunks.pop()
        end = at + size
        while at + 8 <= end:
            k, n = struct.unpack_from("<HH", b, at)
            if k == kind:
                return at + 8
            if k == 0x10:
                chunks.append(struct.unpack_from("<QQ", b, at + 8))
            at += 8 + n
    raise AssertionError(f"no message {kind:#x}")


def _tree(b: bytes, header: int, kind: int) -> tuple[int, int]:
    """(v1 B-tree address, key size) of a group's Symbol Table message (``kind`` 0) or a dataset's chunked layout
    message, version 3 (``kind`` 1)."""
    if kind == 0:
        return struct.unpack_from("<Q", b, _message(b, header, 0x11))[0], 8
    at = _message(b, header, 0x08)
    assert b[at : at + 2] == b"\x03\x02", "not a version 3 chunked layout"
    return struct.unpack_from("<Q", b, at + 3)[0], 8 + 8 * b[at + 2]


def _chain(path, obj: str, depth: int, out, kind: int = 0, width: int = 32, step: int = 1) -> Path:
    """The reproducers' technique: the v1 B-tree of group (``kind`` 0) or chunked dataset (1) ``obj``, one level-0
    node of one child, rewritten as a chain of ``depth`` nodes above it, each of ``width`` children all pointing at
    the next (the last at the original child), keys kept; each node's level ``step`` over its child's. EOF updated."""
    b = bytearray(Path(path).read_bytes())
    tree, ks = _tree(b, _addr(path, obj), kind)
    assert b[tree : tree + 8] == b"TREE" + bytes([kind, 0]) + b"\x01\x00"
    k0, child, k1 = (b[tree + 24 + a : tree + 24 + a + n] for a, n in ((0, ks), (ks, 8), (ks + 8, ks)))

    def node(level: int, to: bytes) -> bytes:  # HDF5 reads a node's whole size: 2K entries (32 a group's, 64 chunks')
        out = b"TREE" + bytes([kind, level]) + struct.pack("<H", width) + b"\xff" * 16 + k0 + (to + k1) * width
        return out.ljust(24 + (32 << kind) * (8 + ks) + ks, b"\0")

    for level in range(depth):
        at = len(b)
        b += node(level * step, child)
        child = struct.pack("<Q", at)
    top = node(depth * step, child)
    b[tree : tree + len(top)] = top  # the node's own space holds 2K entries: the rewrite fits in place
    struct.pack_into("<Q", b, 0x28, len(b))  # superblock v0: end-of-file address
    Path(out).write_bytes(bytes(b))
    return Path(out)


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --- #1: a group's listing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1])
def test_a_root_whose_btree_repeats_one_child_is_refused_at_opening(tmp_path, depth):
    """32 (depth 0, no byte added) or 1,024 (depth 1) copies of /syn in HDF5's listing: refused in one line before
    HDF5 lists the root, naming the store, the group and the fix; ``check`` lists it and says nothing is OK."""
    bad = _chain(_store(tmp_path / "s.h5"), "/", depth, tmp_path / "bad.h5")
    with h5py.File(bad, "r") as f:
        assert len(list(f)) == 32 ** (depth + 1)  # what HDF5 lists: the attack is real
    with pytest.raises(StoreError) as exc:
        FeatureStore(bad)
    text = _one_line(exc)
    assert str(bad) in text and "/: its members are refused" in text and NEW_STORE in text
    assert ("its symbol node at" if depth == 0 else "its node at") in text and "twice" in text
    problems = check_store(bad)
    assert len(problems) == 1 and problems[0].startswith("/: its members are refused") and NEW_STORE in problems[0]


def test_a_split_group_so_made_is_a_finding_and_check_goes_on(tmp_path):
    """/syn/train's own listing repeats: ``check`` names it (once) and still checks /syn/test (its damage is found)."""
    base = _store(tmp_path / "s.h5")
    with h5py.File(base, "r+") as f:
        f["syn/test/labels"][0] = 50  # a second problem, in the split beside it
    bad = _chain(base, "/syn/train", 1, tmp_path / "bad.h5")
    problems = check_store(bad)
    listing = [p for p in problems if "its members are refused" in p]
    assert len(listing) == 1 and listing[0].startswith("/syn/train: ") and NEW_STORE in listing[0]
    assert (
        "/syn/test: 1 labels outside 0..1; write the split again from its arrays (write_arrays replaces it)" in problems
    )
    with pytest.raises(StoreError, match="/syn/train: its members are refused"):
        FeatureStore(bad)


def test_a_level_that_does_not_decrease_by_one_is_refused(tmp_path):
    """A node of level 2 over a node of level 0 (no node repeated: one child each): refused, naming the levels."""
    bad = _chain(_store(tmp_path / "s.h5"), "/", 1, tmp_path / "bad.h5", width=1, step=2)
    with h5py.File(bad, "r") as f:
        assert list(f) == ["syn"]  # HDF5 itself lists it: only the rule refuses it
    with pytest.raises(StoreError, match="of level 0 under a node of level 2"):
        FeatureStore(bad)


def test_a_name_listed_twice_is_refused(tmp_path):
    """Two extractors whose symbol entries name one string of the heap: HDF5 lists 'a' twice."""
    path = _store(tmp_path / "s.h5", names=("a", "b"), splits=("train",))
    b = bytearray(path.read_bytes())
    snod = b.find(b"SNOD", _stab_tree_addr(b, path))
    assert struct.unpack_from("<H", b, snod + 6)[0] == 2
    first = struct.unpack_from("<Q", b, snod + 8)[0]
    struct.pack_into("<Q", b, snod + 8 + 40, first)  # entry 2's name offset: entry 1's
    path.write_bytes(bytes(b))
    with h5py.File(path, "r") as f:
        assert list(f) == ["a", "a"]
    with pytest.raises(StoreError, match="its listing names b'a' twice"):
        FeatureStore(path)
    assert any("names b'a' twice" in p for p in check_store(path))


def _stab_tree_addr(b: bytes, path) -> int:
    return _tree(b, _addr(path, "/"), 0)[0]


@pytest.mark.parametrize("k", [1, 1500])
def test_a_group_over_the_bound_is_refused_genuine_ones_are_not(tmp_path, monkeypatch, k):
    """Genuine stores (libver earliest, and v108 for 1,500 classes: 9 extractors, one of 9 splits, so dense link
    indexes) are listed as HDF5 lists them; a group of more links than MAX_LINKS is refused before it is listed."""
    path = _store(tmp_path / "s.h5", names=[f"e{i}" for i in range(1, 9)], splits=["s0"], k=k, rows=4)
    _store(path, names=["e0"], splits=[f"s{i}" for i in range(9)], k=k, rows=4)
    with h5py.File(path, "r") as f:
        fh = FileBytes(f)
        for g in ["/", "/e0", "/e0/s8", "/e8/s0"]:
            links = btree1.object_links(fh, _addr(path, g))
            assert sorted(n.decode() for n, _ in links) == sorted(f[g])
    assert check_store(path) == []
    assert len(FeatureStore(path).load("s8", "e0")[0]) == 4
    monkeypatch.setattr(btree1, "MAX_LINKS", 8)
    monkeypatch.setattr(names, "_WALKED", {})  # the walks this file's state was found sound in
    with pytest.raises(StoreError, match="/: its members are refused .*over 8 links"):
        FeatureStore(path)


# --- #2, #4: a chunk index ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 2])
def test_a_chunk_btree_repeating_one_child_is_refused_before_hdf5_counts_it(tmp_path, depth):
    """/syn/train/features' chunk index rewritten so: one leaf naming its one chunk 64 times (depth 0), or two levels
    of 64 children over it (HDF5 counts 64^3). Refused in one line naming the dataset and the fix; ``check`` lists it
    and still checks /syn/test, which loads."""
    bad = _chain(_store(tmp_path / "s.h5", rows=4), "/syn/train/features", depth, tmp_path / "bad.h5", kind=1, width=64)
    with h5py.File(bad, "r") as f:
        assert f["syn/train/features"].id.get_num_chunks() == 64 ** (depth + 1)  # what HDF5 walks
    store = FeatureStore(bad)
    with pytest.raises(StoreError) as exc:
        store.load("train")
    text = _one_line(exc)
    assert "syn/train/features: its chunk index cannot be counted before HDF5 walks it" in text and REDO in text
    assert ("twice" if depth else "over 1 chunks") in text
    assert len(store.load("test")[0]) == 4
    problems = check_store(bad)
    assert len(problems) == 1 and problems[0].startswith("/syn/train/features: its chunk index") and REDO in problems[0]


def test_a_path_columns_chunk_index_is_counted_before_hdf5_walks_it(tmp_path):
    """strings._chunk_places (what measures a column's strings before a row is read) counts the index first."""
    bad = _chain(_store(tmp_path / "s.h5", rows=4), "/syn/train/paths", 1, tmp_path / "bad.h5", kind=1, width=64)
    with h5py.File(bad, "r") as f, pytest.raises(StoreError, match="syn/train/paths: its chunk index .*twice"):
        strings.vlen_lengths(f["syn/train/paths"], 0, 4)


def test_genuine_chunk_indexes_are_counted_as_hdf5_counts_them(tmp_path):
    """A v1 B-tree of 10,000 chunks (three levels), some chunks never written, and the newer formats' indexes (libver
    latest: fixed and extensible arrays, a v2 B-tree, a single chunk) are counted as HDF5 counts them."""
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("x", data=np.ones((100_000, 2), "f4"), chunks=(10, 2), maxshape=(None, 2))
        d = f.create_dataset("y", (1000, 2), "f4", chunks=(10, 2), maxshape=(None, 2))
        d[:500], d[700:] = 1, 2
    with h5py.File(tmp_path / "l.h5", "w", libver="latest") as f:
        f.create_dataset("fa", data=np.ones((100, 8), "f4"), chunks=(10, 8))
        f.create_dataset("ea", (100, 8), "f4", chunks=(10, 8), maxshape=(None, 8))[:50] = 1
        f.create_dataset("bt2", data=np.ones((100, 8), "f4"), chunks=(10, 4), maxshape=(None, None))
        f.create_dataset("one", data=np.ones((10, 8), "f4"), chunks=(10, 8))
    for path in ("e.h5", "l.h5"):
        with h5py.File(tmp_path / path, "r") as f:
            for ds in f.values():
                assert counted_chunks(ds, ds.name) == ds.id.get_num_chunks() > 0
    with h5py.File(tmp_path / "e.h5", "r") as f:
        assert chunk_count(FileBytes(f), _addr(tmp_path / "e.h5", "x"), 10_000, 10_000) == 10_000
        with pytest.raises(btree1.Unparsed, match="over 9,999 chunks"):
            chunk_count(FileBytes(f), _addr(tmp_path / "e.h5", "x"), 9_999, 9_999)
        assert missing_chunks(f["y"], 1000) == (20, 100)  # rows 500..699 never written


def _latest_features(path) -> None:
    """The reproducer's: /syn/train/features re-made with the same rows by h5py with libver latest (an extensible
    array chunk index, layout message version 4)."""
    with h5py.File(path, "a", libver="latest") as f:
        g = f["syn/train"]
        X, attrs = g["features"][:], dict(g["features"].attrs)
        del g["features"]
        d = g.create_dataset("features", data=X, chunks=(4, 8), maxshape=(None, 8))
        d.attrs.update(attrs)


def test_an_extensible_array_whose_header_sets_a_huge_index_is_refused(tmp_path):
    """The EAHD's max_idx_set (what HDF5 looks up every index below) set to 1e8, checksum recomputed: refused, as
    over the 3 chunks of 12 rows; the honest one is read."""
    path = _store(tmp_path / "s.h5")
    _latest_features(path)
    assert len(FeatureStore(path).load("train")[0]) == 12 and check_store(path) == []
    b = bytearray(path.read_bytes())
    at = b.find(b"EAHD")
    assert at > 0 and struct.unpack_from("<I", b, at + 68)[0] == _lookup3(bytes(b[at : at + 68]))
    struct.pack_into("<Q", b, at + 44, 10**8)
    struct.pack_into("<I", b, at + 68, _lookup3(bytes(b[at : at + 68])))
    path.write_bytes(bytes(b))
    with pytest.raises(StoreError) as exc:
        FeatureStore(path).load("train")
    assert "counts 100,000,000 chunks where its extent allows 3" in _one_line(exc) and REDO in str(exc.value)
    assert any("counts 100,000,000 chunks" in p for p in check_store(path))


# --- #1 in the newer link storage (libver v108: over 8 links, a dense link index) ---------------------------------------


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A 1,500-class store (libver v108) whose extractor holds 9 splits: its links in a dense index."""
    return _store(tmp_path_factory.mktemp("dense") / "s.h5", splits=[f"s{i}" for i in range(9)], k=1500, rows=4)


def _link_index(path, group: str) -> int:
    with h5py.File(path, "r") as f:
        fh = FileBytes(f)
        body = next(b for k, b in attr_ids._messages(fh, _addr(path, group)) if k == 0x02)
    return int.from_bytes(body[2 + (8 if body[1] & 1 else 0) + 8 :][:8], "little")


def _rewrite_names(path, out, leaf_of, m: int = 0) -> Path:
    """The dense link name index of /syn (a v2 B-tree of one leaf) rewritten, checksums as HDF5 verifies them (the
    attack 26 tests' technique): one leaf of ``leaf_of(records)``; with ``m``, an internal root of ``m`` separators
    (the leaf's last record) whose ``m + 1`` children are all that leaf."""
    hd, data = _link_index(path, "/syn"), bytearray(Path(path).read_bytes())
    node, depth, root, n = (
        int.from_bytes(data[hd + a : hd + b], "little") for a, b in ((6, 10), (12, 14), (16, 24), (24, 26))
    )
    assert depth == 0 and data[root : root + 4] == b"BTLF"
    leaf = leaf_of([data[root + 6 + 11 * j : root + 17 + 11 * j] for j in range(n)])
    body = b"BTLF\x00\x05" + b"".join(leaf)
    leaf_at = root_at = len(data)
    data += (body + _lookup3(body).to_bytes(4, "little")).ljust(node, b"\0")
    if m:
        root_at = len(data)
        inner = b"BTIN\x00\x05" + leaf[-1] * m + (leaf_at.to_bytes(8, "little") + bytes([len(leaf)])) * (m + 1)
        data += (inner + _lookup3(inner).to_bytes(4, "little")).ljust(node, b"\0")
    data[hd + 12 : hd + 14] = (1 if m else 0).to_bytes(2, "little")
    data[hd + 16 : hd + 24] = root_at.to_bytes(8, "little")
    data[hd + 24 : hd + 26] = (m or len(leaf)).to_bytes(2, "little")
    data[hd + 26 : hd + 34] = (m + (m + 1) * len(leaf)).to_bytes(8, "little")
    data[hd + 34 : hd + 38] = _lookup3(bytes(data[hd : hd + 34])).to_bytes(4, "little")
    data[28:36] = len(data).to_bytes(8, "little")  # superblock v2: end of file, checksum
    data[44:48] = _lookup3(bytes(data[:44])).to_bytes(4, "little")
    Path(out).write_bytes(bytes(data))
    return Path(out)


@pytest.mark.parametrize("m", [0, 3])
def test_a_dense_link_index_listing_a_split_twice_is_refused(dense, tmp_path, m):
    """/syn's name index made a leaf of its 9 records twice over (m 0), or an internal node whose 4 children are one
    leaf (m 3): HDF5 lists 18 or 39 splits; refused before it lists one, the genuine store read as before."""
    assert check_store(dense) == [] and len(FeatureStore(dense).load("s8")[0]) == 4
    bad = _rewrite_names(dense, tmp_path / "bad.h5", lambda records: records * (1 if m else 2), m)
    with h5py.File(bad, "r") as f:
        assert len(list(f["syn"])) == (18 if not m else 39)
    with pytest.raises(StoreError) as exc:
        FeatureStore(bad)
    text = _one_line(exc)
    assert "/syn: its members are refused" in text and ("twice" in text or "one heap object" in text)
    assert any(p.startswith("/syn: its members are refused") for p in check_store(bad))


@pytest.mark.parametrize("obj, kind", [("/", 0), ("/syn/train/features", 1)])
def test_a_node_that_is_its_own_child_is_one_line_not_a_crash(tmp_path, obj, kind):
    """Attack 29 #10: a level-1 node whose one child is itself made HDF5 recurse until the C stack overflowed (every
    command died of SIGSEGV, printing nothing). ``check`` is run in its own process: it names the object and ends."""
    path = _store(tmp_path / "s.h5", rows=4)
    b = bytearray(path.read_bytes())
    tree, ks = _tree(b, _addr(path, obj), kind)
    b[tree + 5 : tree + 8] = b"\x01\x01\x00"  # level 1, one child
    b[tree + 24 + ks : tree + 32 + ks] = struct.pack("<Q", tree)  # ... itself
    path.write_bytes(bytes(b))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    r = subprocess.run(
        [sys.executable, "-m", "featstore.cli", "check", str(path)], env=env, capture_output=True, text=True
    )
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    named = "/: its members are refused" if kind == 0 else "/syn/train/features: its chunk index cannot be counted"
    assert f"problem: {named}" in r.stdout and "twice" in r.stdout, r.stdout


def test_two_names_of_one_object_are_refused(tmp_path):
    """Attack 29 #7: /syn/test made a hard link to /syn/train (one h5py line) passed every reader, and ``fit`` scored
    the training rows as the test split; a split's labels shared with another's likewise. Refused at opening;
    ``check`` names it and goes on."""
    path = _store(tmp_path / "s.h5")
    linked = tmp_path / "linked.h5"
    linked.write_bytes(path.read_bytes())
    with h5py.File(linked, "a") as f:
        del f["syn/test"]
        f["syn/test"] = f["syn/train"]
    with pytest.raises(StoreError) as exc:
        FeatureStore(linked)
    assert "/syn/train is the object /syn/test is (two names of one HDF5 object" in _one_line(exc), str(exc.value)
    with h5py.File(path, "a") as f:
        f["syn/test/labels"][0] = 50  # a second problem: still found
        del f["syn/test/paths"]
        f["syn/test/paths"] = f["syn/train/paths"]
    problems = check_store(path)
    assert any(p.startswith("/syn/test/paths is the object /syn/train/paths is") for p in problems), problems
    assert (
        "/syn/test: 1 labels outside 0..1; write the split again from its arrays (write_arrays replaces it)" in problems
    )


def test_a_root_of_over_1024_groups_is_refused_before_one_is_opened(tmp_path):
    """Attack 29 #8: 12,000 empty groups at the root (4 MB) made ``info`` take 27 s and print 36,000 lines."""
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        for i in range(btree1.MAX_LINKS):
            f.create_group(f"g{i:06d}")
    with pytest.raises(StoreError, match=r"/: its members are refused .*over 1,024 links"):
        FeatureStore(path)
    problems = check_store(path)
    assert len(problems) == 1 and "over 1,024 links" in problems[0] and NEW_STORE in problems[0]


def test_a_leaf_naming_one_chunk_twice_is_refused(tmp_path):
    """A chunk lost (rows 4..7 never written, as after a power loss: refused as missing) hidden by a leaf that names
    chunk 0 twice: HDF5 counts 3 of 3 chunks, and the lost rows would read back as zeros. Refused as such."""
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        g = f["syn/train"]
        X, attrs = g["features"][:], dict(g["features"].attrs)
        del g["features"]
        d = g.create_dataset("features", (12, 8), "f4", chunks=(4, 8), maxshape=(None, 8))
        d.attrs.update(attrs)
        d[:4], d[8:] = X[:4], X[8:]
    assert any("1 of the 3 chunks" in p for p in check_store(path))
    b = bytearray(path.read_bytes())
    tree, ks = _tree(b, _addr(path, "/syn/train/features"), 1)
    assert struct.unpack_from("<H", b, tree + 6)[0] == 2
    body = b[tree + 24 : tree + 24 + 2 * (ks + 8) + ks]
    new = body[: ks + 8] + body  # key 0, chunk 0, key 0, chunk 0, key 1, chunk 2, key 2
    b[tree + 6 : tree + 8] = struct.pack("<H", 3)
    b[tree + 24 : tree + 24 + len(new)] = new
    path.write_bytes(bytes(b))
    with h5py.File(path, "r") as f:
        assert f["syn/train/features"].id.get_num_chunks() == 3  # every chunk of the extent, for HDF5
    problems = check_store(path)
    assert len(problems) == 1 and "names one chunk twice" in problems[0] and REDO in problems[0], problems
