"""Attack 35 #1, #2: a KerasHub preset folder's files are reached like --model files: its JSON files held to the link
rule on the file reached and never a device opened (#1), and the build's snapshot made from the weights file held
since it was reached, not from its name afresh (#2). A link is given to another user with ``os.lchown`` (root only:
skipped elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from featstore import ConfigError, WeightsError
from featstore.models.hub import HubSpec
from tests.test_hub import save_presets

OTHER = 54321  # the colleague's uid


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    return save_presets(tmp_path_factory.mktemp("presets"), ("vit",))["vit"][0]


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for entry in folder.iterdir():
        (to / entry.name).write_bytes(entry.read_bytes())
    return to


def _device_openings(monkeypatch) -> list:
    """Every ``os.open`` of /dev/zero that is not an ``O_PATH`` reach (which calls no driver), recorded."""
    real, seen = os.open, []

    def counting(path, flags, *a, **k):
        fd = real(path, flags, *a, **k)
        if not flags & getattr(os, "O_PATH", 0) and os.path.realpath(f"/proc/self/fd/{fd}") == "/dev/zero":
            seen.append(path)
        return fd

    monkeypatch.setattr(os, "open", counting)
    return seen


@pytest.mark.parametrize("name", ["config.json", "image_converter.json"])
def test_a_colleagues_link_at_a_preset_json_file_is_refused_and_no_device_opened(vit, tmp_path, monkeypatch, name):
    folder = _copy(vit, tmp_path / "team")
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/zero")
    os.lchown(folder / name, OTHER, -1)
    if os.lstat(folder / name).st_uid != OTHER:
        pytest.skip("cannot give a link to another user here (not root)")
    opened = _device_openings(monkeypatch)
    with pytest.raises(ConfigError, match=f"leads through {folder / name}, a symbolic link made by uid {OTHER}"):
        HubSpec.from_model(str(folder))
    assert opened == []


def test_own_link_to_a_device_at_a_preset_json_file_is_refused_without_opening_it(vit, tmp_path, monkeypatch):
    folder = _copy(vit, tmp_path / "mine")
    (folder / "image_converter.json").unlink()
    (folder / "image_converter.json").symlink_to("/dev/zero")
    opened = _device_openings(monkeypatch)
    with pytest.raises(ConfigError, match="image_converter.json is a device, not a regular file of at most 1 MiB"):
        HubSpec.from_model(str(folder))
    assert opened == []


def test_the_build_reads_the_weights_reached_not_a_device_swapped_in_after_the_check(vit, tmp_path, monkeypatch):
    """Between the spec (weights checked and hashed) and the build (after the listing), the weights' name is made a
    link to a device: the build refuses it in one line without opening the device."""
    folder = _copy(vit, tmp_path / "swap")
    spec = HubSpec.from_model(str(folder))
    (folder / "model.weights.h5").unlink()
    (folder / "model.weights.h5").symlink_to("/dev/zero")
    opened = _device_openings(monkeypatch)
    with pytest.raises(
        WeightsError, match="model.weights.h5 is now a device, not the regular file featstore looked at"
    ):
        spec.build(spec.default_size)
    assert opened == []
