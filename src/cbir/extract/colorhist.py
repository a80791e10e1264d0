"""A classic CBIR baseline: a joint HSV colour histogram (no neural network).

8 hue x 4 saturation x 4 value bins = 128 dims, computed on a 128x128 thumbnail of the
whole image. The histogram is a distribution (sums to 1); ``embed`` takes its square root
(the Hellinger map, so inner products are Bhattacharyya coefficients) and L2-normalises.
Cheap enough for fast tests, and the baseline in evaluations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from cbir.errors import InvalidRequest
from cbir.extract.base import EXTRACTORS, Embedding, l2_normalize

BINS = (8, 4, 4)
THUMB = 128


@EXTRACTORS.register("colorhist")
class ColorHistogram:
    """HSV joint histogram extractor: dim 128, no classifier, no regions."""

    name = "colorhist"
    input_size = THUMB

    def __init__(self, bins: tuple[int, int, int] = BINS):
        if len(bins) != 3 or any(not 1 <= int(b) <= 256 for b in bins):
            raise InvalidRequest(f"bins must be three ints in 1..256, got {bins!r}")
        self.bins = tuple(int(b) for b in bins)
        self.dim = int(np.prod(self.bins))
        self.class_names: list[str] = []
        self.preprocessing: dict[str, Any] = {
            "size": THUMB,
            "resize": "whole image to 128x128 (aspect ignored: a histogram is area-proportional)",
            "resample": "bilinear",
            "reducing_gap": 2.0,
            "colorspace": "HSV (Pillow, 0..255 per channel)",
            "bins": list(self.bins),
            "normalisation": "histogram sums to 1; embed: sqrt then L2",
        }

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (dim,) float32 normalised histogram (sums to 1)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (THUMB, THUMB):
            image = image.resize((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=2.0)
        hsv = np.asarray(image.convert("HSV"), dtype=np.uint16).reshape(-1, 3)
        hb, sb, vb = self.bins
        idx = ((hsv[:, 0] * hb) >> 8) * (sb * vb) + ((hsv[:, 1] * sb) >> 8) * vb + ((hsv[:, 2] * vb) >> 8)
        hist = np.bincount(idx, minlength=self.dim).astype(np.float32)
        return hist / hist.sum()

    def embed(self, batch: np.ndarray, *, regions: bool = False) -> Embedding:
        """(n, dim) histograms -> features (n, dim) sqrt + L2-normalised; probs/regions None."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise InvalidRequest(f"colorhist expects an (n, {self.dim}) batch, got {batch.shape}")
        return Embedding(features=l2_normalize(np.sqrt(np.maximum(batch, 0.0))))
