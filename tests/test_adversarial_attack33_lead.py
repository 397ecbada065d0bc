"""Attack 33 (on the fixes of attacks 31 and 32) findings fixed by the lead."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from featstore.images.decode import ImageError, load_image


@pytest.mark.skipif(not hasattr(os, "O_PATH") or not os.path.isdir("/proc/self/fd"), reason="needs O_PATH and /proc")
def test_an_image_swapped_for_a_device_link_before_its_opening_is_never_opened(tmp_path, monkeypatch):
    """Attack 33 #2 (a regression of attack 31 #1's fix): ``open_image_file`` looked at the name, then opened it following
    links and checked the link rule after: a colleague's link to a device swapped in between had the device opened
    (its driver's open can have effects: a watchdog, a serial line). The name is now reached with ``O_PATH`` (no
    driver is called), checked there, and only a regular file is opened for reading, through ``/proc/self/fd``.
    Sabotage: ``open_image_file`` calling ``_open_by_name`` fails it (the swapped name is opened for reading)."""
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    real, reads = os.open, []

    def hooked(name, flags, *a, **k):
        if os.fspath(name) == str(image) and not (image.is_symlink()):
            image.unlink()
            image.symlink_to("/dev/null")  # the swap, just before featstore's own opening
        if not flags & getattr(os, "O_PATH", 0) and (
            os.fspath(name) == str(image) or os.path.realpath(os.fspath(name)) == "/dev/null"
        ):
            reads.append(os.fspath(name))
        return real(name, flags, *a, **k)

    monkeypatch.setattr(os, "open", hooked)
    with pytest.raises(ImageError, match="device"):
        load_image(image, 4)
    monkeypatch.undo()
    assert reads == []  # the device was never opened for reading


OTHER = 54321  # the colleague's uid


def _foreign_link(link, target) -> None:
    link.symlink_to(target)
    os.lchown(link, OTHER, -1)
    if os.lstat(link).st_uid != OTHER:
        pytest.skip("cannot give a link to another user here (not root)")


def test_a_model_weights_or_preset_through_a_colleagues_link_is_refused(tmp_path):
    """Attack 33 #1: ``--model`` (a saved Keras model), ``--weights PATH`` and a preset folder were not held to the link
    rule: a colleague's ``team/model.keras -> ~you/private/my.keras`` made the team's extraction run the user's
    private model and record its real path in the team store. Each is now refused (before anything is read) in one
    line naming the link and the option to give the real path with; the user's own link still works. Sabotage: the
    ``refuse_foreign`` line of ``SavedModelSpec.from_path`` (or of ``describe_weights_argument``, or of hub's
    ``normalise``) removed fails it."""
    from featstore.errors import ConfigError, WeightsError
    from featstore.models.hub import normalise
    from featstore.models.saved import SavedModelSpec
    from featstore.models.weights import describe_weights_argument

    private, team = tmp_path / "private", tmp_path / "team"
    private.mkdir()
    team.mkdir()
    (private / "my.keras").write_bytes(b"PK\x05\x06" + bytes(18))  # refused unread: never parsed
    (private / "vgg.weights.h5").write_bytes(b"x")
    (private / "preset").mkdir()
    _foreign_link(team / "model.keras", private / "my.keras")
    _foreign_link(team / "w.weights.h5", private / "vgg.weights.h5")
    _foreign_link(team / "preset", private / "preset")
    for call, arg, error, option in (
        (SavedModelSpec.from_path, team / "model.keras", ConfigError, "--model"),
        (describe_weights_argument, str(team / "w.weights.h5"), WeightsError, "--weights"),
        (normalise, str(team / "preset"), ConfigError, "--model"),
    ):
        with pytest.raises(error) as err:
            call(arg)
        said = str(err.value)
        assert f"leads through {team / os.path.basename(arg)}, a symbolic link made by uid {OTHER}" in said, said
        assert f"({option} {private / os.path.basename(os.readlink(arg))})" in said and "\n" not in said, said
    mine = team / "mine.weights.h5"
    mine.symlink_to(private / "vgg.weights.h5")  # the user's own link: followed
    assert describe_weights_argument(str(mine)) == str(private / "vgg.weights.h5")


def test_a_relative_output_from_a_working_folder_deeper_than_path_max_is_said_truly(tmp_path, monkeypatch):
    """Attack 33 #3 (a regression of attack 31 #2's fix): from a working folder whose full path is over PATH_MAX, a
    relative ``--out`` was refused as "a folder on its path was renamed or replaced meanwhile: someone else can write
    there" (false: the walk cannot lstat so long a name). Now the true line: the path is too long to check, and the
    fix. Sabotage: ``refuse_foreign``'s PATH_MAX branch removed fails it (the false line)."""
    from featstore.errors import OutputError
    from featstore.outputs import write_atomic

    monkeypatch.chdir(tmp_path)
    while len(os.fsencode(os.getcwd())) < 4200:
        os.mkdir("d" * 200)
        os.chdir("d" * 200)
    with pytest.raises(OutputError) as err:
        write_atomic("x.csv", lambda tmp: tmp.write_text("a\n"), "--out")
    said = str(err.value)
    assert said.startswith("--out x.csv cannot be checked for other users' links: its full path is ") and (
        "bytes, longer than this system takes; cd nearer to it, or give a shorter path" in said
    ), said
    assert not os.path.exists("x.csv")


def test_a_store_named_through_your_own_link_and_dotdot_takes_its_next_split(tmp_path, monkeypatch):
    """Attack 33 #5: ``extract --store disk/../s.h5`` (``disk`` the user's own link to ``big/sub``) made the store where
    the kernel resolves the name (``big/s.h5``), then every further extraction into it was refused as "exists and is
    not an HDF5 file": ``h5py.is_hdf5`` takes ``abspath``, which drops ``disk/..`` lexically. The signature is read
    through one non-blocking opening of the name, as the kernel resolves it. Sabotage: ``check_writable`` back on
    ``h5py.is_hdf5(path)`` fails it."""
    from featstore.store.space import check_writable
    from featstore.store.writer import write_arrays

    (tmp_path / "big" / "sub").mkdir(parents=True)
    (tmp_path / "disk").symlink_to(tmp_path / "big" / "sub")
    monkeypatch.chdir(tmp_path)
    X = np.zeros((4, 2), np.float32)
    write_arrays("disk/../s.h5", "syn", "train", X, np.arange(4) % 2, ["a", "b"])
    assert (tmp_path / "big" / "s.h5").is_file() and not (tmp_path / "s.h5").exists()
    check_writable("disk/../s.h5")  # the store is there: its next split may go in
    write_arrays("disk/../s.h5", "syn", "test", X, np.arange(4) % 2, ["a", "b"])


def _device_opens(monkeypatch) -> list:
    """Every opening (not ``O_PATH``) of /dev/null, however reached: what a look at a name must never do to a device."""
    real, opened = os.open, []

    def hooked(name, flags, *a, **k):
        fd = real(name, flags, *a, **k)
        try:
            st = os.fstat(fd)
            if not flags & getattr(os, "O_PATH", 0) and (st.st_rdev, st.st_mode) == (
                os.stat("/dev/null").st_rdev,
                os.stat("/dev/null").st_mode,
            ):
                opened.append(os.fspath(name))
        except OSError:
            pass
        return fd

    monkeypatch.setattr(os, "open", hooked)
    return opened


@pytest.mark.skipif(not hasattr(os, "O_PATH") or not os.path.isdir("/proc/self/fd"), reason="needs O_PATH and /proc")
def test_the_looks_at_a_name_never_open_a_device_behind_a_link(tmp_path, monkeypatch):
    """Attack 33 #6 (a regression of #5's fix: ``check_writable`` opened whatever ``--store`` led to, before the link
    rule, so a colleague's ``team/s.h5 -> device`` had the device opened) and #7 (``starts_with``, export's, predict's
    and leaks' look at their earlier output, opened ``--out`` following links: a device link swapped in after
    ``check_output`` was opened). The store's look reaches the file with ``O_PATH`` and opens only a regular file;
    an output's look never follows a link. Sabotage: ``regular_fd`` opening with links followed (no ``O_PATH``) fails the
    first; ``starts_with`` opening without ``O_NOFOLLOW`` fails the second."""
    from featstore.errors import StoreError
    from featstore.outputs import starts_with
    from featstore.store.space import check_writable

    link = tmp_path / "s.h5"
    link.symlink_to("/dev/null")
    opened = _device_opens(monkeypatch)
    with pytest.raises(StoreError, match="exists and is not an HDF5 file"):
        check_writable(link)
    assert starts_with(link, b"path,label,class,") is False
    monkeypatch.undo()
    assert opened == []


def test_leaks_hashes_images_only_through_the_link_rule(tmp_path):
    """Attack 33 #8: ``leaks`` hashed the stored images by name, following any link: a colleague's link at the team's
    data root put, into the team's leaks CSV, which of the user's private photos are byte-identical (while the leak
    picture of the same run refused those images). Each file is now opened as every image is opened again
    (``open_image_file``); a refused one cannot be compared, with the rule's reason. Sabotage: ``_sha256`` opening
    the name with ``os.open`` again fails it (the private photo's digest)."""
    from featstore.experiments.leaks.hashes import _sha256

    private = tmp_path / "private"
    private.mkdir()
    (private / "x.png").write_bytes(b"private photo")
    _foreign_link(tmp_path / "data", private)
    digest, why = _sha256(str(tmp_path / "data" / "x.png"), 13, {})
    assert digest == "" and f"its path leads through {tmp_path / 'data'} -> {private}" in why, why
    assert "a link made by another user" in why
    assert _sha256(str(private / "x.png"), 13, {})[0] != ""  # the real path, on purpose: compared


@pytest.mark.skipif(not hasattr(os, "O_PATH") or not os.path.isdir("/proc/self/fd"), reason="needs O_PATH and /proc")
def test_an_image_that_cannot_be_read_is_named_by_its_path(tmp_path, monkeypatch):
    """The reopening through ``/proc/self/fd`` (attack 33 #2's fix) must not put that path in the failure: an image
    the user may not read is said by its own path. Sabotage: ``reach_regular`` re-raising the reopening's OSError as
    it is fails it (the message names /proc/self/fd/N)."""
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    real = os.open

    def refused(name, flags, *a, **k):
        if os.fspath(name).startswith("/proc/self/fd/"):
            raise PermissionError(13, "Permission denied", os.fspath(name))
        return real(name, flags, *a, **k)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(ImageError) as err:
        load_image(image, 4)
    assert str(image) in str(err.value) and "/proc/self/fd" not in str(err.value), str(err.value)
