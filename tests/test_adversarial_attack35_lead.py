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


def test_a_preset_whose_attention_takes_gigabytes_per_image_is_refused_before_it_is_built(vit, tmp_path):
    """Attack 35 #5: within every other bound (16,384 patches, num_heads <= hidden_dim, parameters within the weights),
    32 heads over 16,384 tokens ask for 32 GiB of attention scores per image: refused naming config.json."""
    import json

    folder = _copy(vit, tmp_path / "wide")
    config = json.loads((folder / "config.json").read_text())
    config["config"].update(image_shape=[128, 128, 3], patch_size=1, num_heads=32)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"num_heads 32 over 16,384 patches .* take 32\.0 GiB of attention scores"):
        HubSpec.from_model(str(folder))


def test_an_image_size_whose_attention_takes_gigabytes_is_refused_with_the_largest_that_fits(tmp_path):
    from featstore import ExtractorConfig

    folder = save_presets(tmp_path, ("dinov2",))["dinov2"][0]  # patch 14, 2 heads, resizable
    with pytest.raises(ConfigError, match=r"--image-size 4088 makes 85,267 tokens .* give --image-size \d+ or less"):
        ExtractorConfig(model=str(folder), image_size=4088).validated()
    ExtractorConfig(model=str(folder), image_size=14 * 40).validated()  # 1,601 tokens: well within


def test_out_of_memory_on_the_first_image_is_one_line(monkeypatch, tmp_path):
    """The warm-up (one image through the forward pass, before the first batch) ran out of memory outside the batches'
    handler: a 73-line TensorFlow traceback."""
    from featstore.models.extractor import Extractor
    from tests.conftest import write_data_root
    from tests.test_adversarial_attack4 import cli, no_traceback

    class ResourceExhaustedError(Exception):
        pass

    def oom(self):
        raise ResourceExhaustedError("OOM when allocating tensor with shape[1,32,16385,16385]")

    monkeypatch.setattr(Extractor, "warm_up", oom)
    data = write_data_root(tmp_path / "data")
    out = no_traceback(cli("extract", "--data", data, "--split", "train", "--store", tmp_path / "s.h5",
                           "--weights", "none", "--image-size", "32"))  # fmt: skip
    assert "the forward pass ran out of memory on a batch of 1 images (OOM when allocating tensor" in out, out


@pytest.fixture
def two_runs(tmp_path):
    """A store's logreg run and another run's model file (knn) to swap in: (folder, artifact, other model file)."""
    import json

    from featstore import fit
    from tests.test_adversarial_attack3 import synthetic_store

    store, runs = synthetic_store(tmp_path / "s.h5"), tmp_path / "runs"
    first, other = fit(store, "logreg", runs=runs)["id"], fit(store, "knn", runs=runs)["id"]
    artifact = json.loads((runs / first / "run.json").read_text())["artifact"]
    return runs / first, artifact, runs / other / "model.skops"


def test_a_run_model_swapped_between_its_check_and_its_load_is_refused(two_runs):
    """Attack 35 #4: ``check_artifact`` (sha256, schema, arrays) passed, then ``load_estimator(verified=True)`` only
    looked at the name again and loaded whatever was there: another pipeline renamed onto it answered every
    prediction. The load now checks the size and sha256 of the very file it loads."""
    from featstore.runs import artifacts
    from featstore.runs.files import BrokenRunError

    folder, artifact, other = two_runs
    artifacts.check_artifact(folder, artifact)
    os.replace(other, folder / "model.skops")
    with pytest.raises(BrokenRunError, match=r"run artifact .*model\.skops (is|has)"):
        artifacts.load_estimator(folder, artifact, verified=True)


def test_a_run_model_swapped_after_its_hash_is_not_what_is_loaded(two_runs, monkeypatch):
    """Renamed onto the name after the file's hash, inside the load: the file hashed, held open, is what is loaded."""
    from featstore.runs import artifacts

    folder, artifact, other = two_runs
    real = artifacts.verify_file

    def hashed_then_swapped(*a, **k):
        checked = real(*a, **k)
        if other.exists():
            os.replace(other, folder / "model.skops")
        return checked

    monkeypatch.setattr(artifacts, "verify_file", hashed_then_swapped)
    pipe = artifacts.load_estimator(folder, artifact)
    assert not other.exists()  # the swap happened
    assert type(pipe.steps[-1][1]).__name__ == "AgreeingLogisticRegression"  # the logreg held, not the knn swapped in
