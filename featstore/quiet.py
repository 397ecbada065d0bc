"""Hide TensorFlow's C++ start-up chatter on a CPU machine, keep everything else.

TensorFlow's C++ side writes lines such as ``I0000 ... cudart_stub.cc ...`` and ``E0000 ... failed call to
cuInit`` straight to file descriptor 2 while it loads, before absl's logging is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` cannot hide them (abseil-cpp #1718). The ``featstore`` command (and a Python user who
calls ``featstore.quiet_tensorflow()`` before anything imports TensorFlow) therefore arranges for the
first ``import tensorflow`` of the process (by Keras, featstore or you) to run with fd 2 captured: known
start-up noise is dropped, every other captured line is written back to stderr (also when the import
fails), and featstore logs one INFO line naming the GPU(s), if any. ``FEATSTORE_VERBOSE=1`` (or the CLI's
``--verbose``) turns this off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

logger = logging.getLogger(__name__)

# TensorFlow's start-up lines that say nothing to a user: absl/glog INFO and WARNING lines, CUDA probing
# errors on machines without a GPU driver, duplicate CUDA plugin registrations, CPU instruction-set notes.
_TF_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} |"
    r"E\d{4} .*(cuInit|cuda|CUDA|cuDNN|cuFFT|cuBLAS|Unable to register)|"
    r"This TensorFlow binary is optimized|To enable the following instructions"
)


def set_quiet(quiet: bool) -> None:
    """Hide (True) or show (False) TensorFlow's start-up lines; only effective before TensorFlow is imported."""
    finders = [f for f in sys.meta_path if isinstance(f, _QuietTensorFlowFinder)]
    if not quiet:
        for f in finders:
            sys.meta_path.remove(f)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # INFO and WARNING lines logged after start-up
    if sys.stderr is None:  # started with fd 2 closed: nothing is shown, and fd 2 may be reused by a file
        return
    if "tensorflow" not in sys.modules and not finders:
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


def quiet_tensorflow() -> None:
    """Hide TensorFlow's start-up lines in this process, unless ``FEATSTORE_VERBOSE`` is set to something other than 0.

    ``import featstore`` does nothing of the kind by itself; call this first in a script or notebook. Example::

        import featstore
        featstore.quiet_tensorflow()
    """
    set_quiet(os.environ.get("FEATSTORE_VERBOSE", "0") in ("", "0"))


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """On the first ``import tensorflow`` (by keras or featstore), load it through :class:`_QuietLoader`."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and importlib.util.find_spec below must not come back here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's import and CUDA probe with fd 2 captured, then replays what is not noise."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        gpus: list = []
        ok, captured = False, []
        try:
            with _fd2_captured() as captured:
                try:
                    self.loader.exec_module(module)
                finally:
                    module.__loader__ = module.__spec__.loader = self.loader
                try:  # CUDA start-up (cuInit) happens here, still captured
                    gpus = [
                        f"{g.name} ({module.config.experimental.get_device_details(g).get('device_name', '?')})"
                        for g in module.config.list_physical_devices("GPU")
                    ]
                except (
                    Exception
                ) as exc:  # a broken CUDA set-up must not break the import; TensorFlow reports it when used
                    logger.debug("listing GPUs failed: %s", exc)
                ok = True
        finally:
            for line in captured[0].splitlines() if captured else []:
                if line.strip() and (not ok or not _TF_NOISE.match(line)):  # a failed import shows everything it wrote
                    sys.stderr.write(line + "\n")
        if gpus:
            logger.info("TensorFlow uses %s", ", ".join(gpus))


@contextlib.contextmanager
def _fd2_captured():
    """Point file descriptor 2 at a temporary file; yields a list that receives its text once fd 2 is restored."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))
