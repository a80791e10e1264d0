"""Benchmark the binary (Hamming) index backends on random packed codes.

    python bench/bench_hamming.py [--n 1000000] [--bits 32,64,128] [--out bench/results/hamming.json]
    python bench/bench_hamming.py --quick          # 100k codes, fewer queries

For each code length and backend: build time (add() of all codes with ids 0..n-1, plus
the multi-index tables), k-NN queries/s one query at a time and in one batch, images
compared per second (n * queries / time: the scan rate a brute-force search would need
to match it), memory bytes per image (codes + ids + tables), and radius-r lookup time
per query (batched). Codes are uniform random bits; queries are database codes with one
random bit flipped, so every radius-r lookup (r >= 1) has at least one hit. Uniform
random codes are the worst case for multi-index hashing's k-NN (the 100th neighbour of
a 64-bit code among 1M lies at distance ~18, so it scans); radius lookups are its case.
Every backend's results are checked against binary-flat. Prints a table to stdout,
writes JSON (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cbir.hashing import BINARY_INDEXES, create_binary_index


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """(n, bits/8) uint8 uniform random codes (bits a multiple of 8)."""
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def make_queries(db: np.ndarray, nq: int, rng: np.random.Generator) -> np.ndarray:
    """Database codes with one random bit flipped."""
    q = db[rng.integers(0, db.shape[0], nq)].copy()
    bit = rng.integers(0, 8 * db.shape[1], nq)
    q[np.arange(nq), bit // 8] ^= (0x80 >> (bit % 8)).astype(np.uint8)
    return q


def run(bits: int, args: argparse.Namespace, backends: list[str]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed + bits)
    codes = make_codes(args.n, bits, rng)
    ids = np.arange(args.n, dtype=np.int64)
    q_batch = make_queries(codes, args.queries, rng)
    q_single = q_batch[: args.single]
    rows = []
    reference: dict[str, Any] = {}
    for name in backends:
        index = create_binary_index(name, bits)
        t = time.perf_counter()
        index.add(ids, codes)
        index.build()
        build_s = time.perf_counter() - t
        index.search(q_batch[:2], args.k)  # warm up (thread pools, caches)
        index.search_radius(q_batch[:2], args.radius)

        t = time.perf_counter()
        for i in range(len(q_single)):
            index.search(q_single[i : i + 1], args.k)
        single_s = time.perf_counter() - t

        t = time.perf_counter()
        dist, found = index.search(q_batch, args.k)
        batch_s = time.perf_counter() - t

        t = time.perf_counter()
        radius = index.search_radius(q_batch, args.radius)
        radius_s = time.perf_counter() - t

        if not reference:
            reference = {"dist": dist, "ids": found, "radius": radius}
        exact = bool(
            np.array_equal(dist, reference["dist"])
            and np.array_equal(found, reference["ids"])
            and all(
                np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                for a, b in zip(radius, reference["radius"], strict=True)
            )
        )
        row = {
            "backend": name, "bits": bits, "n": args.n, "params": index.params, "k": args.k,
            "build_s": build_s,
            "knn_qps_single": len(q_single) / single_s,
            "knn_qps_batch": len(q_batch) / batch_s,
            "compared_per_s_single": args.n * len(q_single) / single_s,
            "compared_per_s_batch": args.n * len(q_batch) / batch_s,
            "bytes_per_image": index.nbytes_per_code(),
            "radius": args.radius,
            "radius_ms_per_query": 1e3 * radius_s / len(q_batch),
            "radius_mean_hits": float(np.mean([r[0].size for r in radius])),
            "kth_distance_median": float(np.median(dist[:, -1])),
            "same_results_as_first_backend": exact,
        }
        rows.append(row)
        log(f"{bits} bits {name}: {fmt_row(row)}")
        del index
    return rows


HEADER = (
    f"{'bits':>4} {'backend':<12} {'build s':>8} {'kNN q/s 1':>10} {'kNN q/s B':>10} "
    f"{'img/s 1':>9} {'img/s B':>9} {'B/img':>6} {'r ms/q':>8} {'r hits':>6} {'same':>5}"
)


def fmt_row(r: dict[str, Any]) -> str:
    return (
        f"{r['bits']:>4} {r['backend']:<12} {r['build_s']:>8.2f} {r['knn_qps_single']:>10.1f} "
        f"{r['knn_qps_batch']:>10.1f} {r['compared_per_s_single']:>9.2e} {r['compared_per_s_batch']:>9.2e} "
        f"{r['bytes_per_image']:>6.0f} {r['radius_ms_per_query']:>8.3f} {r['radius_mean_hits']:>6.2f} "
        f"{'yes' if r['same_results_as_first_backend'] else 'NO':>5}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="database codes")
    ap.add_argument("--bits", default="32,64,128", help="comma-separated code lengths (multiples of 8)")
    ap.add_argument("--queries", type=int, default=500, help="queries in the batched runs")
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--radius", type=int, default=2)
    ap.add_argument("--backends", default=",".join(BINARY_INDEXES.names()))
    ap.add_argument("--out", type=Path, default=Path("bench/results/hamming.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0 = faiss's default)")
    ap.add_argument("--quick", action="store_true", help="100k codes, 200 + 50 queries")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.single = 100_000, 200, 50
    bits_list = [int(b) for b in args.bits.split(",") if b]
    if any(b % 8 for b in bits_list):
        ap.error("--bits must be multiples of 8")
    backends = [b for b in args.backends.split(",") if b]
    if unknown := set(backends) - set(BINARY_INDEXES.names()):
        ap.error(f"unknown backends {sorted(unknown)}")
    if "binary-flat" in backends:  # the reference goes first
        backends.remove("binary-flat")
        backends.insert(0, "binary-flat")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    args.single = min(args.single, args.queries)

    meta = {
        "command": " ".join(["python", *sys.argv]), "faiss": faiss.__version__,
        "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "omp_threads": faiss.omp_get_max_threads(),
        "n": args.n, "queries": args.queries, "single": args.single, "k": args.k,
        "radius": args.radius, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg_start": os.getloadavg(),
    }
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for bits in bits_list:
        rows += run(bits, args, backends)
        meta["loadavg_end"] = os.getloadavg()
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(HEADER)
    for r in rows:
        print(fmt_row(r))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
