"""The sizes a ``.keras`` file's ``config.json`` asks Keras to allocate, bounded by what its ``model.weights.h5`` holds.

Keras builds (and random-initialises) every layer from ``config.json`` before it reads a single weight, so a 7 KB file
whose config says ``"units": 4000000`` took 3 GB before Keras said "OOM". :func:`keras_zip_problem` reads the config
(bounded), computes a lower bound of the parameters its layers build (:func:`implied_parameters`) and compares it with
the numbers the zip's weights file really stores (:func:`featstore.models.preset_json.walk_weights`, as KerasHub presets
are checked). A genuine file builds exactly what it stores; a file asking for more than :data:`SLACK` parameters beyond
that is refused before Keras (or TensorFlow) starts.

>>> implied_parameters({"class_name": "Dense", "config": {"units": 10}, "build_config": {"input_shape": [None, 4]}})
(50, 'Dense layer ? (units 10, input 4)')
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import tempfile
import zipfile
from pathlib import Path

from featstore.models.preset_json import WEIGHTS_FILE, walk_weights, weights_problem

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 16 << 20  # config.json: ResNet152's is about 1 MB
# Parameters (64 MiB of float32) a config may ask beyond what the weights file holds before refusal. Kept, not made
# relative: what it lets a crafted config allocate is at most 64 MiB whatever the model, while each formula that
# counts more than Keras builds for a layer option refuses genuine models once it is over the slack. Attack 20's
# review found five (Dense without bias, UnitNormalization, normalizations without centre/scale or over another axis,
# cross-attention), up to ~1e6 parameters a layer at usual widths, and one no slack covers (EinsumDense, 197x); all
# are exact now and tests hold the bound at or below what genuine models store with no slack at all.
SLACK = 1 << 24
# Layers (and models holding them) that build no variable of their own
WEIGHTLESS = frozenset(
    "Functional Sequential Model InputLayer Flatten Reshape Permute RepeatVector Activation ReLU LeakyReLU ELU Softmax "
    "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout Add Subtract "
    "Multiply Average Maximum Minimum Concatenate Dot Rescaling Resizing CenterCrop ZeroPadding1D ZeroPadding2D "
    "ZeroPadding3D Cropping1D Cropping2D Cropping3D UpSampling1D UpSampling2D UpSampling3D MaxPooling1D MaxPooling2D "
    "MaxPooling3D AveragePooling1D AveragePooling2D AveragePooling3D GlobalMaxPooling1D GlobalMaxPooling2D "
    "GlobalMaxPooling3D GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D Identity Masking "
    "ActivityRegularization Lambda TimeDistributed Bidirectional UnitNormalization".split()
)
NORMALIZATION = frozenset("BatchNormalization LayerNormalization GroupNormalization".split())


def keras_zip_problem(path: Path) -> str | None:
    """Why Keras must not build the ``.keras`` zip at ``path`` (its config asks for far more parameters than its weights
    file holds, or a part is unreadable or oversized), or None. The zip passed :func:`featstore.safezip.check_zip`."""
    with zipfile.ZipFile(path) as z:
        try:
            info = z.getinfo(CONFIG_FILE)
        except KeyError:
            return None  # Keras says what it says about a zip without a config: it builds nothing
        if info.file_size > MAX_CONFIG_BYTES:
            return f"its {CONFIG_FILE} is {info.file_size:,} bytes, over {MAX_CONFIG_BYTES >> 20} MiB"
        try:
            config = json.loads(z.read(info).decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            return f"its {CONFIG_FILE} cannot be read as JSON ({str(exc)[:100]})"
        bound, largest = implied_parameters(config)
        held, problem = 0, None
        if WEIGHTS_FILE in z.namelist():
            try:
                with _member(path, z, z.getinfo(WEIGHTS_FILE)) as fh:
                    held, seen, unstored, outside = walk_weights(fh)
                problem = weights_problem(Path(WEIGHTS_FILE), seen, unstored, outside)
            except _NoRoom as exc:
                return str(exc)
            except Exception:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError for a damaged file
                held = 0  # it holds nothing Keras could read: every parameter would be built from the config alone
    if bound > held + SLACK:
        return (
            f"its {CONFIG_FILE} builds at least {bound:,} parameters ({bound * 4 / 1e9:.2f} GB of float32; largest: "
            f"{largest}) but its {WEIGHTS_FILE} holds {held:,}: the config was edited or belongs to other weights"
        )
    return problem


class _Slice(io.RawIOBase):
    """``size`` bytes of an open file from ``start``, seekable: a stored zip member read in place (h5py seeks
    thousands of times in a weights file; zipfile's member object re-reads from its start on each backward seek)."""

    def __init__(self, fh, start: int, size: int):
        self.fh, self.start, self.size, self.pos = fh, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset + (0, self.pos, self.size)[whence])
        return self.pos

    def readinto(self, buffer) -> int:
        want = max(0, min(len(buffer), self.size - self.pos))
        self.fh.seek(self.start + self.pos)
        got = self.fh.readinto(memoryview(buffer)[:want])
        self.pos += got
        return got

    def close(self) -> None:
        self.fh.close()
        super().close()


class _NoRoom(Exception):
    """A compressed weights member could not be inflated into a temporary file (the message says where and why)."""


def _member(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo):
    """A seekable reader of one member of zip ``z`` (at ``path``): read in place when stored (as Keras writes it),
    else inflated once (:func:`_inflated`)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return _inflated(z, info)
    fh = open(path, "rb")  # noqa: SIM115 - closed with the slice
    fh.seek(info.header_offset)
    head = fh.read(30)
    name, extra = struct.unpack("<HH", head[26:30]) if len(head) == 30 else (0, 0)
    return _Slice(fh, info.header_offset + 30 + name + extra, info.file_size)


def _inflated(z: zipfile.ZipFile, info: zipfile.ZipInfo):
    """A deflated member inflated once, front to back, into an unnamed temporary file (no name to link or race; the
    system removes it when it is closed, whatever happens): zipfile's member object re-inflates from its start on each
    backward seek, and h5py seeks back thousands of times (1,000 arrays: 19 s). zipfile stops at the declared size,
    which :func:`featstore.safezip.check_zip` bounds; _NoRoom when the temporary folder cannot hold it."""
    try:
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - returned open; closed by the caller's with
    except OSError as exc:
        raise _NoRoom(_no_room(info, exc)) from None
    try:
        with z.open(info) as src:
            while block := src.read(1 << 20):  # a damaged member raises here (BadZipFile, zlib.error): not _NoRoom
                try:
                    tmp.write(block)
                except OSError as exc:
                    raise _NoRoom(_no_room(info, exc)) from None
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise
    return tmp


def _no_room(info: zipfile.ZipInfo, exc: OSError) -> str:
    return (
        f"its {info.filename} is compressed ({info.file_size:,} bytes inflated) and could not be inflated into a "
        f"temporary file in {tempfile.gettempdir()} ({exc.strerror or exc}); free space there or set TMPDIR to a "
        f"folder with room, or save the model again with model.save (Keras stores it uncompressed)"
    )


def implied_parameters(config: dict) -> tuple[int, str]:
    """A lower bound of the parameters Keras builds from a ``config.json`` object, and its largest layer's term.

    Each layer entry (the root, every item of a ``layers`` list, a wrapper's ``layer``/``cell``) counts what its class
    builds from its input's last dimension ``n`` (its ``build_config``'s input shape): Dense ``n x units`` (+ bias),
    EinsumDense its kernel's letters sized from the input and ``output_shape``, a convolution ``prod(kernel_size) x n /
    groups x filters``, Embedding ``input_dim x output_dim``, a recurrent layer ``gates x units x (n + units)``,
    attention its four projections from the query, key and value widths, a normalization its ``axis``'s size per
    weight. A class not known here is not counted. When ``n`` is missing, the largest shape anywhere in the config
    stands in. Each term is at most what Keras builds (no bias counted but Dense's)."""
    widest = max((math.prod(_size(d) or 1 for d in s) for s in _shapes(config)), default=1)
    terms = [_term(layer, outer or widest) for layer, outer in _layers(config)]
    return sum(t for t, _ in terms), max(terms, default=(0, "none"))[1]


def _layers(config) -> list[tuple[dict, int | None]]:
    """The layer entries of a config (without recursion), each with its wrapper's input dimension (None at the top)."""
    found, stack = [], [(config, None)]
    while stack:
        item, outer = stack.pop()
        if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
            continue
        found.append((item, outer))
        inner, own = item["config"], _input_dim(item) or outer  # a wrapped layer sees its wrapper's input
        if isinstance(inner.get("layers"), list):  # a layer without its input shape sees the one before's output
            before = [None] + [_output_dim(x) for x in inner["layers"][:-1]]
            stack.extend(zip(inner["layers"], before))
        stack.extend((inner.get(k), own) for k in ("layer", "forward_layer", "backward_layer", "cell"))
        if isinstance(inner.get("cells"), list):
            stack.extend((x, own) for x in inner["cells"])
    return found


def _output_dim(layer) -> int | None:
    """The last dimension a layer entry puts out, where its config says (units, filters, output_dim), else None."""
    c = layer.get("config") if isinstance(layer, dict) else None
    if not isinstance(c, dict):
        return None
    return next((_size(c.get(k)) for k in ("units", "filters", "output_dim") if _size(c.get(k))), None)


def _shapes(value) -> list[list]:
    """Every shape-like list (``batch_shape``, ``input_shape``, ``query_shape``...) anywhere in a config."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, v in item.items():
                if str(key).endswith("shape") and isinstance(v, list) and not _nested(v):
                    found.append(v)
                else:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _nested(v: list) -> bool:
    return any(isinstance(x, (list, dict)) for x in v)


def _size(v) -> int:
    """A size from a config: a number as Keras casts it (int()), a list as the product of its entries; 0 otherwise.
    A number too large for a float (or not finite) counts as 2**63."""
    if isinstance(v, bool) or v is None:
        return 0
    if isinstance(v, int):
        return max(0, v)
    if isinstance(v, float):
        return max(0, int(v)) if math.isfinite(v) and abs(v) < 2**63 else 2**63
    if isinstance(v, list) and v and not _nested(v):
        return math.prod(max(1, _size(x)) for x in v)
    return 0


def _input_dim(layer: dict, key: str | None = None) -> int | None:
    """The last dimension of a layer's first input shape in its ``build_config`` (``input_shape``, or ``shapes_dict``
    for attention layers; ``key``: that entry of ``shapes_dict``, such as ``value_shape``), or None."""
    shape = _input_shape(layer, key)
    return _size(shape[-1]) or None if shape else None


def _input_shape(layer: dict, key: str | None = None) -> list | None:
    """A layer's first input shape (a flat list, batch first) in its ``build_config``, or None."""
    build = layer.get("build_config")
    if not isinstance(build, dict):
        return None
    shapes = build.get("shapes_dict")
    stack = [shapes.get(key)] if key and isinstance(shapes, dict) else [build.get("input_shape", shapes)]
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            stack[:0] = list(item.values())
        elif isinstance(item, list) and item:
            if not _nested(item):
                return item
            stack[:0] = item
    return None


def _term(layer: dict, widest: int) -> tuple[int, str]:
    """A lower bound of the parameters one layer entry builds, and a description."""
    kind, c = str(layer.get("class_name")), layer["config"]
    if kind in WEIGHTLESS:
        return 0, kind
    n = _input_dim(layer) or widest
    name = str(c.get("name", "?"))[:60]
    units, filters = _size(c.get("units")), _size(c.get("filters"))
    if kind == "Dense":
        bias = units if c.get("use_bias", True) is not False else 0
        return n * units + bias, f"Dense layer {name} (units {units}, input {n})"
    if kind == "EinsumDense":
        count = _einsum_kernel(c, _input_shape(layer), n)
        return count, f"EinsumDense layer {name} (kernel {count}, equation {str(c.get('equation'))[:40]!r}, input {n})"
    if kind.startswith("ConvLSTM") and filters:
        kernel = _size(c.get("kernel_size")) or 1
        count = 4 * kernel * (n + filters) * filters  # four gates over the input and the state
        return count, f"{kind} layer {name} (kernel {kernel}, filters {filters}, input {n})"
    if kind.startswith(("Conv", "SeparableConv", "DepthwiseConv")) and (filters or c.get("depth_multiplier")):
        kernel, groups = _size(c.get("kernel_size")) or 1, max(1, _size(c.get("groups")))
        depth = _size(c.get("depth_multiplier")) or 1
        if kind.startswith("Depthwise"):
            count = kernel * n * depth
        elif kind.startswith("Separable"):
            count = kernel * n * depth + n * depth * filters
        else:
            count = kernel * (n // groups or 1) * filters
        return count, f"{kind} layer {name} (kernel {kernel}, filters {filters or depth}, input {n})"
    if kind == "Embedding":
        count = _size(c.get("input_dim")) * _size(c.get("output_dim"))
        return count, f"Embedding layer {name} (input_dim {c.get('input_dim')}, output_dim {c.get('output_dim')})"
    if kind in ("LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell"):
        gates = 4 if kind.startswith("LSTM") else 3 if kind.startswith("GRU") else 1
        return gates * units * (n + units), f"{kind} layer {name} (units {units}, input {n})"
    if kind in ("MultiHeadAttention", "GroupQueryAttention", "GroupedQueryAttention"):
        heads = _size(c.get("num_heads")) or _size(c.get("num_query_heads"))
        shared = _size(c.get("num_key_value_heads")) or heads  # key and value heads (grouped query attention)
        key = _size(c.get("key_dim")) or _size(c.get("head_dim"))
        value = _size(c.get("value_dim")) or key
        q = _input_dim(layer, "query_shape") or n
        v = _input_dim(layer, "value_shape") or q
        k = _input_dim(layer, "key_shape") or v
        out = _size(c.get("output_shape")) or q
        count = q * heads * key + k * shared * key + v * shared * value + heads * value * out  # the 4 projections
        return count, f"{kind} layer {name} (num_heads {heads}, key_dim {key}, value_dim {value}, input {q})"
    if kind in NORMALIZATION:  # weights over its axis: gamma and beta unless off; BatchNormalization's 2 statistics
        size = _axes_size(c.get("axis", -1), _input_shape(layer), n)
        count = 2 * (kind == "BatchNormalization") + (c.get("center") is not False) + (c.get("scale") is not False)
        return count * size, f"{kind} layer {name} (axis size {size})"
    # Any other class (preprocessing layers holding data lists -- Normalization's mean, IntegerLookup's vocabulary --,
    # custom layers) is not counted: reading a list of values as a size refused genuine models (attack 20)
    return 0, f"{kind} layer {name} (not counted)"


def _axes_size(axis, shape: list | None, n: int) -> int:
    """The size of a normalization layer's ``axis`` (an int or a list) in its input ``shape``: ``n`` for the last axis
    (or when the shape is unknown)."""
    size = 1
    for a in axis if isinstance(axis, list) else [axis]:
        if not shape or not isinstance(a, int) or a in (-1, len(shape) - 1) or not -len(shape) <= a < len(shape):
            size *= n
        else:
            size *= max(1, _size(shape[a]))
    return size


def _einsum_kernel(c: dict, shape: list | None, n: int) -> int:
    """The elements of an EinsumDense kernel: each of its equation's weight letters sized from the input shape (the
    last letter ``n`` when the shape is unknown) or from ``output_shape`` (batch not included), 1 when neither says;
    as Keras lays out ``abc,cd->abd``, ``...b,bc->...c`` and ``ab...,bc->ac...``."""
    m = re.fullmatch(
        r"\s*(\.\.\.)?([a-zA-Z]+)(\.\.\.)?,([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)(\.\.\.)?\s*", str(c.get("equation"))
    )
    if not m:
        return n  # not an equation Keras accepts: it builds nothing; at least the input width otherwise
    left, spec_in, weights, spec_out = bool(m[1]), m[2], m[4], m[6]
    out = c.get("output_shape")
    out = out if isinstance(out, list) else [out]
    out = out if left else [None, *out]  # positions of the output letters: after the batch unless elided on the left
    count = 1
    for letter in weights:
        if letter in spec_in:
            i = spec_in.index(letter) - (len(spec_in) if left else 0)
            known = shape and -len(shape) <= i < len(shape)
            size = _size(shape[i]) if known else n if letter == spec_in[-1] else 1
        elif letter in spec_out:
            i = spec_out.index(letter)
            size = _size(out[i]) if i < len(out) else 1
        else:
            size = 1
        count *= max(1, size)
    return count
