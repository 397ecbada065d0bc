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
    "discover",
    "extract",
    "get_backbone",
    "list_backbones",
    "load_image",
    "register_backbone",
]
