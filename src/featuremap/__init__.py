"""featuremap: compute, see, tune and use the feature maps of convolutional neural networks.

The public API is loaded lazily so that ``import featuremap`` stays fast and imports neither
torch nor matplotlib until a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from featuremap.errors import FeaturemapError

__version__ = "0.1.0"

_EXPORTS = {
    "conv2d": "featuremap.conv",
    "conv_cost": "featuremap.arithmetic",
    "output_size": "featuremap.arithmetic",
    "filter_bank": "featuremap.filters",
    "load_image": "featuremap.images",
    "list_samples": "featuremap.images",
    "compute_maps": "featuremap.toy",
    "explain_value": "featuremap.toy",
    "plot_maps": "featuremap.plot",
    "plot_comparison": "featuremap.plot",
    "load_model": "featuremap.zoo",
    "list_models": "featuremap.zoo",
    "list_layers": "featuremap.summary",
    "Model": "featuremap.model",
    "explore": "featuremap.web.server",
    "Preprocess": "featuremap.preprocess",
    "open_collection": "featuremap.datasets",
    "extract": "featuremap.extraction",
    "extract_dataset": "featuremap.store",
    "open_store": "featuremap.store",
    "FeatureMaps": "featuremap.extraction",
    "Extractor": "featuremap.extraction",
    "explain": "featuremap.value",
    "receptive_field": "featuremap.receptive",
    "top_patches": "featuremap.atlas",
    "channel_atlas": "featuremap.atlas",
    "dissect": "featuremap.atlas",
    "visualize": "featuremap.atlas.visualization",
    "similarity": "featuremap.atlas.cka",
}

__all__ = [
    "Extractor",
    "FeatureMaps",
    "FeaturemapError",
    "Model",
    "Preprocess",
    "__version__",
    "compute_maps",
    "conv2d",
    "conv_cost",
    "dissect",
    "explain",
    "explain_value",
    "explore",
    "extract",
    "extract_dataset",
    "filter_bank",
    "list_layers",
    "list_models",
    "list_samples",
    "load_image",
    "load_model",
    "open_store",
    "open_collection",
    "output_size",
    "plot_comparison",
    "plot_maps",
    "receptive_field",
    "top_patches",
    "channel_atlas",
    "similarity",
    "visualize",
]

if TYPE_CHECKING:  # pragma: no cover
    from featuremap.arithmetic import conv_cost, output_size
    from featuremap.atlas import channel_atlas, dissect, top_patches
    from featuremap.atlas.cka import similarity
    from featuremap.atlas.visualization import visualize
    from featuremap.conv import conv2d
    from featuremap.datasets import open_collection
    from featuremap.extraction import Extractor, FeatureMaps, extract
    from featuremap.filters import filter_bank
    from featuremap.images import list_samples, load_image
    from featuremap.model import Model
    from featuremap.plot import plot_comparison, plot_maps
    from featuremap.preprocess import Preprocess
    from featuremap.receptive import receptive_field
    from featuremap.store import extract_dataset, open_store
    from featuremap.summary import list_layers
    from featuremap.toy import compute_maps, explain_value
    from featuremap.value import explain
    from featuremap.web.server import explore
    from featuremap.zoo import list_models, load_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'featuremap' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
