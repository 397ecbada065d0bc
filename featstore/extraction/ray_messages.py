"""What Ray says while featstore runs it: its lines no featstore user can act on dropped, and a featstore error an
actor raised (in its constructor or in a batch) raised at the driver as that one line, not as Ray's error with the
worker's traceback."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

import numpy as np

from featstore import errors
from featstore.errors import ConfigError

# Ray's lines that say nothing a featstore user can act on (featstore hides progress bars on purpose; the actors'
# constructor arguments are a few small values). Real errors pass, and so do Ray's lines about token authentication: a
# local Ray featstore starts has its own token (said by featstore), and Ray's line about a token it found is the user's
# to read (hiding it hid a token world-readable in ~/.ray/auth_token: attack 45 #1).
_RAY_LOG_NOISE = {
    "ray.data._internal.progress": ("Progress bars disabled", "Progress bars for operators disabled"),
    # a batch's error: featstore raises it (its own one line, or Ray's error with the worker's traceback); these two
    # only advise DataContext settings that featstore owns
    "ray.data._internal.execution.streaming_executor_state": ("An exception was raised from a task of operator",),
    # the end of each run's dataset (featstore's own summary line says how it went)
    "ray.data._internal.execution.streaming_executor": ("✔️  Dataset ", "⚠️  Dataset "),
    "ray.data.exceptions": ("Exception occurred in user code, with the abbreviated stack trace below",),
}
# (anywhere in a line: it comes after a progress bar's last frame, which ends in no line break)
_RAY_FD_NOISE = re.compile(
    rb"\[[^]\n]* E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .* has constructor arguments.*\n?"
)


class _DropLines(logging.Filter):
    """Drop log records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


class RayNoise:
    """While a Ray engine runs: Ray's informational log lines dropped, and file descriptor 2 passed through a thread
    that drops only the core worker's line about actor constructor arguments (it is written by C++, not logged)."""

    def __init__(self):
        self.filters = [(logging.getLogger(n), _DropLines(starts)) for n, starts in _RAY_LOG_NOISE.items()]
        for lg, f in self.filters:
            lg.addFilter(f)
        self.saved = self.thread = None

    def filter_fd2(self) -> None:
        """Pass fd 2 through the line filter from now on (nothing is done where fd 2 cannot be duplicated)."""
        if self.saved is not None:
            return
        try:
            sys.stderr.flush()
            self.saved, out = os.dup(2), os.dup(2)
            read, write = os.pipe()
            os.dup2(write, 2)
            os.close(write)
        except (OSError, ValueError, AttributeError):  # no fd 2 (a notebook): log filters only
            self.saved = None
            return
        self.thread = threading.Thread(target=self._pass, args=(read, out), daemon=True, name="featstore-stderr")
        self.thread.start()

    @staticmethod
    def _pass(read: int, out: int) -> None:
        """Copy lines from ``read`` to ``out`` (this thread's own copy of the old fd 2), dropping the noise."""
        try:
            with os.fdopen(read, "rb") as fh:
                for line in iter(fh.readline, b""):
                    line = _RAY_FD_NOISE.sub(b"", line)  # what came before it on its line is kept
                    if line:
                        os.write(out, line)
        finally:
            os.close(out)

    def close(self) -> None:
        """Put fd 2 and the loggers back; lines still in the pipe are written first."""
        for lg, f in self.filters:
            lg.removeFilter(f)
        if self.saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)  # the pipe's last writer closes: the thread drains it and ends
        os.close(self.saved)
        self.saved = None
        if self.thread is not None:
            self.thread.join(5)


# the last line of a worker's traceback when an actor's constructor refused (fingerprint, the driver's ONNX file, the
# weights: any featstore error, each raised at the driver as its own class); its message runs to the end, line breaks
# and all (a store folder's name may hold one)
_WORKER_ERROR = re.compile(r"^featstore\.errors\.(\w+Error): ", re.MULTILINE)
# what follows a task's error in Ray Data's text (its UserCodeException around the actor's exception)
_RAY_CHAINED = "\n\nThe above exception was the direct cause of the following exception:"


def worker_errors(ray, batches: Iterator) -> Iterator:
    """``batches``; a featstore error that an actor's constructor raised (another fingerprint, the driver's ONNX file
    missing or changed, its weights) or one of its batches raised (TensorFlow's out of memory, as the local engine
    words it) is raised here as that one-line error, not as Ray's ActorDiedError or RayTaskError with the worker's
    traceback."""
    try:
        yield from batches
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
        text = str(exc)
        found = list(_WORKER_ERROR.finditer(text))
        if not found:
            raise
        kind, message = found[-1].group(1), text[found[-1].end() :].split(_RAY_CHAINED)[0].rstrip()
        raise _error(kind, message) from exc


def _error(kind: str, message: str) -> errors.FeatstoreError:
    """featstore's error class named ``kind`` (a ConfigError if it names none) with ``message``."""
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.FeatstoreError)):
        cls = ConfigError
    return cls(message)


class Guarded:
    """The actor Ray Data builds: ``actor(*args)`` (:class:`featstore.extraction.ray.Forward`, or the class given),
    with a featstore error of its constructor or of a batch returned as a value, a ``refused`` column the driver
    raises as that one line (:func:`raise_refused`). Raised in the actor, Ray printed ~200 lines of its own about the
    dead actor and the task it retried (their tracebacks, the worker's) before featstore's line (attack 47 #7: a
    worker whose keras.json says float16); any other error is Ray's, as it is."""

    def __init__(self, actor: type, *args):
        self.actor, self.refused = None, None
        try:
            self.actor = actor(*args)
        except errors.FeatstoreError as exc:  # not raised: the actor lives, and its first batch says why
            self.refused = exc

    def __call__(self, batch: dict) -> dict:
        try:
            if self.refused is None:
                return self.actor(batch)
        except errors.FeatstoreError as exc:
            self.refused = exc
        line = f"{type(self.refused).__name__}: {self.refused}"
        return {"index": np.asarray(batch["index"]), "refused": np.full(len(batch["index"]), line, dtype=object)}


def raise_refused(batch: dict) -> None:
    """Raise the featstore error a :class:`Guarded` actor returned in ``batch``, if any."""
    if "refused" in batch and len(batch["refused"]):
        kind, _, message = str(batch["refused"][0]).partition(": ")
        raise _error(kind, message)
