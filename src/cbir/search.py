"""Query a collection: by image file(s), by collection member(s), or by a raw vector.

Every hit carries the Euclidean distance between unit vectors, the paper's similarity
1 / (1 + distance), and the cosine. Several query images are combined by the mean of
their features (re-normalised).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cbir.collection import Collection
from cbir.errors import InvalidRequest
from cbir.extract.base import l2_normalize
from cbir.extract.pipeline import embed_images
from cbir.index.base import check_k
from cbir.io.images import from_pil, load_image
from cbir.store import matchscale
from cbir.store.photometa import Filters


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    distance: float
    similarity: float
    cosine: float
    labels: list[tuple[str, float]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    #: Hamming distance of the codes, for searches by learned binary codes
    hamming: int | None = None
    #: a score people can read, 0-100: 0 = as alike as two random photos of this collection,
    #: 100 = the same image (see :func:`match_score`)
    match: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = [{"label": n, "prob": p} for n, p in self.labels]
        if self.hamming is None:
            d.pop("hamming")
        if self.match is None:
            d.pop("match")
        return d

    def to_dict(self) -> dict:
        """The hit as plain JSON-ready data (the same as ``cbir search --json`` prints)."""
        return self.as_dict()


def distance_from_cosine(cos: float) -> float:
    """Euclidean distance between unit vectors with this cosine: sqrt(2 - 2 cos)."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * cos))


_BASELINES: dict[str, tuple[int, float]] = {}


def match_baseline(collection: Collection) -> float:
    """The median cosine of two random photos of this collection: the match scale's 0 %.

    The paper's 1/(1+d) reads 55-61 % for near-identical photos and ~40 % for unrelated
    ones, and a raw cosine of this backbone's (non-negative) features reads ~45 % for two
    unrelated photos. The zero is instead measured on the collection (cbir.store.matchscale:
    a sample seeded with the catalog's generation), stored by the writer that last synced
    the index, else measured here; kept per generation in this process.
    """
    cat = collection.catalog
    gen = int(cat.generation())
    key = str(cat.path)
    hit = _BASELINES.get(key)
    if hit is not None and hit[0] == gen:
        return hit[1]
    base = matchscale.stored(cat, gen)
    if base is None:
        base = matchscale.compute(cat)
    _BASELINES[key] = (gen, base)
    return base


def match_score(cos: float, baseline: float) -> float:
    """0-100: how far a cosine lies from the collection's random-pair median towards 1."""
    return round(100.0 * min(1.0, max(0.0, (cos - baseline) / (1.0 - baseline))), 1)


@dataclass
class Query:
    """A query vector (dim,) float32 unit-length, optional class probabilities, ids to exclude."""

    vector: np.ndarray
    probs: np.ndarray | None = None
    exclude: set[int] = field(default_factory=set)
    #: stored top-k labels of member queries, turned into probs only if an index needs them
    labels: list[list[tuple[str, float]]] = field(default_factory=list)
    #: (1, h*w, c) region features, for hashers that learn from regions (IDEA)
    regions: np.ndarray | None = None

    def class_probs(self, class_names: list[str]) -> np.ndarray | None:
        if self.probs is not None or not self.labels or not class_names:
            return self.probs
        pos = {n: i for i, n in enumerate(class_names)}
        pr = np.zeros((len(self.labels), len(class_names)), dtype=np.float32)
        for row, labels in enumerate(self.labels):
            for name, prob in labels:
                if name in pos:
                    pr[row, pos[name]] = prob
        return pr.mean(axis=0)


def query_from_images(collection: Collection, paths: Sequence[Path | str | bytes | Image.Image], *,
                      regions: bool = False) -> Query:
    """Embed query images with the collection's extractor and average them.

    Each one is an image file's path, the file's bytes, or a PIL image (made upright RGB
    as indexing makes files, see :func:`cbir.io.images.from_pil`).
    """
    if not paths:
        raise InvalidRequest("give at least one query image")
    ext = collection.extractor
    images = [from_pil(p) if isinstance(p, Image.Image) else load_image(p, target_size=ext.input_size)
              for p in paths]
    emb = embed_images(images, ext, regions=regions)
    return Query(
        vector=l2_normalize(emb.features.mean(axis=0, keepdims=True))[0],
        probs=None if emb.probs is None else emb.probs.mean(axis=0),
        regions=None if emb.regions is None else emb.regions.mean(axis=0, keepdims=True),
    )


def query_from_members(collection: Collection, paths: Sequence[str | Path], *,
                       exclude_self: bool = True, regions: bool = False) -> Query:
    """Use the stored vectors of images already in the collection (no decoding)."""
    cat = collection.catalog
    ids, feats, labels = [], [], []
    for p in paths:
        rec = cat.get(path=os.path.abspath(os.fspath(p)), with_feature=True)
        if rec is None:
            raise InvalidRequest(f"{p} is not in the collection; index it first or search by file")
        if rec.status != "ok":
            raise InvalidRequest(f"{p} is in the collection but could not be indexed: {rec.error}")
        if rec.feature is None or rec.feature.shape != (cat.dim,):
            raise InvalidRequest(f"{p} (image id {rec.id}) has a damaged stored feature; "
                                 "`cbir remove` it and index it again, or search by file")
        ids.append(rec.id)
        feats.append(rec.feature)
        labels.append(rec.labels)
    vec = l2_normalize(np.mean(np.stack(feats), axis=0, keepdims=True))[0]
    reg = None
    if regions:
        from cbir.codes import stored_regions

        reg = stored_regions(collection, np.asarray(ids)).astype(np.float32).mean(axis=0, keepdims=True)
    return Query(vector=vec, labels=labels, exclude=set(ids) if exclude_self else set(), regions=reg)


def search(collection: Collection, query: Query, *, k: int = 10, min_similarity: float = 0.0,
           index_kind: str | None = None, rerank: str = "none", rerank_depth: int = 100,
           min_match: float = 0.0, filters: Filters | None = None, **search_kw) -> list[Hit]:
    """Top-k hits for ``query``, best first, never including removed images.

    rerank: ``qe`` (alpha query expansion) or ``kr`` (k-reciprocal) re-orders the first
    ``rerank_depth`` candidates by their stored features (:mod:`cbir.rerank`); each hit keeps
    its own cosine, distance and similarity to the query. filters: only images that pass
    (:class:`~cbir.store.photometa.Filters`): up to EXACT_FILTER_LIMIT of them are searched
    exactly over their stored features; more, through the index with a growing post-filter.
    """
    from cbir.rerank import METHODS

    if rerank not in METHODS:
        raise InvalidRequest(f"unknown re-ranking {rerank!r}; choose from {', '.join(METHODS)}")
    if rerank != "none" and rerank_depth < 1:
        raise InvalidRequest(f"the re-ranking depth must be >= 1, got {rerank_depth}")
    k = check_k(k)
    if not 0.0 <= min_similarity <= 1.0:
        raise InvalidRequest(f"--min-similarity must be between 0 and 1, got {min_similarity}")
    if not 0.0 <= min_match <= 100.0:
        raise InvalidRequest(f"--min-match must be between 0 and 100, got {min_match}")
    idx = collection.index(index_kind)
    if len(idx) == 0:
        return []
    kw = dict(search_kw)
    if idx.name in ("class-partitioned", "milvus"):  # milvus uses them with n_partitions only
        model = collection.partition_model()
        if model is not None:
            from cbir.train.apply import query_probs

            probs = query_probs(model, query)[0]
        else:
            probs = query.class_probs(collection.extractor.class_names)
        if probs is not None:
            kw.setdefault("query_probs", probs[None, :])
    need = max(k, rerank_depth if rerank != "none" else 0)
    allowed = None
    if filters is not None and filters.active:
        from cbir.store.photometa import matching_ids

        allowed = matching_ids(collection.catalog, filters)
        if len(allowed) <= EXACT_FILTER_LIMIT:
            pairs = _exact_pairs(collection, query, allowed, need)
            if rerank != "none" and len(pairs) > 1:
                pairs = _rerank(collection, query, pairs, rerank, rerank_depth)
            return build_hits(collection, [(i, cos, None) for cos, i in pairs], k=k,
                              min_similarity=min_similarity, min_match=min_match)
    # never ask for more than the index holds: -k 1000000000 must not allocate gigabytes
    want = min(need + len(query.exclude), len(idx))
    while True:
        scores, ids = idx.search(query.vector[None, :].astype(np.float32), want, **kw)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True)
                 if i >= 0 and int(i) not in query.exclude]
        if allowed is None:
            break
        keep = np.isin(np.array([i for _, i in pairs], dtype=np.int64), allowed)
        pairs = [p for p, ok in zip(pairs, keep, strict=True) if ok]
        if len(pairs) >= need or want >= len(idx):
            break
        want = min(want * 4, len(idx))  # too few passed the filter: look deeper
    if rerank != "none" and len(pairs) > 1:
        pairs = _rerank(collection, query, pairs, rerank, rerank_depth)
    return build_hits(collection, [(i, cos, None) for cos, i in pairs], k=k,
                      min_similarity=min_similarity, min_match=min_match)


#: a filtered search over at most this many images is exact (their stored features)
EXACT_FILTER_LIMIT = 20_000


def _exact_pairs(collection: Collection, query: Query, allowed: np.ndarray,
                 need: int) -> list[tuple[float, int]]:
    """The best ``need`` (cosine, id) among ``allowed`` ids, by brute force, in chunks."""
    best_s: list[np.ndarray] = []
    best_i: list[np.ndarray] = []
    q = np.asarray(query.vector, dtype=np.float32)
    ids_all = np.asarray([i for i in allowed.tolist() if i not in query.exclude], dtype=np.int64)
    for lo in range(0, len(ids_all), 4096):
        got, feats = collection.catalog.features(ids_all[lo:lo + 4096].tolist())
        if not len(got):
            continue
        s = l2_normalize(np.asarray(feats, dtype=np.float32)) @ q
        best_s.append(s)
        best_i.append(np.asarray(got, dtype=np.int64))
    if not best_s:
        return []
    s = np.concatenate(best_s)
    ids = np.concatenate(best_i)
    order = np.lexsort((ids, -s))[:need]
    return [(float(s[j]), int(ids[j])) for j in order]


def _rerank(collection: Collection, query: Query, pairs: list[tuple[float, int]], method: str,
            depth: int) -> list[tuple[float, int]]:
    """The first ``depth`` (cosine, id) pairs re-ordered by ``method``; the rest unchanged."""
    from cbir.rerank import RerankParams, rerank

    head, tail = pairs[:depth], pairs[depth:]
    got, feats = collection.catalog.features([i for _, i in head])
    pos = {int(i): n for n, i in enumerate(got)}
    head = [p for p in head if p[1] in pos]  # a damaged feature: dropped, as build_hits would
    if len(head) < 2:
        return head + tail
    x = np.asarray(feats[[pos[i] for _, i in head]], dtype=np.float32)
    new = rerank(method, query.vector, x, RerankParams(depth=depth))
    order = np.argsort(-new, kind="stable")
    return [head[j] for j in order] + tail


def build_hits(collection: Collection, ranked: Sequence[tuple[int, float, int | None]], *,
               k: int, min_similarity: float = 0.0, min_match: float = 0.0) -> list[Hit]:
    """Ranked (id, cosine, hamming or None) -> up to k Hits, skipping ids no longer 'ok'
    (and hits below ``min_similarity`` or, 0-100, ``min_match``)."""
    recs = collection.catalog.records([i for i, _, _ in ranked])
    damaged = set(collection.catalog.damaged_among(list(recs)))
    baseline = match_baseline(collection) if ranked else 0.0
    hits: list[Hit] = []
    for i, cos, ham in ranked:
        rec = recs.get(i)
        if rec is None or rec.status != "ok" or i in damaged:  # removed since the index was synced
            continue
        cos = min(1.0, max(-1.0, cos))
        d = distance_from_cosine(cos)
        sim = 1.0 / (1.0 + d)
        match = match_score(cos, baseline)
        if sim < min_similarity or match < min_match:
            continue
        hits.append(Hit(rank=len(hits) + 1, id=i, path=rec.path, distance=round(d, 6),
                        similarity=round(sim, 6), cosine=round(cos, 6), labels=rec.labels,
                        tags=rec.tags, hamming=ham, match=match))
        if len(hits) == k:
            break
    return hits
