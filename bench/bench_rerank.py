"""Re-ranking (alpha-QE, k-reciprocal, DBA) against plain features, side by side in one run.

Per dataset, seeded queries each rank every other image (itself excluded); relevant = same
class. The first search is exact cosine; a re-ranking re-scores the top ``depth`` candidates
and keeps the rest in first-search order. DBA rewrites the database vectors before the
search; to keep a query from leaking into its neighbours' augmented vectors, the DBA rows
hold the queries out: the database is every other image, augmented among themselves, and
the query vector is left as it is (an outside photo searched against an augmented library).
Reported: mAP over the full ranking, P@10, and the re-ranking's own cost per query (the
candidates' features are in memory, as after a search).

    .venv/bin/python bench/bench_rerank.py [--wang /tmp/wang/dataset] [--corel /tmp/corel5k]
        [--cifar /tmp/cifar/test --cifar-collection /tmp/cifarwords] [--queries 1000]
        [--out bench/results/rerank.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cbir.eval.metrics import average_precision
from cbir.rerank import RerankParams, database_augmentation, rerank

ROWS = ("plain", "qe", "kr", "dba", "dba+qe")


def load(name: str, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray] | None:
    if name == "wang" and args.wang and Path(args.wang).is_dir():
        from cbir.eval.folder import load_labelled_features

        f, lab, _, _ = load_labelled_features(Path(args.wang), progress=False)
        return f, lab
    if name == "cifar10" and args.cifar and Path(args.cifar).is_dir():
        from cbir.eval.folder import load_labelled_features

        cdir = Path(args.cifar_collection) if args.cifar_collection else None
        f, lab, _, _ = load_labelled_features(Path(args.cifar), collection_dir=cdir, progress=False)
        return f, lab
    if name == "corel5k" and args.corel and Path(args.corel).is_dir():
        from cbir.eval.hashing_benchmark import prepare

        ds, feats = prepare("corel5k", Path(args.corel), regions=False, progress=False)
        return feats.features, np.asarray(ds.labels)
    return None


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def evaluate(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, method: str,
             params: RerankParams, qx: np.ndarray | None = None,
             exclude: np.ndarray | None = None) -> dict[str, float]:
    """``qx`` (len(queries), d): query vectors searched against ``x`` (default x[queries]);
    ``exclude``: rows no query may retrieve (default: only itself)."""
    aps, p10, cost = [], [], []
    drop = np.zeros(len(x), dtype=bool)
    if exclude is not None:
        drop[exclude] = True
    for n, qi in enumerate(queries):
        qv = x[qi] if qx is None else qx[n]
        sims = x @ qv
        sims[qi] = -np.inf
        sims[drop] = -np.inf
        order = np.argsort(-sims, kind="stable")[: len(x) - max(1, int(drop.sum()))]
        if method in ("qe", "kr"):
            top = order[: params.depth]
            t0 = time.perf_counter()
            new = rerank(method, qv, x[top], params)
            cost.append(time.perf_counter() - t0)
            order = np.concatenate([top[np.argsort(-new, kind="stable")], order[params.depth:]])
        rel = labels[order] == labels[qi]
        aps.append(float(average_precision(rel[None, :])[0]))
        p10.append(float(rel[:10].mean()))
    out = {"mAP": float(np.mean(aps)), "P@10": float(np.mean(p10))}
    if cost:
        out["ms_per_query"] = 1000 * float(np.median(cost))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wang", default="/tmp/wang/dataset")
    ap.add_argument("--corel", default="/tmp/corel5k")
    ap.add_argument("--cifar", default="/tmp/cifar/test")
    ap.add_argument("--cifar-collection", default="/tmp/cifarwords")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/rerank.json")
    args = ap.parse_args(argv)
    params = RerankParams(depth=args.depth)
    results: dict[str, dict] = {}
    for name in ("wang", "corel5k", "cifar10"):
        got = load(name, args)
        if got is None:
            print(f"{name}: not found, skipped", file=sys.stderr)
            continue
        x, labels = _unit(got[0]), np.asarray(got[1])
        rng = np.random.default_rng(args.seed)
        n_q = min(args.queries, len(x) // 2)  # DBA needs a database besides the queries
        q = np.sort(rng.choice(len(x), size=n_q, replace=False))
        db = np.setdiff1d(np.arange(len(x)), q)
        xd = x.copy()
        xd[db] = database_augmentation(x[db])  # the held-out queries are no one's neighbour
        res = {}
        for row in ROWS:
            method = "qe" if row.endswith("qe") else ("kr" if row == "kr" else "none")
            t0 = time.perf_counter()
            if row.startswith("dba"):  # queries searched against the augmented others only
                res[row] = evaluate(xd, labels, q, method, params, qx=x[q], exclude=q)
            else:
                res[row] = evaluate(x, labels, q, method, params)
            res[row]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{name:8s} {row:7s} mAP {res[row]['mAP']:.4f}  P@10 {res[row]['P@10']:.4f}"
                  + (f"  {res[row]['ms_per_query']:.2f} ms/query" if "ms_per_query" in res[row] else ""),
                  flush=True)
        results[name] = {"images": len(x), "queries": len(q), "rows": res}
    if not results:
        print("no dataset found; see the docstring", file=sys.stderr)
        return 1
    head = "| re-ranking | " + " | ".join(f"{n} mAP | {n} P@10" for n in results) + " | ms/query (depth " \
        f"{args.depth}) |"
    lines = [head, "|---" * (2 * len(results) + 2) + "|"]
    for row in ROWS:
        cells = []
        for n in results:
            r = results[n]["rows"][row]
            cells += [f"{r['mAP']:.3f}", f"{r['P@10']:.3f}"]
        ms = [results[n]["rows"][row].get("ms_per_query") for n in results]
        ms_s = "/".join(f"{m:.1f}" for m in ms if m is not None) or "-"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {ms_s} |")
    table = "\n".join(lines)
    print(table)
    out = {"params": params.__dict__, "seed": args.seed, "datasets": results, "table": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
