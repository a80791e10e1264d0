"""Search by words with no training: built-in concepts scored from stored class probabilities.

Every image indexed with the ImageNet backbone keeps its top class probabilities
(``Catalog.class_probs``, schema 4; images indexed before that fall back to their stored
top-5 labels). A query's words resolve to built-in concepts (cbir.concepts.builtin: ImageNet
classes and their WordNet hypernyms), an image's evidence for a concept is its probability
mass on the concept's classes, and images are ranked by the geometric mean of the evidence
over the query's concepts: an image must show ALL of them to rank high, and one concept
with ~0 evidence sinks it whatever the others say. The sparse (images x 1000) matrix is
built once per catalog generation and kept, so a query is one sparse product.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

BUILTIN_MODEL = "builtin"
N_CLASSES = 1000

_CACHE: dict[str, tuple[int, Any]] = {}
_CACHE_LOCK = threading.Lock()


def _class_index() -> dict[str, int]:
    from cbir.extract.efficientnet import imagenet_class_names

    out: dict[str, int] = {}
    for i, name in enumerate(imagenet_class_names()):
        out.setdefault(name, i)  # two names repeat ("crane", "maillot"): the first is kept
    return out


def class_prob_matrix(catalog: Any) -> tuple[np.ndarray, Any]:
    """(ids int64 (n,), scipy CSR (n x 1000) float32) of the catalog's ok images, cached per
    catalog generation. Rows without stored probabilities use their top-5 labels."""
    import scipy.sparse as sp

    try:  # a catalog deleted and made again at the same path starts its generations anew
        st = os.stat(catalog.path)
        key = f"{catalog.path}:{st.st_dev}:{st.st_ino}"
    except OSError:
        key = str(catalog.path)
    gen = int(catalog.generation())
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == gen:
            return hit[1]
    ids, blobs, labels = catalog.class_probs()
    from cbir.store.catalog import CLASS_PROBS_K, unpack_class_probs

    width = 4 * CLASS_PROBS_K
    if blobs and all(b is not None and len(b) == width for b in blobs):  # the usual case, vectorised
        raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), width)
        idx = raw[:, : 2 * CLASS_PROBS_K].copy().view("<u2").astype(np.int32)
        p = raw[:, 2 * CLASS_PROBS_K:].copy().view("<f2").astype(np.float32)
        keep = idx < N_CLASSES
        matrix = sp.csr_matrix((p[keep], idx[keep], np.concatenate([[0], np.cumsum(keep.sum(1))])),
                               shape=(len(ids), N_CLASSES), dtype=np.float32)
        matrix.sum_duplicates()
        with _CACHE_LOCK:
            _CACHE[key] = (gen, (ids, matrix))
        return ids, matrix
    names = None
    indptr = [0]
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for blob, lab in zip(blobs, labels, strict=True):
        if blob is not None:
            idx, p = unpack_class_probs(blob)
        else:
            names = names or _class_index()
            pairs = [(names[n], float(q)) for n, q in _labels(lab) if n in names]
            idx = np.array([i for i, _ in pairs], dtype=np.int32)
            p = np.array([q for _, q in pairs], dtype=np.float32)
        keep = idx < N_CLASSES
        cols.append(idx[keep])
        vals.append(p[keep])
        indptr.append(indptr[-1] + int(keep.sum()))
    matrix = sp.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0, np.float32),
         np.concatenate(cols) if cols else np.zeros(0, np.int32), np.asarray(indptr, dtype=np.int64)),
        shape=(len(ids), N_CLASSES), dtype=np.float32)
    out = (ids, matrix)
    with _CACHE_LOCK:
        _CACHE[key] = (gen, out)
    return out


def _labels(text: str | None) -> list[tuple[str, float]]:
    try:
        data = json.loads(text or "[]")
        return [(str(n), float(q)) for n, q in data]
    except (ValueError, TypeError):
        return []


def resolve_words(query: str | Sequence[str], neighbours: Any | None = None) -> tuple[list[Any], list[str]]:
    """The query's words as built-in concepts, and the notes on how each was read."""
    from cbir.concepts.builtin import load_builtin

    bc = load_builtin()
    if neighbours is None:  # MiniLM or GloVe when installed, for words the shipped table lacks
        neighbours = _default_neighbours()
    words = bc.parse_query(query) if isinstance(query, str) else [w for q in query for w in bc.parse_query(q)]
    if not words:
        raise InvalidRequest("give at least one word to search for, e.g. \"dog\" or \"dog beach\"")
    resolved, notes = [], []
    seen: set[tuple[int, ...]] = set()
    for w in words:
        r = bc.resolve(w, neighbours=neighbours) if neighbours is not None else bc.resolve(w)
        key = tuple(r.concept_ids)
        if key in seen:
            continue
        seen.add(key)
        resolved.append(r)
        if r.note:
            notes.append(r.note)
    return resolved, notes


@functools.cache
def _default_neighbours() -> Any | None:
    from cbir.concepts.builtin import default_neighbours

    return default_neighbours()


def evidence(matrix: Any, resolved: list[Any]) -> np.ndarray:
    """(n, q) float32: each image's probability for each resolved concept, in [0, 1]."""
    from cbir.concepts.builtin import load_builtin

    bc = load_builtin()
    return np.asarray(bc.resolved_scores(matrix, resolved), dtype=np.float32)


def rank(ev: np.ndarray) -> np.ndarray:
    """(n,) scores: the geometric mean of each row's evidence (0 if any concept is absent)."""
    ev = np.clip(ev, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.exp(np.log(ev).mean(axis=1)).astype(np.float32)


def word_search(col: Any, query: str | Sequence[str], *, k: int = 20, min_score: float = 0.0,
                neighbours: Any | None = None, notes: Sequence[str] = (),
                allowed: np.ndarray | None = None) -> Any:
    """Images that show every word of ``query``, best first, by the built-in concepts
    (only ``allowed`` ids, sorted int64, when given: a search's filters)."""
    from cbir.scenes import SceneHit, SceneResult

    if k < 1:
        raise InvalidRequest(f"k must be >= 1, got {k}")
    ids, matrix = class_prob_matrix(col.catalog)
    if len(ids) == 0:
        raise InvalidRequest("the collection has no indexed image; run `cbir index FOLDER` first")
    if matrix.nnz == 0:
        raise InvalidRequest(
            f"no concept model can read this query: the images have no ImageNet class probabilities "
            f"for the built-in concepts (extractor {col.manifest.extractor!r}; they need the default "
            "efficientnet-lite0), so train a concept model on the collection's tags or folders "
            "(`cbir concepts train`)")
    resolved, found = resolve_words(query, neighbours)
    from cbir.concepts.builtin import load_builtin

    bc = load_builtin()
    ev = evidence(matrix, resolved)
    scores = rank(ev)
    if allowed is not None:
        scores = np.where(np.isin(ids, allowed), scores, 0.0)  # 0 is never a hit
    k = min(k, len(ids))
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[scores[order] > max(min_score, 0.0)]
    recs = col.catalog.records([int(ids[i]) for i in order])
    labels = [bc.label(r.concept_id) if len(r.concept_ids) == 1 else r.name
              for r in resolved]
    hits = []
    for i in order:
        rec = recs.get(int(ids[i]))
        if rec is None:  # removed meanwhile
            continue
        hits.append(SceneHit(rank=len(hits) + 1, id=int(ids[i]), path=rec.path,
                             score=round(float(scores[i]), 8),
                             evidence={lab: {"visual": round(float(ev[i, j]), 6), "text": None}
                                       for j, lab in enumerate(labels)},
                             tags=list(rec.tags)))
    return SceneResult(query=labels, notes=[*notes, *found], model=BUILTIN_MODEL, hits=hits,
                       terms=[{"word": r.word, "concept": lab, "how": r.how}
                              for r, lab in zip(resolved, labels, strict=True)])
