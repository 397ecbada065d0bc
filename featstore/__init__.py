"""featstore: extract a frozen CNN's activations once into HDF5, then run many classifier experiments.

The public names below are imported on first use (PEP 562 module ``__getattr__``), so ``import featstore``
has no side effects and commands that only read a store (``featstore info``, ``runs``, ``check``) never pay
for scikit-learn, TensorFlow or Keras. The first use of one installs :class:`featstore.kerasfile.SettingsCheck` (as
does importing :mod:`featstore.kerasconfig`, which the modules that build Keras models import), so that featstore's
own first import of Keras refuses in one line a settings file Keras would wait on for ever. Each public function
is handed out wrapped by :func:`featstore.apiargs.checked`, which refuses an argument of the wrong type in one line
naming it, before the function runs. The package is laid
out by stage (see docs/architecture.md); each public name lives in the module named here.

>>> import featstore
>>> featstore.list_backbones()[:3]
['vgg16', 'vgg19', 'resnet50']
"""

from __future__ import annotations

import importlib
import inspect

from featstore.version import __version__

_PUBLIC = {  # public name -> the module that defines it
    "BackboneSpec": "models.backbones",
    "get_backbone": "models.backbones",
    "list_backbones": "models.backbones",
    "register_backbone": "models.backbones",
    "ConfigError": "errors",
    "DataError": "errors",
    "FeatstoreError": "errors",
    "StoreBusyError": "errors",
    "StoreError": "errors",
    "WeightsError": "errors",
    "Extractor": "models.extractor",
    "ExtractorConfig": "models.extractor",
    "ExtractResult": "extraction.pipeline",
    "extract": "extraction.pipeline",
    "discover": "images.listing",
    "load_image": "images.listing",
    "find_leaks": "experiments.leaks",
    "build_classifier": "experiments.classifiers",
    "get_classifier": "experiments.classifiers",
    "list_classifiers": "experiments.classifiers",
    "register_classifier": "experiments.classifiers",
    "predict": "experiments.predict",
    "compare_runs": "experiments.evaluate",
    "ensemble": "experiments.ensemble",
    "evaluate_run": "experiments.evaluate",
    "fit": "experiments.fit",
    "get_run": "runs.folder",
    "list_runs": "runs.folder",
    "show_run": "experiments.evaluate",
    "record_split": "experiments.evaluate",
    "sweep": "experiments.sweep",
    "probe": "experiments.probe",
    "fewshot": "experiments.fewshot",
    "FinetuneConfig": "experiments.finetune",
    "finetune": "experiments.finetune",
    "FeatureStore": "store.reader",
    "export": "store.export",
    "quiet_tensorflow": "quiet",
    "build_report": "report.site.build",
    "similar": "experiments.similar",
    "build_similarity_index": "experiments.similar_index",
}
__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    """Import the module behind a public name on first access and cache the name here."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'featstore' has no attribute {name!r}")
    from featstore.kerasfile import install

    install()  # before featstore's own first import of Keras: a FIFO keras.json is one line (attack 48 M5)
    value = getattr(importlib.import_module(f"featstore.{_PUBLIC[name]}"), name)
    if inspect.isfunction(value):  # its arguments checked before it runs: one line naming a wrong one (attack 54 #5)
        from featstore.apiargs import checked

        value = checked(value)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
