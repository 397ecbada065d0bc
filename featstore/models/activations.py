"""A bound on the memory one image's forward pass takes, checked before the first image runs.

Parameters and weights files are bounded elsewhere (:mod:`~featstore.models.keras_sizes`,
:mod:`~featstore.models.build_guard`, :mod:`~featstore.models.preset_json`), but what a forward pass allocates is its
*activations*, which grow with the input side and a layer's width, not with its parameters: a 1 MB ``.keras`` file
(a ``Conv2D(8192)`` on 1024 x 1024 images, 245,762 parameters) asked for 34 GB per image and died of SIGSEGV under
``ulimit -v`` (attack 37 #3); an 18 MB KerasHub preset (``mlp_dim`` 262,144 over 16,385 tokens) asked for 17 GB per
image in its MLP (attack 37 #1). Keras knows every layer's output shape once the model is built, and a preset's
config says its tokens and widths, so both are refused in one line before anything runs.

The bound, :data:`MAX_ACTIVATION_BYTES`, is per image and tensor (float32, 4 B a value): the same 4 GiB as a preset's
attention scores (:data:`~featstore.models.preset_json.MAX_ATTENTION_BYTES`) and a stored feature row. A forward pass
holds a layer's input and output at once, so one image takes at most a few times that; the largest tensor of any
registered backbone at featstore's largest side (VGG16's ``block1_conv2`` at 4096 px: 4096^2 x 64 x 4 B) is exactly
4 GiB, and at the sides the suite and the docs use far less (VGG16 at 224 px: 12.8 MB; 335 times under).

>>> token_bytes(16385, 262144) > MAX_ACTIVATION_BYTES, token_bytes(1370, 6144) < MAX_ACTIVATION_BYTES
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from featstore.errors import ConfigError

MAX_ACTIVATION_BYTES = 4 << 30  # one image's largest tensor in the forward pass (float32)
BYTES_PER_VALUE = 4  # float32: what the forward pass computes in (mixed_float16 halves it: 4 B is the bound's side)
MAX_GRAPH_NODES = 1 << 20  # nodes walked in a model's graph, nested models included (ResNet152: about 600)


def token_bytes(tokens: int, width: int) -> int:
    """Bytes of one image's ``tokens x width`` float32 activation (a transformer block's MLP, or its tokens)."""
    return tokens * width * BYTES_PER_VALUE


def ffn_width(hidden: int, mlp: int, swiglu: bool = False) -> int:
    """The widest per-token activation of a transformer block: its MLP's first Dense output (``mlp_dim`` or
    ``intermediate_dim``; DINOv2's SwiGLU: ``2 x`` two thirds of it, rounded up to 8, as KerasHub builds it), or the
    tokens' ``hidden_dim`` when wider.

    >>> ffn_width(768, 3072), ffn_width(1536, 6144, swiglu=True)
    (3072, 8192)
    """
    width = 2 * ((int(mlp * 2 / 3) + 7) // 8 * 8) if swiglu else mlp
    return max(hidden, width)


def fitting_sides(patch: int, least: int, below: int, fits) -> list[int]:
    """The input sides (multiples of ``patch`` from ``least`` to under ``below``) whose tokens ``fits(tokens)``
    accepts; ``fits`` takes the patches per image."""
    return [s for s in range(patch, below, patch) if s >= least and fits((s // patch) ** 2)]


def check_tokens(spec, size: int) -> None:
    """Refuse an ``--image-size`` at which one image's widest transformer activation (``tokens x``
    :func:`ffn_width` float32, per block) passes :data:`MAX_ACTIVATION_BYTES`, before the preset is built: one line
    naming its ``config.json`` and the largest ``--image-size`` that fits (a resizable preset), or that none does.
    ``spec``: a :class:`~featstore.models.hub.HubSpec` (``patch_size``, ``prefix_tokens()``, ``ffn_width``...)."""
    prefix = spec.prefix_tokens()
    tokens = (size // spec.patch_size) ** 2 + prefix
    need = token_bytes(tokens, spec.ffn_width)
    if need <= MAX_ACTIVATION_BYTES:
        return
    fits = fitting_sides(
        spec.patch_size, spec.min_size, size, lambda t: token_bytes(t + prefix, spec.ffn_width) <= MAX_ACTIVATION_BYTES
    )
    fixed = not spec.family.resizable
    raise ConfigError(
        f"{spec.folder / 'config.json'}: at --image-size {size}, {tokens:,} tokens x {spec.ffn_width:,} channels of "
        f"its MLP (mlp_dim or intermediate_dim) take {need / 2**30:,.1f} GiB per image and block, over {MAX_ACTIVATION_BYTES >> 30} GiB (the largest supported "
        f"presets take 0.04): "
        + (
            f"give --image-size {fits[-1]} or less"
            if fits and not fixed
            else f"{spec.class_name} takes only its preset's {spec.default_size}, so no --image-size fits; the "
            f"preset's config is damaged or crafted (restore it)"
            if fixed
            else "this preset cannot be run within that bound"
        )
    )


@dataclass(frozen=True)
class Largest:
    """One image's largest activation in a built model: the layer making it, its shape and bytes (float32), and
    the last top-level layer before it (a ``--layer`` that cuts before it; None when only the input is); ``scores``:
    the tensor is an attention layer's scores, made inside it (:func:`_attention_scores`), not its output."""

    layer: str
    shape: tuple[int, ...]
    nbytes: int
    before: str | None
    scores: bool = False


def _graph(model):
    """The Functional graph behind ``model`` (a Sequential's inner one), or None."""
    inner = getattr(model, "_functional", None) or model
    return inner if hasattr(inner, "_nodes_by_depth") else None


def _per_image(tensor, side: int = 1) -> tuple[tuple[int, ...], int]:
    """``(shape without the batch axis, float32 bytes)`` of a symbolic tensor; an unknown dimension counts ``side``
    (the model's input side: a nested model built on ``(None, None, 3)`` inputs knows none of its sides, and counted 1
    its 16 GiB Conv2D passed as 16 KiB: attack 39 #7)."""
    shape = tuple(int(d) if d is not None else side for d in tuple(getattr(tensor, "shape", ()) or ())[1:])
    return shape, math.prod(shape) * BYTES_PER_VALUE


def _input_side(model) -> int:
    """The largest known side of ``model``'s inputs (1 where none is known)."""
    sides = [int(d) for t in getattr(model, "inputs", None) or [] for d in tuple(t.shape)[1:-1] if d is not None]
    return max(sides, default=1)


def _attention_scores(op, node, side: int) -> tuple[tuple[int, ...], int] | None:
    """``(shape, bytes)`` of the attention scores an attention layer makes inside it for one image (heads x query
    tokens x key tokens, float32), which are no layer's output: a 2 MB model's MultiHeadAttention over 4,096 tokens
    with 256 heads took 16 GiB per image while every output was under 1 MiB (attack 39 #1); None for other layers."""
    kind = type(op).__name__
    if kind not in ("MultiHeadAttention", "Attention", "AdditiveAttention", "GroupedQueryAttention"):
        return None
    shapes = [_per_image(t, side)[0] for t in node.input_tensors]
    if not shapes or any(len(sh) < 2 for sh in shapes):
        return None
    query, key = math.prod(shapes[0][:-1]), math.prod(shapes[-1][:-1])  # tokens: every axis but the features'
    heads = int(getattr(op, "num_heads", None) or getattr(op, "num_query_heads", None) or 1)
    shape = (heads, query, key)
    return shape, math.prod(shape) * BYTES_PER_VALUE


def largest_activation(model) -> Largest | None:
    """The largest output one image makes in ``model``'s forward pass, nested models' layers included (every tensor
    of the pass is some layer's output or the input), from the shapes Keras inferred when it built the model: no
    image is run; of equal ones, the first in the pass. None for a model without a graph (a subclassed model)."""
    top = _graph(model)
    if top is None:
        return None
    order = [lyr.name for lyr in model.layers if type(lyr).__name__ != "InputLayer"]
    side = _input_side(model)
    best: tuple[int, str, tuple[int, ...], str, bool] | None = None
    stack, seen, walked = [(top, None)], set(), 0
    while stack:
        graph, owner = stack.pop()
        if id(graph) in seen:
            continue
        seen.add(id(graph))
        for depth in sorted(graph._nodes_by_depth, reverse=True):  # from the input on
            for node in graph._nodes_by_depth[depth]:
                walked += 1
                if walked > MAX_GRAPH_NODES:
                    raise ConfigError(f"{model.name} has more than {MAX_GRAPH_NODES:,} layer calls; refusing to run it")
                op = node.operation
                if op is None or node.is_input:
                    continue
                here = owner or op.name  # the top-level layer (what --layer names)
                inner = _graph(op)
                if inner is not None and inner is not graph:
                    stack.append((inner, here))
                sized = [(*_per_image(tensor, side), False) for tensor in node.output_tensors]
                scores = _attention_scores(op, node, side)
                for shape, nbytes, inside in sized + ([(*scores, True)] if scores else []):
                    if best is None or nbytes > best[0]:
                        best = (
                            nbytes,
                            op.name if owner is None else f"{op.name}' (inside '{owner}",
                            shape,
                            here,
                            inside,
                        )
    if best is None:
        return None
    nbytes, name, shape, top_name, inside = best
    earlier = order[: order.index(top_name)] if top_name in order else []
    return Largest(name, shape, nbytes, earlier[-1] if earlier else None, inside)


def check_activations(model, shown: str, resizable: bool) -> Largest | None:
    """Refuse, before the first image, a built extractor model one image of which makes an activation over
    :data:`MAX_ACTIVATION_BYTES`: one line naming ``shown`` (the model file, or the backbone), the layer, its bytes
    per image and the way out (a ``--layer`` before it; a smaller ``--image-size`` where the model takes one).
    Returns the largest activation (for the out-of-memory line's advice), or None."""
    largest = largest_activation(model)
    if largest is None or largest.nbytes <= MAX_ACTIVATION_BYTES:
        return largest
    dims = " x ".join(str(d) for d in largest.shape)
    # an attention layer's scores are made inside it, not output: "outputs" was said of them too
    makes = f"makes {dims} float32 attention scores" if largest.scores else f"outputs {dims} float32 values"
    ways = [f"cut before it with --layer {largest.before} (or another layer ahead of '{largest.layer}')"]
    ways = ways if largest.before else []
    if resizable:
        ways.append("give a smaller --image-size (activations grow with its square)")
    raise ConfigError(
        f"{shown}: its layer '{largest.layer}' {makes} per image, {largest.nbytes / 1e9:,.1f} GB "
        f"({largest.nbytes / 2**30:,.1f} GiB), over featstore's bound of {MAX_ACTIVATION_BYTES >> 30} GiB per image "
        f"and activation (VGG16 at 224 px takes 12.8 MB at most); refused before any image runs: "
        + (
            "; or ".join(ways)
            if ways
            else "it is the model's first layer and its input side is fixed, so this model cannot run within the "
            "bound (save it with fewer channels in that layer or a smaller input)"
        )
    )


def memory_advice(extractor, n: int) -> str:
    """What can make a forward pass that ran out of memory on a batch of ``n`` images fit: a smaller ``--batch-size``
    (only when ``n > 1``), a ``--layer`` before the largest layer (where one is known and the cut is after it), a
    smaller ``--image-size`` (only where the model takes another). ``--pooling`` is never one: it pools after the cut.
    """
    ways = [f"give a smaller --batch-size (this batch: {n})"] if n > 1 else []
    largest = getattr(extractor, "largest_activation", None)
    transformer = getattr(getattr(extractor, "spec", None), "family", None) is not None  # every block takes the same
    if largest is not None and largest.before and not transformer:
        ways.append(f"cut at a --layer before '{largest.layer}' (e.g. {largest.before}; it takes the most memory)")
    elif largest is None and not transformer:
        ways.append("cut at an earlier --layer")
    if resizable(extractor):
        ways.append("use a smaller --image-size")
    return "; or ".join(ways) if ways else "one image does not fit in this process's memory: run it with more memory"


def resizable(extractor) -> bool:
    """Whether the extractor's model takes another input side (a registered backbone, a resizable preset); a saved
    model's side is fixed. Unknown (None): True, the line then mentions --image-size as before."""
    spec = getattr(extractor, "spec", None)
    if spec is None:
        return True
    family = getattr(spec, "family", None)
    if family is not None:
        return bool(family.resizable)
    return hasattr(spec, "spatial")  # a BackboneSpec (registry); a SavedModelSpec has no other side
