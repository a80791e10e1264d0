"""What IDEA's fixed input transform costs: ITQ on IDEA's input against ITQ on the pooled features.

    python bench/bench_idea_input.py [--dataset corel5k] [--bits 12,16,24,32,48,64] [--seeds 0,1,2]
        [--out bench/results/idea-input.json]

IDEA reads the 7x7x1280 region features, standardised per channel and reduced by a fixed
PCA to 256 dimensions (see cbir.hashing.idea). Before any learning, the mean of those
reduced regions is a linear image representation; ITQ on it shows how much of the
pooled features' category information survives the transform. Rows, per seed and code
length, all fitted on the protocol's training split and scored by mAP@5000 against the
dataset's class relevance:

* ITQ on the pooled 1280-d features (what `cbir eval hashing` reports as ITQ);
* ITQ on the mean of the standardised regions (1280-d, no PCA: the standardisation alone);
* ITQ on the mean of IDEA's reduced regions (256-d: standardisation + PCA, IDEA's input);
* IDEA itself (optional, --idea: trains one IDEA model per seed, length and --idea-pca
  value, 1-2 min each), with the loss weights fixed at (10, 1, 0.01).

The reduction is IDEA's own (an IDEA model fitted with 0 epochs on the same split and
seed). Prints a table of means over seeds, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cbir.concepts.tag_vectors import create_tag_vectors
from cbir.concepts.tags import clean_tags
from cbir.eval.hashing import evaluate_codes
from cbir.eval.hashing_benchmark import prepare
from cbir.eval.protocols import format_table
from cbir.hashing import create_hasher


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def l2n(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="corel5k", choices=["corel5k"])
    p.add_argument("--bits", default="12,16,24,32,48,64")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--idea", action="store_true", help="also train IDEA (lambdas 10, 1, 0.01)")
    p.add_argument("--idea-pca", default="256",
                   help="IDEA's pca_dim, comma-separated: one IDEA row per value (with --idea)")
    p.add_argument("--out", type=Path, default=Path("bench/results/idea-input.json"))
    args = p.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    ds, feats = prepare(args.dataset, Path(".data") / args.dataset, regions=True, progress=False)
    train, q, db = ds.split.train, ds.split.query, ds.split.database
    tags = [clean_tags(t) for t in ds.tags_of("train")]
    vectors = create_tag_vectors("glove", corpus=tags)
    ql, dl = ds.labels[q], ds.labels[db]
    rows_of = {"train": train, "query": q, "database": db}
    results: dict[str, dict[int, list[float]]] = {}

    def score(name: str, b: int, qc: np.ndarray, dc: np.ndarray) -> None:
        m = evaluate_codes(qc, dc, ql, dl, bits=b, pr_curve=False)["mAP@5000"]
        results.setdefault(name, {}).setdefault(b, []).append(float(m))

    for seed in seeds:
        log(f"seed {seed}: reducing regions")
        base = create_hasher("idea", 32, seed=seed, lambdas=[10, 1, 0.01], epochs=0).fit(
            feats.features[train], regions=feats.regions(train), tags=tags, tag_vectors=vectors)
        reps: dict[str, dict[str, np.ndarray]] = {"pooled": {}, "standardised mean": {}, "reduced mean": {}}
        arrays = base.model_arrays_ or {}
        mean, inv_std = arrays["reduce.mean"], arrays["reduce.inv_std"]
        for part, idx in rows_of.items():
            reg = feats.regions(idx)
            reps["pooled"][part] = feats.features[idx]
            reps["standardised mean"][part] = l2n(((reg - mean) * inv_std).mean(axis=1))
            reps["reduced mean"][part] = l2n(base.reduce(reg).astype(np.float32).mean(axis=1))
        for b in bits:
            for name, rep in reps.items():
                itq = create_hasher("itq", b, seed=seed).fit(rep["train"])
                score(f"ITQ on {name}", b, itq.encode(rep["query"]), itq.encode(rep["database"]))
            for pca in [int(v) for v in args.idea_pca.split(",")] if args.idea else []:
                h = create_hasher("idea", b, seed=seed, lambdas=[10, 1, 0.01], pca_dim=pca).fit(
                    feats.features[train], regions=feats.regions(train), tags=tags, tag_vectors=vectors)
                qc = h.encode(feats.features[q], reduced=h.reduce(feats.regions(q)))
                dc = h.encode(feats.features[db], reduced=h.reduce(feats.regions(db)))
                score(f"IDEA (10, 1, 0.01), pca_dim {pca}", b, qc, dc)
            log(f"  {b} bits: " + ", ".join(f"{k} {v[b][-1]:.4f}" for k, v in results.items()))
    rows = []
    for name, per in results.items():
        row: dict[str, object] = {"representation": name}
        for b in bits:
            v = np.asarray(per[b])
            row[f"{b} bits"] = f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"
        rows.append(row)
    print(f"{args.dataset}: mAP@5000 (class relevance), mean ± sd over seeds {seeds}")
    print(format_table(rows, ["representation", *(f"{b} bits" for b in bits)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dataset": args.dataset, "seeds": seeds, "bits": bits,
                                    "results": {k: {str(b): v for b, v in per.items()}
                                                for k, per in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
