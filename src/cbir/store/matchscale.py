"""The match scale's zero: the median cosine of two random photos of a collection.

``cbir.search`` turns a hit's cosine into a 0-100 match with it. Measuring it reads up to
MATCH_SAMPLE stored features (tens of milliseconds, most of a cold 10k-image CLI search), so a
writer that has just synced the index stores it in the catalog's meta table next to the
generation it was measured at; a search at that generation only reads it back. The sample
is drawn by a generator seeded with the generation: the same answer until the collection
changes, whoever computes it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: random stored features the zero is estimated from
MATCH_SAMPLE = 600
#: catalog meta key holding {"generation": g, "baseline": b}
META_KEY = "match_baseline"


def compute(cat: Any) -> float:
    """The median pairwise cosine of a seeded sample of the catalog's ok features (0 if < 2)."""
    gen = int(cat.generation())
    top = cat.db.execute("SELECT max(id) FROM images").fetchone()[0] or 0
    if not top:
        return 0.0
    rng = np.random.default_rng(gen)
    want = (np.arange(1, top + 1) if top <= MATCH_SAMPLE  # a small collection: every image
            # sorted(set()): what np.unique gives, without importing numpy.ma (slow, cold)
            else np.array(sorted(set(rng.integers(1, top + 1, size=4 * MATCH_SAMPLE).tolist())),
                          dtype=np.int64))
    feats = sample_features(cat, want[: 4 * MATCH_SAMPLE].tolist())[:MATCH_SAMPLE]
    if len(feats) < 2:
        return 0.0
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    sims = (x @ x.T)[np.triu_indices(len(x), 1)]
    # np.median's value, without the numpy.ma import np.median makes (~60 ms cold)
    lo, hi = (sims.size - 1) // 2, sims.size // 2
    part = np.partition(sims, [lo, hi])
    return float(np.clip(np.mean(part[[lo, hi]]), 0.0, 0.99))


def sample_features(cat: Any, ids: list[int]) -> np.ndarray:
    """float32 features of these ok ids, read directly: a damaged row is simply not sampled (the
    search that asked already names it once; the match scale must not say it again)."""
    rows = []
    for lo in range(0, len(ids), 500):
        chunk = ids[lo:lo + 500]
        rows += cat.db.execute(
            f"SELECT feature FROM images WHERE status='ok' AND id IN ({','.join('?' * len(chunk))})",
            chunk).fetchall()
    want = 2 * cat.dim
    vecs = [np.frombuffer(b, dtype="<f2") for (b,) in rows if b is not None and len(b) == want]
    return np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, cat.dim), np.float32)


def stored(cat: Any, generation: int) -> float | None:
    """The zero a writer stored for exactly this generation, else None."""
    try:
        d = json.loads(cat.get_meta(META_KEY) or "null")
        if isinstance(d, dict) and int(d.get("generation", -1)) == generation:
            b = float(d["baseline"])
            return b if 0.0 <= b <= 0.99 else None
    except (ValueError, TypeError, KeyError):
        pass
    return None


def store(cat: Any) -> float:
    """Measure the zero at the catalog's current generation and keep it (the caller writes)."""
    gen = int(cat.generation())
    base = compute(cat)
    cat.set_meta(META_KEY, json.dumps({"generation": gen, "baseline": base}))
    return base
