"""Named KerasHub presets (``hub:<name>``, ``hub:kaggle://...``, ``hub:hf://...``) resolved to a local folder: through
KerasHub's download and cache when the command line names them, through the caches alone when a store's or run's
record does (:class:`NotDownloaded` otherwise), each file checked before the next is fetched.

>>> _HANDLE_PART.fullmatch("..") is None
True
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from featstore.errors import ConfigError, WeightsError, choices_error
from featstore.models.preset_json import PRESET_FILES, read_json
from featstore.models.tokens import FAMILIES

logger = logging.getLogger(__name__)

HUB_SCHEMES = ("kaggle", "hf")  # the handles hub: takes besides built-in names


def _requires_keras_hub():
    """Import keras_hub, or say how to install it."""
    try:
        import keras_hub
    except ImportError as exc:
        raise ConfigError(
            f"KerasHub presets need the keras-hub package ({exc}): pip install 'featstore[hub]' (or pip install keras-hub)"
        ) from None
    return keras_hub


def _cache_hint(handle: str) -> str:
    """Where KerasHub's downloads of ``handle`` are cached."""
    if handle.startswith("hf://"):
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        return f"the Hugging Face cache ($HF_HOME, here {home}; files under hub/models--...)"
    cache = os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub")
    return f"kagglehub's cache ($KAGGLEHUB_CACHE, here {cache}; files under models/{handle.removeprefix('kaggle://')})"


class NotDownloaded(ConfigError):
    """A named preset that a store's or run's record names is not in KerasHub's caches, and is not downloaded."""


_HANDLE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one name of a kaggle:// handle (no '..', no '/')
MAX_CACHED_VERSIONS = 1000  # version folders of one kaggle:// handle looked at in the cache


def _cached_files(handle: str) -> list[Path] | None:
    """The files of ``handle`` (``kaggle://`` or ``hf://``) in kagglehub's or huggingface_hub's cache, found without
    the network; None unless every one of :data:`PRESET_FILES` is there. An unversioned kaggle handle takes the newest
    version cached in full."""
    if handle.startswith("hf://"):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = [try_to_load_from_cache(handle.removeprefix("hf://"), name) for name in PRESET_FILES]
        except Exception:  # noqa: BLE001 - an invalid repo id, or huggingface_hub missing: not cached
            return None
        return [Path(f) for f in found] if all(isinstance(f, str) for f in found) else None
    try:
        from kagglehub.cache import Cache
        from kagglehub.handle import parse_model_handle

        h = parse_model_handle(handle.removeprefix("kaggle://"))
    except Exception:  # noqa: BLE001 - a handle kagglehub cannot parse, or kagglehub missing: not cached
        return None
    if not all(_HANDLE_PART.fullmatch(str(p)) for p in (h.owner, h.model, h.framework, h.variation)):
        return None  # '..' would look outside the cache
    cache = Cache()
    versions = [h] if h.is_versioned() else []
    if not versions:
        try:
            with os.scandir(Path(cache.get_path(h.with_version(1))).parent) as entries:
                numbers = [int(e.name) for _, e in zip(range(MAX_CACHED_VERSIONS), entries) if e.name.isdigit()]
        except (OSError, ValueError):
            numbers = []
        versions = [h.with_version(v) for v in sorted(numbers, reverse=True) if v > 0]
    for v in versions:
        found = [cache.load_from_cache(v, name) for name in PRESET_FILES]
        if all(found):
            return [Path(f) for f in found]
    return None


def fetch_preset(preset: str, download: bool = True) -> tuple[Path, str]:
    """The local folder of a named preset (downloaded through KerasHub's cache) and its handle (with its version).

    ``download=False`` (the preset comes from a store's or run's record, not from the command line): only KerasHub's
    local caches are looked at; a preset not there is a :class:`NotDownloaded` naming ``--weights hub:<preset>``."""
    _requires_keras_hub()
    from keras_hub.src.utils import preset_utils

    builtin = preset_utils.BUILTIN_PRESETS.get(preset)
    handle = builtin["kaggle_handle"] if builtin else preset
    scheme = preset.partition("://")[0].lower() if "://" in preset else None
    if scheme is not None and scheme not in HUB_SCHEMES:  # file://, gs://, http://... reach TensorFlow's file systems
        raise ConfigError(
            f"hub:{preset}: hub: takes a built-in preset name, kaggle://<owner>/<model>/keras/<variant>[/<version>] "
            f"or hf://<owner>/<model>; for a preset folder on disk pass --model PATH/"
        )
    if (not builtin and scheme is None) or (builtin and builtin["metadata"].get("path") not in _family_paths()):
        # a built-in preset of another family (hub:gemma2_27b_en) was downloaded, weights and all, before it was refused
        names = [n for n, p in preset_utils.BUILTIN_PRESETS.items() if p["metadata"].get("path") in _family_paths()]
        raise choices_error("KerasHub preset (DINOv2, ViT, CLIP, SigLIP)", preset, sorted(names))
    paths = []
    if not download:
        paths = _cached_files(handle) or []
        if not paths:
            raise NotDownloaded(
                f"hub:{preset} comes from a record (a run's run.json or a store's attributes), not from the command "
                f"line, and is not in {_cache_hint(handle)}: featstore downloads only what its command line names. "
                f"Pass --weights hub:{preset} to download it, or --weights PATH/ with a local copy of the preset folder"
            )
        _check_class(read_json(paths[0]), preset)
    try:
        for name in PRESET_FILES if download else ():
            paths.append(Path(preset_utils.get_file(preset, name)))
            if name == "config.json":  # its class is checked before the weights are downloaded
                _check_class(read_json(paths[0]), preset)
    except ConfigError:
        raise
    except FileNotFoundError as exc:
        raise ConfigError(f"KerasHub preset {preset} has no {name}; featstore needs {', '.join(PRESET_FILES)}") from exc
    except Exception as exc:  # requests' ConnectionError, kagglehub's and huggingface_hub's errors: all mean "not here"
        raise WeightsError(
            f"KerasHub preset {preset} ({handle}) could not be loaded: {type(exc).__name__}: {str(exc)[:300]}\n"
            f"Two ways out:\n"
            f"  1. put the preset in {_cache_hint(handle)} (run keras_hub.models.Backbone.from_preset({preset!r}) on a "
            f"machine that can download it and copy that folder), or\n"
            f"  2. pass a local preset folder: --model PATH/ (config.json, model.weights.h5, image_converter.json, as "
            f"backbone.save_to_preset(PATH) and converter.save_to_preset(PATH) write them)."
        ) from exc
    folder = paths[0].parent
    if folder.name.isdigit() and handle.startswith("kaggle://") and len(handle.split("/")) == 6:
        handle = f"{handle}/{folder.name}"  # kagglehub's cache folder is the version it resolved: recorded with it
    if any(p.parent != folder for p in paths):
        raise WeightsError(f"KerasHub preset {preset}: its files are not in one folder ({', '.join(map(str, paths))})")
    try:
        if download:
            preset_utils.get_file(preset, "metadata.json")
    except Exception:  # noqa: BLE001 - optional: older presets have none
        logger.debug("preset %s has no metadata.json", preset)
    return folder, handle


def _check_class(config: dict, preset: str) -> None:
    """Refuse a named preset whose config.json is not one of a supported backbone class."""
    if not isinstance(config.get("class_name"), str) or config["class_name"] not in FAMILIES:
        raise choices_error(f"KerasHub backbone class of {preset}", str(config.get("class_name"))[:100], list(FAMILIES))


def _family_paths() -> set[str]:
    """The 'path' metadata of built-in presets of the supported families."""
    return {f.family for f in FAMILIES.values()}
