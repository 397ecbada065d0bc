"""Transformer backbones as token models: each supported KerasHub family unrolled into named outputs, and token pooling.

A KerasHub vision backbone hides its blocks inside one layer (DINOv2's ``encoder``, ViT's ``vit_encoder``) or exposes
them only as a functional graph (CLIP's and SigLIP's vision encoders). :func:`token_model` calls the backbone's own
layers again, in their order, on one image input, and names every output featstore can cut at:

- ``block1`` ... ``blockN``: the tokens after each transformer block (DINOv2's ``pyramid_outputs["stageK"]``);
- ``tokens``: the final normalised tokens (the backbone's own output; for CLIP/SigLIP the pre-projection tokens);
- ``embedding`` (CLIP, SigLIP): the image embedding after projection (CLIP: the CLS token through
  ``vision_projection``; SigLIP: the attention-pooling head), what the contrastive loss compared.

:class:`TokenPool` turns ``(B, T, C)`` tokens into features: ``cls`` (the class token), ``mean`` (the mean of the patch
tokens), ``cls+mean`` (both, concatenated: DINOv2's linear-probe features) or ``none`` (the patch tokens as a
``(h, w, C)`` grid, so the store keeps its ``(N, h, w, c)`` shape). The class token and register tokens are never part
of the mean or the grid.

>>> FAMILIES["DINOV2Backbone"].family
'dinov2'
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TOKEN_POOLINGS = ("cls", "mean", "cls+mean", "none")
EMBEDDING = "embedding"  # the projected image embedding (CLIP, SigLIP)
TOKENS = "tokens"  # the final normalised tokens


@dataclass(frozen=True)
class Family:
    """One supported KerasHub backbone class: how to find its parts and its token layout, without building it."""

    family: str  # short name shown in `featstore models`
    class_name: str  # KerasHub backbone class, as config.json's class_name says
    presets_of: str  # keras_hub.models class whose built-in presets are this family's
    vision: Callable[[dict], dict]  # the backbone config -> its vision tower's config
    prefix_tokens: Callable[[dict], int]  # vision config -> tokens before the patches (CLS, registers)
    has_cls: bool  # whether token 0 is a class token
    has_embedding: bool  # whether the backbone has a projected image embedding
    resizable: bool  # position embeddings interpolate to another input side (from_preset(image_shape=...))
    block_names: Callable[
        [dict], list[str]
    ]  # vision config -> the Keras names of its blocks (--unfreeze-from), in order
    examples: tuple[str, ...] = ()  # some of KerasHub's built-in preset names (checked against keras_hub by the tests)
    # (config key, KerasHub class) of each nested model the backbone's config holds (CLIP's and SigLIP's two towers):
    # KerasHub deserialises whatever class a nested config names, so any other (a Functional model) is refused
    encoders: tuple[tuple[str, str], ...] = ()


def _same(config: dict) -> dict:
    return config


def _vision_encoder(config: dict) -> dict:
    return config["vision_encoder"]["config"]


MAX_REGISTER_TOKENS = 1024  # DINOv2's register tokens (KerasHub's dinov2_with_registers presets: 4)


def register_tokens(config: dict) -> int:
    """A DINOv2 vision config's ``num_register_tokens`` (absent: 0), or a ValueError naming it: KerasHub adds registers
    only when the count is above 0, so ``-1`` built the class token while featstore counted no prefix token (attack 59
    #3), and ``int()`` of ``null`` or ``"x"`` was a traceback (#4).

    >>> register_tokens({"num_register_tokens": 4}), register_tokens({})
    (4, 0)
    """
    n = config.get("num_register_tokens", 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_REGISTER_TOKENS:
        raise ValueError(
            f"num_register_tokens is {repr(n)[:100]}, expected a whole number from 0 to {MAX_REGISTER_TOKENS}"
        )
    return n


def off_policy(backbone, policy: str) -> str | None:
    """The first layer of ``backbone`` (nested ones included: a CLIP or SigLIP vision tower is a model inside it) whose
    dtype policy is not ``policy``, as ``'name (its policy)'``, or None: featstore records the policy it asked for as
    the store's compute_dtype, so a layer computing under another must be refused, not recorded (attack 59 #1, #2)."""
    for layer in backbone._flatten_layers(include_self=True, recursive=True):
        name = getattr(getattr(layer, "dtype_policy", None), "name", None)
        if name != policy:
            return f"{layer.name} ({name})"
    return None


FAMILIES = {
    f.class_name: f
    for f in (
        Family(
            "dinov2",
            "DINOV2Backbone",
            "DINOV2Backbone",
            _same,
            lambda c: 1 + register_tokens(c),
            True,
            False,
            True,
            lambda c: [f"layers_{i}" for i in range(c["num_layers"])],
            ("dinov2_small", "dinov2_base", "dinov2_large", "dinov2_giant", "dinov2_with_registers_small"),
        ),
        Family(
            "vit",
            "ViTBackbone",
            "ViTBackbone",
            _same,
            lambda c: 1 if c.get("use_class_token", True) else 0,
            True,
            False,
            False,
            lambda c: [f"transformer_block_{i + 1}" for i in range(c["num_layers"])],
            ("vit_base_patch16_224_imagenet", "vit_large_patch16_224_imagenet", "vit_base_patch16_224_imagenet21k"),
        ),
        Family(
            "clip",
            "CLIPBackbone",
            "CLIPBackbone",
            _vision_encoder,
            lambda c: 1,
            True,
            True,
            False,
            lambda c: [f"{c['name']}_encoder_block_{i}" for i in range(c["num_layers"])],
            ("clip_vit_base_patch16", "clip_vit_large_patch14", "clip_vit_b_32_laion2b_s34b_b79k"),
            (("vision_encoder", "CLIPVisionEncoder"), ("text_encoder", "CLIPTextEncoder")),
        ),
        Family(
            "siglip",
            "SigLIPBackbone",
            "SigLIPBackbone",
            _vision_encoder,
            lambda c: 0,
            False,
            True,
            False,
            lambda c: [f"{c['name']}_encoder_block_{i}" for i in range(c["num_layers"])],
            ("siglip_base_patch16_224", "siglip2_base_patch16_224", "siglip_so400m_patch14_384"),
            (("vision_encoder", "SigLIPVisionEncoder"), ("text_encoder", "SigLIPTextEncoder")),
        ),
    )
}


def _parts(backbone, class_name: str) -> tuple[list, list, object, list]:
    """(layers before the blocks, the blocks, the final norm, layers from the final tokens to the embedding)."""
    if class_name == "DINOV2Backbone":  # its layers' names carry the backbone's name: found by attribute
        return [backbone.embeddings], list(backbone.encoder.layers), backbone.layernorm, []
    if class_name == "ViTBackbone":
        _, patching, encoder = backbone.layers  # the input, ViTPatchingAndEmbedding, ViTEncoder
        return [patching, encoder.dropout], list(encoder.encoder_layers), encoder.layer_norm, []
    vision = backbone.vision_encoder
    if class_name == "CLIPBackbone":
        stem = [vision.embedding, vision.pre_layer_norm]
        return (
            stem,
            list(vision.encoder_layers),
            vision.layer_norm,
            [backbone.vision_pooler, backbone.vision_projection],
        )
    return [vision.embedding], list(vision.encoder_layers), vision.post_layer_norm, [vision.head]  # SigLIP


def token_model(backbone, class_name: str, size: int):
    """A ``keras.Model`` from one ``(size, size, 3)`` image input to a dict of named outputs (``block1``..., ``tokens``,
    ``embedding``), made of ``backbone``'s own layers (same weights)."""
    import keras

    stem, blocks, final, head = _parts(backbone, class_name)
    x = inp = keras.Input((size, size, 3), name="images")
    for layer in stem:
        x = layer(x)
    outputs = {}
    for i, block in enumerate(blocks, start=1):
        x = block(x)
        outputs[f"block{i}"] = x
    x = outputs[TOKENS] = final(x)
    for layer in head:
        x = layer(x)
    if head:
        outputs[EMBEDDING] = x
    return keras.Model(inp, outputs, name=f"{backbone.name}_tokens")


def _register(cls):
    import keras

    return keras.saving.register_keras_serializable(package="featstore")(cls)


def token_pool_layer(mode: str, prefix: int, side: int, name: str):
    """A :class:`TokenPool` layer (built lazily: Keras is imported only here)."""
    return _token_pool_class()(mode=mode, prefix=prefix, side=side, name=name)


_CLASS: list = []


def _token_pool_class():
    """The TokenPool class, defined and registered with Keras once (a saved fine-tuned model names it)."""
    if _CLASS:
        return _CLASS[0]
    import keras
    from keras import ops

    class TokenPool(keras.layers.Layer):
        """``(B, T, C)`` tokens -> ``cls`` ``(B, C)``, ``mean`` of the patch tokens ``(B, C)``, ``cls+mean`` ``(B, 2C)``
        or ``none``: the patch tokens as a ``(B, side, side, C)`` grid. ``prefix`` tokens (CLS, registers) precede the
        patches."""

        def __init__(self, mode: str, prefix: int, side: int, **kwargs):
            super().__init__(**kwargs)
            self.mode, self.prefix, self.side = mode, int(prefix), int(side)

        def call(self, x):
            patches = x[:, self.prefix :, :]
            if self.mode == "none":
                return ops.reshape(patches, (-1, self.side, self.side, ops.shape(x)[-1]))
            if self.mode == "cls":
                return x[:, 0, :]
            mean = ops.mean(patches, axis=1)
            return mean if self.mode == "mean" else ops.concatenate([x[:, 0, :], mean], axis=-1)

        def compute_output_shape(self, shape):
            c = shape[-1]
            if self.mode == "none":
                return (shape[0], self.side, self.side, c)
            return (shape[0], 2 * c if self.mode == "cls+mean" else c)

        def get_config(self):
            return {**super().get_config(), "mode": self.mode, "prefix": self.prefix, "side": self.side}

    _CLASS.append(_register(TokenPool))
    return _CLASS[0]


def register() -> None:
    """Make TokenPool known to Keras before loading a saved model that holds it."""
    _token_pool_class()


def custom_objects() -> dict:
    """Classes a saved token model needs besides the registered ones, by the name its config gives them.

    KerasHub's ViT layers write values their ``__init__`` refuses into their configs (``ViTPatchingAndEmbedding``:
    ``num_patches``, ``num_positions``; ``ViTEncoderBlock``: ``key_dim``), so a fine-tuned ViT could not be loaded back
    ("Unrecognized keyword arguments"): each is loaded without them (they follow from the other values).
    """
    from keras_hub.src.models.vit import vit_layers

    def loadable(base, derived: tuple[str, ...]):
        class Loadable(base):
            @classmethod
            def from_config(cls, config):
                return base.from_config({k: v for k, v in config.items() if k not in derived})

        return Loadable

    derived = {"ViTPatchingAndEmbedding": ("num_patches", "num_positions"), "ViTEncoderBlock": ("key_dim",)}
    return {name: loadable(getattr(vit_layers, name), keys) for name, keys in derived.items()}
