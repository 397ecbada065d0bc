"""--engine ray: a local Ray cluster started by the test gives the local engine's store exactly; faults and bad input.

The cluster tests are `slow` (Ray's start and one TensorFlow import per actor take seconds); the option checks are not.
One local cluster serves the whole module, also for Ray Data reading `featstore export`'s Parquet shards.
"""

from __future__ import annotations

import os
import pwd
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from featstore import ConfigError, DataError, FeatureStore, extract
from featstore.extraction.ray import Forward, RayEngine, RayOptions

from .conftest import TINY_CONFIG, interrupt_after_one_batch, ray_actor_died, write_data_root
from .test_cli import run, tiny


def same_store(a: Path, b: Path, split: str = "train", extractor: str | None = None, tolerance: float = 0.0) -> None:
    """Labels, paths and failure records identical; features too, or within ``tolerance`` of the largest one."""
    fa, fb = FeatureStore(a), FeatureStore(b)
    (Xa, ya), (Xb, yb) = fa.load(split, extractor=extractor), fb.load(split, extractor=extractor)
    assert Xa.shape == Xb.shape and np.abs(Xa - Xb).max(initial=0) <= tolerance * np.abs(Xa).max(initial=0)
    np.testing.assert_array_equal(ya, yb)
    assert fa.paths(split, extractor) == fb.paths(split, extractor)
    assert fa.failures(split, extractor) == fb.failures(split, extractor)
    assert fa.metadata(extractor)["fingerprint"] == fb.metadata(extractor)["fingerprint"]


# ---- option checks: no cluster needed ----


def test_engine_ray_without_ray_names_the_extra(data_root, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when the extra is not installed
    with pytest.raises(
        ConfigError, match=r'--engine ray needs Ray Data, which is not installed.*pip install "featstore\[ray\]"'
    ):
        extract(data_root, "train", tmp_path / "f.h5", tiny_config, engine="ray")
    assert not (tmp_path / "f.h5").exists()  # never a quiet fall-back to the local engine


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "spark"], "unknown engine 'spark'; choose one of: local, ray"),
        (
            ["--workers", "2"],
            "--address, --workers, --gpus-per-worker and --cpus-per-worker are options of --engine ray",
        ),
        (["--address", "ray://head:10001"], "options of --engine ray"),
    ],
)
def test_bad_engine_options(data_root, tmp_path, args, message):
    r = tiny(data_root, tmp_path / "f.h5", *args)
    assert r.exit_code == 1 and message in r.output, r.output


def test_unreachable_address_fails_fast_naming_it(data_root, tiny_config, tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray is already initialised in this process")
    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at --address 127\.0\.0\.1:9 "):
        extract(
            data_root,
            "train",
            tmp_path / "f.h5",
            tiny_config,
            engine="ray",
            ray_options=RayOptions(address="127.0.0.1:9"),
        )
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        extract(data_root, "train", tmp_path / "f.h5", tiny_config, engine="ray", ray_options=RayOptions(workers=0))


def test_without_address_a_new_local_ray_not_the_one_tmp_ray_names(tmp_path, monkeypatch):
    """Ray's default (address=None) joins the cluster /tmp/ray/ray_current_cluster names, a file any user may write:
    another user's listener got a run's connections (attack 25 #4). featstore asks for a new local Ray, or the user's
    own RAY_ADDRESS; a local Ray that cannot start is one line, not Ray's 56-line traceback (attack 25 #5)."""
    ray = pytest.importorskip("ray")
    asked = []

    def init(address=None, **kw):
        asked.append(address)
        raise Exception("The current node timed out during startup")  # what Ray raises when its raylet cannot start

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError) as err:
        RayEngine(RayOptions()).start(tmp_path, None)
    assert asked == ["local"]
    assert str(err.value).startswith("cannot start a local Ray (The current node timed out during startup): its logs")
    assert "--engine local" in str(err.value)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # the user's own setting (a Ray job's driver has it): kept
    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at RAY_ADDRESS=127\.0\.0\.1:9 "):
        RayEngine(RayOptions()).start(tmp_path, None)
    assert asked == ["local"]  # refused before ray.init


def test_address_auto_reads_only_this_users_own_ray_file(tmp_path, monkeypatch):
    """--address auto (or RAY_ADDRESS=auto) made Ray read <RAY_TMPDIR>/ray/ray_current_cluster, a file in a folder every
    user may write: another user's listener got the run's connections (attack 26 #9). featstore reads it itself, only
    when it is this user's (or root's) and no one else may write it, and checks that address answers. Sabotage: the
    owner test in ``_auto`` removed fails the colleague's case (it is tried, and named as reachable or not); the primary
    group test in ``_others_may_write`` removed, the group-writable file of a group that is a colleague's primary one."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init reached: {kw}"))
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="--address auto: no Ray started on this machine names its address"):
        RayEngine(RayOptions(address="auto")).start(tmp_path, None)
    (tmp_path / "ray").mkdir(mode=0o777)
    file = tmp_path / "ray" / "ray_current_cluster"
    file.write_text("127.0.0.1:9\n")
    for mode in (0o644, 0o664):  # 0664: umask 002's, the user's own private group (attack 27 #5: it was refused)
        os.chmod(file, mode)
        with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at --address auto \(127\.0\.0\.1:9, from"):
            RayEngine(RayOptions(address="auto")).start(tmp_path, None)
    real, other = pwd.getpwall, pwd.struct_passwd(("colleague", "x", 54321, os.stat(file).st_gid, "", "/", "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwall", lambda: [*real(), other])  # the group is also a colleague's primary group
    with pytest.raises(ConfigError, match=r"is yours, but group \S+ may write it, .* remove it and start Ray again"):
        RayEngine(RayOptions(address="auto")).start(tmp_path, None)
    monkeypatch.setattr(pwd, "getpwall", real)
    os.chmod(file, 0o646)  # anyone may write it
    with pytest.raises(ConfigError, match=r"is yours, but anyone \(it is o\+w\) may write it"):
        RayEngine(RayOptions(address="auto")).start(tmp_path, None)
    os.chmod(file, 0o644)
    os.chown(file, 54321, -1)  # a colleague's file (root may give it away: CI and this machine run as root)
    if os.stat(file).st_uid == 54321:
        with pytest.raises(
            ConfigError, match=r"was written by uid 54321 \(not you\), so .* RAY_TMPDIR set to a folder of yours"
        ):
            RayEngine(RayOptions(address="auto")).start(tmp_path, None)
        monkeypatch.setenv("RAY_ADDRESS", "auto")
        with pytest.raises(ConfigError, match=r"RAY_ADDRESS=auto: .* was written by uid 54321 \(not you\)"):
            RayEngine(RayOptions()).start(tmp_path, None)


def test_an_actor_that_refuses_at_start_up_is_its_own_one_line_error():
    """A featstore error in an actor's constructor (another fingerprint; the driver's ONNX file missing or changed)
    reached the driver as Ray's ActorDiedError, whose text holds the worker's whole traceback. The error is built as
    Ray builds it (a RayTaskError around the worker's formatted traceback), without a cluster; a Ray run whose actors
    refuse was checked by hand to end the same way."""
    ray = pytest.importorskip("ray")
    from featstore.extraction.ray import worker_errors

    def batches(error: Exception):
        yield {"index": 0}
        raise error

    message = "--runtime onnx: the worker on w1 cannot find the driver's ONNX file /s.h5.cache/onnx/k.onnx; the store's"
    rows = worker_errors(ray, batches(ray_actor_died(ray, ConfigError(message))))
    assert next(rows) == {"index": 0}
    with pytest.raises(ConfigError) as err:
        next(rows)
    assert str(err.value) == message
    with pytest.raises(ray.exceptions.ActorDiedError):  # any other death: Ray's own error, as it is
        list(worker_errors(ray, batches(ray_actor_died(ray, RuntimeError("out of memory")))))


def test_out_of_memory_in_an_actors_batch_is_the_local_engines_one_line(data_root, tiny_config):
    """TensorFlow's out of memory in an actor's batch reached the driver as Ray Data's RayTaskError(UserCodeException)
    with the worker's traceback; the local engine says it in one line. The actor raises that line, and the driver
    takes it out of the task error's text (built here as Ray Data chains it; a Ray run whose actors' forward pass
    raised ResourceExhaustedError was checked by hand to end the same way)."""
    ray = pytest.importorskip("ray")
    from types import SimpleNamespace

    from featstore.extraction.ray import worker_errors

    class ResourceExhaustedError(Exception):  # TensorFlow's class, by name: the engines recognise it so
        pass

    def oom(images):
        raise ResourceExhaustedError("OOM when allocating tensor with shape[2,512,512,64]\nmore lines")

    actor = object.__new__(Forward)
    actor.ex, actor.decode_threads = SimpleNamespace(config=tiny_config, features=oom, outputs=[]), 1
    paths = [os.fsencode(p) for p in sorted((data_root / "train" / "cat").iterdir())[:2]]
    with pytest.raises(ConfigError) as err:
        actor({"index": np.arange(2), "path": np.array(paths, dtype=object)})
    message = str(err.value)
    assert message.startswith("the forward pass ran out of memory on a batch of 2 images (OOM when allocating tensor")
    assert "more lines" not in message and "give a smaller --batch-size" in message

    def task_error(error: Exception):
        import traceback

        try:
            try:
                raise error
            except Exception as inner:
                raise ray.exceptions.UserCodeException("UDF failed to process a data block.") from inner
        except Exception as exc:
            return ray.exceptions.RayTaskError("submit", traceback.format_exc(), exc).as_instanceof_cause()

    def batches(error: Exception):
        yield {"index": 0}
        raise task_error(error)

    rows = worker_errors(ray, batches(ConfigError(message)))
    assert next(rows) == {"index": 0}
    with pytest.raises(ConfigError) as err:
        next(rows)
    assert str(err.value) == message
    with pytest.raises(ray.exceptions.RayTaskError):  # any other error in a batch: Ray's own, as it is
        list(worker_errors(ray, batches(RuntimeError("a bug"))))


# ---- a local Ray cluster (2 CPUs, no external services) ----


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_with_onnx_equals_local_engine(ray_cluster, data_root, tiny_config, tmp_path):
    """The CLI's Ray run, with --runtime onnx (cut at block2_pool: a 0.3 s export): the driver exports and checks the
    cut once, each of the 2 actors loads that file (verified by its sha256) and checks it against its own Keras pass.
    Rows, order and failure records are the local engine's; features within the start-up check's tolerance. (The fault
    tests below compare Ray's Keras features with the local engine's exactly.)"""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from featstore.models.onnx_runtime import ONNX_TOLERANCE

    (data_root / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")  # a failure record, mid-class
    (data_root / "train" / "dog" / "caf\udce9.png").write_bytes(
        (data_root / "train" / "dog" / "img_000.png").read_bytes()
    )
    onnx = ("--layer", "block2_pool", "--runtime", "onnx")
    extract(
        data_root,
        "train",
        tmp_path / "local.h5",
        replace(tiny_config, layer="block2_pool", runtime="onnx"),
        batch_size=4,
    )
    r = tiny(data_root, tmp_path / "ray.h5", "--seed", 7, *onnx, "--batch-size", 4, "--engine", "ray", "--workers", 2)
    assert r.exit_code == 0, r.output
    assert "Ray start-up" in r.output and "wrote 13 rows" in r.output and "1 failed" in r.output
    same_store(tmp_path / "local.h5", tmp_path / "ray.h5", tolerance=ONNX_TOLERANCE)
    ray_store = FeatureStore(tmp_path / "ray.h5")
    assert ray_store.failures("train")[0][0] == "train/cat/broken.jpg"
    assert (ray_store.split_info("train")["runtime"], ray_store.split_info("train")["engine"]) == ("onnx", "ray")
    assert sorted(p.suffix for p in (tmp_path / "ray.h5.cache" / "onnx").iterdir()) == [".json", ".onnx"]  # one export
    assert run("check", tmp_path / "ray.h5").exit_code == 0


def killed_once(marker: Path) -> type:
    """An actor class that SIGKILLs itself on its second batch, once (the marker file says it happened)."""

    class KilledOnce(Forward):  # defined here, so Ray ships the class itself (and the marker) to its workers
        def __call__(self, batch: dict) -> dict:
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls >= 2 and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)  # an actor dies mid-run: Ray must restart it and retry the batch
            return super().__call__(batch)

    return KilledOnce


@pytest.fixture(scope="module")
def faults(ray_cluster, tmp_path_factory) -> dict:
    """A Ray run of the train split interrupted in the driver after its first committed batch (4 rows), then resumed on
    a one-actor pool whose actor SIGKILLs itself on its second batch; and the local engine's store of the same images.

    The two fault tests below read these runs: each Ray run starts a pool of actors (a worker process, TensorFlow's
    import and the model build: seconds on a CPU), so the kill happens in the resume instead of in a third run. The
    resume has two batches for one actor, so the kill happens and Ray must restart that actor and retry its batch."""
    root = tmp_path_factory.mktemp("faults")
    data, path, marker = write_data_root(root / "data"), root / "ray.h5", root / "killed"
    extract(data, "train", root / "local.h5", TINY_CONFIG, batch_size=4)
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after_one_batch(mp, data, "train", path, TINY_CONFIG, batch_size=4, engine="ray")
    committed = FeatureStore(path).split_info("train")["committed_rows"]
    with RayEngine(RayOptions(workers=1), actor=killed_once(marker)) as engine:
        resumed = extract(data, "train", path, TINY_CONFIG, batch_size=4, engine=engine)
    return {"local": root / "local.h5", "ray": path, "marker": marker, "committed": committed, "resumed": resumed}


@pytest.mark.slow
def test_killed_actor_is_retried_without_loss_or_duplicates(faults):
    r = faults["resumed"]
    assert faults["marker"].exists(), "no actor was killed"
    assert r.rows == 12 and r.resumed_from + r.written == 12
    same_store(faults["local"], faults["ray"])
    assert len(set(FeatureStore(faults["ray"]).paths("train"))) == 12


@pytest.mark.slow
def test_interrupted_driver_resumes_like_the_local_engine(faults):
    assert faults["committed"] == 4
    r = faults["resumed"]
    assert r.resumed_from == 4 and r.written == 8
    same_store(faults["local"], faults["ray"])


@pytest.mark.slow
def test_cluster_checks_before_the_run(ray_cluster, data_root, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"--workers 2 x --gpus-per-worker 1 asks for 2 GPUs; the Ray cluster has 0"):
        extract(
            data_root,
            "train",
            tmp_path / "f.h5",
            tiny_config,
            engine="ray",
            ray_options=RayOptions(workers=2, gpus_per_worker=1),
        )
    with pytest.raises(ConfigError, match=r"--workers 3 x 1 CPUs each needs 3 CPUs; the Ray cluster has 2"):
        extract(data_root, "train", tmp_path / "f.h5", tiny_config, engine="ray", ray_options=RayOptions(workers=3))
    assert not (tmp_path / "f.h5").exists()
    with pytest.raises(DataError, match=r"a Ray worker on .* cannot read .*elsewhere.*shared filesystem"):
        RayEngine().start(tmp_path / "elsewhere", None)  # a data root only the driver sees


@pytest.mark.slow
def test_ray_data_reads_the_exported_shards(ray_cluster, tmp_path):
    """featstore export --rows-per-file's Parquet shards (tests/test_export_shards.py) read by Ray Data as the split:
    here, on this module's cluster, rather than on a second Ray started for that file alone."""
    pytest.importorskip("pyarrow")
    import ray.data

    from featstore import export
    from featstore.store import writer

    store, out = tmp_path / "features.h5", tmp_path / "ray_shards"
    X = np.random.default_rng(0).random((1000, 2, 2, 8)).astype(np.float16)
    writer.write_arrays(
        store, "synthetic", "train", X, np.arange(1000) % 5, [f"c{i}" for i in range(5)], batch_size=128
    )
    export(store, "train", out, rows_per_file=250)
    ds = ray.data.read_parquet(str(out))
    assert ds.count() == 1000
    labels = np.sort(np.concatenate([b["label"] for b in ds.iter_batches(batch_format="numpy")]))
    np.testing.assert_array_equal(labels, np.sort(np.arange(1000) % 5))


def test_decode_threads_option_does_not_change_rows(data_root, tmp_path):
    assert tiny(data_root, tmp_path / "a.h5", "--decode-threads", 0).exit_code == 0
    assert tiny(data_root, tmp_path / "b.h5", "--decode-threads", 3).exit_code == 0
    same_store(tmp_path / "a.h5", tmp_path / "b.h5")
