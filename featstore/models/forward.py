"""The forward pass of a built extractor model: one traced TensorFlow function for every batch size, made on first use
(:class:`Lazy`), or XLA-compiled for ``--jit`` and checked against the uncompiled pass at start-up.

>>> run = trace(model, 32, 3)               # doctest: +SKIP
>>> run(np.zeros((2, 32, 32, 3), np.float32)).shape   # doctest: +SKIP
(2, 1, 1, 512)
"""

from __future__ import annotations

import logging
import time

import numpy as np

from featstore.errors import ConfigError
from featstore.models.agreement import largest_difference, seeded_images, worst_output

logger = logging.getLogger(__name__)

# --jit: the compiled forward pass may differ from the uncompiled one by at most this fraction of the largest |feature| of
# the check batch (float32: reassociated sums differ by ~1e-6 of it; float16 arithmetic by ~1e-3). Within it the features
# are the fingerprint's features, so --jit is not fingerprinted; over it, --jit is refused.
JIT_TOLERANCE = {"float32": 1e-4, "mixed_float16": 1e-2}
JIT_PROBE_ROWS = 8  # rows of the check batch when the caller does not name its batch size
JIT_CHECK_ROWS = 4  # rows of it also run through the uncompiled model and compared


def numerics(runtime: str = "keras") -> dict[str, bool]:
    """The split attributes saying how this process computes features beyond the fingerprint: ``onednn``, whether
    TensorFlow runs its oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS``, else TF's default for this CPU), whose features differ
    from TF's own kernels' in the last digits; a resume under the other is refused (attack 48 #1). None for a runtime
    TensorFlow does not compute (onnx): none."""
    if runtime != "keras":
        return {}
    try:
        from tensorflow.python.util import _pywrap_util_port  # TF's own test of it (no public API says it)
    except ImportError:  # a TensorFlow without it: not recorded, so not compared (same_numerics still checks the bits)
        return {}
    return {"onednn": bool(_pywrap_util_port.IsMklEnabled())}


def machine() -> dict:
    """Where features are computed, recorded in a split to say it when a resume computes otherwise (attack 49 #1):
    TensorFlow's intra-op threads (``TF_NUM_INTRAOP_THREADS``, else the cores this process may run on) and the CPU."""
    import os

    given = os.environ.get("TF_NUM_INTRAOP_THREADS", "").strip()  # as TensorFlow reads it: else its default
    threads = int(given) if given.isascii() and given.isdigit() and 0 < int(given) < 2**31 else None
    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        cpu = ""
    return {"threads": threads, "cpu": cpu[:200] or "unknown"}


def on_gpu() -> bool:
    """Whether TensorFlow computes on a GPU here (one is visible to it): its memory is not this process's RAM, and
    cuDNN picks convolution algorithms per process (a batch's last bits differ from one run to the next)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def backend() -> str:
    """Keras's backend name."""
    import keras

    return keras.backend.backend()


def require_jit_backend() -> None:
    """Refuse --jit where featstore cannot compile the forward pass with XLA (a Keras backend other than TensorFlow)."""
    if backend() != "tensorflow":
        raise ConfigError(
            f"--jit compiles the forward pass with TensorFlow's XLA, but Keras runs on the {backend()!r} backend; "
            f"run without --jit, or set KERAS_BACKEND=tensorflow"
        )


def check_jit(prepare, reference, compiled, config, rows: int, shown: str) -> float:
    """Run the compiled forward pass on ``rows`` seeded random images (compiling it for that batch shape) and compare its
    first rows with the uncompiled pass; the max abs difference, or ConfigError when it is over :data:`JIT_TOLERANCE`.
    """
    import tensorflow as tf

    x = prepare(seeded_images(rows, config.image_size))
    t = time.perf_counter()
    try:
        got = compiled(x)
    except (tf.errors.OpError, ValueError, TypeError) as exc:  # a layer XLA cannot compile, or a TensorFlow without XLA
        raise ConfigError(
            f"--jit: XLA could not compile {shown}: {str(exc).splitlines()[0]}. Run without --jit"
        ) from exc
    seconds = time.perf_counter() - t
    k = min(JIT_CHECK_ROWS, len(x))
    want = reference(x[:k])
    compute = "mixed_float16" if config.mixed_precision else "float32"
    _, worst, scale, limit = worst_output(got, want, JIT_TOLERANCE[compute], 1e-6)  # each output to its own scale
    logger.debug(
        "--jit: XLA compiled %s for batches of %d in %.1f s; max abs difference to the uncompiled model %.3g "
        "(largest feature %.3g, tolerance %.3g)",
        shown,
        len(x),
        seconds,
        worst,
        scale,
        limit,
    )
    if not worst <= limit:
        raise ConfigError(
            f"--jit: the XLA-compiled {shown} differs from the uncompiled model by up to {worst:.3g} (largest feature "
            f"{scale:.3g}; tolerance {JIT_TOLERANCE[compute]:g} of it, {limit:.3g}); refusing to write features that "
            f"would not match the fingerprint. Run without --jit"
        )
    return largest_difference(got, want)[0]


class Lazy:
    """A forward function made by ``make`` on its first call (or :meth:`build`)."""

    def __init__(self, make):
        self._make, self._fn = make, None

    def build(self):
        if self._fn is None:
            self._fn = self._make()
        return self._fn

    def __call__(self, x):
        return self.build()(x)


def trace(model, size: int, channels: int, jit: bool = False):
    """The model as one traced function for any batch size (no `predict`-in-a-loop leak, no retracing per shape).

    ``jit=True``: XLA-compiled (``jit_compile=True``); XLA compiles once per batch shape, on its first call.
    """
    if backend() != "tensorflow":
        return model.predict_on_batch
    import tensorflow as tf

    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, channels), tf.float32)],
        jit_compile=jit or None,
    )
    fn.get_concrete_function()  # trace now: every batch size then reuses this one graph
    if not jit:  # (XLA compiles per batch shape: a one-image call would compile a shape no batch has)
        # TensorFlow optimises the traced graph on its first call (Grappler: ~0.5-2 s for a 12-block ViT on a CPU),
        # so one blank image goes through it now, in the build (start-up), not in the first batch of the loop
        fn(tf.zeros((1, size, size, channels), tf.float32))

    def run(x):
        out = fn(tf.convert_to_tensor(x, tf.float32))
        return [o.numpy() for o in out] if isinstance(out, (list, tuple)) else out.numpy()

    return run


def in_parts(fn, x, step: int) -> list:
    """``fn`` (a forward pass) over the batch ``x`` ``step`` rows a call, each output's rows joined: a list of arrays,
    one per output (:meth:`featstore.models.extractor.Extractor.rows_per_call` gives the step)."""
    parts = [fn(x[i : i + step]) for i in range(0, max(len(x), 1), step)]  # (an empty batch: one call)
    parts = [p if isinstance(p, (list, tuple)) else [p] for p in parts]
    return list(parts[0]) if len(parts) == 1 else [np.concatenate(p) for p in zip(*parts)]
