"""``--runtime onnx``: the frozen cut exported once to ONNX (tf2onnx, through Keras's ``model.export``), cached beside
the store, and run by ONNX Runtime's CPU provider; checked against Keras at start-up.

The cut (backbone, layer(s), pooling; preprocessing stays in numpy as for Keras) is exported to
``<store>.cache/onnx/<key>.onnx``, where the key is a digest of the outputs' fingerprints and the exporter's versions,
written to a temporary file and renamed into place; ``<key>.json`` beside it records an HMAC-SHA256 of the bytes
featstore wrote and checked, under this user's secret key (:mod:`featstore.keys`, kept outside the store), and a cached
file is loaded only when that HMAC verifies: one planted, changed, or copied with a store from another user or machine
is exported again, with a warning (the 4-image check below cannot tell a cut from one that differs only on other
images, and a plain digest in the record can be written by whoever writes the file). Without a key (a read-only home)
the cut is exported for each run, not kept.
A Ray actor loads the driver's checked file by path and digest (:func:`load_exported`), never exporting. Before any
row is written a seeded batch goes through both runtimes and each output's largest difference must be within
:data:`ONNX_TOLERANCE` of its own largest feature; so the features are the ones the fingerprint describes, and the runtime
is recorded per split (a resume with another one is refused) but not fingerprinted. Where the export or the check
fails the run stops, naming the reason and ``--runtime keras``.

>>> ex = Extractor(ExtractorConfig(model="mobilenet_v2", weights="none", image_size=32, runtime="onnx"),
...                runtime_cache=Path("features.h5.cache/onnx"))                             # doctest: +SKIP
>>> ex.runtime_max_abs_diff                                                                # doctest: +SKIP
3.0e-18
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featstore.caches import NotRegular, read_small, write_cached, write_cached_text
from featstore.errors import ConfigError, NotWritten, OutputError, choices_error
from featstore.keys import key_id, sign, user_key, verifies
from featstore.models.agreement import as_list, largest_difference, seeded_images, worst_output
from featstore.models.scratch import private_tempdir
from featstore.outputs import output_fix, write_atomic

logger = logging.getLogger(__name__)

RUNTIMES = ("keras", "onnx")  # what runs the frozen forward pass; the features are the same within the tolerance
# ONNX Runtime reorders float32 sums as XLA does (measured: 1e-6 to 4e-6 of the largest feature on five backbones); the
# same fraction as --jit's float32 tolerance. Over it the run is refused.
ONNX_TOLERANCE = 1e-4
ONNX_CHECK_ROWS = 4  # rows of the seeded check batch
MAX_ONNX_BYTES = 2**31  # protobuf's own limit for one .onnx file: a larger cached file is not one we wrote
MAX_RECORD_BYTES = 64 * 1024  # <key>.json, the record of what featstore wrote: a few hundred bytes
RECORD_SHOWN = "the ONNX cache's record"  # how messages name it
WRITTEN_BY = "featstore"  # the record's stamp
CACHE_FOLDER = "onnx"  # under <store>.cache/
THREADS_ENV = "FEATSTORE_ONNX_THREADS"  # overrides the intra-op threads (default: one per core; see docs/extraction.md)
# ONNX Runtime's idle intra-op threads spin by default, taking the cores the decode threads need between batches:
# "0" lets them sleep (measured in docs/extraction.md, "Runtimes").
SPINNING = "0"
FIX = "Run with --runtime keras"


def check_runtime(runtime: str, mixed_precision: bool = False, jit: bool = False) -> None:
    """Refuse, before any work, a runtime that is not one of :data:`RUNTIMES`, one that cannot run this configuration,
    or ``onnx`` without its packages. Example::

        check_runtime("onnx")          # ConfigError naming pip install "featstore[onnx]" when onnxruntime is missing
    """
    if runtime not in RUNTIMES:
        raise choices_error("runtime", runtime, RUNTIMES)
    if runtime == "keras":
        return
    if mixed_precision:
        raise ConfigError("--runtime onnx computes in float32; leave out --mixed-precision, or use --runtime keras")
    if jit:
        raise ConfigError("--jit compiles the Keras forward pass; --runtime onnx runs another one. Give one of them")
    missing = [m for m in ("onnxruntime", "tf2onnx", "onnx") if not _importable(m)]
    if missing:
        raise ConfigError(
            f'--runtime onnx needs {", ".join(missing)}, which is not installed: pip install "featstore[onnx]". {FIX}'
        )


def _importable(module: str) -> bool:
    """Whether ``module`` can be found without importing it."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def default_threads(cores: int | None = None) -> int:
    """ONNX Runtime's intra-op threads: ``FEATSTORE_ONNX_THREADS``, else ``cores`` (a Ray actor's share), else one per
    core."""
    value = os.environ.get(THREADS_ENV, "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{THREADS_ENV} must be a whole number of threads, at least 1; got {value!r}")
        return int(value)
    return cores or os.cpu_count() or 1


def exporter_version() -> str:
    """The versions that decide the exported file (part of the cache key)."""
    import keras
    import onnx
    import tf2onnx

    return f"keras {keras.__version__}, tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__}"


def cache_key(fingerprints: list[str]) -> str:
    """The cached file's name: a digest of the outputs' fingerprints (in order) and the exporter's versions."""
    blob = json.dumps({"fingerprints": list(fingerprints), "exporter": exporter_version()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class OnnxForward:
    """An ONNX file run by ONNX Runtime's CPU provider: float32 batch -> one array, or a list with one per output."""

    def __init__(
        self,
        data: bytes,
        n_outputs: int,
        threads: int | None = None,
        where: str = "the exported model",
        path: Path | None = None,
    ):
        import onnxruntime as ort

        # the digest of the bytes this session runs (and the start-up check checked)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.path = path  # the cached file they were read from (None: a temporary export, not kept)

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1  # the graph is a chain: one op at a time, each on every intra-op thread
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
        opts.log_severity_level = 3  # errors only: its warnings would reach the user's terminal
        self.threads = opts.intra_op_num_threads
        self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != n_outputs:
            extra = ", ".join(i.name for i in inputs[1:]) or "none"
            raise ConfigError(
                f"--runtime onnx: {where} has {len(inputs)} input(s) and {len(outputs)} output(s), not 1 and "
                f"{n_outputs} (constants exported as graph inputs: {extra}); ONNX Runtime cannot run it as this "
                f"cut. {FIX}"
            )
        self.input_name, self.single, self.where = inputs[0].name, n_outputs == 1, where

    @property
    def file(self) -> tuple[str, str] | None:
        """``(path, sha256)`` of the cached file this session runs, for another process to load (None: not kept)."""
        return None if self.path is None else (os.path.abspath(self.path), self.sha256)  # workers' folders differ

    def __call__(self, x: np.ndarray):
        """Features of one preprocessed float32 batch, in the form the Keras forward pass returns them.

        An output without one row per image is a ConfigError: a cut that passed the start-up check's batch of
        :data:`ONNX_CHECK_ROWS` may still return other rows for another batch size (a planted file), and h5py's
        broadcast error stopped the extract half-way with a traceback."""
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        for o in out:
            if np.ndim(o) == 0 or len(o) != len(x):
                rows = "no rows" if np.ndim(o) == 0 else f"{len(o)} rows"
                raise ConfigError(
                    f"--runtime onnx: {self.where} returned {rows} for a batch of {len(x)} images; it is not the "
                    f"cut it is named after. Remove it (it is exported again), or {FIX.lower()}"
                )
        return out[0] if self.single else out


def export_cut(
    model, size: int, channels: int, path: Path, shown: str, check: Callable[[Path], object], root: Path | None = None
) -> float:
    """Export the Keras cut ``model`` to ONNX in a temporary file, run ``check(tmp)`` on it, and only then rename it to
    ``path``; the seconds it took. A failed export is a ConfigError naming the reason and ``--runtime keras``; a failed
    check leaves nothing at ``path``. ``root``: the cache ``path`` is in (``<store>.cache``), written through its
    folders' descriptors (:func:`featstore.caches.write_cached`)."""
    import tensorflow as tf

    started = time.perf_counter()

    def write(tmp: Path) -> None:
        quiet = logging.getLogger("tf2onnx")  # its INFO lines (each optimizer pass) would reach the CLI's output
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with warnings.catch_warnings():  # Keras's numpy-2 patch of tf2onnx reads np.object (a FutureWarning)
                warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
                model.export(
                    str(tmp),
                    format="onnx",
                    verbose=False,
                    input_signature=[tf.TensorSpec((None, size, size, channels), tf.float32)],
                )
        except Exception as exc:  # tf2onnx raises whatever its converters raise; each one is the same refusal
            if (io := _os_error(exc)) is not None:  # the disk, not the exporter: said with the fix that works
                raise _write_failed(io, path, shown) from None
            raise ConfigError(
                f"--runtime onnx: {shown} could not be exported to ONNX ({_first_line(exc)}). {FIX}"
            ) from exc
        finally:
            quiet.setLevel(level)
        check(tmp)

    if root is None:
        write_atomic(path, write, "the ONNX cache")
    else:
        write_cached(root, path, write, "the ONNX cache")
    return time.perf_counter() - started


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError with an errno in an exception's chain (tf2onnx may wrap it), or None."""
    for _ in range(8):
        if exc is None or (isinstance(exc, OSError) and exc.errno):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _write_failed(exc: OSError, path: Path, shown: str) -> OutputError:
    """One line for an export that could not be written (a full disk said only "could not be exported ... Run with
    --runtime keras"): the file, the cause and its fix, and the keras runtime as the way that writes no file."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full; free some space there and run the same command again"
    else:
        why = f"{output_fix(exc, path).split(';')[0]} ({exc.strerror})"
    return NotWritten(
        f"--runtime onnx: cannot write the ONNX export of {shown} to {path}: {why}",
        "; or run with --runtime keras, which exports nothing",
    )


def _first_line(exc: BaseException) -> str:
    """An exception's first line (at most 300 characters), or its type's name when it has no message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def read_cached(path: Path, limit: int = MAX_ONNX_BYTES, what: str = "the cached model", read=True) -> bytes | None:
    """A cached ONNX file's (or its record's: ``what``) bytes (``read`` False: b"", nothing read), None when there is
    none. A link, FIFO, device or folder at its name, or more than ``limit`` bytes, is refused, never followed or opened
    for a blocking read (:func:`featstore.caches.read_small`)."""
    try:
        return read_small(path, limit, read)
    except NotRegular as exc:
        if exc.link:
            raise ConfigError(
                f"--runtime onnx: {what} {path} is a symbolic link, which featstore does not follow; remove "
                f"it (it is exported again)"
            ) from None
        why = "not a regular file" if exc.size is None else f"{exc.size} bytes, over the limit"
        raise ConfigError(f"--runtime onnx: {what} {path} is {why}; remove it (it is exported again)") from None
    except OSError as exc:
        raise ConfigError(f"--runtime onnx: cannot read {what} {path} ({exc.strerror}); remove it") from None


def start(extractor, cache: Path | None, threads: int | None = None) -> tuple[OnnxForward, float]:
    """The ONNX forward pass of ``extractor``'s cut, from the cache or exported now, checked against its Keras pass;
    ``(forward, max abs difference)``. ``cache`` None: exported into a temporary folder, not kept. A cached file whose
    bytes are not the ones featstore recorded writing there (:func:`unrecorded`), that ONNX Runtime cannot load, or
    whose features are not the cut's, is exported again (with a warning). Without this user's key nothing is kept."""
    key = None if cache is None else user_key()  # None: (warned once) no key to sign the record with
    if cache is not None and (key is None or not _make_folder(cache)):
        cache = None  # (warned) a store in a read-only folder: exported for this process only
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="featstore-onnx-", dir=private_tempdir()) as tmp:
            forward, worst = _export_checked(extractor, Path(tmp) / "cut.onnx", threads)
            forward.path = None  # removed with the folder
            return forward, worst
    path = cache / f"{cache_key([a['fingerprint'] for _, a in extractor.outputs])}.onnx"
    if read_cached(path, read=False) is None:
        # a link, FIFO or folder at the record's name: refused now, not after the export's seconds ("give a file name
        # inside it" named a file in that folder, and the fresh export was left unrecorded)
        read_cached(record_path(path), MAX_RECORD_BYTES, RECORD_SHOWN)
        return _export_checked(extractor, path, threads, cache.parent, key)
    # the record first: a file it does not vouch for is never read (a planted 2 GiB sparse one cost 2.1 GB; attack 21)
    why = unrecorded(path, None, key) or unrecorded(path, data := read_cached(path) or b"", key)
    if why is None:
        try:
            return _open_checked(extractor, data, threads, where=f"the cached model {path}", path=path)
        except ConfigError as exc:
            why = str(exc)
    logger.warning("--runtime onnx: the cached %s is exported again: %s", path, why)
    return _export_checked(extractor, path, threads, cache.parent, key)


def record_path(path: Path) -> Path:
    """``<key>.onnx`` -> ``<key>.json``: the record of the bytes featstore wrote there."""
    return path.with_suffix(".json")


def unrecorded(path: Path, data: bytes | None, key: bytes | None = None) -> str | None:
    """Why ``data``, read from the cached ``path``, is not what this user's featstore recorded writing there; None
    when it is (``data`` None: its record alone is checked). ``key``: this user's (:func:`featstore.keys.user_key` when
    not given).

    The start-up check runs 4 seeded images: a file that agrees with Keras on them and differs on others passes it.
    So a cached file is trusted only when its record (written after the export passed) holds the HMAC of its name and
    bytes under this user's secret key: a digest anyone can compute proves nothing."""
    key = key or user_key()
    if key is None:
        return "featstore has no key of yours to check its record with"
    record = record_path(path)
    raw = read_cached(record, MAX_RECORD_BYTES, RECORD_SHOWN)  # a link, FIFO or oversized record: refused, naming it
    if raw is None:
        return f"no record {record.name} of the file featstore wrote there"
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError):
        rec = None
    if not isinstance(rec, dict) or rec.get("written_by") != WRITTEN_BY or rec.get("file") != path.name:
        return f"{record.name} is not featstore's record of {path.name}"
    if rec.get("key_id") != key_id(key):
        return f"{record.name} was not signed with your featstore key (a cache made by another user or machine)"
    if data is not None and not verifies(key, CACHE_FOLDER, path.name, data, rec.get("hmac")):
        return f"its HMAC does not verify against {record.name} (the file was changed or replaced since)"
    return None


def load_exported(extractor, path: str, sha256: str, threads: int | None = None) -> tuple[OnnxForward, float]:
    """The ONNX file another process exported and checked (for a Ray actor: the driver's cached file), loaded from
    ``path`` only when its bytes have the digest ``sha256`` that process checked, then checked against ``extractor``'s
    own Keras pass; ``(forward, max abs difference)``. Never exports. Example::

        load_exported(extractor, "features.h5.cache/onnx/0f3c.onnx", driver_sha256)   # ConfigError if it changed
    """
    who, where = f"the worker on {socket.gethostname()}", f"the driver's ONNX file {path}"
    data = read_cached(Path(path))
    if data is None:
        raise ConfigError(
            f"--runtime onnx: {who} cannot find {where}; the store's folder must be at the same path on every node, "
            f"as the images are. {FIX}"
        )
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ConfigError(
            f"--runtime onnx: {who} read {where} with sha256 {got[:16]}, not the {sha256[:16]} the driver checked (it "
            f"changed since); run again, or {FIX.lower()}"
        )
    return _open_checked(extractor, data, threads, where=where, path=Path(path))


def _make_folder(cache: Path) -> bool:
    """Make the cache folder (and ``<store>.cache``) with :func:`featstore.outputs.cache_folder`: a link, file or FIFO
    in their place is one OutputError naming it; a folder that cannot be made (a store in a read-only folder, which
    ``predict`` only reads) is a warning and False: the cut is exported for this process only."""
    from featstore.caches import CacheNotMade, cache_folder

    try:
        cache_folder(cache.parent, cache.name, what="ONNX cache folder")
    except CacheNotMade as exc:
        logger.warning("--runtime onnx: the exported cut is not kept (%s); it is exported again next time", exc)
        return False
    except OutputError as exc:
        raise OutputError(f"--runtime onnx: {exc}; or {FIX.lower()}") from None
    return True


def _export_checked(
    extractor, path: Path, threads: int | None, root: Path | None = None, key: bytes | None = None
) -> tuple[OnnxForward, float]:
    """Export the cut to ``path``, renamed into place only once it loads and agrees with Keras; then record its HMAC
    under ``key`` beside it (:func:`unrecorded`; no record without a key)."""
    result: list = []
    shown, c = extractor._shown_name(), extractor.config
    seconds = export_cut(
        extractor.model,
        c.image_size,
        extractor.spec.channels_in,
        path,
        shown,
        lambda tmp: result.append((_open_checked(extractor, data := Path(tmp).read_bytes(), threads, path=path), data)),
        root,
    )
    forward, data = result[0]
    if key is not None and root is not None:  # signed: the bytes that were checked, renamed into place
        record = {"written_by": WRITTEN_BY, "file": path.name, "sha256": forward[0].sha256}
        record |= {
            "exporter": exporter_version(),
            "key_id": key_id(key),
            "hmac": sign(key, CACHE_FOLDER, path.name, data),
        }
        write_cached_text(root, record_path(path), json.dumps(record, indent=1) + "\n", RECORD_SHOWN)
    logger.info("--runtime onnx: exported %s to %s in %.1f s (checked against Keras)", shown, path, seconds)
    return forward


def _open_checked(
    extractor, data: bytes, threads: int | None, where: str | None = None, path: Path | None = None
) -> tuple[OnnxForward, float]:
    """Load ONNX bytes into ONNX Runtime and check them against the Keras pass; ConfigError when either fails.
    ``where``: how messages name the file (default: the cut exported to ONNX); ``path``: the file they are (or will
    be)."""
    shown = extractor._shown_name()
    try:
        forward = OnnxForward(
            data, len(extractor.outputs), threads, where=where or f"{shown} exported to ONNX", path=path
        )
    except ConfigError:
        raise
    except Exception as exc:  # onnxruntime's InvalidGraph, InvalidProtobuf, Fail, ...: one line, the first of its own
        raise ConfigError(
            f"--runtime onnx: ONNX Runtime cannot run {shown} as exported ({_first_line(exc)}). {FIX}"
        ) from exc
    rows = extractor.rows_per_call(ONNX_CHECK_ROWS)  # within the activation bound, as every batch (attack 45 #7)
    worst = check_agreement(extractor._prepare, extractor._forward, forward, extractor.config.image_size, shown, rows)
    return forward, worst


def check_agreement(prepare, reference, candidate, size: int, shown: str, rows: int = ONNX_CHECK_ROWS) -> float:
    """Run ``rows`` seeded images through both forward passes; the max abs difference, or ConfigError when it is over
    :data:`ONNX_TOLERANCE` of the largest feature (or the outputs' shapes differ)."""
    x = prepare(seeded_images(rows, size))
    try:
        got = candidate(x)
    except ConfigError:
        raise
    except Exception as exc:  # an op ONNX Runtime accepts at load but cannot run on these shapes
        raise ConfigError(f"--runtime onnx: ONNX Runtime failed to run {shown} ({_first_line(exc)}). {FIX}") from exc
    want = reference(x)
    which, worst, scale, limit = worst_output(got, want, ONNX_TOLERANCE, 1e-30)  # each output to its own scale
    logger.debug(
        "--runtime onnx: %s max abs difference to Keras %.3g (output %d: largest feature %.3g, tolerance %.3g, %d "
        "output(s))",
        shown,
        worst,
        which + 1,
        scale,
        limit,
        len(as_list(got)),
    )
    if not worst <= limit:
        of = f" output {which + 1} of {len(as_list(want))}" if len(as_list(want)) > 1 else ""
        raise ConfigError(
            f"--runtime onnx: ONNX Runtime's {shown}{of} differs from Keras's by up to {worst:.3g} (its largest "
            f"feature {scale:.3g}; tolerance {ONNX_TOLERANCE:g} of it, {limit:.3g}); refusing to write features that "
            f"would not match the fingerprint. {FIX}"
        )
    return largest_difference(got, want)[0]
