"""How much does a dataset's weak supervision say about its classes, against the features?

    python bench/bench_weak_supervision.py corel5k cifar10 [--sample 2000] [--vectors glove]
        [--out bench/results/weak-supervision.json]

On a random sample of the protocol's training images (the ones the hashers learn from):
the pairwise tag similarity of eqs. (1)-(2) of the weakly supervised hashing paper (what
WDHT thresholds at 0.4 and IDEA's pairwise loss follows), the share of pairs above each
threshold and how many of them are same-class pairs against the base rate, and the class
mAP of ranking the other sample images by tag similarity and by the backbone's feature
cosine. When the tags rank the classes worse than the features do, a hasher that learns
only from the tags cannot be expected to beat one that keeps the features' neighbourhoods
(ITQ). The sample is drawn among the images with at least one tag that has a vector.
Corel-5K's weak supervision is its keywords; CIFAR-10's the backbone's ImageNet top-5 labels.
The measurement is :func:`cbir.hashing.supervision.measure_supervision`, which also gives the
label-free numbers ``cbir hash train`` decides on (the share of tag-similar pairs, their
agreement with the feature neighbours, kappa, and the verdict of ``--method auto``).
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cbir.concepts.tag_vectors import create_tag_vectors
from cbir.concepts.tags import clean_tags
from cbir.eval.hashing_benchmark import prepare
from cbir.eval.protocols import format_table
from cbir.hashing.supervision import measure_supervision


def measure(name: str, sample: int, vectors: str, seed: int) -> dict:
    ds, feats = prepare(name, Path(".data") / name, regions=False, progress=False)
    train = ds.split.train
    tags = [clean_tags(t) for t in ds.tags_of("train")]
    labels = np.asarray(ds.labels_of("train"))
    if labels.ndim > 1:
        raise SystemExit(f"{name}: single-label datasets only (class relevance)")
    machine = np.full(len(train), ds.info.get("tags") == "machine")
    rep = measure_supervision(feats.features[train], tags, create_tag_vectors(vectors, corpus=tags),
                              machine=machine, labels=labels, sample=sample, seed=seed)
    lab = rep.labels
    return {"dataset": name, "sample": rep.sample, "pairs": rep.sample * (rep.sample - 1) // 2,
            "base_rate": lab.get("base_rate"), "thresholds": lab.get("thresholds", {}),
            "map_tag_similarity": lab.get("map_tags"), "map_feature_cosine": lab.get("map_features"),
            "supervision": rep.as_dict()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="+", choices=["corel5k", "cifar10"])
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--vectors", default="glove", choices=["glove", "word2vec", "minilm"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/weak-supervision.json"))
    args = p.parse_args(argv)
    results = []
    for name in args.datasets:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results.append(measure(name, args.sample, args.vectors, args.seed))
    rows = []
    for r in results:
        row: dict[str, object] = {"dataset": r["dataset"], "same-class base rate": r["base_rate"]}
        for th, t in r["thresholds"].items():
            row[f"sim>{th}: % pairs"] = 100 * t["share"]
            row[f"sim>{th}: same-class (lift)"] = f"{t['same_class']:.3f} ({t['lift']:.1f}x)"
        row["class mAP, by tags"] = r["map_tag_similarity"]
        row["class mAP, by features"] = r["map_feature_cosine"]
        row["feature agreement (kappa)"] = r["supervision"]["kappa"]
        row["verdict"] = r["supervision"]["verdict"]
        rows.append(row)
    cols = list(rows[0])
    print(format_table(rows, cols, floatfmt=".3f"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"vectors": args.vectors, "seed": args.seed, "results": results}
    args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
