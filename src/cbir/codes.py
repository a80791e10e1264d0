"""Learned binary codes of a collection: train a hasher, store its codes, search in Hamming space.

```
<collection>/hashers/<name>.safetensors   the trained hasher (weights + JSON metadata)
catalog table ``codes``                    one packed uint8 code per (hasher, image)
```

Codes of images indexed after training are computed on the next search (from the
stored features, so no image is decoded again); codes of removed images go with them.
Weak supervision comes from the images' user tags, or, for images without any, from
the backbone's own ImageNet labels ("machine tags"), as the hashing issue asks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.collection import Collection
from cbir.errors import InvalidRequest
from cbir.search import Hit, Query, build_hits

#: hashers whose fit() learns from tags, and the ones that need region features
TAG_METHODS = {"wdht", "ws-dsh", "ws-hashnet", "idea", "idea-l", "idea-a"}
REGION_METHODS = {"idea", "idea-l", "idea-a"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hashers_dir(col: Collection) -> Path:
    return col.directory / "hashers"


def hasher_path(col: Collection, name: str) -> Path:
    if not _NAME.match(name):
        raise InvalidRequest(f"hasher name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return hashers_dir(col) / f"{name}.safetensors"


def list_hashers(col: Collection) -> list[dict[str, Any]]:
    from cbir.hashing.base import read_hasher_header

    out = []
    for p in sorted(hashers_dir(col).glob("*.safetensors")):
        try:
            head = read_hasher_header(p)
        except Exception as e:  # noqa: BLE001 — list what can be read, flag the rest
            out.append({"name": p.stem, "error": str(e)})
            continue
        ids, _ = col.catalog.codes(p.stem)
        out.append({"name": p.stem, "method": head.get("name"), "bits": head.get("bits"),
                    "images_with_codes": len(ids), "file_bytes": p.stat().st_size})
    return out


def machine_tags(labels: list[tuple[str, float]], min_prob: float = 0.05) -> list[str]:
    """An image's ImageNet top-5 label names with probability >= min_prob, as tags."""
    return [name for name, prob in labels if prob >= min_prob]


def collection_tags(col: Collection, ids: np.ndarray, source: str = "auto") -> list[list[str]]:
    """Cleaned tags per id: ``user`` tags, ``machine`` tags, or ``auto`` (user, else machine)."""
    from cbir.concepts.tags import clean_tags

    if source not in {"auto", "user", "machine"}:
        raise InvalidRequest(f"tag source must be auto, user or machine; got {source!r}")
    recs = col.catalog.records(ids)
    out = []
    for i in ids:
        rec = recs[int(i)]
        user = clean_tags(rec.tags) if source != "machine" else []
        if not user and source != "user":
            user = clean_tags(machine_tags(rec.labels))
        out.append(user)
    return out


def stored_regions(col: Collection, ids: np.ndarray) -> np.ndarray:
    """(n, 49, c) float16 region features of ``ids``; a clear error if any were not stored."""
    found = col.catalog.regions(ids)
    missing = [int(i) for i in ids if int(i) not in found]
    if missing:
        raise InvalidRequest(
            f"{len(missing)} of {len(ids)} images have no stored region features; re-index with "
            "`cbir index FOLDER --regions` (this method learns from 7x7 region features)")
    return np.stack([found[int(i)] for i in ids])


@dataclass
class TrainedCodes:
    name: str
    method: str
    bits: int
    images: int
    seconds: float


def train(col: Collection, method: str, bits: int, *, name: str | None = None,
          tag_source: str = "auto", vectors: str = "glove",
          progress: Callable[[str], None] | None = None, **params: Any) -> TrainedCodes:
    """Fit ``method`` on the collection's stored features (and tags), save it, store all codes."""
    from cbir.hashing import HASHERS, check_bits, create_hasher

    bits = check_bits(bits)
    if method not in HASHERS:
        raise InvalidRequest(f"unknown hashing method {method!r}; choose one of: "
                             + ", ".join(HASHERS.names()))
    name = name or f"{method}-{bits}"
    path = hasher_path(col, name)
    t0 = time.perf_counter()
    ids, feats = col.catalog.features()
    if len(ids) < 2:
        raise InvalidRequest("the collection needs at least 2 indexed images to learn codes")
    sup: dict[str, Any] = {}
    if method in TAG_METHODS:
        from cbir.concepts.tag_vectors import create_tag_vectors

        tags = collection_tags(col, ids, tag_source)
        if not any(tags):
            raise InvalidRequest("no image has tags to learn from; add sidecar tags or use "
                                 "--tags machine (ImageNet labels) or an unsupervised method")
        sup["tags"] = tags
        sup["tag_vectors"] = create_tag_vectors(vectors, corpus=tags)
    if method in REGION_METHODS:
        sup["regions"] = stored_regions(col, ids)
    if progress:
        progress(f"training {method} ({bits} bits) on {len(ids)} images")
    hasher = create_hasher(method, bits, **params).fit(feats, **sup)
    hashers_dir(col).mkdir(exist_ok=True)
    with col.writer_lock():
        hasher.save(path)
        col.catalog.drop_codes(name)
        codes = _encode(hasher, method, feats, sup.get("regions"))
        col.catalog.put_codes(name, ids, codes)
    return TrainedCodes(name, method, bits, len(ids), time.perf_counter() - t0)


def _encode(hasher: Any, method: str, feats: np.ndarray, regions: np.ndarray | None) -> np.ndarray:
    if method in REGION_METHODS:
        return hasher.encode(feats, regions=regions)
    return hasher.encode(feats)


def load(col: Collection, name: str) -> Any:
    from cbir.hashing import load_hasher

    path = hasher_path(col, name)
    if not path.exists():
        known = ", ".join(h["name"] for h in list_hashers(col)) or "none yet"
        raise InvalidRequest(f"no hash codes named {name!r} in this collection (trained: {known}); "
                             "train them with `cbir hash train`")
    return load_hasher(path)


def sync_codes(col: Collection, name: str, hasher: Any) -> tuple[np.ndarray, np.ndarray]:
    """Encode images indexed since training; returns all (ids, codes)."""
    missing = col.catalog.ids_without_codes(name)
    if len(missing):
        method = getattr(hasher, "name", "")
        ids, feats = col.catalog.features(missing)
        regions = stored_regions(col, ids) if method in REGION_METHODS else None
        col.catalog.put_codes(name, ids, _encode(hasher, method, feats, regions))
    return col.catalog.codes(name)


def hamming_search(col: Collection, name: str, query: Query, *, k: int = 10, rerank: int = 0,
                   query_regions: np.ndarray | None = None, min_similarity: float = 0.0
                   ) -> list[Hit]:
    """Top-k by Hamming distance; with ``rerank`` N, the N nearest codes re-scored by cosine."""
    from cbir.hashing import create_binary_index

    hasher = load(col, name)
    method = getattr(hasher, "name", "")
    if method in REGION_METHODS and query_regions is None:
        raise InvalidRequest(f"{name} needs the query's region features")
    ids, codes = sync_codes(col, name, hasher)
    if len(ids) == 0:
        return []
    q = query.vector[None, :].astype(np.float32)
    qcode = hasher.encode(q, regions=query_regions) if method in REGION_METHODS else hasher.encode(q)
    index = create_binary_index("binary-flat", hasher.bits)
    index.add(ids, codes)
    want = max(k, rerank) + len(query.exclude)
    dist, got = index.search(qcode, want)
    pairs = [(int(d), int(i)) for d, i in zip(dist[0], got[0], strict=True)
             if i >= 0 and int(i) not in query.exclude]
    # the stored float features give every hit its cosine, and the re-ranking its order
    order_ids, feats = col.catalog.features([i for _, i in pairs])
    cos = {int(i): float(f @ query.vector) for i, f in zip(order_ids, feats, strict=True)}
    if rerank:
        pairs = sorted(pairs[:rerank], key=lambda p: -cos.get(p[1], -2.0))
    return build_hits(col, [(i, cos[i], ham) for ham, i in pairs if i in cos], k=k,
                      min_similarity=min_similarity)

