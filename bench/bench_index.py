"""Benchmark every index backend on synthetic CNN-like features.

    python bench/bench_index.py [--sizes 10000,100000,1000000] [--out bench/results/index.json]
    python bench/bench_index.py --quick          # 10k vectors, 200 queries, a few settings

For each size and backend: build time (one add() of all vectors, training included),
serialized bytes per vector, one-query-at-a-time latency p50/p99 over held-out
queries, and tie-tolerant recall@10 against brute force. Prints a table to stdout,
writes JSON (progress goes to stderr).

The data imitate pooled CNN features: ``classes`` classes with a centre in a 64-d
latent space and an 8-d class-specific manifold around it; latent codes are mapped to
``dim`` dimensions by a random linear layer + ReLU (so ~58 % zeros, all entries >= 0,
random pairs have cosine ~0.3 as real post-ReLU features do), plus noise, then
L2-normalised. Local intrinsic dimension (MLE, k=20) is ~17, in the range reported for
real image descriptors, so neighbours are neither trivial nor noise. A "classifier"
(argmax of latent . centres) gives each vector a predicted class (~77 % top-1) and each
query class probabilities, for the class-partitioned backend. 1M x 1280 float32 is
5.1 GB; it is generated in chunks. Exact search is timed on ``--exact-queries`` only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cbir.index import create_index

LATENT, RANK = 64, 8
K = 10


# ------------------------------------------------------------------------------------ data


@dataclass
class FeatureModel:
    """Parameters of the synthetic feature generator (shared by database and queries)."""

    centers: np.ndarray  # (C, LATENT)
    manifolds: np.ndarray  # (C, RANK, LATENT)
    proj: np.ndarray  # (LATENT, dim)
    bias: np.ndarray  # (dim,)

    @classmethod
    def make(cls, dim: int, n_classes: int, seed: int) -> FeatureModel:
        rng = np.random.default_rng(seed)
        f32 = np.float32
        return cls(
            centers=rng.standard_normal((n_classes, LATENT)).astype(f32),
            manifolds=(rng.standard_normal((n_classes, RANK, LATENT)) / np.sqrt(RANK)).astype(f32),
            proj=(rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(f32),
            bias=(-0.3 + 0.2 * rng.standard_normal(dim)).astype(f32),
        )

    def sample(
        self, n: int, seed: int, chunk: int = 50_000
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features (n, dim) float32 unit rows, predicted class (n,) int64, logits (n, C) float32)."""
        rng = np.random.default_rng(seed)
        dim, n_classes = self.proj.shape[1], self.centers.shape[0]
        x = np.empty((n, dim), dtype=np.float32)
        logits = np.empty((n, n_classes), dtype=np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            c = rng.integers(0, n_classes, m)
            u = 2.0 * rng.standard_normal((m, RANK)).astype(np.float32)
            z = self.centers[c] + np.einsum("nr,nrl->nl", u, self.manifolds[c])
            z += 1.0 * rng.standard_normal((m, LATENT)).astype(np.float32)
            h = z @ self.proj + self.bias
            h += 0.3 * rng.standard_normal((m, dim)).astype(np.float32)
            np.maximum(h, 0, out=h)
            h /= np.linalg.norm(h, axis=1, keepdims=True)
            x[start : start + m] = h
            logits[start : start + m] = z @ self.centers.T
        return x, logits.argmax(1).astype(np.int64), logits


def softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# ------------------------------------------------------------------------------- backends


@dataclass
class Config:
    label: str
    backend: str
    params: dict[str, Any]
    settings: list[dict[str, Any]]  # search keywords, one table row each
    quick: list[dict[str, Any]] = field(default_factory=list)
    needs_classes: bool = False


CONFIGS = [
    Config("exact", "exact", {}, [{}]),
    Config("ivf", "ivf", {}, [{"nprobe": p} for p in (8, 16, 32, 64)], [{"nprobe": 16}]),
    Config("ivf-pq", "ivf", {"pq_m": 64, "refine": True},
           [{"nprobe": 16, "k_factor": 4}, {"nprobe": 32, "k_factor": 8}],
           [{"nprobe": 16, "k_factor": 4}]),
    Config("hnsw", "hnsw", {"M": 32, "ef_construction": 80},
           [{"ef_search": e} for e in (32, 64, 128, 256)], [{"ef_search": 64}]),
    Config("class-partitioned", "class-partitioned", {},
           [{"n_partitions": 1}, {"n_partitions": 3}], needs_classes=True),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tolerant_recall(q: np.ndarray, x: np.ndarray, found: np.ndarray, kth: np.ndarray) -> float:
    """Share of returned ids (= rows of x) whose true score >= true k-th best - 1e-5."""
    ok = found >= 0
    true = np.einsum("qd,qkd->qk", q, x[np.where(ok, found, 0)])
    return float(((true >= kth[:, None] - 1e-5) & ok).sum() / found.size)


def run_size(n: int, args: argparse.Namespace, configs: list[Config]) -> list[dict[str, Any]]:
    model = FeatureModel.make(args.dim, args.classes, seed=args.seed)
    t = time.perf_counter()
    x, classes, _ = model.sample(n, seed=args.seed + 1)
    q, _, q_logits = model.sample(args.queries, seed=args.seed + 2)
    probs = softmax(q_logits)
    ids = np.arange(n, dtype=np.int64)  # id == row, so recall can look vectors up
    log(f"n={n}: generated {x.nbytes / 2**30:.1f} GiB in {time.perf_counter() - t:.0f}s")
    t = time.perf_counter()
    gt_scores, _ = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    kth = gt_scores[:, K - 1]
    log(f"n={n}: ground truth in {time.perf_counter() - t:.0f}s")

    rows = []
    for cfg in configs:
        log(f"n={n}: building {cfg.label} {cfg.params}")
        index = create_index(cfg.backend, args.dim, **cfg.params)
        add_kw = {"classes": classes} if cfg.needs_classes else {}
        t = time.perf_counter()
        index.add(ids, x, **add_kw)
        build_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory(dir=args.tmp) as td:
            path = Path(td) / "index.cbir"
            t = time.perf_counter()
            index.save(path)
            save_s = time.perf_counter() - t
            size = path.stat().st_size
        note = ""
        if cfg.backend == "ivf":
            note = f"nlist={index.current_nlist}" if index.is_trained else "untrained: exact scan"
        log(f"n={n}: {cfg.label} built in {build_s:.1f}s, {size / n:.0f} B/vector; {note}")
        settings = (cfg.quick or cfg.settings[:1]) if args.quick else cfg.settings
        for kw in settings:
            search_kw = {**kw, **({"query_probs": probs} if cfg.needs_classes else {})}
            for i in range(min(10, len(q))):  # warm-up
                index.search(q[i : i + 1], K, **{**search_kw, **_row(search_kw, i)})
            # exact search is slow and its answers are the ground truth: time fewer queries
            nq = min(len(q), args.exact_queries) if cfg.backend == "exact" else len(q)
            lat = np.empty(nq)
            found = np.empty((nq, K), dtype=np.int64)
            scanned = np.zeros(nq)
            for i in range(nq):
                one = {**search_kw, **_row(search_kw, i)}
                t = time.perf_counter()
                _, found[i] = index.search(q[i : i + 1], K, **one)
                lat[i] = time.perf_counter() - t
                if cfg.needs_classes:
                    scanned[i] = index.last_scanned[0]
            row = {
                "n": n, "backend": cfg.label, "params": cfg.params, "search": kw,
                "build_s": round(build_s, 2), "save_s": round(save_s, 2),
                "bytes_per_vector": round(size / n, 1),
                "p50_ms": round(1e3 * float(np.percentile(lat, 50)), 3),
                "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 3),
                "recall_at_10": round(tolerant_recall(q[:nq], x, found, kth[:nq]), 4),
                "timed_queries": nq,
                "scanned_frac": round(float(scanned.mean()) / n, 4) if cfg.needs_classes else None,
                "note": note,
            }
            rows.append(row)
            log(f"  {fmt_row(row)}")
        del index
        gc.collect()
    del x
    gc.collect()
    return rows


def _row(search_kw: dict[str, Any], i: int) -> dict[str, Any]:
    """Slice per-query keywords (query_probs) down to query i."""
    if "query_probs" in search_kw:
        return {"query_probs": search_kw["query_probs"][i : i + 1]}
    return {}


HEADER = (f"{'n':>9} {'backend':<18} {'search':<26} {'build s':>8} {'B/vec':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'R@10':>6}  note")


def fmt_row(r: dict[str, Any]) -> str:
    search = ",".join(f"{k}={v}" for k, v in r["search"].items()) or "-"
    note = r["note"]
    if r.get("scanned_frac") is not None:
        note = f"scans {100 * r['scanned_frac']:.1f}%"
    return (f"{r['n']:>9} {r['backend']:<18} {search:<26} {r['build_s']:>8.1f} "
            f"{r['bytes_per_vector']:>7.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['recall_at_10']:>6.3f}  {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000",
                    help="comma-separated collection sizes")
    ap.add_argument("--out", type=Path, default=Path("bench/results/index.json"))
    ap.add_argument("--quick", action="store_true",
                    help="10k vectors, 200 queries, one search setting per backend")
    ap.add_argument("--backends", default=",".join(c.label for c in CONFIGS),
                    help="comma-separated subset of: " + ", ".join(c.label for c in CONFIGS))
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (timed one by one)")
    ap.add_argument("--exact-queries", type=int, default=200,
                    help="queries timed for the exact backend (0.3 us per vector each)")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="faiss OpenMP threads (0 = leave faiss's default)")
    ap.add_argument("--tmp", default=None, help="directory for the temporary saved indexes")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries = "10000", min(args.queries, 200)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    wanted = set(args.backends.split(","))
    configs = [c for c in CONFIGS if c.label in wanted]
    if unknown := wanted - {c.label for c in CONFIGS}:
        ap.error(f"unknown backends {sorted(unknown)}")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    meta = {
        "command": " ".join(["python", *sys.argv]), "faiss": faiss.__version__,
        "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "omp_threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "dim": args.dim, "classes": args.classes, "queries": args.queries, "k": K,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": os.getloadavg(),
    }
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        rows += run_size(n, args, configs)
        meta["loadavg_end"] = os.getloadavg()
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(HEADER)
    for r in rows:
        print(fmt_row(r))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
