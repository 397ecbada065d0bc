"""Whether a stored map's channels axis is known, for a reduce over every axis but the last (``reduce=avg|max``,
``export --features avg|max``): refused where it may take the channels. What the store records is provenance's
(:data:`~featstore.provenance.LAYOUT_CHECKED`, ``map_layout``); the rules for reading it live here."""

from __future__ import annotations

import shlex

from featstore.errors import ConfigError
from featstore.provenance import LAYOUT_CHECKED, LAYOUT_FIELDS, UNKNOWN, plain


def layout_unknown(attrs: dict, row: tuple) -> bool:
    """Whether rows of shape ``row`` of an extractor recorded as ``attrs`` may hold a channels_first map as it came,
    ``(C, H, W)`` or ``(C, L)``: a saved model's or KerasHub preset's map stored by a featstore from before
    ``map_layout`` (no :data:`LAYOUT_CHECKED`). Registry backbones (``keras.applications``) compute channels last.

    >>> layout_unknown({"model_file": "m.keras"}, (6, 28, 28)), layout_unknown({"model_file": "m.keras"}, (28,))
    (True, False)
    """
    if plain(attrs.get(LAYOUT_CHECKED)) is True or any(k in attrs for k in LAYOUT_FIELDS):
        return False
    least = 2 if attrs.get("model_file") else 3 if attrs.get("hub_preset") else None
    return least is not None and len(tuple(row)) >= least


def refuse_unknown_layout(attrs: dict, shape: tuple, where: str, option: str) -> None:
    """ConfigError where a reduce over every axis but the last may take a map's channels (:func:`layout_unknown`), or
    where no layer up to the cut said where its channels are (``layout_checked: "unknown"``: attack 66 #2)."""
    if plain(attrs.get(LAYOUT_CHECKED)) == UNKNOWN and len(tuple(shape)) >= 2:
        model = attrs.get("model_file")
        layers = f" (`featstore models {shlex.quote(str(plain(model)))} --layers` lists them)" if model else ""
        raise ConfigError(
            f"{where} are maps {tuple(shape)} per row whose channels axis no layer up to the cut says (one moves or "
            f"mixes axes: Permute, Reshape, an op featstore does not know), so averaging over every axis but the last "
            f"may mix the channels: pass {option}, or extract a convolution's or pooling's output{layers}"
        )
    if layout_unknown(attrs, shape):
        raise ConfigError(
            f"{where} are maps {tuple(shape)} per row of a saved model or preset, stored by a featstore that did not "
            f"record which axis holds the channels (a channels_first cut's map was stored (C, H, W) as it came, and "
            f"averaging it over every axis but the last would mix its channels). Extract one split of it again with "
            f"the same options and --overwrite: featstore then checks the model's layout and records it (a "
            f"channels_first model is refused there: extract it under a new --name); or pass {option}"
        )
