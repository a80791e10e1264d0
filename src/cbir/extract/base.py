"""The FeatureExtractor protocol and its registry.

An extractor turns decoded images into L2-normalised float32 vectors. Its name, dim
and preprocessing travel into the collection's manifest (as timm's data config travels
with a model), so vectors of different extractors are never mixed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from cbir.registry import Registry


@dataclass
class Embedding:
    """What an extractor returns for a batch of n images.

    features: (n, dim) float32, each row L2-normalised.
    probs:    (n, n_classes) float32 class probabilities, or None if the extractor has no classifier.
    regions:  (n, h*w, c) float32 region features (before pooling), or None unless requested.
    """

    features: np.ndarray
    probs: np.ndarray | None = None
    regions: np.ndarray | None = None


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    dim: int
    #: JSON-serialisable description of the input pipeline (size, crop, mean, std...).
    preprocessing: dict[str, Any]
    #: class names of ``Embedding.probs`` columns (empty when there is no classifier).
    class_names: list[str]
    #: the decode target: images may be decoded at reduced scale down to this short side.
    input_size: int

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image -> an array ready to stack into a batch (what ``embed`` takes:
        float32 for most extractors, the uint8 pixels for a graph that takes them)."""
        ...

    def embed(self, batch: np.ndarray, *, regions: bool = False) -> Embedding:
        """A stacked batch from ``preprocess`` -> Embedding."""
        ...


@dataclass
class Labels:
    """Top-k class labels of one image: [(name, probability), ...] best first."""

    items: list[tuple[str, float]] = field(default_factory=list)


def top_labels(probs: np.ndarray, class_names: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """(n, C) probabilities -> per row the k most probable (name, prob), best first."""
    if probs is None or len(class_names) == 0:
        return [[] for _ in range(0 if probs is None else len(probs))]
    k = min(k, probs.shape[1])
    if k < probs.shape[1]:  # partial selection, then order the k: ~10x cheaper than a full sort
        idx = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        idx = np.take_along_axis(idx, np.argsort(-np.take_along_axis(probs, idx, axis=1), axis=1,
                                                 kind="stable"), axis=1)
    else:
        idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], round(float(p[j]), 6)) for j in row] for p, row in zip(probs, idx, strict=True)]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation, float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, eps)


#: ``finetuned:NAME`` names a fine-tuned model's backbone (``cbir.extract.finetuned``)
FINETUNED_PREFIX = "finetuned:"
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # = cbir.train.registry.NAME_RE


def is_finetuned_name(name: object) -> bool:
    """True for ``finetuned:NAME`` with a valid model NAME (whether or not that model exists)."""
    if not isinstance(name, str) or not name.startswith(FINETUNED_PREFIX):
        return False
    model = name[len(FINETUNED_PREFIX):]
    return bool(_MODEL_NAME_RE.match(model)) and ".." not in model


class ExtractorNames(list):
    """The registered extractor names; ``in`` also accepts every ``finetuned:NAME``.

    So ``choices=EXTRACTORS.names()`` (argparse) lets ``--extractor finetuned:NAME`` through
    while the help and error messages list only the built-in extractors.
    """

    def __contains__(self, name: object) -> bool:
        return list.__contains__(self, name) or is_finetuned_name(name)


#: Other names of registered extractors, {alias: name}. An alias creates the extractor it
#: names, whose ``name`` (what a manifest records) is the real one, so a collection made with
#: ``--extractor efficientnet-lite0-fp32`` says ``efficientnet-lite0`` and opens with either.
EXTRACTOR_ALIASES: dict[str, str] = {"efficientnet-lite0-fp32": "efficientnet-lite0"}


def canonical_extractor_name(name: str) -> str:
    """The registered name behind an alias (any other name unchanged)."""
    return EXTRACTOR_ALIASES.get(name, name)


class ExtractorRegistry(Registry[FeatureExtractor]):
    """The extractor registry plus the parametrised family ``finetuned:NAME`` and aliases."""

    def create(self, name: str, **kwargs: Any) -> FeatureExtractor:
        if is_finetuned_name(name):
            from cbir.extract.finetuned import FinetunedExtractor

            return FinetunedExtractor(name[len(FINETUNED_PREFIX):], **kwargs)
        return super().create(canonical_extractor_name(name), **kwargs)

    def get(self, name: str) -> Any:
        if is_finetuned_name(name):
            from cbir.extract.finetuned import FinetunedExtractor

            return functools.partial(FinetunedExtractor, name[len(FINETUNED_PREFIX):])
        return super().get(canonical_extractor_name(name))

    def names(self) -> ExtractorNames:
        """The registered names and their aliases, sorted."""
        names = super().names()
        aliases = [a for a, n in EXTRACTOR_ALIASES.items() if n in names]
        return ExtractorNames(sorted([*names, *aliases]))

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and super().__contains__(canonical_extractor_name(name)):
            return True
        return is_finetuned_name(name)


EXTRACTORS: ExtractorRegistry = ExtractorRegistry("extractor")
#: The extractor of new collections: EfficientNet-Lite0 quantised to int8 (2-3x faster than
#: fp32 on a CPU, retrieval within 0.005 of it: bench/bench_int8_quality.py). The fp32 model
#: stays ``efficientnet-lite0`` (alias ``efficientnet-lite0-fp32``): a collection keeps the
#: extractor its manifest names.
DEFAULT_EXTRACTOR = "efficientnet-lite0-int8"
