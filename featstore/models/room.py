"""How much more memory this process can take, and what limits it: the address-space limit (``ulimit -v``,
``prlimit --as``), the cgroup's ``memory.max`` (a container's, a SLURM job's) and the machine's available memory
(``MemAvailable`` plus free swap), whichever is least; None where none of them can be read (not Linux).

A forward pass that needs more than that dies where featstore cannot say anything: ``std::bad_alloc`` and an abort
under an address-space limit, the kernel's SIGKILL in a cgroup (attack 48 #6). The traced pass's working set of one
image (:func:`featstore.models.traced_bound.check_traced`) is held to it before any image runs.

>>> room = memory_room()
>>> room is None or (room.nbytes >= 0 and room.limit != "")
True
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from featstore.units import format_bytes


@dataclass(frozen=True)
class Room:
    """``nbytes`` more this process can take, held to ``limit`` (said in a line, with the way to raise it)."""

    nbytes: int
    limit: str


def _kib(path: str, key: str) -> int | None:
    """The ``key:`` line's kB of a ``/proc`` status-like file, in bytes (None where missing)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """``memory.max`` minus ``memory.current`` of this process's cgroup (v2), None where unlimited or unreadable."""
    try:
        rel = next(ln[3:] for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / rel.lstrip("/")
        most = (folder / "memory.max").read_text().strip()
        return None if most == "max" else max(0, int(most) - int((folder / "memory.current").read_text()))
    except (OSError, ValueError, StopIteration):
        return None


def memory_room() -> Room | None:
    """The least of the limits this process runs under, as a :class:`Room`; None where none can be read."""
    rooms = []
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    used = _kib("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and used is not None:
        rooms.append(Room(max(0, soft - used), f"its address-space limit (ulimit -v: {format_bytes(soft)})"))
    if (cgroup := _cgroup_room()) is not None:
        rooms.append(Room(cgroup, "its cgroup's memory.max (a container's or a job's memory limit)"))
    free = [_kib("/proc/meminfo", k) for k in ("MemAvailable", "SwapFree")]
    if None not in free:
        rooms.append(Room(sum(free), "the memory and swap available on this machine now"))
    return min(rooms, key=lambda r: r.nbytes) if rooms and os.name == "posix" else None
