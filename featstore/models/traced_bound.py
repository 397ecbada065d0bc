"""The activation bound on every tensor of one image's traced forward pass, not only on the layers' outputs.

:mod:`featstore.models.activations` measures, before the model is traced, each layer's outputs at the shapes it is
fed, and what a few built-in layers are known to make inside them. A layer's ``call`` may make larger tensors on its
way to a small output, and every attack found another such layer: a MelSpectrogram's frames, a CategoryEncoding's
one-hot, a SeparableConv2D's depthwise step, CLAHE's histograms, a dilated convolution's ``SpaceToBatchND``, grouped
attention's repeated keys, a Resizing's padding (attack 43 #1, #5, #6, #10, #16-#18: 7-48 GiB per image, each counted
as its output's few MB), and a custom layer's tensors were never seen at all. So, before the forward pass is traced
for the images, the extractor's model is traced once more for a batch of one image (``tf.function`` on a concrete
input: shapes only, no value computed), and every operation it makes (but a weight's read) is held to the same bound,
:data:`~featstore.models.activations.MAX_ACTIVATION_BYTES`, at its own dtype's size, the graphs of control flow
(a ``tf.cond``'s branches, a ``map_fn``'s or RNN's loop body) included. A shape TensorFlow knows only when the pass
runs (a padding computed from the image's values) is not measured here: the layers' walk counts the built-in layers
that make one (a Resizing's padding) and refuses an output it cannot size. A kernel's own scratch space
(a convolution's im2col buffer) is no tensor of the graph and stays out, as it does by the bound's definition.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from dataclasses import dataclass

from featstore.errors import ConfigError
from featstore.models.activations import MAX_ACTIVATION_BYTES, layer_before, over_bound
from featstore.models.forward import on_gpu
from featstore.models.room import memory_room
from featstore.units import format_bytes

logger = logging.getLogger(__name__)
MAX_TRACED_OPS = 1 << 20  # operations measured in one traced pass, branches and loop bodies included


@dataclass(frozen=True)
class Traced:
    """The largest image-dependent tensor of a traced forward pass: its operation's name and type, shape (batch of
    one included), dtype name and bytes; ``layer``: the top-level layer whose call made it (None where the name does
    not tell)."""

    op: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    layer: str | None
    from_image: bool = True
    working: tuple[int, str, str] = (0, "", "")  # one image's largest working set: bytes, operation, its type


# Operations that hold their inputs and their outputs at once: they never write into an input (an element-wise op may:
# TensorFlow forwards a buffer no one else holds). Their sum is memory one image needs at once, whatever the batch.
HOLD_BOTH = frozenset(
    "Conv2D Conv3D DepthwiseConv2dNative MatMul BatchMatMulV2 BatchMatMulV3 Einsum MaxPool AvgPool ConcatV2 Pad PadV2 "
    "MirrorPad ResizeBilinear ResizeNearestNeighbor ResizeBicubic Transpose".split()
)


WEIGHT_READS = ("ReadVariableOp", "VarHandleOp")  # a weight's read is the weight (bounded apart): not measured
_HELD = (*WEIGHT_READS, "Const")  # a weight's read, a constant: memory held before any image


def _nbytes(tensor) -> int | None:
    """A tensor's bytes where its shape is fully known and its type numpy's (a shape known only when run: None)."""
    if tensor.shape.rank is None or not tensor.shape.is_fully_defined() or not tensor.dtype.is_numpy_compatible:
        return None
    return math.prod(tensor.shape.as_list()) * tensor.dtype.size


def _sized(tensors) -> int:
    """Bytes of the tensors of fully known shape among ``tensors``."""
    return sum(n for n in map(_nbytes, tensors) if n is not None)


def largest_traced(model, size: int, channels: int) -> Traced | None:
    """The largest tensor that one ``size`` x ``size`` x ``channels`` image makes in ``model``'s traced forward pass
    (every operation with a fully known shape, but a weight's read); None without TensorFlow or where the model cannot
    be traced (the forward pass's own trace then says why)."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    fn = tf.function(lambda x: model(x, training=False))
    try:
        concrete = fn.get_concrete_function(tf.TensorSpec((1, size, size, channels), tf.float32))
    except Exception:  # noqa: BLE001 - any layer's graph code: the forward pass's own trace raises it, in its words
        return None
    library = getattr(concrete.graph, "_functions", {})  # the graphs of control flow's branches and bodies
    image = _reached(concrete.inputs[0].op)  # the operations the image reaches (others: from the config alone)
    # every operation, not only those the image reaches: a MelSpectrogram's mel matrix (fft_length/2+1 x mel bins,
    # 8 GiB) is made in each call from its config alone (attack 44 #4); a weight's read is the weight (bounded apart).
    # In graph order, so that of equal ones the first is named (the cut before it: attack 44 #7)
    todo = deque((op, "", op.name in image) for op in concrete.graph.get_operations())
    seen, best, working = 0, None, (0, "", "")
    while todo:
        op, scope, from_image = todo.popleft()
        seen += 1
        if from_image and op.type not in WEIGHT_READS:
            ins = _sized([t for t in op.inputs if t.op.type not in _HELD])  # weights are held already: not counted
            outs = _sized(op.outputs)
            held = ins + outs if op.type in HOLD_BOTH else max(ins, outs)
            if held > working[0]:
                working = (held, op.name if not scope else f"{scope}/{op.name}", op.type)
        for out in op.outputs if op.type not in WEIGHT_READS else ():
            nbytes = _nbytes(out)  # None: left to the layers' walk, which refuses an unknown output
            if nbytes is not None and (best is None or nbytes > best.nbytes):
                name = op.name if not scope else f"{scope}/{op.name}"
                best = Traced(name, op.type, tuple(out.shape.as_list()), out.dtype.name, nbytes, None, from_image)
        # a tf.cond's branches, a while loop's body (map_fn's), a call: their own graphs, entered whole, named by the
        # operation that runs them (their tensors were never looked at: attack 44 #1)
        for inner in _called(op, library):
            if seen + len(todo) > MAX_TRACED_OPS:
                raise ConfigError(f"the traced forward pass has more than {MAX_TRACED_OPS:,} operations; refusing it")
            inside = op.name if not scope else f"{scope}/{op.name}"
            todo.extend((inner_op, inside, from_image) for inner_op in inner.get_operations())
    return None if best is None else Traced(**{**best.__dict__, "layer": _layer(model, best.op), "working": working})


def _reached(start) -> set[str]:
    """The names of the operations of ``start``'s graph that its outputs reach."""
    reached, todo = set(), [start]
    while todo:
        op = todo.pop()
        if op.name not in reached:
            reached.add(op.name)
            todo.extend(consumer for out in op.outputs for consumer in out.consumers())
    return reached


def _called(op, library: dict) -> list:
    """The graphs of the functions ``op`` runs (``then_branch``, ``else_branch``, ``body``, ``cond``, ``f``,
    ``branches``), found in the traced graph's function library."""
    names = []
    for value in op.node_def.attr.values():
        names += [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
    graphs = [getattr(library.get(name), "graph", None) for name in names]
    return [graph for graph in graphs if graph is not None]


def _layer(model, op_name: str) -> str | None:
    """The top-level layer of ``model`` whose call made ``op_name`` (``model_1/conv2d_1/convolution/...``: Keras adds a
    ``_N`` to each scope it opens), or None."""
    names = {layer.name for layer in model.layers}
    for part in op_name.split("/")[1:2]:
        for name in (re.sub(r"_\d+$", "", part), part):
            if name in names:
                return name
    return None


def check_traced(model, size: int, channels: int, shown: str, resizable: bool) -> Traced | None:
    """Refuse, before any image runs, a model one image of which makes a tensor over the bound anywhere in its traced
    forward pass (:func:`largest_traced`): one line naming ``shown``, the layer and operation, the bytes and the way
    out (a ``--layer`` before that layer; a smaller ``--image-size`` where the model takes one). The largest, or None."""
    largest = largest_traced(model, size, channels)
    if largest is None or largest.nbytes <= MAX_ACTIVATION_BYTES:
        refuse_no_room(model, largest, shown, resizable)
        return largest
    where = f"its layer {largest.layer!r}" if largest.layer else "its forward pass"
    dims = " x ".join(str(d) for d in (largest.shape[1:] if largest.shape[:1] == (1,) else largest.shape))
    # a tensor no image reaches (a MelSpectrogram's mel matrix): the same whatever the image and its size (44 #9)
    per = "values per image inside it" if largest.from_image else "values inside it from its configuration alone"
    what = f"{where} makes {dims} {largest.dtype} {per} (operation {largest.kind})"
    before = layer_before(model, largest.layer)
    otherwise = "no layer comes before it and its input side is fixed: save the model smaller"
    line = over_bound(
        shown,
        what,
        largest.nbytes,
        before,
        repr(largest.layer),
        resizable and largest.from_image,
        per="tensor",
        otherwise=otherwise,
    )
    raise ConfigError(line)


def refuse_no_room(model, traced: Traced | None, shown: str, resizable: bool) -> None:
    """Refuse, before any image runs, a model one image of which needs more memory at once than this process can take
    (:func:`~featstore.models.room.memory_room`): its traced pass's largest working set, an operation's inputs and
    outputs held together (:data:`HOLD_BOTH`). Two 2 GiB convolutions in a row, each within the bound, died of
    ``std::bad_alloc`` under a 6 GB address-space limit at --batch-size 1, no line (attack 48 #6)."""
    need, op, kind = traced.working if traced is not None else (0, "", "")
    room = memory_room() if need and not on_gpu() else None  # (a GPU's memory is not this process's RAM)
    if room is None or need <= room.nbytes:
        return
    layer = _layer(model, op)
    before = layer_before(model, layer)
    ways = [f"cut before it with --layer {before}"] if before else []
    ways += ["give a smaller --image-size"] if resizable and traced.from_image else []
    where = f"its layer {layer!r}" if layer else "its forward pass"
    raise ConfigError(
        f"{shown}: one image needs at least {format_bytes(need)} at once in {where} (operation {kind}: its inputs and "
        f"outputs), and this process can take {format_bytes(room.nbytes)} more, held by {room.limit}; refused "
        f"before any image runs: " + "; or ".join([*ways, "run it with more memory"])
    )
