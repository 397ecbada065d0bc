"""How much more memory this process can take, and what limits it: the address-space limit (``ulimit -v``,
``prlimit --as``), the memory cgroup's limit (v2 or v1, at any level: a container's, a SLURM job's) and the machine's available memory
(``MemAvailable`` plus free swap), whichever is least; None where none of them can be read (not Linux).

A forward pass that needs more than that dies where featstore cannot say anything: ``std::bad_alloc`` and an abort
under an address-space limit, the kernel's SIGKILL in a cgroup (attack 48 #6). The traced pass's working set of one
image (:func:`featstore.models.traced_bound.check_traced`) is held to it before any image runs.

>>> room = memory_room()
>>> room is None or (room.nbytes >= 0 and room.limit != "")
True
"""

from __future__ import annotations

import contextlib
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


UNLIMITED = 1 << 60  # a cgroup v1 limit at or above this is none (the kernel writes 9223372036854771712)


def _mounts(root: Path) -> list[tuple[str, str, str, str]]:
    """``(mount root, mount point, file system type, super options)`` of this process's mounts (``mountinfo``)."""
    found = []
    try:
        lines = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) >= 5 and len(rest) >= 3:
            found.append((fields[3], fields[4], rest[0], rest[2]))
    return found


def _folders(root: Path) -> list[tuple[Path, bool]]:
    """This process's memory cgroup folder and every ancestor up to its mount's root, with whether it is cgroup v2:
    the v2 hierarchy (``0::<path>``) where it is mounted, else v1's ``memory`` controller (``N:memory:<path>``)."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    mounts = _mounts(root)
    for v2 in (True, False):
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3 or (v2 and parts[:2] != ["0", ""]) or (not v2 and "memory" not in parts[1].split(",")):
                continue
            for mroot, point, fstype, options in mounts:
                if fstype != ("cgroup2" if v2 else "cgroup") or (not v2 and "memory" not in options.split(",")):
                    continue
                rel = parts[2][len(mroot) :] if parts[2].startswith(mroot) and mroot != "/" else parts[2]
                here = root / point.lstrip("/") / rel.lstrip("/")
                top = root / point.lstrip("/")
                chain = [here, *[p for p in here.parents if p == top or top in p.parents]]
                limit = "memory.max" if v2 else "memory.limit_in_bytes"  # (a v2 leaf without the controller: above)
                if here.is_dir() and any((p / limit).exists() for p in chain):
                    return [(p, v2) for p in chain]
    return []


def _stat(folder: Path, key: str) -> int:
    """A ``memory.stat`` count (0 where missing)."""
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room(root: Path = Path("/")) -> int | None:
    """The least of ``limit - usage`` over this process's memory cgroup and its ancestors (a SLURM step inside a
    limited job), v2 or v1, the file cache the kernel reclaims first (``inactive_file``) not counted as used; None
    where no level has a limit or none can be read (attack 49 #2: a v1 limit of 1.5 GB was not read, the run was
    SIGKILLed without a line)."""
    rooms = []
    for folder, v2 in _folders(root):
        try:
            limit = (folder / ("memory.max" if v2 else "memory.limit_in_bytes")).read_text().strip()
            if limit == "max" or int(limit) >= UNLIMITED:
                continue
            used = int((folder / ("memory.current" if v2 else "memory.usage_in_bytes")).read_text())
        except (OSError, ValueError):
            continue
        cache = _stat(folder, "inactive_file" if v2 else "total_inactive_file")
        rooms.append(max(0, int(limit) - max(0, used - cache)))
    return min(rooms) if rooms else None


_ELSEWHERE: list[bool] = []  # set while the model is measured for other processes (a Ray driver's, review #3)


@contextlib.contextmanager
def computed_elsewhere():
    """No room inside the block: the model runs in other processes (Ray's workers: their own limits, their own
    checks), so this process's limits say nothing of them (a login node's few GB refused a model the workers fit)."""
    _ELSEWHERE.append(True)
    try:
        yield
    finally:
        _ELSEWHERE.pop()


def memory_room() -> Room | None:
    """The least of the limits this process runs under, as a :class:`Room`; None where none can be read, or inside
    :func:`computed_elsewhere`."""
    if _ELSEWHERE:
        return None
    rooms = []
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    used = _kib("/proc/self/status", "VmSize")
    if soft != resource.RLIM_INFINITY and used is not None:
        rooms.append(Room(max(0, soft - used), f"its address-space limit (ulimit -v: {format_bytes(soft)})"))
    if (cgroup := _cgroup_room()) is not None:
        rooms.append(Room(cgroup, "its cgroup's memory limit (a container's or a job's)"))
    free = [_kib("/proc/meminfo", k) for k in ("MemAvailable", "SwapFree")]
    if None not in free:
        rooms.append(Room(sum(free), "the memory and swap available on this machine now"))
    return min(rooms, key=lambda r: r.nbytes) if rooms and os.name == "posix" else None
