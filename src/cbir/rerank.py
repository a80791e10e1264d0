"""Re-ranking after the first search: alpha query expansion and k-reciprocal re-ranking.

Both work on the first search's top candidates and their stored features only, so a query
costs a few small matrix products, not a pass over the collection:

* ``qe`` — alpha query expansion (alpha-QE, Radenovic et al.): the query vector is replaced by
  the normalised sum of itself and its top ``n`` neighbours weighted by ``sim^alpha``, and the
  candidates are scored again by the new vector.
* ``kr`` — k-reciprocal re-ranking (Zhong et al., CVPR 2017) restricted to the candidate set:
  each candidate's k-reciprocal neighbours (and their half-size neighbourhoods, the paper's
  expansion) among the query and the candidates, Gaussian-weighted; the Jaccard distance of
  those neighbourhood vectors is mixed with the original distance (``lambda``).

Database-side augmentation (DBA) is in :func:`database_augmentation` for measurement; it
rewrites every stored vector, so it is not a per-query option. Measurements and the reason
for the defaults: docs/reranking.md (bench/bench_rerank.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cbir.errors import InvalidRequest

METHODS = ("none", "qe", "kr")


@dataclass(frozen=True)
class RerankParams:
    #: candidates re-scored (the first search's top ``depth``)
    depth: int = 100
    #: alpha-QE: neighbours summed and the exponent on their similarity
    qe_n: int = 10
    qe_alpha: float = 3.0
    #: k-reciprocal: neighbourhood size, expansion size, weight of the original distance
    k1: int = 20
    k2: int = 6
    lam: float = 0.3


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def alpha_qe(query: np.ndarray, candidates: np.ndarray, *, n: int = 10, alpha: float = 3.0) -> np.ndarray:
    """``(n_cand,)`` new similarities: the query expanded by its top ``n`` candidates.

    query ``(d,)`` and candidates ``(m, d)`` L2-normalised, candidates in first-search order.
    """
    q = _unit(query)
    c = _unit(candidates)
    if len(c) == 0:
        return np.zeros(0, dtype=np.float32)
    sims = c @ q
    top = np.argsort(-sims, kind="stable")[: max(0, n)]
    w = np.clip(sims[top], 0.0, None) ** alpha
    q2 = _unit(q + (w[:, None] * c[top]).sum(axis=0))
    return (c @ q2).astype(np.float32)


def k_reciprocal(query: np.ndarray, candidates: np.ndarray, *, k1: int = 20, k2: int = 6,
                 lam: float = 0.3) -> np.ndarray:
    """``(n_cand,)`` re-ranked similarities (higher is better) by k-reciprocal encoding.

    The query and the ``m`` candidates form the gallery of the paper's algorithm (so the
    cost is O(m^2 d)); distances are ``2 - 2 cos``. Returns ``-d*`` where ``d* = (1 - lam)
    Jaccard + lam d``, so the order can be compared with cosine scores.
    """
    q = _unit(query)[None, :]
    c = _unit(candidates)
    m = len(c)
    if m == 0:
        return np.zeros(0, dtype=np.float32)
    x = np.concatenate([q, c])
    n = m + 1
    dist = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None).astype(np.float64)
    dist /= max(float(dist.max()), 1e-12)
    k1 = max(1, min(k1, n - 1))
    k2 = max(1, min(k2, n))
    rank = np.argsort(dist, axis=1, kind="stable")
    rows = np.arange(n)[:, None]
    near = np.zeros((n, n), dtype=bool)  # near[i, j]: j among i's k1 + 1 nearest (itself included)
    near[rows, rank[:, : k1 + 1]] = True
    recip = near & near.T  # k-reciprocal neighbours
    half = max(1, int(round(k1 / 2)))
    near_h = np.zeros((n, n), dtype=bool)
    near_h[rows, rank[:, : half + 1]] = True
    recip_h = near_h & near_h.T
    # expansion: j's own half-size reciprocal set joins i's when j is in i's set and more than
    # 2/3 of j's set already lies in i's (the paper's rule), all pairs at once
    shared = recip_h.astype(np.int32) @ recip.T.astype(np.int32)  # [j, i] = |R_h(j) & R(i)|
    size_h = recip_h.sum(axis=1)
    joins = recip & (2 * size_h[None, :] < 3 * shared.T)  # [i, j]
    expanded = recip | ((joins.astype(np.int32) @ recip_h.astype(np.int32)) > 0)
    w = np.where(expanded, np.exp(-dist), 0.0)
    v = w / w.sum(axis=1, keepdims=True)
    if k2 > 1:  # local query expansion of the encodings
        v = v[rank[:, :k2]].mean(axis=1)
    # Jaccard distance of the query (row 0) to every candidate, through the shared entries
    mins = np.minimum(v[0][None, :], v[1:]).sum(axis=1)
    maxs = np.maximum(v[0][None, :], v[1:]).sum(axis=1)
    jac = 1.0 - mins / np.maximum(maxs, 1e-12)
    final = (1.0 - lam) * jac + lam * dist[0, 1:]
    return (-final).astype(np.float32)


def rerank(method: str, query: np.ndarray, candidates: np.ndarray,
           params: RerankParams | None = None) -> np.ndarray:
    """``(m,)`` new scores of the candidates (first-search order in, any order out); ``none``
    returns the cosine similarity itself."""
    p = params or RerankParams()
    if method not in METHODS:
        raise InvalidRequest(f"unknown re-ranking {method!r}; choose from {', '.join(METHODS)}")
    if method == "qe":
        return alpha_qe(query, candidates, n=p.qe_n, alpha=p.qe_alpha)
    if method == "kr":
        return k_reciprocal(query, candidates, k1=p.k1, k2=p.k2, lam=p.lam)
    return (_unit(candidates) @ _unit(query)).astype(np.float32)


def database_augmentation(x: np.ndarray, *, k: int = 5, alpha: float = 3.0) -> np.ndarray:
    """DBA: every vector replaced by the sim^alpha-weighted sum of itself and its ``k - 1``
    nearest neighbours, normalised (exact search; for measurement on up to ~100k vectors)."""
    import faiss

    x = _unit(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, idx = index.search(x, k)
    w = np.clip(sims, 0.0, None) ** alpha
    out = (w[:, :, None] * x[idx]).sum(axis=1)
    return _unit(out)
