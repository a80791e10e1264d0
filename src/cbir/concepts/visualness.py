"""Remove non-visual tags: keep a tag when its images look alike and unlike the rest.

The WDHT paper (weakly-supervised-deep-hashing, section 2.2, after Sun et al. [21]) keeps a
tag when the images carrying it are visually *cohesive* ("the visual similarity among the
images under one tag") and *separated* ("how the tag's image set differs from the whole
collection"); it names the two quantities but gives no formula for combining them. Here,
with L2-normalised image features x_i (rows of ``features``; the paper used TF-IDF SIFT
bags of words, any feature works) and T the images carrying tag t, R the others:

- ``cohesion(t)   = mean over pairs i != j in T of cos(x_i, x_j)``
- ``separation(t) = mean over i in T, k in R of cos(x_i, x_k)``  (similarity to the rest)
- ``score(t)      = cohesion(t) - separation(t)``

i.e. how much more alike the tag's images are to each other than to the other images.
Both terms are unbiased means over image pairs, so a tag carried by a random sample of
images scores about 0 whatever its frequency, and a visual tag scores > 0: a threshold of 0
and "keep the top fraction" both make sense. :class:`VisualnessStats` also reports the
paper-style ``centroid_distance(t) = 1 - cos(mean of T, mean of all images)``.

Everything is computed from three sparse-dense products: with the binary incidence matrix
A (n, V) and normalised features X, S = A^T X holds each tag's feature sum, and
``sum_{i != j in T} cos = |S_t|^2 - |T|``, ``sum_{i in T, k in R} cos = S_t . (g - S_t)``
(g = sum of all rows). Features are read in row chunks (float16 or memmaps are fine), so
memory is O(V * d) for S: n = 100k images and V = 5k tags take seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbir.concepts.tags import build_vocabulary
from cbir.errors import BackendUnavailable, InvalidRequest

__all__ = [
    "VisualnessStats",
    "filter_visual_tags",
    "tag_incidence",
    "visualness_scores",
    "visualness_stats",
]

#: feature rows read (and cast to float32) at a time.
CHUNK_ROWS = 8192


def _sparse() -> Any:
    try:
        import scipy.sparse
    except ImportError:  # pragma: no cover - scipy is a dependency
        raise BackendUnavailable("the visualness filter needs scipy: pip install scipy") from None
    return scipy.sparse


@dataclass(frozen=True, eq=False)
class VisualnessStats:
    """Per-tag statistics, aligned with ``vocabulary``; NaN where a tag has < 2 images or all of them.

    counts: (V,) int64 images (with a non-zero feature) carrying the tag;
    cohesion, separation, score, centroid_distance: (V,) float64 (see the module docstring).
    """

    vocabulary: list[str]
    counts: np.ndarray
    cohesion: np.ndarray
    separation: np.ndarray
    score: np.ndarray
    centroid_distance: np.ndarray

    def scores(self) -> dict[str, float]:
        """``{tag: score}`` for the tags with a defined score."""
        return {t: float(s) for t, s in zip(self.vocabulary, self.score, strict=True) if math.isfinite(s)}

    def ranked(self) -> list[str]:
        """Tags with a defined score, best first (ties in vocabulary order)."""
        order = np.argsort(-np.nan_to_num(self.score, nan=-np.inf), kind="stable")
        return [self.vocabulary[i] for i in order if math.isfinite(self.score[i])]


def tag_incidence(tag_lists: Sequence[Iterable[str]], vocabulary: Sequence[str]) -> Any:
    """Binary (n, V) float32 ``scipy.sparse.csr_matrix``: 1 where image i carries vocabulary tag v.

    Tags outside the vocabulary are ignored; a tag repeated in one list counts once.
    """
    index = {t: j for j, t in enumerate(vocabulary)}
    if len(index) != len(vocabulary):
        raise InvalidRequest("the vocabulary has duplicate tags")
    indptr = np.zeros(len(tag_lists) + 1, dtype=np.int64)
    cols: list[int] = []
    for i, tags in enumerate(tag_lists):
        if isinstance(tags, str):
            raise InvalidRequest(f"tag_lists[{i}] is a string; pass one list of tags per image")
        row = sorted({index[t] for t in tags if t in index})
        cols.extend(row)
        indptr[i + 1] = len(cols)
    indices = np.asarray(cols, dtype=np.int64)
    data = np.ones(len(cols), dtype=np.float32)
    return _sparse().csr_matrix((data, indices, indptr), shape=(len(tag_lists), len(vocabulary)))


def visualness_stats(
    features: np.ndarray,
    tag_lists: Sequence[Iterable[str]],
    vocabulary: Sequence[str] | None = None,
    *,
    min_count: int = 2,
    chunk_rows: int = CHUNK_ROWS,
) -> VisualnessStats:
    """Cohesion, separation and score of every vocabulary tag (see the module docstring).

    features: (n, d) image features, one row per entry of ``tag_lists`` (normalised here;
    all-zero rows are ignored). vocabulary: the tags to score; by default every tag carried
    by at least ``min_count`` images (:func:`cbir.concepts.tags.build_vocabulary`).
    """
    if getattr(features, "ndim", None) != 2:
        shape = getattr(features, "shape", None)
        raise InvalidRequest(f"features must be a 2-D (n, d) array; got shape {shape}")
    n, d = features.shape
    if len(tag_lists) != n:
        raise InvalidRequest(f"got {n} feature rows but {len(tag_lists)} tag lists; pass one per image")
    vocab = list(build_vocabulary(tag_lists, min_count=min_count) if vocabulary is None else vocabulary)
    a = tag_incidence(tag_lists, vocab)
    v = len(vocab)
    sums = np.zeros((v, d), dtype=np.float64)  # S = A^T X, one row per tag
    total = np.zeros(d, dtype=np.float64)  # g = sum of all normalised rows
    counts = np.zeros(v, dtype=np.float64)
    n_valid = 0
    for start in range(0, n, max(1, chunk_rows)):
        stop = min(n, start + max(1, chunk_rows))
        x = np.asarray(features[start:stop], dtype=np.float32)
        if not np.isfinite(x).all():
            raise InvalidRequest(f"features rows {start}..{stop - 1} contain NaN or inf")
        norms = np.linalg.norm(x, axis=1)
        valid = norms > 0
        x = x * np.where(valid, 1.0 / np.where(valid, norms, 1.0), 0.0).astype(np.float32)[:, None]
        block_t = a[start:stop].T  # (V, rows), CSC
        sums += block_t @ x
        total += x.sum(axis=0, dtype=np.float64)
        counts += block_t @ valid.astype(np.float32)
        n_valid += int(valid.sum())

    sq = np.einsum("ij,ij->i", sums, sums)
    with np.errstate(divide="ignore", invalid="ignore"):
        cohesion = (sq - counts) / (counts * (counts - 1))
        separation = (sums @ total - sq) / (counts * (n_valid - counts))
        cos_centroid = (sums @ total) / (np.sqrt(sq) * np.linalg.norm(total))
    undefined = (counts < 2) | (counts >= n_valid)
    cohesion[undefined] = np.nan
    separation[undefined] = np.nan
    cos_centroid[undefined] = np.nan
    return VisualnessStats(
        vocabulary=vocab,
        counts=counts.astype(np.int64),
        cohesion=cohesion,
        separation=separation,
        score=cohesion - separation,
        centroid_distance=1.0 - cos_centroid,
    )


def visualness_scores(
    features: np.ndarray,
    tag_lists: Sequence[Iterable[str]],
    vocabulary: Sequence[str] | None = None,
    *,
    min_count: int = 2,
) -> dict[str, float]:
    """``{tag: cohesion - separation}`` for the vocabulary tags carried by 2..n-1 images."""
    return visualness_stats(features, tag_lists, vocabulary, min_count=min_count).scores()


def filter_visual_tags(
    features: np.ndarray,
    tag_lists: Sequence[Iterable[str]],
    keep: float | int | None = 0.5,
    *,
    threshold: float | None = None,
    vocabulary: Sequence[str] | None = None,
    min_count: int = 2,
) -> list[str]:
    """The visual tags, best first.

    ``keep``: an int >= 1 keeps that many top-scoring tags; a float in (0, 1] keeps that
    fraction of the scored tags (rounded up); None keeps all. ``threshold`` (e.g. 0.0: more
    alike than random) first drops tags scoring below it. Tags with an undefined score
    (fewer than 2 images, or all of them) are never kept.
    """
    number = int | float | np.integer | np.floating
    if isinstance(keep, bool) or not (keep is None or isinstance(keep, number)):
        raise InvalidRequest(f"keep must be an int count, a float fraction or None; got {keep!r}")
    if isinstance(keep, int | np.integer) and keep < 1:
        raise InvalidRequest(f"keep as a count must be >= 1; got {keep}")
    if isinstance(keep, float | np.floating) and not 0.0 < keep <= 1.0:
        raise InvalidRequest(f"keep as a fraction must be in (0, 1]; got {keep}")
    stats = visualness_stats(features, tag_lists, vocabulary, min_count=min_count)
    ranked = stats.ranked()
    n_scored = len(ranked)
    if threshold is not None:
        score = dict(zip(stats.vocabulary, stats.score, strict=True))
        ranked = [t for t in ranked if score[t] >= threshold]
    if keep is None:
        return ranked
    limit = int(keep) if isinstance(keep, int | np.integer) else math.ceil(float(keep) * n_scored)
    return ranked[:limit]
