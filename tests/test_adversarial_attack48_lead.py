"""Attack 48's findings fixed by the lead: a resume under another oneDNN setting (H1)."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import pytest

from featstore import FeatureStore, StoreError, extract
from featstore.models.forward import numerics

from .conftest import interrupt_after_one_batch


def test_a_split_records_whether_onednn_computed_it(data_root, tiny_config, tmp_path):
    store = tmp_path / "f.h5"
    extract(data_root, "validation", store, tiny_config, batch_size=4)
    with h5py.File(store, "r") as f:
        assert bool(f["vgg16"]["validation"].attrs["onednn"]) is numerics()["onednn"]
    assert numerics("onnx") == {}  # ONNX Runtime computes those: TensorFlow's kernels are not the question


def test_onednn_is_read_from_tensorflow_as_the_shell_sets_it():
    code = "from featstore.models.forward import numerics; print(numerics()['onednn'])"
    said = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={"TF_ENABLE_ONEDNN_OPTS": v, "PATH": ""}
        ).stdout.split()[-1:]
        for v in ("0", "1")
    ]
    assert said == [["False"], ["True"]]


def test_a_resume_under_the_other_onednn_setting_is_refused_naming_the_variable(
    data_root, tiny_config, tmp_path, monkeypatch
):
    """H1: a split started with oneDNN off and resumed with TF_ENABLE_ONEDNN_OPTS=1 held 344 of 400 rows of the other
    kernels (max 1.55e-6) under one fingerprint. Now refused before any row is written, both sides said."""
    store = tmp_path / "f.h5"
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, batch_size=4)
    then = numerics()["onednn"]
    monkeypatch.setattr("featstore.extraction.pipeline.numerics", lambda runtime: {"onednn": not then})
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4)
    msg = str(err.value)
    said = {True: "on (TF_ENABLE_ONEDNN_OPTS=1 in the shell)", False: "off (TF_ENABLE_ONEDNN_OPTS=0 in the shell)"}
    assert f"was started with TensorFlow's oneDNN {said[then]} and this run is with TensorFlow's oneDNN " in msg
    assert said[not then] in msg and f"Resume it with TensorFlow's oneDNN {said[then]}" in msg
    assert "--overwrite (overwrite=True)" in msg
    assert FeatureStore(store).split_info("train")["committed_rows"] == 4  # untouched
    monkeypatch.undo()
    extract(data_root, "train", store, tiny_config, batch_size=4)  # the setting it started with: resumed
    assert FeatureStore(store).split_info("train")["committed_rows"] == 12


def test_a_ray_worker_computing_with_the_other_onednn_setting_is_refused(monkeypatch):
    """The split records the driver's oneDNN setting; a worker of an existing cluster may have the other (its own
    TF_ENABLE_ONEDNN_OPTS, another CPU's default): refused at its start, before the model is built."""
    pytest.importorskip("ray")
    from featstore.errors import ConfigError
    from featstore.extraction.ray import Forward
    from featstore.models.extractor import ExtractorConfig

    monkeypatch.setattr("featstore.extraction.ray.worker_tempdir", lambda: None)
    other = {"onednn": not numerics()["onednn"]}
    config = ExtractorConfig(model="vgg16", weights="none", image_size=32)
    with pytest.raises(ConfigError) as got:
        Forward(config, False, 4, ["x"], 1, 1.0, None, other)
    line = str(got.value)
    assert line.startswith("a Ray worker on ") and "the driver (whose setting the split records)" in line, line
    assert "Set TF_ENABLE_ONEDNN_OPTS the same (0 or 1) where the driver and every worker run" in line, line


def test_each_part_of_a_batch_is_prepared_alone(data_root, tiny_config, tmp_path, monkeypatch):
    """M4: the float32 input of a whole batch was made before the batch was split by the activation bound (6 GiB for 32
    images at 4096 px: a numpy traceback). Each call's part is prepared alone now."""
    from featstore.models.extractor import Extractor

    seen, real = [], Extractor._prepare
    monkeypatch.setattr(Extractor, "_prepare", lambda self, images: seen.append(len(images)) or real(self, images))
    monkeypatch.setattr("featstore.models.activations.MAX_ACTIVATION_BYTES", 300_000)  # VGG16 at 32 px: 262,144 B
    extract(data_root, "validation", tmp_path / "f.h5", tiny_config, batch_size=4)
    assert seen and set(seen) == {1}, seen  # (the start-up's one-image warm-up included)


def test_out_of_memory_preparing_a_batch_is_one_line(data_root, tiny_config, tmp_path, monkeypatch):
    from featstore.errors import ConfigError
    from featstore.models.extractor import Extractor

    def no_room(self, images):
        if len(images) > 1:  # the warm-up's one image passes
            raise MemoryError(f"Unable to allocate 6.00 GiB for an array with shape ({len(images)}, 4096, 4096, 3)")
        return real(self, images)

    real = Extractor._prepare
    monkeypatch.setattr(Extractor, "_prepare", no_room)
    with pytest.raises(ConfigError) as got:
        extract(data_root, "validation", tmp_path / "f.h5", tiny_config, batch_size=4)
    line = str(got.value)
    assert line.startswith("the forward pass ran out of memory on a batch of 4 images (Unable to allocate 6.00"), line
    assert "give a smaller --batch-size (this batch: 4)" in line, line


def test_a_model_one_image_of_which_needs_more_memory_than_the_process_has_is_refused(
    data_root, tiny_config, tmp_path, monkeypatch
):
    """M6: two 2 GiB convolutions in a row (each within the activation bound) died of std::bad_alloc under a 6 GB
    address-space limit at --batch-size 1, no line. One image's working set (an operation's inputs and outputs, from
    the traced pass) is held to the room this process has, before any image runs."""
    from featstore.errors import ConfigError
    from featstore.models.room import Room

    little = Room(300_000, "its address-space limit (ulimit -v: 1 GB)")
    monkeypatch.setattr("featstore.models.traced_bound.memory_room", lambda: little)
    with pytest.raises(ConfigError) as got:
        extract(data_root, "validation", tmp_path / "f.h5", tiny_config, batch_size=4)
    line = str(got.value)  # VGG16 at 32 px: block1_conv2 holds 32x32x64 float32 in and out, 524,288 B
    assert "one image needs at least 524 kB (512 KiB) at once in its layer 'block1_conv2' (operation Conv2D" in line, (
        line
    )
    assert "can take 300 kB (293 KiB) more, held by its address-space limit (ulimit -v: 1 GB)" in line, line
    assert line.endswith(
        "cut before it with --layer block1_conv1; or give a smaller --image-size; or run it with more memory"
    )
    assert not (tmp_path / "f.h5").exists() or FeatureStore(tmp_path / "f.h5").splits() == []
    monkeypatch.setattr("featstore.models.traced_bound.memory_room", lambda: Room(600_000, "x"))
    extract(data_root, "validation", tmp_path / "f.h5", tiny_config, batch_size=4)  # it fits: it runs


def test_the_room_is_the_least_of_the_limits(monkeypatch):
    import resource

    from featstore.models import room

    monkeypatch.setattr(room, "_cgroup_room", lambda: None)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (3 * 2**30, resource.RLIM_INFINITY))
    got = room.memory_room()
    used = room._kib("/proc/self/status", "VmSize")
    assert got.nbytes == max(0, 3 * 2**30 - used) and got.limit.startswith("its address-space limit"), got
    monkeypatch.setattr(resource, "getrlimit", lambda what: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert room.memory_room().limit == "the memory and swap available on this machine now"


def test_weights_none_the_python_value_is_one_line(data_root, tmp_path):
    """fixCE's note: ExtractorConfig(weights=None) ended in a TypeError traceback from os.path.expanduser."""
    from featstore import ExtractorConfig
    from featstore.errors import WeightsError

    with pytest.raises(
        WeightsError, match=r"^weights must be 'imagenet', 'none', 'hed-bsds500' or a file path, not None$"
    ):
        extract(data_root, "validation", tmp_path / "f.h5", ExtractorConfig(model="vgg16", image_size=32, weights=None))
    assert not (tmp_path / "f.h5").exists()


def _fake_cgroups(tmp_path, v2: bool) -> None:
    """A /proc/self and /sys/fs/cgroup under ``tmp_path``: a job at /job/step, limited to 1.5 GB at /job only."""
    proc = tmp_path / "proc/self"
    proc.mkdir(parents=True)
    if v2:
        (proc / "cgroup").write_text("0::/job/step\n")
        (proc / "mountinfo").write_text("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
        names, base = ("memory.max", "memory.current", "inactive_file"), tmp_path / "sys/fs/cgroup"
    else:
        (proc / "cgroup").write_text("5:devices:/\n4:memory:/job/step\n0::/\n")
        (proc / "mountinfo").write_text(
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        )
        names, base = (
            ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
            tmp_path / "sys/fs/cgroup/memory",
        )
    unlimited = "max" if v2 else "9223372036854771712"
    for rel, limit, used, cache in (
        ("", unlimited, 9e9, 0),
        ("job", "1500000000", 1e9, 4e8),
        ("job/step", unlimited, 9e8, 3e8),
    ):
        folder = base / rel
        folder.mkdir(parents=True, exist_ok=True)
        (folder / names[0]).write_text(f"{limit}\n")
        (folder / names[1]).write_text(f"{int(used)}\n")
        (folder / "memory.stat").write_text(f"anon 1\n{names[2]} {int(cache)}\n")


@pytest.mark.parametrize("v2", [True, False], ids=["cgroup-v2", "cgroup-v1"])
def test_the_room_reads_a_cgroup_limit_at_any_level_v1_or_v2(tmp_path, v2):
    """Attack 49 #2: a cgroup v1 limit of 1.5 GB was not read (v2's memory.max only, this cgroup only), and a model
    needing 2 GB for one image was SIGKILLed without a line. The least room over the cgroup and its ancestors, the file
    cache the kernel reclaims first not counted as used: 1.5 GB - (1 GB - 0.4 GB) at /job."""
    from featstore.models import room

    _fake_cgroups(tmp_path, v2)
    assert room._cgroup_room(tmp_path) == 900_000_000
    leaf = tmp_path / ("sys/fs/cgroup/job/step" if v2 else "sys/fs/cgroup/memory/job/step")
    (leaf / ("memory.max" if v2 else "memory.limit_in_bytes")).unlink()  # a leaf without the controller's files
    assert room._cgroup_room(tmp_path) == 900_000_000  # the limit above it still holds
    assert room._cgroup_room(tmp_path / "nothing") is None  # no /proc: no cgroup room, no error


def test_a_resume_on_the_other_engine_is_refused(data_root, tiny_config, tmp_path, monkeypatch):
    """Ray's actors call the model on other groups of images (a batch of paths, failures included) with their own
    threads: a split started on one engine and resumed on the other would hold rows of both kinds."""
    store = tmp_path / "f.h5"
    interrupt_after_one_batch(monkeypatch, data_root, "train", store, tiny_config, batch_size=4)
    with h5py.File(store, "r+") as f:
        assert f["vgg16"]["train"].attrs["engine"] == "local"
        f["vgg16"]["train"].attrs["engine"] = "ray"  # as a split started with --engine ray
    with pytest.raises(StoreError) as err:
        extract(data_root, "train", store, tiny_config, batch_size=4)
    assert "was started with --engine ray (engine='ray' in Python) and this run is with --engine local" in str(
        err.value
    )


def test_a_thread_count_tensorflow_ignores_is_not_recorded(monkeypatch):
    """Attack 50 M1: TF_NUM_INTRAOP_THREADS of 20 digits reached h5py as a split attribute (a 64-line TypeError)."""
    from featstore.models.forward import machine

    cores = len(os.sched_getaffinity(0))
    for given, said in (("9" * 20, cores), ("0", cores), ("-3", cores), ("٣", cores), (" 3 ", 3), ("3", 3)):
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", given)
        assert machine()["threads"] == said, given


def test_a_keras_settings_file_whose_read_fails_is_one_line(tmp_path, monkeypatch):
    """Attack 50 M2: a keras.json that opens but fails to read (EIO: a failing disk) gave a 59-line traceback."""
    from featstore import kerasfile

    (tmp_path / "keras.json").write_text("{}")
    real = os.fdopen

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(kerasfile.os, "fdopen", lambda fd, mode: Failing(real(fd, mode)))
    line = kerasfile.read_settings(str(tmp_path / "keras.json"))
    assert line.startswith(f"Keras's settings file {tmp_path / 'keras.json'} cannot be read (Input/output error); "), (
        line
    )
    assert kerasfile.read_settings(str(tmp_path / "keras.json"), waits_only=True) is None
