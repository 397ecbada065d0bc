"""Attack 36 #6: Keras's download cache (``KERAS_HOME``, often shared by a team or a cluster). Keras looked the cached
ImageNet weights up by name and hashed whatever was there: a colleague's link to /dev/zero (or his FIFO) at the file's
name was read for ever, and ``extract --model vgg16`` hung without a line. Each file Keras asks for is now held as
``--weights`` files are, checked against Keras's published hash, and handed to Keras by its private name. The cached
file here is a random-weight VGG16 saved in Keras's legacy layout (the real one cannot be downloaded in the suite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featstore.errors import WeightsError
from featstore.models.backbones import get_backbone
from featstore.models.weights import load_base, sha256_file

COLLEAGUE = 54321
NOTOP = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.fixture(scope="module")
def saved_trunk(tmp_path_factory) -> Path:
    """A VGG16 trunk's weights in the layout Keras's cache holds (legacy HDF5, by layer name)."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path_factory.mktemp("trunk") / NOTOP
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """Keras's home (read once, at import) moved to a folder of the test's; its ``models/`` is the cache."""
    from keras.src.backend import config

    home = tmp_path / "keras"
    (home / "models").mkdir(parents=True)
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))
    return home / "models"


@pytest.mark.skipif(os.geteuid() != 0, reason="a link of another user's needs root to make")
def test_a_colleagues_link_in_a_shared_keras_cache_is_refused_in_one_line(keras_home, saved_trunk):
    link = keras_home / NOTOP
    link.symlink_to(saved_trunk)
    os.lchown(link, COLLEAGUE, -1)
    with pytest.raises(WeightsError) as err:
        load_base(get_backbone("vgg16"), 32, "imagenet")
    line = str(err.value)
    assert f"cached ImageNet weights file {link} leads through {link}, a symbolic link made by uid {COLLEAGUE}" in line
    assert "Two ways out" not in line, line  # its own line, not a failed download's


def test_a_cached_file_that_is_not_kerass_is_refused_and_a_genuine_one_loads_from_the_file_checked(
    keras_home, saved_trunk, monkeypatch
):
    from keras.src.utils import file_utils

    cached, keras_get_file = keras_home / NOTOP, file_utils.get_file
    os.link(saved_trunk, cached)
    with pytest.raises(WeightsError, match=f"cached ImageNet weights file {cached} is not the file Keras publishes"):
        load_base(get_backbone("vgg16"), 32, "imagenet")  # a random-weight trunk: not the published hash
    checked = []
    real = file_utils.validate_file
    monkeypatch.setattr(file_utils, "validate_file", lambda p, h, *a, **k: checked.append(p) or True)
    base, info = load_base(get_backbone("vgg16"), 32, "imagenet")
    assert checked and checked[0] != str(cached) and Path(checked[0]).name == NOTOP  # the held file's private name
    assert info.path == str(cached) and info.file_sha256 == sha256_file(saved_trunk), info
    assert file_utils.get_file is keras_get_file and file_utils.validate_file is not real  # Keras's own again


def test_a_fifo_at_the_cached_name_is_refused_never_opened(keras_home):
    """His FIFO there blocked Keras's hash check for ever. A writer thread feeds a few bytes to whoever opens it (so
    a regression reads them and fails on the hash instead of hanging the suite), and is let go at the end."""
    import threading

    fifo = keras_home / NOTOP
    os.mkfifo(fifo)

    def feed():
        fd = os.open(fifo, os.O_WRONLY)  # blocks until someone opens it for reading
        try:
            os.write(fd, b"not weights")
        except BrokenPipeError:  # the test's own opening at the end, closed at once
            pass
        finally:
            os.close(fd)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(WeightsError, match=f"cached ImageNet weights file {fifo} is a FIFO"):
            load_base(get_backbone("vgg16"), 32, "imagenet")
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # the writer's open returns (if nobody opened it)
        writer.join(5)


def test_a_missing_file_in_a_keras_cache_the_user_may_not_write_is_not_fetched_into_tmp(keras_home, monkeypatch):
    """Attack 38 #2: Keras's cache not writable (a team's, read-only to the user) and without the file: Keras fell back
    to /tmp/.keras, a folder any user may have made, and hashed a colleague's link to /dev/zero there for ever."""
    from featstore.models import weights

    home = keras_home.parent
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(home) else real(p, m, **k))
    monkeypatch.setattr(weights, "download_problem", lambda *a, **k: None)  # as behind a proxy: no probe
    with pytest.raises(WeightsError) as err:
        load_base(get_backbone("vgg16"), 32, "imagenet")
    line = str(err.value)
    assert (
        f"cached ImageNet weights file {keras_home / NOTOP} is missing, and Keras's cache {home} is not writable"
        in line
    )
    assert "Set KERAS_HOME to a folder of yours" in line and "Two ways out" not in line, line


def test_no_download_into_a_keras_cache_others_can_write(keras_home, monkeypatch):
    """Attack 38 #6: a team KERAS_HOME others may write, without the file: Keras downloads by name, and a colleague's
    link put at the name meanwhile had the download written through it onto any file of the user's."""
    from featstore.models import weights

    if os.geteuid() == 0:
        os.chown(keras_home, -1, 54320)  # a team's group (root's own group is a private one: not "others")
    keras_home.chmod(0o2775)  # group-writable (a team cache)
    monkeypatch.setattr(weights, "download_problem", lambda *a, **k: None)  # as behind a proxy: no probe
    with pytest.raises(WeightsError) as err:
        load_base(get_backbone("vgg16"), 32, "imagenet")
    line = str(err.value)
    assert f"and Keras would download it into {keras_home}, which other users can write" in line, line
    assert "Set KERAS_HOME to a folder only you can write" in line and "Two ways out" not in line, line


@pytest.mark.skipif(os.geteuid() != 0, reason="a link of another user's needs root to make")
def test_a_colleagues_link_at_the_keras_cache_folder_is_refused_before_any_lookup(tmp_path, keras_home, monkeypatch):
    """Attack 38 #8: KERAS_HOME's models/ a colleague's link to a folder of the user's: Keras downloaded through it."""
    from featstore.models import weights

    mine = tmp_path / "docs"
    mine.mkdir()
    keras_home.rmdir()
    keras_home.symlink_to(mine)
    os.lchown(keras_home, COLLEAGUE, -1)
    monkeypatch.setattr(weights, "download_problem", lambda *a, **k: None)
    with pytest.raises(WeightsError, match=f"Keras's cache folder {keras_home} leads through {keras_home}, a symbolic"):
        load_base(get_backbone("vgg16"), 32, "imagenet")
    assert list(mine.iterdir()) == []


def test_two_builds_in_threads_each_put_kerass_get_file_back(keras_home, saved_trunk, monkeypatch):
    """Attack 38 #9: two ImageNet builds at once in one process left featstore's wrapper of a finished build in place."""
    import threading

    from keras.src.utils import file_utils

    os.link(saved_trunk, keras_home / NOTOP)
    monkeypatch.setattr(file_utils, "validate_file", lambda *a, **k: True)
    keras_get_file, errors = file_utils.get_file, []

    def build():
        try:
            load_base(get_backbone("vgg16"), 32, "imagenet")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and file_utils.get_file is keras_get_file, errors
