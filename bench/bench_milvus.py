"""Milvus (HNSW, IVF_FLAT, class filter) vs FAISS (HNSW, IVF, class-partitioned) in the same run.

    python bench/bench_milvus.py [--n 100000] [--dim 256] [--out bench/results/milvus.json]

Starts a real Milvus standalone server (the PyPI package ``milvus``, default config except the
ports and data dir: tests/milvus_server.py with ``fast_load=False`` and the growing-segment
interim index left ON, as a user's server has it), fills it through cbir's ``milvus`` backend,
seals the segments (flush) and waits for the index build. Data: bench/bench_index.py's synthetic
CNN-like features. Measures insert vectors/s, build time, p50/p99 of single queries (Strong and
Bounded consistency), batch queries/s, recall@10 vs exact (tie-tolerant), delete visibility per
consistency level (is an id returned right after its delete?), the Milvus server's resident
memory (VmRSS after each backend's searches, VmHWM: its peak during that backend), and
(``hamming``) cbir's ``milvus`` binary index (BINARY_VECTOR + HAMMING, BIN_FLAT) against FAISS
``binary-flat`` on 100k random and clustered 64-bit codes: insert codes/s, p50/p99, batch q/s,
and identical results.

    python bench/bench_milvus.py --backends hamming     # the Hamming section alone
    nice -n 5 python bench/bench_milvus.py --n 1000000 --backends \
        faiss-hnsw,faiss-ivf,faiss-partitioned,milvus-hnsw,milvus-ivf --out bench/results/milvus_1m.json

At 1M x 256-d: the vectors (1 GiB) are generated in chunks and inserted in 20k batches; the exact
ground truth is a chunked brute-force scan (``faiss.knn``, no second copy of the vectors); peak
RSS of this process 3.0 GB measured (vectors, logits of the generator, the FAISS index measured).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_index import FeatureModel, softmax, tolerant_recall  # noqa: E402
from cbir.index import create_index  # noqa: E402
from milvus_server import start_milvus  # noqa: E402

K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_mem_mb(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB (from /proc/PID/status); {} if unreadable."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def reset_peak(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (``echo 5 > /proc/PID/clear_refs``)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def timed_queries(index: Any, q: np.ndarray, n: int, **kw: Any) -> tuple[float, float, np.ndarray]:
    lat, found = [], []
    probs = kw.pop("query_probs", None)
    for i in range(n):
        if probs is not None:
            kw["query_probs"] = probs[i : i + 1]
        t = time.perf_counter()
        found.append(index.search(q[i : i + 1], K, **kw)[1][0])
        lat.append(time.perf_counter() - t)
    ms = np.array(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), np.array(found)


def bench_backend(label: str, index: Any, x: np.ndarray, ids: np.ndarray, classes: np.ndarray,
                  q: np.ndarray, kth: np.ndarray, settings: list[dict[str, Any]], args,
                  server_pid: int | None = None) -> list[dict]:
    if server_pid is not None:
        reset_peak(server_pid)
    t = time.perf_counter()
    for s in range(0, len(x), 20_000):
        index.add(ids[s : s + 20_000], x[s : s + 20_000], classes=classes[s : s + 20_000])
        if (s // 20_000) % 10 == 9:
            log(f"{label}: {s + 20_000} added, {(s + 20_000) / (time.perf_counter() - t):.0f} v/s")
    insert_s = time.perf_counter() - t
    build_s = 0.0
    if hasattr(index, "flush"):  # Milvus: seal and build the vector index now
        t = time.perf_counter()
        index.flush()
        index.wait_index()
        build_s = time.perf_counter() - t
    log(f"{label}: insert {insert_s:.1f} s, build {build_s:.1f} s")
    rows = []
    for kw in settings:
        kw = dict(kw)
        if kw.pop("_probs", False):
            kw["query_probs"] = args.qprobs
        p50, p99, found = timed_queries(index, q, args.queries, **dict(kw))
        rec = tolerant_recall(q[: args.queries], x, found, kth[: args.queries])
        t = time.perf_counter()
        index.search(q, K, **kw)
        qps = len(q) / (time.perf_counter() - t)
        shown = {k: v for k, v in kw.items() if k != "query_probs"}
        rows.append({"backend": label, "search": shown, "insert_vps": len(x) / insert_s,
                     "insert_s": insert_s, "build_s": build_s, "p50_ms": p50, "p99_ms": p99,
                     "batch_qps": qps, "recall@10": rec})
        log(f"  {shown}: p50 {p50:.2f} ms p99 {p99:.2f} ms, {qps:.0f} q/s batch, recall {rec:.3f}")
    mem = proc_mem_mb(server_pid) if server_pid is not None else {}
    for r in rows:
        r["server_rss_mb"], r["server_hwm_mb"] = mem.get("VmRSS"), mem.get("VmHWM")
        r["client_hwm_mb"] = proc_mem_mb().get("VmHWM")
    if mem:
        log(f"{label}: Milvus server RSS {mem.get('VmRSS', 0):.0f} MB, peak {mem.get('VmHWM', 0):.0f} MB")
    return rows


def delete_visibility(uri: str, dim: int, trials: int = 20) -> dict[str, Any]:
    """Per consistency level: how often a just-deleted id is still returned by the next search."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = {}
    idx = create_index("milvus", dim, uri=uri, index_type="FLAT")
    idx.add(np.arange(2000), x)
    for level in ("Strong", "Bounded", "Session", "Eventually"):
        seen, lat = 0, []
        for _ in range(trials):
            i = int(rng.integers(0, 2000))
            idx.add(np.array([i]), x[i : i + 1])  # (re-add so every trial deletes a present id)
            idx.search(x[i : i + 1], 1, consistency="Strong")
            idx.remove(np.array([i]))
            t0 = time.perf_counter()
            found = idx.search(x[i : i + 1], 1, consistency=level)[1][0, 0]
            lat.append((time.perf_counter() - t0) * 1e3)
            seen += int(found == i)
        out[level] = {"deleted_id_returned": seen, "trials": trials, "p50_ms": float(np.median(lat))}
        log(f"delete visibility {level}: {seen}/{trials} searches returned the deleted id "
            f"(p50 {np.median(lat):.1f} ms)")
    idx.drop()
    return out


def hamming_codes(kind: str, n: int, bits: int, seed: int) -> np.ndarray:
    """Packed codes: ``random`` (uniform bits) or ``clustered`` (1000 random centres, each bit
    flipped with probability 4/bits: many equal distances, so ties straddle k often)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return np.packbits(rng.random((n, bits)) < 0.5, axis=1)
    centers = np.random.default_rng(bits).random((1000, bits)) < 0.5
    return np.packbits(centers[rng.integers(0, 1000, n)] ^ (rng.random((n, bits)) < 4 / bits), axis=1)


def bench_hamming(uri: str, n: int, bits: int, queries: int, batch: int) -> list[dict[str, Any]]:
    """Milvus BIN_FLAT (cbir's ``milvus`` binary backend) vs FAISS binary (``binary-flat``) on the
    same codes: insert codes/s, p50/p99 of single k=10 queries, and whether the batch results
    are identical (ids and distances, both in (distance, id) order); plus plain Milvus (one
    search, limit=k, no re-sort) to show what the tie handling fixes."""
    from cbir.hashing import create_binary_index

    rows = []
    for kind in ("random", "clustered"):
        codes = hamming_codes(kind, n, bits, seed=1)
        q = hamming_codes(kind, batch, bits, seed=2)
        ids = np.arange(n, dtype=np.int64) * 3 + 1
        res = {}
        for label, make in (("faiss binary-flat", lambda: create_binary_index("binary-flat", bits)),
                            ("milvus BIN_FLAT", lambda: create_binary_index("milvus", bits, uri=uri))):
            index = make()
            t = time.perf_counter()
            for s in range(0, n, 20_000):
                index.add(ids[s : s + 20_000], codes[s : s + 20_000])
            insert_s = time.perf_counter() - t
            build_s = 0.0
            if hasattr(index, "flush"):
                t = time.perf_counter()
                index.flush()
                index.wait_index()
                build_s = time.perf_counter() - t
            lat = []
            for i in range(queries):
                t = time.perf_counter()
                index.search(q[i : i + 1], K)
                lat.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            res[label] = index.search(q, K)
            qps = batch / (time.perf_counter() - t)
            rows.append({"data": kind, "backend": label, "insert_cps": n / insert_s, "build_s": build_s,
                         "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                         "batch_qps": qps})
            log(f"hamming {kind} {label}: insert {insert_s:.1f} s, build {build_s:.1f} s, "
                f"p50 {rows[-1]['p50_ms']:.2f} ms, {qps:.0f} q/s batch")
            if label.startswith("milvus"):
                plain = index._query(q, K)  # one Milvus search, limit=k, ties in Milvus's order
                pd = np.array([d for d, _ in plain])
                pi = np.array([i for _, i in plain])
                index.drop()
        fd, fi = res["faiss binary-flat"]
        md, mi = res["milvus BIN_FLAT"]
        recall = float(np.mean([np.isin(mi[r], fi[r]).mean() for r in range(batch)]))
        for r in rows[-2:]:
            r |= {"recall@10_vs_faiss": recall if r["backend"].startswith("milvus") else 1.0,
                  "identical_ids_and_distances": bool((md == fd).all() and (mi == fi).all()),
                  "plain_milvus_same_distances": bool((pd == fd).all()),
                  "plain_milvus_queries_with_other_ids": int((pi != fi).any(axis=1).sum()),
                  "plain_milvus_queries_with_other_id_set": int(sum(
                      set(pi[r].tolist()) != set(fi[r].tolist()) for r in range(batch)))}
        log(f"hamming {kind}: identical {rows[-1]['identical_ids_and_distances']}, recall {recall:.3f}; "
            f"plain Milvus (limit=k, no re-sort): same distances {rows[-1]['plain_milvus_same_distances']}, "
            f"{rows[-1]['plain_milvus_queries_with_other_ids']}/{batch} queries with ids in another order, "
            f"{rows[-1]['plain_milvus_queries_with_other_id_set']} with another set (ties cut at k)")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--queries", type=int, default=300, help="single queries timed one by one")
    ap.add_argument("--batch", type=int, default=1000, help="queries in the batch run (and for recall)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/milvus.json"))
    ap.add_argument("--backends",
                    default="faiss-hnsw,faiss-ivf,faiss-partitioned,milvus-hnsw,milvus-ivf,hamming",
                    help="comma-separated; 'hamming': the binary codes section alone")
    ap.add_argument("--hamming-n", type=int, default=100_000, help="codes in the Hamming section")
    ap.add_argument("--bits", type=int, default=64, help="code length in the Hamming section")
    args = ap.parse_args(argv)
    t_run = time.perf_counter()
    model = FeatureModel.make(args.dim, args.classes, seed=0)
    x, classes, _ = model.sample(args.n, seed=1)
    q, _, qlogits = model.sample(args.batch, seed=2)
    args.qprobs = softmax(qlogits)
    ids = np.arange(args.n, dtype=np.int64) * 3 + 1  # catalog-like sparse ids
    t = time.perf_counter()
    load_before = os.getloadavg()
    # exact k-th best score per query: a brute-force scan in blocks, without copying x into an index
    kth = faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)[0][:, -1]
    log(f"{args.n} vectors generated, exact ground truth in {time.perf_counter() - t:.1f} s")
    ids_to_row = np.full(ids[-1] + 1, -1, dtype=np.int64)
    ids_to_row[ids] = np.arange(args.n)

    class RowIds:  # searches return catalog ids; recall wants rows of x
        def __init__(self, index: Any):
            self.index = index

        def __getattr__(self, name: str) -> Any:
            return getattr(self.index, name)

        def search(self, qq: np.ndarray, k: int, **kw: Any):
            s, f = self.index.search(qq, k, **kw)
            return s, np.where(f >= 0, ids_to_row[f.clip(min=0)], -1)

    tmp = Path(tempfile.mkdtemp(prefix="cbir-bench-milvus-"))
    log(f"starting Milvus in {tmp}")
    t = time.perf_counter()
    server = start_milvus(tmp, config={"log.level": "warn"}, fast_load=False)
    start_s = time.perf_counter() - t
    log(f"Milvus healthy after {start_s:.1f} s at {server.uri}")
    rows: list[dict[str, Any]] = []
    wanted = args.backends.split(",")
    try:
        plan = [
            ("faiss-hnsw", lambda: create_index("hnsw", args.dim, M=32, ef_construction=80),
             [{"ef_search": 64}, {"ef_search": 128}]),
            ("faiss-ivf", lambda: create_index("ivf", args.dim),
             [{"nprobe": 16}, {"nprobe": 32}]),
            ("faiss-partitioned", lambda: create_index("class-partitioned", args.dim),
             [{"_probs": True, "n_partitions": 1}, {"_probs": True, "n_partitions": 3}]),
            ("milvus-hnsw", lambda: create_index("milvus", args.dim, uri=server.uri, index_type="HNSW",
                                                 M=32, ef_construction=80),
             [{"ef_search": 64}, {"ef_search": 128}, {"ef_search": 64, "consistency": "Bounded"},
              {"ef_search": 64, "_probs": True, "n_partitions": 1},
              {"ef_search": 64, "_probs": True, "n_partitions": 3}]),
            ("milvus-ivf", lambda: create_index("milvus", args.dim, uri=server.uri, index_type="IVF_FLAT",
                                                nlist=1024),
             [{"nprobe": 16}, {"nprobe": 32}, {"nprobe": 32, "consistency": "Bounded"}]),
        ]
        for label, make, settings in plan:
            if label not in wanted:
                continue
            index = make()
            rows += bench_backend(label, RowIds(index), x, ids, classes, q, kth, settings, args,
                                  server_pid=server.proc.pid if label.startswith("milvus") else None)
            if label.startswith("milvus"):
                index.drop()
            del index
        visibility = delete_visibility(server.uri, args.dim) if any(
            w.startswith("milvus") for w in wanted) else {}
        hamming = bench_hamming(server.uri, args.hamming_n, args.bits, args.queries, args.batch) \
            if "hamming" in wanted else []
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the server's data: 3.6 GB after a 1M run
    print(f"\n{args.n} vectors, dim {args.dim}, k={K}; single queries: {args.queries}, batch: {args.batch}")
    print(f"{'backend':18} {'search':44} {'ins v/s':>8} {'build s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'batch q/s':>9} {'R@10':>6}")
    for r in rows:
        print(f"{r['backend']:18} {json.dumps(r['search']):44} {r['insert_vps']:8.0f} {r['build_s']:7.1f} "
              f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['batch_qps']:9.0f} {r['recall@10']:6.3f}")
    seen = set()
    for r in rows:
        if r.get("server_hwm_mb") and r["backend"] not in seen:
            seen.add(r["backend"])
            print(f"  {r['backend']}: Milvus server RSS {r['server_rss_mb']:.0f} MB after its searches, "
                  f"peak {r['server_hwm_mb']:.0f} MB (VmHWM)")
    print("\ndelete visibility (a deleted id returned by the very next search):")
    for level, v in visibility.items():
        print(f"  {level:10} {v['deleted_id_returned']}/{v['trials']}  (search p50 {v['p50_ms']:.1f} ms)")
    if hamming:
        print(f"\nhamming: {args.hamming_n} codes of {args.bits} bits, k={K}; single queries: "
              f"{args.queries}, batch: {args.batch} (identical = ids and distances, (distance, id) order)")
        print(f"{'data':10} {'backend':18} {'ins c/s':>8} {'build s':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'batch q/s':>9} {'R@10':>6} {'identical':>9} {'plain: order/set/n':>22}")
        for r in hamming:
            plain = (f"{r['plain_milvus_queries_with_other_ids']}/"
                     f"{r['plain_milvus_queries_with_other_id_set']}/{args.batch}") \
                if r["backend"].startswith("milvus") else "-"
            print(f"{r['data']:10} {r['backend']:18} {r['insert_cps']:8.0f} {r['build_s']:7.1f} "
                  f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['batch_qps']:9.0f} "
                  f"{r['recall@10_vs_faiss']:6.3f} {str(r['identical_ids_and_distances']):>9} {plain:>22}")
    import pymilvus

    meta = {"n": args.n, "dim": args.dim, "k": K, "queries": args.queries, "batch": args.batch,
            "hamming_n": args.hamming_n, "bits": args.bits, "backends": wanted,
            "milvus_start_s": start_s, "faiss": faiss.__version__, "pymilvus": pymilvus.__version__,
            "milvus_server": "2.3.5 standalone (PyPI milvus)", "cores": os.cpu_count(),
            "time": time.strftime("%F %T"), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "wall_s": time.perf_counter() - t_run, "client_hwm_mb": proc_mem_mb().get("VmHWM")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "delete_visibility": visibility,
                                    "hamming": hamming}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
