"""Duplicate and near-duplicate images in a collection (``cbir duplicates``). Nothing is deleted.

* exact duplicates: rows with the same content hash (the catalog's sha256);
* near duplicates: pairs whose stored features have cosine similarity >= ``threshold``
  (the features are L2-normalised, so this is their inner product). Resized, re-encoded,
  cropped, colour-shifted or slightly rotated copies of one photo score high.

Pairs come from the collection's vector index (a k-NN search with small ``k`` for every
image, in chunks), never an n x n matrix, so 100k images stay cheap. Images linked by pairs
are grouped into connected components (union-find), and each group gets a suggested keeper:
the largest resolution, then the largest file, then the oldest modification time.

The default threshold comes from bench/bench_duplicates.py (Wang 1k with five transformed
copies of 200 photos, EfficientNet-Lite0 features); see the README's "Duplicates".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.errors import InvalidRequest

#: cosine similarity of the L2-normalised features above which two images are near duplicates
#: (from the sweep in bench/bench_duplicates.py: precision 0.98, recall 0.97 on Wang copies)
DEFAULT_THRESHOLD = 0.90
#: neighbours asked of the index per image: a photo rarely has more near copies than this
DEFAULT_K = 10
#: HNSW candidate list of the scan: near copies sit next to their photo in the graph, so a short
#: list finds them; bench/bench_duplicates_100k.py found the same pairs at 16 as at the search
#: default of 96, and 32 scans 100k images 3-4x faster than 96
SCAN_EF = 32
#: an index that keeps 8-bit vectors (HNSW int8) is scanned with its approximate scores; pairs
#: within this margin below the threshold are then checked with the exact features. Its 8-bit
#: scores were off by at most 0.0021 on 1280-d CNN-like features (bench_duplicates_100k data;
#: < 0.02 on the contract suite's 64-d gaussians)
APPROX_MARGIN = 0.02
_CHUNK = 4096


@dataclass
class Member:
    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    sha256: str | None
    #: cosine similarity to the group's keeper (1.0 for the keeper itself)
    similarity: float = 1.0
    keeper: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "keeper": self.keeper, "similarity": round(self.similarity, 4),
                "width": self.width, "height": self.height, "size": self.size,
                "mtime_ns": self.mtime_ns, "sha256": self.sha256}


@dataclass
class Group:
    #: 1-based group number, groups sorted by size (largest first), then by keeper path
    number: int
    #: "exact" when all members have the same content, else "near"
    kind: str
    members: list[Member] = field(default_factory=list)

    @property
    def keeper(self) -> Member:
        return next(m for m in self.members if m.keeper)

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.number, "kind": self.kind, "keeper": self.keeper.path,
                "members": [m.as_dict() for m in self.members]}


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = parent.setdefault(x, x)
        while root != parent[root]:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def components(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of 2 or more ids) of the graph with edges ``pairs``."""
    uf = UnionFind()
    for a, b in pairs:
        uf.union(int(a), int(b))
    return uf.groups()


def check_threshold(threshold: float) -> float:
    if not -1.0 <= threshold <= 1.0:
        raise InvalidRequest(f"threshold is a cosine similarity between -1 and 1; got {threshold}")
    return float(threshold)


def similar_pairs(col: Any, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K,
                  allowed: np.ndarray | None = None) -> dict[tuple[int, int], float]:
    """{(id_a, id_b) with id_a < id_b: cosine} for pairs with cosine >= ``threshold``.

    Each image's ``k`` nearest neighbours come from the collection's vector index (exact below
    20k images, HNSW above), so the cost grows like n * k, not n * n.
    """
    check_threshold(threshold)
    idx = col.index()
    if idx.name == "class-partitioned":  # searches only the predicted classes: use a plain one
        from cbir.index import choose_index

        idx = col.index(choose_index(len(idx)), persist=False)
    ids_all = col.catalog.ok_ids() if allowed is None else np.asarray(allowed, dtype=np.int64)
    kk = min(k + 1, len(idx))
    pairs: dict[tuple[int, int], float] = {}
    if kk < 2:
        return pairs
    backend = getattr(idx, "base", idx)  # (the backend under a service's layered view)
    knobs = getattr(backend, "_search_kw", ())
    scan: dict[str, Any] = {"ef_search": max(SCAN_EF, kk)} if "ef_search" in knobs else {}
    # re-scoring every candidate of every image would read ~2 k rows per image from SQLite
    # (2x slower at 100k): scan the 8-bit scores, check the few pairs kept exactly
    approx = "rescore" in knobs and getattr(backend, "dtype", "") == "int8"
    if approx:
        scan["rescore"] = False
    cut = threshold - APPROX_MARGIN if approx else threshold
    for start in range(0, len(ids_all), _CHUNK):
        ids, feats = col.catalog.features(ids_all[start:start + _CHUNK])
        if not len(ids):
            continue
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        feats = feats / np.maximum(norms, 1e-12)
        scores, nbrs = idx.search(feats, kk, **scan)
        rows, cols = np.nonzero((scores >= cut) & (nbrs >= 0))
        found: dict[tuple[int, int], tuple[int, float]] = {}
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            a, b = int(ids[r]), int(nbrs[r, c])
            if a == b or (allowed is not None and not _member(allowed, b)):
                continue
            found[(a, b)] = (r, float(scores[r, c]))
        if approx and found:
            found = _exact_scores(col, feats, found)
        for (a, b), (_, s) in found.items():
            if s < threshold:
                continue
            key = (a, b) if a < b else (b, a)
            if s > pairs.get(key, -2.0):
                pairs[key] = s
    return pairs


def _exact_scores(col: Any, feats: np.ndarray, found: dict[tuple[int, int], tuple[int, float]]
                  ) -> dict[tuple[int, int], tuple[int, float]]:
    """The candidate pairs' cosines from the catalog's features (the queries' are ``feats``)."""
    others = np.unique(np.fromiter((b for _, b in found), dtype=np.int64, count=len(found)))
    got, vecs = col.catalog.features(others)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.maximum(norms, 1e-12)
    row = {int(i): j for j, i in enumerate(got.tolist())}
    return {(a, b): (r, float(feats[r] @ vecs[row[b]])) for (a, b), (r, _) in found.items()
            if b in row}


def exact_groups(col: Any) -> list[list[int]]:
    """Ids of 'ok' rows sharing one sha256, one list per content seen more than once."""
    rows = col.catalog.db.execute(
        "SELECT sha256, id FROM images WHERE status='ok' AND sha256 IS NOT NULL AND sha256 IN "
        "(SELECT sha256 FROM images WHERE status='ok' AND sha256 IS NOT NULL "
        " GROUP BY sha256 HAVING COUNT(*) > 1) ORDER BY sha256, id").fetchall()
    out: dict[str, list[int]] = {}
    for sha, rid in rows:
        out.setdefault(sha, []).append(int(rid))
    return list(out.values())


def keeper_key(m: Member) -> tuple:
    """Sort key, best first: most pixels, then the largest file, then the oldest, then the path."""
    pixels = (m.width or 0) * (m.height or 0)
    return (-pixels, -m.size, m.mtime_ns, m.path)


def _member(sorted_ids: np.ndarray, i: int) -> bool:
    j = int(np.searchsorted(sorted_ids, i))
    return j < len(sorted_ids) and int(sorted_ids[j]) == i


def find_duplicates(col: Any, threshold: float = DEFAULT_THRESHOLD, *, k: int = DEFAULT_K,
                    near: bool = True, filters: Any | None = None) -> list[Group]:
    """Groups of exact and (with ``near``) near-duplicate images, each with a suggested keeper;
    with ``filters`` (:class:`~cbir.store.photometa.Filters`) among the images that pass only."""
    check_threshold(threshold)
    allowed = None
    if filters is not None and filters.active:
        from cbir.store.photometa import matching_ids

        allowed = matching_ids(col.catalog, filters)
    edges: list[tuple[int, int]] = []
    for g in exact_groups(col):
        if allowed is not None:
            g = [i for i in g if _member(allowed, i)]
        edges += [(g[0], other) for other in g[1:]]
    if near:
        edges += list(similar_pairs(col, threshold, k, allowed=allowed))
    comps = components(edges)
    if not comps:
        return []
    recs = col.catalog.records([i for c in comps for i in c])
    groups: list[Group] = []
    for comp in comps:
        members = [Member(id=i, path=recs[i].path, width=recs[i].width, height=recs[i].height,
                          size=recs[i].size, mtime_ns=recs[i].mtime_ns, sha256=recs[i].sha256)
                   for i in comp if i in recs]
        if len(members) < 2:
            continue
        members.sort(key=keeper_key)
        members[0].keeper = True
        fids, feats = col.catalog.features([m.id for m in members])
        vec = dict(zip(fids.tolist(), feats, strict=True))
        keep = vec.get(members[0].id)
        for m in members[1:]:
            if m.sha256 is not None and m.sha256 == members[0].sha256:
                m.similarity = 1.0
            elif keep is not None and m.id in vec:
                a, b = keep, vec[m.id]
                m.similarity = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            else:
                m.similarity = float("nan")
        kind = "exact" if len({m.sha256 for m in members}) == 1 and members[0].sha256 else "near"
        groups.append(Group(number=0, kind=kind, members=members))
    groups.sort(key=lambda g: (-len(g.members), g.members[0].path))
    for n, g in enumerate(groups, 1):
        g.number = n
    return groups
