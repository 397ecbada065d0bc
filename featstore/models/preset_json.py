"""A KerasHub preset folder's JSON files read as untrusted input: bounded (a regular file of at most
:data:`MAX_PRESET_JSON_BYTES`, an object nested at most :data:`MAX_JSON_DEPTH` deep, opened without blocking) and their
numbers checked (positive whole numbers within bounds, finite converter values), each refusal one ConfigError naming the
file.

>>> whole_number(8, "patch_size", Path("config.json"), 4096)
8
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from featstore.errors import ConfigError
from featstore.models.activations import MAX_ACTIVATION_BYTES, ffn_width, fitting_sides, token_bytes
from featstore.outputs import what_is_at

WEIGHTS_FILE = "model.weights.h5"
PRESET_FILES = ("config.json", WEIGHTS_FILE, "image_converter.json")  # needed; metadata.json is read when present
MAX_WEIGHTS_BYTES = 64 << 30  # model.weights.h5 (dinov2_giant: 4.5 GB in float32)
MAX_PRESET_JSON_BYTES = 1 << 20  # config.json, image_converter.json: a few KiB for the largest supported presets
MAX_LAYERS = 1024  # transformer blocks (the largest supported presets have 40)
MAX_DIM = 1 << 16  # channels (hidden_dim, projection_dim; the largest supported presets have 1536)
MAX_CONVERTER_VALUE = 1e6  # |scale|, |offset| (real converters: about 1/255 and -2..2)
MAX_JSON_DEPTH = 32  # nesting of a preset's JSON (CLIP's config: 5 levels); deeper overflowed Python's stack later
MAX_FFN = 4 * MAX_DIM  # intermediate_dim, mlp_dim (the largest supported presets have 6144)
MAX_VOCABULARY = 1 << 22  # a text tower's vocabulary_size (CLIP: 49,408; SigLIP: 256,000)
MAX_SEQUENCE = 1 << 16  # a text tower's max_sequence_length (CLIP: 77; SigLIP: 64)
MAX_TOKENS = 1 << 14  # patches of the preset's own input side (the largest supported presets: 37 x 37 = 1369)
# One image's attention scores in one block (num_heads x tokens^2 float32): what attention allocates however few its
# parameters; the largest supported presets take 24 x 1,370^2 x 4 B = 180 MB. A 2 MB preset of 32 heads over 16,385
# tokens asked for 34 GB per image (attack 35 #5).
MAX_ATTENTION_BYTES = 4 << 30
MAX_WEIGHT_OBJECTS = 1 << 16  # groups and arrays in model.weights.h5 (the largest supported presets: about 1,000)
# Bytes a weights file's arrays declare beyond what they store (Keras writes them uncompressed: none). An array declared
# huge but never written reads as its fill value: a 58 MB VGG16 file declaring 2 GB took 8 GB before Keras said no.
MAX_UNSTORED_BYTES = 64 << 20
# The sizes of a (vision or text) tower's config that KerasHub allocates from, with their bounds.
SIZES = {
    "hidden_dim": MAX_DIM,
    "embedding_dim": MAX_DIM,
    "projection_dim": MAX_DIM,
    "intermediate_dim": MAX_FFN,
    "mlp_dim": MAX_FFN,
    "num_layers": MAX_LAYERS,
    "num_heads": MAX_DIM,
    "vocabulary_size": MAX_VOCABULARY,
    "max_sequence_length": MAX_SEQUENCE,
}


def read_json(path: Path) -> dict:
    """A preset's JSON file (a regular file of at most :data:`MAX_PRESET_JSON_BYTES` holding an object), or a
    ConfigError naming it. Opened once, without blocking, held to the link rule on the file reached, and only when a
    regular file (:func:`~featstore.models.held_input.open_input`): a FIFO in its place is refused, not waited on, a
    colleague's link to a device no longer has the device opened, nor her link to the user's private config read
    (attack 35 #1)."""
    from featstore.models.held_input import open_input

    try:
        fd = open_input(path, "preset file", ConfigError, "--model")
    except FileNotFoundError:
        raise ConfigError(
            f"{path.parent} is not a complete KerasHub preset folder: {path.name} is missing (a preset folder holds "
            f"{', '.join(PRESET_FILES)}; the image converter is saved with converter.save_to_preset(folder))"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read as JSON: {exc}") from None
    if fd is None:
        raise ConfigError(
            f"{path} is {what_is_at(path) or 'something else'}, not a regular file of at most "
            f"{MAX_PRESET_JSON_BYTES >> 20} MiB (a preset's JSON files are a few KiB); refusing to read it"
        )
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_PRESET_JSON_BYTES:
            raise ConfigError(
                f"{path} is not a regular file of at most {MAX_PRESET_JSON_BYTES >> 20} MiB (a preset's JSON files are "
                f"a few KiB); refusing to read it"
            )
        try:
            value = json.loads(fh.read(MAX_PRESET_JSON_BYTES + 1).decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise ConfigError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds a JSON {type(value).__name__}, not the object a KerasHub preset writes")
    if _depth(value) > MAX_JSON_DEPTH:
        raise ConfigError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels; a KerasHub preset's JSON has a few")
    return value


def _depth(value) -> int:
    """How deep lists and objects nest in a JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def channels(value, default: float, what: str, where: Path) -> tuple[float, float, float]:
    """A converter's scale or offset (None, a number, or one per channel) as three finite floats."""
    if value is None:
        return (default,) * 3
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    if len(values) != 3:
        raise ConfigError(f"the preset's image converter has {len(values)} channel values; featstore feeds RGB (3)")
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= MAX_CONVERTER_VALUE for v in values
    ):  # NaN fails the comparison too
        raise ConfigError(
            f"{where}: {what} is {repr(value)[:100]}, expected a number or one per channel, finite and at most "
            f"{MAX_CONVERTER_VALUE:g} in size; the preset's image converter is damaged"
        )
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def whole_number(value, what: str, where: Path, most: int) -> int:
    """A positive whole number of at most ``most`` from a preset's config, or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
        raise ConfigError(
            f"{where}: {what} is {repr(value)[:100]}, expected a whole number from 1 to {most}; the preset's config is "
            f"damaged or not one KerasHub writes"
        )
    return value


def square_side(value, what: str, where: Path, most: int, length: int) -> int:
    """The side of a square given as a number or as ``length`` numbers (the first two equal), checked."""
    if not isinstance(value, (list, tuple)):
        return whole_number(value, what, where, most)
    sides = [whole_number(v, what, where, most) for v in value[:2]]
    if len(value) != length or len(sides) != 2 or sides[0] != sides[1]:
        raise ConfigError(
            f"{where}: {what} is {repr(value)[:100]}, expected {length} whole numbers with the first two equal "
            f"(featstore feeds square images)"
        )
    return sides[0]


def check_sizes(config: dict, where: Path, weights: Path, max_side: int, shown: str) -> None:
    """Refuse, before KerasHub builds anything, a backbone config (``config.json``'s ``config``) whose sizes would
    allocate more than its weights file holds: each size a whole number within its bound (:data:`SIZES`), at most
    ``num_heads = hidden_dim``, at most :data:`MAX_TOKENS` patches at the preset's own input side, and a lower bound
    of the parameters the sizes build (:func:`implied_parameters`) at most what ``weights`` holds
    (:func:`held_parameters`). A config edited to ``intermediate_dim`` 10**9 was built first, and memory ran out.
    ``shown`` names the preset in messages."""
    bound, fields = implied_parameters(config, where, max_side)
    held = held_parameters(weights, shown)
    if bound > held:
        raise ConfigError(
            f"{where}: its sizes ({fields}) build at least {bound:,} parameters, but {weights.name} holds {held:,}: "
            f"the config was edited or belongs to other weights. Restore the preset's config.json (or save the preset "
            f"again with backbone.save_to_preset)"
        )
    problem = check_weights_file(weights)  # arrays declared huge but never written: Keras would read them in full
    if problem:
        raise ConfigError(problem)


def _towers(config: dict) -> list[dict]:
    """The objects of a config that hold sizes (the backbone's, or each nested encoder's), found without recursion."""
    found, stack = [], [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if any(k in item for k in SIZES):
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def implied_parameters(config: dict, where: Path, max_side: int) -> tuple[int, str]:
    """A lower bound of the parameters KerasHub builds from a backbone config, and the sizes of its largest term.

    Every size that allocates is in a term it multiplies: per transformer block at least half the attention kernels
    (``2 hidden_dim x num_heads x (hidden_dim // num_heads)``) and half the MLP (``hidden_dim x intermediate_dim / 2``;
    SwiGLU's too), the patch embedding (``patch_size^2 x 3 x hidden_dim``), one position embedding per patch of
    ``position_embedding_shape`` (else ``image_shape``), the token and position embeddings of a text tower
    (``vocabulary_size``, ``max_sequence_length`` x ``embedding_dim``) and each projection (``projection_dim x
    hidden_dim``). DINOv2, ViT, CLIP and SigLIP each build more than this, never less.
    """
    terms: list[tuple[int, str]] = []
    towers = _towers(config)
    sizes = [
        {k: whole_number(t[k], k, where, most) for k, most in SIZES.items() if t.get(k) is not None} for t in towers
    ]
    widest = max((n.get("hidden_dim", 0) for n in sizes), default=0)
    for tower, n in zip(towers, sizes):
        h, layers, heads = n.get("hidden_dim", 0), n.get("num_layers", 0), n.get("num_heads", 1)
        mlp = n.get("intermediate_dim") or n.get("mlp_dim") or 0
        if h and heads > h:
            raise ConfigError(
                f"{where}: num_heads is {heads}, more than hidden_dim {h} (each head has hidden_dim // num_heads "
                f"channels); the preset's config is damaged or not one KerasHub writes"
            )
        which = "intermediate_dim" if n.get("intermediate_dim") else "mlp_dim"
        terms.append(
            (
                layers * (2 * h * heads * (h // heads) + h * mlp // 2),
                f"num_layers {layers}, hidden_dim {h}, {which} {mlp}",
            )
        )
        width = n.get("embedding_dim") or h
        terms.append(
            (n.get("vocabulary_size", 0) * width, f"vocabulary_size {n.get('vocabulary_size')}, width {width}")
        )
        terms.append((n.get("max_sequence_length", 0) * width, f"max_sequence_length {n.get('max_sequence_length')}"))
        terms.append((n.get("projection_dim", 0) * (h or widest), f"projection_dim {n.get('projection_dim')}"))
        if tower.get("patch_size") is not None:
            patch = square_side(tower["patch_size"], "patch_size", where, max_side, 2)
            terms.append((patch * patch * 3 * h, f"patch_size {patch}, hidden_dim {h}"))
            side = square_side(tower["image_shape"], "image_shape", where, max_side, 3) if "image_shape" in tower else 0
            if (side // patch) ** 2 > MAX_TOKENS:  # attention takes memory in their square, parameters or not
                raise ConfigError(
                    f"{where}: image_shape {side} with patch_size {patch} makes {(side // patch) ** 2:,} patches per "
                    f"image, over {MAX_TOKENS:,} (the largest supported presets have 1,369): the preset's config is "
                    f"damaged or crafted; restore it"
                )
            if attention_bytes(heads, (side // patch) ** 2) > MAX_ATTENTION_BYTES:
                raise ConfigError(
                    f"{where}: num_heads {heads} over {(side // patch) ** 2:,} patches (image_shape {side}, patch_size "
                    f"{patch}) take {attention_bytes(heads, (side // patch) ** 2) / 2**30:,.1f} GiB of attention scores "
                    f"per image and block, over {MAX_ATTENTION_BYTES >> 30} GiB (the largest supported presets take "
                    f"0.2): the preset's config is damaged or crafted; restore it"
                )
            _check_mlp(n, tower, where, side, patch)
            key = "position_embedding_shape" if tower.get("position_embedding_shape") is not None else "image_shape"
            if tower.get(key) is not None:
                side = square_side(tower[key], key, where, max_side, 3)
                terms.append(((side // patch) ** 2 * h, f"{key} {side}, patch_size {patch}, hidden_dim {h}"))
    bound = sum(t for t, _ in terms)
    return bound, max(terms, default=(0, "none"))[1]


def _check_mlp(n: dict, tower: dict, where: Path, side: int, patch: int) -> None:
    """Refuse a vision tower whose MLP over the patches of its own side (``n``: its checked sizes) takes more than
    :data:`~featstore.models.activations.MAX_ACTIVATION_BYTES` per image and block (``patches x`` its widest channels,
    float32), naming the largest ``image_shape`` that would fit: an 18 MB ViT with ``mlp_dim`` 262,144 over 16,384
    patches asked for 17 GB per image however few its parameters (attack 37 #1)."""
    width = ffn_width(n.get("hidden_dim", 0), n.get("intermediate_dim") or n.get("mlp_dim") or 0, swiglu(tower))
    if token_bytes((side // patch) ** 2, width) <= MAX_ACTIVATION_BYTES:
        return
    fits = fitting_sides(patch, patch, side, lambda t: token_bytes(t, width) <= MAX_ACTIVATION_BYTES)
    raise ConfigError(
        f"{where}: {(side // patch) ** 2:,} patches (image_shape {side}, patch_size {patch}) x {width:,} channels of "
        f"its MLP (mlp_dim or intermediate_dim, or hidden_dim) take {token_bytes((side // patch) ** 2, width) / 2**30:,.1f}"
        f" GiB per image and block, over {MAX_ACTIVATION_BYTES >> 30} GiB (the largest supported presets take 0.04): "
        f"the preset's config is damaged or crafted; restore it"
        + (f" (these sizes fit at image_shape {fits[-1]} or less)" if fits else "")
    )


def swiglu(tower: dict) -> bool:
    """Whether a (DINOv2) vision tower's MLP is SwiGLU, whose first Dense is wider (see ``ffn_width``)."""
    return tower.get("use_swiglu_ffn") is True


def vision_ffn_width(vision: dict, where: Path) -> int:
    """The widest per-token activation of a vision tower's blocks (:func:`~featstore.models.activations.ffn_width`),
    its sizes checked."""
    mlp = vision.get("intermediate_dim") or vision.get("mlp_dim")
    return ffn_width(
        whole_number(vision.get("hidden_dim"), "hidden_dim", where, MAX_DIM),
        0
        if mlp is None
        else whole_number(mlp, "intermediate_dim" if "intermediate_dim" in vision else "mlp_dim", where, MAX_FFN),
        swiglu(vision),
    )


def attention_bytes(heads: int, tokens: int) -> int:
    """Bytes of one image's attention scores in one transformer block: ``heads x tokens^2`` float32."""
    return heads * tokens * tokens * 4


def held_parameters(path: Path, shown: str) -> int:
    """The numbers a Keras weights file really holds: each array's elements, at most what its stored bytes take (an
    array declared huge but never written holds nothing); a ConfigError naming the preset ``shown`` and the file when
    it is not one HDF5 file of at most :data:`MAX_WEIGHT_OBJECTS` groups and arrays."""

    try:
        total, seen, _unstored, outside = walk_weights(path)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError, RuntimeError for a bad file
        raise ConfigError(
            f"KerasHub could not build {shown} from {path.parent}: its {path.name} cannot be read as a Keras weights "
            f"file ({type(exc).__name__}: {str(exc)[:200]}); the preset is damaged: download or save it again"
        ) from None
    problem = weights_problem(path, seen, 0, outside)
    if problem:
        raise ConfigError(problem)
    return total


def walk_weights(path) -> tuple[int, int, int, str]:
    """``(elements stored, objects seen, bytes declared but not stored, an array stored outside the file or "")`` of an
    HDF5 weights file (a path, or a seekable file object such as a ``.keras`` zip's member); the walk stops after
    :data:`MAX_WEIGHT_OBJECTS` objects. The elements stored are at most the file's size: HDF5 reports the storage an
    array's layout declares, and an array with *external* storage declares whatever its list of files says (a 15 KB
    weights file "held" 2e9 parameters that way, attack 21); such an array, or a virtual one, holds nothing and is
    named, so that :func:`weights_problem` refuses the file (Keras never writes one; loading it reads whatever local
    file it names)."""
    import h5py

    total, seen, unstored, outside = 0, 0, 0, ""

    def visit(name, obj):
        nonlocal total, seen, unstored, outside
        seen += 1
        if seen > MAX_WEIGHT_OBJECTS:
            return True  # stops the visit
        if isinstance(obj, h5py.Dataset) and obj.dtype.itemsize:
            plist = obj.id.get_create_plist()
            if plist.get_external_count() or plist.get_layout() == h5py.h5d.VIRTUAL:
                outside = outside or name
                return None
            stored = obj.id.get_storage_size()
            total += min(int(obj.size or 0), stored // obj.dtype.itemsize)
            unstored += max(0, int(obj.size or 0) * obj.dtype.itemsize - stored)
        return None

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        size = f.id.get_filesize()
    return min(total, size), seen, unstored, outside


def weights_problem(path: Path, seen: int, unstored: int, outside: str = "") -> str | None:
    """Why a weights file must not be loaded (too many objects, arrays declaring more than they store, an array stored
    outside the file), or None."""
    if outside:
        return (
            f"{path}: its array {outside!r} is stored outside the file (HDF5 external or virtual storage), which Keras "
            f"never writes: loading it would read whatever other file it names. The file is damaged or crafted; save "
            f"the weights again"
        )
    if seen > MAX_WEIGHT_OBJECTS:
        return (
            f"{path} holds more than {MAX_WEIGHT_OBJECTS:,} groups and arrays (the largest supported presets have about "
            f"1,000); refusing to read it"
        )
    if unstored > MAX_UNSTORED_BYTES:
        return (
            f"{path}: its arrays declare {unstored:,} bytes more than the file stores (arrays never written, or "
            f"compressed; Keras writes every weight in full), over {MAX_UNSTORED_BYTES >> 20} MiB: reading them would "
            f"allocate memory the file does not hold. The file is damaged or crafted; save the weights again"
        )
    return None


def check_weights_file(path: Path) -> str | None:
    """Why the HDF5 weights file ``path`` must not be given to Keras's ``load_weights`` (see :func:`weights_problem`),
    or None; a file h5py cannot walk is left to Keras's own message. Example::

        problem = check_weights_file(Path("my.weights.h5"))
    """
    try:
        _total, seen, unstored, outside = walk_weights(path)
    except Exception:  # noqa: BLE001 - not HDF5, or damaged: load_weights says what it says about it
        return None
    return weights_problem(path, seen, unstored, outside)


def with_dtype(config_text: str, policy: str, nested: tuple[str, ...]) -> str:
    """A preset's ``config.json`` (as read and checked) with the backbone's dtype and that of each nested model it holds
    (``nested``: their config keys, CLIP's and SigLIP's two towers) set to ``policy``: what KerasHub is given to build.
    KerasHub keeps a nested model's own dtype over the one ``from_preset`` is given (``CLIPBackbone.from_config``), so a
    tower saved under ``mixed_bfloat16`` computed in bfloat16 under featstore's float32 record and fingerprint, and
    every saved tower (``float32``) ignored ``--mixed-precision`` while the store said float16 (attack 59 #1, #2).

    >>> json.loads(with_dtype('{"config": {"dtype": "x", "v": {"config": {"dtype": "y"}}}}', "float32", ("v",)))
    {'config': {'dtype': 'float32', 'v': {'config': {'dtype': 'float32'}}}}
    """
    config = json.loads(config_text)
    config["config"]["dtype"] = policy
    for key in nested:
        config["config"][key]["config"]["dtype"] = policy
    return json.dumps(config)


def saved_unzipped(config: dict) -> bool:
    """Whether a folder's ``config.json`` is a plain Keras model's (``model.save(folder, zipped=False)`` writes the
    parts of a ``.keras`` zip into a folder), not a KerasHub preset's: attack 21 found such a folder answered with the
    list of supported transformer backbones.

    >>> saved_unzipped({"module": "keras.src.models.functional", "class_name": "Functional"})
    True
    >>> saved_unzipped({"module": "keras_hub.src.models.vit.vit_backbone", "class_name": "ViTBackbone"})
    False
    """
    module = config.get("module")
    return config.get("class_name") in ("Functional", "Sequential", "Model") or (
        isinstance(module, str) and module.split(".")[0] == "keras"
    )
