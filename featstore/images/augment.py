"""Data augmentation named in one option: ``flip,rotate=0.1,zoom=0.2`` -> seeded Keras preprocessing layers.

Each name maps to one ``keras.layers.Random*`` layer that acts on 0..255 images before the model's own
preprocessing. The layers are active only when called with ``training=True``: a model or a batch at
inference is never augmented. The same spec and seed give the same augmented images, call after call.

>>> parse_augment("flip,rotate=0.1,zoom=0.2").spec
'flip=horizontal,rotate=0.1,zoom=0.2'
>>> parse_augment("rotate=0.1,flip").spec   # canonical order and defaults: the record does not depend on spelling
'flip=horizontal,rotate=0.1'
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featstore.errors import ConfigError, choices_error

_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# name -> (Keras layer, default value, what the value means); order = the order the layers are applied
AUGMENTATIONS = {
    "flip": ("RandomFlip", "horizontal", "horizontal, vertical or horizontal_and_vertical"),
    "rotate": ("RandomRotation", 0.1, "largest rotation, as a fraction of a full turn (0.1 = 36 degrees)"),
    "zoom": ("RandomZoom", 0.2, "largest zoom in or out, as a fraction of the side"),
    "translate": ("RandomTranslation", 0.1, "largest shift, as a fraction of the side"),
    "contrast": ("RandomContrast", 0.2, "largest contrast change, as a fraction"),
}


@dataclass(frozen=True)
class Augmentation:
    """A parsed augmentation: ``ops`` are ``(name, value)`` in application order; empty = no augmentation."""

    ops: tuple[tuple[str, str | float], ...] = ()

    @property
    def spec(self) -> str:
        """The canonical text form, as runs and stores record it ('' when off)."""
        return ",".join(f"{n}={v}" for n, v in self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def layers(self, seed: int) -> list:
        """Fresh Keras layers, layer i seeded with ``seed + i``."""
        import keras

        out = []
        for i, (name, value) in enumerate(self.ops):
            cls = getattr(keras.layers, AUGMENTATIONS[name][0])
            if name == "flip":
                out.append(cls(mode=value, seed=seed + i))
            elif name == "rotate":
                out.append(cls(value, fill_mode="reflect", seed=seed + i))
            elif name == "zoom":
                out.append(cls(value, value, fill_mode="reflect", seed=seed + i))
            elif name == "translate":
                out.append(cls(value, value, fill_mode="reflect", seed=seed + i))
            else:
                out.append(cls(value, value_range=(0, 255), seed=seed + i))
        return out

    def model(self, seed: int, size: int, channels: int = 3):
        """A ``keras.Sequential`` of the layers for ``(size, size, channels)`` float images."""
        import keras

        return keras.Sequential([keras.Input((size, size, channels)), *self.layers(seed)], name="augment")


def parse_augment(text: str | None) -> Augmentation:
    """Parse ``name[=value],...``; unknown names and bad values list the valid ones. ``None``/'' -> no augmentation."""
    if not text or not text.strip():
        return Augmentation()
    found: dict[str, str | float] = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:  # "flip," from Python: the command line refuses the same extra comma (cli.main.comma_list)
            raise ConfigError(f"augmentation {text!r} has an empty item; remove the extra comma")
        name, _, raw = item.partition("=")
        name = name.strip()
        if name not in AUGMENTATIONS:
            raise choices_error(
                "augmentation", name, [f"{n}[={AUGMENTATIONS[n][1]}] ({AUGMENTATIONS[n][2]})" for n in AUGMENTATIONS]
            )
        if name in found:
            raise ConfigError(f"augmentation {text!r} names {name} twice; give it once, with one value")  # 73 #7
        found[name] = _value(name, raw.strip()) if raw.strip() else AUGMENTATIONS[name][1]
    return Augmentation(tuple((n, found[n]) for n in AUGMENTATIONS if n in found))


def _value(name: str, raw: str) -> str | float:
    """The typed value of one augmentation, or a ConfigError saying what it must be."""
    if name == "flip":
        if raw not in _FLIP_MODES:
            raise choices_error("flip mode", raw, _FLIP_MODES)
        return raw
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not 0 < v <= (0.5 if name == "rotate" else 1.0):
        top = "0.5 (half a turn)" if name == "rotate" else "1"
        raise ConfigError(f"--augment {name}={raw}: give a number above 0 and at most {top} ({AUGMENTATIONS[name][2]})")
    return v


def augment_batch(model, images: np.ndarray) -> np.ndarray:
    """One augmented draw of a uint8 or float ``(B, H, W, C)`` batch, as float32 0..255 (``model``: :meth:`Augmentation.model`)."""
    out = np.asarray(model(images.astype(np.float32), training=True), dtype=np.float32)
    return np.clip(out, 0.0, 255.0)
