"""Which OSErrors met while a run folder is written are the run folder's own: only those are reported as "could not
write run ... into RUNS" (``featstore.runs.write.not_written``). A fit's draft also reads the store meanwhile, and an
HDF5 read error there (a damaged store) was reported as a runs-folder problem, with "pass --runs DIR with a writable
folder" for advice. The run folder's own writes run inside :data:`MARK` or through :class:`OwnWrites`, which set a mark
on their OSErrors; :func:`own` tells a marked one.
"""

from __future__ import annotations

import types

_OWN = "featstore_run_folder"  # set on an OSError met by the run folder's own writes: only those are not_written's


class _Marked:
    """A context marking the OSErrors raised inside it as the run folder's own (``_OWN``)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, OSError):
            setattr(exc, _OWN, True)
        return False


MARK = _Marked()


class OwnWrites:
    """A run folder's :class:`PredictionsWriter` (or one of its members) whose OSErrors are marked as the run folder's:
    a draft's body also reads the store, and an HDF5 read error there was reported as "could not write run ... pass
    --runs DIR with a writable folder"."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, key: str):
        value = getattr(self._target, key)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            with MARK:
                out = value(*args, **kwargs)
            if isinstance(out, types.GeneratorType):  # blocks(): each step is a read of the run's own file
                return _own_steps(out)
            return OwnWrites(out) if hasattr(out, "__enter__") else out

        return call

    def __enter__(self) -> OwnWrites:
        with MARK:
            self._target.__enter__()
        return self

    def __exit__(self, kind, exc, tb):
        with MARK:
            return self._target.__exit__(kind, exc, tb)


def _own_steps(steps):
    """The items of the generator ``steps``, each step's OSError marked as the run folder's."""
    while True:
        with MARK:
            try:
                item = next(steps)
            except StopIteration:
                return
        yield item


def own(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError met by the run folder's own reads or writes (marked by :data:`MARK`)."""
    return isinstance(exc, OSError) and bool(getattr(exc, _OWN, False))
