"""Where the Ray engine finds Ray: the address it joins (``--address``, ``RAY_ADDRESS``, ``auto`` read from Ray's own
address file, only where the user's), the folder a local Ray it starts keeps its session in and the token it
authenticates with, and the temporary folder of each worker; the engine itself is :mod:`featstore.extraction.ray`."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import stat
import sys
import tempfile

from featstore.caches import NotRegular, open_regular
from featstore.errors import ConfigError
from featstore.modes import _private_group, others_may_write, renamable_by_others, writers
from featstore.sticky import owner_name
from featstore.tmpdir import closed

logger = logging.getLogger("featstore.extraction.ray")

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
    sockets, spilled objects) and put his at its name (attack 43 #13; a team's ``2775`` TMPDIR: 42 #2). A ``RAY_TMPDIR``
    the user set is used (:func:`_given_root`) or refused with its own reason (attack 45 #2: it was passed over in
    silence). Else the first of ``ray`` in featstore's private temporary folder (where it is such a folder:
    ``~/.cache/featstore/tmp``), in the user's ``0700`` scratch folder there (``featstore-<uid>``:
    :func:`featstore.models.scratch.user_scratch`), or in that scratch folder in ``/tmp`` (where no one else may rename
    entries in it: a home whose private folder is too long, 43 #20) whose path fits Ray's sockets (AF_UNIX's 107
    bytes). ConfigError naming the fix where none does."""
    from featstore.models.scratch import user_scratch
    from featstore.tmpdir import private_tempdir

    if not hasattr(os, "geteuid"):
        return os.path.join(tempfile.gettempdir(), "ray")
    if given := os.environ.get("RAY_TMPDIR", ""):  # Ray takes an absolute one only ("temp_dir must be absolute": 46 #6)
        return _given_root(os.path.abspath(given))
    private = private_tempdir()
    roots = [os.path.join(private, "ray")] if closed(private) else []
    roots += [os.path.join(base, "ray")] if not roots and (base := user_scratch()) is not None else []
    if not roots:
        raise ConfigError(
            f"a local Ray needs a folder only you can enter for its session (Ray makes its folders open to every user), "
            f"and featstore's scratch folder in {tempfile.gettempdir()} is not one (said above): set RAY_TMPDIR to a "
            f"folder of yours (mode 0700), or start Ray yourself and give --address"
        )
    if not _fits(roots[0]) and renamable_by_others("/tmp") is None and (short := user_scratch("/tmp")) is not None:
        roots.append(os.path.join(short, "ray"))  # /tmp/featstore-<uid>/ray: 23 bytes for uids up to 99999
    for root in roots:
        if _fits(root):
            return root
    raise ConfigError(
        f"a local Ray keeps its session in {roots[0]}, which is too long for its sockets ({len(os.fsencode(roots[0]))} "
        f"bytes, at most {SOCKET_MAX - UNDER_ROOT}): set RAY_TMPDIR to a short folder of yours (mode 0700, e.g. "
        f"/tmp/ray-$USER), or start Ray yourself and give --address"
    )


def _not_private(level: str) -> str:
    """Why others may rename entries in ``level`` (:func:`featstore.modes.renamable_by_others`'s answer)."""
    try:
        st = os.lstat(level)
    except OSError as exc:
        return f"{level}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{level} is a link of {owner_name(st.st_uid)}'s"
    if st.st_uid not in (os.geteuid(), 0):
        return f"{level} is {owner_name(st.st_uid)}'s"
    return f"{writers(st, level, level)} may rename entries in {level}"


def _fits(root: str) -> bool:
    """Whether Ray's socket paths under ``root`` fit AF_UNIX's 107 bytes."""
    return len(os.fsencode(root)) + UNDER_ROOT <= SOCKET_MAX


def _given_root(given: str) -> str:
    """The session folder of a local Ray in the user's ``RAY_TMPDIR``: ``<it>/ray`` where it is a folder only the user
    may enter, else ``<it>/featstore-<uid>/ray`` (:func:`featstore.models.scratch.user_scratch`) where no one else may
    rename entries in it (a plain ``mkdir`` of hers, ``0755``; ``/tmp``); else, or where that is too long for Ray's
    sockets, ConfigError naming it, why, and its fix (``chmod 700 <it>`` where it is hers)."""
    from featstore.models.scratch import user_scratch

    said = f"RAY_TMPDIR {given}"
    try:
        st = os.stat(given)
    except OSError as exc:
        raise ConfigError(
            f"{said}: {exc.strerror}; make it a folder only you may enter (mkdir -m 700 {given}), or unset RAY_TMPDIR"
        ) from None
    mine = st.st_uid == os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{said} is not a folder: set it to a folder of yours (mode 0700), or unset RAY_TMPDIR")
    shut = renamable_by_others(given)
    if closed(given):
        root = os.path.join(given, "ray")
    elif shut is None and (base := user_scratch(given)) is not None:
        root = os.path.join(base, "ray")
    else:
        why = _not_private(shut) if shut else "featstore's private folder in it is not one (above)"
        fix = (
            f"chmod 700 {given} (it is yours)"
            if mine and shut in (None, given) and not os.path.islink(given)
            else "set it to a folder of yours (mode 0700, e.g. mkdir -m 700 /tmp/ray-$USER)"
        )
        raise ConfigError(
            f"{said} cannot keep a local Ray's session ({why}): {fix}, or start Ray yourself and give --address"
        )
    if _fits(root):
        return root
    fix = "set it to a shorter folder of yours (mode 0700, e.g. /tmp/ray-$USER)"
    if root != os.path.join(given, "ray") and mine and _fits(os.path.join(given, "ray")):
        fix = f"chmod 700 {given} (then Ray's folder is {os.path.join(given, 'ray')}), or {fix}"
    raise ConfigError(
        f"{said}: a local Ray's session folder there ({root}) is too long for its sockets "
        f"({len(os.fsencode(root))} bytes, at most {SOCKET_MAX - UNDER_ROOT}): {fix}, or start Ray yourself and give "
        f"--address"
    )


class LocalToken:
    """The token authentication of a local Ray the engine starts: featstore's own random token, in ``RAY_AUTH_TOKEN``
    of this process while that Ray runs (its GCS, raylet and workers inherit it; a process's environment is readable
    by its user and root only). Ray 2.60 otherwise turns token authentication on for a new local Ray and writes its
    token to ``~/.ray/auth_token`` with the user's umask (``0644`` in a ``0755`` folder): any user of the machine read
    it and used her Ray's key-value store, the functions its workers unpickle (attack 45 #1). ``RAY_AUTH_MODE=disabled``
    set by the user is kept (said in one line). :meth:`restore` puts the variables back once that Ray is shut down."""

    VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")

    def __init__(self):
        self.saved: dict[str, str | None] | None = None

    def set(self) -> None:
        """Hand featstore's own token to the Ray about to be started (and to this process's Ray client)."""
        if self.saved is not None:  # already handed
            return
        if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
            logger.warning(
                "RAY_AUTH_MODE=disabled: the local Ray runs without token authentication (whoever reaches its ports "
                "can run code as you); unset it to have featstore give that Ray a token of its own"
            )
            return
        self.saved = {name: os.environ.get(name) for name in self.VARS}
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as Ray's own generator
        _reload_token()
        logger.info(
            "a local Ray with token authentication: its token is featstore's own, new for this run and held in the "
            "environment of this run's processes only (not in ~/.ray/auth_token)"
        )

    def restore(self) -> None:
        """The variables as they were before :meth:`set` (after that Ray is shut down)."""
        if self.saved is None:
            return
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.saved = None
        _reload_token()


def _reload_token() -> None:
    """Make Ray read the authentication variables again (its mode and its token are cached once read): its config
    first, then the token, as Ray's own test helpers do (a draining gRPC thread must not see token mode and no
    token)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication (before 2.52): nothing cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def token_file_line(local: bool) -> str | None:
    """One line where the token file Ray reads (``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; none where
    ``RAY_AUTH_TOKEN`` is set) is another user's or others may read it (its mode, every folder above it open to
    them): whoever has it can run code as the user on a Ray cluster using it. ``local``: featstore's local Ray does
    not use it (it has its own token), but a Ray the user starts would (Ray 2.60's own file, made ``0644``)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    try:
        st = os.stat(path)
    except OSError:
        return None
    tail = " (featstore's local Ray does not use it: it has a token of its own)" if local else ""
    if st.st_uid != os.geteuid():
        owner = owner_name(st.st_uid)
        return (
            f"Ray's token file {path} is {owner}'s, not yours: {owner} knows the token of any Ray cluster that uses "
            f"it{tail}; use a token file of your own (mode 0600, RAY_AUTH_TOKEN_PATH){' instead' if tail else ''}"
        )
    who = _granted(st, 0o4)
    folder = os.path.dirname(os.path.abspath(path))
    while who is not None:  # a folder on the way that others may not enter keeps them out
        try:
            if _granted(os.stat(folder), 0o1) is None:
                return None
        except OSError:
            return None
        if folder == os.path.dirname(folder):
            break
        folder = os.path.dirname(folder)
    if who is None:
        return None
    return (
        f"Ray's token file {path} may be read by {who} (mode {stat.S_IMODE(st.st_mode):04o}): whoever reads it can "
        f"run code as you on any Ray cluster that uses its token{tail}; chmod 600 {path}"
    )


def _granted(st: os.stat_result, bit: int) -> str | None:
    """Who other than the user the mode of ``st`` grants ``bit`` (``0o4`` read, ``0o1`` search) to: ``every user``,
    ``group <name>`` (unless the user's own private group), or None."""
    if st.st_mode & bit:
        return "every user"
    if st.st_mode & (bit << 3) and not _private_group(st.st_gid):
        import grp

        try:
            return f"group {grp.getgrgid(st.st_gid).gr_name}"
        except KeyError:
            return f"group gid {st.st_gid}"
    return None


def worker_tempdir() -> None:
    """In a Ray worker: its temporary files (TensorFlow's autograph modules, imported again by name; Keras's; any
    tempfile user's) in a folder where no one else may rename entries, picked as the CLI picks the driver's
    (:func:`featstore.tmpdir.choose`, without its line: the driver said it). A worker inherits the TMPDIR variable of
    the Ray that started it, not the driver's ``tempfile.tempdir``: a team's ``2775`` TMPDIR was used there. Where
    there is none, the refusal reaches the driver as that one line (:func:`worker_errors`)."""
    from featstore.tmpdir import own_tempdir

    tempfile.tempdir = own_tempdir(quiet=True)


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
