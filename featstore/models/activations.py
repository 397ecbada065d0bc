"""A bound on the memory one image's forward pass takes, checked before the first image runs.

Parameters and weights files are bounded elsewhere (:mod:`~featstore.models.keras_sizes`,
:mod:`~featstore.models.build_guard`, :mod:`~featstore.models.preset_json`), but what a forward pass allocates is its
*activations*, which grow with the input side and a layer's width, not with its parameters: a 1 MB ``.keras`` file
(a ``Conv2D(8192)`` on 1024 x 1024 images, 245,762 parameters) asked for 34 GB per image and died of SIGSEGV under
``ulimit -v`` (attack 37 #3); an 18 MB KerasHub preset (``mlp_dim`` 262,144 over 16,385 tokens) asked for 17 GB per
image in its MLP (attack 37 #1). Keras knows every layer's output shape once the model is built, and a preset's
config says its tokens and widths, so both are refused in one line before anything runs. A model nested in the
saved one (a Functional or Sequential used as a layer) is measured at the shapes the outer model feeds it, not those
it was built on (:class:`_Walk`); a dimension Keras cannot tell even then is refused, not guessed: no worst case can
be stated for it (an UpSampling, a Reshape into tokens, a Concatenate multiply it), so any guess would let a model
that needs 64 GiB per image pass as 1 GiB, as "an unknown side = the input's" did (attack 40 #3).

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
import re
from dataclasses import dataclass

from featstore.errors import ConfigError
from featstore.models.internals import MAX_UNROLLED_STEPS, made_inside, unrolled
from featstore.models.internals import shape_of as _shape

MAX_ACTIVATION_BYTES = 4 << 30  # one image's largest tensor in the forward pass (float32)
BYTES_PER_VALUE = 4  # float32: what the forward pass computes in (mixed_float16 halves it: 4 B is the bound's side)
MAX_GRAPH_NODES = 1 << 20  # nodes walked in a model's graph, nested models included (ResNet152: about 600)
MAX_NESTING = 64  # models nested in models (a backbone in a classifier: 1)


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
    what the tensor is where it is made inside a layer (an attention layer's "attention scores", "query projections",
    a MelSpectrogram's "framed signal", ...: :func:`~featstore.models.internals.made_inside`), not output ("" for a
    layer's output);
    ``inside``: the nested models it is in, outermost first (empty for a top-level layer)."""

    layer: str
    shape: tuple[int, ...]
    nbytes: int
    before: str | None
    scores: str = ""
    inside: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        """The layer quoted as messages name it: ``'conv'`` or ``'conv' (inside 'inner')``, quotes balanced."""
        where = " inside ".join(f"'{n}'" for n in reversed(self.inside))
        return f"'{self.layer}'" + (f" (inside {where})" if where else "")


class _Unknown(Exception):
    """A tensor dimension still unknown at the concrete shapes of the model's input (a truly dynamic layer), or a
    layer whose shape code fails at them: ``shape`` its output's, or (``why`` given) its inputs'."""

    def __init__(self, layer: str, inside: tuple[str, ...], shape: tuple, why: str, top: str) -> None:
        super().__init__(layer)
        self.layer, self.inside, self.shape, self.why, self.top = layer, inside, shape, why, top
        self.before: str | None = None  # the top-level layer before ``top`` (set by largest_activation)

    def line(self, shown: str) -> str:
        where = Largest(self.layer, (), 0, None, inside=self.inside).shown
        said = (
            f"Keras cannot tell its output shape from its inputs' {self.shape} ({self.why})"
            if self.why
            else f"its output {self.shape} has a dimension Keras cannot tell without running it (None)"
        )
        way = f"cut before it with --layer {self.before}, or " if self.before else ""
        return (
            f"{shown}: at its input shape, layer {where}: {said}; featstore bounds one image's activations "
            f"({MAX_ACTIVATION_BYTES >> 30} GiB) before any image runs and refuses what it cannot measure: {way}save "
            f"the model with known sizes there (fixed dimensions in its Input or Reshape)"
        )


class _Unrolled(Exception):
    """An RNN unrolled over more than :data:`~featstore.models.internals.MAX_UNROLLED_STEPS` time steps: no tensor
    of it is large, but its graph is (audit fixBA)."""


def _graph(model):
    """The Functional graph behind ``model`` (a Sequential's inner one), or None."""
    inner = getattr(model, "_functional", None) or model
    return inner if hasattr(inner, "_nodes_by_depth") else None


def _failed(op, inside: tuple[str, ...], inputs: list, exc: Exception, top: str) -> _Unknown:
    """The refusal of a layer whose shape code failed at the shapes it is fed (its first line, colours removed)."""
    said = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    why = f"{type(exc).__name__}: {said[0].strip()}" if said else type(exc).__name__
    return _Unknown(op.name, inside, tuple(_shape(t) for t in inputs), why, top)


class _Walk:
    """Every tensor of one image's forward pass, measured at the concrete shapes it takes, without running it.

    The outer graph's tensors already have them (Keras built it on the model's input); a nested model (a Functional
    or Sequential used as a layer) was built on its own inputs, often ``(None, None, 3)`` or ``(None, C)``, so its
    graph's shapes say nothing of what the outer call feeds it: an ``UpSampling2D(8)`` inside took 64 GiB per image
    where "unknown = the input side" counted 1 GiB, a ``Reshape`` to 4,096 tokens into a nested MultiHeadAttention
    16 GiB counted 4 MiB (attack 40 #3). So each nested call is walked again, node by node as Keras' own
    ``Function._run_through_graph`` does, on the concrete shapes of that call's inputs: each layer's
    ``compute_output_spec`` (shapes only: no value is computed, no weight made), nested models recursively. A node
    whose inputs have the shapes it was built on keeps its built outputs (the outer graph, a nested model called at
    its own shapes: nothing recomputed). A dimension still unknown after that is refused (:class:`_Unknown`), not
    guessed: no image-sized bound holds for it."""

    def __init__(self, name: str) -> None:
        self.name = name  # the model's, for the lines
        self.best: tuple | None = None  # (nbytes, layer, shape, top-level layer, scores, inside)
        self.walked = 0
        self.memo: dict = {}  # (graph, input shapes) -> outputs: a nested model called N times at one shape, once

    def graph(self, graph, inputs, inside: tuple[str, ...], top: str | None) -> list:
        """Walk ``graph`` fed ``inputs`` (symbolic tensors, flattened like its ``inputs``); its flat outputs."""
        if len(inside) > MAX_NESTING:
            raise ConfigError(
                f"{self.name} has models nested more than {MAX_NESTING} deep ('{inside[-1]}'); refusing to run it"
            )
        key = (id(graph), tuple(tuple(t.shape) for t in inputs))
        if key in self.memo:
            return self.memo[key]
        tensors = {id(ref): t for ref, t in zip(graph.inputs, inputs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):  # from the input on
            for node in graph._nodes_by_depth[depth]:
                self.walked += 1
                if self.walked > MAX_GRAPH_NODES:
                    raise ConfigError(f"{self.name} has more than {MAX_GRAPH_NODES:,} layer calls; refusing to run it")
                op = node.operation
                if op is None or node.is_input or any(id(t) not in tensors for t in node.input_tensors):
                    continue  # as Keras does: a node its inputs do not reach is not run
                outputs = self.node(graph, node, op, tensors, inside, top or op.name)
                tensors.update((id(ref), t) for ref, t in zip(node.outputs, outputs))
        self.memo[key] = out = [tensors[id(t)] for t in graph.outputs]
        return out

    def node(self, graph, node, op, tensors: dict, inside: tuple[str, ...], top: str) -> list:
        args, kwargs = node.arguments.fill_in(tensors)
        given = [tensors[id(t)] for t in node.input_tensors]
        same = all(tuple(t.shape) == tuple(ref.shape) for t, ref in zip(given, node.input_tensors))
        return self.call(op, args, kwargs, given, inside, top, list(node.outputs) if same else None, graph)

    def call(self, op, args, kwargs, given: list, inside, top: str, built: list | None = None, graph=None) -> list:
        """``op`` called on ``args``/``kwargs`` (``given``: its input tensors, flat), measured; its outputs. A nested
        model is walked; ``built``: Keras's own outputs, where the inputs have the shapes it was built on; else each
        layer's ``compute_output_spec`` (an error there: refused, not guessed). Its outputs, the tensors an attention
        layer makes inside it and the layers it runs inside it (:meth:`held`) are measured."""
        from keras import tree

        inner = _graph(op)
        if inner is not None and inner is not graph:
            feed = args[0] if args else kwargs.get("inputs")
            outputs = self.graph(inner, tree.flatten(feed), (*inside, op.name), top)
        elif built is not None:
            outputs = built
        else:
            try:
                outputs = tree.flatten(op.compute_output_spec(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - any layer's shape code: refused, not guessed
                raise _failed(op, inside, given, exc, top) from None
        for t in outputs:
            self.measure(op.name, _shape(t), "", inside, top)
        for shape, what in made_inside(op, args, kwargs, outputs):  # (held in a Pipeline too: attack 42 #3)
            self.measure(op.name, shape, what, inside, top)
        steps = unrolled(op, given)
        if steps > MAX_UNROLLED_STEPS:
            where = Largest(op.name, (), 0, None, inside=inside).shown
            raise _Unrolled(
                f"its layer {where} unrolls {steps:,} cell steps (unroll=True: time steps x cells), over "
                f"{MAX_UNROLLED_STEPS:,}: TensorFlow builds each cell into the graph once per step (an LSTM unrolled "
                f"over 4,096 steps took 154 s and 2 GB before its first image); save the model with unroll=False in "
                f"that layer"
            )
        self.held(op, given, inside, top)
        return outputs

    def held(self, op, given: list, inside: tuple[str, ...], top: str) -> None:
        """The layers a built-in layer runs inside it, measured at the shapes they take there: ``TimeDistributed``'s
        on one frame (its input without the time axis), a ``Pipeline``'s in turn. Only the wrapper's output was
        measured: an ``UpSampling2D(64)`` and a 4,096-filter ``Conv2D`` in a model wrapped in ``TimeDistributed``
        made 16 GiB per frame, counted 64 KiB, and extract died of SIGSEGV (attack 41 #1)."""
        from keras import KerasTensor

        kind = type(op).__name__
        if kind == "TimeDistributed" and given and len(given[0].shape) > 2:
            frame = KerasTensor((given[0].shape[0], *given[0].shape[2:]), dtype=given[0].dtype)
            self.layer(op.layer, [frame], (*inside, op.name), top)
        elif kind == "Pipeline":
            feed = given
            for sub in op.layers:
                feed = self.layer(sub, feed, (*inside, op.name), top)

    def layer(self, op, inputs: list, inside: tuple[str, ...], top: str) -> list:
        """``op`` (a layer held by another, not a node of any graph) called on ``inputs``: measured, its outputs."""
        return self.call(op, (inputs[0] if len(inputs) == 1 else inputs,), {}, inputs, inside, top)

    def measure(self, layer: str, shape: tuple, scores: str, inside: tuple[str, ...], top: str) -> None:
        if None in shape:
            raise _Unknown(layer, inside, shape, "", top)
        nbytes = math.prod(shape) * BYTES_PER_VALUE
        if self.best is None or nbytes > self.best[0]:
            self.best = (nbytes, layer, shape, top, scores, inside)


def largest_activation(model) -> Largest | None:
    """The largest tensor one image makes in ``model``'s forward pass (every layer's output, nested models' layers
    included, and what built-in layers make inside them: attention scores, a MelSpectrogram's frames, a one-hot:
    :func:`~featstore.models.internals.made_inside`),
    measured at the concrete shapes each takes
    (:class:`_Walk`): no image is run; of equal ones, the first in the pass. None for a model without a graph (a
    subclassed model). Raises :class:`_Unknown` for a dimension Keras cannot tell without running the model."""
    top = _graph(model)
    if top is None:
        return None
    walk = _Walk(model.name)
    try:
        walk.graph(top, list(top.inputs), (), None)
    except _Unknown as unknown:
        unknown.before = layer_before(model, unknown.top)
        raise
    if walk.best is None:
        return None
    nbytes, layer, shape, top_name, scores, inside = walk.best
    return Largest(layer, shape, nbytes, layer_before(model, top_name), scores, inside)


def layer_before(model, name: str | None) -> str | None:
    """The last top-level layer of ``model`` before the one named ``name`` (a ``--layer`` that cuts before it), or
    None (the first layer, or a name not among them)."""
    order = [lyr.name for lyr in model.layers if type(lyr).__name__ != "InputLayer"]
    earlier = order[: order.index(name)] if name in order else []
    return earlier[-1] if earlier else None


def over_bound(
    shown: str, what: str, nbytes: int, before: str | None, ahead_of: str, resizable: bool, *, per: str, otherwise: str
) -> str:
    """The one line refusing a model one image of which makes a tensor over :data:`MAX_ACTIVATION_BYTES`: ``shown``
    (the model), ``what`` it makes, its bytes and the ways out (a ``--layer`` ``before`` the layer ``ahead_of``; a
    smaller ``--image-size`` where ``resizable``; else ``otherwise``). ``per``: what the bound is per besides the image
    (an activation, a tensor). Shared by the layers' walk and the traced bound."""
    ways = [f"cut before it with --layer {before} (or another layer ahead of {ahead_of})"] if before else []
    if resizable:
        ways.append("give a smaller --image-size (activations grow with its square)")
    return (
        f"{shown}: {what}, {nbytes / 1e9:,.1f} GB ({nbytes / 2**30:,.1f} GiB), over featstore's bound of "
        f"{MAX_ACTIVATION_BYTES >> 30} GiB per image and {per} (VGG16 at 224 px takes 12.8 MB at most); "
        f"refused before any image runs: " + ("; or ".join(ways) or otherwise)
    )


def check_activations(model, shown: str, resizable: bool) -> Largest | None:
    """Refuse, before the first image, a built extractor model one image of which makes an activation over
    :data:`MAX_ACTIVATION_BYTES`: one line naming ``shown`` (the model file, or the backbone), the layer, its bytes
    per image and the way out (a ``--layer`` before it; a smaller ``--image-size`` where the model takes one).
    Returns the largest activation (for the out-of-memory line's advice), or None."""
    try:
        largest = largest_activation(model)
    except _Unknown as unknown:
        raise ConfigError(unknown.line(shown)) from None
    except _Unrolled as exc:
        raise ConfigError(f"{shown}: {exc}; refused before any image runs") from None
    if largest is None or largest.nbytes <= MAX_ACTIVATION_BYTES:
        return largest
    dims = " x ".join(str(d) for d in largest.shape)
    # an attention layer's scores are made inside it, not output: "outputs" was said of them too
    makes = f"makes {dims} float32 {largest.scores}" if largest.scores else f"outputs {dims} float32 values"
    otherwise = (
        f"it is {'inside ' if largest.inside else ''}the model's first layer and its input side is fixed, so this "
        "model cannot run within the bound (save it with fewer channels in that layer or a smaller input)"
    )
    what = f"its layer {largest.shown} {makes} per image"
    line = over_bound(
        shown, what, largest.nbytes, largest.before, largest.shown, resizable, per="activation", otherwise=otherwise
    )
    raise ConfigError(line)


def rows_at_once(rows: int, *largest) -> tuple[int, int]:
    """How many of ``rows`` images one call of the model takes, and one image's largest tensor (bytes): all of them,
    unless that tensor (the layers' walk's :class:`Largest`, the traced pass's; one made from the configuration alone
    does not grow with the batch) times ``rows`` passes :data:`MAX_ACTIVATION_BYTES`. VGG16 at 4096 px makes 4 GiB an
    image, within the bound, and a batch of 4 (a 16 GiB tensor) died of SIGSEGV (attack 45 #4)."""
    peak = max((p.nbytes for p in largest if p is not None and getattr(p, "from_image", True)), default=0)
    step = max(1, MAX_ACTIVATION_BYTES // peak) if peak else rows
    return min(step, max(rows, 1)), peak


def memory_advice(extractor, n: int) -> str:
    """What can make a forward pass that ran out of memory on a batch of ``n`` images fit: a smaller ``--batch-size``
    (only when ``n > 1``), a ``--layer`` before the largest layer (where one is known and the cut is after it), a
    smaller ``--image-size`` (only where the model takes another). ``--pooling`` is never one: it pools after the cut.
    """
    ways = [f"give a smaller --batch-size (this batch: {n})"] if n > 1 else []
    largest = getattr(extractor, "largest_activation", None)
    transformer = getattr(getattr(extractor, "spec", None), "family", None) is not None  # every block takes the same
    if largest is not None and largest.before and not transformer:
        ways.append(f"cut at a --layer before {largest.shown} (e.g. {largest.before}; it takes the most memory)")
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
