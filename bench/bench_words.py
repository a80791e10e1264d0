"""Benchmark built-in word search (cbir.words) on synthetic class probabilities.

    python bench/bench_words.py [--sizes 10000,100000,1000000] [--out bench/results/words.json]

For each size: a real catalog (SQLite, schema 4) whose images carry only their stored
top-16 class probabilities (drawn from a peaked Dirichlet, as a softmax's top classes are),
then
- ``build``: the first query's cost of reading every row into the sparse matrix (what a
  cold CLI call or the service's first query after a change pays; later queries reuse it),
- ``query p50/p99``: in-process queries of 1-3 words on the cached matrix (resolve, sparse
  product, geometric mean, top 20),
- ``cli cold`` (at the smallest size only): wall time of ``cbir scene dog`` in a new process.
Prints a table and writes JSON. Features are not stored (word search never reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cbir.collection import Collection
from cbir.store.catalog import CLASS_PROBS_K
from cbir.words import class_prob_matrix, evidence, rank, resolve_words

QUERIES = ["dog", "cat", "car", "bird", "dog car", "boat bird", "food", "building", "horse",
           "flower", "bus", "elephant", "truck car", "bird dog", "dog cat", "mountain", "fish",
           "chair table", "guitar", "monkey"]


def fill(col: Collection, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    db = col.catalog.db
    db.execute("BEGIN")
    for lo in range(0, n, 50_000):
        m = min(50_000, n - lo)
        top = np.argsort(rng.random((m, 1000)), axis=1)[:, :CLASS_PROBS_K].astype("<u2")
        p = np.sort(rng.dirichlet(np.full(CLASS_PROBS_K, 0.3), size=m), axis=1)[:, ::-1].astype("<f2")
        rows = ((f"/photos/{lo + i:08d}.jpg", 1000, 0, "ok", top[i].tobytes() + p[i].tobytes(), 0.0)
                for i in range(m))
        db.executemany("INSERT INTO images (path, size, mtime_ns, status, class_probs, indexed_at)"
                       " VALUES (?,?,?,?,?,?)", rows)
    col.catalog._bump()
    db.execute("COMMIT")


def measure(directory: Path, n: int) -> dict:
    col = Collection.create_or_open(directory, "colorhist")
    t0 = time.perf_counter()
    fill(col, n)
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, matrix = class_prob_matrix(col.catalog)
    build = time.perf_counter() - t0
    times = []
    for rep in range(3):
        for q in QUERIES:
            t0 = time.perf_counter()
            resolved, _ = resolve_words(q)
            scores = rank(evidence(matrix, resolved))
            top = np.argpartition(-scores, 20)[:20]
            top[np.argsort(-scores[top])]
            if rep:  # the first round warms the resolver's caches
                times.append(time.perf_counter() - t0)
    col.close()
    ms = np.array(times) * 1000
    return {"images": n, "fill_s": round(fill_s, 1), "build_ms": round(build * 1000, 1),
            "query_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "query_p99_ms": round(float(np.percentile(ms, 99)), 2), "nnz": int(matrix.nnz)}


def cli_cold(directory: Path) -> float:
    exe = Path(sys.executable).with_name("cbir")
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "-c", str(directory), "scene", "dog", "-k", "20", "--json"], check=True,
                       stdout=subprocess.DEVNULL)
        best.append(time.perf_counter() - t0)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--out", default="bench/results/words.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            d = Path(tmp) / f"c{n}"
            row = measure(d, n)
            if n == sizes[0]:
                row["cli_cold_s"] = round(cli_cold(d), 2)
            rows.append(row)
            print(f"{n:>9} images: {row}", file=sys.stderr)
    cols = ["images", "build_ms", "query_p50_ms", "query_p99_ms", "cli_cold_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
