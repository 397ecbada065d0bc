"""Attack 36 #1, #2.

#1: ``--model`` / ``--weights`` given through the user's own link to a file without a suffix (the Hugging Face hub
cache's ``snapshots/<rev>/model.keras -> ../../blobs/<sha256>``) were refused with a false reason naming the blob:
Keras picks the format by the name it is given, and featstore gave it one named after the blob. The name now comes
from the real file's ending, else the one the user gave, else the file's first bytes (:mod:`featstore.models.
file_format`); the ``--trust-model`` gate follows the same name.

#2: a folder the user may write in but not list (``0300``, a drop folder, a shared folder made ``a-r``) took no
output: opening it ``O_RDONLY`` (to make the write's private folder in it) needs read permission, and the EACCES was
said as "folder ... is not writable by you". The folder is now reached with ``O_PATH`` (it is never listed), and an
EACCES of a folder that is writable but not readable is said as what it is, with the fix. Root reads every folder:
there the kernel's EACCES is simulated, and a real ``chmod 0300`` is tried where the suite does not run as root.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from featstore import ConfigError, Extractor, ExtractorConfig, WeightsError, get_backbone
from featstore.caches import cache_folder
from featstore.models.saved import SavedModelSpec
from featstore.models.weights import load_base, sha256_file
from featstore.outputs import output_fix, write_text
from featstore.report.site.sitefolder import SiteFolder

EACCES = PermissionError(errno.EACCES, "Permission denied")


def _tiny_cnn():
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(2, activation="softmax", name="out")(keras.layers.Dense(8, name="hidden")(x))
    return keras.Model(inp, out)


def hub_cache(root: Path, source: Path, name: str) -> tuple[Path, Path]:
    """``source`` laid out as the Hugging Face hub cache lays a file: ``(snapshots/rev1/<name>, blobs/<sha>)``, the
    first the user's own relative link to the second."""
    blob = root / "blobs" / sha256_file(source)[:12]
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    link = root / "snapshots" / "rev1" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../../blobs") / blob.name)
    return link, blob


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    _tiny_cnn().save(folder / "cnn.keras")
    _tiny_cnn().save(folder / "legacy.h5")
    return folder


def test_a_model_through_a_link_to_a_blob_loads_and_is_named_as_given(models, tmp_path):
    link, blob = hub_cache(tmp_path, models / "cnn.keras", "model.keras")
    spec = SavedModelSpec.from_path(link)  # was: "<blob> is not a Keras model this Keras can load: File format not"
    assert spec.path == blob and spec.sha256 == sha256_file(blob) and spec.shown == link
    model, loaded = spec.build(16)
    assert model.count_params() > 0 and loaded.file_sha256 == spec.sha256
    # the store records the real file (the blob): a later predict or Ray worker reloads it by that name, suffix-less
    again = SavedModelSpec.from_path(blob)
    assert again.sha256 == spec.sha256
    with pytest.raises(ConfigError) as err:
        spec.build(32)
    assert str(link) in str(err.value) and blob.name not in str(err.value)  # the path the user gave, not the blob


def test_the_trust_model_gate_follows_the_name_keras_is_given(models, tmp_path):
    link, blob = hub_cache(tmp_path, models / "legacy.h5", "model.keras")
    with pytest.raises(ConfigError, match=r"legacy \.h5 model.*--trust-model"):
        SavedModelSpec.from_path(blob)  # no suffix: its bytes (HDF5, a legacy model) decide, and the gate holds
    assert SavedModelSpec.from_path(blob, trust_model=True).sha256 == sha256_file(blob)
    with pytest.raises(ConfigError, match="is not a Keras model .a .keras file is a zip") as err:
        SavedModelSpec.from_path(link, trust_model=True)  # named .keras by its user: read as one, never as legacy
    assert str(link) in str(err.value)


def test_weights_through_a_link_to_a_blob_load(vgg16_weights_file, tmp_path):
    link, blob = hub_cache(tmp_path, vgg16_weights_file, "vgg16.weights.h5")
    _, loaded = load_base(get_backbone("vgg16"), 32, str(link))  # was: "weights file <blob> does not fit vgg16"
    assert loaded.file_sha256 == sha256_file(blob) and loaded.path == str(blob)
    # what extract does: the configuration validated (the weights' real path recorded), then the model built from it
    from_link = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights=str(link)))
    seeded = Extractor(ExtractorConfig(model="vgg16", image_size=32, weights="none", seed=123))  # the fixture's
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(from_link(x), seeded(x))
    assert from_link.attrs["weights_sha256"] == sha256_file(blob)


def test_weights_that_do_not_fit_are_named_by_the_path_given(tmp_path):
    model = _tiny_cnn()
    model.save_weights(tmp_path / "small.weights.h5")
    link, blob = hub_cache(tmp_path / "hub", tmp_path / "small.weights.h5", "mnv2.weights.h5")
    with pytest.raises(WeightsError, match="does not fit vgg16") as err:
        load_base(get_backbone("vgg16"), 32, str(link))
    assert f"weights file {link} " in str(err.value)
    assert blob.name not in str(err.value).split(":")[0]  # Keras's own part may name its private link's folder


# --- #2: a folder the user may write in but not list -------------------------------------------------------------


def unlistable(monkeypatch, folder: Path) -> None:
    """``folder`` as an ordinary user sees a ``0300`` folder of theirs: made, entered and renamed in, never opened for
    reading (EACCES) nor listed. Root reads every folder: simulated there, real elsewhere."""
    folder.chmod(0o300)
    if os.geteuid() != 0:
        return
    real_open, real_scandir, real_listdir = os.open, os.scandir, os.listdir
    where = os.path.abspath(folder)

    def is_it(path) -> bool:
        return not isinstance(path, int) and os.path.abspath(os.fspath(path)) == where

    def opening(path, flags, *a, dir_fd=None, **k):
        if dir_fd is None and is_it(path) and not flags & getattr(os, "O_PATH", 0):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *a, dir_fd=dir_fd, **k)

    def listing(real):
        def listed(path=".", *a, **k):
            if is_it(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real(path, *a, **k)

        return listed

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "scandir", listing(real_scandir))
    monkeypatch.setattr(os, "listdir", listing(real_listdir))


def test_outputs_go_into_a_folder_that_cannot_be_listed(tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    drop.mkdir()
    unlistable(monkeypatch, drop)
    write_text(drop / "x.csv", "a,b\n", "--out")  # was: "folder drop is not writable by you; write to another folder"
    site = SiteFolder(drop / "rep", lambda exc, where: AssertionError(f"{where}: {exc}"))  # report --out drop/rep
    try:
        site.write_text("index.html", "<html></html>", "report page")
    finally:
        site.close()
    cache = cache_folder(drop / "s.h5.cache", "thumbs")  # a store in that folder: its report's and similar's caches
    monkeypatch.undo()
    drop.chmod(0o700)
    assert (drop / "x.csv").read_text() == "a,b\n" and (drop / "rep" / "index.html").is_file() and cache.is_dir()
    assert sorted(p.name for p in drop.iterdir()) == ["rep", "s.h5.cache", "x.csv"]  # no private folder left


def _access(monkeypatch, folder: Path, readable: bool, writable: bool) -> None:
    """``os.access`` of ``folder`` as an ordinary user would find it (root's says yes to everything)."""
    real = os.access

    def access(path, mode, *a, **k):
        if os.path.abspath(os.fspath(path)) != str(folder):
            return real(path, mode, *a, **k)
        return (readable or not mode & os.R_OK) and (writable or not mode & (os.W_OK | os.X_OK))

    monkeypatch.setattr(os, "access", access)


def test_a_folder_that_cannot_be_listed_is_said_so_with_its_fix(tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    drop.mkdir()
    drop.chmod(0o300)
    _access(monkeypatch, drop, readable=False, writable=True)
    line = output_fix(EACCES, drop / "x.csv")
    assert f"folder {drop} cannot be listed by you (mode 0300" in line and f"chmod u+r {drop} (it is yours)" in line
    assert "not writable" not in line
    from featstore.report.site.build import _not_writable

    report = str(_not_writable(drop / "rep", EACCES, drop))
    assert "cannot be listed by you" in report and "chmod u+r" in report and "not writable" not in report
    if os.geteuid() == 0:  # another user's folder (a shared one made a-r): its owner is asked, not chmod
        os.chown(drop, 54321, -1)
        assert "ask its owner, uid 54321, to let you read it" in output_fix(EACCES, drop / "x.csv")
    _access(monkeypatch, drop, readable=False, writable=False)  # a folder not writable is still said so
    assert output_fix(EACCES, drop / "x.csv") == f"folder {drop} is not writable by you; write to another folder"
