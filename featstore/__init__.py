"""featstore: extract a frozen CNN's activations once into HDF5, then run many classifier experiments.

>>> import featstore
>>> featstore.list_backbones()[:3]
['vgg16', 'vgg19', 'resnet50']
"""

__version__ = "0.1.0"

from .backbones import BackboneSpec, get_backbone, list_backbones, register_backbone  # noqa: E402
from .errors import ConfigError, DataError, FeatstoreError, StoreBusyError, StoreError, WeightsError  # noqa: E402
from .extract import Extractor, ExtractorConfig, ExtractResult, extract  # noqa: E402
from .images import discover, load_image  # noqa: E402
from .leaks import find_leaks  # noqa: E402
from .classifiers import build_classifier, get_classifier, list_classifiers, register_classifier  # noqa: E402
from .predict import predict  # noqa: E402
from .runs import compare_runs, ensemble, evaluate_run, fit, get_run, list_runs, show_run  # noqa: E402
from .store import FeatureStore  # noqa: E402

__all__ = [
    "__version__",
    "BackboneSpec",
    "ConfigError",
    "DataError",
    "ExtractResult",
    "Extractor",
    "ExtractorConfig",
    "FeatstoreError",
    "FeatureStore",
    "StoreBusyError",
    "StoreError",
    "WeightsError",
    "build_classifier",
    "compare_runs",
    "ensemble",
    "evaluate_run",
    "fit",
    "get_classifier",
    "get_run",
    "list_classifiers",
    "list_runs",
    "predict",
    "register_classifier",
    "show_run",
    "discover",
    "extract",
    "find_leaks",
    "get_backbone",
    "list_backbones",
    "load_image",
    "register_backbone",
]
