"""Where the Ray engine finds Ray: the address it joins (``--address``, ``RAY_ADDRESS``, ``auto`` read from Ray's own
address file, only where the user's), the folder a local Ray it starts keeps its session in, and the temporary folder
of each worker; the engine itself is :mod:`featstore.extraction.ray`."""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import tempfile

from featstore.caches import NotRegular, open_regular
from featstore.errors import ConfigError
from featstore.modes import others_may_write, renamable_by_others, writers
from featstore.sticky import owner_name

CONNECT_TIMEOUT_S = 5.0  # an address that does not answer a TCP connection within this is refused at once
SOCKET_MAX = 107  # bytes of an AF_UNIX path on Linux (Ray's validate_socket_filepath refuses longer ones)
UNDER_ROOT = len("/session_2026-12-06_17-22-09_123456_4194304/sockets/plasma_store")  # Ray's longest socket path


def _address(given: str | None) -> tuple[str, str]:
    """The address ray.init is given and how messages name it: ``--address``, else the RAY_ADDRESS environment
    variable, else ``"local"`` (a new local Ray; never Ray's guess from the machine's shared /tmp/ray)."""
    if given:
        return _auto(given, "--address")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return _auto(env, "RAY_ADDRESS=")
    return "local", "a local Ray"


def _ray_tmp() -> str:
    """Where Ray keeps its sessions and its address file, as Ray itself decides (``RAY_TMPDIR``, else the ``TMPDIR``
    variable on Linux, else ``/tmp``): not ``tempfile.gettempdir()``, which the CLI points at a private folder where
    ``TMPDIR`` is shared (attack 42 #2: "no Ray started" while the user's was running)."""
    if os.environ.get("RAY_TMPDIR"):
        return os.environ["RAY_TMPDIR"]
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    return "/tmp" if sys.platform.startswith(("linux", "darwin")) else tempfile.gettempdir()


def _local_root() -> str:
    """The folder a local Ray this engine starts keeps its session in (``ray.init``'s ``_temp_dir``), inside a folder
    only the user may enter: Ray makes its own folders ``0777`` without the sticky bit (for every user of the machine),
    so in its default ``<TMPDIR>/ray`` (``/tmp/ray``) any user could rename the live session's folder (its logs,
    sockets, spilled objects) and put his at its name (attack 43 #13; a team's ``2775`` TMPDIR: 42 #2). The first of
    ``ray`` in ``RAY_TMPDIR`` (where it is such a folder of the user's), in featstore's private temporary folder (where
    it is one: ``~/.cache/featstore/tmp``), or in the user's ``0700`` scratch folder there (``featstore-<uid>``:
    :func:`featstore.models.scratch.user_scratch`) whose path fits Ray's sockets (AF_UNIX's 107 bytes; the scratch
    level alone took an ordinary ``/home/alice`` past them: 43 #20). ConfigError naming the fix where none does."""
    from featstore.models.scratch import user_scratch
    from featstore.tmpdir import private_tempdir

    if not hasattr(os, "geteuid"):
        return os.path.join(tempfile.gettempdir(), "ray")
    candidates = [os.environ.get("RAY_TMPDIR", ""), private_tempdir()]
    roots = [os.path.join(c, "ray") for c in candidates if c and _closed(c)]
    roots += [os.path.join(base, "ray")] if not roots and (base := user_scratch()) is not None else []
    if not roots:
        raise ConfigError(
            f"a local Ray needs a folder only you can enter for its session (Ray makes its folders open to every user), "
            f"and featstore's scratch folder in {tempfile.gettempdir()} is not one (said above): set RAY_TMPDIR to a "
            f"folder of yours (mode 0700), or start Ray yourself and give --address"
        )
    for root in roots:
        if len(os.fsencode(root)) + UNDER_ROOT <= SOCKET_MAX:
            return root
    raise ConfigError(
        f"a local Ray keeps its session in {roots[0]}, which is too long for its sockets ({len(os.fsencode(roots[0]))} "
        f"bytes, at most {SOCKET_MAX - UNDER_ROOT}): set RAY_TMPDIR to a short folder of yours (mode 0700, e.g. "
        f"/tmp/ray-$USER), or start Ray yourself and give --address"
    )


def _closed(folder: str) -> bool:
    """Whether ``folder`` is the user's own, no one else may enter it (mode ``0700``, no ACL entry for others) and no
    one else may rename it or a folder above it."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077
    return mine and not others_may_write(st, folder) and renamable_by_others(folder) is None


def worker_tempdir() -> None:
    """In a Ray worker: its temporary files (TensorFlow's autograph modules, imported again by name; Keras's; any
    tempfile user's) in a folder where no one else may rename entries, picked as the CLI picks the driver's
    (:func:`featstore.tmpdir.choose`, without its line: the driver said it). A worker inherits the TMPDIR variable of
    the Ray that started it, not the driver's ``tempfile.tempdir``: a team's ``2775`` TMPDIR was used there. Where
    there is none, the refusal reaches the driver as that one line (:func:`worker_errors`)."""
    from featstore.tmpdir import choose

    tempfile.tempdir = choose()[0]


def _auto(address: str, option: str) -> tuple[str, str]:
    """``address``, with "auto" resolved as Ray would (the address its last ``ray start`` wrote in
    ``<RAY_TMPDIR>/ray/ray_current_cluster``) but only from a file of this user's (or root's) that no one else may
    write: Ray's folder there is open to every user, so another user's file sent the run's connections to their
    listener (attack 26 #9)."""
    said = f"{option} {address}" if option == "--address" else f"{option}{address}"
    if address != "auto":
        return address, said
    path = os.path.join(_ray_tmp(), "ray", "ray_current_cluster")
    try:  # opened once, never followed nor waited on (a link, a FIFO there): caches' own opening
        opened = open_regular(path)
    except NotRegular as exc:
        raise ConfigError(
            f"{said}: {path} is not trusted ({exc}); give --address host:port of your Ray cluster"
        ) from None
    except OSError as exc:
        opened, why = None, exc.strerror
    else:
        why = os.strerror(errno.ENOENT)
    if opened is None:
        raise ConfigError(
            f"{said}: no Ray started on this machine names its address ({path}: {why}); start one with "
            f"`ray start --head`, or give --address host:port"
        )
    fd, st = opened
    try:
        if st.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"{said}: {path} was written by {owner_name(st.st_uid)} (not you), so the address in it is not "
                f"trusted; start Ray again with RAY_TMPDIR set to a folder of yours, or give --address host:port of "
                f"your Ray cluster"
            )
        if others_may_write(st, fd):  # the user's own, but a group or an ACL lets others write it (attack 40 #13)
            raise ConfigError(
                f"{said}: {path} is yours, but {writers(st, fd, path)} may write it, so the address in it is not "
                f"trusted; remove it and start Ray again with RAY_TMPDIR set to a folder of yours, or give --address "
                f"host:port of your Ray cluster"
            )
        found = os.read(fd, 1024).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not found:
        raise ConfigError(f"{said}: {path} is empty; give --address host:port of your Ray cluster")
    return found, f"{said} ({found}, from {path})"


def _check_reachable(address: str, named: str | None = None) -> None:
    """Fail fast, naming the address, when nothing answers there (ray.init would wait for minutes)."""
    named = named or f"--address {address}"
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{named} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {named} ({exc}); is the head node running "
            f"(`ray start --head` there) and the port open from here?"
        ) from None
