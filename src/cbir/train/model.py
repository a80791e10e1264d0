"""A trained classification head over stored backbone features, runnable in plain numpy.

Weights are a flat dict of float32 arrays (saved as safetensors), so labelling, partitioning
and re-ranking never import torch; torch is only needed to train. Heads:

* ``linear``: ``logits = z W^T + b``;
* ``mlp``:    ``h = relu(z W1^T + b1)``, ``logits = h W2^T + b2`` (dropout only while training);

where ``z = (features - norm.mean) / norm.std`` standardises the L2-normalised features with
statistics of the training split. ``embed`` returns the penultimate representation (``h``
for ``mlp``, the logits for ``linear``) L2-normalised, for retrieval in the model's space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.errors import IndexMismatch, InvalidRequest

#: bump when the weight names, the metadata fields or the forward pass change
FORMAT_VERSION = 1
HEADS = ("linear", "mlp")
#: the safetensors tensors each head needs
WEIGHT_NAMES: dict[str, tuple[str, ...]] = {
    "linear": ("norm.mean", "norm.std", "fc.weight", "fc.bias"),
    "mlp": ("norm.mean", "norm.std", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"),
}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits -> (n, C) float32."""
    z = np.asarray(logits, dtype=np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class ClassifierModel:
    """A trained head: ``weights`` (name -> float32 array) and ``meta`` (the JSON record)."""

    weights: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        head = self.head
        if head not in HEADS:
            raise InvalidRequest(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
        missing = [n for n in WEIGHT_NAMES[head] if n not in self.weights]
        if missing:
            raise InvalidRequest(f"model weights lack {missing} for a {head} head")
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.weights.items()}
        out = self.weights["fc.weight" if head == "linear" else "fc2.weight"].shape[0]
        if out != len(self.classes):
            raise InvalidRequest(f"the head predicts {out} classes but the metadata lists "
                                 f"{len(self.classes)}")

    # -- description ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def head(self) -> str:
        return str(self.meta.get("head", {}).get("type", ""))

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def dim(self) -> int:
        """Feature dimension the model expects."""
        return int(self.weights["norm.mean"].shape[0])

    @property
    def extractor(self) -> str:
        return str(self.meta.get("extractor", {}).get("name", ""))

    @property
    def finetuned(self) -> bool:
        """True for a model with its own fine-tuned backbone (extractor ``finetuned:NAME``)."""
        return bool(self.meta.get("finetuned", False))

    def check_features(self, extractor: str, dim: int) -> None:
        """Refuse features from another extractor than the one the model was trained on."""
        if extractor != self.extractor or dim != self.dim:
            raise IndexMismatch(
                f"model {self.name!r} was trained on {self.extractor!r} features (dim {self.dim}), "
                f"not {extractor!r} (dim {dim}); train one on this collection's extractor")

    # -- inference (numpy) ----------------------------------------------------------------
    def _z(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InvalidRequest(f"model {self.name!r} expects (n, {self.dim}) features, "
                                 f"got {x.shape}")
        return (x - self.weights["norm.mean"]) / self.weights["norm.std"]

    def _hidden(self, z: np.ndarray) -> np.ndarray:
        w = self.weights
        return np.maximum(z @ w["fc1.weight"].T + w["fc1.bias"], 0.0)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) features -> (n, C) float32 logits."""
        z, w = self._z(features), self.weights
        if self.head == "linear":
            return z @ w["fc.weight"].T + w["fc.bias"]
        return self._hidden(z) @ w["fc2.weight"].T + w["fc2.bias"]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) features -> (n, C) float32 class probabilities (rows sum to 1)."""
        return softmax(self.logits(features))

    def embed(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) -> L2-normalised penultimate vectors: hidden (mlp) or logits (linear)."""
        v = self._hidden(self._z(features)) if self.head == "mlp" else self.logits(features)
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return (v / np.maximum(n, 1e-12)).astype(np.float32)
