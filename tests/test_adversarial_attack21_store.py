"""Attack 21 findings 15 and 16 (issue #19): a split of more than ~4,090 classes could not be written (HDF5's 64 KiB
object header message: class_names is one attribute), and a NUL in a class name or attribute reached h5py after the
extractor group was made. Synthetic arrays (write_arrays: the writer extract uses)."""

from __future__ import annotations

import numpy as np
import pytest

from featstore import FeatureStore
from featstore.errors import ConfigError
from featstore.store.check import check_store
from featstore.store.writer import write_arrays


def test_a_split_of_twenty_thousand_classes_is_written_and_read(tmp_path):
    """ImageNet-21k has 21,841 classes, iNaturalist 2021 10,000: 4,100 ended in "object header message is too
    large" with the store's earliest-format objects."""
    n = 21_841
    names = [f"n{i:08d}" for i in range(n)]
    X = np.zeros((n, 2), np.float32)
    write_arrays(tmp_path / "s.h5", "x", "train", X, np.arange(n), names, batch_size=4096)
    assert FeatureStore(tmp_path / "s.h5").class_names("x") == names
    assert check_store(tmp_path / "s.h5") == []


@pytest.mark.parametrize("where", ["class", "attr"])
def test_a_nul_in_a_name_is_refused_before_the_store_is_opened(tmp_path, where):
    names = ["cat\x00dog", "b"] if where == "class" else ["a", "b"]
    attrs = {"feature_shape": [2], "dtype": "float32", "note": "a\x00b"} if where == "attr" else None
    with pytest.raises(ConfigError, match="NUL character"):
        write_arrays(tmp_path / "s.h5", "x", "train", np.zeros((2, 2), np.float32), [0, 1], names, attrs=attrs)
    assert not (tmp_path / "s.h5").exists()  # nothing written, no empty group left


def test_a_store_of_twenty_thousand_classes_survives_compaction(tmp_path):
    """compact (run by every resume after a kill) rewrites the store into a fresh file: made with the earliest format,
    the copy of the class names failed as the first write did."""
    from featstore.store.compact import compact

    names = [f"n{i:08d}" for i in range(5_000)]
    write_arrays(tmp_path / "s.h5", "x", "train", np.ones((5_000, 2), np.float32), np.arange(5_000), names)
    compact(tmp_path / "s.h5")
    assert FeatureStore(tmp_path / "s.h5").class_names("x") == names
    assert check_store(tmp_path / "s.h5") == []


def test_a_store_with_a_large_attribute_of_any_kind_survives_compaction(tmp_path):
    """Attack 22 #2: a store written with h5py's newer formats (libver='latest') holding a 72 KB attribute made every
    compaction (so every resume) raise "object header message is too large"."""
    import h5py

    from featstore.store.compact import compact

    h5py.File(tmp_path / "s.h5", "w", libver="latest").close()  # its root group in the newer format
    write_arrays(tmp_path / "s.h5", "x", "train", np.ones((4, 2), np.float32), [0, 1, 0, 1], ["a", "b"])
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f.attrs["notes"] = np.zeros(9_000, np.float64)  # 72,000 bytes
    compact(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["notes"].shape == (9_000,)


def test_compaction_copies_a_listing_through_the_measured_reads(tmp_path):
    """Attack 22 #8: compaction copied a split's listing with HDF5's own object copy, which measures nothing: 800 rows
    whose heap IDs all name one 1 MiB string made a 2.2 MB store 840 MB (and 1.7 GB of memory), put in place of the
    store, before anything refused the column. Now the copy reads the column a block at a time through
    ``strings.refuse_long``: refused in one line, the store untouched. Sabotage: HDF5's copy back fails it."""
    import h5py

    from featstore.errors import StoreError
    from featstore.store.compact import compact
    from featstore.store.layout import STR

    path, rows, big = tmp_path / "s.h5", 64, 1 << 20
    write_arrays(path, "x", "train", np.ones((rows, 2), np.float32), np.arange(rows) % 2, ["a", "b"])
    with h5py.File(path, "a") as f:
        lg = f["x/train"].create_group("listing")
        paths = np.array(["x" * big] + [f"r{i}" for i in range(1, rows)], dtype=object)
        offset = lg.create_dataset("paths", data=paths, dtype=STR).id.get_offset()
        lg.create_dataset("labels", data=np.arange(rows, dtype=np.int32) % 2)
        for key in ("sizes", "mtimes_ns"):
            lg.create_dataset(key, data=np.ones(rows, np.int64))
    with open(path, "r+b") as fh:  # every row's 16-byte heap ID made row 0's: one 1 MiB string, 64 times
        fh.seek(offset)
        first = fh.read(16)
        fh.seek(offset)
        fh.write(first * rows)
    before = path.stat().st_size
    with pytest.raises(StoreError, match=r"listing/paths: row 0 holds a string of 1,048,576 bytes"):
        compact(path)
    assert path.stat().st_size == before


def test_compaction_never_chmods_or_renames_a_file_swapped_in_for_its_copy(tmp_path, monkeypatch):
    """Attack 23 #1: in a folder others can write, a link put at the compaction's temporary name once h5py closed the
    copy was chmodded by name (a colleague's private key opened to the group) and renamed over the store. The copy's
    permissions are set through a descriptor of the file h5py made, and a swapped name stops the compaction with the
    store untouched. The copy is now written in a private folder and renamed through descriptors
    (``featstore.renames``); swapped there anyway (only the user could), the rename refuses it. Sabotage: the identity
    comparison in ``featstore.renames.same_file`` removed fails it (the store becomes the link)."""
    import os

    from featstore.errors import StoreError
    from featstore.store import compact as compact_mod
    from featstore.store.space import compact_temporary

    path = tmp_path / "s.h5"
    write_arrays(path, "x", "train", np.ones((4, 2), np.float32), [0, 1, 0, 1], ["a", "b"])
    os.chmod(path, 0o660)
    key = tmp_path / "id_ed25519"
    key.write_text("secret\n")
    os.chmod(key, 0o600)
    before, real = path.read_bytes(), compact_mod._own_permissions

    def swap_then_set(fd, st, *bits):
        (tmp,) = tmp_path.glob(".s.h5.fs*.featstore-tmp/.s.h5.compact.tmp")
        os.unlink(tmp)
        os.symlink(key, tmp)  # what the colleague did between the copy's close and its chmod
        return real(fd, st, *bits)

    monkeypatch.setattr(compact_mod, "_own_permissions", swap_then_set)
    with pytest.raises(StoreError, match="was replaced by another file"):
        compact_mod.compact(path)
    assert os.stat(key).st_mode & 0o777 == 0o600 and path.read_bytes() == before
    assert not os.path.lexists(compact_temporary(path)) and not list(tmp_path.glob("*.featstore-tmp"))


def test_compaction_keeps_the_store_s_group(tmp_path):
    """Attack 23 #14: the compacted copy came back in its writer's primary group, so a store shared through its group
    locked the colleagues out after a resume. Sabotage: the ``fchown`` in ``_own_permissions`` removed fails it (run
    as a user not in the group, the group cannot be given and the writer's stays: skipped)."""
    import os

    from featstore.store.compact import compact

    path = tmp_path / "s.h5"
    write_arrays(path, "x", "train", np.ones((4, 2), np.float32), [0, 1, 0, 1], ["a", "b"])
    group = 4242 if os.geteuid() == 0 else next((g for g in os.getgroups() if g != os.getegid()), None)
    if group is None:
        pytest.skip("needs root or a second group of this user to give the store")
    os.chown(path, -1, group)
    compact(path)
    assert os.stat(path).st_gid == group
