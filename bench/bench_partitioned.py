"""What the class-partitioned index (the CBIR paper's one table per predicted class) costs.

On a real collection, every image queries the others through the class-partitioned
index, scanning its n most probable ImageNet classes, and the top-10 is compared with
exact search. Prints recall@10, the share of the collection scanned, and P@10 against
the folder labels when the collection is a folder-per-class dataset. Writes JSON.

    python bench/bench_partitioned.py --dataset .data/dataset          # Wang/Corel-1K
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from cbir.collection import Collection
from cbir.eval.folder import eval_collection_dir, load_labelled_features
from cbir.eval.protocols import format_table
from cbir.index import create_index
from cbir.search import query_from_members


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True, help="folder-per-class dataset")
    ap.add_argument("--partitions", default="1,2,3,5,10")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("bench/results/partitioned.json"))
    args = ap.parse_args()

    load_labelled_features(args.dataset, progress=True)  # index the dataset (cached)
    rows = []
    with Collection.open(eval_collection_dir(args.dataset, "efficientnet-lite0")) as col:
        recs = list(col.catalog.iter_records("ok"))
        ids, feats = col.catalog.features()
        label_of = {r.id: Path(r.path).parent.name for r in recs}
        exact = create_index("exact", feats.shape[1])
        exact.add(ids, feats)
        part = create_index("class-partitioned", feats.shape[1])
        part.add(ids, feats, classes=np.array([r.top_class for r in recs], dtype=np.int64))
        names = col.extractor.class_names
        queries = [query_from_members(col, [r.path]) for r in recs]
        probs = np.stack([q.class_probs(names) for q in queries])
        k = args.k
        _, ex_ids = exact.search(feats, k + 1)
        ex_ids = ex_ids[:, 1:]  # drop the query itself
        n_classes = len({r.top_class for r in recs})
        for n in [int(x) for x in args.partitions.split(",")]:
            t0 = time.perf_counter()
            _, got = part.search(feats, k + 1, query_probs=probs, n_partitions=n)
            dt = time.perf_counter() - t0
            scanned = float(np.mean(part.last_scanned)) / len(ids)
            got = [[i for i in row if i != q and i >= 0][:k] for row, q in zip(got, ids, strict=True)]
            recall = np.mean([len(set(g) & set(e)) / k for g, e in zip(got, ex_ids, strict=True)])
            p10 = np.mean([np.mean([label_of.get(i) == label_of[q] for i in g]) if g else 0.0
                           for g, q in zip(got, ids, strict=True)])
            rows.append({"n_partitions": n, "recall@10_vs_exact": round(float(recall), 4),
                         "scanned_share": round(scanned, 4), "P@10": round(float(p10), 4),
                         "ms_per_query": round(1000 * dt / len(ids), 3)})
        exact_p10 = np.mean([np.mean([label_of[i] == label_of[q] for i in e])
                             for e, q in zip(ex_ids, ids, strict=True)])
    rows.append({"n_partitions": "exact", "recall@10_vs_exact": 1.0, "scanned_share": 1.0,
                 "P@10": round(float(exact_p10), 4), "ms_per_query": None})
    print(f"{len(ids)} images in {n_classes} non-empty ImageNet-class partitions", file=sys.stderr)
    print(format_table(rows, list(rows[0])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": str(args.dataset), "images": len(ids),
                                    "partitions": n_classes, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
