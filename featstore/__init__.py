"""featstore: extract a frozen CNN's activations once into HDF5, then run many classifier experiments.

The public names below are imported on first use (PEP 562 module ``__getattr__``), so ``import featstore``
and commands that only read a store (``featstore info``, ``runs``, ``check``) never pay for scikit-learn,
TensorFlow or Keras.

>>> import featstore
>>> featstore.list_backbones()[:3]
['vgg16', 'vgg19', 'resnet50']
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_PUBLIC = {  # public name -> the module that defines it
    "BackboneSpec": "backbones", "get_backbone": "backbones", "list_backbones": "backbones", "register_backbone": "backbones",
    "ConfigError": "errors", "DataError": "errors", "FeatstoreError": "errors", "StoreBusyError": "errors", "StoreError": "errors",
    "WeightsError": "errors",
    "Extractor": "extract", "ExtractorConfig": "extract", "ExtractResult": "extract", "extract": "extract",
    "discover": "images", "load_image": "images",
    "find_leaks": "leaks",
    "build_classifier": "classifiers", "get_classifier": "classifiers", "list_classifiers": "classifiers",
    "register_classifier": "classifiers",
    "predict": "predict",
    "compare_runs": "runs", "ensemble": "runs", "evaluate_run": "runs", "fit": "runs", "get_run": "runs", "list_runs": "runs",
    "show_run": "runs", "record_split": "runs",
    "sweep": "sweep",
    "FinetuneConfig": "finetune", "finetune": "finetune",
    "FeatureStore": "store",
    "export": "export",
}
__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    """Import the module behind a public name on first access and cache the name here."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'featstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """Keeps ``featstore.extract``/``predict``/``export``/``sweep``/``finetune`` the functions when their same-named modules get imported."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _PUBLIC.get(name) == name:
            return  # the import system binds a submodule on its package; the public function wins, as with eager imports
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from .quiet import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # TensorFlow's first import in this process hides its C++ start-up noise (FEATSTORE_VERBOSE=1 shows it)
