"""This user's secret key, which signs what featstore writes into a store's caches (an HMAC-SHA256: the ONNX cuts'
records, map layouts, thumbnails, the similarity index's record, the report's leak pairs), so that a cached file is trusted only when this user's featstore wrote it.

A plain digest in a record proves nothing: whoever can write the cached file can write its digest beside it (a store
copied, rsynced or unpacked from elsewhere comes with its cache). The key is 32 random bytes made once
(``secrets.token_bytes``) at ``$XDG_CONFIG_HOME/featstore/key`` (``~/.config/featstore/key`` without it), mode
``0600`` in a folder made ``0700``; it never lives beside a store. The folder is opened without following a link, and
a key file that is a link, not a regular file, another user's, or readable or writable by the group or others is
refused with one :class:`~featstore.errors.ConfigError` naming it. Where no key can be made or read (a read-only
home), :func:`user_key` says so once and returns None: then no record verifies and every cached file is made again.

>>> len(sign(b"k" * 32, "onnx", "0f3c.onnx", b"bytes"))
64
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path

from featstore.errors import ConfigError

logger = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_NAME = "key"
FOLDER = "featstore"  # under $XDG_CONFIG_HOME (or ~/.config)
_warned: set[str] = set()  # the key files this process already said it could not use


def key_path() -> Path | None:
    """Where this user's key is: ``$XDG_CONFIG_HOME/featstore/key``, else ``~/.config/featstore/key``; None when
    there is no home to put it in."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is ignored
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".config")
    return Path(base) / FOLDER / KEY_NAME


def user_key() -> bytes | None:
    """This user's key, made on first use; None (said once per process) when it cannot be made or read. A key file
    featstore would not have made (a link, another user's, readable by others) is a ConfigError naming it."""
    path = key_path()
    if path is None:
        return _unusable("~", "there is no home folder to keep featstore's key in")
    try:
        return _read_or_make(path)
    except ConfigError:
        raise
    except OSError as exc:
        return _unusable(str(path), exc.strerror or str(exc))


def sign(key: bytes, kind: str, name: str, data: bytes) -> str:
    """The hex HMAC-SHA256, under ``key``, of a cached file's kind, name and bytes."""
    mac = hmac.new(key, f"featstore {kind}\0{name}\0".encode(errors="surrogateescape"), hashlib.sha256)
    mac.update(data)
    return mac.hexdigest()


def verifies(key: bytes, kind: str, name: str, data: bytes, mac: object) -> bool:
    """Whether ``mac`` is :func:`sign`'s for these bytes (compared in constant time)."""
    return isinstance(mac, str) and hmac.compare_digest(sign(key, kind, name, data), mac)


def seal(key: bytes, kind: str, name: str, record: dict) -> dict:
    """``record`` (a JSON object) with this user's ``key_id`` and the HMAC of all its other fields: a cache's record
    that :func:`unsealed` trusts only as this user's featstore wrote it.

    >>> sorted(seal(b"k" * 32, "pairs", "p.json", {"a": 1}))
    ['a', 'hmac', 'key_id']
    """
    record = {**record, "key_id": key_id(key)}
    return {**record, "hmac": sign(key, kind, name, _canonical(record))}


def unsealed(key: bytes, kind: str, name: str, record: dict) -> str | None:
    """Why ``record`` is not one :func:`seal` made under ``key`` for ``kind``/``name`` (None when it is).

    >>> unsealed(b"k" * 32, "pairs", "p.json", seal(b"k" * 32, "pairs", "p.json", {"a": 1})) is None
    True
    """
    if "hmac" not in record:
        return "it is not signed"
    if record.get("key_id") != key_id(key):
        return "it was not signed with your featstore key (copied from another user or machine)"
    if not verifies(key, kind, name, _canonical(record), record.get("hmac")):
        return "it does not verify against your featstore key (changed since featstore wrote it)"
    return None


def _canonical(record: dict) -> bytes:
    """What a sealed record's HMAC covers: every field but the HMAC, as one canonical JSON."""
    rest = {k: v for k, v in record.items() if k != "hmac"}
    return json.dumps(rest, sort_keys=True, default=str, separators=(",", ":")).encode("utf-8", "surrogateescape")


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (a digest of it): a record made under another key says so plainly."""
    return hashlib.sha256(b"featstore key id\0" + key).hexdigest()[:16]


def _unusable(where: str, why: str) -> None:
    if where not in _warned:
        _warned.add(where)
        logger.warning(
            "featstore cannot keep its key at %s (%s), so it trusts no cached file it cannot sign: %s are made again "
            "each time (a similarity index is not used). Set XDG_CONFIG_HOME to a writable folder of yours",
            where,
            why,
            _CACHES,
        )
    return None


def _refuse(path: Path, why: str, fix: str = "") -> ConfigError:
    """The key ``path`` refused for ``why``; ``fix`` is the command that mends it (default: remove it)."""
    fix = fix or f"remove it (featstore makes a new one, and makes its caches' {_CACHES} again)"
    return ConfigError(f"featstore's key {path} {why}, so it may not be secret; {fix}")


_CACHES = "ONNX exports, map layouts, thumbnails, similarity indexes and leak pairs"


def _refuse_folder(folder: Path, st: os.stat_result) -> ConfigError:
    """The folder holding the key refused: another user's (use a folder of yours) or writable by others (chmod)."""
    if st.st_uid != os.geteuid():
        why = f"belongs to user id {st.st_uid}, not to you"
        fix = "set XDG_CONFIG_HOME to a folder of yours"
    else:
        why = f"may be written by others (mode {st.st_mode & 0o777:04o})"
        fix = f"run `chmod go-w {folder}` (or `chmod 700 {folder}`)"
    return ConfigError(
        f"the folder {folder} holding featstore's key {why}, so the key in it may not be secret; {fix}, and "
        f"featstore uses it again"
    )


def _refuse_link(folder: Path) -> ConfigError:
    """The folder holding the key is a link (or a file): named as the folder, with the fix."""
    what = "a symbolic link" if os.path.islink(folder) else "not a folder"
    return ConfigError(
        f"the folder {folder} holding featstore's key is {what}; featstore keeps its key only in a folder of its own, "
        f"never through a link (whoever can change where it points could read or choose the key). Remove it (`rm "
        f"{folder}`: featstore makes the folder and a new key, and makes its caches' {_CACHES} again), or set "
        f"XDG_CONFIG_HOME to a folder of yours"
    )


def _read_or_make(path: Path) -> bytes:
    """The key at ``path``, read through its folder's descriptor (made 0700 where missing; never through a link)."""
    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError) as exc:  # its strerror, "File exists", named no problem
        raise OSError(exc.errno, _not_a_folder(path.parent.parent)) from None
    try:
        os.mkdir(path.parent, 0o700)
    except FileExistsError:
        pass
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse_link(path.parent) from None
        raise
    try:
        st = os.fstat(folder)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise _refuse_folder(path.parent, st)
        for _ in range(2):  # missing: made; made meanwhile by another process: read
            try:
                return _read(folder, path)
            except FileNotFoundError:
                _make(folder, path)
        return _read(folder, path)
    finally:
        os.close(folder)


def _not_a_folder(base: Path) -> str:
    """Why no folder can be made at ``base`` (it or a folder above it is a file): that one named, as
    ``XDG_CONFIG_HOME`` when it is that variable's value.

    >>> _not_a_folder(Path("/dev/null/featstore"))
    '/dev/null is not a folder'
    """
    there = next((p for p in (base, *base.parents) if os.path.lexists(p) and not os.path.isdir(p)), base)
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    named = f"XDG_CONFIG_HOME ({there})" if os.path.isabs(xdg) and Path(xdg) == there else str(there)
    return f"{named} is not a folder"


def _read(folder: int, path: Path) -> bytes:
    try:
        fd = os.open(path.name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, dir_fd=folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a regular file")
        if st.st_uid != os.geteuid():
            raise _refuse(path, f"belongs to user id {st.st_uid}, not to you")
        if st.st_mode & 0o077:
            raise _refuse(
                path,
                f"may be read or written by others (mode {st.st_mode & 0o777:04o})",
                f"run `chmod 600 {path}` if only you could read it so far, else remove it (featstore makes a new "
                f"one, and makes its caches' {_CACHES} again)",
            )
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise _refuse(path, f"holds {len(data)} bytes, not {KEY_BYTES}")
    return data


def _make(folder: int, path: Path) -> None:
    """A new key written whole under a temporary name, then linked to ``path`` (never replacing one made meanwhile)."""
    tmp = f".{path.name}-{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=folder)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            pass  # another process made it first: that one is read
    finally:
        os.unlink(tmp, dir_fd=folder)
