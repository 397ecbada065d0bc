"""Stopping the fits of a parallel sweep on Ctrl-C: none is recorded once the interrupt's line can be printed.

Python delivers Ctrl-C to the main thread only; the worker threads of ``sweep --jobs N`` went on fitting and recording
after it, so the "interrupted: runs ... recorded" line could be false, and finalising the interpreter under them hung
on h5py's lock or aborted (attack 54 #1). A :class:`Stop` is the sweep's: each worker runs its fit inside
:meth:`Stop.run`, so :func:`check` (at the checkpoints: a run draft made, each block of rows scored) ends the fit with
:class:`Stopped` once :meth:`Stop.stop` was called, and :func:`publishing` (around the rename that records a run) lets
no run be recorded after it: ``stop()`` waits for a rename in progress, then refuses every later one. Outside a
``Stop.run`` (a plain fit, ``sweep --jobs 1``) both do nothing.

>>> s = Stop(); s.stop()
>>> s.run(check)
Traceback (most recent call last):
featstore.runs.stopping.Stopped: stopped by an interrupt before it was recorded
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

_CURRENT: ContextVar[Stop | None] = ContextVar("featstore_stop", default=None)


class Stopped(Exception):
    """A worker's fit ended at a checkpoint after Ctrl-C: nothing of it was recorded."""

    def __init__(self):
        super().__init__("stopped by an interrupt before it was recorded")


class Stop:
    """One parallel sweep's stop switch (see the module)."""

    def __init__(self):
        self._gate = threading.Lock()
        self.stopped = False

    def stop(self) -> None:
        """Let no run of this sweep be recorded from now on (a rename in progress finishes first)."""
        with self._gate:
            self.stopped = True

    def run(self, fn, *args):
        """``fn(*args)`` under this stop: its checkpoints and its recording obey :meth:`stop`."""
        token = _CURRENT.set(self)
        try:
            return fn(*args)
        finally:
            _CURRENT.reset(token)


def check() -> None:
    """Raise :class:`Stopped` when the current thread's sweep was stopped."""
    stop = _CURRENT.get()
    if stop is not None and stop.stopped:
        raise Stopped()


@contextlib.contextmanager
def publishing() -> Iterator[None]:
    """Around the rename that records a run: :class:`Stopped` instead, once its sweep was stopped."""
    stop = _CURRENT.get()
    if stop is None:
        yield
        return
    with stop._gate:
        if stop.stopped:
            raise Stopped()
        yield
