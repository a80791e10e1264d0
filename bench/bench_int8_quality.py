"""fp32 vs int8 EfficientNet-Lite0: retrieval quality, ImageNet labels and the class-partitioned
index, on Wang-1K, CIFAR-10 and Corel-5K, in one run.

Every image is decoded and preprocessed once (``load_image(target_size=224)`` + the extractor's
``preprocess``, as indexing does) and passed through every model; features are L2-normalised
pooled outputs, probabilities the softmax of the logits (``Embedding``).

Protocols (``cbir.eval.protocols``, ``cbir.io.benchmarks``):

* Wang-1K: leave-one-out over the 1,000 images (``leave_one_out_retrieval``);
* CIFAR-10: 1,000 queries (100 per class, seed 0, ``load_folder``) from the 10,000 test images
  against the other 9,000 test images (the hashing protocol's 59,000-image database needs the
  train set, which is not needed to compare two extractors);
* Corel-5K: the 499 test images query the 4,500 training images, relevant = same Corel CD
  category (``load_corel5k``).

Per dataset and model: P@10, mAP (over the whole database), top-1 ImageNet label agreement
with fp32 and the mean overlap of the top-5 labels (the machine tags), and the
class-partitioned index (database filed under each image's own top-1 class, queries scan
their ``n`` most probable classes) recall@10 against exact search with the same features.

    python bench/bench_int8_quality.py                      # fp32 and the packaged int8
    python bench/bench_int8_quality.py --model old-int8=/tmp/old.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbir.eval.protocols import format_table, leave_one_out_retrieval, query_database_retrieval
from cbir.extract.efficientnet import EfficientNetLite0, EfficientNetLite0Int8, softmax
from cbir.index import create_index
from cbir.io.benchmarks import load_corel5k, load_folder
from cbir.io.images import load_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets"
CHUNK = 256


def ensure(root: Path, tar: str, probe: str) -> Path:
    """The dataset extracted at ``root`` (extracted from ../shared/datasets/<tar> if absent)."""
    if not (root / probe).exists():
        src = SHARED / tar
        if not src.is_file():
            sys.exit(f"no {root / probe} and no {src}")
        root.mkdir(parents=True, exist_ok=True)
        print(f"extracting {src} to {root}", file=sys.stderr)
        subprocess.run(["tar", "xf", str(src), "-C", str(root)], check=True)
    return root


def embed_all(paths: list[Path], models: dict[str, EfficientNetLite0],
              ) -> dict[str, dict[str, np.ndarray]]:
    """{model: {"features": (n, 1280) L2-normalised, "probs": (n, 1000)}}, one decode per image."""
    prep = next(iter(models.values()))
    feats: dict[str, list[np.ndarray]] = {k: [] for k in models}
    probs: dict[str, list[np.ndarray]] = {k: [] for k in models}
    for a in range(0, len(paths), CHUNK):
        batch = np.stack([prep.preprocess(load_image(p, target_size=prep.input_size))
                          for p in paths[a:a + CHUNK]])
        for key, ex in models.items():
            for b in range(0, len(batch), 32):
                out = ex.forward(batch[b:b + 32], ("pooled", "logits"))
                feats[key].append(out["pooled"])
                probs[key].append(softmax(out["logits"]))
    res = {}
    for key in models:
        f = np.concatenate(feats[key]).astype(np.float32)
        f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        res[key] = {"features": f, "probs": np.concatenate(probs[key])}
    return res


def partition_recall(q: np.ndarray, qp: np.ndarray, db: np.ndarray, dbp: np.ndarray,
                     n_partitions: int, k: int = 10, loo: bool = False) -> float:
    """recall@k of the class-partitioned index vs exact search (same features, same classes)."""
    ids = np.arange(len(db), dtype=np.int64)
    kk = k + 1 if loo else k
    exact = create_index("exact", db.shape[1])
    exact.add(ids, db)
    part = create_index("class-partitioned", db.shape[1])
    part.add(ids, db, classes=dbp.argmax(1).astype(np.int64))
    _, want = exact.search(q, kk)
    _, got = part.search(q, kk, query_probs=qp, n_partitions=n_partitions)
    hits = 0.0
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        w = [x for x in w if not (loo and x == i)][:k]
        g = [x for x in g if x >= 0 and not (loo and x == i)][:k]
        hits += len(set(w) & set(g)) / k
    return hits / len(q)


def evaluate(name: str, emb: dict[str, dict[str, np.ndarray]], labels: np.ndarray,
             query: np.ndarray | None, database: np.ndarray | None, n_parts: list[int],
             ) -> list[dict[str, Any]]:
    rows = []
    ref = emb["fp32"]["probs"]
    ref5 = np.argsort(-ref, axis=1)[:, :5]
    for key, e in emb.items():
        f, p = e["features"], e["probs"]
        if query is None:
            m = leave_one_out_retrieval(f, labels, ks=(10,))
            q, qp, db, dbp, loo = f, p, f, p, True
        else:
            m = query_database_retrieval(f[query], labels[query], f[database], labels[database],
                                         ks=(10,))
            q, qp, db, dbp, loo = f[query], p[query], f[database], p[database], False
        top5 = np.argsort(-p, axis=1)[:, :5]
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5, ref5, strict=True)])
        row = {"dataset": name, "model": key, "queries": m["queries"], "database": m["database"],
               "P@10": round(m["P@10"], 4), "mAP": round(m["mAP"], 4),
               "top1_agree": round(float((p.argmax(1) == ref.argmax(1)).mean()), 4),
               "top5_overlap": round(float(overlap), 4)}
        for n in n_parts:
            row[f"part{n}_recall@10"] = round(partition_recall(q, qp, db, dbp, n, loo=loo), 4)
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["dP@10"] = round(r["P@10"] - base["P@10"], 4)
        r["dmAP"] = round(r["mAP"] - base["mAP"], 4)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wang", type=Path, default=Path("/tmp/wang"))
    ap.add_argument("--cifar", type=Path, default=Path("/tmp/cifar"))
    ap.add_argument("--corel", type=Path, default=Path("/tmp/corel5k"))
    ap.add_argument("--datasets", default="wang,cifar10,corel5k")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=ONNX",
                    help="another ONNX graph of the same model to compare (repeatable)")
    ap.add_argument("--partitions", default="1,3")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "int8_quality.json")
    args = ap.parse_args()

    threads = os.cpu_count() or 1
    models: dict[str, EfficientNetLite0] = {
        "fp32": EfficientNetLite0(intra_op_num_threads=threads),
        "int8": EfficientNetLite0Int8(intra_op_num_threads=threads),
    }
    for spec in args.model:
        label, _, path = spec.partition("=")
        models[label] = EfficientNetLite0(intra_op_num_threads=threads, model_path=path)
    n_parts = [int(x) for x in args.partitions.split(",")]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for ds in args.datasets.split(","):
        if ds == "wang":
            root = ensure(args.wang, "wang1k.tar", "dataset")
            data = load_folder(root / "dataset")
            emb = embed_all(data.paths, models)
            rows += evaluate("Wang-1K (leave-one-out)", emb, data.labels, None, None, n_parts)
        elif ds == "cifar10":
            root = ensure(args.cifar, "cifar10.tar", "test")
            data = load_folder(root / "test", queries_per_class=100, seed=0)
            emb = embed_all(data.paths, models)
            db = np.setdiff1d(np.arange(len(data.paths)), data.split.query)
            rows += evaluate("CIFAR-10 test (1000 q / 9000 db)", emb, data.labels,
                             data.split.query, db, n_parts)
        elif ds == "corel5k":
            root = ensure(args.corel, "corel5k.tar", "db")
            data = load_corel5k(root)
            emb = embed_all(data.paths, models)
            rows += evaluate("Corel-5K (499 q / 4500 db, category)", emb, data.labels,
                             data.split.query, data.split.database, n_parts)
        else:
            sys.exit(f"unknown dataset {ds!r}")
        print(f"{ds} done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    cols = ["dataset", "model", "P@10", "dP@10", "mAP", "dmAP", "top1_agree", "top5_overlap",
            *[f"part{n}_recall@10" for n in n_parts]]
    print(format_table(rows, cols))
    ok = {k: all(abs(r["dP@10"]) <= args.tolerance and abs(r["dmAP"]) <= args.tolerance
                 for r in rows if r["model"] == k) for k in models if k != "fp32"}
    print("within", args.tolerance, "of fp32 (P@10 and mAP, every dataset):",
          ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in ok.items()))
    out = {"bench": "int8_quality", "cpu": cpu_flags(), "tolerance": args.tolerance,
           "models": {k: str(m.model_path or "packaged fp32") for k, m in models.items()},
           "rows": rows, "within_tolerance": ok, "seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
