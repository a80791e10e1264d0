"""Feature extractors: protocol, registry and the built-in backbones."""

from cbir.extract.base import DEFAULT_EXTRACTOR, EXTRACTORS, Embedding, FeatureExtractor, top_labels

__all__ = ["DEFAULT_EXTRACTOR", "EXTRACTORS", "Embedding", "FeatureExtractor", "top_labels"]
