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
import struct
import tempfile
import zipfile
from pathlib import Path

from featstore.models.keras_layers import CAP, Unbounded, dims, nested, output_shape, size, term
from featstore.models.preset_json import WEIGHTS_FILE, walk_weights, weights_problem

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 16 << 20  # config.json: ResNet152's is about 1 MB
# Parameters (64 MiB of float32) a config may ask beyond what the weights file holds before refusal. Kept, not made
# relative: what it lets a crafted config allocate is at most 64 MiB whatever the model, while each formula that
# counts more than Keras builds for a layer option refuses genuine models once it is over the slack. Attack 20's
# review found five (Dense without bias, UnitNormalization, normalizations without centre/scale or over another axis,
# cross-attention), up to ~1e6 parameters a layer at usual widths, and one no slack covers (EinsumDense, 197x); all
# are exact now and tests hold the bound at or below what genuine models store with no slack at all.
EDITED = "the config was edited or belongs to other weights"
UNBOUNDED = f"its {CONFIG_FILE} cannot be bounded before Keras builds it"  # a layer class it cannot size: its own fix
SLACK = 1 << 24
# A stateful layer's states are not in the weights file: its batch_shape sizes them, so a genuine model may pass SLACK
STATES = (
    "a stateful layer's states grow with its batch_shape, and over 2**24 numbers beyond the weights are refused: if "
    "you made the model, save it with a smaller batch_shape; if not, its config was edited"
)


def keras_zip_problem(path: Path) -> str | None:
    """Why Keras must not build the ``.keras`` zip at ``path`` (its config asks for far more parameters than its weights
    file holds, or a part is unreadable or oversized), or None; its weights file is checked as a ``.weights.h5`` is
    (:func:`featstore.models.preset_json.weights_problem`) with or without a config. The zip passed
    :func:`featstore.safezip.check_zip`."""
    with zipfile.ZipFile(path) as z:
        try:
            info = z.getinfo(CONFIG_FILE)
        except KeyError:  # Keras builds nothing from it, but load_weights reads its weights file alone (40 #2)
            try:
                return _held(path, z)[1]
            except _NoRoom as exc:
                return str(exc)
        if info.file_size > MAX_CONFIG_BYTES:
            return f"its {CONFIG_FILE} is {info.file_size:,} bytes, over {MAX_CONFIG_BYTES >> 20} MiB"
        try:
            config = json.loads(z.read(info).decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            return f"its {CONFIG_FILE} cannot be read as JSON ({str(exc)[:100]})"
        try:
            bound, largest = implied_parameters(config)
        except Unbounded as exc:
            return f"{UNBOUNDED}: {exc}"
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a value of another JSON type
            return f"its {CONFIG_FILE} is not a Keras model's config ({type(exc).__name__}: {str(exc)[:100]})"
        try:
            held, problem = _held(path, z)
        except _NoRoom as exc:
            return str(exc)
    if bound > held + SLACK:
        return (
            f"its {CONFIG_FILE} builds at least {bound:,} parameters ({bound * 4 / 1e9:.2f} GB of float32; largest: "
            f"{largest}) but its {WEIGHTS_FILE} holds {held:,}: " + (STATES if "stateful batch" in largest else EDITED)
        )
    return problem


def held_parameters(path: Path) -> int:
    """The numbers the ``.keras`` zip's weights file holds (0 when it has none or it cannot be read): what
    :func:`featstore.models.build_guard.bounded_build` lets Keras build, plus :data:`SLACK`."""
    with zipfile.ZipFile(path) as z:
        return _held(path, z)[0]


def _held(path: Path, z: zipfile.ZipFile) -> tuple[int, str | None]:
    """``(numbers held, why the weights file must not be read or None)`` of the zip ``z`` at ``path``."""
    if WEIGHTS_FILE not in z.namelist():
        return 0, None
    try:
        with _member(path, z, z.getinfo(WEIGHTS_FILE)) as fh:
            held, seen, unstored, outside = walk_weights(fh)
        return held, weights_problem(Path(WEIGHTS_FILE), seen, unstored, outside)
    except _NoRoom:
        raise
    except Exception:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError for a damaged file
        return 0, None  # it holds nothing Keras could read: every parameter would be built from the config alone


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
    builds (:func:`featstore.models.keras_layers.term`) from its input shape: its ``build_config``'s, else the shape
    its graph feeds it (``inbound_nodes``, or the entry before in a Sequential), through layers that build nothing.
    A class not known there raises :class:`Unbounded`. When the input is unknown, the largest shape anywhere in the
    config stands in for its width. Each term is at most what Keras builds; every size is capped at :data:`CAP`."""
    widest = max((size(s) for s in _shapes(config)), default=1)
    total, largest = 0, (0, "none")
    for layer, shape, others in _layers(config):
        counted = term(layer, shape, others, widest)
        total, largest = min(CAP, total + counted[0]), max(largest, counted)
    return total, largest[1]


def _layers(config) -> list[tuple[dict, list | None, list]]:
    """The layer entries of a config (without recursion), each with its input shape and its further inputs' shapes:
    those of its ``build_config``, else those its graph or wrapper feeds it."""
    found, stack = [], [(config, None, [])]
    while stack:
        item, fed, fed_others = stack.pop()
        if not isinstance(item, dict) or not isinstance(item.get("config"), dict):
            continue
        shape, others = _built(item)
        shape, others = shape or fed, others or fed_others
        found.append((item, shape, others))
        inner = item["config"]
        if isinstance(inner.get("layers"), list):
            stack.extend(_graph(inner["layers"], shape))
        timed = item.get("class_name") == "TimeDistributed" and shape and len(shape) > 2
        wrapped = [shape[0], *shape[2:]] if timed else shape  # TimeDistributed's layer sees each step
        stack.extend((inner.get(k), wrapped, []) for k in ("layer", "forward_layer", "backward_layer", "cell"))
        if isinstance(inner.get("cells"), list):  # stacked cells: each is fed the one before's units
            fed_cell = shape
            for cell in inner["cells"]:
                stack.append((cell, fed_cell, []))
                units = cell.get("config", {}).get("units") if isinstance(cell, dict) else None
                fed_cell = [None, size(units) or None]
    return found


def _graph(entries: list, start: list | None) -> list[tuple[dict, list | None, list]]:
    """Each entry of a ``layers`` list with the shapes its graph feeds it: the outputs of the layers its first
    ``inbound_nodes`` call names (a Functional model, in any order: walked producers first, linearly), else of the
    entry before (a Sequential; the first is fed ``start``)."""
    items = [e for e in entries if isinstance(e, dict) and isinstance(e.get("config"), dict)]
    feeds = [_inbound(e) for e in items]
    if all(f is None for f in feeds):  # a Sequential: a chain
        feeds = [[i - 1] if i else [] for i in range(len(items))]
    else:
        index = {str(e.get("name") or e["config"].get("name"))[:200]: i for i, e in enumerate(items)}
        feeds = [[index.get(name, -1) for name in f or []] for f in feeds]
    outputs: list[list | None] = [None] * len(items)
    result = []
    for i in _producers_first(feeds):
        fed = [outputs[j] if j >= 0 else None for j in feeds[i]] if feeds[i] or i else [start]
        shape, others = (fed[0] if fed else None), fed[1:]
        result.append((items[i], shape, others))
        built, built_others = _built(items[i])
        outputs[i] = output_shape(items[i], [built or shape, *(built_others or others)])
    return result


def _producers_first(feeds: list[list[int]]) -> list[int]:
    """The entries' indices, each after those feeding it (Kahn's order); entries in a cycle at the end."""
    waiting = [len({j for j in f if j >= 0}) for f in feeds]
    fed_by: list[list[int]] = [[] for _ in feeds]
    for i, f in enumerate(feeds):
        for j in {j for j in f if j >= 0}:
            fed_by[j].append(i)
    order = [i for i, w in enumerate(waiting) if not w]
    for i in order:  # grows while walked
        for k in fed_by[i]:
            waiting[k] -= 1
            if not waiting[k]:
                order.append(k)
    seen = set(order)
    return order + [i for i in range(len(feeds)) if i not in seen]


def _inbound(entry: dict) -> list[str] | None:
    """The names of the layers feeding an entry's first call (its ``args`` then ``kwargs`` tensors, in order), or
    None when the entry has no ``inbound_nodes`` (a Sequential's)."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list):
        return None
    if not nodes or not isinstance(nodes[0], dict):
        return []
    fed, stack = [], [nodes[0].get("kwargs"), nodes[0].get("args")]
    while stack:  # depth first, in order: reversed onto the end of the stack, popped from it (linear)
        item = stack.pop()
        if isinstance(item, dict) and item.get("class_name") == "__keras_tensor__":
            history = item.get("config", {}).get("keras_history") if isinstance(item.get("config"), dict) else None
            fed.append(str(history[0])[:200] if isinstance(history, list) and history else "")
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return fed


def _shapes(value) -> list[list]:
    """Every shape-like list (``batch_shape``, ``input_shape``, ``query_shape``...) anywhere in a config."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, v in item.items():
                if str(key).endswith("shape") and isinstance(v, list) and not nested(v):
                    found.append(v)
                else:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _built(layer: dict) -> tuple[list | None, list]:
    """A layer's input shape in its ``build_config`` (``input_shape``'s first flat list; an attention layer's
    ``shapes_dict`` query) and its further inputs' (value, key), or (None, [])."""
    build = layer.get("build_config")
    if not isinstance(build, dict):
        return None, []
    shapes = build.get("shapes_dict")
    if isinstance(shapes, dict) and "query_shape" in shapes:
        return _first_flat(shapes.get("query_shape")), [
            _first_flat(shapes.get(k)) for k in ("value_shape", "key_shape")
        ]
    return _first_flat(build.get("input_shape", shapes)), []


def _first_flat(value) -> list | None:
    """The first flat list (a shape) in a nested list or dict, depth first (linear: an index-free stack), as sizes."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list) and item:
            if not nested(item):
                return dims(item)
            stack.extend(reversed(item))
    return None
