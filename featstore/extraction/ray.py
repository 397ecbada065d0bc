"""The Ray Data engine: the same listing, extractor and writer as the local loop; only the forward pass runs elsewhere.

The images still to do become a Ray dataset of ``(index, path)`` rows, one block per batch. ``map_batches`` hands the
blocks to a fixed pool of actors (:class:`Forward`, or the class given as ``actor``); each actor builds the frozen
backbone once (checking that its fingerprint is the driver's, so a worker with other weights cannot slip in), decodes
its batch with featstore's own decoder (:func:`featstore.images.decode.iter_decoded`: same failure reasons, same
timeouts) and returns the features. Ray Data keeps the output in input order (``preserve_order``); the driver checks
every row's index and feeds the one writer (:mod:`featstore.store.writer`) through the same loop as the local engine
(:func:`featstore.extraction.loop.run_pass`): same batch commits, ``committed_rows``, resume. A killed actor is
restarted by Ray and its batch retried (Ray Data's defaults for actor pools).

>>> from featstore import ExtractorConfig, extract
>>> from featstore.extraction.ray import RayOptions
>>> extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"),
...         engine="ray", ray_options=RayOptions(workers=2))                      # doctest: +SKIP
>>> extract("data/fashion_mnist", "train", "features.h5", ExtractorConfig(weights="hed-bsds500"),
...         engine=RayEngine(RayOptions(workers=2)))                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from featstore.errors import ConfigError, DataError
from featstore.extraction.local import refuse_out_of_memory, warm_up
from featstore.extraction.ray_address import (
    LocalToken,
    _address,
    _auto,  # noqa: F401 - where tests and callers found it
    _check_reachable,
    _local_root,
    token_file_line,
    worker_tempdir,
)
from featstore.extraction.ray_messages import Guarded, RayNoise, raise_refused, worker_errors
from featstore.images.decode import iter_decoded
from featstore.models.forward import numerics
from featstore.models.onnx_runtime import default_threads

logger = logging.getLogger(__name__)

EXTRA = 'pip install "featstore[ray]"'


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = (
        None  # None: a Ray already initialised in this process, else RAY_ADDRESS, else a new local one; or "auto", "host:6379", "ray://head:10001"
    )
    workers: int = 1  # actors, each holding one copy of the frozen backbone
    gpus_per_worker: float = 0.0  # GPUs each actor reserves (0: CPU only)
    cpus_per_worker: float | None = (
        None  # CPUs each actor reserves (and TensorFlow threads it uses); None: the cluster's CPUs / workers
    )
    decode_threads: int = 2  # decode threads inside each actor


def require_ray():
    """Import Ray Data, or a ConfigError naming the extra to install (never a quiet fall-back to the local engine)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"--engine ray needs Ray Data, which is not installed here ({exc}). Install the extra: {EXTRA}"
        ) from None
    return ray


def validate(options: RayOptions) -> None:
    """Refuse impossible options before anything starts."""
    if options.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {options.workers}")
    if options.gpus_per_worker < 0 or (options.cpus_per_worker is not None and options.cpus_per_worker <= 0):
        raise ConfigError("--gpus-per-worker must be 0 or more, and CPUs per worker more than 0")
    if options.decode_threads < 0:
        raise ConfigError(f"decode_threads must be 0 or more, got {options.decode_threads}")


class RayEngine:
    """Connects to (or starts) Ray, checks resources and data visibility, and streams features back in order.

    ``actor`` is the class each actor of the pool is made of (default :class:`Forward`; it is built with Forward's
    arguments and called with a batch of ``index``/``path`` rows). ``extract(engine=RayEngine(...))`` runs on it; the
    caller then closes it (``close()``, or ``with RayEngine(...) as engine``).
    """

    name = "ray"
    steady_state = True  # the first features wait for the actors to be built: start-up, not throughput

    def __init__(self, options: RayOptions | None = None, *, actor: type | None = None):
        self.options = options or RayOptions()
        validate(self.options)
        self.ray = require_ray()
        self.actor = actor or Forward
        self.started_ray = False  # this engine called ray.init (and shuts it down in close())
        self.cpus_per_worker = 1.0
        self._bound: tuple | None = None
        self._quiet: RayNoise | None = None  # Ray's informational lines hidden while this engine runs
        self._token = LocalToken()  # a local Ray's own token, in the environment while it runs

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, root: Path, first_image: str | None) -> float:
        """Connect, check resources and that the workers see ``root``; returns the seconds it took."""
        try:
            return self._start(root, first_image)
        except BaseException:
            if self._quiet is not None:  # refused: Ray's lines and fd 2 are as they were, even if nobody closes us
                self._quiet.close()
                self._quiet = None
            if not self.started_ray:  # (a Ray that started runs with its token until close())
                self._token.restore()
            raise

    def _start(self, root: Path, first_image: str | None) -> float:
        """start() without the clean-up on failure."""
        t = time.monotonic()
        ray, o = self.ray, self.options
        quiet = self._quiet is None and os.environ.get("FEATSTORE_VERBOSE", "0") in ("", "0")
        if quiet:
            self._quiet = RayNoise()  # its log filters before ray.init, which logs
        if not ray.is_initialized():
            # Ray's own default (address=None) joins whatever /tmp/ray/ray_current_cluster names, a file any user of the
            # machine can write: another user's listener got the run's connections (attack 25). RAY_ADDRESS is this
            # user's own setting (a Ray job's driver has it), so it is kept; else a new local Ray, as the docs say.
            address, named = _address(o.address)
            session_root = _local_root() if address == "local" else None
            if (line := token_file_line(address == "local")) is not None:
                logger.warning("%s", line)
            if address != "local":
                _check_reachable(address, named)
            else:
                self._token.set()
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                    configure_logging=False,
                    **({"_temp_dir": session_root} if session_root else {}),  # (a local Ray's: always)
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                said = f"cannot connect to Ray at {named}" if address != "local" else "cannot start a local Ray"
                raise ConfigError(f"{said}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - a local Ray that cannot start raises a bare Exception (timeout)
                if address != "local":
                    raise
                why = (str(exc).strip().splitlines() or [repr(exc)])[0][:200]
                raise ConfigError(
                    f"cannot start a local Ray ({why}): its logs under {session_root}/session_latest/logs "
                    f"say why (a memory limit such as ulimit -v stops its object store); run with --engine local, or "
                    f"start Ray yourself and give --address"
                ) from None
            self.started_ray = True
        elif o.address:
            logger.info("Ray is already initialised in this process; --address %s is not used", o.address)
        if quiet:
            self._quiet.filter_fd2()  # after ray.init: the processes it started do not inherit the pipe
        self._check_resources()
        self._check_data_visible(root, first_image)
        return time.monotonic() - t

    def _check_resources(self) -> None:
        """Refuse more GPUs or CPUs than the cluster has, showing both figures."""
        o, total = self.options, self.ray.cluster_resources()
        gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
        if o.gpus_per_worker * o.workers > gpus:
            raise ConfigError(
                f"--workers {o.workers} x --gpus-per-worker {o.gpus_per_worker:g} asks for "
                f"{o.workers * o.gpus_per_worker:g} GPUs; the Ray cluster has {gpus:g}. Ask for fewer"
            )
        node_cpus = max([float(n["Resources"].get("CPU", 0)) for n in self.ray.nodes() if n.get("Alive")] or [cpus])
        self.cpus_per_worker = o.cpus_per_worker or max(1.0, min(node_cpus, math.floor(cpus / o.workers)))
        if self.cpus_per_worker * o.workers > cpus:
            raise ConfigError(
                f"--workers {o.workers} x {self.cpus_per_worker:g} CPUs each needs {self.cpus_per_worker * o.workers:g} "
                f"CPUs; the Ray cluster has {cpus:g}. Ask for fewer workers"
            )

    def _check_data_visible(self, root: Path, first_image: str | None) -> None:
        """Run one task on a worker: the data root and the first image must be readable there (shared storage)."""

        @self.ray.remote(num_cpus=0)
        def probe(root: str, image: str | None) -> str:
            bad = [p for p in (root, image) if p is not None and not os.access(p, os.R_OK)]
            return f"{socket.gethostname()} cannot read {', '.join(bad)}" if bad else ""

        problem = self.ray.get(probe.remote(str(root.resolve()), first_image))
        if problem:
            raise DataError(
                f"a Ray worker on {problem}: the data must be on storage every worker sees at the same path "
                f"(a shared filesystem such as NFS mounted alike on every node)"
            )

    def bind(self, extractor, *, jit: bool = False, batch_size: int = 32) -> None:
        """Run ``extractor``'s configuration on the actors in the next pass (they build and check it themselves; with
        ``--runtime onnx`` each loads the ONNX file the driver exported and checked, verified by its digest)."""
        runtime_file = getattr(extractor, "runtime_file", None)
        if extractor.config.runtime != "keras" and runtime_file is None:
            raise ConfigError(f"--runtime {extractor.config.runtime} on Ray runs the driver's cached file; it has none")
        fingerprints = [a["fingerprint"] for _, a in extractor.outputs]
        self._bound = (extractor.config, jit, batch_size, fingerprints, runtime_file)

    def outcomes(self, files: list[str]) -> Iterator[tuple[list[np.ndarray] | None, str]]:
        """(features per output or None, failure reason) for every file, in order."""
        config, jit, batch_size, fingerprints, runtime_file = self._bound
        for _, feats, reason in self.stream(
            config, jit, batch_size, fingerprints, files, progress=False, runtime_file=runtime_file
        ):
            yield feats, reason

    def forward(self, payloads: list[list[np.ndarray]], transform=None) -> list[np.ndarray]:
        """One batch's features per output: the actors computed them already (a batch transform runs locally only)."""
        if transform is not None:
            raise ConfigError("augmented copies (--augment K) run on the local engine, not on Ray")
        return [np.stack([p[k] for p in payloads]) for k in range(len(payloads[0]))]

    def stream(
        self,
        config,
        jit: bool,
        batch_size: int,
        fingerprints: list[str],
        paths: list[str],
        progress: bool,
        runtime_file: tuple[str, str] | None = None,
    ) -> Iterator[tuple[int, list[np.ndarray] | None, str]]:
        """(offset into ``paths``, features per output or None, failure reason) for every image, in order;
        ``runtime_file``: ``(path, sha256)`` of the driver's checked ONNX file (``--runtime onnx``)."""
        ray = self.ray
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = (
            True  # rows come back in input order: the store's row order is the listing's
        )
        ctx.enable_progress_bars = progress
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = False
        rows = [
            {"index": i, "path": os.fsencode(p)} for i, p in enumerate(paths)
        ]  # bytes: any file name survives Arrow
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
        o = self.options
        ds = ds.map_batches(
            Guarded,  # a featstore error of an actor is returned as a value: one line, none of Ray's (attack 47 #7)
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=o.workers),
            fn_constructor_args=(
                self.actor,
                config,
                jit,
                batch_size,
                fingerprints,
                o.decode_threads,
                self.cpus_per_worker,
                runtime_file,
                numerics(config.runtime),  # the driver's, recorded in the split: every worker must compute so
            ),
            num_cpus=self.cpus_per_worker,
            num_gpus=o.gpus_per_worker or None,
        )
        expected = 0
        batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        for batch in worker_errors(ray, batches):
            raise_refused(batch)
            outputs = sorted((k for k in batch if k.startswith("f")), key=lambda k: int(k[1:]))
            for j, index in enumerate(batch["index"].tolist()):
                if index != expected:  # never reorder or drop silently: the row order is the store's contract
                    raise RuntimeError(
                        f"Ray returned image {index} where {expected} was due; the store is left at its last commit"
                    )
                expected += 1
                reason = str(batch["reason"][j])
                yield index, (None if reason else [batch[k][j] for k in outputs]), reason
        if expected != len(paths):
            raise RuntimeError(f"Ray returned {expected} of {len(paths)} images; the store is left at its last commit")

    def close(self) -> None:
        """Shut down the Ray this engine started (a Ray the caller initialised is left running)."""
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self.started_ray = False
        self._token.restore()
        if self._quiet is not None:
            self._quiet.close()
            self._quiet = None


class Forward:
    """One Ray actor: the frozen backbone built once; each call decodes a batch of paths and returns their features.

    With ``config.runtime="onnx"`` it builds the Keras cut too (its fingerprint checked as always), then loads the ONNX
    file the driver exported and checked (``runtime_file``: path and sha256, verified here) and checks it against its
    own Keras pass on the 4 seeded images; it never exports."""

    def __init__(
        self,
        config,
        jit: bool,
        batch_size: int,
        fingerprints: list[str],
        decode_threads: int,
        cpus: float,
        runtime_file: tuple[str, str] | None = None,
        driver_numerics: dict | None = None,
    ):
        from featstore.quiet import quiet_tensorflow

        worker_tempdir()  # before TensorFlow writes anything
        quiet_tensorflow()  # a worker process is not the CLI's: hide TensorFlow's start-up lines here too (FEATSTORE_VERBOSE=1 shows them)
        import tensorflow as tf

        from featstore.kerasconfig import check_loaded
        from featstore.models.extractor import Extractor

        threads = max(1, int(cpus))
        try:  # this actor's share of the CPUs, not every core of the node
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:
            pass  # TensorFlow already initialised in this worker process (a restarted actor may reuse one)
        here = f"Keras in the Ray worker on {socket.gethostname()}"  # its settings, not the driver's (attack 46 #8)
        check_loaded(False, here, "set it where the workers run (their keras.json, or KERAS_HOME where Ray started)")
        if driver_numerics is not None and numerics(config.runtime) != driver_numerics:  # what the split says
            raise ConfigError(
                f"a Ray worker on {socket.gethostname()} computes with TensorFlow's oneDNN kernels "
                f"{'on' if numerics(config.runtime)['onednn'] else 'off'}, the driver (whose setting the split records) "
                f"{'on' if driver_numerics['onednn'] else 'off'}: their features differ in the last digits. Set "
                f"TF_ENABLE_ONEDNN_OPTS the same (0 or 1) where the driver and every worker run"
            )
        self.ex = Extractor(replace(config, runtime="keras"), jit=jit, jit_batch=batch_size)
        got = [a["fingerprint"] for _, a in self.ex.outputs]
        if got != fingerprints:
            raise ConfigError(
                f"a Ray worker on {socket.gethostname()} built features with fingerprint {got[0][:12]}, the driver "
                f"{fingerprints[0][:12]} (other weights or library versions there?); every worker must load the same weights"
            )
        if config.runtime != "keras":
            if runtime_file is None:
                raise ConfigError(f"--runtime {config.runtime} on Ray needs the driver's checked file; none was given")
            self.ex.use_runtime(config.runtime, exported=tuple(runtime_file), threads=default_threads(threads))
        warm_up(self.ex)  # traced in the actor's start-up, not in its first batch
        self.decode_threads = decode_threads

    def __call__(self, batch: dict) -> dict:
        paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
        size = self.ex.config.image_size
        decoded = list(iter_decoded(paths, size, self.decode_threads, max(1, len(paths))))
        ok = [i for i, (_, img, _) in enumerate(decoded) if img is not None]
        out = {
            "index": np.asarray(batch["index"], dtype=np.int64),
            "reason": np.array([reason for _, _, reason in decoded], dtype=object),
        }
        try:
            feats = self.ex.features(np.stack([decoded[i][1] for i in ok])) if ok else None
        except Exception as exc:  # the driver raises a featstore error named in the task's traceback as that one line
            refuse_out_of_memory(exc, len(ok), self.ex)
            raise
        for k, (_, attrs) in enumerate(self.ex.outputs):
            full = np.zeros((len(paths), *attrs["feature_shape"]), dtype=self.ex.config.dtype)
            if feats is not None:
                full[ok] = feats[k]
            out[f"f{k}"] = full
        return out
