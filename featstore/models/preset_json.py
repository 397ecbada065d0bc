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

WEIGHTS_FILE = "model.weights.h5"
PRESET_FILES = ("config.json", WEIGHTS_FILE, "image_converter.json")  # needed; metadata.json is read when present
MAX_WEIGHTS_BYTES = 64 << 30  # model.weights.h5 (dinov2_giant: 4.5 GB in float32)
MAX_PRESET_JSON_BYTES = 1 << 20  # config.json, image_converter.json: a few KiB for the largest supported presets
MAX_LAYERS = 1024  # transformer blocks (the largest supported presets have 40)
MAX_DIM = 1 << 16  # channels (hidden_dim, projection_dim; the largest supported presets have 1536)
MAX_CONVERTER_VALUE = 1e6  # |scale|, |offset| (real converters: about 1/255 and -2..2)
MAX_JSON_DEPTH = 32  # nesting of a preset's JSON (CLIP's config: 5 levels); deeper overflowed Python's stack later


def read_json(path: Path) -> dict:
    """A preset's JSON file (a regular file of at most :data:`MAX_PRESET_JSON_BYTES` holding an object), or a
    ConfigError naming it. Opened without blocking: a FIFO in its place is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(
            f"{path.parent} is not a complete KerasHub preset folder: {path.name} is missing (a preset folder holds "
            f"{', '.join(PRESET_FILES)}; the image converter is saved with converter.save_to_preset(folder))"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read as JSON: {exc}") from None
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
