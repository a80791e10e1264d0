"""Feature extractors: protocol, registry and the built-in backbones.

Importing this package registers "efficientnet-lite0-int8" (the default of new collections),
"efficientnet-lite0" (fp32; alias "efficientnet-lite0-fp32") and "colorhist" without importing
torch or onnxruntime (onnxruntime, or OpenVINO with CBIR_RUNTIME=openvino, loads on the first
``embed``; torch only to export).
"""

from cbir.extract import colorhist as _colorhist  # noqa: F401 - registers "colorhist"
from cbir.extract import efficientnet as _efficientnet  # noqa: F401 - registers the backbone
from cbir.extract.base import (
    DEFAULT_EXTRACTOR,
    EXTRACTORS,
    Embedding,
    FeatureExtractor,
    l2_normalize,
    top_labels,
)


def create_extractor(name: str = DEFAULT_EXTRACTOR, **kwargs: object) -> FeatureExtractor:
    """Build the extractor registered as ``name`` (UnknownComponent lists the known names)."""
    return EXTRACTORS.create(name, **kwargs)


__all__ = [
    "DEFAULT_EXTRACTOR",
    "EXTRACTORS",
    "Embedding",
    "FeatureExtractor",
    "create_extractor",
    "l2_normalize",
    "top_labels",
]
