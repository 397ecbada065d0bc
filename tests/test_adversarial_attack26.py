"""Attack 26 (branch attack26, reproducers with two users there): a store name that is another user's symbolic link in
a team folder (#2), the lock advice for another user's lock file (#4), and the --overwrite advice for an interrupted
split (#1)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from featstore.errors import StoreError
from featstore.store.locking import open_h5, writer_lock
from featstore.store.reader import FeatureStore
from featstore.store.writer import synthetic_attrs, write_arrays

from .test_check_findings import _refuse

X = np.zeros((6, 4), np.float32)
Y = np.array([0, 0, 0, 1, 1, 1], np.int32)
OTHER = 54321  # a uid that is neither this process's nor the folder's


def _store(path, name="s", split="train"):
    write_arrays(path, name, split, X, Y, ["x", "y"], attrs=synthetic_attrs((4,)))
    return path


def test_a_link_another_user_made_at_the_store_name_is_never_written_through(tmp_path):
    """Sabotage: the ``refuse_foreign_link`` call in ``writer_lock`` removed fails it (the private store gains the
    split); the folder owner's link and this user's own link are written through as before."""
    (tmp_path / "home").mkdir()
    private = _store(tmp_path / "home" / "thesis.h5")
    before = private.read_bytes()
    team = tmp_path / "team"
    team.mkdir()
    link = team / "s.h5"
    link.symlink_to(private)
    os.lchown(link, OTHER, -1)  # a colleague's link (root may give it away: CI and this machine run as root)
    if os.lstat(link).st_uid != OTHER:
        pytest.skip("cannot give a link to another user here (not root)")
    with pytest.raises(StoreError) as err, writer_lock(link):
        pass
    text = str(err.value)
    assert text.startswith(f"store {link} is a symbolic link made by ") and "not by you" in text
    assert "give the real path with --store" in text
    with pytest.raises(StoreError, match="symbolic link made by"), open_h5(link, "a"):
        pass
    assert private.read_bytes() == before and FeatureStore(private).splits() == ["train"]
    os.chown(team, OTHER, -1)  # the folder's owner's link: they could put any file at that name anyway
    with writer_lock(link):
        pass
    os.chown(team, os.geteuid(), -1)
    os.lchown(link, os.geteuid(), -1)  # the user's own link: written through, as always
    with writer_lock(link):
        _store(link, split="val")
    assert sorted(FeatureStore(private).splits()) == ["train", "val"]


def test_another_users_lock_file_is_named_with_its_owner_not_the_folder(tmp_path, monkeypatch):
    """A colleague's <store>.lock the user may not write (EACCES) in a folder the user can write: the advice was "make
    the folder writable". Sabotage: ``_other_users_file`` returning None fails it."""
    path = _store(tmp_path / "s.h5")
    lock = tmp_path / "s.h5.lock"
    lock.touch()
    os.chown(lock, OTHER, -1)
    if os.stat(lock).st_uid != OTHER:
        pytest.skip("cannot give a file to another user here (not root)")
    cls, acquire = _refuse(errno.EACCES)
    monkeypatch.setattr(cls, "acquire", acquire)
    with pytest.raises(StoreError) as err, writer_lock(path):
        pass
    text = str(err.value)
    assert "you cannot write in the folder" not in text and "--no-locking" not in text, text
    assert "that lock file is " in text and "'s and you may not write it" in text
    assert "may be writing this store (or was killed and left it); once none runs, remove it (rm " in text


def test_the_overwrite_advice_for_an_interrupted_splits_bad_attribute_works(data_root, tiny_config, tmp_path):
    """`check` advises "Re-extract this split with --overwrite" for a crafted attribute of a split a killed run left;
    following it was refused with the same line, because the resume's compaction copied that split (attribute and all)
    before --overwrite replaced it. Sabotage: ``writer.compact(overwrite)`` given False in the pipeline fails it."""
    import h5py

    from featstore import extract
    from featstore.store.check import check_store

    store = tmp_path / "s.h5"
    extract(data_root, "train", store, tiny_config, batch_size=4)
    with h5py.File(store, "a") as f:  # the split as a killed run leaves it, plus one crafted attribute
        sg = f["vgg16"]["train"]
        n = int(sg.attrs["n_images"])
        sg.attrs["complete"] = False
        sg.attrs["commit"] = np.array([4, 0, 4], dtype=np.int64)
        sg.attrs["note"] = np.array(["x" * 70_000, "y"], dtype=h5py.string_dtype())
    findings = check_store(store)
    assert any("Re-extract this split with --overwrite" in f for f in findings), findings
    extract(data_root, "train", store, tiny_config, batch_size=4, overwrite=True)  # the advice, followed
    assert check_store(store) == [] and len(FeatureStore(store).load("train")[1]) == n


@pytest.mark.parametrize("link", ["split", "extractor", "root", "nested", "nested-copy"])
def test_an_augmented_group_linked_into_itself_is_one_line_not_a_copy_per_level(tmp_path, link):
    """``sg["augmented"] = sg`` (one h5py line) sent a resume's compaction into recursion: ~1,000 copies of the split (1
    GB from a 1 MB store), then Python's recursion limit and "Error in sys.excepthook" noise. Sabotage: the identity
    test in ``compact._copy_split`` removed fails every row (a RecursionError, or copies of copies)."""
    import h5py

    from featstore.store.compact import compact

    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "a") as f:
        sg = f["s/train"]
        target = {"split": sg, "extractor": f["s"], "root": f["/"]}.get(link)
        if target is None:  # copies of copies: an augmented group holding itself, or copies of its own
            aug = sg.create_group("augmented")
            for key in sg:
                if key != "augmented":
                    sg.copy(key, aug)
            if link == "nested":
                aug["augmented"] = aug
            else:
                inner = aug.create_group("augmented")
                for key in aug:
                    if key != "augmented":
                        aug.copy(key, inner)
        else:
            sg["augmented"] = target
    before = path.read_bytes()
    with pytest.raises(StoreError) as err:
        compact(path)
    assert "is not a split's augmented copies" in str(err.value) and "the store was not changed" in str(err.value)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s.h5"]


def test_a_missing_split_message_lists_a_few_of_many_splits(tmp_path):
    """ "has no split 'x'; it has: ..." listed every split of a store (30 splits of 200 characters: a 6,000-character
    line). Sabotage: ``names_text`` in ``metadata`` replaced by a plain join fails it."""
    path = tmp_path / "s.h5"
    for i in range(30):
        _store(path, split=f"s{i:02d}" + "x" * 190)
    with pytest.raises(StoreError) as err:
        FeatureStore(path).load("missing")
    text = str(err.value)
    assert "has no split 'missing'; it has: s00" in text and "(22 more)" in text and len(text) < 2_000, text
